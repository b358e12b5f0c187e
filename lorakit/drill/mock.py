"""A timed mock interview: N random questions, a time limit per question, a summary at the end (notebook 14)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lorakit.drill.bank import Bank
from lorakit.drill.grading import Feedback, grade
from lorakit.drill.quiz import score_by_topic
from lorakit.drill.schema import TOPICS, Question

__all__ = ["Answer", "MockInterview"]


@dataclass(frozen=True)
class Answer:
    """One answered (or timed-out) question: its feedback and the seconds it took."""

    feedback: Feedback
    seconds: float
    over_time: bool


class MockInterview:
    """``n`` questions drawn with ``seed`` from ``bank`` (optionally filtered), ``seconds_per_question`` each.

    ``clock`` (default ``time.monotonic``) is injectable so that tests control time. An answer given after the
    limit is graded but counts as wrong ("over time"), as in an interview where the time is part of the task.
    """

    def __init__(self, bank: Bank, n: int = 5, seconds_per_question: float = 120.0, seed: int | None = None,
                 topics=None, difficulties=None, clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(bank, Bank):
            raise TypeError(f"bank must be a lorakit.drill.Bank (load_bank()), got {type(bank).__name__}")
        if isinstance(seconds_per_question, bool) or not isinstance(seconds_per_question, (int, float)) or not (
                seconds_per_question > 0):
            raise ValueError(f"seconds_per_question must be a number > 0, got {seconds_per_question!r}")
        self.questions: list[Question] = bank.filter(topics, difficulties).sample(n, seed)
        self.seconds_per_question = float(seconds_per_question)
        self.clock = clock
        self.answers: list[Answer] = []
        self._started: float | None = None

    @property
    def current(self) -> Question | None:
        i = len(self.answers)
        return self.questions[i] if i < len(self.questions) else None

    def start(self) -> Question | None:
        """Start the clock on the current question."""
        self._started = self.clock()
        return self.current

    def time_left(self) -> float:
        """Seconds left on the current question (negative once over)."""
        if self._started is None:
            return self.seconds_per_question
        return self.seconds_per_question - (self.clock() - self._started)

    def answer(self, response: object) -> Answer:
        """Grade the current question, record the time it took, and move to the next (its clock starts)."""
        q = self.current
        if q is None:
            raise ValueError("the interview is over: no current question")
        if self._started is None:
            raise ValueError("call start() before answering")
        seconds = self.clock() - self._started
        fb = grade(q, response)
        over = seconds > self.seconds_per_question
        if over and fb.correct:
            fb = Feedback(q, False, 0.0, fb.response, f"right, but after {seconds:.0f} s (limit "
                                                       f"{self.seconds_per_question:.0f} s)")
        elif fb.correct is None:
            fb = Feedback(q, False, 0.0, "", "no answer")
        record = Answer(fb, seconds, over)
        self.answers.append(record)
        self._started = self.clock() if self.current is not None else None
        return record

    @property
    def done(self) -> bool:
        return self.current is None

    def summary(self) -> dict:
        """Score, score by topic, time per question, the questions over time and what to read next."""
        feedback = [a.feedback for a in self.answers]
        by_topic = score_by_topic(feedback)
        weak = [t for t, row in by_topic.items() if row["score"] < 1]
        reading = {}
        for a in self.answers:
            if not a.feedback.correct:
                reading.setdefault(a.feedback.question.topic, a.feedback.question.link)
        return {
            "answered": len(self.answers), "asked": len(self.questions),
            "correct": sum(bool(a.feedback.correct) for a in self.answers),
            "score": sum(a.feedback.score for a in self.answers) / max(1, len(self.questions)),
            "by_topic": by_topic,
            "seconds": [round(a.seconds, 1) for a in self.answers],
            "over_time": [a.feedback.question.id for a in self.answers if a.over_time],
            "weak_topics": weak,
            "read_next": reading,
        }

    def summary_text(self) -> str:
        """The summary as plain-text lines."""
        s = self.summary()
        lines = [f"mock interview: {s['correct']}/{s['asked']} correct, score {100 * s['score']:.0f}%"]
        for a in self.answers:
            fb = a.feedback
            flag = "  (over time)" if a.over_time else ""
            lines.append(f"  {fb.marker} [{fb.question.id}] {a.seconds:.0f} s{flag}")
        if s["weak_topics"]:
            lines.append("revise: " + "; ".join(f"{TOPICS[t]} -> notebooks/{s['read_next'].get(t, '')}"
                                                for t in s["weak_topics"]))
        return "\n".join(lines)
