"""BitFit: train the bias terms only (notebook 13, eq. 8; Ben Zaken et al. 2022, arXiv:2106.10199).

BitFit freezes every weight matrix and trains the additive biases, ``h = W x + b`` with only ``b``
trainable: one parameter per output feature of every layer that has a bias (in BERT-base about 0.08 % of
the parameters). It adds no layer and no inference cost: the trained biases simply replace the old ones.

**Models without biases.** LLaMA-style models, the course's TinyLM included, have no biases at all, so
BitFit has nothing to train. ``add_missing_biases=True`` gives every targeted bias-free ``nn.Linear`` a
bias initialised to **zero** (a :class:`BiasLinear`): the function is unchanged at the start, and the
trainable set is exactly the biases the same architecture would have. A pretrained bias-free model *is* the
biased architecture with its biases held at zero, so this is BitFit on the same pretrained function that
every other method starts from (notebook 13, section 3 explains why the course compares on this set-up
and checks the classic one on MiniLM-L6, whose pretrained biases exist).

``target_modules=None`` trains every parameter named ``bias`` (LayerNorm biases included, as the paper);
a list/regex restricts BitFit to the biases of those modules. PEFT has no BitFit method (its ``bias="all"``
option trains biases *next to* LoRA); lorakit saves BitFit adapters in PEFT's file layout with its own
``peft_type: "BITFIT"`` (keys ``base_model.model.<module>.bias``), which only lorakit reads.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.family._apply import CONFIG_ATTR, family_config, layers_of, refuse_family_model
from lorakit.family.config import adapter_dtype, check_bool, check_targets, read_peft_dict
from lorakit.layers import LinearAdapterLayer
from lorakit.lora import MergeWarning
from lorakit.peft import check_model, select_target_modules, set_submodule

__all__ = ["BiasLinear", "BitFitConfig", "apply_bitfit", "bitfit_parameters"]

PEFT_TYPE = "BITFIT"


@dataclass
class BitFitConfig:
    """Which biases to train (module docstring). ``parameter_names`` is filled in by :func:`apply_bitfit`."""

    target_modules: Sequence[str] | Set[str] | str | None = None
    add_missing_biases: bool = False
    parameter_names: tuple[str, ...] = field(default=(), compare=False)

    PEFT_TYPE = PEFT_TYPE

    def __post_init__(self) -> None:
        if self.target_modules is not None:
            self.target_modules = check_targets(self.target_modules)
        check_bool("add_missing_biases", self.add_missing_biases)
        if not isinstance(self.parameter_names, tuple) or not all(isinstance(n, str) for n in self.parameter_names):
            raise TypeError("parameter_names must be a tuple of parameter names (apply_bitfit fills it in)")

    def to_peft_dict(self) -> dict:
        return {"peft_type": PEFT_TYPE, "task_type": None, "target_modules": self.target_modules,
                "add_missing_biases": self.add_missing_biases, "inference_mode": True}

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> BitFitConfig:
        read_peft_dict(raw, PEFT_TYPE, {"target_modules", "add_missing_biases"}, {}, source)
        try:
            return cls(raw.get("target_modules"), raw.get("add_missing_biases", False))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


class BiasLinear(LinearAdapterLayer):
    """A frozen bias-free ``nn.Linear`` plus a trainable bias, initialised to zero: ``h = W x + b``.

    ``merge()`` gives the base layer that bias (so ``merge_and_unload`` returns a plain biased ``nn.Linear``).
    """

    adapter_kind = "BitFit"

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if base.bias is not None:
            raise ValueError("base already has a bias: BitFit trains it in place, no BiasLinear needed")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.bias = nn.Parameter(torch.zeros(base.out_features, device=w.device, dtype=adapter_dtype(w)))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return (out + self.bias).to(out.dtype)

    def check_merge(self) -> None:
        if not bool(torch.isfinite(self.bias).all()):
            raise ValueError("bias holds NaN or inf: merging would write it into the layer")

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.check_merge()
        w = self.base.weight
        self.base.bias = nn.Parameter(self.bias.detach().to(w.dtype).clone(), requires_grad=False)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base.bias = None
        self.merged = False


def _selected_bias_names(model: nn.Module, config: BitFitConfig) -> tuple[list[str], list[str]]:
    """(existing bias parameter names to train, names of bias-free ``nn.Linear`` layers to give a bias)."""
    if config.target_modules is None:
        existing = [n for n, _ in model.named_parameters() if n.split(".")[-1] == "bias"]
        missing = []
        if config.add_missing_biases:
            missing = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is None
                       and n.split(".")[-1] != "lm_head"]
        return existing, missing
    names = select_target_modules(model, config.target_modules, kinds=(nn.Module,))
    existing, missing = [], []
    for name in names:
        module = model.get_submodule(name)
        bias = module._parameters.get("bias")
        if isinstance(bias, nn.Parameter):
            existing.append(f"{name}.bias")
        elif config.add_missing_biases and isinstance(module, nn.Linear):
            missing.append(name)
    return existing, missing


def apply_bitfit(model: nn.Module, config: BitFitConfig | None = None) -> nn.Module:
    """Freeze everything but the selected biases (adding zero biases where asked); in place, atomic.

    Raises ValueError (model unchanged) when the selection holds no bias at all: the course TinyLM without
    ``add_missing_biases=True`` is the typical case, and the message says so.
    """
    check_model(model)
    config = BitFitConfig() if config is None else config
    if not isinstance(config, BitFitConfig):
        raise TypeError(f"config must be a BitFitConfig, got {type(config).__name__}")
    refuse_family_model(model, "apply_bitfit")
    existing, missing = _selected_bias_names(model, config)
    if not existing and not missing:
        raise ValueError(f"target_modules={config.target_modules!r} selects no bias parameter (LLaMA-style models "
                         "have none): pass add_missing_biases=True to add zero-initialised biases to the Linear layers")
    params = dict(model.named_parameters())
    stored = dataclasses.replace(config, parameter_names=tuple(sorted(existing + [f"{n}.bias" for n in missing])))
    with unchanged_on_error(model):
        for p in model.parameters():
            p.requires_grad_(False)
        for name in existing:
            params[name].requires_grad_(True)
        for name in missing:
            set_submodule(model, name, BiasLinear(model.get_submodule(name)))
        setattr(model, CONFIG_ATTR, stored)
    return model


def bitfit_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{parameter name: bias}`` that BitFit trains in ``model`` (made by :func:`apply_bitfit`)."""
    config = family_config(model, BitFitConfig)
    params = dict(model.named_parameters())
    return {n: params[n] for n in config.parameter_names}


