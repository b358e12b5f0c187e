"""How many adapters fit: adapter bytes at LLaMA scale and what is left next to the base (notebook 12, sec. 5).

An adapter holds ``r (d_in + d_out)`` numbers per adapted layer (notebook 01, eq. 5); for LLaMA-7B with LoRA on
``q_proj`` and ``v_proj`` at ``r = 8`` in fp16 that is ``32 * 2 * 8 * (4096 + 4096) * 2`` bytes, about 8 MiB, the
"10 MB each" of the serving literature. The shapes come from :mod:`lorakit.memory` (Touvron et al. 2023).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

from lorakit.memory import llama_parameter_count, lora_parameter_count

__all__ = ["adapters_that_fit", "llama_adapter_bytes", "llama_base_bytes"]


def _nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def llama_adapter_bytes(size: str = "7B", r: int = 8, targets: Iterable[str] = ("q_proj", "v_proj"),
                        bytes_per_number: float = 2) -> int:
    """Bytes of one LoRA adapter of rank ``r`` on ``targets`` of LLaMA ``size`` (fp16/bf16: 2 bytes a number)."""
    _nonnegative("bytes_per_number", bytes_per_number)
    return int(lora_parameter_count(size, r, targets) * bytes_per_number)


def llama_base_bytes(size: str = "7B", bytes_per_number: float = 2) -> int:
    """Bytes of the LLaMA ``size`` base weights at ``bytes_per_number`` (2: fp16/bf16)."""
    _nonnegative("bytes_per_number", bytes_per_number)
    return int(llama_parameter_count(size) * bytes_per_number)


def adapters_that_fit(memory_bytes: float, base_bytes: float, adapter_bytes: float, reserved_bytes: float = 0) -> int:
    """``floor((memory - base - reserved) / adapter)``: adapters resident next to one base (0 if none fit)."""
    memory = _nonnegative("memory_bytes", memory_bytes)
    base = _nonnegative("base_bytes", base_bytes)
    reserved = _nonnegative("reserved_bytes", reserved_bytes)
    per = _nonnegative("adapter_bytes", adapter_bytes)
    if per == 0:
        raise ValueError("adapter_bytes must be > 0")
    return max(0, int((memory - base - reserved) // per))
