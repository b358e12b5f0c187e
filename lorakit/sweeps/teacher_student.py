"""Notebook 03's one-layer task: a LoRA layer learns a full-rank update, so more rank can always fit more.

A frozen ``W0`` (entries N(0, 1/d)) and a target update ``dW* = U diag(s) V^T`` with ``s_i ~ i^(-decay)``,
``||dW*||_F = 1``. Inputs ``x ~ N(0, I)``, targets ``y = (W0 + dW*) x``, loss ``||h - y||^2`` averaged over a
batch. Because ``E ||(dW - dW*) x||^2 = ||dW - dW*||_F^2``, :func:`population_loss` is the exact expected loss;
the best any rank-r update can do is ``sum_{i>r} s_i^2`` (Eckart-Young, :func:`best_rank_r_loss`).

:func:`teacher_student_run` trains one ``LoRALinear`` with Adam and records the population loss at chosen
steps, ``||dW||_F`` at the end and ``||dL/dB||_F`` averaged over the first steps (notebook 03, eq. 4). A seed fixes
the adapter's initial ``A`` and the data stream; the task itself (``W0``, ``dW*``) is fixed by ``task_seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lorakit.lora import LoRALinear
from lorakit.training import seed_everything

__all__ = ["best_rank_r_loss", "population_loss", "teacher_student_layer", "teacher_student_run",
           "teacher_student_task"]


def teacher_student_task(d: int = 256, decay: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W0, dW*)``: a frozen ``[d, d]`` weight with N(0, 1/d) entries and a full-rank target update (see above)."""
    if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
        raise ValueError(f"d must be a positive int, got {d!r}")
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d, d, generator=g) / math.sqrt(d)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    s = torch.arange(1, d + 1, dtype=torch.float32) ** (-decay)
    return w0, (u * (s / s.norm())) @ v.T


def teacher_student_layer(w0: torch.Tensor, r: int, alpha: float, rslora: bool, seed: int = 0) -> LoRALinear:
    """A ``LoRALinear`` over a bias-free frozen copy of ``w0``, its ``A`` drawn after ``seed_everything(seed)``.

    With the same seed every (r, scaling) pair starts from the same first rows of ``A``.
    """
    seed_everything(seed)
    base = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
    with torch.no_grad():
        base.weight.copy_(w0)
    return LoRALinear(base, r=r, alpha=alpha, rslora=rslora)


def population_loss(layer: LoRALinear, dw_star: torch.Tensor) -> float:
    """``||dW - dW*||_F^2``: the expected batch loss of ``layer`` on the task (inf when dW is not finite)."""
    with torch.no_grad():
        value = ((layer.delta_weight_fp32() - dw_star) ** 2).sum().item()
    return value if math.isfinite(value) else math.inf


def best_rank_r_loss(dw_star: torch.Tensor, r: int) -> float:
    """``sum_{i>r} s_i^2``: the lowest population loss any update of rank ``r`` reaches (Eckart-Young)."""
    s = torch.linalg.svdvals(dw_star.double())
    return float((s[r:] ** 2).sum())


def teacher_student_run(w0: torch.Tensor, dw_star: torch.Tensor, r: int, rslora: bool, lr: float,
                        steps: int = 100, alpha: float = 8.0, batch: int = 64, seed: int = 0,
                        record_at: Sequence[int] = (), grad_steps: int = 10) -> dict:
    """Train one layer with Adam at ``lr``; return ``{"loss": ..., "loss_at": {step: loss}, "dW": ..., "grad_B": ...}``.

    ``loss`` is the population loss after ``steps`` (inf if training diverged), ``loss_at`` the same at each step of
    ``record_at``, ``dW`` the final ``||dW||_F`` and ``grad_B`` the mean ``||dL/dB||_F`` over the first
    ``grad_steps`` steps. The data stream is seeded with ``seed + 1`` (seed 0 reproduces notebook 03's first run).
    """
    for name, v in (("r", r), ("steps", steps), ("batch", batch), ("grad_steps", grad_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    bad = [s for s in record_at if not (isinstance(s, int) and 0 < s <= steps)]
    if bad:
        raise ValueError(f"record_at must hold steps in 1..{steps}, got {bad}")
    layer = teacher_student_layer(w0, r, alpha, rslora, seed)
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    target = w0 + dw_star
    grads, loss_at = [], {}
    for step in range(1, steps + 1):
        x = torch.randn(batch, w0.shape[1], generator=gen)
        loss = ((layer(x) - x @ target.T) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        if step <= grad_steps:
            grads.append(layer.lora_B.grad.norm().item())
        opt.step()
        if step in record_at:
            loss_at[step] = population_loss(layer, dw_star)
    with torch.no_grad():
        dw = layer.delta_weight_fp32().norm().item()
    return {"loss": population_loss(layer, dw_star), "loss_at": loss_at, "dW": dw if math.isfinite(dw) else math.inf,
            "grad_B": sum(grads) / len(grads)}
