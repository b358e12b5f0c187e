"""LN tuning: train only the normalisation layers (notebook 13, eq. 9; Zhao et al. 2024, arXiv:2312.11420).

A selective method like BitFit: the gains (and biases, for LayerNorm) of the chosen normalisation layers
are the only trainable parameters, ``d`` (RMSNorm) or ``2d`` (LayerNorm) per layer.

As Hugging Face PEFT's ``LN_TUNING`` (``peft.tuners.ln_tuning``), the layer keeps the pretrained norm frozen
as ``base`` and trains a *copy* (PEFT's ``ln_tuning_layers``), so the adapter can be switched off or swapped;
``merge()`` swaps the two (the tuned copy becomes the base), which is all "merging" means here, and
``merge_and_unload`` leaves the tuned norm in place. Because of the copy, PEFT counts the norm's parameters
twice in its total, and so does :func:`lorakit.trainable_parameters` (the counts are equal).

Defaults follow PEFT for LLaMA-style models: ``input_layernorm``, ``post_attention_layernorm`` and the final
``norm``. A target must be a normalisation layer (``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``, batch
norms, or any module class whose name ends in ``Norm``, such as the course model's ``RMSNorm`` and
transformers' ``LlamaRMSNorm``); PEFT would copy any module, lorakit refuses others by name.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.family._apply import adapt_modules, family_config, layers_of, refuse_family_model
from lorakit.family.config import check_targets, read_peft_dict
from lorakit.layers import AdapterLayer
from lorakit.lora import MergeWarning
from lorakit.peft import check_model, select_target_modules

__all__ = ["LNTuningConfig", "LNTuningLayer", "apply_ln_tuning", "is_norm_layer", "ln_tuning_layers"]

PEFT_TYPE = "LN_TUNING"
_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def is_norm_layer(module: object) -> bool:
    """True for normalisation layers (see the module docstring for the rule)."""
    return isinstance(module, _NORM_TYPES) or (isinstance(module, nn.Module) and type(module).__name__.endswith("Norm"))


@dataclass
class LNTuningConfig:
    """Which normalisation layers to train; PEFT's LLaMA defaults."""

    target_modules: Sequence[str] | Set[str] | str = field(
        default_factory=lambda: ["input_layernorm", "post_attention_layernorm", "norm"])

    PEFT_TYPE = PEFT_TYPE

    def __post_init__(self) -> None:
        self.target_modules = check_targets(self.target_modules)

    def to_peft_dict(self) -> dict:
        return {"peft_type": PEFT_TYPE, "task_type": None, "base_model_name_or_path": None,
                "target_modules": self.target_modules, "exclude_modules": None, "modules_to_save": None,
                "inference_mode": True}

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> LNTuningConfig:
        read_peft_dict(raw, PEFT_TYPE, {"target_modules"}, {"exclude_modules": None, "modules_to_save": None}, source)
        if raw.get("target_modules") is None:
            raise ValueError(f"{source}: target_modules is missing")
        try:
            return cls(raw["target_modules"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


class LNTuningLayer(AdapterLayer):
    """A frozen normalisation layer ``base`` and its trainable copy ``ln_tuning_layers`` (PEFT's name)."""

    adapter_kind = "LN tuning"

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if not is_norm_layer(base):
            raise TypeError(f"base must be a normalisation layer (LayerNorm, RMSNorm, ...), got {type(base).__name__}")
        if not any(True for _ in base.parameters()):
            raise ValueError(f"base ({type(base).__name__}) has no parameters to tune (elementwise_affine=False?)")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.ln_tuning_layers = copy.deepcopy(base)
        for p in self.ln_tuning_layers.parameters():  # in the base's dtype: PEFT does not upcast these copies
            p.requires_grad_(True)
        self.merged = False

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.merged:
            return self.base(x, *args, **kwargs)
        return self.ln_tuning_layers(x, *args, **kwargs)

    @torch.no_grad()
    def merge(self) -> None:
        """Swap: the tuned copy becomes ``base`` (PEFT's merge)."""
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base, self.ln_tuning_layers = self.ln_tuning_layers, self.base
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base, self.ln_tuning_layers = self.ln_tuning_layers, self.base
        self.merged = False


def ln_tuning_layers(model: nn.Module) -> dict[str, LNTuningLayer]:
    """``{module name: LNTuningLayer}`` for every LN-tuning layer in ``model``."""
    return layers_of(model, LNTuningLayer)


def _norm_kinds(model: nn.Module) -> tuple[type[nn.Module], ...]:
    return tuple({type(m) for m in model.modules() if is_norm_layer(m)}) or (nn.LayerNorm,)


def apply_ln_tuning(model: nn.Module, config: LNTuningConfig | None = None) -> nn.Module:
    """Wrap each targeted normalisation layer in :class:`LNTuningLayer`; freeze the rest; in place, atomic."""
    check_model(model)
    config = LNTuningConfig() if config is None else config
    if not isinstance(config, LNTuningConfig):
        raise TypeError(f"config must be an LNTuningConfig, got {type(config).__name__}")
    refuse_family_model(model, "apply_ln_tuning")
    names = select_target_modules(model, config.target_modules, kinds=_norm_kinds(model))
    empty = [n for n in names if not any(True for _ in model.get_submodule(n).parameters())]
    if empty:
        raise ValueError(f"target_modules selects normalisation layers without parameters: {empty[:4]}")
    return adapt_modules(model, names, lambda _name, base: LNTuningLayer(base), config)


# ---------------------------------------------------------------------------------------------- PEFT format
def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's keys: ``base_model.model.<name>.ln_tuning_layers.<param>``."""
    family_config(model, LNTuningConfig)
    out = {}
    for name, layer in ln_tuning_layers(model).items():
        if layer.merged:
            raise ValueError("the model's LN-tuning layers are merged; unmerge before saving")
        for pname, p in layer.ln_tuning_layers.named_parameters():
            out[f"base_model.model.{name}.ln_tuning_layers.{pname}"] = p.detach().contiguous()
    return out


def expected_shapes(model: nn.Module, config: LNTuningConfig) -> dict[str, tuple[int, ...]]:
    layers = ln_tuning_layers(model)
    if layers:
        return {f"base_model.model.{n}.ln_tuning_layers.{pn}": tuple(p.shape)
                for n, m in layers.items() for pn, p in m.ln_tuning_layers.named_parameters()}
    names = select_target_modules(model, config.target_modules, kinds=_norm_kinds(model))
    return {f"base_model.model.{n}.ln_tuning_layers.{pn}": tuple(p.shape)
            for n in names for pn, p in model.get_submodule(n).named_parameters()}


def load_into(model: nn.Module, config: LNTuningConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    layers = ln_tuning_layers(model)
    if any(m.merged for m in layers.values()):
        raise ValueError("the model's LN-tuning layers are merged; unmerge before loading another adapter")
    if not layers:
        apply_ln_tuning(model, config)
    with torch.no_grad():
        for name, layer in ln_tuning_layers(model).items():
            for pname, p in layer.ln_tuning_layers.named_parameters():
                p.copy_(tensors[f"base_model.model.{name}.ln_tuning_layers.{pname}"])
    return model
