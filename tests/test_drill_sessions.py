"""lorakit.drill quiz, flashcards (Leitner boxes, JSON state) and mock interview."""

from __future__ import annotations

import json

import pytest

from lorakit.drill import Flashcards, MockInterview, Quiz, default_state_path, load_bank, load_state, score_by_topic
from lorakit.drill.flashcards import INTERVALS, N_BOXES, LeitnerState, save_state

BANK = load_bank()


# ----------------------------------------------------------------------------- bank filters
def test_filters():
    scaling = BANK.filter(topics="scaling")
    assert len(scaling) > 0 and all(q.topic == "scaling" for q in scaling)
    hard = BANK.filter(difficulties=[3], kinds="choice")
    assert all(q.difficulty == 3 and q.kind == "choice" for q in hard)
    both = BANK.filter(topics=["nf4", "qlora"])
    assert len(both) == len(BANK.filter(topics="nf4")) + len(BANK.filter(topics="qlora"))
    with pytest.raises(ValueError, match="topics must"):
        BANK.filter(topics="nope")
    with pytest.raises(ValueError, match="difficulties"):
        BANK.filter(difficulties=[7])
    with pytest.raises(KeyError, match="no question"):
        BANK["nope"]


# ----------------------------------------------------------------------------- quiz
def test_quiz_order_is_seeded_and_filtered():
    a, b = Quiz(BANK, topics="memory", seed=1), Quiz(BANK, topics="memory", seed=1)
    assert [q.id for q in a.questions] == [q.id for q in b.questions]
    assert {q.topic for q in a.questions} == {"memory"}
    assert [q.id for q in Quiz(BANK, topics="memory", shuffle=False).questions] == [q.id for q in BANK.filter("memory")]
    assert len(Quiz(BANK, n=5).questions) == 5


def test_quiz_flow_and_score_by_topic():
    quiz = Quiz(BANK, topics=["scaling", "memory"], kinds="numeric", seed=0)
    first = quiz.current
    assert not quiz.answer(None).correct and quiz.feedback == {}
    assert not quiz.answer(first.answer * 3 + 1).correct
    assert quiz.answer(first.answer).correct  # a second answer replaces the first verdict
    second = quiz.next()
    quiz.answer("nonsense")
    table = quiz.score_by_topic()
    assert sum(row["answered"] for row in table.values()) == 2
    assert sum(row["correct"] for row in table.values()) == 1
    assert table[first.topic]["correct"] >= 1 and second.topic in table
    assert "total" in quiz.score_text() and "1/2 correct" in quiz.score_text()
    while not quiz.done:
        quiz.next()
    assert quiz.current is None and quiz.next() is None
    with pytest.raises(ValueError, match="over"):
        quiz.answer(1)


def test_quiz_bad_input():
    with pytest.raises(ValueError, match="no question matches"):
        Quiz(BANK, topics="kernels", kinds="derive")
    with pytest.raises(TypeError, match="bank must"):
        Quiz([1, 2])
    with pytest.raises(ValueError, match="n must"):
        Quiz(BANK, n=0)


def test_score_by_topic_weakest_first():
    quiz = Quiz(BANK, shuffle=False)
    scaling = next(q for q in BANK if q.topic == "scaling" and q.kind == "numeric")
    memory = next(q for q in BANK if q.topic == "memory" and q.kind == "numeric")
    from lorakit.drill import grade, score_text

    fbs = [grade(scaling, scaling.answer), grade(memory, -1.0)]
    assert list(score_by_topic(fbs)) == ["scaling", "memory"]  # course order
    assert score_text(fbs).splitlines()[0].startswith("memory")  # weakest first
    assert quiz.score_text() == "no answers yet"


# ----------------------------------------------------------------------------- flashcards
def test_leitner_moves_and_persistence(tmp_path):
    path = tmp_path / "deck" / "cards.json"
    deck = Flashcards(BANK, path, topics="nf4")
    assert "starting a fresh deck" in deck.message and str(path) in deck.message
    due = deck.start_session()
    assert len(due) == len(deck.cards) and path.is_file()
    card = due[0].id
    assert [deck.review(card, True) for _ in range(N_BOXES + 2)] == [2, 3, 4, 5, 5, 5, 5]
    assert deck.review(card, False) == 1
    deck.review(due[1].id, True)
    again = Flashcards(BANK, path, topics="nf4")
    assert again.message.startswith("loaded") and again.box(due[1].id) == 2 and again.box(card) == 1
    assert sum(again.box_counts().values()) == len(again.cards)
    saved = json.loads(path.read_text())
    assert saved["version"] == 1 and saved["boxes"][due[1].id] == 2


