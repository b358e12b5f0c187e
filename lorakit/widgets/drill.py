"""Quiz, flashcards and mock interview over the question bank (notebook 14): views over :mod:`lorakit.drill`.

Every verdict, score, box move and summary comes from the pure, tested classes of :mod:`lorakit.drill`
(``Quiz``, ``Flashcards``, ``MockInterview``); these functions only lay out controls. CSS classes
``lorakit-quiz-*``, ``lorakit-cards-*`` and ``lorakit-mock-*`` name the parts (the browser test uses them).
"""

from __future__ import annotations

import html

from lorakit.widgets._ui import Panel, figure, guarded, png_bytes

__all__ = ["flashcards_widget", "mock_interview_widget", "quiz_widget"]


def _pre(text: str) -> str:
    return f"<pre style='white-space:pre-wrap;margin:0'>{html.escape(text)}</pre>"


def question_html(q) -> str:
    """The question, its options (a choice) or unit (a number), and its topic and difficulty, as HTML."""
    from lorakit.drill import DIFFICULTIES, TOPICS

    body = f"<b>[{q.id}]</b> {html.escape(q.question)}"
    if q.kind == "choice":
        body += "<br>" + "<br>".join(f"({k}) {html.escape(v)}" for k, v in q.choices.items())
    elif q.kind == "numeric":
        body += f"<br><i>answer with a number{' in ' + html.escape(q.unit) if q.unit else ''}</i>"
    else:
        body += "<br><i>derive it: write your answer, then reveal the model answer and tick what you covered</i>"
    meta = f"{TOPICS[q.topic]} · {DIFFICULTIES[q.difficulty]}"
    return f"<div style='font-size:0.95em;color:#555'>{meta}</div><div>{body}</div>"


class _AnswerBox:
    """The input for one question: radio keys, a text box for a number, or notes + a checklist to tick."""

    def __init__(self, prefix: str) -> None:
        import ipywidgets as w

        self.w = w
        self.prefix = prefix
        self.choice = w.RadioButtons(options=["a"], value=None, description="answer")
        self.number = w.Text(placeholder="a number, e.g. 65536 or 8.4M", description="answer")
        self.notes = w.Textarea(placeholder="your derivation (for you; not graded)", layout=w.Layout(width="95%"))
        self.reveal = w.Button(description="show model answer")
        self.model = w.HTMLMath()
        self.checks: list = []
        self.checklist = w.VBox([])
        self.box = w.VBox([])
        self.choice.add_class(f"{prefix}-choice")
        self.number.add_class(f"{prefix}-number")
        self.reveal.on_click(self._reveal)
        self.question = None

    def show(self, q) -> None:
        w = self.w
        self.question = q
        self.model.value = ""
        if q.kind == "choice":
            self.choice.options = list(q.choices)
            self.choice.value = None
            self.box.children = [self.choice]
        elif q.kind == "numeric":
            self.number.value = ""
            self.box.children = [w.HBox([self.number, w.Label(q.unit)])]
        else:
            self.notes.value = ""
            self.checks = [w.Checkbox(value=False, description=item, indent=False,
                                      layout=w.Layout(width="95%")) for item in q.checklist]
            self.checklist.children = []
            self.box.children = [self.notes, self.reveal, self.model, self.checklist]

    def _reveal(self, *_: object) -> None:
        q = self.question
        self.model.value = f"<b>Model answer:</b> {html.escape(q.answer_text)}<br><b>Tick what you covered:</b>"
        self.checklist.children = self.checks

    def response(self) -> object:
        q = self.question
        if q.kind == "choice":
            return self.choice.value
        if q.kind == "numeric":
            return self.number.value
        if not self.checklist.children:
            return None
        return [c.value for c in self.checks]


