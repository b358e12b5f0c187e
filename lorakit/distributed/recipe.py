"""The course's fine-tuning step on several ranks, under DDP or FSDP2 (notebook 16).

**The same global batch, split.** Every rank draws the same global batch of ``batch_size`` examples (the same
seeded generator) and keeps the rows ``rank::world_size``. ``lm_loss`` is a mean over the answer tokens, and
examples have different numbers of them, so the mean of the ranks' means is *not* the global mean. Each rank
therefore backpropagates ``world_size * (sum of its token losses) / (global token count)``; DDP and FSDP2
average gradients over ranks, which gives exactly the gradient of the global mean loss (notebook 16, eq. 2).

**AdaLoRA.** ``RankAllocator.update_and_allocate`` reads the gradients of ``P``, ``Lambda`` and ``Q``: call it
after ``backward`` (DDP has all-reduced them by then, so they are the global gradients, the same on every
rank) and ``optimizer.step()``, before ``zero_grad``, as :func:`lorakit.adalora.train_adalora` does, on the
unwrapped model (``ddp.module``). Every rank then computes the same scores and prunes the same triplets.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lorakit.data import caesar_task
from lorakit.distributed.checkpoint import unwrap

__all__ = ["METHODS", "build_model", "global_batch", "shard_model", "train_steps"]

#: The adapter kinds the distributed recipe builds on the course model.
METHODS = ("lora", "dora", "adalora", "qlora")


def build_model(
    method: str, steps: int = 4, seed: int = 0, r: int = 4, device: torch.device | str = "cpu"
) -> nn.Module:
    """The pretrained tiny LM (fp32) with ``method``'s adapters on every linear layer, seeded (same on every rank).

    QLoRA uses the lorakit backend with fp32 compute, so the comparison with one process is at fp32 tolerance.
    AdaLoRA starts at rank ``r`` and prunes to ``r // 2`` over ``steps`` steps (one warm-up, one final step).
    """
    import lorakit
    from lorakit.models import load_tiny_lm

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    torch.manual_seed(seed)
    model = load_tiny_lm(device=device)
    if method == "adalora":
        from lorakit.adalora import AdaLoRAConfig, apply_adalora

        cfg = AdaLoRAConfig(init_r=r, target_r=max(r // 2, 1), tinit=1, tfinal=1, deltaT=1, total_step=steps,
                            alpha=2 * r, target_modules="all-linear")
        return apply_adalora(model, cfg)
    config = lorakit.LoRAConfig(r=r, alpha=2 * r, target_modules="all-linear", use_dora=method == "dora")
    if method == "qlora":
        from lorakit.qlora import apply_qlora

        return apply_qlora(model, config, compute_dtype=torch.float32)
    return lorakit.apply_lora(model, config)


def global_batch(step: int, batch_size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of step ``step`` (the same on every rank): ``(input_ids, targets)`` of ``batch_size`` rows."""
    data, _ = caesar_task(n_train=256, n_eval=1, seed=seed)
    generator = torch.Generator().manual_seed(seed * 100_003 + step)
    idx = torch.randint(len(data), (batch_size,), generator=generator)
    return data.input_ids[idx], data.targets[idx]


def shard_model(model: nn.Module, engine: str) -> nn.Module:
    """Wrap ``model`` for ``engine``: ``"single"`` as is, ``"ddp"`` in DDP, ``"fsdp"`` FSDP2 per decoder layer + root.

    Under FSDP2 every parameter is sharded over the ranks along dim 0, the frozen base included (the QLoRA
    base's packed 4-bit codes are a frozen parameter, so they shard too); the trainable adapters are sharded
    in the same groups. Returns the module to call.
    """
    if engine == "single":
        return model
    if engine == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if engine == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"engine must be 'single', 'ddp' or 'fsdp', got {engine!r}")


def train_steps(
    model: nn.Module, steps: int = 4, lr: float = 1e-2, batch_size: int = 8, seed: int = 0, orth_reg_weight: float = 0.1
) -> tuple[list[float], torch.optim.Optimizer]:
    """``steps`` AdamW steps on the global batches of :func:`global_batch`, this rank's rows; returns the global
    loss per step (the same number on every rank, equal to the single-process loss) and the optimizer.

    ``model`` is what :func:`shard_model` returned; without an initialised process group it runs alone.
    AdaLoRA models (``adalora_config`` on the unwrapped model) add the orthogonal regularizer and call the
    allocator after ``optimizer.step()`` (see the module docstring).
    """
    from lorakit.adalora import RankAllocator, orthogonal_regularization

    inner = unwrap(model)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be divisible by the world size {world}")
    allocator = RankAllocator.from_config(inner) if hasattr(inner, "adalora_config") else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    losses = []
    model.train()
    for step in range(1, steps + 1):
        ids, tgt = global_batch(step, batch_size, seed)
        n_tokens = int((tgt != -100).sum())
        ids, tgt = ids[rank::world].to(device), tgt[rank::world].to(device)
        out = model(ids)
        logits = getattr(out, "logits", out)  # a Hugging Face model returns an output object
        token_loss_sum = nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum")
        loss = token_loss_sum * world / n_tokens
        if allocator is not None and orth_reg_weight > 0:
            loss = loss + orth_reg_weight * orthogonal_regularization(inner)
        loss.backward()
        optimizer.step()
        if allocator is not None:
            allocator.update_and_allocate(inner, step)  # gradients are all-reduced here, the same on every rank
        optimizer.zero_grad(set_to_none=False)
        total = token_loss_sum.detach().clone().double()
        if distributed:
            dist.all_reduce(total)
        losses.append(float(total) / n_tokens)
    model.eval()
    return losses, optimizer
