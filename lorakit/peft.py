"""The model-level API, PEFT-like (notebooks 01-04): config, apply, count, merge, save and load.

``apply_lora(model, LoRAConfig(...))`` replaces every targeted ``nn.Linear`` by a
:class:`~lorakit.lora.LoRALinear` and freezes everything else. Adapters are written and read in
Hugging Face PEFT's on-disk format, so PEFT can load what lorakit saves and the other way round
(``tests/test_peft_crosscheck.py``)::

    adapter_config.json          {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "use_dora": false, ...}
    adapter_model.safetensors    base_model.model.<module path>.lora_A.weight  [r, in]
                                 base_model.model.<module path>.lora_B.weight  [out, r]
                                 base_model.model.<module path>.lora_magnitude_vector  [out]  (DoRA only)

``LoRAConfig(use_dora=True)`` makes the layers :class:`~lorakit.dora.DoRALinear` (notebook 09).

Loading never unpickles anything: safetensors and JSON only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.dora import DoRALinear
from lorakit.lora import INITS, LoRALinear, lora_scaling, validate_lora_args
from lorakit.nf4 import QuantizedTensor

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
#: PEFT's key suffix for a DoRA layer's magnitude vector (no ``.weight``).
MAGNITUDE_KEY = "lora_magnitude_vector"
#: PEFT's default target modules for LLaMA-family models (``q_proj``, ``v_proj``).
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")
#: ``init`` name <-> PEFT's ``init_lora_weights`` value.
_INIT_TO_PEFT: dict[str, object] = {"kaiming": True, "gaussian": "gaussian", "zeros": True, "pissa": "pissa"}


@dataclass
class LoRAConfig:
    """LoRA hyper-parameters, with PEFT's defaults (``r=8, lora_alpha=8, lora_dropout=0``).

    ``target_modules``: a list of module-name suffixes (``"q_proj"`` matches ``layers.0.self_attn.q_proj``),
    a regular expression string matched against the full module name (``re.fullmatch``, as PEFT),
    or ``"all-linear"`` (every ``nn.Linear`` except the output head ``lm_head``).
    ``use_dora=True``: DoRA layers (:class:`~lorakit.dora.DoRALinear`) instead of LoRA ones.
    """

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    target_modules: Sequence[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    rslora: bool = False
    init: str = "kaiming"
    use_dora: bool = False

    def __post_init__(self) -> None:
        validate_lora_args(self.r, self.alpha, self.dropout, self.init)
        if not isinstance(self.rslora, bool):
            raise TypeError(f"rslora must be a bool, got {self.rslora!r}")
        if not isinstance(self.use_dora, bool):
            raise TypeError(f"use_dora must be a bool, got {self.use_dora!r}")
        self.target_modules = check_target_modules(self.target_modules)

    def to_peft_dict(self) -> dict:
        """The ``adapter_config.json`` contents PEFT expects."""
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": None,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": _INIT_TO_PEFT[self.init],
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "inference_mode": True,
        }

    @classmethod
    def from_peft_dict(cls, raw: dict) -> LoRAConfig:
        """Read a PEFT ``adapter_config.json`` dict; raises ValueError for what lorakit cannot load."""
        if raw.get("peft_type") != "LORA":
            raise ValueError(f"adapter_config.json: peft_type must be 'LORA', got {raw.get('peft_type')!r}")
        unsupported = {
            "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
            "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
        }
        for key, ok in unsupported.items():
            if raw.get(key, ok) not in (ok, None, [], {}):
                raise ValueError(
                    f"adapter_config.json: {key}={raw[key]!r} is not supported by lorakit (expected {ok!r})"
                )
        init = raw.get("init_lora_weights", True)
        init = {True: "kaiming", "gaussian": "gaussian", "pissa": "pissa", False: "kaiming"}.get(init, "kaiming")
        targets = raw.get("target_modules")
        if targets is None:
            raise ValueError("adapter_config.json: target_modules is missing")
        return cls(r=raw["r"], alpha=raw.get("lora_alpha", 8), dropout=raw.get("lora_dropout", 0.0),
                   target_modules=targets, rslora=bool(raw.get("use_rslora", False)), init=init,
                   use_dora=bool(raw.get("use_dora", False)))


def check_target_modules(targets: object) -> Sequence[str] | str:
    """A config's ``target_modules`` (LoRAConfig, AdaLoRAConfig), validated: a regex string as is, a list copied."""
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as err:
            raise ValueError(f"target_modules is not a valid regex: {targets!r} ({err})") from None
        return targets
    if not (isinstance(targets, Sequence) and targets and all(isinstance(t, str) and t for t in targets)):
        raise TypeError(f"target_modules must be a non-empty list of names or a regex string, got {targets!r}")
    return list(targets)


