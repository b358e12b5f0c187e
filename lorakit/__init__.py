"""lorakit: the small, tested PyTorch package behind the lorakit course (see DESIGN.md).

One concept per module: ``functional`` (LoRA forward + hand-derived backward), ``lora``
(``LoRALinear``), ``peft`` (model-level API in PEFT's format), ``memory`` (byte accounting),
``models``/``data`` (the course's tiny pretrained LM and its Caesar task), ``training``,
``check`` (exercise feedback) and ``widgets``.
"""

from __future__ import annotations

import torch

from lorakit.functional import lora_linear
from lorakit.lora import LoRALinear, MergeWarning, RankWarning, lora_scaling
from lorakit.peft import (
    LoRAConfig,
    apply_lora,
    load_adapter,
    lora_layers,
    merge_and_unload,
    merge_lora,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
)
from lorakit.training import seed_everything

__version__ = "0.1.0"


def device() -> torch.device:
    """The device the course uses: CUDA when present, else CPU (never required)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = [
    "LoRAConfig", "LoRALinear", "MergeWarning", "RankWarning", "apply_lora", "device", "load_adapter",
    "lora_layers", "lora_linear", "lora_scaling", "merge_and_unload", "merge_lora", "save_adapter",
    "seed_everything", "trainable_parameters", "unmerge_lora", "__version__",
]
