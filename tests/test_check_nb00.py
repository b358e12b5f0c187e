"""Tests for the notebook 00 exercise checkers: right -> True, wrong -> False, None -> False."""

from __future__ import annotations

from lorakit.check import nb00
from lorakit.data import shift_word
from lorakit.models import load_tiny_lm


def test_q1_trainable_count():
    cfg = load_tiny_lm().config
    right = cfg.n_layers * 2 * nb00.Q1_CONFIG["r"] * (cfg.d_model + cfg.d_model)
    assert nb00.q1(right) is True
    assert nb00.q1(right * 2) is False
    assert nb00.q1(None) is False


def test_q2_choice():
    assert nb00.q2("b") is True
    for wrong in ("a", "c", "d", "z"):
        assert nb00.q2(wrong) is False
    assert nb00.q2(None) is False


def test_q3_base_model_answers_rot1():
    assert nb00.q3(shift_word(nb00.Q3_WORD, 1)) is True
    assert nb00.q3(shift_word(nb00.Q3_WORD, 1) + ".") is True
    assert nb00.q3(shift_word(nb00.Q3_WORD, 3)) is False
    assert nb00.q3(3) is False
    assert nb00.q3(None) is False


def test_q4_steps_to_threshold():
    steps, em = [0, 25, 50, 75], [0.0, 0.3, 0.95, 1.0]
    assert nb00.q4(50, steps, em) is True
    assert nb00.q4(75, steps, em) is False
    assert nb00.q4(25, steps, em, threshold=0.3) is True
    assert nb00.q4(50.0, steps, em) is False
    assert nb00.q4(True, steps, em) is False
    assert nb00.q4(None, steps, em) is False
    assert nb00.q4("none", steps, [0.0] * 4) is True  # never reached
