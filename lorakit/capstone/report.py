"""Summaries of the stored capstone runs for notebook 11's tables and plots (pure functions over the JSON records).

A record is what :func:`lorakit.capstone.run_arm` returns (plus ``stage`` and ``spec`` from
``scripts/capstone.py``). Nothing here trains: the notebook re-runs its live slice with :func:`run_arm` itself.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from lorakit.analysis import LineFit, linear_fit
from lorakit.capstone.analyses import mean_spread

__all__ = ["arm_records", "curve_gap", "format_table", "main_table", "md_fits", "rslora_best_lrs", "seed_scores",
           "stage_table"]


def arm_records(records: Iterable[dict], arm: str, lr: float | None = None) -> list[dict]:
    """The records of ``arm`` (at ``lr`` if given), sorted by seed."""
    out = [r for r in records if r["config"]["arm"] == arm and (lr is None or r["config"]["lr"] == lr)]
    return sorted(out, key=lambda r: r["config"]["seed"])


def seed_scores(records: Iterable[dict], arm: str, lr: float | None = None,
                metric: str = "pearson") -> dict[int, float]:
    """``{seed: test metric}`` of ``arm``'s runs (at ``lr``)."""
    return {r["config"]["seed"]: r["test"][metric] for r in arm_records(records, arm, lr)}


def main_table(results: dict) -> list[dict]:
    """One row per arm of the main comparison, each at its best lr (seeds 0-2).

    Columns: ``arm``, ``label``, ``lr``, ``trainable``, ``memory_mb`` (mean over seeds), ``step_ms`` (median over
    seeds), ``pearson`` and ``pearson_sd`` (mean and sample sd over seeds), ``seeds`` (per seed), ``rmse``,
    ``to_ceiling`` (the test split's noise ceiling minus the mean), ``drift``.
    """
    if not isinstance(results, dict) or "records" not in results or "best_lr" not in results:
        raise ValueError("results must be the stored capstone_main results (with 'records' and 'best_lr')")
    ceiling = results["ceiling"]["test"]["ceiling"]
    rows = []
    for arm, lr in results["best_lr"].items():
        runs = arm_records(results["records"], arm, lr)
        if not runs:
            raise ValueError(f"no runs of arm {arm!r} at its best lr {lr}")
        mean, sd = mean_spread(r["test"]["pearson"] for r in runs)
        rows.append({
            "arm": arm, "label": runs[0]["label"], "lr": lr, "trainable": runs[0]["trainable"],
            "memory_mb": statistics.fmean(r["memory_bytes"] for r in runs) / 2**20,
            "step_ms": 1000 * statistics.median(r["step_seconds"] for r in runs),
            "pearson": mean, "pearson_sd": sd, "seeds": {r["config"]["seed"]: r["test"]["pearson"] for r in runs},
            "rmse": statistics.fmean(r["test"]["rmse"] for r in runs), "to_ceiling": ceiling - mean,
            "drift": statistics.fmean(r["drift"] for r in runs),
        })
    return rows


def stage_table(records: Iterable[dict], stage: str) -> dict[str, dict]:
    """``{arm: {"pearson", "pearson_sd", "n", "trainable", "drift"}}`` over the seeds of one analysis stage."""
    by_arm: dict[str, list[dict]] = {}
    for r in records:
        if r["stage"] == stage:
            by_arm.setdefault(r["config"]["arm"], []).append(r)
    if not by_arm:
        raise ValueError(f"no records of stage {stage!r}")
    out = {}
    for arm, runs in by_arm.items():
        mean, sd = mean_spread(r["test"]["pearson"] for r in runs)
        out[arm] = {"pearson": mean, "pearson_sd": sd, "n": len(runs), "trainable": runs[0]["trainable"],
                    "drift": statistics.fmean(r["drift"] for r in runs)}
    return out


def curve_gap(a: dict, b: dict) -> float:
    """The largest absolute difference between two runs' per-step training losses (same length)."""
    la, lb = a["train_loss"], b["train_loss"]
    if len(la) != len(lb):
        raise ValueError(f"the runs have {len(la)} and {len(lb)} steps")
    return max(abs(x - y) for x, y in zip(la, lb, strict=True))


def md_fits(record: dict, per_step: bool = False) -> LineFit | dict[int, LineFit]:
    """The DoRA-paper fit of ΔD (x) against ΔM (y) over a run's matrices and checkpoints (or per checkpoint)."""
    points = record.get("md_points")
    if not points:
        raise ValueError("record has no md_points (only the full, lora_all and dora runs record them)")
    if not per_step:
        return linear_fit([p["dD"] for p in points], [p["dM"] for p in points])
    steps = sorted({p["step"] for p in points})
    return {s: linear_fit([p["dD"] for p in points if p["step"] == s], [p["dM"] for p in points if p["step"] == s])
            for s in steps}


def rslora_best_lrs(records: Iterable[dict]) -> dict[str, dict[int, float]]:
    """``{"alpha/r" | "alpha/sqrt(r)": {r: lr with the best test Pearson}}`` from the ``rslora`` stage."""
    best: dict[str, dict[int, tuple[float, float]]] = {"alpha/r": {}, "alpha/sqrt(r)": {}}
    for r in records:
        if r["stage"] != "rslora":
            continue
        key = "alpha/sqrt(r)" if r["spec"].get("rslora") else "alpha/r"
        rank, score, lr = r["spec"]["r"], r["test"]["pearson"], r["config"]["lr"]
        if rank not in best[key] or score > best[key][rank][0]:
            best[key][rank] = (score, lr)
    return {k: {rank: v[1] for rank, v in sorted(d.items())} for k, d in best.items()}


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table: ``columns`` are ``(key, header, format spec)``; a missing value prints as ``-``."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([format(row[k], f) if row.get(k) is not None else "-" for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(columns)))
             for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
