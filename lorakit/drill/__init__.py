"""Interview drill over the course's question bank (notebook 14): pure functions, tested; the widgets in
:mod:`lorakit.widgets` are thin views over them.

Parts, one concept a module:

* :mod:`~lorakit.drill.schema`: the one schema of ``data/questions/*.yaml`` and its validation;
* :mod:`~lorakit.drill.compute`: the functions numeric answers are computed with (lorakit, never typed in);
* :mod:`~lorakit.drill.links`: heading anchors, so every question links to the section that teaches it;
* :mod:`~lorakit.drill.bank`: loading and filtering the bank;
* :mod:`~lorakit.drill.grading`: grading an answer and the feedback text (explanation, common mistake, link);
* :mod:`~lorakit.drill.quiz`: a filtered quiz with a score by topic;
* :mod:`~lorakit.drill.flashcards`: Leitner-box spaced repetition with its state in a JSON file;
* :mod:`~lorakit.drill.mock`: a timed mock interview with a summary;
* :mod:`~lorakit.drill.cheatsheet`: the one-page sheet of formulas with lorakit-computed values.
"""

from lorakit.drill.bank import BANK_DIR, Bank, load_bank
from lorakit.drill.cheatsheet import cheat_sheet, cheat_sheet_markdown, cheat_sheet_text
from lorakit.drill.flashcards import Flashcards, default_state_path, load_state
from lorakit.drill.grading import Feedback, grade, parse_number
from lorakit.drill.mock import MockInterview
from lorakit.drill.quiz import Quiz, score_by_topic, score_text
from lorakit.drill.schema import DIFFICULTIES, KINDS, TOPICS, Question

__all__ = [
    "BANK_DIR", "DIFFICULTIES", "KINDS", "TOPICS", "Bank", "Feedback", "Flashcards", "MockInterview", "Question",
    "Quiz", "cheat_sheet", "cheat_sheet_markdown", "cheat_sheet_text", "default_state_path", "grade", "load_bank",
    "load_state", "parse_number", "score_by_topic", "score_text",
]
