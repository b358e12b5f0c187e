"""A 4-bit tensor as state-dict entries, in bitsandbytes' format (so checkpoints move between backends).

bitsandbytes' ``Linear4bit`` (and so transformers' 4-bit checkpoints) writes a quantized weight as::

    <name>                                    the packed codes (uint8 [ceil(n/2), 1], or viewed as another
                                              dtype: bitsandbytes' ``quant_storage``)
    <name>.absmax                             float32 [n_blocks], or uint8 codes when double-quantized
    <name>.quant_map                          the 16 float32 levels
    <name>.nested_absmax                      double quantization: float32 scales, one per 256 blocks
    <name>.nested_quant_map                   double quantization: the 8-bit dynamic code, float32 [256]
    <name>.quant_state.bitsandbytes__nf4      a uint8 tensor holding UTF-8 JSON: quant_type, blocksize,
                                              dtype, shape (+ nested_blocksize, nested_dtype, nested_offset)

:func:`quant_state_entries` writes exactly these entries for a :class:`~lorakit.nf4.QuantizedTensor`
(the JSON bytes equal bitsandbytes' ``QuantState.as_dict(packed=True)``; a test checks it), and
:func:`quantized_from_state` reads them back, checking everything: a malformed, truncated or mismatched
entry is a ValueError naming the key, never a silently wrong weight. Everything is plain tensors and
JSON: safetensors can store it, and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math

import torch

from lorakit.nf4.codes import NF4_OFFSET, _dynamic_code_cached, _nf4_code_cached, fp4_code, is_code
from lorakit.nf4.containers import DoubleQuantizedAbsmax, QuantizedTensor
from lorakit.nf4.validation import BLOCKSIZES, n_blocks

__all__ = [
    "DTYPE_NAMES", "QUANT_STATE_KEY", "STATE_ENTRIES", "check_same_format", "pack_json", "packed_as_storage",
    "quant_state_entries", "quant_type_of", "quantized_from_state", "unpack_json",
]

#: The JSON entry's key, followed by the quant type (``nf4``, ``fp4``).
QUANT_STATE_KEY = "quant_state.bitsandbytes__"
#: The tensor entries besides the JSON one, in bitsandbytes' order.
STATE_ENTRIES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
#: dtype names as bitsandbytes writes them.
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NAME_OF = {v: k for k, v in DTYPE_NAMES.items()}


def quant_type_of(code: torch.Tensor) -> str:
    """``"nf4"``, ``"fp4"`` (bitsandbytes' two types) or ``"custom"`` (another 16-level code)."""
    if is_code(code, _nf4_code_cached(NF4_OFFSET)):
        return "nf4"
    if is_code(code, fp4_code()):
        return "fp4"
    return "custom"


def pack_json(values: dict) -> torch.Tensor:
    """``values`` as UTF-8 JSON bytes in a uint8 tensor (bitsandbytes' ``pack_dict_to_tensor``)."""
    return torch.tensor(list(json.dumps(values).encode("utf-8")), dtype=torch.uint8)


def unpack_json(tensor: object, key: str) -> dict:
    """The JSON object held by ``tensor``; ValueError naming ``key`` if it is not UTF-8 JSON bytes."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(f"{key} must be a 1-D uint8 tensor of UTF-8 JSON bytes")
    try:
        values = json.loads(bytes(tensor.detach().cpu().numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{key} does not hold valid UTF-8 JSON ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{key} must hold a JSON object, got {type(values).__name__}")
    return values


def packed_as_storage(packed: torch.Tensor, quant_storage: torch.dtype) -> torch.Tensor:
    """The packed bytes viewed as ``quant_storage``, shaped ``[k, 1]`` (bitsandbytes' layout; FSDP can shard it)."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    if not isinstance(quant_storage, torch.dtype):
        raise TypeError(f"quant_storage must be a torch.dtype, got {type(quant_storage).__name__}")
    itemsize = torch.empty(0, dtype=quant_storage).element_size()
    if packed.numel() % itemsize:
        raise ValueError(f"quant_storage={quant_storage} needs the packed byte count ({packed.numel()}) to be a "
                         f"multiple of {itemsize}")
    return packed.contiguous().view(quant_storage).view(-1, 1)


def quant_state_entries(q: QuantizedTensor) -> dict[str, torch.Tensor]:
    """``q``'s quantization state as bitsandbytes' entries (everything but the packed codes), see the module doc."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    quant_type = quant_type_of(q.code)
    meta: dict[str, object] = {"quant_type": quant_type, "blocksize": q.blocksize, "dtype": _NAME_OF[q.dtype],
                               "shape": list(q.shape)}
    entries: dict[str, torch.Tensor] = {}
    if isinstance(q.absmax, DoubleQuantizedAbsmax):
        dq = q.absmax
        entries["absmax"] = dq.codes
        entries["quant_map"] = q.code
        entries["nested_absmax"] = dq.scales
        entries["nested_quant_map"] = _dynamic_code_cached(True).to(dq.device, copy=True)  # a fresh copy per save
        meta.update({"nested_blocksize": dq.blocksize, "nested_dtype": "float32", "nested_offset": float(dq.offset)})
    else:
        entries["absmax"] = q.absmax
        entries["quant_map"] = q.code
    entries[QUANT_STATE_KEY + quant_type] = pack_json(meta)
    return entries


def _int_field(meta: dict, name: str, key: str) -> int:
    value = meta.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: field {name!r} must be an int, got {value!r}")
    return value


def quantized_from_state(packed: object, entries: dict[str, object], where: str = "") -> QuantizedTensor:
    """The :class:`~lorakit.nf4.QuantizedTensor` stored as ``packed`` (the codes, any storage dtype) plus the
    entries of :func:`quant_state_entries` (keys without the weight's prefix), fully checked.

    ``where`` is the weight's state-dict key, used in every error message.
    """
    if not isinstance(where, str):
        raise TypeError(f"where must be a str, got {type(where).__name__}")
    if not isinstance(entries, dict):
        raise TypeError(f"entries must be a dict of the quantization entries, got {type(entries).__name__}")
    name = where or "weight"
    if not isinstance(packed, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of packed 4-bit codes, got {type(packed).__name__}")
    json_keys = [k for k in entries if k.startswith(QUANT_STATE_KEY)]
    unknown = sorted(k for k in entries if k not in STATE_ENTRIES and not k.startswith(QUANT_STATE_KEY))
    if unknown:
        raise ValueError(f"{name}: unexpected quantization entries {[f'{name}.{k}' for k in unknown]}")
    if len(json_keys) != 1:
        raise ValueError(f"{name}: expected exactly one {name}.{QUANT_STATE_KEY}<type> entry (the JSON "
                         f"metadata), found {len(json_keys)}")
    key = f"{name}.{json_keys[0]}"
    meta = unpack_json(entries[json_keys[0]], key)
    quant_type = meta.get("quant_type")
    if quant_type != json_keys[0].removeprefix(QUANT_STATE_KEY):
        raise ValueError(f"{key}: quant_type {quant_type!r} does not match the key")
    blocksize = _int_field(meta, "blocksize", key)
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"{key}: blocksize must be a power of two in [32, 4096], got {blocksize}")
    if meta.get("dtype") not in DTYPE_NAMES:
        raise ValueError(f"{key}: dtype must be one of {sorted(DTYPE_NAMES)}, got {meta.get('dtype')!r}")
    dtype = DTYPE_NAMES[meta["dtype"]]
    shape = meta.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                        for s in shape)):
        raise ValueError(f"{key}: shape must be a non-empty list of positive ints, got {shape!r}")
    numel = math.prod(shape)
    try:
        raw = packed.detach().contiguous().reshape(-1).view(torch.uint8)
    except RuntimeError as err:
        raise ValueError(f"{name}: cannot read the packed codes as bytes ({err})") from None
    if raw.numel() != (numel + 1) // 2:
        raise ValueError(f"{name} holds {raw.numel()} bytes of packed codes, but shape {shape} needs "
                         f"{(numel + 1) // 2}")
    for entry in ("absmax", "quant_map"):
        if not isinstance(entries.get(entry), torch.Tensor):
            raise ValueError(f"{name}.{entry} is missing or not a tensor")
    code = entries["quant_map"].detach()
    if code.dtype != torch.float32 or code.shape != (16,):
        raise ValueError(f"{name}.quant_map must be float32 of shape (16,), got {code.dtype} {tuple(code.shape)}")
    nested = "nested_absmax" in entries or "nested_quant_map" in entries or "nested_offset" in meta
    absmax = entries["absmax"].detach()
    blocks = n_blocks(numel, blocksize)
    stored: torch.Tensor | DoubleQuantizedAbsmax
    if nested:
        scales, dyn = entries.get("nested_absmax"), entries.get("nested_quant_map")
        if not isinstance(scales, torch.Tensor) or not isinstance(dyn, torch.Tensor):
            raise ValueError(f"{name}: a double-quantized absmax needs both {name}.nested_absmax and "
                             f"{name}.nested_quant_map")
        if dyn.dtype != torch.float32 or not is_code(dyn, _dynamic_code_cached(True)):
            raise ValueError(f"{name}.nested_quant_map must be bitsandbytes' signed 8-bit dynamic code (256 float32 "
                             "levels); lorakit decodes nested absmax with that code only")
        nested_blocksize = _int_field(meta, "nested_blocksize", key)
        if nested_blocksize not in BLOCKSIZES:
            raise ValueError(f"{key}: nested_blocksize must be a power of two in [32, 4096], got {nested_blocksize}")
        if meta.get("nested_dtype") != "float32":
            raise ValueError(f"{key}: nested_dtype must be 'float32', got {meta.get('nested_dtype')!r}")
        offset = meta.get("nested_offset")
        if isinstance(offset, bool) or not isinstance(offset, (int, float)):
            raise ValueError(f"{key}: nested_offset must be a number, got {offset!r}")
        if absmax.dtype != torch.uint8 or absmax.shape != (blocks,):
            raise ValueError(f"{name}.absmax (double-quantized) must be uint8 codes of shape ({blocks},), got "
                             f"{absmax.dtype} {tuple(absmax.shape)}")
        try:
            stored = DoubleQuantizedAbsmax(absmax, scales.detach(), float(offset), nested_blocksize)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: {err}") from None
    else:
        if absmax.dtype != torch.float32 or absmax.shape != (blocks,):
            raise ValueError(f"{name}.absmax must be float32 of shape ({blocks},) ({numel} elements in blocks of "
                             f"{blocksize}), got {absmax.dtype} {tuple(absmax.shape)}")
        stored = absmax
    try:
        return QuantizedTensor(raw, stored, torch.Size(shape), dtype, blocksize, code)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: {err}") from None

def check_same_format(q: QuantizedTensor, expected: QuantizedTensor, key: str) -> None:
    """ValueError naming ``key`` unless ``q`` has ``expected``'s shape, dtype, blocksize, absmax form and levels."""
    problems = []
    if q.shape != expected.shape:
        problems.append(f"shape {list(q.shape)} (the layer's is {list(expected.shape)})")
    if q.dtype != expected.dtype:
        problems.append(f"dtype {q.dtype} (the layer's is {expected.dtype})")
    if q.blocksize != expected.blocksize:
        problems.append(f"blocksize {q.blocksize} (the layer's is {expected.blocksize})")
    if q.double_quant != expected.double_quant:
        problems.append(f"double_quant={q.double_quant} (the layer's is {expected.double_quant})")
    elif q.double_quant and q.absmax.blocksize != expected.absmax.blocksize:
        problems.append(f"nested blocksize {q.absmax.blocksize} (the layer's is {expected.absmax.blocksize})")
    if not is_code(q.code, expected.code.detach().cpu()):
        problems.append("other 4-bit levels (quant_map) than the layer's")
    if problems:
        raise ValueError(f"{key} describes another 4-bit weight than this layer holds: " + "; ".join(problems))
