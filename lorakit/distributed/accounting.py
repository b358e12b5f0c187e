"""Bytes per rank: what DDP and FSDP2 keep on each process, derived and measured (notebook 16).

**Derivation (notebook 16, eq. 1).** Per rank, with ``N`` ranks, ``Psi`` parameters of which ``Psi_t`` train
(weights ``w`` bytes each, gradients ``g``, fp32 master ``m``, optimizer state ``o`` per trainable parameter)::

    DDP  (replicate everything):   w Psi + (g + m + o) Psi_t
    FSDP (shard everything, ZeRO-3): (w Psi + (g + m + o) Psi_t) / N

Activations are per rank in both (each rank runs its own micro-batch) and are not in these numbers. The
measurement counts what each rank holds *locally*: a DTensor (FSDP2's sharded parameters, their gradients
and the optimizer state built from them) counts its local shard only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lorakit.memory import TrainingBytes, training_bytes

__all__ = ["ENGINES", "local_bytes", "per_rank_bytes", "rank_bytes"]

#: ``"single"`` (one process), ``"ddp"`` (replicated), ``"fsdp"`` (FSDP2 ``fully_shard``: weights, gradients
#: and optimizer state sharded over the ranks).
ENGINES = ("single", "ddp", "fsdp")


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the given tensors held by this process (a DTensor counts its local shard), each tensor once."""
    seen: dict[int, int] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors must hold torch.Tensors, got {type(t).__name__}")
        local = _local(t)
        seen[id(t)] = local.numel() * local.element_size()
    return sum(seen.values())


def rank_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Measured bytes on this rank: frozen and trainable weights, gradients, optimizer moments.

    ``optimizer_states`` counts Adam's ``exp_avg`` and ``exp_avg_sq`` (the per-parameter state; the scalar
    ``step`` counters are left out, as in eq. 1).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    out = {
        "frozen_weights": local_bytes(p for p in params if not p.requires_grad),
        "trainable_weights": local_bytes(p for p in params if p.requires_grad),
        "gradients": local_bytes(p.grad for p in params if p.grad is not None),
        "optimizer_states": 0,
    }
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        out["optimizer_states"] = local_bytes(
            v for state in optimizer.state.values() for k, v in state.items()
            if k in ("exp_avg", "exp_avg_sq") and isinstance(v, torch.Tensor)
        )
    return out


def per_rank_bytes(
    n_params: int,
    n_trainable: int,
    world_size: int,
    engine: str,
    weight_bytes: float = 2,
    grad_bytes: float = 2,
    master_bytes: float = 4,
    optimizer_bytes: float = 8,
) -> TrainingBytes:
    """Eq. 1: bytes per rank to train ``n_params`` parameters (``n_trainable`` trainable) on ``world_size`` ranks.

    ``engine`` is one of :data:`ENGINES`; ``"single"`` needs ``world_size == 1``. The byte sizes default to
    mixed-precision Adam (:func:`lorakit.memory.training_bytes`); a 4-bit base is ``weight_bytes=0.5`` for its
    frozen part (call twice and add, or pass the average).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if engine == "single" and world_size != 1:
        raise ValueError(f"engine='single' runs on one rank, got world_size={world_size}")
    full = training_bytes(n_params, n_trainable, weight_bytes, grad_bytes, master_bytes, optimizer_bytes)
    if engine != "fsdp":
        return full
    n = world_size
    return TrainingBytes(full.weights / n, full.gradients / n, full.master_weights / n, full.optimizer_states / n)
