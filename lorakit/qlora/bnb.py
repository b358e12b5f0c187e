"""The ``"bitsandbytes"`` backend: QLoRA's base as ``bitsandbytes.nn.Linear4bit``, the layer PEFT uses (notebook 08).

Its state dict already has the layout lorakit's :class:`~lorakit.qlora.NF4Linear` writes (bitsandbytes
defined it), but ``Linear4bit`` does not *load* it through ``load_state_dict``: the quantization entries
come back as unexpected keys (transformers loads them through its own quantizer). :func:`bnb_linear4bit_from_linear`
therefore registers a load pre-hook on each layer it makes: the hook checks the entries exactly as
``NF4Linear`` does (:func:`check_bnb_state`), then installs them as the layer's ``QuantState``, so a QLoRA
model with this backend saves and loads whole, and a state dict saved with one backend loads into the other.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lorakit.nf4.codes import dynamic_code_on
from lorakit.nf4.containers import DoubleQuantizedAbsmax, QuantizedTensor
from lorakit.nf4.serialization import check_same_format, quantized_from_state
from lorakit.qlora.checks import COMPUTE_DTYPES, bnb, check_dtype

__all__ = ["bnb_dequantize", "bnb_linear4bit_from_linear", "bnb_quantized", "check_bnb_state"]


def bnb_linear4bit_from_linear(
    linear: nn.Linear,
    blocksize: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    weight: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    quant_type: str = "nf4",
) -> nn.Module:
    """``bitsandbytes.nn.Linear4bit`` (NF4, or ``quant_type="fp4"``) holding ``linear``'s weight (or ``weight``).

    ``dtype`` is recorded as the original weight's dtype (default: the dtype of the tensor quantized), so a
    weight summed in fp32 can be quantized as it is (one rounding) and still remember it came from bf16.

    bitsandbytes quantizes a ``Params4bit`` when it is first moved to a device (``Params4bit.to``), CPU
    included, so the weight is wrapped and moved to the device it already lives on. The layer is built
    on the meta device first, so no random full-precision weight is allocated. bitsandbytes' CPU
    inference fast path repacks the weight in place into another layout on the first eval-mode forward
    (CPUs with AVX512-BF16); it is switched off here so the stored bytes stay NF4's (and comparable).
    """
    lib = bnb()
    w = linear.weight.detach() if weight is None else weight.detach()
    layer = lib.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=compute_dtype,
        compress_statistics=double_quant, quant_type=quant_type, device="meta",
    )
    layer.weight = lib.nn.Params4bit(
        w.contiguous(), requires_grad=False, blocksize=blocksize, compress_statistics=double_quant,
        quant_type=quant_type, module=layer,
    ).to(w.device)
    if dtype is not None:
        check_dtype("dtype", dtype, COMPUTE_DTYPES)
        layer.weight.quant_state.dtype = dtype
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    layer.support_avx512bf16_for_cpu = False
    layer.register_load_state_dict_pre_hook(_load_pre_hook)
    if w.device.type == "cpu" and linear.in_features % blocksize != 0:
        warnings.warn(
            f"in_features={linear.in_features} is not a multiple of blocksize={blocksize}: bitsandbytes' CPU "
            "dequantize kernel (0.50.2) was measured to decode such layers wrongly; use backend='lorakit'",
            UserWarning, stacklevel=3,
        )
    return layer


def bnb_quantized(layer: nn.Module) -> QuantizedTensor:
    """A :class:`~lorakit.nf4.QuantizedTensor` view of a ``Linear4bit``'s bytes and quantization state."""
    qs = layer.weight.quant_state
    packed = layer.weight.data.reshape(-1).view(torch.uint8)
    absmax: torch.Tensor | DoubleQuantizedAbsmax = qs.absmax
    if qs.nested:
        absmax = DoubleQuantizedAbsmax.trusted(qs.absmax, qs.state2.absmax, float(qs.offset), qs.state2.blocksize)
    return QuantizedTensor.trusted(packed, absmax, qs.shape, qs.dtype, qs.blocksize, qs.code)


def bnb_dequantize(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight rebuilt by bitsandbytes, as exact float32 products, then cast once to ``dtype``."""
    qs = copy.copy(layer.weight.quant_state)
    qs.dtype = torch.float32  # bitsandbytes rounds to quant_state.dtype; ask for the fp32 products instead
    return bnb().functional.dequantize_4bit(layer.weight.data, qs).to(dtype)


def check_bnb_state(layer: nn.Module, state_dict: dict, prefix: str = "") -> QuantizedTensor | None:
    """Check a ``Linear4bit``'s entries of ``state_dict`` without loading them (as ``NF4Linear.check_state``)."""
    key = prefix + "weight"
    entries = {k[len(key) + 1:]: v for k, v in state_dict.items() if k.startswith(key + ".")}
    if key not in state_dict:
        if entries:
            raise ValueError(f"{key} (the packed codes) is missing, but its quantization entries are present")
        return None
    q = quantized_from_state(state_dict[key], entries, key)
    check_same_format(q, bnb_quantized(layer), key)
    bias = state_dict.get(prefix + "bias")
    if bias is not None:
        if layer.bias is None:
            raise ValueError(f"{prefix}bias is in the state dict but this layer has no bias")
        if not isinstance(bias, torch.Tensor) or bias.shape != layer.bias.shape or not bias.is_floating_point():
            raise ValueError(f"{prefix}bias must be a float tensor of shape {tuple(layer.bias.shape)}")
        if not bool(torch.isfinite(bias).all()):
            raise ValueError(f"{prefix}bias contains NaN or inf")
    return q


def _load_pre_hook(layer, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Check, then install the quantization state; the default loader then copies the codes and the bias."""
    q = check_bnb_state(layer, state_dict, prefix)
    if q is None:
        return
    key = prefix + "weight"
    for k in [k for k in state_dict if k.startswith(key + ".")]:
        del state_dict[k]
    device = layer.weight.device
    state_dict[key] = q.packed.view(layer.weight.shape)  # the bytes as the layer stores them (any quant_storage)
    lib = bnb()
    qs = layer.weight.quant_state
    absmax = q.absmax
    code = q.code.to(device, copy=True)
    if isinstance(absmax, DoubleQuantizedAbsmax):
        state2 = lib.functional.QuantState(absmax=absmax.scales.to(device, copy=True),
                                           code=dynamic_code_on(device).clone(), blocksize=absmax.blocksize,
                                           dtype=torch.float32)
        new = lib.functional.QuantState(
            absmax=absmax.codes.to(device, copy=True), shape=q.shape, code=code, blocksize=q.blocksize,
            quant_type=qs.quant_type, dtype=q.dtype,
            offset=torch.tensor(absmax.offset, dtype=torch.float32, device=device), state2=state2)
    else:
        new = lib.functional.QuantState(absmax=absmax.to(device, copy=True), shape=q.shape, code=code,
                                        blocksize=q.blocksize, quant_type=qs.quant_type, dtype=q.dtype)
    layer.weight.quant_state = new
    layer.quant_state = new
