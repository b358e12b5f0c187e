"""``AdapterBank``: N LoRA adapters for one base model, stacked per served layer (notebook 12, sections 3 and 5).

The bank is what a multi-adapter server keeps next to the one resident base model: for every served layer the
adapters' ``A`` and ``s B`` stacked into a few tensors (:mod:`lorakit.serving.layout`), a table of which adapter
sits in which *slot* (the integer a request's ``adapter_id`` names), and the checks that make a wrong adapter a
clear error instead of a silently wrong answer::

    bank = AdapterBank(model, target_modules=["q_proj", "v_proj"], max_rank=16, capacity=32)
    caesar = bank.add("caesar", "adapters/caesar")       # a PEFT-format directory -> slot id 0
    bank.add("copy", trained_model)                      # or a lorakit LoRA model, or add_tensors(...)
    bank.remove("copy")                                  # at run time; the slot is free again
    bank.memory()                                        # bytes per adapter, padded vs exact

``capacity`` and ``max_rank`` are vLLM's ``max_loras`` and ``max_lora_rank``: the number of adapters resident at
once and the largest rank a slot holds. An adapter is refused (ValueError, bank unchanged) when its rank exceeds
``max_rank``, when it adapts a layer the base does not have or the bank does not serve, when a tensor's shape
disagrees with the base (an adapter trained for another base), when it is DoRA or PiSSA (neither is a pure
low-rank add on this base), or when its values do not fit the bank's dtype. Nothing can check that the base's
*values* are the ones the adapter was trained on: notebook 12 measures what happens when they are not.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorakit.lora import LoRALinear, lora_scaling
from lorakit.peft.config import DEFAULT_TARGETS, LoRAConfig
from lorakit.peft.io import PEFT_PREFIX, adapter_state_dict, check_directory, read_adapter_files
from lorakit.peft.targets import ALL_LINEAR, _name_matches, check_model, select_target_modules
from lorakit.serving.layout import LAYOUTS, GroupedLayout, LayerFactors, PaddedLayout, TokenPlan
from lorakit.serving.plan import BatchPlan, check_adapter_ids

__all__ = ["AdapterBank", "AdapterInfo"]


@dataclass(frozen=True)
class AdapterInfo:
    """One resident adapter: its slot (the id requests use), rank, scaling and the served layers it adapts."""

    name: str
    slot: int
    rank: int
    alpha: float
    rslora: bool
    scaling: float
    layers: tuple[str, ...]
    source: str


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class AdapterBank:
    """N LoRA adapters for the same base, stacked per served layer, scaling folded into ``B``; see the module doc.

    Args:
        model: the base model (its targeted layers must still be plain ``nn.Linear``; only their shapes, dtype
            and device are read, the model is not kept).
        target_modules: the layers the bank serves (PEFT's rules: suffixes, a regex or ``"all-linear"``).
            An adapter may adapt a subset of them; one that adapts any other layer is refused.
        max_rank: the largest rank a slot holds (vLLM's ``max_lora_rank``). capacity: how many adapters can be
            resident at once (vLLM's ``max_loras``). layout: ``"padded"`` or ``"grouped"``
            (:mod:`lorakit.serving.layout`). dtype: of the stacks (default: the base weights' dtype).
        device: of the stacks (default: the base weights' device).
    """

    def __init__(
        self,
        model: nn.Module,
        target_modules: Sequence[str] | str = DEFAULT_TARGETS,
        max_rank: int = 16,
        capacity: int = 8,
        layout: str = "padded",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        check_model(model)
        self.max_rank = _positive_int("max_rank", max_rank)
        self.capacity = _positive_int("capacity", capacity)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        names = select_target_modules(model, list(target_modules) if isinstance(target_modules, tuple)
                                      else target_modules)
        weights = {n: model.get_submodule(n).weight for n in names}
        dtypes = {w.dtype for w in weights.values()}
        if dtype is None and len(dtypes) > 1:
            raise TypeError(f"the targeted layers hold weights of several dtypes {sorted(map(str, dtypes))}: "
                            "pass dtype")
        self.dtype = dtype if dtype is not None else next(iter(dtypes))
        self.device = torch.device(device) if device is not None else next(iter(weights.values())).device
        self.layout = layout
        self.target_modules = target_modules
        self.shapes = {n: (model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in names}
        self.linear_names = {n: (m.in_features, m.out_features) for n, m in model.named_modules()
                             if isinstance(m, nn.Linear)}
        layout_cls = PaddedLayout if layout == "padded" else GroupedLayout
        self.storage = layout_cls(self.shapes, self.capacity, self.max_rank, self.dtype, self.device)
        self._slots: list[AdapterInfo | None] = [None] * self.capacity
        self.version = 0

    # ------------------------------------------------------------------------------------ the slot table
    @property
    def adapters(self) -> dict[str, AdapterInfo]:
        """``{name: AdapterInfo}`` of the resident adapters, by slot."""
        return {info.name: info for info in self._slots if info is not None}

    def __len__(self) -> int:
        return sum(info is not None for info in self._slots)

    def __contains__(self, name: object) -> bool:
        return name in self.adapters

    def info(self, adapter: str | int) -> AdapterInfo:
        """The :class:`AdapterInfo` of an adapter given by name or slot id; ValueError if it is not resident."""
        if isinstance(adapter, str):
            if adapter not in self.adapters:
                raise ValueError(f"adapter={adapter!r} is not in the bank (resident: {sorted(self.adapters)})")
            return self.adapters[adapter]
        if isinstance(adapter, bool) or not isinstance(adapter, numbers.Integral):
            raise TypeError(f"adapter must be a name (str) or a slot id (int), got {type(adapter).__name__}")
        if not 0 <= adapter < self.capacity or self._slots[adapter] is None:
            raise ValueError(f"adapter={adapter!r} is not an occupied slot (occupied: {self.occupied})")
        return self._slots[adapter]

    def id_of(self, name: str) -> int:
        """The slot id of adapter ``name`` (what ``adapter_ids`` holds for its requests)."""
        return self.info(name).slot

    @property
    def occupied(self) -> list[int]:
        return [i for i, info in enumerate(self._slots) if info is not None]

    # ------------------------------------------------------------------------------------ adding adapters
    def add(self, name: str, source: str | os.PathLike | nn.Module) -> int:
        """Load an adapter from a PEFT-format directory or a lorakit LoRA model into a free slot; return its id."""
        if not isinstance(source, (str, os.PathLike, nn.Module)):
            raise TypeError(f"source must be an adapter directory (str or os.PathLike) or a lorakit LoRA model, got "
                            f"{type(source).__name__}")
        if isinstance(source, nn.Module):
            layers = {n: m for n, m in source.named_modules() if isinstance(m, LoRALinear)}
            config = getattr(source, "lora_config", None)
            if not layers or not isinstance(config, LoRAConfig):
                raise ValueError("source model has no LoRA layers made by apply_lora/load_adapter (nothing to serve)")
            if any(m.merged for m in layers.values()):
                raise ValueError("source model's LoRA layers are merged: unmerge_lora first (the bank needs A and B)")
            return self.add_tensors(name, adapter_state_dict(source), config, source="model")
        directory = check_directory(source, must_exist=True)
        raw, tensors = read_adapter_files(Path(directory))
        if raw.get("peft_type") != "LORA":
            raise ValueError(f"{directory}: peft_type={raw.get('peft_type')!r}; the bank serves plain LoRA adapters")
        config = LoRAConfig.from_peft_dict(raw, source=str(Path(directory) / "adapter_config.json"))
        return self.add_tensors(name, tensors, config, source=str(directory))

    def add_tensors(self, name: str, tensors: Mapping[str, torch.Tensor], config: LoRAConfig,
                    source: str = "tensors") -> int:
        """Add an adapter given as PEFT-keyed tensors (``base_model.model.<layer>.lora_A.weight`` ...) + its config.

        Everything is checked before the first number is written; on any error the bank is unchanged.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        if name in self.adapters:
            raise ValueError(f"name={name!r} is already in the bank (remove it first to replace it)")
        if not isinstance(config, LoRAConfig):
            raise TypeError(f"config must be a lorakit.LoRAConfig, got {type(config).__name__}")
        if not isinstance(tensors, Mapping) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise TypeError("tensors must be a mapping of PEFT key -> tensor")
        free = [i for i, info in enumerate(self._slots) if info is None]
        if not free:
            raise ValueError(f"the bank is full (capacity={self.capacity}, vLLM's max_loras): remove an adapter first")
        factors, rank = self._validated_factors(name, tensors, config)
        scaling = lora_scaling(rank, config.alpha, config.rslora)
        slot = free[0]
        self.storage.write(slot, rank, factors)
        self._slots[slot] = AdapterInfo(name, slot, rank, config.alpha, config.rslora, scaling,
                                        tuple(n for n in self.shapes if factors.get(n) is not None), source)
        self.version += 1
        return slot

    def _validated_factors(self, name: str, tensors: Mapping[str, torch.Tensor],
                           config: LoRAConfig) -> tuple[LayerFactors, int]:
        where = f"adapter {name!r}"
        if config.use_dora:
            raise ValueError(f"{where} is DoRA (use_dora=True): its magnitude renormalises W0 + sBA per row, which is "
                             "not a low-rank add; serve it merged")
        if config.init == "pissa":
            raise ValueError(f"{where} is PiSSA: it was trained on the residual base W0 - U_r S_r V_r^T, not on this "
                             "base; save it with convert_pissa=True to serve it here")
        rank = config.r
        if rank > self.max_rank:
            raise ValueError(f"{where} has r={rank} > the bank's max_rank={self.max_rank} (vLLM's max_lora_rank): "
                             "build the bank with a larger max_rank")
        layers: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            for part in ("lora_A", "lora_B"):
                suffix = f".{part}.weight"
                if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
                    layers.setdefault(key[len(PEFT_PREFIX):-len(suffix)], {})[part] = value
                    break
            else:
                raise ValueError(f"{where}: unexpected tensor key {key!r} (a plain LoRA adapter holds only "
                                 f"{PEFT_PREFIX}<layer>.lora_A.weight / .lora_B.weight)")
        foreign = sorted(n for n in layers if n not in self.linear_names)
        if foreign:
            raise ValueError(f"{where} adapts {foreign[:4]}, which this base model does not have: an adapter for "
                             f"another base (its Linear layers are e.g. {sorted(self.linear_names)[:4]})")
        unserved = sorted(n for n in layers if n not in self.shapes)
        if unserved:
            raise ValueError(f"{where} adapts {unserved[:4]}, which the bank does not serve (target_modules="
                             f"{self.target_modules!r}); build the bank with those layers")
        selected = {n for n in self.linear_names if _selects(config.target_modules, n)}
        if selected != set(layers):
            raise ValueError(f"{where}: its config's target_modules={config.target_modules!r} selects "
                             f"{sorted(selected)[:4]} on this base but its weights adapt {sorted(layers)[:4]}: an "
                             "adapter for another base, or a corrupted one")
        scaling = lora_scaling(rank, config.alpha, config.rslora)
        factors: LayerFactors = {}
        for layer, parts in sorted(layers.items()):
            if set(parts) != {"lora_A", "lora_B"}:
                raise ValueError(f"{where}: layer {layer!r} has {sorted(parts)} but needs lora_A and lora_B")
            d_in, d_out = self.shapes[layer]
            a, b = parts["lora_A"], parts["lora_B"]
            for part, t, want in (("lora_A", a, (rank, d_in)), ("lora_B", b, (d_out, rank))):
                if tuple(t.shape) != want:
                    raise ValueError(f"{where}: {layer}.{part} has shape {tuple(t.shape)}, expected {want} for "
                                     f"r={rank} on this base (an adapter for another base?)")
                if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{where}: {layer}.{part} must hold finite floating-point values")
            a_cast = a.to(device=self.device, dtype=self.dtype)
            b_cast = (b.to(device=self.device, dtype=torch.float32) * scaling).to(self.dtype)
            if not (bool(torch.isfinite(a_cast).all()) and bool(torch.isfinite(b_cast).all())):
                raise ValueError(f"{where}: {layer} overflows the bank's dtype {self.dtype} (largest |value| "
                                 f"{max(a.abs().max().item(), b.abs().max().item() * scaling):.3g})")
            factors[layer] = (a_cast, b_cast)
        return factors, rank

    def remove(self, adapter: str | int) -> AdapterInfo:
        """Remove an adapter (by name or slot id) at run time; its slot is free for the next :meth:`add`."""
        info = self.info(adapter)
        self.storage.clear(info.slot, info.rank)
        self._slots[info.slot] = None
        self.version += 1
        return info

    def _grouped_positions(self) -> dict[int, tuple[int, int]]:
        return {info.slot: (info.rank, self.storage.position(info.slot, info.rank))
                for info in self._slots if info is not None}

    # ------------------------------------------------------------------------------------ batches
    def plan(self, adapter_ids: object, sort: bool = True) -> BatchPlan:
        """Validate one id per batch row (``-1``: base only) and prepare the kernels' metadata for the batch."""
        ids = check_adapter_ids(adapter_ids)
        occupied = set(self.occupied)
        bad = [(i, a) for i, a in enumerate(ids) if a != -1 and a not in occupied]
        if bad:
            raise ValueError(f"adapter_ids[{bad[0][0]}] = {bad[0][1]} is not an adapter in the bank (occupied slot "
                             f"ids: {sorted(occupied)}; -1 = base only)")
        return BatchPlan(self, ids, sort)

    def delta(self, layer: str, x: torch.Tensor, plan: TokenPlan, kernel: str, backend: str = "torch") -> torch.Tensor:
        """The adapters' contribution ``[T, d_out]`` to served layer ``layer`` for rows ``x [T, d_in]``."""
        return self.storage.delta(layer, x, plan, kernel, backend)

    # ------------------------------------------------------------------------------------ memory
    def nbytes(self) -> int:
        """Bytes the bank's stacks hold (allocated: a padded bank holds ``capacity`` slots even when empty)."""
        return sum(t.numel() * t.element_size() for t in self.storage.tensors())

    def adapter_nbytes(self, adapter: str | int) -> int:
        """Bytes one adapter occupies in this layout (padded: ``r_max``; grouped: its own rank), all served layers."""
        info = self.info(adapter)
        return self.storage.slot_numbers(info.rank) * self._element_size()

    def exact_nbytes(self, adapter: str | int) -> int:
        """Bytes of the adapter's own ``A`` and ``B`` in the bank dtype, ``r (d_in + d_out)`` per layer it adapts."""
        info = self.info(adapter)
        return sum(info.rank * sum(self.shapes[n]) for n in info.layers) * self._element_size()

    def _element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def memory(self) -> dict[str, object]:
        """Allocated bytes, and per adapter: rank, bytes occupied in this layout, exact bytes (notebook 12, sec. 5)."""
        per = {n: {"slot": i.slot, "rank": i.rank, "bytes": self.adapter_nbytes(n), "exact_bytes": self.exact_nbytes(n)}
               for n, i in self.adapters.items()}
        used = sum(p["bytes"] for p in per.values())
        exact = sum(p["exact_bytes"] for p in per.values())
        return {"layout": self.layout, "dtype": str(self.dtype).removeprefix("torch."),
                "allocated_bytes": self.nbytes(), "occupied_bytes": used, "exact_bytes": exact,
                "padding_overhead": (used / exact - 1.0) if exact else 0.0, "per_adapter": per}

    def __repr__(self) -> str:
        return (f"AdapterBank(layout={self.layout!r}, adapters={len(self)}/{self.capacity}, max_rank={self.max_rank}, "
                f"layers={len(self.shapes)}, dtype={self.dtype}, device={self.device})")


def _selects(targets: object, name: str) -> bool:
    """PEFT's target rule (lorakit.peft.targets) for one module name; ``all-linear`` skips ``lm_head``."""
    if targets == ALL_LINEAR:
        return name.split(".")[-1] != "lm_head"
    return _name_matches(name, targets)  # type: ignore[arg-type]

