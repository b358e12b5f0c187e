"""Tests for the notebook 02 exercise checkers (lorakit.check.nb02)."""

from __future__ import annotations

import torch

from lorakit.check import nb02
from lorakit.lora import LoRALinear


def _layer(init: str = "kaiming") -> tuple[LoRALinear, torch.Tensor]:
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(10, 6), r=3, alpha=6, init=init)
    return layer, torch.randn(5, 10)


def test_q1() -> None:
    assert nb02.q1("b") is True
    assert nb02.q1("B ") is True
    assert nb02.q1("a") is False
    assert nb02.q1("z") is False
    assert nb02.q1(None) is False


def test_q2() -> None:
    layer, x = _layer()
    assert nb02.q2(torch.zeros(3, 10), layer, x) is True
    assert nb02.q2(torch.ones(3, 10), layer, x) is False
    assert nb02.q2(torch.zeros(10, 3), layer, x) is False
    assert nb02.q2(0.0, layer, x) is False
    assert nb02.q2(None, layer, x) is False


def test_q2_expected_is_nonzero_when_b_is_not_zero() -> None:
    layer, x = _layer()
    with torch.no_grad():
        layer.lora_B.fill_(0.5)
    assert nb02.q2(torch.zeros(3, 10), layer, x) is False


def test_first_nonzero_grad_step_is_one() -> None:
    assert nb02.first_nonzero_grad_step() == 1


def test_q3() -> None:
    assert nb02.q3(1) is True
    assert nb02.q3(0) is False
    assert nb02.q3(True) is False
    assert nb02.q3("1") is False
    assert nb02.q3(None) is False


def test_q4() -> None:
    assert nb02.q4("up", 0.001, 3.0) is True
    assert nb02.q4("same", 0.001, 3.0) is False
    assert nb02.q4("down", 2.0, 1.0) is True
    assert nb02.q4("same", 1.0, 1.0) is True
    assert nb02.q4(None, 0.001, 3.0) is False


def test_q5() -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 9)
    s = torch.linalg.svdvals(w)
    assert nb02.q5(float(s[4]), w, 4) is True
    assert nb02.q5(float(s[3]), w, 4) is False
    assert nb02.q5(None, w, 4) is False
