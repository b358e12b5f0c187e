"""Tests for the notebook 01 exercise checkers: right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import torch

from lorakit.check import nb01


def test_q1_parameter_count(capsys):
    d_in, d_out, r = nb01.Q1_SHAPE["d_in"], nb01.Q1_SHAPE["d_out"], nb01.Q1_SHAPE["r"]
    assert nb01.q1(r * (d_in + d_out)) is True
    assert nb01.q1(d_in * d_out) is False
    assert nb01.q1(2 * r * d_in) is False
    assert nb01.q1(None) is False
    assert "not answered" in capsys.readouterr().out


def test_q2_choice():
    assert nb01.q2("a") is True
    assert nb01.q2(" A ") is True
    for wrong in ("b", "c", "d", "e"):
        assert nb01.q2(wrong) is False
    assert nb01.q2(None) is False


def test_q3_grad_A():
    def right(x, B, g, s):
        return s * (g @ B).T @ x

    assert nb01.q3(right) is True
    assert nb01.q3(lambda x, B, g, s: (g @ B).T @ x) is False  # forgot the scaling
    assert nb01.q3(lambda x, B, g, s: s * B.T @ g.T @ x * 0) is False
    assert nb01.q3(lambda x, B, g, s: s * x.T @ (g @ B)) is False  # transposed: wrong shape
    assert nb01.q3(lambda x, B, g, s: 1 / 0) is False  # raising is feedback, not a crash
    assert nb01.q3(None) is False


def test_q3_reference_matches_formula():
    for x, B, g, s in nb01.q3_cases():
        assert torch.allclose(nb01.reference_grad_A(x, B, g, s), s * (g @ B).T @ x)


def test_q4_flops_ratio():
    n, d_in, d_out, r = (nb01.Q4_SHAPE[k] for k in ("n", "d_in", "d_out", "r"))
    right = (d_out * r * d_in + n * d_out * d_in) / (n * r * (d_in + d_out))
    assert nb01.q4(right) is True
    assert nb01.q4(d_in / (2 * r)) is False  # forgot the mat-vec after forming BA
    assert nb01.q4(1.0) is False
    assert nb01.q4(None) is False


def test_bypass_flops_rejects_unknown_order():
    import pytest

    with pytest.raises(ValueError, match="order"):
        nb01.bypass_flops(1, 2, 3, 1, "sideways")
