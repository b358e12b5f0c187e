"""Loading and filtering the question bank ``data/questions/*.yaml`` (notebook 14)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lorakit.drill.schema import DIFFICULTIES, KINDS, TOPICS, Question, validate_question

__all__ = ["BANK_DIR", "Bank", "load_bank"]

#: Where the bank lives (inside the repository's data/ folder).
BANK_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "questions"


def _as_set(name: str, values: object, allowed: Iterable) -> set | None:
    if values is None:
        return None
    if isinstance(values, (str, int)):
        values = [values]
    chosen = set(values)
    unknown = chosen - set(allowed)
    if unknown or not chosen:
        raise ValueError(f"{name} must be a non-empty selection of {sorted(allowed)}, got {sorted(map(str, unknown))}")
    return chosen


@dataclass(frozen=True)
class Bank:
    """The validated questions, in file order, with filters."""

    questions: tuple[Question, ...]

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    def __getitem__(self, qid: str) -> Question:
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(f"no question with id {qid!r}")

    @property
    def topics(self) -> list[str]:
        """The topics present, in the course's order."""
        present = {q.topic for q in self.questions}
        return [t for t in TOPICS if t in present]

    def filter(self, topics=None, difficulties=None, kinds=None) -> Bank:
        """The questions whose topic, difficulty and kind are among the given ones (None: any)."""
        t = _as_set("topics", topics, TOPICS)
        d = _as_set("difficulties", difficulties, DIFFICULTIES)
        k = _as_set("kinds", kinds, KINDS)
        kept = tuple(q for q in self.questions if (t is None or q.topic in t) and (d is None or q.difficulty in d)
                     and (k is None or q.kind in k))
        return Bank(kept)

    def sample(self, n: int, seed: int | None = None) -> list[Question]:
        """``n`` different questions drawn at random (``seed`` makes the draw repeatable)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self.questions):
            raise ValueError(f"n must be an int between 1 and {len(self.questions)}, got {n!r}")
        return random.Random(seed).sample(list(self.questions), n)


def load_bank(directory: str | Path | None = None) -> Bank:
    """Read and validate every ``*.yaml`` file of ``directory`` (default :data:`BANK_DIR`), sorted by name.

    Each file holds a list of questions; ids must be unique across files. Errors name the file and question.
    """
    import yaml

    directory = BANK_DIR if directory is None else Path(directory)
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no *.yaml question files in {directory}")
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for path in files:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(raw, list):
            raise ValueError(f"{path.name}: must hold a list of questions, got {type(raw).__name__}")
        for item in raw:
            try:
                q = validate_question(item)
            except ValueError as err:
                raise ValueError(f"{path.name}: {err}") from err
            if q.id in seen:
                raise ValueError(f"{path.name}: question id {q.id!r} is also in {seen[q.id]}")
            seen[q.id] = path.name
            questions.append(q)
    return Bank(tuple(questions))
