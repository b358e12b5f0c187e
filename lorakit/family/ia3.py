"""(IA)³: learned vectors that rescale activations (notebook 13, eq. 5; Liu et al. 2022, arXiv:2205.05638).

"Infused Adapter by Inhibiting and Amplifying Inner Activations" trains one vector per adapted layer and
multiplies it into the activations, elementwise (notebook 13, section 2)::

    attention (k_proj, v_proj):   h = l ⊙ (W x + b)          l ∈ R^{d_out}, the output is scaled
    feed-forward (down_proj):     h = W (l ⊙ x) + b          l ∈ R^{d_in},  the input is scaled

The vectors start at 1, so the adapted model starts as the pretrained one. Trainable parameters: ``d_out``
per attention target and ``d_in`` per feed-forward target (eq. 6); for LLaMA's defaults that is
``2 d_model + d_ff`` per block, against LoRA's ``r (d_in + d_out)`` per target matrix.

Both forms are linear in ``W``, so they merge: ``W' = diag(l) W`` (and ``b' = l ⊙ b``) for an output
scaling, ``W' = W diag(l)`` for an input scaling (bias unchanged). ``unmerge`` divides again, so a zero
entry of ``l`` cannot be merged (refused).

Everything follows Hugging Face PEFT's ``IA3Config`` / ``peft.tuners.ia3``: defaults for LLaMA-style models
(``target_modules = [k_proj, v_proj, down_proj]``, ``feedforward_modules = [down_proj]``); a target is a
feed-forward one when ``feedforward_modules`` (a regex: ``re.fullmatch``; a list: ``name.endswith(entry)``,
PEFT's rule, without the dot that target matching uses) selects it, and a list of ``feedforward_modules``
must be a subset of a list of ``target_modules``; the vectors are stored as PEFT's ``ia3_l``, shape
``[d_out, 1]`` or ``[1, d_in]``, fp32 on a bf16/fp16 base (PEFT's ``autocast_adapter_dtype``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.family._apply import CONFIG_ATTR, adapt_modules, family_config, layers_of, refuse_family_model
from lorakit.family.config import adapter_dtype, check_bool, check_targets, read_peft_dict
from lorakit.layers import LinearAdapterLayer
from lorakit.lora import MergeWarning
from lorakit.peft import check_model, select_target_modules

__all__ = ["IA3Config", "IA3Linear", "apply_ia3", "ia3_layers"]

PEFT_TYPE = "IA3"


@dataclass
class IA3Config:
    """(IA)³ hyper-parameters, PEFT's defaults for LLaMA-style models (module docstring)."""

    target_modules: Sequence[str] | Set[str] | str = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward_modules: Sequence[str] | Set[str] | str = field(default_factory=lambda: ["down_proj"])
    init_ia3_weights: bool = True

    PEFT_TYPE = PEFT_TYPE

    def __post_init__(self) -> None:
        self.target_modules = check_targets(self.target_modules)
        if isinstance(self.feedforward_modules, (list, tuple, Set)) and not self.feedforward_modules:
            self.feedforward_modules = []
        else:
            self.feedforward_modules = check_targets(self.feedforward_modules, "feedforward_modules")
        check_bool("init_ia3_weights", self.init_ia3_weights)
        if isinstance(self.target_modules, list) and isinstance(self.feedforward_modules, list):
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:  # PEFT: "`feedforward_modules` should be a subset of `target_modules`"
                raise ValueError(f"feedforward_modules must be a subset of target_modules; {extra} are not targets")

    def is_feedforward(self, name: str) -> bool:
        """PEFT's rule: ``re.fullmatch`` for a regex, ``name.endswith(entry)`` for a list."""
        if isinstance(self.feedforward_modules, str):
            return re.fullmatch(self.feedforward_modules, name) is not None
        return any(name.endswith(entry) for entry in self.feedforward_modules)

    def to_peft_dict(self) -> dict:
        return {"peft_type": PEFT_TYPE, "task_type": None, "base_model_name_or_path": None,
                "target_modules": self.target_modules, "feedforward_modules": self.feedforward_modules,
                "init_ia3_weights": self.init_ia3_weights, "fan_in_fan_out": False, "modules_to_save": None,
                "exclude_modules": None, "inference_mode": True}

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> IA3Config:
        read_peft_dict(raw, PEFT_TYPE, {"target_modules", "feedforward_modules", "init_ia3_weights"},
                       {"fan_in_fan_out": False, "modules_to_save": None, "exclude_modules": None}, source)
        if raw.get("target_modules") is None or raw.get("feedforward_modules") is None:
            raise ValueError(f"{source}: target_modules and feedforward_modules must both be given")
        try:
            return cls(raw["target_modules"], raw["feedforward_modules"], raw.get("init_ia3_weights", True))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


