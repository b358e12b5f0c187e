"""Checks for the "Check yourself" exercises of notebook 16 (beyond one GPU: DDP and FSDP).

Every expected answer is computed here with :func:`lorakit.distributed.per_rank_bytes` and
:mod:`lorakit.memory` from the arguments, never hard-coded.
"""

from __future__ import annotations

import math

from lorakit.check import grade_choice, grade_value
from lorakit.distributed import per_rank_bytes
from lorakit.memory import LLAMA_SHAPES, llama_parameter_count

__all__ = ["q1", "q2", "q3", "fsdp_full_finetune_gib", "min_gpus_full_finetune"]


def _size(size: object) -> str:
    if size not in LLAMA_SHAPES:
        raise ValueError(f"size must be one of {sorted(LLAMA_SHAPES)}, got {size!r}")
    return str(size)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def fsdp_full_finetune_gib(size: str, world_size: int) -> float:
    """Notebook 16, eq. 1: GiB per rank to fully fine-tune LLaMA ``size`` with FSDP (mixed-precision Adam)."""
    n = llama_parameter_count(_size(size))
    return per_rank_bytes(n, n, _positive_int("world_size", world_size), "fsdp").total / 2**30


def min_gpus_full_finetune(size: str, gpu_gib: float) -> int:
    """The fewest ranks whose FSDP shards of weights, gradients, master and Adam state fit in ``gpu_gib`` each."""
    if isinstance(gpu_gib, bool) or not isinstance(gpu_gib, (int, float)) or not gpu_gib > 0:
        raise ValueError(f"gpu_gib must be a positive number, got {gpu_gib!r}")
    return math.ceil(fsdp_full_finetune_gib(size, 1) / gpu_gib)


def q1(answer: object, size: str = "7B", world_size: int = 8) -> bool:
    """16.1: GiB per rank to fully fine-tune LLaMA ``size`` on ``world_size`` ranks with FSDP (activations excluded)."""
    return grade_value(
        "16.1", answer, fsdp_full_finetune_gib(size, world_size), rtol=5e-3,
        hint="16 bytes per parameter (weights, gradients, master copy, Adam's m and v), all of them sharded: "
        "divide by the number of ranks; GiB = 2**30 bytes",
    )


def q2(answer: object) -> bool:
    """16.2: where AdaLoRA's ``update_and_allocate`` goes under DDP."""
    return grade_choice(
        "16.2", answer, "b",
        {
            "a": "no: before backward there are no gradients yet, and the importance score is |w * dL/dw|",
            "b": "after backward DDP has averaged the gradients over the ranks, so every rank holds the global "
            "gradient, computes the same scores and prunes the same triplets; zero_grad would erase them",
            "c": "no: rank 0 alone would prune while the other ranks keep their triplets, and the replicas would "
            "drift apart (DDP does not re-broadcast parameters after construction)",
            "d": "no: after zero_grad the gradients are zero (or None): every score would be zero",
        },
    )


def q3(answer: object, size: str = "65B", gpu_gib: float = 80) -> bool:
    """16.3: the fewest GPUs of ``gpu_gib`` GiB that hold a full fine-tune of LLaMA ``size`` under FSDP."""
    return grade_value(
        "16.3", answer, min_gpus_full_finetune(size, gpu_gib), rtol=0,
        hint="the total of eq. 1 for one rank (16 bytes per parameter) divided by the GPU size, rounded UP",
    )
