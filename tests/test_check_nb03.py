"""Tests for the notebook 03 checkers (lorakit.check.nb03)."""

from __future__ import annotations

import math

import pytest

from lorakit.check import nb03


def test_q1():
    r, a = nb03.Q1_R, nb03.Q1_ALPHA
    assert nb03.q1((a / r, a / math.sqrt(r))) is True
    assert nb03.q1([a / r, a / math.sqrt(r)]) is True
    assert nb03.q1((a / math.sqrt(r), a / r)) is False
    assert nb03.q1((a / r, a / r)) is False
    assert nb03.q1(a / r) is False
    assert nb03.q1(None) is False


def test_q2():
    assert nb03.q2(math.sqrt(nb03.Q2_R)) is True
    assert nb03.q2(float(nb03.Q2_R)) is False
    assert nb03.q2("16") is False
    assert nb03.q2(None) is False


@pytest.mark.parametrize(
    "choice,ok", [("a", True), (" A ", True), ("b", False), ("c", False), ("d", False), ("z", False)]
)
def test_q3(choice, ok):
    assert nb03.q3(choice) is ok


def test_q3_none():
    assert nb03.q3(None) is False


def test_q4():
    assert nb03.q4(-0.5) is True
    assert nb03.q4(-1.0) is False
    assert nb03.q4(0.0) is False
    assert nb03.q4(None) is False
    assert nb03.grad_b_exponent(rslora=True) == pytest.approx(0.0, abs=1e-12)


def test_q5():
    assert nb03.q5(nb03.Q5_ALPHA / math.sqrt(nb03.Q5_R)) is True
    assert nb03.q5(float(nb03.Q5_ALPHA)) is False
    assert nb03.q5(None) is False


def test_messages(capsys):
    nb03.q2(None)
    assert "not answered yet" in capsys.readouterr().out
    nb03.q2(16.0)
    assert "PASS [" in capsys.readouterr().out


def test_q6_rule_of_thumb():
    assert nb03.q6(math.sqrt(128) / 4) is True
    assert nb03.q6(2.83) is True
    assert nb03.q6(3) is False  # rounded: the checker wants the formula's value
    assert nb03.q6(4.0) is False  # sqrt(256)/4: min was not taken
    assert nb03.q6(16.0, d_in=4096, d_out=11008) is True
    assert nb03.q6(None) is False
