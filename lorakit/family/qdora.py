"""QDoRA: DoRA on a frozen NF4 base (notebook 13, section 2; Liu et al. 2024 on a QLoRA base, Dettmers et al. 2023).

DoRA's layer (notebook 09, eq. 2) with the pretrained weight stored in 4 bits as in QLoRA (notebook 08)::

    W' = diag(m / ||Ŵ0 + s B A||) (Ŵ0 + s B A),      Ŵ0 = dequant(Q(W0)),   h = W' x + b

``m`` starts at the row norms of the *dequantized* weight ``Ŵ0``, so the layer starts exactly at the
QLoRA base. The forward is PEFT's 4-bit DoRA term by term: the base matmul runs on the 4-bit layer (in
its compute dtype), the bias is taken out, and ``h = base(x) + (f - 1) ⊙ (base(x) - b) + f ⊙ s B A x``
with ``f = m / ||Ŵ0 + s B A||`` (the norm detached, from the fp32 dequantized weight). Trainable parameters
as DoRA: ``r (d_in + d_out) + d_out`` per layer.

Built from the course's parts: :class:`lorakit.qlora.QLoRALinear` (4-bit storage, both backends, merge by
dequantize -> combine -> optionally requantize, exact unmerge) and DoRA's detached-norm rule from
:mod:`lorakit.dora`. Saved in PEFT's LoRA format with ``use_dora: true`` (``lora_magnitude_vector``), so
PEFT loads it onto a bitsandbytes 4-bit model; lorakit reloads it with :func:`load_qdora_adapter` and the
same quantization arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.dora import dora_weight_norm
from lorakit.family._apply import CONFIG_ATTR, family_config
from lorakit.peft import LoRAConfig, check_model, refuse_adapted_model, select_target_modules, set_submodule
from lorakit.peft.io import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MAGNITUDE_KEY,
    PEFT_PREFIX,
    check_directory,
    read_adapter_files,
)
from lorakit.qlora import QLoRALinear

__all__ = ["QDoRALinear", "QDoRASetup", "apply_qdora", "load_qdora_adapter", "qdora_layers", "save_qdora_adapter"]


@dataclass
class QDoRASetup:
    """What :func:`apply_qdora` did: the LoRA config (``use_dora=True``, targets resolved) and the quantization."""

    lora: LoRAConfig
    quantization: dict = field(default_factory=dict)


class QDoRALinear(QLoRALinear):
    """DoRA on a frozen 4-bit base (module docstring); a :class:`~lorakit.qlora.QLoRALinear` plus ``magnitude [out]``.

    Args: as QLoRALinear (``init="pissa"`` is not supported). Raises ValueError for a base weight with a zero
    row after quantization (its direction is undefined).
    """

    adapter_kind = "QDoRA"

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 8, dropout: float = 0.0, rslora: bool = False,
                 blocksize: int = 64, double_quant: bool = True, compute_dtype: torch.dtype = torch.bfloat16,
                 backend: str = "lorakit", init: str = "kaiming", adapter_dtype: torch.dtype = torch.float32) -> None:
        if init == "pissa":
            raise ValueError("init='pissa' is not supported for QDoRA (DoRA's magnitude would start off the residual)")
        super().__init__(base, r, alpha, dropout, rslora, blocksize, double_quant, compute_dtype, backend, init,
                         adapter_dtype)
        self.magnitude = nn.Parameter(self.weight_norm())

    def weight_norm(self) -> torch.Tensor:
        """``||Ŵ0 + s B A||`` per output row, detached, fp32 dequantized weight (eq. 2's denominator)."""
        with torch.no_grad():
            norm = dora_weight_norm(self.dequantized_weight(torch.float32), self.lora_A, self.lora_B, self.scaling)
        zero = (norm == 0).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"rows {zero[:8]} of the dequantized W0 + s*B@A are zero: DoRA's direction is undefined")
        return norm

    def dora_factor(self) -> torch.Tensor:
        """``f = m / ||Ŵ0 + s B A||`` ([out]; gradient only through ``m``)."""
        return self.magnitude / self.weight_norm().to(self.magnitude.dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``diag(f) (Ŵ0 + s B A)`` in float32: what ``merge()`` stores (dense, or requantized)."""
        if self.merged:
            raise RuntimeError("the layer is merged already; merged_weight() needs the unmerged base")
        V = self.dequantized_weight(torch.float32) + self.delta_weight()
        return self.dora_factor().float()[:, None] * V

    @torch.no_grad()
    def check_merge(self) -> None:
        f = self.dora_factor()
        if not bool(torch.isfinite(f).all()) or not bool(torch.isfinite(self.lora_B).all()):
            raise ValueError("magnitude / ||W0 + s*B@A|| or lora_B holds NaN or inf: the merge would be broken")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            base = self.base
            return base(x.to(base.weight.dtype)).to(x.dtype) if isinstance(base, nn.Linear) else base(x)
        result = self.base(x)  # the 4-bit layer casts x to compute_dtype and the result back to x.dtype
        bias = getattr(self.base, "bias", None)
        base_nobias = result if bias is None else result - bias.to(result.dtype)
        a = self.lora_A
        x_a = x.to(a.dtype)
        if self.training and self.dropout > 0:
            x_a = F.dropout(x_a, p=self.dropout, training=True)
        f = self.dora_factor()
        lora = F.linear(F.linear(x_a, a), self.lora_B) * self.scaling
        extra = (f - 1) * base_nobias.to(a.dtype) + f * lora
        return result + extra.to(result.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"


def qdora_layers(model: nn.Module) -> dict[str, QDoRALinear]:
    """``{module name: QDoRALinear}`` for every QDoRA layer in ``model``."""
    check_model(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, QDoRALinear)}


def apply_qdora(model: nn.Module, config: LoRAConfig, blocksize: int = 64, double_quant: bool = True,
                compute_dtype: torch.dtype = torch.bfloat16, backend: str = "lorakit",
                adapter_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by :class:`QDoRALinear`, in place (atomic); return ``model``.

    ``config`` is a :class:`lorakit.LoRAConfig` (its ``use_dora`` is implied); the quantization arguments are
    :func:`lorakit.qlora.apply_qlora`'s. ``model.peft_config_lorakit`` (a :class:`QDoRASetup`) records both.
    """
    check_model(model)
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    if config.init == "pissa":
        raise ValueError("config.init='pissa' is not supported for QDoRA")
    refuse_adapted_model(model, "apply_qdora")
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise ValueError(f"model is already adapted by {type(getattr(model, CONFIG_ATTR)).__name__}")
    names = select_target_modules(model, config.target_modules)
    with unchanged_on_error(model):
        new = {n: QDoRALinear(model.get_submodule(n), config.r, config.alpha, config.dropout, config.rslora, blocksize,
                              double_quant, compute_dtype, backend, config.init, adapter_dtype) for n in names}
        for p in model.parameters():
            p.requires_grad_(False)
        for name, layer in new.items():
            set_submodule(model, name, layer)
        setattr(model, CONFIG_ATTR, QDoRASetup(dataclasses.replace(config, target_modules=names, use_dora=True), {
            "blocksize": blocksize, "double_quant": double_quant, "compute_dtype": compute_dtype, "backend": backend,
            "adapter_dtype": adapter_dtype}))
    return model


def save_qdora_adapter(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write the adapter in PEFT's LoRA format (``use_dora: true``): A, B and ``lora_magnitude_vector``."""
    from safetensors.torch import save_file

    setup = family_config(model, QDoRASetup)
    layers = qdora_layers(model)
    if any(m.merged for m in layers.values()):
        raise ValueError("the model's QDoRA layers are merged; unmerge before saving")
    path = check_directory(directory, must_exist=False)
    config = setup.lora
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.{MAGNITUDE_KEY}"] = layer.magnitude.detach().contiguous()
    path.mkdir(parents=True, exist_ok=True)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config.to_peft_dict(), indent=2) + "\n")
    save_file(tensors, str(path / ADAPTER_WEIGHTS))


