"""Tests for the notebook 10 checkers (lorakit.check.nb10)."""

from __future__ import annotations

import pytest
import torch

from lorakit.check import nb10


def test_q1():
    q = nb10.Q1
    frac = 1 - (q["step"] - q["tinit"]) / (q["total_step"] - q["tfinal"] - q["tinit"])
    want = int(q["target_budget"] + (q["init_budget"] - q["target_budget"]) * frac**3)
    assert nb10.q1(want) is True
    assert nb10.q1(float(want)) is True
    assert nb10.q1(want + 1) is False
    assert nb10.q1(want + 0.4) is False
    assert nb10.q1(q["init_budget"]) is False
    assert nb10.q1("88") is False
    assert nb10.q1(None) is False


def test_q2():
    n_in, n_out, r, kept = nb10.Q2_IN, nb10.Q2_OUT, nb10.Q2_R, nb10.Q2_KEPT
    assert nb10.q2((r * (n_in + n_out + 1), kept * (n_in + n_out + 1))) is True
    assert nb10.q2([r * (n_in + n_out + 1), kept * (n_in + n_out + 1)]) is True
    assert nb10.q2((r * (n_in + n_out), kept * (n_in + n_out))) is False
    assert nb10.q2((r * (n_in + n_out + 1), r * (n_in + n_out + 1))) is False
    assert nb10.q2(r * (n_in + n_out + 1)) is False
    assert nb10.q2(None) is False


def test_q3():
    def good(sa, se, sb):
        return se.view(-1) + sa.mean(dim=1) + sb.mean(dim=0)

    def sums_instead_of_means(sa, se, sb):
        return se.view(-1) + sa.sum(dim=1) + sb.sum(dim=0)

    def wrong_axes(sa, se, sb):
        return se.view(-1) + sa.mean(dim=0)[: se.numel()] + sb.mean(dim=1)[: se.numel()]

    def crashes(sa, se, sb):
        raise RuntimeError("boom")

    assert nb10.q3(good) is True
    assert nb10.q3(sums_instead_of_means) is False
    assert nb10.q3(wrong_axes) is False
    assert nb10.q3(crashes) is False
    assert nb10.q3(lambda sa, se, sb: torch.zeros(se.numel())) is False
    assert nb10.q3(None) is False


@pytest.mark.parametrize("choice,ok", [("c", True), (" C ", True), ("a", False), ("b", False), ("d", False),
                                       ("x", False)])
def test_q4(choice, ok):
    assert nb10.q4(choice) is ok


@pytest.mark.parametrize("choice,ok", [("b", True), ("a", False), ("c", False), ("d", False), ("e", False)])
def test_q5(choice, ok):
    assert nb10.q5(choice) is ok


def test_none_answers():
    assert nb10.q4(None) is False
    assert nb10.q5(None) is False