def _is_target(name: str, module: nn.Module, targets: Sequence[str] | str) -> bool:
    if not isinstance(module, nn.Linear):
        return False
    if targets == "all-linear":
        return name.split(".")[-1] != "lm_head"
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_target_modules(model: nn.Module, target_modules: Sequence[str] | str) -> list[str]:
    """Names of the ``nn.Linear`` modules ``target_modules`` selects (PEFT's matching rules)."""
    check_model(model)
    if not isinstance(target_modules, (str, Sequence)) or not all(isinstance(t, str) for t in target_modules):
        raise TypeError(f"target_modules must be a list of names or a regex string, got {target_modules!r}")
    return [name for name, mod in model.named_modules() if name and _is_target(name, mod, target_modules)]


def select_target_modules(model: nn.Module, target_modules: Sequence[str] | str) -> list[str]:
    """:func:`find_target_modules`, raising ValueError (listing the model's Linear layers) when nothing matches."""
    names = find_target_modules(model, target_modules)
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"target_modules={target_modules!r} matched no nn.Linear in the model; its Linear layers are: {linears}"
        )
    return names


def check_model(model: object) -> None:
    """TypeError unless ``model`` is an ``nn.Module`` (every model-level function starts with this)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{module name: LoRALinear}`` for every LoRA layer in ``model``."""
    check_model(model)
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoRALinear)}


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the existing submodule ``name`` (a dotted path) of ``model`` by ``new``."""
    check_model(model)
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty dotted module path, got {name!r}")
    if not isinstance(new, nn.Module):
        raise TypeError(f"new must be an nn.Module, got {type(new).__name__}")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        parent = None
    if parent is None or not isinstance(getattr(parent, child, None), nn.Module):
        raise ValueError(f"name={name!r} is not a submodule of the model")
    setattr(parent, child, new)


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers of ``model`` by LoRALinear, in place; return ``model``.

    Every other parameter is frozen (PEFT's ``bias="none"``). Raises ValueError, leaving the model
    unchanged, when nothing matches (the message lists the Linear layers that exist) or when the
    model already has LoRA layers.
    """
    check_model(model)
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    if lora_layers(model):
        raise ValueError(
            "model already has LoRA layers; apply_lora twice would stack adapters (use load_adapter to swap them)"
        )
    names = select_target_modules(model, config.target_modules)
    if config.init == "pissa":  # the only LoRALinear error left after LoRAConfig's checks: check all first
        too_small = [n for n in names if config.r > min(model.get_submodule(n).weight.shape)]
        if too_small:
            raise ValueError(f"init='pissa' needs r={config.r} <= min(in, out) for every target; not for {too_small}")
    if config.use_dora:  # DoRALinear's only other error (a zero row has no direction): check all first
        zero = [n for n in names if (model.get_submodule(n).weight.detach().norm(dim=1) == 0).any()]
        if zero:
            raise ValueError(f"use_dora=True needs nonzero weight rows (DoRA normalises each row); zero rows in {zero}")
    for p in model.parameters():
        p.requires_grad_(False)
    layer_cls = DoRALinear if config.use_dora else LoRALinear
    for name in names:
        base = model.get_submodule(name)
        new = layer_cls(base, config.r, config.alpha, config.dropout, config.rslora, config.init)
        set_submodule(model, name, new)
    model.lora_config = config  # type: ignore[assignment]
    return model


