"""The widgets themselves: built without a front end, they show a friendly plain-text line, update their plot when
a control moves, and put one line (never a traceback) in the widget on bad input."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from lorakit import widgets  # noqa: E402
from lorakit.drill import load_bank  # noqa: E402


def _find(widget, cls, **attrs):
    """Depth-first search of a widget tree for an instance of ``cls`` with the given attribute values."""
    if isinstance(widget, cls) and all(getattr(widget, k, None) == v for k, v in attrs.items()):
        return widget
    for child in getattr(widget, "children", ()):
        found = _find(child, cls, **attrs)
        if found is not None:
            return found
    return None


def _all(widget, cls):
    out = [widget] if isinstance(widget, cls) else []
    for child in getattr(widget, "children", ()):
        out += _all(child, cls)
    return out


@pytest.mark.parametrize("make", [widgets.lora_parameter_widget, widgets.scaling_widget, widgets.memory_widget,
                                  widgets.nf4_widget])
def test_teaching_widgets_friendly_repr_and_plot(make):
    import ipywidgets as w

    panel = make()
    text = panel._repr_mimebundle_()["text/plain"]
    assert text.startswith("[interactive] ") and "run this cell" in text and "VBox" not in text
    image = _find(panel, w.Image)
    assert image is not None and image.value[:8] == b"\x89PNG\r\n\x1a\n"
    slider = _find(panel, w.SelectionSlider)
    before = bytes(image.value)
    options = list(slider.options)
    slider.value = options[0] if slider.value != options[0] else options[-1]
    assert bytes(image.value) != before


def test_bad_input_is_one_line_in_the_widget():
    import ipywidgets as w

    panel = widgets.lora_parameter_widget()
    box = _find(panel, w.IntText, description="d_in")
    box.value = 0
    messages = [h.value for h in _all(panel, w.HTML) if "check the input" in h.value]
    assert len(messages) == 1 and "d_in must be a positive int, got 0" in messages[0]
    assert "Traceback" not in messages[0] and "\n" not in messages[0]
    box.value = 64
    assert not any("check the input" in h.value for h in _all(panel, w.HTML))


def test_memory_widget_bad_batch():
    import ipywidgets as w

    panel = widgets.memory_widget()
    _find(panel, w.IntText, description="batch").value = -2
    assert any("batch must be a positive int" in h.value for h in _all(panel, w.HTML))


def test_quiz_widget_feedback_right_and_wrong():
    import ipywidgets as w

    bank = load_bank()
    panel = widgets.quiz_widget(topics="initialization", kinds="choice", seed=0, bank=bank)
    from lorakit.drill import Quiz

    q = Quiz(bank, topics="initialization", kinds="choice", seed=0).current
    radio = _find(panel, w.RadioButtons)
    check = _find(panel, w.Button, description="check")
    feedback = next(h for h in _all(panel, w.HTMLMath) if "lorakit-quiz-feedback" in h._dom_classes)
    radio.value = q.wrong_answer
    check.click()
    assert f"TRY AGAIN [{q.id}]" in feedback.value and "Common mistake" in feedback.value
    radio.value = q.answer
    check.click()
    assert f"PASS [{q.id}]" in feedback.value
    score = next(h for h in _all(panel, w.HTML) if "lorakit-quiz-score" in h._dom_classes)
    assert "1/1 correct" in score.value


def test_flashcards_widget_saves(tmp_path):
    import ipywidgets as w

    path = tmp_path / "cards.json"
    panel = widgets.flashcards_widget(path=path, topics="dora")
    _find(panel, w.Button, description="load / start session").click()
    assert path.is_file()
    _find(panel, w.Button, description="I knew it").click()
    from lorakit.drill import Flashcards

    assert Flashcards(load_bank(), path, topics="dora").box_counts()[2] == 1


def test_mock_widget_runs_to_a_summary():
    import ipywidgets as w

    panel = widgets.mock_interview_widget(n=2, seconds_per_question=60, seed=1)
    _find(panel, w.Button, description="start interview").click()
    submit = _find(panel, w.Button, description="submit answer")
    submit.click()
    submit.click()
    summary = next(h for h in _all(panel, w.HTML) if "lorakit-mock-summary" in h._dom_classes)
    assert "mock interview: 0/2 correct" in summary.value
