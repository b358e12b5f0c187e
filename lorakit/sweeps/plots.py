"""Plots of sweep records that the notebooks share: every seed as a faint line, their mean in bold.

matplotlib is imported by the caller (the ``course`` extra); these functions only draw on the axes they are given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["plot_seed_curves"]


def plot_seed_curves(ax, records: Sequence[dict], task: str = "caesar", metric: str = "exact_match",
                     color: str | None = None, label: str | None = None, faint: float = 0.3) -> None:
    """Draw ``task``'s ``metric`` against the evaluated step: one faint line per record (seed), the mean in bold.

    The records must share their evaluated steps (one arm at one learning rate, several seeds). Values that are
    None (a diverged evaluation) are left out of the lines and of the mean.
    """
    if not records:
        raise ValueError("records must not be empty")
    steps = records[0]["eval_steps"]
    if any(rec["eval_steps"] != steps for rec in records):
        raise ValueError("records must share their evaluated steps (select one arm and one lr)")
    series = [[math.nan if v is None else v for v in rec["metrics"][task][metric]] for rec in records]
    line = None
    for values in series:
        (line,) = ax.plot(steps, values, color=color if line is None else line.get_color(), alpha=faint, lw=1)
    mean = []
    for column in zip(*series, strict=True):
        finite = [v for v in column if not math.isnan(v)]
        mean.append(sum(finite) / len(finite) if finite else math.nan)
    ax.plot(steps, mean, color=line.get_color(), lw=2, label=label)
