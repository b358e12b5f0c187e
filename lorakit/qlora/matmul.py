"""``y = x dequant(Q(W))^T + b``: the 4-bit base matmul with its hand-written backward (notebook 08, eqs. 1-2).

The backward needs ``dL/dx = g dequant(Q(W))`` (eq. 2). Keeping the dequantized weight alive between
forward and backward would cost 2 bytes per weight per layer, the memory QLoRA set out to save, so the
backward dequantizes a second time. Only the frozen 4-bit state is kept for the backward (module state,
resident anyway; no activation is saved).

**Mixed precision.** Under ``torch.autocast`` the matmul runs in the autocast dtype (as autocast runs
``nn.Linear``), otherwise in ``compute_dtype``. Inside the function autocast is switched off, so the
dtypes are exactly the chosen ones in both passes, and each gradient is returned in its input's dtype.
So every combination of ``compute_dtype`` (fp32/bf16/fp16) and autocast dtype trains.

**Sync-free.** The function decodes with :func:`lorakit.nf4.kernels.decode_weight` (no validation, no
host sync, no float64 arithmetic, one weight-sized tensor at a time), so ``torch.compile(fullgraph=True)`` captures
forward and backward without a graph break (``tests/test_qlora_compile.py``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from lorakit.nf4 import kernels

__all__ = ["matmul_dtype", "nf4_linear"]


def matmul_dtype(x: Tensor, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype the base matmul runs in: autocast's for ``x``'s device when it is on, else ``compute_dtype``."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return compute_dtype


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _NF4MatmulFunction(torch.autograd.Function):
    """``y = x W^T + b`` with ``W = dequant(state)`` rebuilt in forward and again in backward (eq. 2)."""

    @staticmethod
    def forward(ctx, x, bias, packed, absmax, table, nested_absmax, nested_offset, nested_code,  # type: ignore[override]
                shape, blocksize, nested_blocksize, compute_dtype):
        dtype = matmul_dtype(x, compute_dtype)
        state = (packed, absmax, table, nested_absmax, nested_offset, nested_code)
        with _no_autocast(x.device.type):
            weight = kernels.decode_weight(packed, absmax, table, shape, blocksize, dtype, nested_absmax,
                                           nested_offset, nested_code, nested_blocksize)
            out = F.linear(x.to(dtype), weight, None if bias is None else bias.to(dtype))
        # the frozen 4-bit state is module state, not an activation: kept as attributes, not save_for_backward
        ctx.state, ctx.meta = state, (shape, blocksize, nested_blocksize, dtype, x.dtype)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        packed, absmax, table, nested_absmax, nested_offset, nested_code = ctx.state
        shape, blocksize, nested_blocksize, dtype, x_dtype = ctx.meta
        grad_x = grad_b = None
        with _no_autocast(g.device.type):
            if ctx.needs_input_grad[0]:
                weight = kernels.decode_weight(packed, absmax, table, shape, blocksize, dtype, nested_absmax,
                                               nested_offset, nested_code, nested_blocksize)
                grad_x = (g.to(dtype) @ weight).to(x_dtype)  # eq. 2, W rebuilt on the fly
            if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
                grad_b = g.reshape(-1, g.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_b, None, None, None, None, None, None, None, None, None, None


def nf4_linear(
    x: Tensor, packed: Tensor, bias: Tensor | None, absmax: Tensor, table: Tensor, shape: tuple[int, int],
    blocksize: int, compute_dtype: torch.dtype, nested_absmax: Tensor | None = None,
    nested_offset: Tensor | None = None, nested_code: Tensor | None = None, nested_blocksize: int = 256,
) -> Tensor:
    """``x W^T + b`` for the 4-bit weight given by its (already checked) state, in :func:`matmul_dtype`.

    The result is in the matmul dtype; :class:`~lorakit.qlora.NF4Linear` casts it back to ``x.dtype``.
    """
    return _NF4MatmulFunction.apply(x, bias, packed, absmax, table, nested_absmax, nested_offset, nested_code,
                                    tuple(shape), blocksize, nested_blocksize, compute_dtype)
