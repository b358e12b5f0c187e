"""AdaLoRA adapters on disk, in Hugging Face PEFT's AdaLoRA format (notebook 10).

:func:`lorakit.save_adapter` and :func:`lorakit.load_adapter` send AdaLoRA models and ``"ADALORA"`` files
here. The two files are the ones ``PeftModel.save_pretrained`` writes for an ``AdaLoraConfig``::

    adapter_config.json        {"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "lora_alpha": 8, ...,
                                "rank_pattern": {"<module>.lora_E": [true, false, ...], ...} or null}
    adapter_model.safetensors  base_model.model.<module>.lora_A  [k, in]     (no ``.weight``: PEFT keeps
                               base_model.model.<module>.lora_E  [k, 1]      AdaLoRA's factors in
                               base_model.model.<module>.lora_B  [out, k]    ParameterDicts)

where ``k = init_r`` before the allocator has masked anything (``rank_pattern`` null), and after it the
number of triplets the last mask kept: PEFT saves only those (``resize_state_dict_by_rank_pattern``), and
on load it builds layers of rank ``k`` whose ``ranknum`` stays ``init_r``, so the scale ``alpha / init_r``
is unchanged. lorakit keeps its layers at rank ``init_r`` instead and loads the ``k`` kept triplets into
the positions the pattern marks (the pruned ones are zero): the same function, and a model that can go on
training with a :class:`~lorakit.adalora.RankAllocator`.

What cannot be written faithfully is refused with a ValueError: a config that disagrees with the layers
(rank, alpha, dropout, targets, rank pattern), non-finite factors, and a ``Λ_i`` the last mask pruned that
the optimizer has moved since (between masking steps of the budgeting phase); PEFT would silently drop it,
and the file would not reproduce the model. Loading checks everything before it changes the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lorakit.adalora.config import RANK_PATTERN_SUFFIX, AdaLoRAConfig
from lorakit.adalora.layer import SVDLinear, adalora_layers
from lorakit.adalora.model import apply_adalora
from lorakit.atomic import unchanged_on_error
from lorakit.layers import adapter_layers
from lorakit.peft import check_model, find_target_modules
from lorakit.peft.io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, check_directory, selected_by
from lorakit.peft.targets import ALL_LINEAR

__all__ = [
    "FACTORS", "adalora_state_dict", "load_adalora_adapter", "rank_pattern_of", "save_adalora_adapter", "tensor_key",
]

#: AdaLoRA's three factors, in PEFT's names: Q (``[r, in]``), Λ (``[r, 1]``), P (``[out, r]``).
FACTORS = ("lora_A", "lora_E", "lora_B")


def tensor_key(name: str, factor: str) -> str:
    """PEFT's safetensors key of one factor of the AdaLoRA layer ``name``: ``base_model.model.<name>.lora_A``."""
    return f"{PEFT_PREFIX}{name}.{factor}"


def rank_pattern_of(model: nn.Module) -> dict[str, list[bool]] | None:
    """PEFT's ``rank_pattern`` from the layers' ``rank_mask`` (None when nothing was masked yet).

    ValueError, naming the layer, when a singular value the mask pruned is non-zero: the optimizer moved it
    after the last mask, so an adapter without it would not reproduce the model.
    """
    pattern: dict[str, list[bool]] = {}
    for name, layer in adalora_layers(model).items():
        keep = layer.rank_mask
        if keep is None:
            continue
        if keep.dtype != torch.bool or keep.shape != (layer.r,):
            raise ValueError(f"layer {name!r}: rank_mask must be a bool tensor of shape ({layer.r},), got "
                             f"{keep.dtype} {tuple(keep.shape)}")
        stale = ((layer.lora_E.detach().view(-1) != 0) & ~keep.to(layer.lora_E.device)).nonzero().flatten().tolist()
        if stale:
            raise ValueError(
                f"layer {name!r}: lora_E is non-zero at triplets {stale[:8]} that the allocator's last mask pruned "
                "(the optimizer moved them after that mask, between masking steps). Saved without them (PEFT's "
                "format keeps only the kept triplets) the adapter would not reproduce the model: re-apply the mask "
                "first (allocator.apply_rank_pattern(model, allocator.rank_pattern), or layer.apply_rank_mask() "
                "on every SVDLinear), or save right after a masking step"
            )
        pattern[f"{name}{RANK_PATTERN_SUFFIX}"] = keep.tolist()
    return pattern or None


def adalora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under PEFT's keys, each masked layer resized to its kept triplets (as PEFT saves)."""
    state = {}
    for name, layer in adalora_layers(model).items():
        factors = [p.detach() for p in (layer.lora_A, layer.lora_E, layer.lora_B)]
        keep = layer.rank_mask
        if keep is not None and not bool(keep.all()):
            keep = keep.to(layer.lora_E.device)
            factors = [factors[0][keep], factors[1][keep], factors[2][:, keep]]
        for factor, tensor in zip(FACTORS, factors, strict=True):
            state[tensor_key(name, factor)] = tensor.contiguous().cpu()
    return state


