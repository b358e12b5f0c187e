"""A quiz over the bank: filters, one question at a time, immediate feedback, a score by topic (notebook 14)."""

from __future__ import annotations

import random

from lorakit.drill.bank import Bank
from lorakit.drill.grading import Feedback, grade
from lorakit.drill.schema import TOPICS, Question

__all__ = ["Quiz", "score_by_topic", "score_text"]


def score_by_topic(feedback: list[Feedback]) -> dict[str, dict[str, float]]:
    """``{topic: {"answered", "correct", "score"}}`` over the answered questions (``score``: mean, in [0, 1])."""
    table: dict[str, dict[str, float]] = {}
    for fb in feedback:
        if fb.correct is None:
            continue
        row = table.setdefault(fb.question.topic, {"answered": 0, "correct": 0, "score": 0.0})
        row["answered"] += 1
        row["correct"] += int(bool(fb.correct))
        row["score"] += fb.score
    for row in table.values():
        row["score"] = row["score"] / row["answered"]
    return {t: table[t] for t in TOPICS if t in table}


def score_text(feedback: list[Feedback]) -> str:
    """The score by topic as aligned plain-text lines, weakest topic first, and the total."""
    table = score_by_topic(feedback)
    if not table:
        return "no answers yet"
    width = max(len(t) for t in table)
    lines = [f"{t:<{width}}  {int(r['correct'])}/{int(r['answered'])} correct  ({100 * r['score']:.0f}%)"
             for t, r in sorted(table.items(), key=lambda kv: (kv[1]["score"], kv[0]))]
    answered = sum(int(r["answered"]) for r in table.values())
    correct = sum(int(r["correct"]) for r in table.values())
    return "\n".join([*lines, f"{'total':<{width}}  {correct}/{answered} correct"])


class Quiz:
    """Questions filtered by topic / difficulty / kind, in a seeded random order (``shuffle=False``: bank order).

    ``current`` is the question on screen; :meth:`answer` grades it (answering again replaces the verdict),
    :meth:`next` moves on. :attr:`feedback` keeps the latest verdict per question.
    """

    def __init__(self, bank: Bank, topics=None, difficulties=None, kinds=None, n: int | None = None,
                 seed: int | None = 0, shuffle: bool = True) -> None:
        if not isinstance(bank, Bank):
            raise TypeError(f"bank must be a lorakit.drill.Bank (load_bank()), got {type(bank).__name__}")
        chosen = list(bank.filter(topics, difficulties, kinds))
        if not chosen:
            raise ValueError("no question matches these topics / difficulties / kinds")
        if shuffle:
            random.Random(seed).shuffle(chosen)
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"n must be a positive int or None, got {n!r}")
            chosen = chosen[:n]
        self.questions: list[Question] = chosen
        self.position = 0
        self.feedback: dict[str, Feedback] = {}

    @property
    def current(self) -> Question | None:
        """The question to answer now, or None when the quiz is over."""
        return self.questions[self.position] if self.position < len(self.questions) else None

    def answer(self, response: object) -> Feedback:
        """Grade ``response`` to the current question and keep the verdict."""
        q = self.current
        if q is None:
            raise ValueError("the quiz is over: no current question")
        fb = grade(q, response)
        if fb.correct is not None:
            self.feedback[q.id] = fb
        return fb

    def next(self) -> Question | None:
        """Move to the next question (None at the end)."""
        if self.position < len(self.questions):
            self.position += 1
        return self.current

    @property
    def done(self) -> bool:
        return self.current is None

    def score_by_topic(self) -> dict[str, dict[str, float]]:
        return score_by_topic(list(self.feedback.values()))

    def score_text(self) -> str:
        return score_text(list(self.feedback.values()))
