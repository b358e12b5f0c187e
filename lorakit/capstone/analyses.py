"""The papers' analyses in miniature on MiniLM-L6 (notebook 11, §3-§6), as small pure functions.

* :func:`lora_factors`: ``{layer: (A, B)}`` of a trained LoRA encoder (scaling folded into B).
* :func:`subspace_grid`: Hu et al. (2021), Figure 3: ``phi(A_r8, A_r64, i, j)`` of the right-singular
  subspaces of two adapters' ``A`` (:func:`lorakit.analysis.subspace_similarity` on ``A^T``).
* :func:`amplification`: Hu et al. (2021), section 7.3: ``||ΔW||_F / ||U^T W V||_F`` with ``U, V`` the top-r
  singular vectors of ``ΔW``: how much ΔW amplifies directions that ``W`` barely uses; and the same for a random
  rank-r subspace, the baseline the paper quotes (``||U^T W V||_F`` for random U, V).
* :func:`spectrum_summary`: the low-rank hypothesis on a full fine-tune's ``ΔW`` (effective rank, energy in the
  top r, rank for 90 % of the energy), against a Gaussian matrix of the same shape and norm.
* :func:`md_points`: the DoRA paper's (Liu et al., 2024) Figure 2: ``(ΔM, ΔD)`` of every matrix at every
  checkpoint; :func:`lorakit.analysis.linear_fit` gives the slope and correlation.
* :func:`mean_spread` and :func:`best_lr`: the tables' summaries (mean and sample standard deviation over seeds;
  the lr with the best validation score on seed 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from lorakit.analysis import (
    effective_rank,
    energy_in_top,
    magnitude_direction_changes,
    rank_for_energy,
    singular_values,
    stable_rank,
    subspace_similarity,
)
from lorakit.peft import lora_layers
from lorakit.results import spread

__all__ = ["amplification", "best_lr", "lora_factors", "md_points", "mean_spread", "spectrum_summary",
           "subspace_grid"]


def lora_factors(encoder: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (A [r, in], scaling * B [out, r])}`` (float64 CPU copies) of every LoRA layer of ``encoder``."""
    layers = lora_layers(encoder)
    if not layers:
        raise ValueError("encoder has no LoRA layers")
    return {name: (layer.lora_A.detach().double().cpu(), layer.scaling * layer.lora_B.detach().double().cpu())
            for name, layer in layers.items()}


def subspace_grid(a_small: Tensor, a_large: Tensor, max_i: int | None = None,
                  max_j: int | None = None) -> list[list[float]]:
    """``grid[i-1][j-1] = phi(a_small, a_large, i, j)`` for the row spaces of two ``A`` matrices ``[r, in]``."""
    for name, a in (("a_small", a_small), ("a_large", a_large)):
        if not isinstance(a, Tensor) or a.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor [r, in]")
    max_i = a_small.shape[0] if max_i is None else max_i
    max_j = a_large.shape[0] if max_j is None else max_j
    return [[subspace_similarity(a_small.T, a_large.T, i, j) for j in range(1, max_j + 1)]
            for i in range(1, max_i + 1)]


def _top_subspaces(x: Tensor, r: int) -> tuple[Tensor, Tensor]:
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u[:, :r], vh[:r].T


def amplification(delta: Tensor, w0: Tensor, r: int, seed: int = 0) -> dict[str, float]:
    """Hu et al.'s section 7.3 numbers for one matrix (module docstring).

    Returns ``delta_norm`` = ``||ΔW||_F``, ``projected`` = ``||U^T W V||_F`` (U, V: top-r singular vectors of
    ``ΔW``), ``factor`` = their ratio, ``random_projected`` = ``||U^T W V||_F`` for a random orthonormal r-frame
    (seeded), and ``w_top`` = ``||U^T W V||_F`` with U, V W's own top-r singular vectors (the largest possible).
    """
    if not isinstance(delta, Tensor) or not isinstance(w0, Tensor) or delta.shape != w0.shape or delta.dim() != 2:
        raise ValueError("delta and w0 must be 2-D tensors of the same shape")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(delta.shape):
        raise ValueError(f"r must be an int in [1, {min(delta.shape)}], got {r!r}")
    d, w = delta.double().cpu(), w0.double().cpu()
    u, v = _top_subspaces(d, r)
    projected = float((u.T @ w @ v).norm())
    g = torch.Generator().manual_seed(seed)
    ur = torch.linalg.qr(torch.randn(w.shape[0], r, generator=g, dtype=torch.float64)).Q
    vr = torch.linalg.qr(torch.randn(w.shape[1], r, generator=g, dtype=torch.float64)).Q
    uw, vw = _top_subspaces(w, r)
    delta_norm = float(d.norm())
    factor = delta_norm / projected if projected else math.inf
    return {"delta_norm": delta_norm, "projected": projected, "factor": factor,
            "random_projected": float((ur.T @ w @ vr).norm()), "w_top": float((uw.T @ w @ vw).norm())}


def spectrum_summary(delta: Tensor, r: int = 8, seed: int = 0) -> dict[str, float]:
    """Effective / stable rank, energy in the top ``r`` and rank for 90 % energy of ``delta``, and of a Gaussian
    matrix with the same shape (the baseline a not-at-all-low-rank update would give)."""
    if not isinstance(delta, Tensor) or delta.dim() != 2:
        raise ValueError("delta must be a 2-D tensor")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(delta.shape, generator=g, dtype=torch.float64)
    out = {}
    for prefix, x in (("", delta.double().cpu()), ("random_", noise)):
        out[prefix + "effective_rank"] = effective_rank(x)
        out[prefix + "stable_rank"] = stable_rank(x)
        out[prefix + f"energy_top{r}"] = energy_in_top(x, r)
        out[prefix + "rank_90"] = rank_for_energy(x, 0.9)
    out["full_rank"] = min(delta.shape)
    out["top_singular"] = float(singular_values(delta)[0])
    return out


def md_points(checkpoints: Mapping[int, Mapping[str, Tensor]], step0: int = 0) -> list[dict]:
    """``[{"step", "name", "dM", "dD"}]`` for every matrix at every checkpoint after ``step0`` (against ``step0``)."""
    if step0 not in checkpoints:
        raise ValueError(f"checkpoints must include the reference step {step0}")
    before = checkpoints[step0]
    points = []
    for step in sorted(checkpoints):
        if step == step0:
            continue
        for name, (dm, dd) in magnitude_direction_changes(checkpoints[step], before).items():
            points.append({"step": step, "name": name, "dM": dm, "dD": dd})
    return points


def mean_spread(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value): :func:`lorakit.results.spread`'s two numbers."""
    summary = spread(values)
    return summary["mean"], summary["std"]


def best_lr(records: Iterable[dict], arm: str, seed: int = 0) -> float:
    """The lr of ``arm``'s seed-``seed`` runs with the highest final validation Pearson r (ties: the smaller lr)."""
    runs = [r for r in records
            if r["config"]["arm"] == arm and r["config"]["seed"] == seed and r["val"][-1] is not None]
    if not runs:
        raise ValueError(f"no finished seed-{seed} runs of arm {arm!r}")
    return max(runs, key=lambda r: (r["val"][-1], -r["config"]["lr"]))["config"]["lr"]
