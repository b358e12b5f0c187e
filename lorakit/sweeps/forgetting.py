"""What fine-tuning costs, read from a :func:`lorakit.sweeps.finetune` record (notebook 03, section 6).

* :func:`forgetting`: how much a pretraining task (``copy``, ``rot1``) lost since step 0, the pretrained model;
  "learns less, forgets less" (Biderman et al., 2024) plots the target task against this;
* :func:`tradeoff`: the target task and the forgetting at every evaluated step (one curve per run);
* :func:`generalisation_gap`: the training words against the held-out words (a record of
  ``course_tasks(..., eval_train=True)``): over-fitting as the rank grows with little data.

Accuracies (``exact_match``, ``letter_acc``) are better high and the loss low; every function here is signed so that
a larger value is worse (more forgotten, a wider gap), whichever metric is read.
"""

from __future__ import annotations

from lorakit.sweeps.course import METRICS

__all__ = ["forgetting", "generalisation_gap", "tradeoff"]


def _index(record: dict, step: int | None) -> int:
    steps = record["eval_steps"]
    if step is None:
        return len(steps) - 1
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an int or None, got {type(step).__name__}")
    if step not in steps:
        raise ValueError(f"step {step} was not evaluated; the evaluated steps are {steps[:3]} ... {steps[-2:]}")
    return steps.index(step)


def _curve(record: dict, task: str, metric: str) -> list[float | None]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if task not in record["metrics"]:
        raise ValueError(f"task {task!r} was not evaluated in this record; it has {sorted(record['metrics'])}")
    return record["metrics"][task][metric]


def _worse(before: float | None, after: float | None, metric: str) -> float | None:
    """How much worse ``after`` is than ``before`` (None if either is missing, i.e. not finite)."""
    if before is None or after is None:
        return None
    return after - before if metric == "loss" else before - after


def forgetting(record: dict, task: str = "copy", metric: str = "exact_match", step: int | None = None) -> float | None:
    """``task``'s ``metric`` at step 0 (the pretrained model) minus at ``step`` (default: the last evaluation).

    For ``metric="loss"`` the sign is flipped (the rise of the loss), so a positive value always means forgotten.
    None when the value at ``step`` was not finite (a diverged run).
    """
    curve = _curve(record, task, metric)
    return _worse(curve[0], curve[_index(record, step)], metric)


def tradeoff(record: dict, target: str = "caesar", task: str = "copy", metric: str = "exact_match",
             target_metric: str | None = None) -> list[tuple[int, float | None, float | None]]:
    """``[(step, target's metric, forgetting of task)]`` at every evaluated step: a run's target-vs-forgetting path.

    ``target_metric`` (default: ``metric``) is read on ``target``; ``metric`` on ``task`` (see :func:`forgetting`).
    """
    values = _curve(record, target, metric if target_metric is None else target_metric)
    return [(step, values[i], forgetting(record, task, metric, step)) for i, step in enumerate(record["eval_steps"])]


def generalisation_gap(record: dict, metric: str = "exact_match", step: int | None = None, train: str = "train",
                       heldout: str = "caesar") -> float | None:
    """``train``'s ``metric`` minus ``heldout``'s at ``step`` (default: the last evaluation).

    For ``metric="loss"`` it is the held-out loss minus the training loss. The record must have evaluated the
    training words (``course_tasks(..., eval_train=True)``). None when either value was not finite.
    """
    i = _index(record, step)
    return _worse(_curve(record, train, metric)[i], _curve(record, heldout, metric)[i], metric)
