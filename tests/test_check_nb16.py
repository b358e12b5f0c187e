"""Tests for lorakit.check.nb16 (notebook 16's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import math

import pytest

from lorakit.check import nb16
from lorakit.memory import llama_parameter_count


def test_q1_fsdp_full_finetune_gib() -> None:
    n7 = llama_parameter_count("7B")
    assert nb16.q1(16 * n7 / 8 / 2**30) is True
    assert nb16.q1(round(16 * n7 / 8 / 2**30, 2)) is True
    assert nb16.q1(16 * n7 / 2**30) is False  # not sharded (DDP)
    assert nb16.q1(16 * n7 / 8 / 1e9) is False  # GB, not GiB
    assert nb16.q1(2 * n7 / 8 / 2**30) is False  # weights only
    assert nb16.q1(16 * llama_parameter_count("13B") / 4 / 2**30, size="13B", world_size=4) is True
    assert nb16.q1(None) is False


def test_q2_choice() -> None:
    assert nb16.q2("b") is True
    assert nb16.q2(" B ") is True
    for wrong in ("a", "c", "d", "e"):
        assert nb16.q2(wrong) is False
    assert nb16.q2(None) is False


def test_q3_min_gpus() -> None:
    n = llama_parameter_count("65B")
    want = math.ceil(16 * n / 2**30 / 80)
    assert nb16.q3(want) is True
    assert nb16.q3(want - 1) is False  # rounded down: does not fit
    assert nb16.q3(16 * n / 2**30 / 80) is False  # not an integer count
    assert nb16.q3(math.ceil(16 * llama_parameter_count("7B") / 2**30 / 24), size="7B", gpu_gib=24) is True
    assert nb16.q3(None) is False


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match="size"):
        nb16.q1(1.0, size="70B")
    with pytest.raises(ValueError, match="world_size"):
        nb16.q1(1.0, world_size=0)
    with pytest.raises(ValueError, match="gpu_gib"):
        nb16.q3(1, gpu_gib=0)