def _weight_count(p: torch.Tensor) -> int:
    """Model weights a parameter holds: bitsandbytes' ``Params4bit`` packs two per byte (its numel is bytes)."""
    quant_state = getattr(p, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` counts of model weights (each parameter tensor counted once).

    A 4-bit base (notebook 08) counts as the weights it stores, not its bytes: ``total`` is the same for a
    model and its QLoRA version. That covers lorakit's ``NF4Linear`` (its ``quantized`` weight is not a
    parameter) and bitsandbytes' ``Params4bit`` (whose ``numel()`` is the packed byte count).
    """
    check_model(model)
    params = {id(p): p for p in model.parameters()}.values()
    quantized = {id(q): q for m in model.modules() if isinstance(q := getattr(m, "quantized", None), QuantizedTensor)}
    frozen_4bit = sum(q.numel for q in quantized.values())
    return (sum(p.numel() for p in params if p.requires_grad),
            sum(_weight_count(p) for p in params) + frozen_4bit)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer (``W0 += scaling * B @ A``); idempotent per layer."""
    for layer in lora_layers(model).values():
        if not layer.merged:
            layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` on every merged LoRA layer."""
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then replace every LoRALinear by its (merged) plain ``nn.Linear``: a dense model."""
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        set_submodule(model, name, layer.base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under PEFT's key names (``base_model.model.<name>.lora_A.weight``, DoRA's magnitude)."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
        if isinstance(layer, DoRALinear):
            state[f"{PEFT_PREFIX}{name}.{MAGNITUDE_KEY}"] = layer.magnitude.detach().contiguous()
    return state


def save_adapter(model: nn.Module, directory: str | Path, config: LoRAConfig | None = None) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT's format) to ``directory``.

    Only the LoRA tensors are written (kilobytes, not the base model). ``config`` defaults to the one
    ``apply_lora`` used.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to save")
    config = config if config is not None else getattr(model, "lora_config", None)
    if not isinstance(config, LoRAConfig):
        raise TypeError("config must be a LoRAConfig (or the model must come from apply_lora)")
    mismatched = [n for n, layer in layers.items() if layer.r != config.r]
    if mismatched:
        raise ValueError(f"config.r={config.r} but layers {mismatched} have another rank")
    mismatched = [n for n, layer in layers.items() if isinstance(layer, DoRALinear) != config.use_dora]
    if mismatched:
        raise ValueError(f"config.use_dora={config.use_dora} but layers {mismatched[:6]} are of the other kind")
    if config.target_modules == "all-linear":
        # PEFT drops only a transformers model's output layer for "all-linear"; write the suffixes
        # explicitly so every loader adapts exactly these layers (PEFT does the same when it saves).
        config = dataclasses.replace(config, target_modules=sorted({n.rsplit(".", 1)[-1] for n in layers}))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config.to_peft_dict(), indent=2) + "\n")
    return directory


def _read_adapter(directory: Path) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
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
        config = LoRAConfig.from_peft_dict(raw)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path} is not a valid LoRA adapter config ({err!r})") from None
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} is corrupted or truncated ({err})") from None
    return config, tensors


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a PEFT-format LoRA adapter into ``model`` (in place) and return it.

    If the model has no LoRA layers they are created from the file's config; if it has (hot-swap),
    the file must target the same modules with the same rank, and its weights and alpha replace the
    current ones. Everything is validated first: on any error (missing or unexpected keys, wrong
    shapes, another rank, a corrupted or truncated file) a ValueError names the problem and the
    model is left unchanged.
    """
    check_model(model)
    directory = Path(directory)
    config, tensors = _read_adapter(directory)
    existing = lora_layers(model)
    names = sorted(existing) if existing else find_target_modules(model, config.target_modules)
    if not names:
        raise ValueError(f"the adapter's target_modules={config.target_modules!r} match no nn.Linear in the model")
    expected: dict[str, tuple[int, int]] = {}
    for name in names:
        mod = model.get_submodule(name)
        in_f, out_f = mod.in_features, mod.out_features
        if existing and mod.r != config.r:
            raise ValueError(f"the adapter has r={config.r} but the model's LoRA layer {name} has r={mod.r}")
        if existing and mod.merged:
            raise ValueError(f"LoRA layer {name} is merged; unmerge before loading another adapter")
        if existing and isinstance(mod, DoRALinear) != config.use_dora:
            raise ValueError(f"the adapter has use_dora={config.use_dora} but the model's layer {name} is a "
                             f"{type(mod).__name__}")
        expected[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (config.r, in_f)
        expected[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (out_f, config.r)
        if config.use_dora:
            expected[f"{PEFT_PREFIX}{name}.{MAGNITUDE_KEY}"] = (out_f,)
    if config.use_dora and not any(k.endswith(MAGNITUDE_KEY) for k in tensors):
        raise ValueError(f"adapter_config.json has use_dora=True but the weights hold no {MAGNITUDE_KEY} tensors")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing[:6]}, unexpected {unexpected[:6]}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, expected {shape}")
        if not tensors[key].is_floating_point() or not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{key} must hold finite floating-point values")
    if not existing:
        init_ok = config.init if config.init != "pissa" else "zeros"  # weights are overwritten below
        apply_lora(model, LoRAConfig(config.r, config.alpha, config.dropout, names, config.rslora, init_ok,
                                     config.use_dora))
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


__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "DEFAULT_TARGETS", "INITS", "MAGNITUDE_KEY", "LoRAConfig",
    "adapter_state_dict", "apply_lora", "check_model", "check_target_modules", "find_target_modules", "load_adapter",
    "lora_layers", "merge_and_unload", "merge_lora", "save_adapter", "select_target_modules", "set_submodule",
    "trainable_parameters", "unmerge_lora",
]
