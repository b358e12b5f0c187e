"""VeRA: one frozen random pair (A, B) shared by all layers, and two trained vectors per layer
(notebook 13, eq. 3; Kopiczko et al. 2024, arXiv:2310.11454).

Every adapted ``nn.Linear`` ``W0 [out, in]`` gets (notebook 13, section 2)::

    h = W0 x + b + Λ_b B Λ_d A x,        Λ_b = diag(b) [out],  Λ_d = diag(d) [r]

``A [r, in]`` and ``B [out, r]`` are random, frozen and *shared*: one pair for the whole model, generated
from a seed (``projection_prng_key``), so a checkpoint need not even store them. Only ``d`` (init
``d_initial = 0.1``) and ``b`` (init 0, so the model starts as the pretrained one) are trained:
``r + d_out`` parameters per layer (eq. 4), against LoRA's ``r (d_in + d_out)``. The update is linear in
``W0``'s input, so it merges like LoRA's: ``W' = W0 + Λ_b B Λ_d A``.

**How PEFT makes the shared pair, and lorakit the same way.** PEFT (``peft.tuners.vera``) builds *one* pair
sized for the largest target (``A [r, max in]``, ``B [max out, r]``) and gives each layer the top-left slice
it needs (``A[:, :in]``, ``B[:out, :]``); it draws ``A`` then ``B`` from a fresh CPU generator seeded with
``projection_prng_key``, each Kaiming-uniform with gain sqrt(2) over its own fan-in (``bound = sqrt(6 /
fan_in)``, fan-in = ``max in`` for A and ``r`` for B). :func:`vera_projections` reproduces this exactly, so the
matrices equal PEFT's for the same seed (``tests/test_family_peft_crosscheck.py``).

PEFT also draws a throwaway ``torch.randn(r)`` from the *global* generator per layer (the initial ``d``, then
overwritten with ``d_initial``); lorakit does not, so the adapters are equal but the global random state
after ``apply_vera`` differs from PEFT's (documented, and irrelevant to the outputs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.family._apply import CONFIG_ATTR, family_config, layers_of, refuse_family_model
from lorakit.family.config import (
    adapter_dtype,
    check_bool,
    check_positive_int,
    check_probability,
    check_real,
    check_targets,
    read_peft_dict,
)
from lorakit.layers import LinearAdapterLayer
from lorakit.lora import MergeWarning
from lorakit.peft import check_model, select_target_modules, set_submodule

__all__ = ["VeRAConfig", "VeRALinear", "VeRAProjections", "apply_vera", "vera_layers", "vera_projections"]

PEFT_TYPE = "VERA"
PROJECTION_KEYS = ("base_model.vera_A", "base_model.vera_B")


@dataclass
class VeRAConfig:
    """VeRA hyper-parameters with PEFT's defaults (``r=256``, ``d_initial=0.1``, ``projection_prng_key=0``).

    ``target_modules`` defaults to PEFT's LLaMA choice ``[q_proj, v_proj]``. ``save_projection=True`` stores
    A and B in the adapter file (PEFT's default: safe across machines); False relies on the seed.
    """

    r: int = 256
    target_modules: Sequence[str] | Set[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1

    PEFT_TYPE = PEFT_TYPE

    def __post_init__(self) -> None:
        self.r = check_positive_int("r", self.r)
        self.target_modules = check_targets(self.target_modules)
        if isinstance(self.projection_prng_key, bool) or not isinstance(self.projection_prng_key, int):
            raise TypeError(f"projection_prng_key must be an int, got {type(self.projection_prng_key).__name__} "
                            f"{self.projection_prng_key!r}")
        check_bool("save_projection", self.save_projection)
        self.vera_dropout = check_probability("vera_dropout", self.vera_dropout)
        self.d_initial = check_real("d_initial", self.d_initial)

    def to_peft_dict(self) -> dict:
        return {"peft_type": PEFT_TYPE, "task_type": None, "base_model_name_or_path": None, "r": self.r,
                "target_modules": self.target_modules, "projection_prng_key": self.projection_prng_key,
                "save_projection": self.save_projection, "vera_dropout": self.vera_dropout,
                "d_initial": self.d_initial, "fan_in_fan_out": False, "bias": "none", "modules_to_save": None,
                "init_weights": True, "layers_to_transform": None, "layers_pattern": None, "inference_mode": True}

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> VeRAConfig:
        known = {"r", "target_modules", "projection_prng_key", "save_projection", "vera_dropout", "d_initial"}
        read_peft_dict(raw, PEFT_TYPE, known, {"fan_in_fan_out": False, "bias": "none", "modules_to_save": None,
                                               "init_weights": True, "layers_to_transform": None,
                                               "layers_pattern": None}, source)
        if raw.get("target_modules") is None:
            raise ValueError(f"{source}: target_modules is missing")
        try:
            return cls(r=raw.get("r", 256), target_modules=raw["target_modules"],
                       projection_prng_key=raw.get("projection_prng_key", 0),
                       save_projection=raw.get("save_projection", True), vera_dropout=raw.get("vera_dropout", 0.0),
                       d_initial=raw.get("d_initial", 0.1))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """PEFT's ``_kaiming_init``: U(-bound, bound), ``bound = sqrt(3) * sqrt(2) / sqrt(fan_in)``, fan_in = shape[1]."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def vera_projections(r: int, max_in: int, max_out: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared frozen ``(A [r, max_in], B [max_out, r])``, fp32 on CPU, exactly as PEFT draws them."""
    r, max_in, max_out = (check_positive_int(n, v) for n, v in (("r", r), ("max_in", max_in), ("max_out", max_out)))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    A = _kaiming_uniform((r, max_in), generator)
    B = _kaiming_uniform((max_out, r), generator)
    return A, B


class VeRAProjections(nn.Module):
    """The shared pair as buffers ``vera_A``, ``vera_B``: one module object, held by every VeRA layer."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        super().__init__()
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(f"A must be [r, in] and B [out, r] with the same r, got {tuple(A.shape)} and "
                             f"{tuple(B.shape)}")
        self.register_buffer("vera_A", A)
        self.register_buffer("vera_B", B)


class VeRALinear(LinearAdapterLayer):
    """A frozen ``nn.Linear`` plus ``Λ_b B Λ_d A`` with shared frozen A, B (module docstring, eq. 3).

    Trainable: ``vera_lambda_d [r]`` (init ``d_initial``) and ``vera_lambda_b [out]`` (init 0), PEFT's names;
    fp32 on a bf16/fp16 base. ``projections`` is the :class:`VeRAProjections` shared with the other layers.
    """

    adapter_kind = "VeRA"

    def __init__(self, base: nn.Linear, projections: VeRAProjections, d_initial: float = 0.1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if not isinstance(projections, VeRAProjections):
            raise TypeError(f"projections must be a VeRAProjections, got {type(projections).__name__}")
        r, max_in = projections.vera_A.shape
        if max_in < base.in_features or projections.vera_B.shape[0] < base.out_features:
            raise ValueError(f"the shared A {tuple(projections.vera_A.shape)} / B {tuple(projections.vera_B.shape)} "
                             f"are too small for a layer of shape [{base.out_features}, {base.in_features}]")
        d_initial = check_real("d_initial", d_initial)
        self.dropout = check_probability("dropout", dropout)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.projections = projections
        self.r = int(r)
        w = base.weight
        factory = {"device": w.device, "dtype": adapter_dtype(w)}
        self.vera_lambda_b = nn.Parameter(torch.zeros(base.out_features, **factory))
        self.vera_lambda_d = nn.Parameter(torch.full((self.r,), d_initial, **factory))
        self.merged = False

    def sliced_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``A[:, :in]`` and ``B[:out, :]``: this layer's part of the shared pair (PEFT slices the same way)."""
        return self.projections.vera_A[:, : self.in_features], self.projections.vera_B[: self.out_features, :]

    def delta_weight(self) -> torch.Tensor:
        """``Λ_b B Λ_d A`` as an ``[out, in]`` float32 tensor."""
        A, B = self.sliced_projections()
        return (self.vera_lambda_b.float()[:, None] * B.float()) @ (self.vera_lambda_d.float()[:, None] * A.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        A, B = self.sliced_projections()
        d, b = self.vera_lambda_d, self.vera_lambda_b
        x_a = x.to(d.dtype)
        if self.training and self.dropout > 0:
            x_a = F.dropout(x_a, self.dropout, training=True)
        update = b * F.linear(d * F.linear(x_a, A.to(d.dtype)), B.to(d.dtype))
        return (out + update).to(out.dtype)

    @torch.no_grad()
    def check_merge(self) -> None:
        if not (bool(torch.isfinite(self.vera_lambda_b).all()) and bool(torch.isfinite(self.vera_lambda_d).all())):
            raise ValueError("vera_lambda_b/vera_lambda_d hold NaN or inf: merging would write them into the weight")

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W0 + Λ_b B Λ_d A`` (fp32, rounded once); forward is then one ``nn.Linear``."""
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.check_merge()
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, merged={self.merged}"


def vera_layers(model: nn.Module) -> dict[str, VeRALinear]:
    """``{module name: VeRALinear}`` for every VeRA layer in ``model``."""
    return layers_of(model, VeRALinear)


def apply_vera(model: nn.Module, config: VeRAConfig | None = None) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by :class:`VeRALinear` sharing one projection pair; in place.

    The pair is sized for the largest target (PEFT's rule) and drawn by :func:`vera_projections` with
    ``config.projection_prng_key``, then moved to the device (and, if fp32/fp64, the dtype) of the first target.
    """
    check_model(model)
    config = VeRAConfig() if config is None else config
    if not isinstance(config, VeRAConfig):
        raise TypeError(f"config must be a VeRAConfig, got {type(config).__name__}")
    refuse_family_model(model, "apply_vera")
    names = select_target_modules(model, config.target_modules)
    bases = [model.get_submodule(n) for n in names]
    max_in, max_out = max(b.in_features for b in bases), max(b.out_features for b in bases)
    A, B = vera_projections(config.r, max_in, max_out, config.projection_prng_key)
    weight = bases[0].weight
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    projections = VeRAProjections(A.to(weight.device, dtype), B.to(weight.device, dtype))
    with unchanged_on_error(model):
        for p in model.parameters():
            p.requires_grad_(False)
        for name, base in zip(names, bases, strict=True):
            set_submodule(model, name, VeRALinear(base, projections, config.d_initial, config.vera_dropout))
        setattr(model, CONFIG_ATTR, config)
    return model


def shared_projections(model: nn.Module) -> VeRAProjections:
    """The one :class:`VeRAProjections` the model's VeRA layers share (ValueError if none or several)."""
    found = {id(m.projections): m.projections for m in vera_layers(model).values()}
    if len(found) != 1:
        raise ValueError(f"expected the VeRA layers to share one projection pair, found {len(found)}")
    return next(iter(found.values()))


# ---------------------------------------------------------------------------------------------- PEFT format
def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's keys: ``<name>.vera_lambda_b`` / ``vera_lambda_d``; with ``save_projection`` ``base_model.vera_A/B``."""
    config = family_config(model, VeRAConfig)
    layers = vera_layers(model)
    if any(m.merged for m in layers.values()):
        raise ValueError("the model's VeRA layers are merged; unmerge before saving")
    out = {}
    for name, layer in layers.items():
        out[f"base_model.model.{name}.vera_lambda_b"] = layer.vera_lambda_b.detach().contiguous()
        out[f"base_model.model.{name}.vera_lambda_d"] = layer.vera_lambda_d.detach().contiguous()
    if config.save_projection:
        proj = shared_projections(model)
        out[PROJECTION_KEYS[0]] = proj.vera_A.detach().contiguous()
        out[PROJECTION_KEYS[1]] = proj.vera_B.detach().contiguous()
    return out


def expected_shapes(model: nn.Module, config: VeRAConfig) -> dict[str, tuple[int, ...]]:
    layers = vera_layers(model)
    if layers:
        shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
        if any(m.r != config.r for m in layers.values()):
            raise ValueError(f"the adapter has r={config.r} but the model's VeRA layers have r="
                             f"{next(iter(layers.values())).r}")
    else:
        shapes = {n: (model.get_submodule(n).in_features, model.get_submodule(n).out_features)
                  for n in select_target_modules(model, config.target_modules)}
    out: dict[str, tuple[int, ...]] = {}
    for n, (_, out_f) in shapes.items():
        out[f"base_model.model.{n}.vera_lambda_b"] = (out_f,)
        out[f"base_model.model.{n}.vera_lambda_d"] = (config.r,)
    if config.save_projection:
        out[PROJECTION_KEYS[0]] = (config.r, max(s[0] for s in shapes.values()))
        out[PROJECTION_KEYS[1]] = (max(s[1] for s in shapes.values()), config.r)
    return out


def load_into(model: nn.Module, config: VeRAConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Create the VeRA layers if needed, then copy the vectors (and the stored projections) in."""
    layers = vera_layers(model)
    if any(m.merged for m in layers.values()):
        raise ValueError("the model's VeRA layers are merged; unmerge before loading another adapter")
    if not layers:
        apply_vera(model, config)
    with torch.no_grad():
        for name, layer in vera_layers(model).items():
            layer.vera_lambda_b.copy_(tensors[f"base_model.model.{name}.vera_lambda_b"])
            layer.vera_lambda_d.copy_(tensors[f"base_model.model.{name}.vera_lambda_d"])
        proj = shared_projections(model)
        if config.save_projection:
            proj.vera_A.copy_(tensors[PROJECTION_KEYS[0]])
            proj.vera_B.copy_(tensors[PROJECTION_KEYS[1]])
        else:  # rebuilt from the seed, as PEFT does
            A, B = vera_projections(config.r, proj.vera_A.shape[1], proj.vera_B.shape[0], config.projection_prng_key)
            proj.vera_A.copy_(A)
            proj.vera_B.copy_(B)
    setattr(model, CONFIG_ATTR, config)
    return model
