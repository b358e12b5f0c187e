"""A QLoRA layer's frozen base, built per backend: a 4-bit layer, or the dense layer a merge leaves (notebook 08)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lorakit.qlora.bnb import bnb_linear4bit_from_linear
from lorakit.qlora.nf4_linear import NF4Linear

if TYPE_CHECKING:
    from lorakit.qlora.layer import QLoRALinear

__all__ = ["plain_linear_like", "quantize_base"]


def quantize_base(
    weight: torch.Tensor, bias: torch.Tensor | None, blocksize: int, double_quant: bool, compute_dtype: torch.dtype,
    backend: str, dtype: torch.dtype, quant_type: str = "nf4",
) -> nn.Module:
    """A frozen 4-bit layer of ``backend`` holding ``weight`` (quantized as given) and recording ``dtype``."""
    if backend in ("lorakit", "triton"):
        layer = NF4Linear.from_weight(weight, bias, blocksize, double_quant, compute_dtype, dtype=dtype,
                                      quant_type=quant_type)
        layer.matmul = "triton" if backend == "triton" else "pytorch"  # same storage, same state dict
        return layer
    out_features, in_features = weight.shape
    like = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    like.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        like.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return bnb_linear4bit_from_linear(like, blocksize, double_quant, compute_dtype, dtype=dtype, quant_type=quant_type)


def plain_linear_like(layer: QLoRALinear, dtype: torch.dtype, weight: torch.Tensor) -> nn.Linear:
    """A frozen ``nn.Linear`` with ``layer``'s shape, bias and device holding ``weight`` cast once to ``dtype``."""
    bias = getattr(layer.base, "bias", None)
    device = layer.lora_A.device
    linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().to(device=device, dtype=dtype), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().to(device=device, dtype=dtype).clone(), requires_grad=False)
    return linear
