"""Family adapters on disk, in Hugging Face PEFT's format (notebook 13, section 8).

Two files, as :mod:`lorakit.peft.io` writes for LoRA: ``adapter_config.json`` (the config's
``to_peft_dict()``) and ``adapter_model.safetensors``. PEFT's ``PeftModel.from_pretrained`` loads the
methods it has, and :func:`load_family_adapter` loads what PEFT saved (``tests/test_family_peft_crosscheck.py``):

=================  ==================  ==========================================================
method             ``peft_type``       tensors
=================  ==================  ==========================================================
(IA)³              ``IA3``             ``base_model.model.<name>.ia3_l``
VeRA               ``VERA``            ``<name>.vera_lambda_b``, ``<name>.vera_lambda_d``, ``base_model.vera_A/B``
prompt tuning      ``PROMPT_TUNING``   ``prompt_embeddings [n, d]``
prefix tuning      ``PREFIX_TUNING``   ``prompt_embeddings [n, 2 L d]``
LN tuning          ``LN_TUNING``       ``<name>.ln_tuning_layers.<weight|bias>``
BitFit             ``BITFIT``          ``<name>.bias`` (lorakit only: PEFT has no BitFit)
adapters           ``BOTTLENECK_ADAPTER``  ``<name>.adapter_down/up.<weight|bias>`` (lorakit only)
=================  ==================  ==========================================================

Loading is validated before the model changes (keys, shapes, finite floating-point values) and runs inside
:func:`lorakit.atomic.unchanged_on_error`; safetensors and JSON only, never pickle. Prompt and prefix tuning
return a wrapper model (as PEFT does), so always use the returned model.
"""

from __future__ import annotations

import json
import os
from types import ModuleType

import torch
from safetensors.torch import save_file
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.family import adapters, bitfit, ia3, ln_tuning, prefix_tuning, prompt_tuning, vera
from lorakit.family._apply import CONFIG_ATTR
from lorakit.peft import check_model
from lorakit.peft.io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_directory, read_adapter_files

__all__ = ["METHODS", "load_family_adapter", "save_family_adapter"]

#: ``peft_type`` -> (config class, the method's module with adapter_tensors / expected_shapes / load_into).
METHODS: dict[str, tuple[type, ModuleType]] = {
    "IA3": (ia3.IA3Config, ia3), "VERA": (vera.VeRAConfig, vera), "LN_TUNING": (ln_tuning.LNTuningConfig, ln_tuning),
    "PROMPT_TUNING": (prompt_tuning.PromptTuningConfig, prompt_tuning),
    "PREFIX_TUNING": (prefix_tuning.PrefixTuningConfig, prefix_tuning),
    "BITFIT": (bitfit.BitFitConfig, bitfit), "BOTTLENECK_ADAPTER": (adapters.AdapterConfig, adapters),
}


def _method_of(model: nn.Module) -> tuple[object, ModuleType]:
    config = getattr(model, CONFIG_ATTR, None)
    for config_cls, module in METHODS.values():
        if isinstance(config, config_cls):
            return config, module
    raise ValueError("model carries no lorakit.family adapter (make it with one of apply_ia3, apply_vera, "
                     "apply_prompt_tuning, apply_prefix_tuning, apply_ln_tuning, apply_bitfit, apply_adapters; "
                     "LoRA/DoRA/AdaLoRA use lorakit.save_adapter, QDoRA lorakit.family.save_qdora_adapter)")


def save_family_adapter(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` for the family adapter ``model`` carries."""
    check_model(model)
    config, module = _method_of(model)
    path = check_directory(directory, must_exist=False)
    tensors = module.adapter_tensors(model)
    path.mkdir(parents=True, exist_ok=True)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config.to_peft_dict(), indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / ADAPTER_WEIGHTS))


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing[:6]}, unexpected {unexpected[:6]}")
    for key, shape in expected.items():
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise ValueError(f"{key} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{key} must hold finite floating-point values")


def load_family_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load a family adapter (PEFT's format) into ``model`` and return the adapted model.

    ``model`` is a plain base model (the adapter's layers are created), or a model already adapted by the
    same method and shape (the weights are swapped in). For prompt and prefix tuning the returned model is
    the wrapper. Any error (unknown ``peft_type``, a config field lorakit does not honour, missing or extra
    keys, wrong shapes, a corrupted file) raises ValueError with the model unchanged.
    """
    check_model(model)
    path = check_directory(directory, must_exist=True)
    raw, tensors = read_adapter_files(path)
    peft_type = raw.get("peft_type")
    if peft_type not in METHODS:
        raise ValueError(f"{path / ADAPTER_CONFIG}: peft_type={peft_type!r} is not a lorakit.family method "
                         f"(supported: {sorted(METHODS)}; LoRA/DoRA/AdaLoRA: lorakit.load_adapter)")
    config_cls, module = METHODS[peft_type]
    config = config_cls.from_peft_dict(raw, source=str(path / ADAPTER_CONFIG))
    current = getattr(model, CONFIG_ATTR, None)
    if current is not None and not isinstance(current, config_cls):
        raise ValueError(f"model carries a {type(current).__name__} adapter; a {peft_type} adapter cannot replace it")
    if current is None:
        from lorakit.family._apply import refuse_family_model

        refuse_family_model(model, "load_family_adapter")
    _check_tensors(tensors, module.expected_shapes(model, config))
    with unchanged_on_error(model):
        return module.load_into(model, config, tensors)
