"""``LoRAConfig``: LoRA's hyper-parameters with PEFT's defaults, and PEFT's ``adapter_config.json`` (notebooks 01-04).

:meth:`LoRAConfig.to_peft_dict` writes the JSON that PEFT's ``LoraConfig`` reads, and
:meth:`LoRAConfig.from_peft_dict` reads one that PEFT wrote. Reading is strict: a field of the wrong type
(``"use_rslora": "false"``) is a ValueError naming it, and a PEFT feature lorakit does not implement
(``exclude_modules``, ``lora_bias``, ``rank_pattern``, ...) is refused *by name*, with its value, rather
than surfacing later as missing or unexpected tensor keys.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from lorakit.lora import INITS, validate_lora_args
from lorakit.peft.targets import check_target_modules

__all__ = ["DEFAULT_TARGETS", "PEFT_IGNORED_FIELDS", "PEFT_UNSUPPORTED_FIELDS", "LoRAConfig", "as_int", "as_real"]

#: PEFT's default target modules for LLaMA-family models (``q_proj``, ``v_proj``).
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")
#: ``init`` name <-> PEFT's ``init_lora_weights`` value.
_INIT_TO_PEFT: dict[str, object] = {"kaiming": True, "gaussian": "gaussian", "zeros": True, "pissa": "pissa"}
_PEFT_TO_INIT: dict[object, str] = {True: "kaiming", False: "kaiming", "gaussian": "gaussian", "pissa": "pissa"}
#: Fields of PEFT's LoraConfig that do not change what the adapter computes (read and ignored).
PEFT_IGNORED_FIELDS = frozenset({
    "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "runtime_config", "megatron_core", "qalora_group_size", "ensure_weight_tying",
})
#: PEFT features lorakit does not implement, with the value meaning "not used" (anything else is refused).
PEFT_UNSUPPORTED_FIELDS: dict[str, object] = {
    "exclude_modules": None, "fan_in_fan_out": False, "bias": "none", "modules_to_save": None,
    "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    "megatron_config": None, "trainable_token_indices": None, "loftq_config": {}, "eva_config": None,
    "corda_config": None, "lora_ga_config": None, "velora_config": None, "alora_invocation_tokens": None,
    "use_qalora": False, "monteclora_config": None, "layer_replication": None, "lora_bias": False,
    "target_parameters": None, "use_bdlora": None, "arrow_config": None, "kasa_config": None,
}
_KNOWN = {"r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora", "init_lora_weights"}


def as_int(name: str, value: object) -> int:
    """``value`` as a Python int: ints and NumPy integers are accepted, bools and floats are a TypeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def as_real(name: str, value: object) -> float | int:
    """``value`` as a Python number (NumPy scalars accepted); bools and strings are a TypeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _is_unused(value: object, unused: object) -> bool:
    return value == unused or value is None or (isinstance(value, (list, dict, tuple)) and not value)


@dataclass
class LoRAConfig:
    """LoRA hyper-parameters, with PEFT's defaults (``r=8, lora_alpha=8, lora_dropout=0``).

    ``target_modules``: a list (or set) of module-name suffixes (``"q_proj"`` matches
    ``layers.0.self_attn.q_proj``), a regular expression string matched against the full module name
    (``re.fullmatch``, as PEFT), or ``"all-linear"`` (every ``nn.Linear`` except the output head
    ``lm_head``); see :mod:`lorakit.peft.targets`. ``use_dora=True``: DoRA layers
    (:class:`~lorakit.dora.DoRALinear`) instead of LoRA ones. ``r`` and ``alpha`` accept NumPy scalars.
    """

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    target_modules: Sequence[str] | Set[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    rslora: bool = False
    init: str = "kaiming"
    use_dora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, numbers.Integral) and not isinstance(self.r, bool):
            self.r = int(self.r)
        if isinstance(self.alpha, numbers.Real) and not isinstance(self.alpha, bool):
            self.alpha = as_real("alpha", self.alpha)
        if isinstance(self.dropout, numbers.Real) and not isinstance(self.dropout, bool):
            self.dropout = float(self.dropout)
        validate_lora_args(self.r, self.alpha, self.dropout, self.init)
        if not isinstance(self.rslora, bool):
            raise TypeError(f"rslora must be a bool, got {type(self.rslora).__name__} {self.rslora!r}")
        if not isinstance(self.use_dora, bool):
            raise TypeError(f"use_dora must be a bool, got {type(self.use_dora).__name__} {self.use_dora!r}")
        self.target_modules = check_target_modules(self.target_modules)

    @property
    def scaling(self) -> float:
        """``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (notebook 03, eq. 1)."""
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    def to_peft_dict(self) -> dict:
        """The ``adapter_config.json`` contents PEFT expects."""
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": None,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": _INIT_TO_PEFT[self.init],
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "inference_mode": True,
        }

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> LoRAConfig:
        """Read a PEFT ``adapter_config.json`` dict strictly; ValueError names any field lorakit cannot honour."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(raw).__name__}")
        if raw.get("peft_type") != "LORA":
            raise ValueError(f"{source}: peft_type must be 'LORA', got {raw.get('peft_type')!r}")
        bad = {k: raw[k] for k, unused in PEFT_UNSUPPORTED_FIELDS.items()
               if k in raw and not _is_unused(raw[k], unused)}
        if bad:
            raise ValueError(f"{source}: PEFT features not supported by lorakit: {bad} (lorakit needs "
                             + ", ".join(f"{k}={PEFT_UNSUPPORTED_FIELDS[k]!r}" for k in bad) + ")")
        unknown = {k: v for k, v in raw.items() if k not in _KNOWN | PEFT_IGNORED_FIELDS | set(PEFT_UNSUPPORTED_FIELDS)
                   and not _is_unused(v, None)}
        if unknown:
            raise ValueError(f"{source}: fields unknown to lorakit, with non-default values: {unknown}")
        for key in ("use_rslora", "use_dora"):
            if not isinstance(raw.get(key, False), bool):
                raise ValueError(f"{source}: {key} must be true or false (a JSON boolean), got {raw[key]!r}")
        init = raw.get("init_lora_weights", True)
        if isinstance(init, str) and init.startswith("pissa_niter"):
            raise ValueError(
                f"{source}: init_lora_weights={init!r} (PiSSA from a randomized SVD): the residual base it needs "
                "cannot be rebuilt exactly; save it converted to a plain LoRA adapter (PEFT's "
                "path_initial_model_for_weight_conversion, or lorakit.save_adapter(..., convert_pissa=True))"
            )
        if init not in _PEFT_TO_INIT:
            raise ValueError(f"{source}: init_lora_weights={init!r} is not supported by lorakit "
                             f"(supported: true, false, 'gaussian', 'pissa')")
        if "r" not in raw:
            raise ValueError(f"{source}: r is missing")
        if raw.get("target_modules") is None:
            raise ValueError(f"{source}: target_modules is missing")
        try:
            return cls(r=raw["r"], alpha=raw.get("lora_alpha", 8), dropout=raw.get("lora_dropout", 0.0),
                       target_modules=raw["target_modules"], rslora=raw.get("use_rslora", False),
                       init=_PEFT_TO_INIT[init], use_dora=raw.get("use_dora", False))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


assert set(INITS) == set(_INIT_TO_PEFT)
