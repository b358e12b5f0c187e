"""Reading the records of :func:`lorakit.sweeps.finetune`: what the notebooks report about a sweep.

* :func:`steps_to`: the first evaluated step at which a curve reaches a threshold (the Caesar task has a phase
  transition, so "steps until exact-match >= 0.9" compares runs better than one snapshot at a fixed step);
* :func:`value_at`: another curve at that step (e.g. what is left of ``copy`` when Caesar is learned);
* :func:`arm_of`, :func:`select`, :func:`per_seed`: group records by arm (everything but lr and seed) and seed;
* :func:`best_lr`: each arm at its own best learning rate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable

from lorakit.results import steps_to_threshold
from lorakit.sweeps.course import RunConfig

__all__ = [
    "arm_of", "best_lr", "describe_steps", "final_value", "lr_table", "max_rebound", "per_seed", "select",
    "steps_by_seed", "steps_to", "value_at",
]

_FIELDS = tuple(RunConfig.__dataclass_fields__)


def steps_to(record: dict, threshold: float = 0.9, task: str = "caesar", metric: str = "exact_match") -> int | None:
    """The first evaluated step at which ``task``'s ``metric`` reaches ``threshold`` (None: not within the run)."""
    values = [v if v is not None else float("-inf") for v in record["metrics"][task][metric]]
    return steps_to_threshold(record["eval_steps"], values, threshold)


def value_at(record: dict, step: int | None, task: str = "copy", metric: str = "exact_match") -> float | None:
    """``task``'s ``metric`` at the evaluated ``step``; None when ``step`` is None (the threshold was not reached)."""
    if step is None:
        return None
    steps = record["eval_steps"]
    if step not in steps:
        raise ValueError(f"step {step} was not evaluated; the evaluated steps are {steps[:3]} ... {steps[-2:]}")
    return record["metrics"][task][metric][steps.index(step)]


def arm_of(record: dict) -> str:
    """A readable arm label from the config, e.g. ``"lora r=8"``, ``"full"``, ``"lora r=8 zero_A_random_B"``.

    Two records share an arm when their configs differ at most in ``lr`` and ``seed`` (and ``steps``): the label
    shows every other field that differs from :class:`~lorakit.sweeps.RunConfig`'s defaults.
    """
    c, default = record["config"], RunConfig()
    parts = [c["method"]]
    if c["method"] == "lora":
        parts.append(f"r={c['r']}")
        if c["alpha"] != default.alpha:
            parts.append(f"alpha={c['alpha']:g}")
        if c["rslora"]:
            parts.append("rslora")
        if c["start"] != default.start:
            parts.append(c["start"])
        if c["target_modules"] != default.target_modules:
            parts.append(f"targets={c['target_modules']}")
    if c["weight_decay"] != default.weight_decay:
        parts.append(f"wd={c['weight_decay']:g}")
    if c["base"] != default.base:
        parts.append(f"{c['base']} base")
    if c["batch_size"] != default.batch_size:
        parts.append(f"batch={c['batch_size']}")
    return " ".join(parts)


def select(records: Iterable[dict], arm: str | None = None, **where: object) -> list[dict]:
    """The records of ``arm`` (an :func:`arm_of` label) whose config has every ``field=value`` of ``where``."""
    unknown = set(where) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}; the fields are {_FIELDS}")
    return [rec for rec in records if all(rec["config"][k] == v for k, v in where.items())
            and (arm is None or arm_of(rec) == arm)]


def per_seed(records: Iterable[dict], fn: Callable[[dict], object]) -> dict[int, object]:
    """``{seed: fn(record)}``, sorted by seed; ValueError if two records share a seed (select an arm and lr first)."""
    out: dict[int, object] = {}
    for rec in records:
        seed = rec["config"]["seed"]
        if seed in out:
            raise ValueError(f"two records for seed {seed}: select one arm and one lr first")
        out[seed] = fn(rec)
    return dict(sorted(out.items()))


def _score(records: list[dict], threshold: float) -> tuple[float, float]:
    # primary: the median over seeds of the steps to the threshold (a run that never reaches it counts as one
    # evaluation after its last step); tie-break: the mean final held-out Caesar loss (a diverged run counts inf)
    steps = []
    for rec in records:
        s = steps_to(rec, threshold)
        steps.append(s if s is not None else rec["eval_steps"][-1] + rec["config"]["eval_every"])
    finals = [rec["metrics"]["caesar"]["loss"][-1] for rec in records]
    final = statistics.fmean(f if f is not None else float("inf") for f in finals)
    return statistics.median(steps), final


def lr_table(records: Iterable[dict], threshold: float = 0.9) -> dict[str, dict[float, tuple[float, float]]]:
    """``{arm: {lr: (median steps to threshold, mean final Caesar loss)}}`` over the seeds of each (arm, lr)."""
    grouped: dict[str, dict[float, list[dict]]] = {}
    for rec in records:
        grouped.setdefault(arm_of(rec), {}).setdefault(rec["config"]["lr"], []).append(rec)
    return {arm: {lr: _score(recs, threshold) for lr, recs in sorted(by_lr.items())} for arm, by_lr in grouped.items()}


def best_lr(records: Iterable[dict], threshold: float = 0.9) -> dict[str, float]:
    """``{arm: lr}``: each arm's learning rate with the fewest median steps to ``threshold`` over its seeds.

    Ties (for instance when no lr of an arm reaches the threshold) go to the lower mean final held-out loss.
    """
    table = lr_table(records, threshold)
    return {arm: min(scores, key=lambda lr, s=scores: (*s[lr], lr)) for arm, scores in table.items()}


def steps_by_seed(records: Iterable[dict], threshold: float = 0.9) -> dict[str, dict[float, dict[int, int | None]]]:
    """``{arm: {lr: {seed: steps to threshold}}}`` (None where a run never reached it), sorted by lr and seed."""
    out: dict[str, dict[float, dict[int, int | None]]] = {}
    for rec in records:
        out.setdefault(arm_of(rec), {}).setdefault(rec["config"]["lr"], {})[rec["config"]["seed"]] = steps_to(
            rec, threshold)
    return {arm: {lr: dict(sorted(s.items())) for lr, s in sorted(by_lr.items())} for arm, by_lr in out.items()}


def describe_steps(steps: dict[int, int | None], cap: int | None = None) -> str:
    """``"200 [175-350]"``: the (lower) median and the range over seeds of steps to a threshold.

    A run that never reached it shows as ``>cap`` (or ``never``) and counts as larger than any step.
    """
    if not steps:
        raise ValueError("steps must not be empty")
    values = sorted(math.inf if s is None else s for s in steps.values())

    def show(v: float) -> str:
        return f"{int(v)}" if v != math.inf else (f">{cap}" if cap is not None else "never")

    return f"{show(values[(len(values) - 1) // 2])} [{show(values[0])}-{show(values[-1])}]"


def final_value(record: dict, task: str = "caesar", metric: str = "loss") -> float | None:
    """``task``'s ``metric`` at the last evaluated step (None when that evaluation was not finite)."""
    return record["metrics"][task][metric][-1]


def max_rebound(record: dict) -> float:
    """The largest rise of the per-step training loss above its running minimum: a loss spike (inf if it diverged).

    A steadily falling loss scores about its minibatch noise; a run that blows up and recovers scores the height of
    the spike.
    """
    best, worst = math.inf, 0.0
    for loss in record["train_loss"]:
        if loss is None:
            return math.inf
        if best < math.inf:
            worst = max(worst, loss - best)
        best = min(best, loss)
    return worst
