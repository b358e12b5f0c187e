"""Adapters on disk, in Hugging Face PEFT's format (notebook 04, "what an adapter file needs").

``save_adapter`` writes two files that PEFT's ``PeftModel.from_pretrained`` reads, and ``load_adapter``
reads the ones PEFT writes (``tests/test_peft_crosscheck.py``)::

    adapter_config.json          {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "use_dora": false, ...}
    adapter_model.safetensors    base_model.model.<module path>.lora_A.weight  [r, in]
                                 base_model.model.<module path>.lora_B.weight  [out, r]
                                 base_model.model.<module path>.lora_magnitude_vector  [out]  (DoRA only)

An adapter is only the *difference* to a base model, so reloading it is right only on the base it was
trained on. Two adapter kinds change the base itself and need more than A and B:

* **PiSSA** (``init="pissa"``) trains on the residual base ``W0 - U_r S_r V_r^T``. Saved as is
  (``init_lora_weights: "pissa"``, as PEFT saves it), the file reloads right only onto the *original*
  base: loading recomputes the residual by the same full SVD (PEFT does the same). Hot-swapping it into
  layers whose base is not that residual, or a plain adapter into PiSSA layers, cannot be right and is
  refused. ``save_adapter(..., convert_pissa=True)`` instead writes the equivalent plain LoRA adapter of
  rank ``2r`` (``A' = [A; A0]``, ``B' = [B, -B0]``, alpha rescaled so the scaling is unchanged), which
  loads onto the original base anywhere (PEFT's ``path_initial_model_for_weight_conversion``).
* **QLoRA** trains against the *quantized* base: save the adapter, and quantize the same base the same
  way (``apply_qlora``) before loading it; a whole QLoRA model saves through its ``state_dict``
  (:mod:`lorakit.qlora`).

AdaLoRA adapters (``peft_type: "ADALORA"``) are written and read by :mod:`lorakit.adalora.io` through the
same two functions. Loading never unpickles anything: safetensors and JSON only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.dora import DoRALinear
from lorakit.layers import adapter_layers
from lorakit.lora import LoRALinear, lora_scaling
from lorakit.peft.config import LoRAConfig
from lorakit.peft.model import apply_lora, lora_layers
from lorakit.peft.targets import ALL_LINEAR, _name_matches, check_model

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "MAGNITUDE_KEY", "PEFT_PREFIX", "adapter_state_dict", "check_directory",
    "load_adapter", "pissa_to_lora_state_dict", "read_adapter_files", "save_adapter", "selected_by",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
#: PEFT's key suffix for a DoRA layer's magnitude vector (no ``.weight``).
MAGNITUDE_KEY = "lora_magnitude_vector"


def check_directory(directory: object, must_exist: bool) -> Path:
    """``directory`` as a Path: TypeError unless str/PathLike; ValueError if it is a file (or, to read, missing)."""
    if isinstance(directory, bool) or not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__} {directory!r}")
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"directory={str(path)!r} is a file, not a directory")
    if must_exist and not path.is_dir():
        raise ValueError(f"directory={str(path)!r} does not exist")
    return path


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under PEFT's key names (``base_model.model.<name>.lora_A.weight``, DoRA's magnitude)."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
        if isinstance(layer, DoRALinear):
            state[f"{PEFT_PREFIX}{name}.{MAGNITUDE_KEY}"] = layer.magnitude.detach().contiguous()
    return state


def pissa_to_lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """PiSSA layers as a plain rank-``2r`` LoRA for the original base: ``A' = [A; A0]``, ``B' = [B, -B0]``.

    ``s B' A' = s B A - s B0 A0``, so ``W_res + s B A = W0 + s' B' A'`` when ``s' = s`` (the caller
    rescales alpha). Needs the initial factors each PiSSA layer kept (``pissa_A0``, ``pissa_B0``).
    """
    state = {}
    for name, layer in lora_layers(model).items():
        if layer.pissa_A0 is None:
            raise ValueError(f"layer {name!r} kept no initial PiSSA factors (was it made by init='pissa'?)")
        a = torch.cat([layer.lora_A.detach(), layer.pissa_A0.to(layer.lora_A.dtype)], dim=0)
        b = torch.cat([layer.lora_B.detach(), -layer.pissa_B0.to(layer.lora_B.dtype)], dim=1)
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    return state


def selected_by(model: nn.Module, targets: list[str] | str, adapted: set[str]) -> set[str]:
    """The names ``targets`` would select on the un-adapted model (adapter layers stand for their Linear)."""
    owners = adapter_layers(model)
    names = set()
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{o}.") for o in owners)
        if not name or inside:
            continue
        linear = name in adapted or isinstance(module, nn.Linear)
        if targets == ALL_LINEAR:
            if linear and name.split(".")[-1] != "lm_head":
                names.add(name)
        elif _name_matches(name, targets) and (linear or name in owners):
            names.add(name)
    return names


def _check_config_matches(model: nn.Module, layers: dict[str, LoRALinear], config: LoRAConfig) -> None:
    """ValueError naming every field of ``config`` that disagrees with the layers it would describe."""
    problems = []
    for field_name, attr in (("r", "r"), ("alpha", "alpha"), ("rslora", "rslora"), ("dropout", "dropout")):
        odd = [n for n, m in layers.items() if getattr(m, attr) != getattr(config, field_name)]
        if odd:
            problems.append(f"config.{field_name}={getattr(config, field_name)!r} but layer {odd[0]!r} has "
                            f"{attr}={getattr(layers[odd[0]], attr)!r}")
    odd = [n for n, m in layers.items() if isinstance(m, DoRALinear) != config.use_dora]
    if odd:
        problems.append(f"config.use_dora={config.use_dora} but layers {odd[:4]} are of the other kind")
    odd = [n for n, m in layers.items() if (m.init == "pissa") != (config.init == "pissa")]
    if odd:
        problems.append(f"config.init={config.init!r} but layer {odd[0]!r} has init={layers[odd[0]].init!r}")
    selected = selected_by(model, config.target_modules, set(layers))
    if selected != set(layers):
        extra, missing = sorted(selected - set(layers)), sorted(set(layers) - selected)
        problems.append(f"config.target_modules={config.target_modules!r} would adapt {extra[:4]} (no adapter "
                        f"there) and miss {missing[:4]} (adapted)")
    if problems:
        raise ValueError("config disagrees with the model's layers, so the saved adapter would reload wrong: "
                         + "; ".join(problems))


def refuse_sharded(model: nn.Module) -> None:
    """ValueError when ``model`` holds FSDP2 shards (DTensors): one rank cannot write whole tensors from them."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without torch.distributed.tensor cannot shard with FSDP2 either
        return
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ValueError("model is sharded (FSDP2: its parameters are DTensor shards); gather them first with "
                         "lorakit.distributed.save_adapter(model, directory), called on every rank")


