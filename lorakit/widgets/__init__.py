"""Widgets that teach: thin ipywidgets views over tested pure functions, each with a plot that updates.

Parts, one widget a module (the pure functions next to each widget are what the tests exercise):

* :mod:`~lorakit.widgets.parameters`: the LoRA parameter calculator (notebook 01);
* :mod:`~lorakit.widgets.scaling`: ``alpha/r`` vs ``alpha/sqrt(r)`` with notebook 03's measured rank sweep;
* :mod:`~lorakit.widgets.memory`: the memory calculator, stacked GiB for full FT / LoRA / QLoRA (notebook 05);
* :mod:`~lorakit.widgets.nf4`: NF4 levels on the normal pdf and the block-size trade-off (notebooks 06-07);
* :mod:`~lorakit.widgets.drill`: quiz, flashcards and mock interview over the question bank (notebook 14);
* :mod:`~lorakit.widgets._ui`: what they share: a friendly line before the cell runs, one-line errors, PNG plots.
"""

from lorakit.widgets.drill import flashcards_widget, mock_interview_widget, quiz_widget
from lorakit.widgets.memory import activation_bytes, memory_breakdown, memory_summary, memory_widget
from lorakit.widgets.nf4 import blocksize_tradeoff, code_usage, nf4_levels_on_normal, nf4_widget
from lorakit.widgets.parameters import lora_parameter_summary, lora_parameter_text, lora_parameter_widget
from lorakit.widgets.scaling import load_rank_sweep, rank_sweep_points, scaling_curves, scaling_summary, scaling_widget

__all__ = [
    "activation_bytes", "blocksize_tradeoff", "code_usage", "flashcards_widget", "load_rank_sweep",
    "lora_parameter_summary", "lora_parameter_text", "lora_parameter_widget", "memory_breakdown", "memory_summary",
    "memory_widget", "mock_interview_widget", "nf4_levels_on_normal", "nf4_widget", "quiz_widget",
    "rank_sweep_points", "scaling_curves", "scaling_summary", "scaling_widget",
]
