"""Argument checks and constants shared by the QLoRA modules (each error names the argument)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorakit.nf4.validation import check_blocksize

__all__ = [
    "ADAPTER_DTYPES", "BACKENDS", "COMPUTE_DTYPES", "QUANT_STORAGES", "QUANT_TYPES", "bnb", "check_base",
    "check_choice", "check_dtype", "check_quant_args", "check_quant_type", "is_bnb_linear4bit", "quant_code",
]

#: ``"lorakit"``: pure PyTorch, any device; ``"bitsandbytes"``: ``bitsandbytes.nn.Linear4bit`` (what PEFT uses);
#: ``"triton"``: lorakit's storage with the fused Triton 4-bit matmul (:mod:`lorakit.kernels`, optional).
BACKENDS = ("lorakit", "bitsandbytes", "triton")
#: The 4-bit data types of the base: NF4 (QLoRA's), and FP4 / INT4 for comparison (notebook 06, capstone).
QUANT_TYPES = ("nf4", "fp4", "int4")
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ADAPTER_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: dtypes the packed codes may be stored as (bitsandbytes' ``quant_storage``; see NF4Linear).
QUANT_STORAGES = (torch.uint8, torch.int8, torch.bfloat16, torch.float16, torch.float32)


def check_choice(name: str, value: object, choices: tuple) -> None:
    if not any(value is c or value == c for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_dtype(name: str, value: object, choices: tuple[torch.dtype, ...]) -> None:
    """TypeError unless ``value`` is a torch.dtype, ValueError unless it is one of ``choices``."""
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype (one of {choices}), got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value}")


def check_quant_args(blocksize: object, double_quant: object, compute_dtype: object, backend: object) -> None:
    """The quantization arguments of ``QLoRALinear`` / ``apply_qlora``, checked before anything is built."""
    if isinstance(backend, str):
        check_choice("backend", backend, BACKENDS)
    else:
        raise TypeError(f"backend must be one of {BACKENDS}, got {type(backend).__name__} {backend!r}")
    check_dtype("compute_dtype", compute_dtype, COMPUTE_DTYPES)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__} {double_quant!r}")
    check_blocksize(blocksize)  # the same rule for both backends (bitsandbytes accepts exactly these)


def check_quant_type(quant_type: object, backend: str = "lorakit") -> str:
    """``quant_type`` if it is one of :data:`QUANT_TYPES` that ``backend`` supports (bitsandbytes: nf4, fp4)."""
    if not isinstance(quant_type, str):
        raise TypeError(f"quant_type must be one of {QUANT_TYPES}, got {type(quant_type).__name__} {quant_type!r}")
    check_choice("quant_type", quant_type, QUANT_TYPES)
    if backend == "bitsandbytes" and quant_type == "int4":
        raise ValueError("quant_type='int4' is not a bitsandbytes 4-bit type (it has nf4 and fp4): use "
                         "backend='lorakit'")
    return quant_type


def quant_code(quant_type: str) -> torch.Tensor:
    """The 16 levels of ``quant_type`` (:func:`lorakit.nf4.nf4_code`, ``fp4_code``, ``int4_code``)."""
    from lorakit.nf4 import fp4_code, int4_code, nf4_code

    return {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}[check_quant_type(quant_type)]()


def is_bnb_linear4bit(module: object) -> bool:
    """Whether ``module`` is a ``bitsandbytes.nn.Linear4bit`` (checked by name: bitsandbytes need not be imported)."""
    cls = type(module)
    return any(c.__name__ == "Linear4bit" and c.__module__.startswith("bitsandbytes") for c in cls.__mro__)


def check_base(base: object, name: str = "base") -> None:
    """A full-precision ``nn.Linear`` in fp32/bf16/fp16 (what QLoRA quantizes)."""
    if not isinstance(base, nn.Linear):
        raise TypeError(f"{name} must be an nn.Linear, got {type(base).__name__}")
    if is_bnb_linear4bit(base):
        raise TypeError(f"{name} must be a full-precision nn.Linear, got a bitsandbytes Linear4bit (already quantized)")
    if base.weight.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{name}.weight must be fp32, bf16 or fp16 to be quantized, got {base.weight.dtype}")


def bnb() -> Any:
    """The ``bitsandbytes`` module (imported quietly, with an install hint when missing)."""
    from lorakit._bnb import import_bitsandbytes

    return import_bitsandbytes()