class IA3Linear(LinearAdapterLayer):
    """A frozen ``nn.Linear`` whose output (or, ``is_feedforward=True``, input) is scaled by ``ia3_l`` (eq. 5).

    ``ia3_l`` has PEFT's shape: ``[out, 1]`` (output scaling) or ``[1, in]`` (input scaling), initialised to 1
    (``init_ia3_weights=False``: left at random normal values, PEFT's option for tests).
    """

    adapter_kind = "IA3"

    def __init__(self, base: nn.Linear, is_feedforward: bool = False, init_ia3_weights: bool = True) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        check_bool("is_feedforward", is_feedforward)
        check_bool("init_ia3_weights", init_ia3_weights)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.is_feedforward = is_feedforward
        shape = (1, base.in_features) if is_feedforward else (base.out_features, 1)
        factory = {"device": base.weight.device, "dtype": adapter_dtype(base.weight)}
        self.ia3_l = nn.Parameter(torch.ones(shape, **factory) if init_ia3_weights else torch.randn(shape, **factory))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        scale = self.ia3_l.flatten()
        if self.is_feedforward:  # as PEFT: scale in the adapter dtype, then back to the input dtype
            return self.base((x.to(scale.dtype) * scale).to(x.dtype))
        out = self.base(x)
        return (out * scale).to(out.dtype)

    @torch.no_grad()
    def check_merge(self) -> None:
        """ValueError when ``ia3_l`` holds zeros or non-finite values (the merge could not be undone)."""
        if not bool(torch.isfinite(self.ia3_l).all()) or bool((self.ia3_l == 0).any()):
            raise ValueError("ia3_l holds zeros, NaN or inf: merging would not be reversible")

    @torch.no_grad()
    def merge(self) -> None:
        """``W <- diag(l) W`` and ``b <- l ⊙ b`` (output scaling) or ``W <- W diag(l)`` (input scaling)."""
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.check_merge()
        self._scale_base(self.ia3_l.float())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide the scaling out again (exact up to rounding)."""
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        self._scale_base(1.0 / self.ia3_l.float())
        self.merged = False

    def _scale_base(self, factor: torch.Tensor) -> None:
        weight = self.base.weight
        weight.copy_((weight.float() * factor).to(weight.dtype))  # [out, 1] or [1, in] broadcasts over W
        bias = self.base.bias
        if bias is not None and not self.is_feedforward:
            bias.copy_((bias.float() * factor.flatten()).to(bias.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"is_feedforward={self.is_feedforward}, merged={self.merged}")


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    """``{module name: IA3Linear}`` for every (IA)³ layer in ``model``."""
    return layers_of(model, IA3Linear)


def apply_ia3(model: nn.Module, config: IA3Config | None = None) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by :class:`IA3Linear`, in place; return ``model``.

    Everything else is frozen. Raises (model unchanged) for a non-IA3Config, a model that already carries
    adapters, targets that match nothing or a non-Linear module, and ``feedforward_modules`` that select a
    module that is not a target (as PEFT's subset rule).
    """
    check_model(model)
    config = IA3Config() if config is None else config
    if not isinstance(config, IA3Config):
        raise TypeError(f"config must be an IA3Config, got {type(config).__name__}")
    refuse_family_model(model, "apply_ia3")
    names = select_target_modules(model, config.target_modules)
    if isinstance(config.feedforward_modules, str):
        stray = [n for n, m in model.named_modules() if n and n not in names and isinstance(m, nn.Linear)
                 and config.is_feedforward(n)]
        if stray:
            raise ValueError(f"feedforward_modules={config.feedforward_modules!r} selects {stray[:4]}, which "
                             "target_modules does not (feedforward modules must be targets)")
    return adapt_modules(model, names, lambda name, base: IA3Linear(base, config.is_feedforward(name),
                                                                    config.init_ia3_weights), config)


# ---------------------------------------------------------------------------------------------- PEFT format
def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's keys: ``base_model.model.<name>.ia3_l``."""
    family_config(model, IA3Config)
    layers = ia3_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("the model's IA3 layers are merged; unmerge before saving")
    return {f"base_model.model.{name}.ia3_l": layer.ia3_l.detach().contiguous() for name, layer in layers.items()}


def expected_shapes(model: nn.Module, config: IA3Config) -> dict[str, tuple[int, ...]]:
    """The tensors an adapter for ``model`` must hold (on the existing IA3 layers, or the ones it would make)."""
    layers = ia3_layers(model)
    if layers:
        return {f"base_model.model.{n}.ia3_l": tuple(m.ia3_l.shape) for n, m in layers.items()}
    names = select_target_modules(model, config.target_modules)
    out = {}
    for n in names:
        mod = model.get_submodule(n)
        out[f"base_model.model.{n}.ia3_l"] = (1, mod.in_features) if config.is_feedforward(n) else (mod.out_features, 1)
    return out


def load_into(model: nn.Module, config: IA3Config, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Create the IA3 layers (if the model has none) and copy the vectors in; called by ``load_family_adapter``."""
    layers = ia3_layers(model)
    if any(m.merged for m in layers.values()):
        raise ValueError("the model's IA3 layers are merged; unmerge before loading another adapter")
    if layers and any(m.is_feedforward != config.is_feedforward(n) for n, m in layers.items()):
        raise ValueError("the adapter's feedforward_modules disagree with the model's IA3 layers")
    if not layers:
        apply_ia3(model, config)
    with torch.no_grad():
        for name, layer in ia3_layers(model).items():
            layer.ia3_l.copy_(tensors[f"base_model.model.{name}.ia3_l"])
    setattr(model, CONFIG_ATTR, config)
    return model
