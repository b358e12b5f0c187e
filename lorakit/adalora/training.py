"""``train_adalora``: the course's training loop (:func:`lorakit.training.train`) plus AdaLoRA's two lines.

Each step: ``loss = task loss + orth_reg_weight * orthogonal_regularization(model)`` (notebook 10, eq. 7);
``backward``; ``optimizer.step()``; ``allocator.update_and_allocate(model, step)`` (eqs. 2-6); ``zero_grad``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.adalora.allocator import RankAllocator
from lorakit.adalora.config import AdaLoRAConfig
from lorakit.adalora.regularization import orthogonal_regularization, orthogonality_errors
from lorakit.adalora.schedule import check_int
from lorakit.data import Batch, evaluate, lm_loss
from lorakit.peft import check_model

__all__ = ["AdaLoRAHistory", "train_adalora"]


@dataclass
class AdaLoRAHistory:
    """What :func:`train_adalora` measured, per step: task loss, budget, total rank, orthogonality errors
    (mean over layers of ``||PᵀP - I||_F`` and ``||QQᵀ - I||_F``), and periodic held-out metrics."""

    loss: list[float] = field(default_factory=list)
    budget: list[int] = field(default_factory=list)
    total_rank: list[int] = field(default_factory=list)
    orth_p: list[float] = field(default_factory=list)
    orth_q: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.eval_metrics[-1] if self.eval_metrics else {}


def train_adalora(
    model: nn.Module,
    data: Batch,
    steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    orth_reg_weight: float | None = None,
    allocator: RankAllocator | None = None,
    eval_data: Batch | None = None,
    eval_every: int = 50,
) -> AdaLoRAHistory:
    """AdamW training with AdaLoRA pruning (see the module docstring); returns an :class:`AdaLoRAHistory`.

    ``step = 1..steps`` is the number of optimizer steps taken, like a trainer's global step. Minibatches are
    drawn exactly as :func:`~lorakit.training.train` draws them, so curves compare with LoRA runs.
    ``steps`` and ``orth_reg_weight`` default to the model's ``adalora_config`` (``total_step`` steps);
    the allocator defaults to ``RankAllocator.from_config(model)``. Every argument is checked before the
    first step, so a bad one raises (naming it) with the model untouched.
    """
    check_model(model)
    if not isinstance(data, Batch):
        raise TypeError(f"data must be a lorakit.data.Batch, got {type(data).__name__}")
    if eval_data is not None and not isinstance(eval_data, Batch):
        raise TypeError(f"eval_data must be a lorakit.data.Batch or None, got {type(eval_data).__name__}")
    config = getattr(model, "adalora_config", None)
    if allocator is None:
        allocator = RankAllocator.from_config(model)
    if not isinstance(allocator, RankAllocator):
        raise TypeError(f"allocator must be a RankAllocator, got {type(allocator).__name__}")
    layers = list(allocator.layers_of(model).values())
    steps = allocator.total_step if steps is None else check_int("steps", steps, 1)
    if steps < allocator.total_step - allocator.tfinal:
        raise ValueError(
            f"steps={steps} ends before the final allocation at step total_step - tfinal = "
            f"{allocator.total_step - allocator.tfinal}: the budget would never reach its target"
        )
    if orth_reg_weight is None:
        orth_reg_weight = config.orth_reg_weight if isinstance(config, AdaLoRAConfig) else 0.5
    if isinstance(orth_reg_weight, bool) or not isinstance(orth_reg_weight, numbers.Real) or not (
        orth_reg_weight >= 0 and math.isfinite(orth_reg_weight)
    ):
        raise ValueError(f"orth_reg_weight must be a finite number >= 0, got {orth_reg_weight!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be > 0 (a finite number), got {lr!r}")
    batch_size = check_int("batch_size", batch_size, 1)
    eval_every = check_int("eval_every", eval_every, 1)
    seed = check_int("seed", seed, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (nothing requires grad)")
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    history = AdaLoRAHistory()
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        ids, tgt = data.input_ids[idx].to(device), data.targets[idx].to(device)
        loss = lm_loss(model(ids), tgt)
        total = loss + orth_reg_weight * orthogonal_regularization(model) if orth_reg_weight > 0 else loss
        total.backward()
        optimizer.step()
        allocator.update_and_allocate(model, step)
        optimizer.zero_grad(set_to_none=True)
        history.loss.append(loss.detach().item())
        history.budget.append(allocator.budget(step))
        history.total_rank.append(sum(layer.rank for layer in layers))
        errs = [orthogonality_errors(layer) for layer in layers]
        history.orth_p.append(sum(e[0] for e in errs) / len(errs))
        history.orth_q.append(sum(e[1] for e in errs) / len(errs))
        if eval_data is not None and (step % eval_every == 0 or step == steps):
            history.eval_steps.append(step)
            history.eval_metrics.append(evaluate(model, eval_data))
    model.eval()
    return history
