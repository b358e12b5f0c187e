"""QLoRA at the model level, PEFT-like: ``apply_qlora``, ``merge_qlora`` / ``merge_and_unload`` (notebook 08).

Both are atomic: they check every target (arguments, weight dtype, finite weights, PiSSA's rank) before
the first layer is built, and run under :func:`lorakit.atomic.unchanged_on_error`, so a call that raises
leaves parameters, buffers, ``requires_grad`` flags and module structure exactly as they were.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.peft import LoRAConfig, check_model, refuse_adapted_model, select_target_modules, set_submodule
from lorakit.qlora.checks import (
    ADAPTER_DTYPES,
    COMPUTE_DTYPES,
    check_base,
    check_dtype,
    check_quant_args,
    check_quant_type,
)
from lorakit.qlora.layer import QLoRALinear
from lorakit.qlora.serialization import install_load_check

__all__ = ["apply_qlora", "merge_and_unload", "merge_qlora", "qlora_layers"]


def qlora_layers(model: nn.Module) -> dict[str, QLoRALinear]:
    """``{module name: QLoRALinear}`` for every QLoRA layer in ``model``."""
    check_model(model)
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, QLoRALinear)}


def _check_targets(model: nn.Module, names: list[str], config: LoRAConfig) -> None:
    """Every error a target can raise while it is quantized, for all targets, before the first is built."""
    bad_dtype, not_finite, too_small = [], [], []
    for name in names:
        base = model.get_submodule(name)
        try:
            check_base(base, name)
        except TypeError:
            bad_dtype.append(f"{name} ({base.weight.dtype})")
            continue
        if not bool(torch.isfinite(base.weight.detach()).all()):
            not_finite.append(name)
        if config.init == "pissa" and config.r > min(base.in_features, base.out_features):
            too_small.append(name)
    if bad_dtype:
        raise TypeError(f"apply_qlora quantizes fp32, bf16 or fp16 weights; these targets have another dtype: "
                        f"{bad_dtype[:4]}")
    if not_finite:
        raise ValueError(f"apply_qlora needs finite weights (NaN/inf cannot be quantized); {not_finite[:4]} hold "
                         "NaN or inf")
    if too_small:
        raise ValueError(f"init='pissa' needs r={config.r} <= min(in, out) for every target; not for {too_small[:4]}")


def apply_qlora(
    model: nn.Module,
    config: LoRAConfig,
    blocksize: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    backend: str = "lorakit",
    adapter_dtype: torch.dtype = torch.float32,
    quant_type: str = "nf4",
) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by :class:`~lorakit.qlora.QLoRALinear`, in place; return ``model``.

    Targets follow :class:`lorakit.peft.LoRAConfig` (suffixes, regex or ``"all-linear"``, as
    :func:`lorakit.peft.apply_lora`); a model that already carries adapters of any kind is refused (no
    stacking). Every other parameter is frozen, so gradients reach only the LoRA factors.
    ``model.lora_config`` is set, so :func:`lorakit.peft.save_adapter` works unchanged and writes the same
    keys as a LoRA adapter on the same model; the whole model saves and loads through its ``state_dict``
    (:mod:`lorakit.qlora.serialization`). ``quant_type`` picks the base's 4-bit code (``"nf4"``, QLoRA's;
    ``"fp4"``, ``"int4"`` for comparison). Atomic: on any error the model is unchanged.
    """
    check_model(model)
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    if config.use_dora:
        raise ValueError("config.use_dora=True is not supported by apply_qlora (QLoRA trains plain LoRA factors)")
    check_quant_args(blocksize, double_quant, compute_dtype, backend)
    check_quant_type(quant_type, backend)
    check_dtype("adapter_dtype", adapter_dtype, ADAPTER_DTYPES)
    if backend == "triton":
        import lorakit.kernels.nf4_matmul  # noqa: F401  (ImportError with the install hint, before any change)
    refuse_adapted_model(model, "apply_qlora")
    names = select_target_modules(model, config.target_modules)
    _check_targets(model, names, config)
    with unchanged_on_error(model):
        new_layers = {}
        for name in names:
            base = model.get_submodule(name)
            new_layers[name] = QLoRALinear(
                base, config.r, config.alpha, config.dropout, config.rslora, blocksize, double_quant,
                compute_dtype, backend, config.init, adapter_dtype, quant_type,
            )
        for p in model.parameters():
            p.requires_grad_(False)
        for name, layer in new_layers.items():
            set_submodule(model, name, layer)
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
        model.lora_config = config  # type: ignore[assignment]
        install_load_check(model)
    return model


def merge_qlora(model: nn.Module, requantize: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """Merge every QLoRA layer and unload it: each becomes its merged base module (in place).

    ``requantize=False``: dense ``nn.Linear`` layers in ``dtype`` (default: each layer's ``weight_dtype``,
    the dtype of the weight it quantized, so the merged model runs in the dtype it ran in), holding
    ``dequant(Q(W0)) + s B A`` summed in fp32 and rounded once. ``requantize=True``: 4-bit layers (the same
    backend) holding ``Q(dequant(Q(W0)) + s B A)``, still taking inputs of any float dtype, and saving and
    loading through ``state_dict`` like the unmerged model. See :func:`~lorakit.qlora.merge_error`.
    Every layer is checked before the first is merged: on any error the model is unchanged.
    """
    layers = qlora_layers(model)
    if not layers:
        raise ValueError("model has no QLoRA layers to merge")
    if not isinstance(requantize, bool):
        raise TypeError(f"requantize must be a bool, got {type(requantize).__name__} {requantize!r}")
    if dtype is not None:
        check_dtype("dtype", dtype, COMPUTE_DTYPES)
    with unchanged_on_error(model):
        for layer in layers.values():
            if layer.merged:
                layer.unmerge()
        for name, layer in layers.items():
            try:
                layer.check_merge(requantize=requantize, dtype=dtype)
            except ValueError as err:
                raise ValueError(f"layer {name!r}: {err}") from None
        for name, layer in layers.items():
            set_submodule(model, name, layer.merge(requantize=requantize, dtype=dtype))
        if hasattr(model, "lora_config"):
            del model.lora_config
        if requantize:
            install_load_check(model)
    return model


#: PEFT's name for :func:`merge_qlora`.
merge_and_unload = merge_qlora
