"""Bottleneck adapters: Houlsby, Pfeiffer and parallel (notebook 13, eq. 7; Houlsby et al. 2019,
arXiv:1902.00751; Pfeiffer et al. 2021, arXiv:2005.00247; He et al. 2022, arXiv:2110.04366).

An adapter is a small two-layer MLP with a residual connection, ``f(h) = U σ(D h + c) + e`` with
``D [m, d]``, ``U [d, m]`` and a bottleneck ``m << d``. Where it sits (notebook 13, section 2):

* **Houlsby** (serial): after the attention output projection *and* after the feed-forward output
  projection of every block, before the residual addition: ``h' = h + s f(h)`` with ``h = W x + b`` the
  sublayer's output. Targets ``o_proj`` and ``down_proj`` for LLaMA-style models.
* **Pfeiffer** (serial): the same, after the feed-forward output only (one adapter per block; Pfeiffer et al.'s
  finding that the attention adapter can go). Target ``down_proj``.
* **parallel** (He et al. 2022): the bottleneck reads the *input* of the adapted projection and is added to
  its output, ``h' = W x + b + s f(x)``: a nonlinear sibling of LoRA. (He et al. branch around the whole
  sublayer; on a model seen as a set of ``nn.Linear`` layers lorakit branches around its output projection.)

``U`` starts at zero (and ``e = 0``), so every adapter starts as the identity and the model as the
pretrained one; ``D`` is Kaiming-uniform like LoRA's ``A``. Parameters per adapted layer (eq. 8):
``m (d_f + 1) + d_out (m + 1)`` where ``d_f`` is the width the bottleneck reads (``d_out`` serial, ``d_in``
parallel). The nonlinearity ``σ`` is what makes an adapter impossible to merge into ``W``: unlike
``W + s BA``, ``h + U σ(D h)`` is not a linear map of ``x``. lorakit therefore refuses to merge adapters, and
notebook 13 measures what the extra layers cost at inference. PEFT has no bottleneck adapters, so they are
saved in PEFT's file layout under lorakit's own ``peft_type: "BOTTLENECK_ADAPTER"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Set
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.family._apply import adapt_modules, family_config, layers_of, refuse_family_model
from lorakit.family.config import (
    adapter_dtype,
    check_choice,
    check_positive_int,
    check_probability,
    check_real,
    check_targets,
    read_peft_dict,
)
from lorakit.layers import LinearAdapterLayer
from lorakit.peft import check_model, select_target_modules

__all__ = ["ACTIVATIONS", "ADAPTER_KINDS", "AdapterConfig", "BottleneckAdapterLinear", "adapter_layers_of",
           "apply_adapters"]

PEFT_TYPE = "BOTTLENECK_ADAPTER"
ADAPTER_KINDS = ("houlsby", "pfeiffer", "parallel")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
DEFAULT_TARGETS = {"houlsby": ["o_proj", "down_proj"], "pfeiffer": ["down_proj"], "parallel": ["o_proj", "down_proj"]}


@dataclass
class AdapterConfig:
    """Bottleneck-adapter hyper-parameters. ``target_modules=None``: the defaults of ``kind`` (module docstring)."""

    kind: str = "houlsby"
    bottleneck_size: int = 16
    target_modules: Sequence[str] | Set[str] | str | None = None
    activation: str = "relu"
    scaling: float = 1.0
    dropout: float = 0.0

    PEFT_TYPE = PEFT_TYPE

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ADAPTER_KINDS)
        self.bottleneck_size = check_positive_int("bottleneck_size", self.bottleneck_size)
        self.target_modules = check_targets(
            list(DEFAULT_TARGETS[self.kind]) if self.target_modules is None else self.target_modules)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        self.scaling = check_real("scaling", self.scaling, 0.0, low_open=True)
        self.dropout = check_probability("dropout", self.dropout)

    def to_peft_dict(self) -> dict:
        return {"peft_type": PEFT_TYPE, "task_type": None, "kind": self.kind, "bottleneck_size": self.bottleneck_size,
                "target_modules": self.target_modules, "activation": self.activation, "scaling": self.scaling,
                "dropout": self.dropout, "inference_mode": True}

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> AdapterConfig:
        read_peft_dict(raw, PEFT_TYPE, {"kind", "bottleneck_size", "target_modules", "activation", "scaling",
                                        "dropout"}, {}, source)
        try:
            return cls(raw.get("kind", "houlsby"), raw.get("bottleneck_size", 16), raw.get("target_modules"),
                       raw.get("activation", "relu"), raw.get("scaling", 1.0), raw.get("dropout", 0.0))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


class BottleneckAdapterLinear(LinearAdapterLayer):
    """A frozen ``nn.Linear`` with a bottleneck adapter, serial (on its output) or parallel (eq. 7).

    ``adapter_down`` (``nn.Linear(d_f, m)``, Kaiming-uniform) and ``adapter_up`` (``nn.Linear(m, d_out)``,
    zeros) are the trainable parts, fp32 on a bf16/fp16 base. There is no ``merge``: see the module docstring.
    """

    adapter_kind = "bottleneck adapter"

    def __init__(self, base: nn.Linear, bottleneck_size: int = 16, serial: bool = True, activation: str = "relu",
                 scaling: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        m = check_positive_int("bottleneck_size", bottleneck_size)
        if not isinstance(serial, bool):
            raise TypeError(f"serial must be a bool, got {type(serial).__name__}")
        check_choice("activation", activation, tuple(ACTIVATIONS))
        self.scaling = check_real("scaling", scaling, 0.0, low_open=True)
        self.dropout = check_probability("dropout", dropout)
        self.base, self.serial, self.activation, self.bottleneck_size = base, serial, activation, m
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        factory = {"device": w.device, "dtype": adapter_dtype(w)}
        reads = base.out_features if serial else base.in_features
        self.adapter_down = nn.Linear(reads, m, **factory)
        self.adapter_up = nn.Linear(m, base.out_features, **factory)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.adapter_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.adapter_down.bias)
            nn.init.zeros_(self.adapter_up.weight)
            nn.init.zeros_(self.adapter_up.bias)

    def adapter(self, h: torch.Tensor) -> torch.Tensor:
        """``s (U σ(D h + c) + e)`` in the adapter dtype."""
        h = h.to(self.adapter_down.weight.dtype)
        if self.training and self.dropout > 0:
            h = F.dropout(h, self.dropout, training=True)
        return self.scaling * self.adapter_up(ACTIVATIONS[self.activation](self.adapter_down(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        extra = self.adapter(out if self.serial else x)
        return (out + extra).to(out.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bottleneck={self.bottleneck_size}, "
                f"serial={self.serial}, activation={self.activation}, scaling={self.scaling}")


def adapter_layers_of(model: nn.Module) -> dict[str, BottleneckAdapterLinear]:
    """``{module name: BottleneckAdapterLinear}`` for every bottleneck adapter in ``model``."""
    return layers_of(model, BottleneckAdapterLinear)


def apply_adapters(model: nn.Module, config: AdapterConfig | None = None) -> nn.Module:
    """Add a bottleneck adapter to every targeted ``nn.Linear`` (Houlsby by default); in place, atomic."""
    check_model(model)
    config = AdapterConfig() if config is None else config
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    refuse_family_model(model, "apply_adapters")
    names = select_target_modules(model, config.target_modules)
    serial = config.kind != "parallel"
    return adapt_modules(model, names, lambda _n, base: BottleneckAdapterLinear(
        base, config.bottleneck_size, serial, config.activation, config.scaling, config.dropout), config)


# ---------------------------------------------------------------------------------------------- file format
_PARTS = ("adapter_down.weight", "adapter_down.bias", "adapter_up.weight", "adapter_up.bias")


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    family_config(model, AdapterConfig)
    out = {}
    for name, layer in adapter_layers_of(model).items():
        for part in _PARTS:
            out[f"base_model.model.{name}.{part}"] = layer.get_parameter(part).detach().contiguous()
    return out


def expected_shapes(model: nn.Module, config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    layers = adapter_layers_of(model)
    serial = config.kind != "parallel"
    if layers:
        if any(m.serial != serial or m.bottleneck_size != config.bottleneck_size for m in layers.values()):
            raise ValueError("the adapter's kind or bottleneck_size disagrees with the model's adapter layers")
        dims = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    else:
        dims = {n: (model.get_submodule(n).in_features, model.get_submodule(n).out_features)
                for n in select_target_modules(model, config.target_modules)}
    m = config.bottleneck_size
    out = {}
    for n, (in_f, out_f) in dims.items():
        reads = out_f if serial else in_f
        shapes = ((m, reads), (m,), (out_f, m), (out_f,))
        out.update({f"base_model.model.{n}.{part}": s for part, s in zip(_PARTS, shapes, strict=True)})
    return out


def load_into(model: nn.Module, config: AdapterConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    if not adapter_layers_of(model):
        apply_adapters(model, config)
    with torch.no_grad():
        for name, layer in adapter_layers_of(model).items():
            layer.activation, layer.scaling = config.activation, config.scaling
            for part in _PARTS:
                layer.get_parameter(part).copy_(tensors[f"base_model.model.{name}.{part}"])
    return model
