"""Tests for lorakit.check.nb05 (notebook 05's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest

from lorakit.check import nb05
from lorakit.memory import LLAMA_SHAPES, llama_parameter_count


def test_q1_bytes_per_param() -> None:
    assert nb05.q1(16) is True
    assert nb05.q1(16.0) is True
    assert nb05.q1(12) is False  # forgot the fp32 master copy
    assert nb05.q1(14) is False  # what LoRA removes per frozen parameter, not the total
    assert nb05.q1("16") is False
    assert nb05.q1(None) is False


def test_q2_full_finetune_gib() -> None:
    n7 = llama_parameter_count("7B")
    assert nb05.q2(16 * n7 / 2**30) is True
    assert nb05.q2(round(16 * n7 / 2**30, 1)) is True
    assert nb05.q2(16 * n7 / 1e9) is False  # decimal GB, not GiB
    assert nb05.q2(16 * 7e9 / 1e9) is False  # the nominal "112 GB"
    assert nb05.q2(2 * n7 / 2**30) is False  # weights only
    assert nb05.q2(16 * llama_parameter_count("13B") / 2**30, size="13B") is True
    assert nb05.q2(None) is False


def test_q2_validates_size() -> None:
    with pytest.raises(ValueError, match="size must be"):
        nb05.q2(1.0, size="70B")


def test_q3_choice() -> None:
    assert nb05.q3("b") is True
    assert nb05.q3(" B") is True
    for wrong in ("a", "c", "d"):
        assert nb05.q3(wrong) is False
    assert nb05.q3("e") is False
    assert nb05.q3(None) is False


def test_q4_lora_count_from_formula() -> None:
    s = LLAMA_SHAPES["13B"]
    by_formula = s["n_layers"] * 2 * 16 * (s["d_model"] + s["d_model"])
    assert nb05.q4(by_formula) is True
    assert nb05.q4(s["n_layers"] * 2 * 16 * s["d_model"]) is False  # forgot d_in + d_out
    assert nb05.q4(2 * 16 * 2 * s["d_model"]) is False  # one layer only
    s7 = LLAMA_SHAPES["7B"]
    assert nb05.q4(s7["n_layers"] * 4 * 8 * 2 * s7["d_model"], size="7B", r=8,
                   targets=("q_proj", "k_proj", "v_proj", "o_proj")) is True
    assert nb05.q4(None) is False


def test_helpers() -> None:
    assert nb05.full_finetune_bytes_per_param() == 2 + 2 + 4 + 4 + 4
    assert nb05.full_finetune_gib("65B") == pytest.approx(16 * llama_parameter_count("65B") / 2**30)


def test_q5_checkpoint_factor() -> None:
    assert nb05.checkpoint_flop_factor("full") == pytest.approx(4 / 3)
    assert nb05.checkpoint_flop_factor("lora") == pytest.approx(1.5)
    assert nb05.q5(1.5) is True
    assert nb05.q5(4 / 3) is False  # full fine-tuning's factor
    assert nb05.q5(2.0) is False
    assert nb05.q5(None) is False
    with pytest.raises(ValueError, match="method must be"):
        nb05.checkpoint_flop_factor("qlora")
