"""Notebook 09's tracked runs: full fine-tuning, LoRA and DoRA on the Caesar task, with the weights read as they go.

* :class:`TrackedRun` and :func:`build_tracked_model`: one run (``"full"``, ``"lora"`` or ``"dora"``, any rank,
  ``alpha = 2r`` unless given, all linear layers), seeded like :func:`lorakit.sweeps.build_model`;
* :func:`tracked_run`: :func:`lorakit.training.train`'s AdamW loop and minibatch order, held-out Caesar evaluated
  at step 0 and every ``eval_every`` steps, and at the ``checkpoints`` the DoRA paper's ``(ΔM, ΔD)`` of every
  adapted matrix (Liu et al. 2024, section 3; :func:`lorakit.analysis.magnitude_direction_changes`) and, where
  asked, the singular values of every update ``ΔW = W_t - W_0`` (the low-rank hypothesis of Hu et al. 2021);
* :func:`checkpoint_fit`: the slope of ``ΔM`` against ``ΔD`` across the matrices at one checkpoint (the paper
  reads its Figure 2 this way, a cross-section, not a correlation of two quantities that both grow with time);
* :func:`truncated_update_scores`: held-out exact-match when every ``ΔW`` of a full fine-tune is replaced by its
  best rank-``k`` approximation (does the task need more than rank ``k``?);
* :func:`arm_label`, :func:`steps_table`, :func:`best_lrs`: reading a list of records (each arm at its best lr).

``scripts/results_nb09_dora.py`` runs the sweep into ``data/results/nb09_dora.json``; the notebook re-runs one
configuration live and asserts that it matches the stored record.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lorakit.analysis import (
    CheckpointRecorder,
    LineFit,
    effective_weights,
    linear_fit,
    low_rank_approximation,
    magnitude_direction_changes,
    singular_values,
    weight_deltas,
)
from lorakit.data import Batch, caesar_task, evaluate
from lorakit.models import load_tiny_lm
from lorakit.peft import LoRAConfig, apply_lora
from lorakit.results import steps_to_threshold
from lorakit.training import seed_everything, train

__all__ = [
    "METHODS", "TrackedRun", "arm_label", "best_lrs", "build_tracked_model", "checkpoint_fit", "steps_table",
    "tracked_run", "truncated_update_scores",
]

#: "full": every parameter trains; "lora"/"dora": adapters on all linear layers (PEFT's "all-linear").
METHODS = ("full", "lora", "dora")
_NAMES = {"full": "full FT", "lora": "LoRA", "dora": "DoRA"}


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _steps_tuple(name: str, steps: object, last: int) -> None:
    if not isinstance(steps, tuple) or any(isinstance(t, bool) or not isinstance(t, int) or not 0 < t <= last
                                           for t in steps):
        raise ValueError(f"{name} must be a tuple of ints in [1, steps={last}], got {steps!r}")


@dataclass(frozen=True)
class TrackedRun:
    """One run of notebook 09. ``r`` and ``alpha`` (default ``2 r``) apply to LoRA and DoRA only.

    ``checkpoints``: steps at which ``(ΔM, ΔD)`` of every matrix is recorded; ``spectra``: steps (a subset of
    ``checkpoints``) at which the singular values of every ``ΔW`` are recorded too.
    """

    method: str = "dora"
    r: int = 8
    alpha: float | None = None
    lr: float = 3e-3
    seed: int = 0
    steps: int = 400
    eval_every: int = 25
    checkpoints: tuple[int, ...] = (50, 100, 200, 300, 400)
    spectra: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("r", "steps", "eval_every"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        for name in ("lr", "alpha"):
            v = getattr(self, name)
            if name == "alpha" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        _steps_tuple("checkpoints", self.checkpoints, self.steps)
        _steps_tuple("spectra", self.spectra, self.steps)
        if not set(self.spectra) <= set(self.checkpoints):
            raise ValueError(f"spectra must be a subset of checkpoints {self.checkpoints}, got {self.spectra}")

    @classmethod
    def from_config(cls, config: dict) -> TrackedRun:
        """The run of a stored record's ``config`` (JSON lists back to tuples)."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})

    @property
    def scale_alpha(self) -> float:
        """``alpha`` as used: the given one, or ``2 r``."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


def build_tracked_model(run: TrackedRun) -> nn.Module:
    """The model ``run`` trains (CPU, fp32, seeded with ``run.seed``); its trainable parameters require grad."""
    if not isinstance(run, TrackedRun):
        raise TypeError(f"run must be a TrackedRun, got {type(run).__name__}")
    seed_everything(run.seed)
    model = load_tiny_lm()
    if run.method == "full":
        model.requires_grad_(True)
        return model
    return apply_lora(model, LoRAConfig(r=run.r, alpha=run.scale_alpha, target_modules="all-linear",
                                        use_dora=run.method == "dora"))


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def tracked_run(run: TrackedRun, data: tuple[Batch, Batch] | None = None) -> tuple[nn.Module, dict]:
    """Train ``run`` on ``data = (train, held-out)`` (default :func:`lorakit.data.caesar_task`); return the model
    and its JSON-ready record.

    The record: ``config`` (the TrackedRun as a dict, ``alpha`` filled in), ``trainable`` (parameter count),
    ``eval_steps`` (0, every ``eval_every`` steps, the last), held-out Caesar ``exact_match`` and ``loss`` at
    those steps, ``steps_to_threshold`` (first evaluated step with exact-match >= 0.9, None if never),
    ``changes[str(step)][matrix] = [ΔM, ΔD]`` at every checkpoint and ``spectra[str(step)][matrix]`` (singular
    values of ``ΔW``, descending) at the ``spectra`` steps. The training loop is :func:`lorakit.training.train`'s
    (the checkpoints are read by a forward pre-hook, :class:`lorakit.analysis.CheckpointRecorder`), so the same
    ``run`` gives the same numbers on CPU, with one thread or two.
    """
    if not isinstance(run, TrackedRun):
        raise TypeError(f"run must be a TrackedRun, got {type(run).__name__}")
    train_data, heldout = caesar_task() if data is None else data
    if not (isinstance(train_data, Batch) and isinstance(heldout, Batch)):
        raise TypeError("data must be a (train, held-out) pair of lorakit.data.Batch")
    model = build_tracked_model(run)
    w0 = effective_weights(model)
    start = evaluate(model, heldout)
    with CheckpointRecorder(model, steps=run.checkpoints) as recorder:
        history = train(model, train_data, steps=run.steps, lr=run.lr, seed=run.seed, eval_data=heldout,
                        eval_every=run.eval_every)
    steps = [0, *history.eval_steps]
    metrics = [start, *history.eval_metrics]
    exact = [m["exact_match"] for m in metrics]
    config = asdict(run)
    config["alpha"] = None if run.method == "full" else run.scale_alpha
    record: dict = {
        "config": config,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "eval_steps": steps,
        "exact_match": exact,
        "loss": [_sig(m["loss"]) for m in metrics],
        "steps_to_threshold": steps_to_threshold(steps, exact, 0.9),
        "changes": {},
        "spectra": {},
    }
    for step in run.checkpoints:
        wt = recorder.checkpoints[step]
        record["changes"][str(step)] = {name: [_sig(dm), _sig(dd)]
                                        for name, (dm, dd) in magnitude_direction_changes(wt, w0).items()}
        if step in run.spectra:
            record["spectra"][str(step)] = {name: [_sig(s, 5) for s in singular_values(d).tolist()]
                                            for name, d in weight_deltas(wt, w0).items()}
    return model, record


def checkpoint_fit(record: dict, step: int | str) -> LineFit:
    """Least-squares fit of ``ΔM`` (y) against ``ΔD`` (x) across the matrices of ``record`` at one checkpoint.

    The sign of the slope is that of Pearson's r, whichever variable is put on which axis.
    """
    key = str(step)
    if key not in record.get("changes", {}):
        raise ValueError(f"step {step!r} is not a checkpoint of this record; checkpoints: {sorted(record['changes'])}")
    points = list(record["changes"][key].values())
    return linear_fit([p[1] for p in points], [p[0] for p in points])


def truncated_update_scores(model: nn.Module, before: dict[str, torch.Tensor], heldout: Batch,
                            ranks: Iterable[int]) -> dict[int, float]:
    """``{k: held-out exact-match}`` of ``model`` with every matrix's update ``W_t - W_0`` cut to rank ``k``.

    ``model`` is a fully fine-tuned model, ``before`` the ``effective_weights`` of its matrices before training
    (:func:`lorakit.analysis.effective_weights`). Only those matrices change: embeddings, norms and the output
    head keep their fine-tuned values. ``k = 0`` removes the updates of the matrices altogether. ``model`` is not
    modified (a copy is evaluated).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(heldout, Batch):
        raise TypeError(f"heldout must be a lorakit.data.Batch, got {type(heldout).__name__}")
    ranks = list(ranks)
    if not ranks or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in ranks):
        raise ValueError(f"ranks must be a non-empty collection of ints >= 0, got {ranks!r}")
    deltas = weight_deltas(effective_weights(model), before)
    work = copy.deepcopy(model)
    out: dict[int, float] = {}
    for k in ranks:
        with torch.no_grad():
            for name, delta in deltas.items():
                layer = work.get_submodule(name)
                if not isinstance(layer, nn.Linear):
                    raise TypeError(f"{name!r} is a {type(layer).__name__}: pass a fully fine-tuned model")
                layer.weight.copy_(before[name] + low_rank_approximation(delta, k))
        out[k] = evaluate(work, heldout)["exact_match"]
    return out


