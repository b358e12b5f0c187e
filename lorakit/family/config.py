"""What every family config shares: argument checks, and strict reading of PEFT's ``adapter_config.json``.

Each method's config (``IA3Config``, ``VeRAConfig``, ...) is a dataclass with PEFT's defaults and two
methods, ``to_peft_dict()`` (the JSON PEFT's ``PeftConfig.from_pretrained`` reads) and
``from_peft_dict(raw)``. Reading is strict, as :class:`lorakit.LoRAConfig`'s: a field lorakit does not
honour with a non-default value (``layers_to_transform``, ``modules_to_save``, ...) is refused by name.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence, Set

from lorakit.peft.targets import check_target_modules

__all__ = [
    "PEFT_IGNORED", "check_bool", "check_choice", "check_positive_int", "check_probability", "check_real",
    "check_targets", "read_peft_dict",
]

#: PEFT config fields that do not change what an adapter computes (read and ignored, as LoRAConfig does).
PEFT_IGNORED = frozenset({
    "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode",
})


def check_positive_int(name: str, value: object) -> int:
    """``value`` as a Python int > 0 (NumPy integers accepted); TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_real(name: str, value: object, low: float | None = None, low_open: bool = False,
               high: float | None = None) -> float:
    """``value`` as a finite float (with ``low <= value``, or ``low < value`` if ``low_open``, ``<= high``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_probability(name: str, value: object) -> float:
    """A dropout probability in ``[0, 1)``."""
    value = check_real(name, value, 0.0)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_targets(value: object, name: str = "target_modules") -> list[str] | str:
    """``target_modules`` (suffix list, set, regex or ``"all-linear"``), as :mod:`lorakit.peft.targets` reads it."""
    return check_target_modules(value, name)


def read_peft_dict(raw: object, peft_type: str, known: Set[str], unsupported: dict[str, object],
                   source: str) -> dict:
    """Check a PEFT config dict: right ``peft_type``, no unsupported feature in use, no unknown field.

    ``unsupported`` maps a field to its "not used" value (``None``, ``False``, ``"none"``, ...); a field at
    that value, absent, empty or None is fine. Returns ``raw``.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(raw).__name__}")
    if raw.get("peft_type") != peft_type:
        raise ValueError(f"{source}: peft_type must be {peft_type!r}, got {raw.get('peft_type')!r}")

    def unused(value: object, default: object) -> bool:
        return value == default or value is None or (isinstance(value, (list, dict, tuple)) and not value)

    bad = {k: raw[k] for k, default in unsupported.items() if k in raw and not unused(raw[k], default)}
    if bad:
        raise ValueError(f"{source}: PEFT features not supported by lorakit: {bad} (lorakit needs "
                         + ", ".join(f"{k}={unsupported[k]!r}" for k in bad) + ")")
    unknown = {k: v for k, v in raw.items()
               if k not in set(known) | PEFT_IGNORED | set(unsupported) and not unused(v, None)}
    if unknown:
        raise ValueError(f"{source}: fields unknown to lorakit, with non-default values: {unknown}")
    return raw


def adapter_dtype(weight: object) -> object:
    """float32 for a bf16/fp16 base (PEFT's ``autocast_adapter_dtype``), else the base weight's dtype."""
    import torch

    dtype = weight.dtype  # type: ignore[attr-defined]
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
