"""The question bank's one schema (``data/questions/*.yaml``), checked when the bank loads (notebook 14).

Every question has ``id``, ``topic`` (one of :data:`TOPICS`), ``difficulty`` (1 core, 2 advanced, 3 expert),
``kind``, ``question``, ``explanation``, ``wrong_answer`` (the answer people commonly give), ``why_wrong`` and
``link`` (``"NN_name.ipynb#heading-anchor"``, the section that teaches it). By kind:

* ``choice``: ``choices`` (2-6 options keyed ``a``, ``b``, ...), ``answer`` (the right key); ``wrong_answer`` is
  the key of the common wrong option.
* ``numeric``: ``compute: {fn, args}`` names a function of :data:`lorakit.drill.compute.COMPUTE` (the answer is
  computed by lorakit, never typed in), ``tolerance`` (relative, default 0.01) or ``abs_tolerance``, ``unit``
  and optionally ``fmt`` (a format spec such as ``",.0f"``) and ``wrong_compute`` (the common wrong number).
* ``derive``: ``model_answer`` and ``checklist`` (the points a full answer makes; at least two).

Text fields may say ``<<answer>>``, ``<<wrong>>`` or ``<<arg>>`` (an argument of ``compute``); they are
filled with the formatted computed values, so no number in the text can drift from lorakit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["DIFFICULTIES", "KINDS", "TOPICS", "Question", "format_number", "validate_question"]

#: topic -> title. The order is the course's order.
TOPICS: dict[str, str] = {
    "peft-basics": "Why parameter-efficient fine-tuning",
    "lora-math": "The LoRA forward, shapes and parameter count",
    "initialization": "Initialization (B = 0) and its variants",
    "scaling": "alpha/r, rsLoRA and choosing the rank",
    "merging": "Merging, latency and deployment",
    "memory": "Memory accounting",
    "nf4": "NF4: quantile quantization",
    "blockwise": "Blockwise absmax and double quantization",
    "qlora": "QLoRA",
    "dora": "DoRA",
    "adalora": "AdaLoRA",
    "family": "The wider PEFT family",
    "serving": "Serving many adapters",
    "practice": "Practice: hyper-parameters, evaluation, mixed precision",
    "kernels": "Kernels and the hardware",
}
DIFFICULTIES: dict[int, str] = {1: "core", 2: "advanced", 3: "expert"}
KINDS = ("choice", "numeric", "derive")
_ID = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_PLACEHOLDER = re.compile(r"<<([a-z_][a-z0-9_]*)>>")
_COMMON = ("id", "topic", "difficulty", "kind", "question", "explanation", "wrong_answer", "why_wrong", "link")
_OPTIONAL = {"choice": ("choices", "answer"), "numeric": ("compute", "tolerance", "abs_tolerance", "unit", "fmt",
                                                          "wrong_compute"), "derive": ("model_answer", "checklist")}


def format_number(value: float, fmt: str | None = None) -> str:
    """``value`` as the bank shows it: ``fmt`` if given, else thousands separators for large integers, else 4
    significant digits."""
    if fmt:
        return format(value, fmt)
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


@dataclass(frozen=True)
class Question:
    """One validated question; ``answer`` is the choice key, the computed number, or the model answer."""

    id: str
    topic: str
    difficulty: int
    kind: str
    question: str
    explanation: str
    wrong_answer: str
    why_wrong: str
    link: str
    answer: str | float
    choices: dict[str, str] = field(default_factory=dict)
    checklist: tuple[str, ...] = ()
    unit: str = ""
    tolerance: float = 0.01
    abs_tolerance: float = 0.0
    fmt: str | None = None
    compute: dict | None = None
    wrong_value: float | None = None

    @property
    def answer_text(self) -> str:
        """The right answer as a learner reads it."""
        if self.kind == "choice":
            return f"({self.answer}) {self.choices[self.answer]}"
        if self.kind == "numeric":
            return f"{format_number(self.answer, self.fmt)}{' ' + self.unit if self.unit else ''}"
        return str(self.answer)

    @property
    def wrong_text(self) -> str:
        """The common wrong answer as a learner reads it."""
        if self.kind == "choice":
            return f"({self.wrong_answer}) {self.choices[self.wrong_answer]}"
        return self.wrong_answer


def _fail(qid: object, message: str) -> None:
    raise ValueError(f"question {qid!r}: {message}")


def _text(qid: str, raw: dict, name: str, field: str | None = None) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        _fail(qid, f"{field or name} must be a non-empty string, got {value!r}")
    return value.strip()


def _fill(qid: str, text: str, values: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        if match.group(1) not in values:
            _fail(qid, f"placeholder <<{match.group(1)}>> has no value (known: {sorted(values)})")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(sub, text)


def _number(qid: str, name: str, value: object, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        _fail(qid, f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def validate_question(raw: object, compute=None) -> Question:
    """Check one raw question (a dict from YAML) and return it as a :class:`Question`.

    ``compute(fn, args) -> float`` computes numeric answers (default :func:`lorakit.drill.compute.compute_answer`).
    Raises ValueError naming the question id and the field at fault.
    """
    from lorakit.drill.links import split_link

    if compute is None:
        from lorakit.drill.compute import compute_answer as compute
    if not isinstance(raw, dict):
        _fail(None, f"must be a mapping, got {type(raw).__name__}")
    qid = raw.get("id")
    if not isinstance(qid, str) or not _ID.fullmatch(qid):
        _fail(qid, "id must be lower-case words joined by '-', e.g. 'lora-params-7b'")
    kind = raw.get("kind")
    if kind not in KINDS:
        _fail(qid, f"kind must be one of {KINDS}, got {kind!r}")
    unknown = set(raw) - set(_COMMON) - set(_OPTIONAL[kind])
    if unknown:
        _fail(qid, f"unknown fields {sorted(unknown)} for a {kind} question")
    if raw.get("topic") not in TOPICS:
        _fail(qid, f"topic must be one of {sorted(TOPICS)}, got {raw.get('topic')!r}")
    if raw.get("difficulty") not in DIFFICULTIES or isinstance(raw.get("difficulty"), bool):
        _fail(qid, f"difficulty must be one of {sorted(DIFFICULTIES)}, got {raw.get('difficulty')!r}")
    try:
        split_link(raw.get("link"))
    except ValueError as err:
        _fail(qid, str(err))
    texts = {name: _text(qid, raw, name) for name in ("question", "explanation", "wrong_answer", "why_wrong")}
    extra: dict = {}
    values: dict[str, str] = {}
    if kind == "choice":
        choices = raw.get("choices")
        if not isinstance(choices, dict) or not 2 <= len(choices) <= 6:
            _fail(qid, "choices must map 2-6 keys to option texts")
        keys = [str(k) for k in choices]
        if keys != [chr(ord("a") + i) for i in range(len(keys))]:
            _fail(qid, f"choice keys must be a, b, c, ... in order, got {keys}")
        extra["choices"] = {str(k): _text(qid, choices, k, f"choices.{k}") for k in choices}
        if raw.get("answer") not in extra["choices"]:
            _fail(qid, f"answer must be one of the choice keys {keys}, got {raw.get('answer')!r}")
        if texts["wrong_answer"] not in extra["choices"] or texts["wrong_answer"] == raw["answer"]:
            _fail(qid, "wrong_answer of a choice question must be the key of a wrong option")
        answer: str | float = raw["answer"]
    elif kind == "numeric":
        spec = raw.get("compute")
        if not isinstance(spec, dict) or not isinstance(spec.get("fn"), str) or set(spec) - {"fn", "args"}:
            _fail(qid, "compute must be {fn: <name>, args: {...}}")
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            _fail(qid, "compute.args must be a mapping")
        try:
            answer = compute(spec["fn"], args)
        except ValueError as err:
            _fail(qid, str(err))
        if not math.isfinite(answer):
            _fail(qid, f"compute gave a non-finite answer {answer}")
        extra.update(compute={"fn": spec["fn"], "args": dict(args)}, fmt=raw.get("fmt"),
                     unit=str(raw.get("unit", "")), tolerance=_number(qid, "tolerance", raw.get("tolerance", 0.01)),
                     abs_tolerance=_number(qid, "abs_tolerance", raw.get("abs_tolerance", 0.0)))
        if extra["tolerance"] == 0 and extra["abs_tolerance"] == 0:
            _fail(qid, "a numeric question needs a tolerance > 0 or an abs_tolerance > 0")
        values = {str(k): (format_number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))
                  for k, v in args.items()}
        values["answer"] = format_number(answer, extra["fmt"])
        wrong = raw.get("wrong_compute")
        if wrong is not None:
            if not isinstance(wrong, dict) or "fn" not in wrong:
                _fail(qid, "wrong_compute must be {fn: <name>, args: {...}}")
            extra["wrong_value"] = compute(wrong["fn"], wrong.get("args") or {})
            values["wrong"] = format_number(extra["wrong_value"], extra["fmt"])
    else:
        checklist = raw.get("checklist")
        if not isinstance(checklist, list) or len(checklist) < 2 or not all(isinstance(c, str) and c.strip()
                                                                            for c in checklist):
            _fail(qid, "checklist must list at least two points a full answer makes")
        extra["checklist"] = tuple(c.strip() for c in checklist)
        answer = _text(qid, raw, "model_answer")
    filled = {name: _fill(qid, text, values) for name, text in texts.items()}
    if kind == "derive":
        answer = _fill(qid, answer, values)
    return Question(id=qid, topic=raw["topic"], difficulty=raw["difficulty"], kind=kind, link=raw["link"],
                    answer=answer, **filled, **extra)