def quiz_widget(topics=None, difficulties=None, kinds=None, n: int | None = None, seed: int = 0, bank=None):
    """A quiz: topic / difficulty / kind filters, immediate feedback with the explanation, a score by topic."""
    import ipywidgets as w

    from lorakit.drill import DIFFICULTIES, KINDS, TOPICS, Quiz, load_bank

    bank = load_bank() if bank is None else bank
    def choose(label: str, options: list[tuple[str, object]], value: object):
        """A dropdown whose first option, "all ...", stands for no filter (None)."""
        values = [v for _, v in options]
        return w.Dropdown(options=[(f"all {label}s", None), *options], description=label,
                          index=values.index(value) + 1 if value in values else 0)

    topic = choose("topic", [(v, k) for k, v in TOPICS.items() if k in bank.topics], topics)
    level = choose("level", [(v, k) for k, v in DIFFICULTIES.items()], difficulties)
    kind = choose("kind", [(k, k) for k in KINDS], kinds)
    restart = w.Button(description="new quiz")
    progress, question, feedback, message = w.HTML(), w.HTMLMath(), w.HTMLMath(), w.HTML()
    score = w.HTML()
    check, nxt = w.Button(description="check", button_style="primary"), w.Button(description="next")
    answer = _AnswerBox("lorakit-quiz")
    for part, name in ((question, "question"), (feedback, "feedback"), (score, "score"), (check, "check"),
                       (nxt, "next"), (progress, "progress"), (message, "message")):
        part.add_class(f"lorakit-quiz-{name}")
    state: dict = {}

    def show() -> None:
        quiz = state["quiz"]
        feedback.value = ""
        q = quiz.current
        if q is None:
            progress.value = f"done: {len(quiz.questions)} questions"
            question.value = "<b>Quiz over.</b> Start a new quiz or change the filters."
            answer.box.children = []
            return
        progress.value = f"question {quiz.position + 1} of {len(quiz.questions)}"
        question.value = question_html(q)
        answer.show(q)

    def new_quiz() -> None:
        chosen = [x for x in (topic.value, level.value, kind.value)]
        state["quiz"] = Quiz(bank, topics=chosen[0], difficulties=chosen[1], kinds=chosen[2], n=n, seed=seed)
        score.value = ""
        show()

    def on_check() -> None:
        quiz = state["quiz"]
        if quiz.current is None:
            return
        fb = quiz.answer(answer.response())
        feedback.value = _pre(fb.text())
        score.value = "<b>Score by topic</b>" + _pre(quiz.score_text())

    def on_next() -> None:
        state["quiz"].next()
        show()

    restart.on_click(guarded(new_quiz, message))
    check.on_click(guarded(on_check, message))
    nxt.on_click(guarded(on_next, message))
    for control in (topic, level, kind):
        control.observe(guarded(new_quiz, message), "value")
    guarded(new_quiz, message)()
    return Panel([w.HBox([topic, level, kind, restart]), progress, question, answer.box, w.HBox([check, nxt]),
                  message, feedback, score], "quiz over the question bank (filters, feedback, score by topic)")


def _box_plot(counts: dict[int, int]) -> bytes:
    fig = figure(4.0, 1.8)
    ax = fig.add_subplot()
    ax.bar([f"box {b}" for b in counts], list(counts.values()), color="C0")
    ax.set_ylabel("cards")
    ax.set_title("Leitner boxes (higher = seen less often)", fontsize=8)
    return png_bytes(fig)