def test_spacing_follows_intervals(tmp_path):
    deck = Flashcards(BANK, tmp_path / "s.json", topics="dora")
    card = deck.start_session()[0].id
    deck.review(card, True)  # box 2: due again after INTERVALS[1] sessions
    due_in = []
    for _ in range(4):
        due_in.append(card in {c.id for c in deck.start_session()})
    assert due_in == [i + 1 >= INTERVALS[1] for i in range(4)]
    assert INTERVALS == tuple(2**k for k in range(N_BOXES))


@pytest.mark.parametrize("content", ["{ not json", "[]", '{"version": 9}', '{"version": 1, "session": -1, "boxes": {},'
                                     ' "seen": {}}', '{"version": 1, "session": 1, "boxes": {"a": 9}, "seen": {}}',
                                     b"\xff\xfe\x00"])
def test_corrupt_state_resets_with_message(tmp_path, content):
    path = tmp_path / "cards.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    deck = Flashcards(BANK, path, topics="dora")
    assert "could not be read" in deck.message and "starting a fresh deck" in deck.message
    assert deck.state.session == 0 and deck.state.boxes == {}
    assert (tmp_path / "cards.json.corrupt").is_file() and not path.exists()
    deck.start_session()
    assert load_state(path)[0].session == 1


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.delenv("LORAKIT_DRILL_DIR", raising=False)
    assert default_state_path().parts[-2:] == (".lorakit", "flashcards.json")
    monkeypatch.setenv("LORAKIT_DRILL_DIR", str(tmp_path))
    assert default_state_path() == tmp_path / "flashcards.json"


def test_flashcards_bad_input(tmp_path):
    deck = Flashcards(BANK, tmp_path / "x.json", topics="dora")
    with pytest.raises(ValueError, match="card_id"):
        deck.review("nope", True)
    with pytest.raises(TypeError, match="knew"):
        deck.review(deck.cards[0].id, "yes")
    with pytest.raises(TypeError, match="bank must"):
        Flashcards({}, tmp_path / "y.json")


def test_save_is_atomic(tmp_path):
    path = tmp_path / "a.json"
    save_state(LeitnerState(3, {"x": 2}, {"x": 3}), path)
    assert load_state(path)[0] == LeitnerState(3, {"x": 2}, {"x": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# ----------------------------------------------------------------------------- mock interview
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_mock_interview_timing_and_summary():
    clock = Clock()
    mock = MockInterview(BANK, n=3, seconds_per_question=30, seed=5, clock=clock, difficulties=[1])
    assert len({q.id for q in mock.questions}) == 3 and all(q.difficulty == 1 for q in mock.questions)
    assert [q.id for q in MockInterview(BANK, n=3, seed=5, difficulties=[1]).questions] == [q.id for q in
                                                                                          mock.questions]
    with pytest.raises(ValueError, match="start"):
        mock.answer("a")
    mock.start()
    clock.t = 10
    assert mock.time_left() == 20

    def right(q):
        return q.answer if q.kind != "derive" else list(range(len(q.checklist)))

    first = mock.answer(right(mock.current))
    assert first.feedback.correct and first.seconds == 10 and not first.over_time
    clock.t = 60  # 50 s on the second: over the limit, so wrong even if right
    late = mock.answer(right(mock.current))
    assert late.over_time and not late.feedback.correct and "right, but after 50 s" in late.feedback.headline
    clock.t = 65
    blank = mock.answer(None)
    assert not blank.feedback.correct and "no answer" in blank.feedback.headline
    assert mock.done and mock.current is None
    s = mock.summary()
    assert (s["asked"], s["answered"], s["correct"]) == (3, 3, 1)
    assert s["seconds"] == [10, 50, 5] and s["over_time"] == [late.feedback.question.id]
    assert s["score"] == pytest.approx(1 / 3) and set(s["weak_topics"]) <= set(s["by_topic"])
    text = mock.summary_text()
    assert "1/3 correct" in text and "(over time)" in text and "revise:" in text
    with pytest.raises(ValueError, match="over"):
        mock.answer(1)


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must"), ({"seconds_per_question": 0}, "seconds"),
                                           ({"seconds_per_question": "1"}, "seconds"), ({"n": 10**6}, "n must")])
def test_mock_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MockInterview(BANK, **kwargs)
