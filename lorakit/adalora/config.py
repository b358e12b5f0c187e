"""``AdaLoRAConfig``: AdaLoRA's hyper-parameters with PEFT's defaults, and PEFT's ``adapter_config.json``.

:meth:`AdaLoRAConfig.to_peft_dict` gives the keyword arguments of ``peft.AdaLoraConfig`` (and the keys of
its ``adapter_config.json``); :meth:`AdaLoRAConfig.from_peft_dict` reads a file PEFT wrote, as strictly as
:meth:`lorakit.peft.LoRAConfig.from_peft_dict` reads a LoRA one: a field of the wrong type is a ValueError
naming it, and a PEFT feature lorakit does not implement is refused by name.

``rank_pattern`` is PEFT's record of the allocator's last mask, ``{"<module>.lora_E": [bool] * init_r}``
(True = the singular triplet is kept). PEFT saves only the kept triplets, so a file with a rank pattern
holds ``sum(pattern)`` rows of ``lora_A``/``lora_E`` and columns of ``lora_B`` for that module.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from lorakit.adalora.schedule import check_beta, check_int, check_schedule
from lorakit.lora import validate_lora_args
from lorakit.peft import DEFAULT_TARGETS, check_target_modules
from lorakit.peft.config import PEFT_IGNORED_FIELDS, PEFT_UNSUPPORTED_FIELDS, as_real

__all__ = ["ADALORA_UNSUPPORTED_FIELDS", "RANK_PATTERN_SUFFIX", "AdaLoRAConfig", "check_rank_pattern"]

#: PEFT's ``rank_pattern`` keys are ``<module name>.lora_E``.
RANK_PATTERN_SUFFIX = ".lora_E"
#: PEFT features lorakit's AdaLoRA does not implement, with the value meaning "not used".
ADALORA_UNSUPPORTED_FIELDS: dict[str, object] = {
    **{k: v for k, v in PEFT_UNSUPPORTED_FIELDS.items() if k != "rank_pattern"},
    "use_dora": False,
}
_INT_FIELDS = {"init_r": 1, "target_r": 0, "tinit": 0, "tfinal": 0, "deltaT": 1, "total_step": 1}
_REAL_FIELDS = ("beta1", "beta2", "orth_reg_weight", "lora_alpha", "lora_dropout")
#: Read and type-checked, but without effect on an AdaLoRA adapter (PEFT ignores them too: AdaLoRA's scale is
#: ``lora_alpha / ranknum`` and its rank ``init_r``).
_NO_EFFECT = {"r": int, "use_rslora": bool}
_KNOWN = set(_INT_FIELDS) | set(_REAL_FIELDS) | {"target_modules", "init_lora_weights", "rank_pattern"}


def _is_unused(value: object, unused: object) -> bool:
    return value == unused or value is None or (isinstance(value, (list, dict, tuple)) and not value)


def check_rank_pattern(pattern: object, init_r: int, name: str = "rank_pattern") -> dict[str, list[bool]] | None:
    """``pattern`` as ``{"<module>.lora_E": [bool] * init_r}`` (a new dict of lists), or None.

    TypeError/ValueError naming ``name`` and the offending key unless every key ends in ``.lora_E`` and every
    value is a list of ``init_r`` booleans.
    """
    if pattern is None:
        return None
    if not isinstance(pattern, dict):
        raise TypeError(f"{name} must be a dict {{'<module>.lora_E': [bool, ...]}} or None, got "
                        f"{type(pattern).__name__}")
    out: dict[str, list[bool]] = {}
    for key, keep in pattern.items():
        if not (isinstance(key, str) and key.endswith(RANK_PATTERN_SUFFIX) and len(key) > len(RANK_PATTERN_SUFFIX)):
            raise ValueError(f"{name} key {key!r} must be '<module name>{RANK_PATTERN_SUFFIX}' (PEFT's format)")
        if not (isinstance(keep, (list, tuple)) and all(isinstance(b, bool) for b in keep)):
            raise ValueError(f"{name}[{key!r}] must be a list of true/false, got {keep!r:.80}")
        if len(keep) != init_r:
            raise ValueError(f"{name}[{key!r}] has {len(keep)} entries but init_r={init_r} (one per singular triplet)")
        out[key] = list(keep)
    return out


@dataclass
class AdaLoRAConfig:
    """AdaLoRA hyper-parameters with PEFT's ``AdaLoraConfig`` defaults (``alpha`` = PEFT's ``lora_alpha``).

    ``total_step`` is required (PEFT refuses ``None`` too). ``target_modules`` works as in
    :class:`~lorakit.peft.LoRAConfig`. ``rank_pattern`` (see the module docstring) describes a *trained*
    adapter: :func:`~lorakit.load_adapter` reads it from a file, :func:`~lorakit.save_adapter` writes the
    layers' masks into it; :func:`~lorakit.adalora.apply_adalora` builds fresh layers and refuses it.
    Integers and reals accept NumPy scalars.
    """

    init_r: int = 12
    target_r: int = 8
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    alpha: float = 8
    dropout: float = 0.0
    target_modules: Sequence[str] | Set[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    rank_pattern: dict[str, list[bool]] | None = None

    def __post_init__(self) -> None:
        if self.total_step is None:
            raise ValueError("total_step is required: AdaLoRA's budget schedule needs the planned number of steps")
        self.init_r = check_int("init_r", self.init_r, 1)
        for name in ("alpha", "dropout"):
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                setattr(self, name, as_real(name, value))
        validate_lora_args(self.init_r, self.alpha, self.dropout)
        self.dropout = float(self.dropout)
        self.target_r = check_int("target_r", self.target_r, 0)
        if self.target_r > self.init_r:
            raise ValueError(f"target_r={self.target_r} must be <= init_r={self.init_r} (AdaLoRA only prunes)")
        self.tinit, self.tfinal, self.deltaT, self.total_step = check_schedule(
            self.tinit, self.tfinal, self.deltaT, self.total_step
        )
        self.beta1 = check_beta("beta1", self.beta1)
        self.beta2 = check_beta("beta2", self.beta2)
        w = self.orth_reg_weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise TypeError(f"orth_reg_weight must be a number >= 0, got {type(w).__name__} {w!r}")
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"orth_reg_weight must be a finite number >= 0, got {w}")
        self.orth_reg_weight = float(w)
        self.target_modules = check_target_modules(self.target_modules)
        self.rank_pattern = check_rank_pattern(self.rank_pattern, self.init_r)

    def to_peft_dict(self) -> dict:
        """Keyword arguments for ``peft.AdaLoraConfig(**d)`` (and its ``adapter_config.json`` keys)."""
        return {
            "peft_type": "ADALORA",
            "task_type": None,
            "base_model_name_or_path": None,
            "init_r": self.init_r,
            "target_r": self.target_r,
            "tinit": self.tinit,
            "tfinal": self.tfinal,
            "deltaT": self.deltaT,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "orth_reg_weight": self.orth_reg_weight,
            "total_step": self.total_step,
            "rank_pattern": None if self.rank_pattern is None else {k: list(v) for k, v in self.rank_pattern.items()},
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "init_lora_weights": True,
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": False,
        }

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> AdaLoRAConfig:
        """Read a PEFT AdaLoRA ``adapter_config.json`` dict strictly; ValueError names any field lorakit cannot honour.

        JSON types are checked as written: ``"init_r": 12.0``, ``"beta1": "0.85"`` or ``"use_rslora": "false"``
        are refused, naming the field. ``r`` and ``use_rslora`` are read and ignored, as PEFT's AdaLoRA ignores them.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(raw).__name__}")
        if raw.get("peft_type") != "ADALORA":
            raise ValueError(f"{source}: peft_type must be 'ADALORA', got {raw.get('peft_type')!r}")
        bad = {k: raw[k] for k, unused in ADALORA_UNSUPPORTED_FIELDS.items()
               if k in raw and not _is_unused(raw[k], unused)}
        if bad:
            raise ValueError(f"{source}: PEFT features not supported by lorakit's AdaLoRA: {bad} (lorakit needs "
                             + ", ".join(f"{k}={ADALORA_UNSUPPORTED_FIELDS[k]!r}" for k in bad) + ")")
        allowed = _KNOWN | set(_NO_EFFECT) | PEFT_IGNORED_FIELDS | set(ADALORA_UNSUPPORTED_FIELDS)
        unknown = {k: v for k, v in raw.items() if k not in allowed and not _is_unused(v, None)}
        if unknown:
            raise ValueError(f"{source}: fields unknown to lorakit, with non-default values: {unknown}")
        for key in _INT_FIELDS:
            value = raw.get(key)
            if key in raw and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{source}: {key} must be an integer, got {value!r}")
        for key in _REAL_FIELDS:
            value = raw.get(key)
            if key in raw and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{source}: {key} must be a number, got {value!r}")
        for key, kind in _NO_EFFECT.items():
            value = raw.get(key)
            if key in raw and value is not None and (type(value) is not kind):
                raise ValueError(f"{source}: {key} must be a JSON {'boolean' if kind is bool else 'integer'}, "
                                 f"got {value!r}")
        init = raw.get("init_lora_weights", True)
        if not isinstance(init, bool):
            raise ValueError(f"{source}: init_lora_weights={init!r} is not supported for AdaLoRA by lorakit "
                             "(true or false; the loaded weights replace the initial ones anyway)")
        for key in ("init_r", "total_step", "target_modules"):
            if raw.get(key) is None:
                raise ValueError(f"{source}: {key} is missing")
        defaults = cls.__dataclass_fields__
        try:
            return cls(
                **{k: raw.get(k, defaults[k].default) for k in _INT_FIELDS},
                beta1=raw.get("beta1", 0.85), beta2=raw.get("beta2", 0.85),
                orth_reg_weight=raw.get("orth_reg_weight", 0.5), alpha=raw.get("lora_alpha", 8),
                dropout=raw.get("lora_dropout", 0.0), target_modules=raw["target_modules"],
                rank_pattern=raw.get("rank_pattern"),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None
