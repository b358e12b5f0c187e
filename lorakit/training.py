"""A small, seeded training loop shared by the notebooks (so their curves compare).

``train`` runs AdamW on whatever parameters of ``model`` require grad, on minibatches drawn with a
seeded generator from a fixed training :class:`~lorakit.data.Batch`, and records the loss curve and
(optionally) held-out metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lorakit.data import Batch, evaluate, lm_loss


@dataclass
class History:
    """What :func:`train` measured: the per-step train loss and periodic held-out metrics."""

    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.eval_metrics[-1] if self.eval_metrics else {}


def seed_everything(seed: int) -> None:
    """Seed Python, PyTorch (CPU and all GPUs)."""
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def train(
    model: torch.nn.Module,
    data: Batch,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    eval_data: Batch | None = None,
    eval_every: int = 50,
    weight_decay: float = 0.0,
    params: list[torch.nn.Parameter] | None = None,
    progress: bool = False,
) -> History:
    """Train ``model`` for ``steps`` AdamW steps; returns a :class:`History`.

    Parameters not requiring grad are untouched (that is what makes LoRA parameter-efficient).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(data, Batch):
        raise TypeError(f"data must be a lorakit.data.Batch, got {type(data).__name__}")
    if eval_data is not None and not isinstance(eval_data, Batch):
        raise TypeError(f"eval_data must be a lorakit.data.Batch or None, got {type(eval_data).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be > 0 (a finite number), got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (nothing requires grad)")
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = History()
    model.train()
    for step in tqdm(range(1, steps + 1), disable=not progress, desc="train", leave=False):
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        ids, tgt = data.input_ids[idx].to(device), data.targets[idx].to(device)
        loss = lm_loss(model(ids), tgt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.loss.append(loss.detach().item())
        if eval_data is not None and (step % eval_every == 0 or step == steps):
            history.eval_steps.append(step)
            history.eval_metrics.append(evaluate(model, eval_data))
    model.eval()
    return history
