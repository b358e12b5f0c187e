"""lorakit: the small, tested PyTorch package behind the lorakit course (see the README).

One concept per module (or subpackage): ``functional`` (LoRA forward + hand-derived backward), ``lora``
(``LoRALinear``), ``peft`` (model-level API in PEFT's format), ``dora`` (``DoRALinear``), ``adalora``
(``SVDLinear`` + ``RankAllocator``), ``nf4`` (the 4-bit NormalFloat format, bit-exact with bitsandbytes),
``qlora`` (``QLoRALinear`` on a frozen NF4 base), ``family`` (IA3, VeRA, LoRA+, BitFit, prompt and prefix
tuning, adapters, LN tuning, QDoRA, GaLore), ``serving`` (many adapters on one base, in one batch),
``distributed`` (DDP/FSDP2: global-batch loss, collective adapter save, bytes per rank), ``memory`` (byte
accounting), ``models``/``data`` (the course's tiny pretrained LM, MiniLM-L6, the Caesar task), ``training``,
``results`` (stored experiment results), ``sweeps`` and ``analysis`` (the seeded
sweeps and the spectra/subspace analyses the notebooks run), ``pitfalls`` (the deliberate mistakes the course
shows), ``check`` (exercise feedback and a teacher's report), ``widgets`` and ``drill`` (the question bank, quiz,
flashcards and mock interview);
``kernels`` (optional Triton kernels, equal to PyTorch references; imported only on demand,
``pip install 'lorakit[gpu]'``).
"""

from __future__ import annotations

import torch

from lorakit import family  # noqa: F401  (the wider PEFT family: lorakit.family.apply_ia3, apply_vera, ...)
from lorakit._bnb import quiet_kernels_warning
from lorakit.adalora import AdaLoRAConfig, RankAllocator, SVDLinear, apply_adalora, orthogonal_regularization
from lorakit.atomic import unchanged_on_error
from lorakit.dora import DoRALinear
from lorakit.functional import lora_linear
from lorakit.layers import AdapterLayer, adapter_layers
from lorakit.lora import LoRALinear, MergeWarning, RankWarning, lora_scaling
from lorakit.nf4 import NF4_OFFSET, QuantizedTensor, bits_per_parameter, dequantize_nf4, nf4_code, quantize_nf4
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
from lorakit.qlora import QLoRALinear, apply_qlora, merge_qlora
from lorakit.serving import AdapterBank, MultiLoRAModel, Router
from lorakit.training import seed_everything

__version__ = "0.1.0"

quiet_kernels_warning()  # bitsandbytes' "missing optional kernels" log line would land in notebooks' stderr


def device() -> torch.device:
    """The device the course uses: CUDA when present, else CPU (never required)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = [
    "family",
    "AdapterBank", "MultiLoRAModel", "Router",
    "NF4_OFFSET", "AdaLoRAConfig", "AdapterLayer", "adapter_layers", "unchanged_on_error",
    "DoRALinear", "LoRAConfig", "LoRALinear", "MergeWarning", "QLoRALinear",
    "QuantizedTensor", "RankAllocator", "RankWarning", "SVDLinear", "apply_adalora", "apply_lora", "apply_qlora",
    "bits_per_parameter", "dequantize_nf4", "device", "load_adapter", "lora_layers", "lora_linear", "lora_scaling",
    "merge_and_unload", "merge_lora", "merge_qlora", "nf4_code", "orthogonal_regularization", "quantize_nf4",
    "save_adapter", "seed_everything", "trainable_parameters", "unmerge_lora", "__version__",
]
