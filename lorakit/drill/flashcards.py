"""Flashcards with spaced repetition in Leitner boxes, saved to a small JSON file (notebook 14).

Every question of the bank is a card. A new card starts in box 1. Knowing a card moves it up one box (at most
:data:`N_BOXES`); missing it sends it back to box 1. Box ``k`` comes back every ``INTERVALS[k - 1]`` sessions
(1, 2, 4, 8, 16), so well-known cards are seen rarely and missed ones every session (Leitner, 1972).

The state (session number, each card's box and the session it was last seen) is JSON in a file the learner
chooses; the default is ``~/.lorakit/flashcards.json`` (or ``$LORAKIT_DRILL_DIR/flashcards.json``). A missing
file starts fresh; an unreadable or malformed one is kept aside as ``<name>.corrupt`` and the deck starts fresh,
and both say so in :attr:`Flashcards.message`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.drill.bank import Bank
from lorakit.drill.schema import Question

__all__ = ["INTERVALS", "N_BOXES", "Flashcards", "LeitnerState", "default_state_path", "load_state", "save_state"]

N_BOXES = 5
INTERVALS = (1, 2, 4, 8, 16)
STATE_VERSION = 1


def default_state_path() -> Path:
    """``$LORAKIT_DRILL_DIR/flashcards.json`` if set, else ``~/.lorakit/flashcards.json``."""
    root = os.environ.get("LORAKIT_DRILL_DIR")
    return (Path(root) if root else Path.home() / ".lorakit") / "flashcards.json"


@dataclass
class LeitnerState:
    """``session``: sessions started; ``boxes[id]``: the card's box (1..5); ``seen[id]``: session last reviewed."""

    session: int = 0
    boxes: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"version": STATE_VERSION, "session": self.session, "boxes": self.boxes, "seen": self.seen}

    @classmethod
    def from_json(cls, data: object) -> LeitnerState:
        """Parse and check a saved state; ValueError says what is malformed."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} flashcard state")
        session, boxes, seen = data.get("session"), data.get("boxes"), data.get("seen")
        if isinstance(session, bool) or not isinstance(session, int) or session < 0:
            raise ValueError(f"session must be a non-negative int, got {session!r}")
        if not isinstance(boxes, dict) or not all(isinstance(b, int) and 1 <= b <= N_BOXES for b in boxes.values()):
            raise ValueError(f"boxes must map card ids to boxes 1..{N_BOXES}")
        if not isinstance(seen, dict) or not all(isinstance(s, int) and 0 <= s <= session for s in seen.values()):
            raise ValueError("seen must map card ids to past session numbers")
        return cls(session, {str(k): v for k, v in boxes.items()}, {str(k): v for k, v in seen.items()})


def load_state(path: str | Path) -> tuple[LeitnerState, str]:
    """``(state, message)``: the saved state, or a fresh one with a message saying why."""
    path = Path(path)
    if not path.exists():
        return LeitnerState(), f"no saved flashcards at {path}: starting a fresh deck"
    try:
        return LeitnerState.from_json(json.loads(path.read_text(encoding="utf-8"))), f"loaded flashcards from {path}"
    except (OSError, ValueError, UnicodeDecodeError) as err:
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)
            kept = f"; the old file is kept as {aside.name}"
        except OSError:
            kept = ""
        return LeitnerState(), f"the flashcard file {path} could not be read ({err}): starting a fresh deck{kept}"


def save_state(state: LeitnerState, path: str | Path) -> None:
    """Write the state atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(state.to_json(), handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


class Flashcards:
    """A deck over ``bank`` (optionally filtered by topic) whose progress lives in ``path``.

    Call :meth:`start_session`, then review the cards of :meth:`due` with :meth:`review` (``knew=True/False``);
    every review is saved at once.
    """

    def __init__(self, bank: Bank, path: str | Path | None = None, topics=None) -> None:
        if not isinstance(bank, Bank):
            raise TypeError(f"bank must be a lorakit.drill.Bank (load_bank()), got {type(bank).__name__}")
        self.cards: list[Question] = list(bank.filter(topics=topics))
        self.path = default_state_path() if path is None else Path(path)
        self.state, self.message = load_state(self.path)

    def box(self, card_id: str) -> int:
        return self.state.boxes.get(card_id, 1)

    def is_due(self, card_id: str) -> bool:
        """A card is due when it was never seen, or ``INTERVALS[box - 1]`` sessions have passed since."""
        if card_id not in self.state.seen:
            return True
        return self.state.session - self.state.seen[card_id] >= INTERVALS[self.box(card_id) - 1]

    def start_session(self) -> list[Question]:
        """Begin a new session (saved) and return the cards due in it."""
        self.state.session += 1
        save_state(self.state, self.path)
        return self.due()

    def due(self) -> list[Question]:
        """The cards due now, lowest box first (then bank order)."""
        order = {c.id: i for i, c in enumerate(self.cards)}
        due = [c for c in self.cards if self.is_due(c.id)]
        return sorted(due, key=lambda c: (self.box(c.id), order[c.id]))

    def review(self, card_id: str, knew: bool) -> int:
        """Record one review (``knew``: up one box, else back to box 1), save, and return the new box."""
        if card_id not in {c.id for c in self.cards}:
            raise ValueError(f"card_id {card_id!r} is not in this deck")
        if not isinstance(knew, bool):
            raise TypeError(f"knew must be a bool, got {type(knew).__name__}")
        if self.state.session == 0:
            self.state.session = 1
        new = min(self.box(card_id) + 1, N_BOXES) if knew else 1
        self.state.boxes[card_id] = new
        self.state.seen[card_id] = self.state.session
        save_state(self.state, self.path)
        return new

    def box_counts(self) -> dict[int, int]:
        """How many cards of the deck sit in each box."""
        counts = {b: 0 for b in range(1, N_BOXES + 1)}
        for c in self.cards:
            counts[self.box(c.id)] += 1
        return counts
