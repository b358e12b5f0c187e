"""The rsLoRA scaling explorer (notebook 03): ``alpha/r`` vs ``alpha/sqrt(r)``, next to the measured rank sweep.

Left: the two scalings (eq. 1) and the size of the first gradient reaching B, ``gamma_r sqrt(r)`` (eq. 4),
against r. Right: the population loss that notebook 03's rank sweep measured for both scalings (the stored run
``data/results/nb03_lr_sweep.json``, mean and min-max over seeds), at one learning rate or at each arm's best.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

from lorakit.lora import lora_scaling
from lorakit.widgets._ui import Panel, figure, guarded, png_bytes

__all__ = ["SWEEP_NAME", "load_rank_sweep", "rank_sweep_points", "scaling_curves", "scaling_summary",
           "scaling_text", "scaling_widget"]

#: The stored run of notebook 03's rank sweep with the learning rate tuned (scripts/results_nb03_lr_sweep.py).
SWEEP_NAME = "nb03_lr_sweep"
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def scaling_summary(r: int, alpha: float) -> dict[str, float]:
    """Both scalings at rank ``r`` and their ratio (notebook 03, eq. 1).

    ``rslora_over_lora = sqrt(r)``: how much larger the rsLoRA bypass (and its gradients) is.
    """
    lora, rs = lora_scaling(r, alpha, rslora=False), lora_scaling(r, alpha, rslora=True)
    return {"r": r, "alpha": alpha, "lora": lora, "rslora": rs, "rslora_over_lora": rs / lora}


def scaling_text(r: int, alpha: float) -> str:
    """One rounded line for the widget."""
    s = scaling_summary(r, alpha)
    return (f"r = {r}, alpha = {alpha:g}:  alpha/r = {s['lora']:.4g},  alpha/sqrt(r) = {s['rslora']:.4g},  "
            f"ratio sqrt(r) = {s['rslora_over_lora']:.3g};  first gradient of B ~ gamma*sqrt(r): "
            f"{s['lora'] * math.sqrt(r):.3g} (LoRA) vs {s['rslora'] * math.sqrt(r):.3g} (rsLoRA)")


def scaling_curves(alpha: float, ranks: tuple[int, ...] = RANKS) -> dict[str, list[float]]:
    """``gamma_r`` and ``gamma_r sqrt(r)`` for both scalings at each rank (eqs. 1 and 4)."""
    out: dict[str, list[float]] = {"r": list(ranks), "lora": [], "rslora": [], "lora_grad": [], "rslora_grad": []}
    for r in ranks:
        s = scaling_summary(r, alpha)
        out["lora"].append(s["lora"])
        out["rslora"].append(s["rslora"])
        out["lora_grad"].append(s["lora"] * math.sqrt(r))
        out["rslora_grad"].append(s["rslora"] * math.sqrt(r))
    return out


def load_rank_sweep() -> dict | None:
    """The stored rank sweep of notebook 03, or None when it has not been made yet (``make results``)."""
    from lorakit.results import load_results

    try:
        return load_results(SWEEP_NAME)
    except FileNotFoundError:
        return None


def _final_step(results: Mapping) -> str:
    steps = results.get("task", {}).get("record_at")
    if not steps:
        raise ValueError("results must hold task.record_at (the steps at which the loss was recorded)")
    return str(max(int(s) for s in steps))


def rank_sweep_points(stored: Mapping, lr: float | None = None, step: int | None = None) -> dict[str, list[dict]]:
    """Mean and min-max over seeds of the loss at ``step`` (default: the last) for each rank and scaling.

    ``stored`` is the ``{"provenance", "results"}`` dict of :func:`load_rank_sweep`. ``lr=None`` takes, for each
    rank and scaling, the learning rate with the lowest mean loss (each arm at its own best lr); a number picks
    that learning rate for every run. Diverged runs (loss ``None``) count as missing; a point whose seeds all
    diverged is left out. Returns ``{"lora": [{"r", "lr", "mean", "lo", "hi", "seeds"}], "rslora": [...]}``.
    """
    results = stored.get("results", stored)
    if not isinstance(results, Mapping) or "runs" not in results:
        raise ValueError("stored must be the rank-sweep results (a dict with 'runs')")
    key = str(step) if step is not None else _final_step(results)
    lrs = sorted({run["lr"] for run in results["runs"]})
    if lr is not None and not any(math.isclose(lr, x, rel_tol=1e-9) for x in lrs):
        raise ValueError(f"lr must be one of the swept learning rates {lrs}, got {lr!r}")
    groups: dict[tuple[bool, int, float], list[float]] = {}
    for run in results["runs"]:
        value = run["loss_at"].get(key)
        if value is not None and math.isfinite(value):
            groups.setdefault((bool(run["rslora"]), int(run["r"]), float(run["lr"])), []).append(float(value))
    out: dict[str, list[dict]] = {"lora": [], "rslora": []}
    for rslora, name in ((False, "lora"), (True, "rslora")):
        for r in sorted({k[1] for k in groups if k[0] == rslora}):
            candidates = {k[2]: v for k, v in groups.items() if k[0] == rslora and k[1] == r}
            if lr is None:
                chosen = min(candidates, key=lambda x: statistics.fmean(candidates[x]))
            else:
                chosen = next((x for x in candidates if math.isclose(x, lr, rel_tol=1e-9)), None)
                if chosen is None:
                    continue
            values = candidates[chosen]
            out[name].append({"r": r, "lr": chosen, "mean": statistics.fmean(values), "lo": min(values),
                              "hi": max(values), "seeds": len(values)})
    return out


def _plot(r: int, alpha: float, points: dict | None, lr_label: str) -> bytes:
    curves = scaling_curves(alpha)
    fig = figure(9.0, 3.3)
    left, right = fig.subplots(1, 2)
    left.plot(curves["r"], curves["lora"], "o-", label=r"LoRA $\gamma=\alpha/r$")
    left.plot(curves["r"], curves["rslora"], "s-", label=r"rsLoRA $\gamma=\alpha/\sqrt{r}$")
    left.plot(curves["r"], curves["lora_grad"], "o:", color="C0", alpha=0.6, label=r"LoRA $\gamma\sqrt{r}$ (grad of B)")
    left.plot(curves["r"], curves["rslora_grad"], "s:", color="C1", alpha=0.6, label=r"rsLoRA $\gamma\sqrt{r}$")
    left.axvline(r, color="C3", lw=1)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("rank r")
    left.set_ylabel("scaling / gradient size")
    left.set_title(f"alpha = {alpha:g}")
    left.legend(fontsize=7)
    right.set_xscale("log", base=2)
    right.set_xlabel("rank r")
    right.set_ylabel(r"loss $\|\Delta W-\Delta W^\star\|_F^2$")
    if points and (points["lora"] or points["rslora"]):
        for name, marker, label in (("lora", "o-", r"$\alpha/r$"), ("rslora", "s-", r"$\alpha/\sqrt{r}$")):
            pts = points[name]
            if not pts:
                continue
            xs = [p["r"] for p in pts]
            right.plot(xs, [p["mean"] for p in pts], marker, label=label)
            right.fill_between(xs, [p["lo"] for p in pts], [p["hi"] for p in pts], alpha=0.2)
        right.axvline(r, color="C3", lw=1)
        right.set_title(f"measured in notebook 03 ({lr_label})", fontsize=9)
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no stored rank sweep yet:\nrun `make results`", ha="center", va="center",
                   transform=right.transAxes)
        right.set_title("measured in notebook 03", fontsize=9)
    return png_bytes(fig)


def scaling_widget(stored: Mapping | None = None):  # pragma: no cover - UI glue, the pure functions are tested
    """Sliders over r and alpha and a learning-rate choice; the curves and notebook 03's measured sweep."""
    import ipywidgets as w

    stored = load_rank_sweep() if stored is None else stored
    lrs = sorted({run["lr"] for run in stored["results"]["runs"]}) if stored else []
    r = w.SelectionSlider(options=list(RANKS), value=8, description="r")
    alpha = w.FloatLogSlider(value=16, base=2, min=0, max=9, step=1, description="alpha")
    best = -1.0  # ipywidgets shows an empty box for the value None, so "best" gets a sentinel
    lr = w.Dropdown(options=[("each arm's best lr", best)] + [(f"lr = {x:g}", x) for x in lrs], value=best,
                    description="sweep at", style={"description_width": "initial"})
    text, message = w.HTML(), w.HTML()
    image = w.Image(format="png", layout=w.Layout(width="760px"))

    def update() -> None:
        text.value = ""
        chosen = None if lr.value == best else lr.value
        points = rank_sweep_points(stored, chosen) if stored else None
        label = "each arm at its best lr" if chosen is None else f"lr = {chosen:g}"
        line = scaling_text(r.value, alpha.value)
        if points:
            at = {name: next((p for p in pts if p["r"] == r.value), None) for name, pts in points.items()}
            if at["lora"] and at["rslora"]:
                line += (f"<br>measured at r = {r.value} ({label}): loss {at['lora']['mean']:.3g} (alpha/r) vs "
                         f"{at['rslora']['mean']:.3g} (alpha/sqrt(r))")
        text.value = f"<code>{line}</code>"
        image.value = _plot(r.value, alpha.value, points, label)

    run = guarded(update, message)
    for control in (r, alpha, lr):
        control.observe(run, "value")
    run()
    return Panel([w.HBox([r, alpha, lr]), text, message, image], "rsLoRA scaling explorer (alpha/r vs alpha/sqrt(r))")