def arm_label(record: dict) -> str:
    """``"full FT"``, ``"LoRA r=2"``, ``"DoRA r=8"`` (records that differ only in lr and seed share an arm)."""
    c = record["config"]
    return _NAMES[c["method"]] if c["method"] == "full" else f"{_NAMES[c['method']]} r={c['r']}"


def steps_table(records: Iterable[dict]) -> dict[str, dict[float, dict[int, int | None]]]:
    """``{arm: {lr: {seed: steps to exact-match >= 0.9}}}`` (None: never within the run), sorted by lr and seed;
    the inner dicts are what :func:`lorakit.sweeps.describe_steps` reads."""
    out: dict[str, dict[float, dict[int, int | None]]] = {}
    for rec in records:
        c = rec["config"]
        out.setdefault(arm_label(rec), {}).setdefault(c["lr"], {})[c["seed"]] = rec["steps_to_threshold"]
    return {arm: {lr: dict(sorted(s.items())) for lr, s in sorted(by_lr.items())} for arm, by_lr in out.items()}


def _score(records: Sequence[dict]) -> tuple[float, float]:
    # the median steps to 0.9 (never = one evaluation after the last step), then the mean final held-out loss
    steps = [r["steps_to_threshold"] if r["steps_to_threshold"] is not None
             else r["eval_steps"][-1] + r["config"]["eval_every"] for r in records]
    return statistics.median(steps), statistics.fmean(r["loss"][-1] for r in records)


def best_lrs(records: Iterable[dict], seeds: Iterable[int] | None = None) -> dict[str, float]:
    """``{arm: lr}``: each arm's lr with the fewest median steps to 0.9 over ``seeds`` (default: all), ties to
    the lower mean final held-out loss, then to the lower lr."""
    chosen = None if seeds is None else set(seeds)
    grouped: dict[str, dict[float, list[dict]]] = {}
    for rec in records:
        if chosen is None or rec["config"]["seed"] in chosen:
            grouped.setdefault(arm_label(rec), {}).setdefault(rec["config"]["lr"], []).append(rec)
    if not grouped:
        raise ValueError("no records (for these seeds)")
    return {arm: min(by_lr, key=lambda lr, b=by_lr: (*_score(b[lr]), lr)) for arm, by_lr in grouped.items()}
