"""Checks for the "Check yourself" exercises of notebook 14 (interview drill).

Every expected answer is computed from lorakit (the memory accounting, the NF4 storage and the Leitner rule of
:mod:`lorakit.drill.flashcards`), never hard-coded. Hints say where to look, not what the answer is.
"""

from __future__ import annotations

from lorakit.check import grade_callable, grade_choice, grade_value
from lorakit.drill.flashcards import N_BOXES
from lorakit.memory import lora_parameter_count
from lorakit.nf4 import storage_bytes

__all__ = ["Q1_R", "Q1_SIZE", "Q1_TARGETS", "Q3_BLOCKSIZE", "leitner_reference", "q1", "q2", "q3", "q4"]

Q1_SIZE, Q1_R, Q1_TARGETS = "13B", 16, ("q_proj", "v_proj")
Q3_BLOCKSIZE = 128
_BIG = 64 * 256 * 1024


def q1(answer: object) -> bool:
    """14.1: LoRA parameters of LLaMA-13B with r = 16 on q_proj and v_proj of every layer."""
    return grade_value("14.1", answer, lora_parameter_count(Q1_SIZE, Q1_R, Q1_TARGETS),
                       hint="one adapted layer costs r (d_in + d_out); the 13B shapes are in "
                            "lorakit.memory.LLAMA_SHAPES, and every decoder layer has both projections")


def q2(answer: object) -> bool:
    """14.2 (choice): which part of training memory does LoRA leave as large as full fine-tuning?"""
    return grade_choice("14.2", answer, "c", {
        "a": "the gradients of the frozen base are not kept at all under LoRA; that is part of the saving",
        "b": "Adam's moments exist only for the trainable adapter under LoRA, so they shrink with it",
        "c": "the backward pass still needs each layer's input to reach the adapters, so activations are the "
             "same as under full fine-tuning (gradient checkpointing is what cuts them)",
        "d": "the fp32 master copies are kept only for trainable parameters, so LoRA keeps very few",
    })


def q3(answer: object) -> bool:
    """14.3: bits per weight of NF4 with blocks of 128 and double quantization (large tensor)."""
    want = 8 * storage_bytes(_BIG, Q3_BLOCKSIZE, True) / _BIG
    return grade_value("14.3", answer, want, rtol=1e-3,
                       hint="count every stored bit per weight: the 4-bit codes, the 8-bit block constants and "
                            "the fp32 scales of those constants")


def leitner_reference(box: int, knew: bool) -> int:
    """The Leitner rule of :class:`lorakit.drill.Flashcards`: up one box when known (at most 5), else box 1."""
    return min(box + 1, N_BOXES) if knew else 1


def q4(fn: object) -> bool:
    """14.4: a function ``next_box(box, knew) -> int`` implementing the Leitner rule of the flashcards."""
    cases = [(b, k) for b in range(1, N_BOXES + 1) for k in (True, False)]
    return grade_callable("14.4", fn, leitner_reference, cases,
                          hint=f"boxes run 1..{N_BOXES}; think about what happens at both ends")