def save_adapter(
    model: nn.Module, directory: str | os.PathLike, config: LoRAConfig | None = None, convert_pissa: bool = False
) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT's format) to ``directory``.

    Only the adapter tensors are written (kilobytes, not the base model). ``config`` defaults to the one
    ``apply_lora`` used; a config that disagrees with the layers (rank, alpha, rsLoRA, dropout, DoRA,
    PiSSA, or targets that would select other layers) is refused, since the file would reload wrong.
    ``convert_pissa=True`` writes a PiSSA model as the equivalent plain rank-``2r`` LoRA adapter for the
    original base (see the module docstring). AdaLoRA models are written in PEFT's AdaLoRA format.
    """
    check_model(model)
    refuse_sharded(model)
    directory = check_directory(directory, must_exist=False)
    if not isinstance(convert_pissa, bool):
        raise TypeError(f"convert_pissa must be a bool, got {type(convert_pissa).__name__}")
    layers = lora_layers(model)
    if not layers:
        from lorakit import adalora

        if adalora.adalora_layers(model):
            if convert_pissa:
                raise ValueError("convert_pissa=True needs a PiSSA model (init='pissa'); this model has AdaLoRA layers")
            return adalora.save_adalora_adapter(model, directory, config)
        raise ValueError("model has no LoRA or AdaLoRA layers to save")
    config = config if config is not None else getattr(model, "lora_config", None)
    if not isinstance(config, LoRAConfig):
        raise TypeError("config must be a LoRAConfig (or the model must come from apply_lora)")
    _check_config_matches(model, layers, config)
    if config.target_modules == ALL_LINEAR:
        # PEFT drops only a transformers model's output layer for "all-linear"; write the suffixes
        # explicitly so every loader adapts exactly these layers (PEFT does the same when it saves).
        config = dataclasses.replace(config, target_modules=sorted({n.rsplit(".", 1)[-1] for n in layers}))
    if convert_pissa and config.init == "pissa":
        state = pissa_to_lora_state_dict(model)
        # s' = s: alpha'/(2r) = alpha/r, or alpha'/sqrt(2r) = alpha/sqrt(r) with rsLoRA (as PEFT converts)
        alpha = config.alpha * (math.sqrt(2) if config.rslora else 2)
        config = dataclasses.replace(config, r=2 * config.r, alpha=alpha, init="kaiming")
    elif convert_pissa:
        raise ValueError("convert_pissa=True needs a PiSSA model (init='pissa'); this adapter is plain LoRA")
    else:
        state = adapter_state_dict(model)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config.to_peft_dict(), indent=2) + "\n")
    return directory


def read_adapter_files(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(raw adapter_config.json dict, tensors)``; ValueError for a missing, corrupted or truncated file."""
    cfg_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise ValueError(f"adapter directory {directory} has no {path.name}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} is corrupted or truncated ({err})") from None
    return raw, tensors


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing[:6]}, unexpected {unexpected[:6]}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, expected {shape}")
        if not tensors[key].is_floating_point() or not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{key} must hold finite floating-point values")


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load a PEFT-format adapter (LoRA, DoRA, PiSSA, AdaLoRA) into ``model`` (in place) and return it.

    If the model has no adapter layers they are created from the file's config; if it has LoRA layers
    (hot-swap), the file must target the same modules with the same rank and kind, and its weights and
    alpha replace the current ones. Everything is validated first: on any error (missing or unexpected
    keys, wrong shapes, another rank, a PiSSA adapter for a base that is not its residual, a corrupted or
    truncated file) a ValueError names the problem and the model is left unchanged.
    """
    check_model(model)
    directory = check_directory(directory, must_exist=True)
    raw, tensors = read_adapter_files(directory)
    if raw.get("peft_type") == "ADALORA":
        from lorakit import adalora

        return adalora.load_adalora_adapter(model, directory, raw, tensors)
    config = LoRAConfig.from_peft_dict(raw, source=str(directory / ADAPTER_CONFIG))
    existing = lora_layers(model)
    if not existing and adapter_layers(model):
        raise ValueError(f"model carries {sorted(adapter_layers(model))[:4]} adapter layers of another kind; "
                         "a LoRA adapter cannot be loaded on top of them")
    if existing:
        names = sorted(existing)
    else:
        from lorakit.peft.targets import find_target_modules

        names = find_target_modules(model, config.target_modules)
    if not names:
        raise ValueError(f"the adapter's target_modules={config.target_modules!r} match no nn.Linear in the model")
    expected: dict[str, tuple[int, ...]] = {}
    for name in names:
        mod = model.get_submodule(name)
        in_f, out_f = mod.in_features, mod.out_features
        if existing:
            if mod.r != config.r:
                raise ValueError(f"the adapter has r={config.r} but the model's LoRA layer {name} has r={mod.r}")
            if mod.merged:
                raise ValueError(f"LoRA layer {name} is merged; unmerge before loading another adapter")
            if isinstance(mod, DoRALinear) != config.use_dora:
                raise ValueError(f"the adapter has use_dora={config.use_dora} but the model's layer {name} is a "
                                 f"{type(mod).__name__}")
            if (mod.init == "pissa") != (config.init == "pissa"):
                raise ValueError(
                    f"the adapter has init={config.init!r} but layer {name} has init={mod.init!r}: a PiSSA adapter "
                    "is right only on its residual base W0 - U_r S_r V_r^T, and a plain adapter only on W0, so this "
                    "load cannot be right (load it onto a fresh base model, or save it with convert_pissa=True)"
                )
        elif config.init == "pissa" and config.r > min(in_f, out_f):
            raise ValueError(f"the PiSSA adapter has r={config.r} > min(in, out)={min(in_f, out_f)} for {name}")
        expected[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (config.r, in_f)
        expected[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (out_f, config.r)
        if config.use_dora:
            expected[f"{PEFT_PREFIX}{name}.{MAGNITUDE_KEY}"] = (out_f,)
    if config.use_dora and not any(k.endswith(MAGNITUDE_KEY) for k in tensors):
        raise ValueError(f"adapter_config.json has use_dora=True but the weights hold no {MAGNITUDE_KEY} tensors")
    _check_tensors(tensors, expected)
    with unchanged_on_error(model):
        if not existing:
            # PiSSA: the same full SVD rebuilds the residual base the adapter was trained on (as PEFT does)
            init = config.init if config.init == "pissa" else "zeros"  # weights are overwritten below
            apply_lora(model, dataclasses.replace(config, target_modules=names, init=init))
        with torch.no_grad():
            for name, layer in lora_layers(model).items():
                layer.lora_A.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"])
                layer.lora_B.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"])
                if isinstance(layer, DoRALinear):
                    layer.magnitude.copy_(tensors[f"{PEFT_PREFIX}{name}.{MAGNITUDE_KEY}"])
                layer.alpha, layer.rslora, layer.dropout = config.alpha, config.rslora, config.dropout
                layer.scaling = lora_scaling(config.r, config.alpha, config.rslora)
        model.lora_config = config  # type: ignore[assignment]
    return model
