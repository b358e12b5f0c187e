"""Grading one answer to one question, with the feedback a learner reads (notebook 14).

The verdict markers are plain text (``[PASS]``, ``[NOT YET]``, ``[TO DO]``), the same as the exercise checkers'
(:mod:`lorakit.check`), so they render without an emoji font.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lorakit.check import MARKERS
from lorakit.drill.schema import Question, format_number

__all__ = ["Feedback", "grade", "parse_number"]

_NUMBER = re.compile(r"[-+]?(\d[\d,_]*\.?\d*|\.\d+)(e[-+]?\d+)?", re.I)
_SUFFIX = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6, "g": 1e9, "b": 1e9, "billion": 1e9}


def parse_number(response: object) -> float | None:
    """A number from a learner's answer: ``65536``, ``"65,536"``, ``"6.5e4"``, ``"8.4M"``, ``"0.12 %"``.

    Returns None when there is no number. A suffix k / M / G or B (billion) right after the number scales it.
    """
    if isinstance(response, bool):
        return None
    if isinstance(response, numbers.Real):
        return float(response)
    if not isinstance(response, str):
        return None
    text = response.strip().replace("\u2212", "-")
    match = _NUMBER.search(text)
    if not match:
        return None
    value = float(match.group(0).replace(",", "").replace("_", ""))
    rest = text[match.end():].strip().lower()
    word = re.match(r"[a-z]+", rest)
    if word and word.group(0) in _SUFFIX and not rest.startswith(("bit", "byte", "gib", "gb", "mib", "mb", "kib")):
        value *= _SUFFIX[word.group(0)]
    return value


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer: ``correct`` is None when nothing was answered; ``score`` is in [0, 1]."""

    question: Question
    correct: bool | None
    score: float
    response: str
    note: str = ""

    @property
    def marker(self) -> str:
        return MARKERS["todo" if self.correct is None else "pass" if self.correct else "fail"]

    @property
    def headline(self) -> str:
        """One line: the marker, the id and what was right or off."""
        q = self.question
        if self.correct is None:
            return f"{self.marker} [{q.id}] not answered yet"
        if self.correct:
            return f"{self.marker} [{q.id}] correct: {q.answer_text}"
        return f"{self.marker} [{q.id}] not yet: {self.note or 'the answer is ' + q.answer_text}"

    def text(self) -> str:
        """The full feedback: headline, explanation, the common mistake (when wrong) and where to read more."""
        q = self.question
        lines = [self.headline]
        if self.correct is not None:
            if not self.correct:
                lines.append(f"Answer: {q.answer_text}")
            lines.append(f"Why: {q.explanation}")
            if not self.correct or q.kind == "derive":
                lines.append(f"Common mistake: {q.wrong_text}. {q.why_wrong}")
        lines.append(f"Read more: notebooks/{q.link}")
        return "\n".join(lines)


def _grade_choice(q: Question, response: object) -> Feedback:
    key = str(response).strip().lower().strip("()")
    if key not in q.choices:
        return Feedback(q, False, 0.0, str(response), f"{response!r} is not one of the options {sorted(q.choices)}")
    if key == q.answer:
        return Feedback(q, True, 1.0, key)
    note = f"({key}) is the common mistake" if key == q.wrong_answer else f"({key}) is not right"
    return Feedback(q, False, 0.0, key, note)


def _grade_numeric(q: Question, response: object) -> Feedback:
    value = parse_number(response)
    if value is None:
        return Feedback(q, False, 0.0, str(response), f"no number in {response!r}")
    ok = math.isclose(value, q.answer, rel_tol=q.tolerance, abs_tol=q.abs_tolerance)
    if ok:
        return Feedback(q, True, 1.0, format_number(value, q.fmt))
    note = f"got {format_number(value, q.fmt)}"
    if q.wrong_value is not None and math.isclose(value, q.wrong_value, rel_tol=q.tolerance, abs_tol=q.abs_tolerance):
        note += " (the common mistake)"
    return Feedback(q, False, 0.0, format_number(value, q.fmt), note)


def _grade_derive(q: Question, response: object) -> Feedback:
    if isinstance(response, dict):
        covered = response.get("covered", [])
    else:
        covered = response
    if isinstance(covered, str) or not isinstance(covered, Iterable):
        return Feedback(q, False, 0.0, str(response), "tick the checklist points your answer made (their indices)")
    items = list(covered)
    if all(isinstance(x, bool) for x in items) and len(items) == len(q.checklist):
        items = [i for i, x in enumerate(items) if x]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(q.checklist) for i in items):
        return Feedback(q, False, 0.0, str(response), f"checklist indices must be in 0..{len(q.checklist) - 1}")
    got = sorted(set(items))
    score = len(got) / len(q.checklist)
    missing = [q.checklist[i] for i in range(len(q.checklist)) if i not in got]
    note = "" if not missing else f"{len(got)} of {len(q.checklist)} points; missing: " + "; ".join(missing)
    return Feedback(q, not missing, score, f"{len(got)}/{len(q.checklist)} points", note)


def grade(question: Question, response: object) -> Feedback:
    """Grade ``response`` to ``question``: a choice key, a number (or text holding one), or for a derive question
    the checklist points covered (indices, or one bool per point). ``None`` means not answered yet."""
    if not isinstance(question, Question):
        raise TypeError(f"question must be a lorakit.drill Question, got {type(question).__name__}")
    if response is None or (isinstance(response, str) and not response.strip()):
        return Feedback(question, None, 0.0, "")
    return {"choice": _grade_choice, "numeric": _grade_numeric, "derive": _grade_derive}[question.kind](
        question, response)
