"""Checks for the "Check yourself" exercises of notebook 11 (the capstone on MiniLM-L6).

Every expected answer is computed here, never hard-coded: the Spearman-Brown reliability from the split-half
correlation given, the LoRA parameter count by building the adapter on MiniLM-L6 and counting, and the choice
from the DoRA paper's definitions.
"""

from __future__ import annotations

from lorakit.check import grade_choice, grade_value

__all__ = ["lora_qv_trainable", "q1", "q2", "q3", "spearman_brown"]


def spearman_brown(r_half: float) -> float:
    """Reliability of the full panel from the correlation of its two halves: ``2 r / (1 + r)``."""
    if isinstance(r_half, bool) or not isinstance(r_half, (int, float)) or not -1 < r_half <= 1:
        raise ValueError(f"r_half must be a number in (-1, 1], got {r_half!r}")
    return 2 * r_half / (1 + r_half)


def q1(answer: object, r_half: float = 0.93) -> bool:
    """11.1: the ten-rater reliability when two five-rater halves correlate at ``r_half``."""
    return grade_value("11.1", answer, spearman_brown(r_half), rtol=1e-3,
                       hint="a panel twice as large: Spearman-Brown, rho = 2 r / (1 + r)")


def lora_qv_trainable(r: int = 8) -> int:
    """Trainable parameters of LoRA rank ``r`` on W_q and W_v of MiniLM-L6, plus the 385 of the head, counted."""
    from torch import nn

    from lorakit.capstone.arms import targets_regex
    from lorakit.models import load_minilm
    from lorakit.peft import LoRAConfig, apply_lora, trainable_parameters

    encoder = apply_lora(load_minilm(), LoRAConfig(r=r, alpha=2 * r, target_modules=targets_regex(("q", "v"))))
    return trainable_parameters(encoder)[0] + sum(p.numel() for p in nn.Linear(384, 1).parameters())


def q2(answer: object, r: int = 8) -> bool:
    """11.2: trainable parameters of the ``lora_qv`` arm (LoRA r on W_q, W_v of 6 layers, and the head)."""
    return grade_value("11.2", answer, lora_qv_trainable(r), rtol=0,
                       hint="per adapted matrix r x (384 + 384); 6 layers x 2 matrices; plus 384 + 1 for the head")


def q3(answer: object) -> bool:
    """11.3 (choice): what does a negative slope of ΔM against ΔD over a run's matrices say?"""
    return grade_choice("11.3", answer, "b", {
        "a": "no: the sign of the fit is about how ΔM and ΔD co-vary across matrices, not about the loss",
        "b": "yes: matrices that turned more changed their length less, and the other way round (the paper's full FT)",
        "c": "no: both quantities are >= 0 by definition; a slope compares them, it does not make either negative",
        "d": "no: full fine-tuning and LoRA show a positive slope in the DoRA paper; a negative one is DoRA's",
    })
