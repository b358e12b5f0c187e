"""Tests for lorakit.check.nb04 (notebook 04's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest
import torch

from lorakit import LoRALinear
from lorakit.check import nb04


def test_q1_merged_weight() -> None:
    assert nb04.q1(lambda W0, A, B, alpha, r: W0 + alpha / r * (B @ A)) is True
    assert nb04.q1(lambda W0, A, B, alpha, r: W0 + B @ A) is False  # the unscaled merge
    assert nb04.q1(lambda W0, A, B, alpha, r: W0 + alpha / r * (A.t() @ B.t())) is False  # wrong shape
    assert nb04.q1(lambda *args: 1 / 0) is False
    assert nb04.q1(None) is False


def test_q1_reference_matches_lorakit_merge() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(5, 3, dtype=torch.float64), r=2, alpha=4)
    torch.nn.init.normal_(layer.lora_B)
    W0 = layer.base.weight.detach().clone()
    layer.merge()
    ref = nb04.merged_weight_reference(W0, layer.lora_A.detach(), layer.lora_B.detach(), 4, 2)
    assert torch.allclose(layer.base.weight, ref)


def test_q2_choice() -> None:
    assert nb04.q2("c") is True
    assert nb04.q2("C ") is True
    assert nb04.q2("a") is False
    assert nb04.q2("z") is False
    assert nb04.q2(None) is False


def test_q3_bf16_rounding() -> None:
    assert nb04.q3(2.0**-8) is True
    assert nb04.q3(2.0**-7) is False
    assert nb04.q3("2^-8") is False
    assert nb04.q3(None) is False


def test_q4_flop_overhead() -> None:
    assert nb04.q4(16 * (4096 + 11008) / (4096 * 11008)) is True
    assert nb04.q4(100 * 16 * (4096 + 11008) / (4096 * 11008)) is False  # a percentage
    assert nb04.q4(2 * 16 / 4096, d_in=4096, d_out=4096) is True
    assert nb04.q4(None) is False


def test_flop_overhead_validates() -> None:
    with pytest.raises(ValueError, match="r must be"):
        nb04.bypass_flop_overhead(4, 4, 0)


def test_q5_choice() -> None:
    assert nb04.q5("b") is True
    for wrong in ("a", "c", "d", "e"):
        assert nb04.q5(wrong) is False
    assert nb04.q5(None) is False
