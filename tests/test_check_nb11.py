"""Tests for lorakit.check.nb11 (notebook 11's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest

from lorakit.check import nb11


def test_q1_spearman_brown():
    assert nb11.q1(2 * 0.93 / 1.93) is True
    assert nb11.q1(0.93) is False  # the half-panel agreement itself
    assert nb11.q1(None) is False
    assert nb11.q1(0.5, r_half=1 / 3) is True
    with pytest.raises(ValueError, match="r_half"):
        nb11.spearman_brown(1.5)


def test_q2_counts_real_layers():
    assert nb11.lora_qv_trainable(8) == 6 * 2 * 8 * 768 + 385
    assert nb11.q2(6 * 2 * 8 * 768 + 385) is True
    assert nb11.q2(6 * 2 * 8 * 768) is False  # the head forgotten
    assert nb11.q2(None) is False


def test_q3_choice():
    assert nb11.q3("b") is True
    assert nb11.q3("d") is False and nb11.q3(None) is False