def flashcards_widget(path=None, topics=None, bank=None):
    """Flashcards with Leitner boxes; progress is saved to ``path`` (default ``~/.lorakit/flashcards.json``)."""
    import ipywidgets as w

    from lorakit.drill import Flashcards, default_state_path, load_bank

    bank = load_bank() if bank is None else bank
    where = w.Text(value=str(default_state_path() if path is None else path), description="saved in",
                   layout=w.Layout(width="70%"))
    load = w.Button(description="load / start session", button_style="primary")
    status, front, back, message = w.HTML(), w.HTMLMath(), w.HTMLMath(), w.HTML()
    show_back = w.Button(description="show answer")
    knew, missed = w.Button(description="I knew it", button_style="success"), w.Button(description="not yet")
    image = w.Image(format="png", layout=w.Layout(width="360px"))
    for part, name in ((front, "front"), (back, "back"), (status, "status"), (knew, "knew"), (missed, "missed")):
        part.add_class(f"lorakit-cards-{name}")
    state: dict = {}

    def refresh() -> None:
        deck = state["deck"]
        state["due"] = deck.due()
        counts = deck.box_counts()
        image.value = _box_plot(counts)
        back.value = ""
        if not state["due"]:
            front.value = "<b>Nothing due in this session.</b> Come back next session (load again)."
            status.value = html.escape(deck.message)
            return
        card = state["due"][0]
        front.value = question_html(card)
        status.value = (f"{html.escape(deck.message)}<br>session {deck.state.session}: {len(state['due'])} cards due; "
                        f"this one is in box {deck.box(card.id)}")

    def on_load() -> None:
        deck = Flashcards(bank, where.value, topics=topics)
        deck.start_session()
        state["deck"] = deck
        refresh()

    def on_show() -> None:
        if state.get("due"):
            card = state["due"][0]
            back.value = _pre(f"Answer: {card.answer_text}\nWhy: {card.explanation}\nRead more: notebooks/{card.link}")

    def review(known: bool) -> None:
        if state.get("due"):
            state["deck"].review(state["due"][0].id, known)
            refresh()

    load.on_click(guarded(on_load, message))
    show_back.on_click(guarded(on_show, message))
    knew.on_click(guarded(lambda: review(True), message))
    missed.on_click(guarded(lambda: review(False), message))
    return Panel([w.HBox([where, load]), status, message, front, show_back, back, w.HBox([knew, missed]), image],
                 "flashcards with spaced repetition (Leitner boxes, saved to a JSON file)")


def mock_interview_widget(n: int = 5, seconds_per_question: int = 120, seed: int | None = None, topics=None,
                          bank=None):
    """A timed mock interview: ``n`` random questions, a countdown per question, a summary at the end."""
    import ipywidgets as w

    from lorakit.drill import MockInterview, load_bank

    bank = load_bank() if bank is None else bank
    count = w.IntText(value=n, description="questions")
    limit = w.IntText(value=seconds_per_question, description="seconds each")
    start = w.Button(description="start interview", button_style="primary")
    clock = w.Play(interval=1000, min=0, max=10**6, value=0, show_repeat=False, layout=w.Layout(display="none"))
    timer, question, summary, message = w.HTML(), w.HTMLMath(), w.HTML(), w.HTML()
    submit = w.Button(description="submit answer")
    answer = _AnswerBox("lorakit-mock")
    for part, name in ((question, "question"), (timer, "timer"), (summary, "summary"), (submit, "submit")):
        part.add_class(f"lorakit-mock-{name}")
    state: dict = {}

    def show() -> None:
        mock = state["mock"]
        q = mock.current
        if q is None:
            clock.playing = False
            question.value, timer.value = "<b>Interview over.</b>", ""
            answer.box.children = []
            summary.value = _pre(mock.summary_text())
            return
        question.value = f"question {len(mock.answers) + 1} of {len(mock.questions)}<br>" + question_html(q)
        answer.show(q)
        tick()

    def tick(*_: object) -> None:
        mock = state.get("mock")
        if mock is None or mock.done:
            return
        left = mock.time_left()
        timer.value = (f"time left: {left:.0f} s" if left > 0 else
                       "<span style='color:#b00020'>time is up: answer now (it counts as over time)</span>")

    def on_start() -> None:
        state["mock"] = MockInterview(bank, n=count.value, seconds_per_question=limit.value, seed=seed, topics=topics)
        state["mock"].start()
        summary.value = ""
        clock.value = 0
        clock.playing = True
        show()

    def on_submit() -> None:
        mock = state.get("mock")
        if mock is None or mock.done:
            return
        mock.answer(answer.response())
        show()

    clock.observe(tick, "value")
    start.on_click(guarded(on_start, message))
    submit.on_click(guarded(on_submit, message))
    return Panel([w.HBox([count, limit, start]), clock, timer, message, question, answer.box, submit, summary],
                 "timed mock interview (random questions, a countdown, a summary)")