def load_qdora_adapter(model: nn.Module, directory: str | os.PathLike, **quantization: object) -> nn.Module:
    """Quantize ``model``'s targets (``apply_qdora`` with ``quantization``) and load a PEFT DoRA adapter into them."""
    check_model(model)
    path = check_directory(directory, must_exist=True)
    raw, tensors = read_adapter_files(path)
    config = LoRAConfig.from_peft_dict(raw, source=str(path / ADAPTER_CONFIG))
    if not config.use_dora:
        raise ValueError(f"{path / ADAPTER_CONFIG}: use_dora is false; a QDoRA adapter needs DoRA's magnitudes")
    names = select_target_modules(model, config.target_modules)
    for name in names:
        mod = model.get_submodule(name)
        expected = {"lora_A.weight": (config.r, mod.in_features), "lora_B.weight": (mod.out_features, config.r),
                    MAGNITUDE_KEY: (mod.out_features,)}
        for key, shape in expected.items():
            t = tensors.get(f"{PEFT_PREFIX}{name}.{key}")
            if t is None or tuple(t.shape) != shape or not torch.isfinite(t).all():
                raise ValueError(f"{PEFT_PREFIX}{name}.{key} is missing, not of shape {shape}, or not finite")
    with unchanged_on_error(model):
        apply_qdora(model, dataclasses.replace(config, target_modules=names), **quantization)  # type: ignore[arg-type]
        with torch.no_grad():
            for name, layer in qdora_layers(model).items():
                layer.lora_A.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"])
                layer.lora_B.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"])
                layer.magnitude.copy_(tensors[f"{PEFT_PREFIX}{name}.{MAGNITUDE_KEY}"])
    return model
