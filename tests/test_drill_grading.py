"""lorakit.drill grading: number parsing, the three kinds, and the feedback text."""

from __future__ import annotations

import pytest

from lorakit.drill import Feedback, grade, load_bank, parse_number

BANK = load_bank()


@pytest.mark.parametrize("text, value", [
    ("65536", 65536), ("65,536", 65536), ("65_536", 65536), (" 6.5e4 ", 65000), ("8.4M", 8.4e6), ("8.4 million", 8.4e6),
    ("0.12 %", 0.12), ("16 bytes", 16), ("3 GB", 3), ("4.5 bits", 4.5), ("−0.5", -0.5), (".5", 0.5), (7, 7.0),
    (2.5, 2.5), ("1.2k", 1200), ("65B", 65e9),
])
def test_parse_number(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "no idea", None, True, [1], "abc"])
def test_parse_number_none(text):
    assert parse_number(text) is None


def test_choice():
    q = BANK["init-both-zero"]
    right, wrong = grade(q, q.answer), grade(q, q.wrong_answer)
    assert right.correct is True and right.score == 1 and right.headline.startswith(f"PASS [{q.id}] correct")
    assert wrong.correct is False and "common mistake" in wrong.headline
    assert grade(q, " (B) ").correct is True
    assert "not one of the options" in grade(q, "z").headline
    other = next(k for k in q.choices if k not in (q.answer, q.wrong_answer))
    assert "is not right" in grade(q, other).headline


def test_numeric_tolerance_and_wrong_value():
    q = BANK["lora-params-one-layer"]
    assert grade(q, q.answer).correct
    assert grade(q, q.answer * (1 + q.tolerance / 2)).correct
    assert not grade(q, q.answer * (1 + 2 * q.tolerance)).correct
    fb = grade(q, q.wrong_value)
    assert not fb.correct and "(the common mistake)" in fb.headline
    assert "no number" in grade(q, "lots").headline


def test_numeric_abs_tolerance():
    q = BANK["init-grad-a-step-one"]
    assert grade(q, 0).correct and grade(q, "0.0").correct and not grade(q, 0.01).correct


def test_derive_checklist():
    q = BANK["init-why-b-zero"]
    n = len(q.checklist)
    full = grade(q, list(range(n)))
    assert full.correct and full.score == 1
    part = grade(q, [0])
    assert not part.correct and part.score == pytest.approx(1 / n) and q.checklist[1] in part.headline
    assert grade(q, [True] * n).correct
    assert grade(q, {"covered": [0, 1]}).score == pytest.approx(2 / n)
    assert "indices" in grade(q, [n + 3]).headline
    assert "tick the checklist" in grade(q, "my free text").headline


def test_not_answered():
    q = BANK["scaling-ratio"]
    for empty in (None, "", "   "):
        fb = grade(q, empty)
        assert fb.correct is None and fb.headline == f"TO DO [{q.id}] not answered yet"


def test_feedback_text_has_explanation_mistake_and_link():
    q = BANK["mem-what-lora-saves"]
    text = grade(q, [0]).text()
    assert q.explanation in text and q.why_wrong in text and q.link in text and "Answer: " in text
    text_right = grade(BANK["scaling-ratio"], 8).text()
    assert "Common mistake" not in text_right and "Why: " in text_right


def test_markers_are_plain_ascii():
    for fb in (grade(BANK["scaling-ratio"], 8), grade(BANK["scaling-ratio"], 3), grade(BANK["scaling-ratio"], None)):
        assert isinstance(fb, Feedback) and fb.headline.isascii()


def test_grade_rejects_non_question():
    with pytest.raises(TypeError, match="question must be"):
        grade("init-both-zero", "a")