def _keep_by_layer(pattern: dict[str, list[bool]] | None) -> dict[str, list[bool]]:
    return {k.removesuffix(RANK_PATTERN_SUFFIX): v for k, v in (pattern or {}).items()}


def _check_config_matches(
    model: nn.Module, layers: dict[str, SVDLinear], config: AdaLoRAConfig, pattern: dict[str, list[bool]] | None,
    check_pattern: bool,
) -> None:
    """ValueError naming every field of ``config`` that disagrees with the layers it would describe."""
    problems = []
    for field_name, attr in (("init_r", "r"), ("alpha", "alpha"), ("dropout", "dropout")):
        odd = [n for n, m in layers.items() if getattr(m, attr) != getattr(config, field_name)]
        if odd:
            problems.append(f"config.{field_name}={getattr(config, field_name)!r} but layer {odd[0]!r} has "
                            f"{attr}={getattr(layers[odd[0]], attr)!r}")
    selected = selected_by(model, config.target_modules, set(layers))
    if selected != set(layers):
        extra, missing = sorted(selected - set(layers)), sorted(set(layers) - selected)
        problems.append(f"config.target_modules={config.target_modules!r} would adapt {extra[:4]} (no adapter "
                        f"there) and miss {missing[:4]} (adapted)")
    if check_pattern and config.rank_pattern is not None:
        theirs, ours = _keep_by_layer(config.rank_pattern), _keep_by_layer(pattern)
        unknown = sorted(set(theirs) - set(layers))
        if unknown:
            problems.append(f"config.rank_pattern names {unknown[:4]}, which are not AdaLoRA layers of the model")
        odd = [n for n in layers if n in theirs and theirs[n] != ours.get(n, [True] * layers[n].r)]
        odd += [n for n in ours if n not in theirs and not all(ours[n])]
        if odd:
            problems.append(f"config.rank_pattern disagrees with the allocator's mask of layer {odd[0]!r}")
    if problems:
        raise ValueError("config disagrees with the model's AdaLoRA layers, so the saved adapter would reload "
                         "wrong: " + "; ".join(problems))