# ---------------------------------------------------------------------------------------------- file format
def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    if any(m.merged for m in layers_of(model, BiasLinear).values()):
        raise ValueError("the model's BitFit layers are merged; unmerge before saving")
    return {f"base_model.model.{n}": p.detach().contiguous() for n, p in bitfit_parameters(model).items()}


def expected_shapes(model: nn.Module, config: BitFitConfig) -> dict[str, tuple[int, ...]]:
    if getattr(model, CONFIG_ATTR, None) is not None:
        current = family_config(model, BitFitConfig)
        if (current.target_modules, current.add_missing_biases) != (config.target_modules, config.add_missing_biases):
            raise ValueError("the adapter selects other biases than the model's BitFit set-up")
        return {f"base_model.model.{n}": tuple(p.shape) for n, p in bitfit_parameters(model).items()}
    existing, missing = _selected_bias_names(model, config)
    params = dict(model.named_parameters())
    out = {f"base_model.model.{n}": tuple(params[n].shape) for n in existing}
    out.update({f"base_model.model.{n}.bias": (model.get_submodule(n).out_features,) for n in missing})
    return out


def load_into(model: nn.Module, config: BitFitConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    if getattr(model, CONFIG_ATTR, None) is None:
        apply_bitfit(model, config)
    with torch.no_grad():
        for name, param in bitfit_parameters(model).items():
            param.copy_(tensors[f"base_model.model.{name}"])
    return model

