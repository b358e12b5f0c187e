"""Checks for the "Check yourself" exercises of notebook 05 (memory accounting).

Every expected answer is computed here from :mod:`lorakit.memory` or from the arguments, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Sequence

from lorakit.check import grade_choice, grade_value
from lorakit.memory import LLAMA_SHAPES, llama_parameter_count, lora_parameter_count, training_bytes

__all__ = ["q1", "q2", "q3", "q4", "q5", "checkpoint_flop_factor", "full_finetune_bytes_per_param",
           "full_finetune_gib"]


def full_finetune_bytes_per_param() -> float:
    """Notebook 05, eq. (1): bytes per trainable parameter under mixed-precision Adam, ``2 + 2 + 4 + 4 + 4``."""
    return training_bytes(1, 1).total


def full_finetune_gib(size: str) -> float:
    """Notebook 05, eq. (2): GiB to fully fine-tune LLaMA ``size`` (weights, grads, master, Adam; no activations)."""
    n = llama_parameter_count(size)
    return training_bytes(n, n).total / 2**30


def q1(answer: object) -> bool:
    """05.1: bytes per parameter for full fine-tuning with mixed-precision Adam (activations excluded)."""
    return grade_value(
        "05.1", answer, full_finetune_bytes_per_param(),
        hint="add up a bf16 weight, its bf16 gradient, an fp32 master copy and Adam's two fp32 moments",
    )


def q2(answer: object, size: str = "7B") -> bool:
    """05.2: GiB (2**30 bytes) to fully fine-tune LLaMA ``size`` with mixed-precision Adam, activations excluded."""
    if size not in LLAMA_SHAPES:
        raise ValueError(f"size must be one of {sorted(LLAMA_SHAPES)}, got {size!r}")
    return grade_value(
        "05.2", answer, full_finetune_gib(size), rtol=5e-3,
        hint=f"parameters from the shapes (llama_parameter_count({size!r})) times 16 B, divided by 2**30 "
        "(GiB, not 10**9)",
    )


def q3(answer: object) -> bool:
    """05.3: does LoRA reduce activation memory?"""
    return grade_choice(
        "05.3",
        answer,
        "b",
        {
            "a": "no: activations scale with batch x sequence x width, not with the number of trainable "
            "parameters; the measured LoRA/full ratio was far above 1 %",
            "b": "adapted layers still keep their input x (for dL/dA) plus u = Ax, and every nonlinearity "
            "between the loss and the first adapter keeps its input so dL/dx can reach it; only frozen layers "
            "without an adapter drop theirs. Gradient checkpointing is what cuts activations",
            "c": "no: frozen weights need no gradient, but dL/dx still has to flow through them to earlier "
            "adapters, and the nonlinearities on that path need their saved inputs",
            "d": "no: like for like (the same linear layers trained) LoRA keeps slightly MORE, r extra numbers "
            "per token per adapted layer (u = Ax), and it never doubles anything",
        },
    )


def q4(
    answer: object, size: str = "13B", r: int = 16, targets: Sequence[str] = ("q_proj", "v_proj")
) -> bool:
    """05.4: trainable LoRA parameters for LLaMA ``size``, rank ``r``, on ``targets`` (notebook 05, eq. 4)."""
    expected = lora_parameter_count(size, r, tuple(targets))
    return grade_value(
        "05.4", answer, expected, rtol=1e-9,
        hint="each adapted [d_out, d_in] layer adds r (d_in + d_out) parameters; multiply by the layer count",
    )


def checkpoint_flop_factor(method: str) -> float:
    """Notebook 05, eq. (6): FLOPs of a step with gradient checkpointing over a step without.

    Each big matmul costs one forward ``F``; the backward is ``2F`` (input and weight gradients) under full
    fine-tuning and ``F`` under LoRA (the frozen weights need no weight gradient); checkpointing adds one ``F``.
    """
    backward = {"full": 2.0, "lora": 1.0}
    if method not in backward:
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    return (1.0 + backward[method] + 1.0) / (1.0 + backward[method])


def q5(answer: object) -> bool:
    """05.5: by what factor does gradient checkpointing multiply the FLOPs of a LoRA training step (eq. 6)?"""
    return grade_value("05.5", answer, checkpoint_flop_factor("lora"), rtol=1e-3,
                       hint="count forwards: a LoRA step is 1 forward + 1 backward of the same size; checkpointing "
                            "adds one forward")