def _write_atomically(directory: Path, state: dict[str, torch.Tensor], raw: dict) -> None:
    """Both files are written next to their targets, then moved in place (no half-written adapter)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp_weights, tmp_config = directory / f".{ADAPTER_WEIGHTS}.tmp", directory / f".{ADAPTER_CONFIG}.tmp"
    try:
        save_file(state, tmp_weights, metadata={"format": "pt"})
        tmp_config.write_text(json.dumps(raw, indent=2) + "\n")
        os.replace(tmp_weights, directory / ADAPTER_WEIGHTS)
        os.replace(tmp_config, directory / ADAPTER_CONFIG)
    finally:
        for tmp in (tmp_weights, tmp_config):
            tmp.unlink(missing_ok=True)


def save_adalora_adapter(
    model: nn.Module, directory: str | os.PathLike, config: AdaLoRAConfig | None = None
) -> Path:
    """Write an AdaLoRA model's adapter in PEFT's AdaLoRA format (module docstring); return the directory.

    ``config`` defaults to the model's ``adalora_config``; its ``rank_pattern`` is then taken from the layers'
    masks. An explicit ``config`` must agree with the layers, its ``rank_pattern`` (if set) included.
    The model is never changed.
    """
    check_model(model)
    directory = check_directory(directory, must_exist=False)
    layers = adalora_layers(model)
    if not layers:
        raise ValueError("model has no AdaLoRA (SVDLinear) layers to save")
    explicit = config is not None
    config = config if explicit else getattr(model, "adalora_config", None)
    if not isinstance(config, AdaLoRAConfig):
        raise TypeError("config must be an AdaLoRAConfig (or the model must come from apply_adalora or load_adapter)")
    pattern = rank_pattern_of(model)
    _check_config_matches(model, layers, config, pattern, check_pattern=explicit)
    state = adalora_state_dict(model)
    bad = [k for k, t in state.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{bad[0]} holds NaN or inf (and {len(bad) - 1} more tensors): such an adapter cannot be "
                         "reloaded (load_adapter refuses non-finite weights)")
    targets = config.target_modules
    if targets == ALL_LINEAR:  # write the suffixes, as the LoRA saver does: every loader adapts exactly these layers
        targets = sorted({n.rsplit(".", 1)[-1] for n in layers})
    out = dataclasses.replace(config, rank_pattern=pattern, target_modules=targets)
    raw = out.to_peft_dict()
    raw["inference_mode"] = True  # what PEFT writes in a saved adapter
    _write_atomically(directory, state, raw)
    return directory


def _expected_shapes(
    model: nn.Module, names: list[str], config: AdaLoRAConfig, keep: dict[str, list[bool]]
) -> dict[str, tuple[int, ...]]:
    expected = {}
    for name in names:
        module = model.get_submodule(name)
        k = sum(keep[name]) if name in keep else config.init_r
        expected[tensor_key(name, "lora_A")] = (k, module.in_features)
        expected[tensor_key(name, "lora_E")] = (k, 1)
        expected[tensor_key(name, "lora_B")] = (module.out_features, k)
    return expected


def _check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], keep: dict[str, list[bool]],
    init_r: int,
) -> None:
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing[:6]}, unexpected {unexpected[:6]}")
    for key, shape in expected.items():
        got = tuple(tensors[key].shape)
        if got != shape:
            name = key.removeprefix(PEFT_PREFIX).rsplit(".", 1)[0]
            why = (f"rank_pattern keeps {sum(keep[name])} of {init_r} triplets of {name!r}, so the rank_pattern "
                   "disagrees with the weights" if name in keep else f"init_r={init_r} and no rank_pattern entry")
            raise ValueError(f"{key} has shape {got}, expected {shape} ({why})")
        if not tensors[key].is_floating_point() or not bool(torch.isfinite(tensors[key]).all()):
            raise ValueError(f"{key} must hold finite floating-point values")


def load_adalora_adapter(
    model: nn.Module, directory: str | os.PathLike, raw: dict, tensors: dict[str, torch.Tensor]
) -> nn.Module:
    """Load a PEFT AdaLoRA adapter (``raw`` config, ``tensors``) into ``model``, in place; return ``model``.

    Onto a model without adapters, SVDLinear layers are created where the file's ``target_modules`` point;
    into an AdaLoRA model (hot-swap) the file must target exactly its layers, with the same ``init_r``, and
    its weights, alpha, dropout and rank pattern replace the current ones. Every check runs before the
    model changes; on error (a bad or unsupported config field, missing or unexpected keys, wrong shapes,
    non-finite values, a rank pattern that disagrees with the weights) a ValueError names it.
    """
    check_model(model)
    source = str(Path(directory) / ADAPTER_CONFIG) if isinstance(directory, (str, os.PathLike)) else ADAPTER_CONFIG
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise TypeError("tensors must be a dict {key: torch.Tensor} (read from adapter_model.safetensors)")
    config = AdaLoRAConfig.from_peft_dict(raw, source=source)
    existing = adalora_layers(model)
    others = [n for n, m in adapter_layers(model).items() if not isinstance(m, SVDLinear)]
    if others:
        raise ValueError(f"model carries adapter layers of another kind ({others[:4]}); an AdaLoRA adapter cannot be "
                         "loaded on top of them (lorakit does not stack adapters: merge_and_unload first, or load "
                         "onto a fresh base model)")
    if existing:
        names = sorted(existing)
        for name, layer in existing.items():
            if layer.merged:
                raise ValueError(f"AdaLoRA layer {name} is merged; unmerge before loading another adapter")
            if layer.r != config.init_r:
                raise ValueError(f"the adapter has init_r={config.init_r} but the model's AdaLoRA layer {name} has "
                                 f"r={layer.r}")
        selected = selected_by(model, config.target_modules, set(existing))
        if selected != set(existing):
            raise ValueError(f"the adapter's target_modules={config.target_modules!r} select "
                             f"{sorted(selected)[:4]}, but the model's AdaLoRA layers are {names[:4]}")
    else:
        names = find_target_modules(model, config.target_modules)
        if not names:
            raise ValueError(f"the adapter's target_modules={config.target_modules!r} match no nn.Linear in the model")
    keep = _keep_by_layer(config.rank_pattern)
    unknown = sorted(set(keep) - set(names))
    if unknown:
        raise ValueError(f"{source}: rank_pattern names {unknown[:4]}, which the adapter does not target "
                         f"({names[:4]}...)")
    _check_tensors(tensors, _expected_shapes(model, names, config, keep), keep, config.init_r)
    with unchanged_on_error(model):
        if not existing:
            apply_adalora(model, dataclasses.replace(config, rank_pattern=None, target_modules=names))
        layers = adalora_layers(model)
        with torch.no_grad():
            for name in names:
                layer = layers[name]
                mask = None
                if name in keep:
                    mask = torch.tensor(keep[name], dtype=torch.bool, device=layer.lora_E.device)
                for factor in FACTORS:
                    param, value = getattr(layer, factor), tensors[tensor_key(name, factor)].to(layer.lora_E)
                    if mask is None:
                        param.copy_(value)
                    else:  # the kept triplets go where the pattern marks them; pruned ones are zero
                        full = torch.zeros_like(param)
                        if factor == "lora_B":
                            full[:, mask] = value
                        else:
                            full[mask] = value
                        param.copy_(full)
                layer.alpha, layer.scaling, layer.dropout = config.alpha, float(config.alpha), config.dropout
                layer.rank_mask = mask
        model.adalora_config = config  # type: ignore[assignment]
    return model
