"""``save_adapter`` from rank 0 of a DDP or FSDP2 model (notebook 16).

Under FSDP2 each rank holds only a shard of every adapter tensor (a DTensor), so writing the file needs the
whole tensors first: every rank calls ``unshard()`` on its FSDP modules (a collective all-gather), rank 0
writes the PEFT-format adapter with :func:`lorakit.save_adapter`, every rank reshards. A DDP model is
unwrapped (``ddp.module``): its parameters are already whole and the same on every rank.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist
from torch import nn

__all__ = ["save_adapter", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (``model.module``), else ``model`` itself."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


def save_adapter(model: nn.Module, directory: str | os.PathLike, rank: int = 0) -> Path | None:
    """Collective: every rank must call it. Rank ``rank`` writes the adapter (PEFT's format) to ``directory``.

    Returns the directory on the writing rank, None on the others. Works without a process group too (then
    it is :func:`lorakit.save_adapter`).
    """
    from torch.distributed.fsdp import FSDPModule

    from lorakit.peft import save_adapter as save_one

    inner = unwrap(model)
    if not (dist.is_available() and dist.is_initialized()):
        return save_one(inner, directory)
    fsdp_modules = [m for m in inner.modules() if isinstance(m, FSDPModule)]
    for m in fsdp_modules:
        m.unshard()
    written, error = None, None
    try:
        if dist.get_rank() == rank:
            try:
                written = save_one(inner, directory)
            except Exception as err:  # re-raised after the collective reshard, so no rank hangs
                error = err
    finally:
        for m in fsdp_modules:
            m.reshard()
        dist.barrier()
    if error is not None:
        raise error
    return written
