"""Saving and loading whole QLoRA models: what a 4-bit model's ``state_dict`` holds (notebook 08, "save").

A QLoRA model's ``model.state_dict()`` holds everything needed to rebuild it: the LoRA factors
(``<layer>.lora_A``, ``<layer>.lora_B``), the rest of the model, and each 4-bit base in bitsandbytes'
layout (``<layer>.base.weight`` = packed codes, ``<layer>.base.weight.absmax``, ``...quant_map``,
``...nested_absmax``, ``...nested_quant_map``, ``...quant_state.bitsandbytes__nf4``; see
:mod:`lorakit.nf4.serialization` and :class:`~lorakit.qlora.NF4Linear`). Both backends write the same keys,
so the file is backend-independent. All entries are plain tensors, so it round-trips through safetensors::

    save_file(model.state_dict(), "qlora.safetensors")        # or safetensors.torch.save_model(model, ...)
    fresh = apply_qlora(build_base_model(), config, ...)      # the same structure, same quantization settings
    fresh.load_state_dict(load_file("qlora.safetensors"))     # or safetensors.torch.load_model(fresh, ...)

After ``merge_qlora(model, requantize=True)`` the merged 4-bit layers save and load the same way (into a
model merged the same way). A transformers model merged that way also reloads with transformers itself, as a
bitsandbytes 4-bit model: attach :func:`bitsandbytes_config` before ``save_pretrained`` and
``from_pretrained`` builds ``Linear4bit`` layers from the saved entries (without it, transformers sees uint8
codes where it expects dense weights and re-initialises them, with only a warning)::

    merged = merge_qlora(model, requantize=True)
    merged.config.quantization_config = bitsandbytes_config(merged)
    merged.save_pretrained(directory)                              # later: AutoModelForCausalLM.from_pretrained

**Atomic loads.** PyTorch's ``load_state_dict`` copies module by module and reports problems at the end, so
a bad entry found half-way leaves a half-loaded model. :func:`check_quantized_load` runs as a load pre-hook
on every QLoRA layer and on the model ``apply_qlora`` adapts (:func:`install_load_check`): it checks every
4-bit entry below it before any module is loaded, and raises a ValueError naming the key (model unchanged)
when one is malformed or describes another weight (shape, dtype, blocksize, double quantization, levels).
A state dict *without* the 4-bit entries (an adapter-only file) is PyTorch's usual case: with
``strict=True`` its ``load_state_dict`` raises listing the missing keys, with ``strict=False`` it reports them
and the 4-bit bases keep their weights. (PyTorch tells a module's loader nothing about ``strict``, so this
hook cannot make that case atomic too; use ``strict=False`` and check ``missing_keys`` when in doubt.)
"""

from __future__ import annotations

import re

from torch import nn

from lorakit.layers import adapter_layers
from lorakit.nf4.serialization import quant_type_of
from lorakit.qlora.bnb import bnb_quantized, check_bnb_state
from lorakit.qlora.checks import is_bnb_linear4bit
from lorakit.qlora.nf4_linear import NF4Linear

__all__ = ["bitsandbytes_config", "check_quantized_load", "install_load_check", "quantized_modules"]


def quantized_modules(module: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}``: the 4-bit layers under ``module`` (lorakit's ``NF4Linear``, bitsandbytes' ``Linear4bit``)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, NF4Linear) or is_bnb_linear4bit(m)}


def check_quantized_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                         error_msgs) -> None:
    """Load pre-hook: ValueError, before anything is loaded, if a 4-bit entry under ``module`` is wrong."""
    for name, layer in quantized_modules(module).items():
        layer_prefix = f"{prefix}{name}." if name else prefix
        if isinstance(layer, NF4Linear):
            layer.check_state(state_dict, layer_prefix)
        else:
            check_bnb_state(layer, state_dict, layer_prefix)


def install_load_check(module: nn.Module) -> nn.Module:
    """Register :func:`check_quantized_load` as a load pre-hook of ``module`` (once); return ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    hooks = module._load_state_dict_pre_hooks.values()
    if not any(getattr(h, "hook", h) is check_quantized_load for h in hooks):
        module.register_load_state_dict_pre_hook(check_quantized_load)
    return module


def bitsandbytes_config(model: nn.Module):
    """transformers' ``BitsAndBytesConfig`` describing ``model``'s 4-bit layers (for ``save_pretrained``).

    ``model`` must hold merged 4-bit layers (``merge_qlora(model, requantize=True)``): transformers cannot
    rebuild adapter layers. All 4-bit layers must share one format (NF4, double quantization on or off, compute
    dtype, storage dtype); every dense ``nn.Linear`` is listed in ``llm_int8_skip_modules`` so that
    ``from_pretrained`` keeps it dense instead of quantizing it on load.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    adapters = adapter_layers(model)
    if adapters:
        raise ValueError(f"model still has adapter layers ({sorted(adapters)[:4]}); transformers cannot rebuild them: "
                         "merge_qlora(model, requantize=True) first, or save the adapter with save_adapter")
    layers = quantized_modules(model)
    if not layers:
        raise ValueError("model has no 4-bit layers (merge_qlora(model, requantize=True) makes them)")
    formats = {}
    for name, layer in layers.items():
        if isinstance(layer, NF4Linear):
            q, storage = layer.quantized, layer.quant_storage
        else:
            q, storage = bnb_quantized(layer), layer.weight.dtype
        formats[name] = (quant_type_of(q.code.detach().cpu()), q.double_quant, layer.compute_dtype, storage)
    if len(set(formats.values())) != 1:
        raise ValueError(f"transformers' BitsAndBytesConfig describes one 4-bit format, but the layers differ: "
                         f"{dict(list(formats.items())[:4])}")
    quant_type, double_quant, compute_dtype, storage = next(iter(formats.values()))
    if quant_type != "nf4":
        raise ValueError(f"only NF4 layers can be described for transformers, got {quant_type!r}")
    import transformers

    dense = [re.escape(n) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in layers]
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=storage, llm_int8_skip_modules=dense,
    )
