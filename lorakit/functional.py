"""The LoRA forward with a hand-derived backward (notebook 01, equations 1-4).

For a frozen base weight ``W [out, in]`` (bias ``b``), adapters ``A [r, in]``, ``B [out, r]`` and
scaling ``s``, a LoRA layer computes, for an input row ``x`` (eq. 1)::

    h = W x + b + s * B (A x)

The bypass is evaluated right to left, ``u = A x`` (``r`` numbers) then ``B u``, so ``B @ A`` (an
``[out, in]`` matrix) is never formed. With ``g = dL/dh`` the chain rule gives (eqs. 2-4)::

    dL/dB = s * g u^T            = s * g (A x)^T        [out, r]
    dL/dA = s * (B^T g) x^T                             [r, in]
    dL/dx = W^T g + s * A^T (B^T g)                     [in]

and, only if the base is trainable, ``dL/dW = g x^T``, ``dL/db = g``. Summed over a batch of rows
these are the matrix products in :class:`LoRALinearFunction.backward`. Dropout (on the bypass only)
replaces ``x`` by ``x_d = x * mask / (1 - p)`` in ``u`` and ``dL/dA``, and multiplies the bypass part
of ``dL/dx`` by ``mask / (1 - p)``.

Adapters may be kept in a wider dtype than the base (PEFT keeps fp32 adapters on a bf16 base): the
bypass is then computed in the adapter dtype and the sum cast back to the base output dtype. Under
``torch.autocast`` (mixed-precision training, the usual GPU set-up) everything is computed in the autocast
dtype, as autocast computes ``nn.Linear``, and each gradient comes back in its input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_lora_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None, A: Tensor, B: Tensor, scaling: float, dropout_p: float
) -> None:
    """TypeError/ValueError naming the argument unless :func:`lora_linear`'s inputs fit together (shared with DoRA)."""
    if not all(isinstance(t, Tensor) for t in (x, weight, A, B)):
        raise TypeError("x, weight, A and B must be torch.Tensor")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if weight.dim() != 2 or A.dim() != 2 or B.dim() != 2:
        raise ValueError(f"weight, A, B must be 2-D, got {weight.dim()}-D, {A.dim()}-D, {B.dim()}-D")
    out_f, in_f = weight.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim but weight expects {in_f}")
    if A.shape[1] != in_f or B.shape[0] != out_f or A.shape[0] != B.shape[1]:
        raise ValueError(
            f"expected A [r, {in_f}] and B [{out_f}, r]; got A {tuple(A.shape)} and B {tuple(B.shape)}"
        )
    if bias is not None and bias.shape != (out_f,):
        raise ValueError(f"bias must have shape ({out_f},), got {tuple(bias.shape)}")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise TypeError(f"scaling must be a Python number, got {type(scaling).__name__}")
    if not math.isfinite(scaling):
        raise ValueError(f"scaling must be a finite number, got {scaling}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a number in [0, 1), got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes matmuls in on ``device_type`` right now, or None when it is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


class LoRALinearFunction(torch.autograd.Function):
    """``h = x W^T + b + s (x_d A^T) B^T`` on 2-D ``x``, with the backward of eqs. 2-4.

    Mixed precision: under ``torch.autocast`` every matmul runs in the autocast dtype (as autocast would run
    ``nn.Linear``), autocast itself is switched off inside, and the backward casts each gradient back to the
    dtype of its input (fp32 master adapters get fp32 gradients). The weight is saved as it is (not its
    low-precision copy) and cast again in the backward, so autocast adds no weight-sized activation.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scaling, mask, keep_scale):  # type: ignore[override]
        device_type = x.device.type
        compute = autocast_dtype(device_type)
        ctx.device_type, ctx.compute = device_type, compute
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype, A.dtype, B.dtype)
        with torch.autocast(device_type, enabled=False):
            if compute is not None:  # autocast: everything in its dtype
                x_c, w_c, b_c, A_c, B_c = x.to(compute), weight.to(compute), _cast(bias, compute), A.to(compute), \
                    B.to(compute)
            else:  # adapters may be wider than the base (fp32 adapters on a bf16 base, as PEFT)
                x_c, w_c, b_c, A_c, B_c = x, weight, bias, A, B
            x_d = x_c if mask is None else x_c * mask.to(x_c.dtype) * keep_scale
            x_d = x_d.to(A_c.dtype)
            u = x_d @ A_c.t()  # [n, r]: the only intermediate of the bypass
            base = torch.nn.functional.linear(x_c, w_c, b_c)
            if base.dtype == A_c.dtype:
                out = base.addmm_(u, B_c.t(), alpha=scaling)
            else:  # wider adapters: add in the adapter dtype, return the base dtype (as PEFT)
                out = torch.addmm(base.to(A_c.dtype), u, B_c.t(), alpha=scaling).to(base.dtype)
        ctx.save_for_backward(x_c if weight.requires_grad else None, x_d, weight, A, B, u, mask)
        ctx.scaling, ctx.keep_scale, ctx.has_bias = scaling, keep_scale, bias is not None
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, x_d, weight, A, B, u, mask = ctx.saved_tensors
        s, compute = ctx.scaling, ctx.compute
        x_dtype, w_dtype, b_dtype, a_dtype, b_dtype_B = ctx.dtypes
        with torch.autocast(ctx.device_type, enabled=False):
            if compute is not None:
                weight, A, B, g = weight.to(compute), A.to(compute), B.to(compute), g.to(compute)
            g_a = g.to(A.dtype)
            gB = g_a @ B  # [n, r] = (B^T g) for every row
            grad_x = grad_w = grad_b = grad_A = grad_B = None
            if ctx.needs_input_grad[0]:
                grad_x = g.to(weight.dtype) @ weight  # eq. 4, first term
                if mask is None and gB.dtype == grad_x.dtype:
                    grad_x.addmm_(gB, A, alpha=s)  # eq. 4, second term, added in place (no [n, in] temporary)
                else:
                    bypass = (gB @ A).mul_(s)
                    if mask is not None:
                        bypass.mul_(mask.to(bypass.dtype)).mul_(ctx.keep_scale)
                    grad_x.add_(bypass.to(weight.dtype))
                grad_x = grad_x.to(x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (g.t().to(x.dtype) @ x).to(w_dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g.sum(0).to(b_dtype)
            if ctx.needs_input_grad[3]:
                grad_A = (gB.t() @ x_d.to(gB.dtype)).mul_(s).to(a_dtype)  # eq. 3
            if ctx.needs_input_grad[4]:
                grad_B = (g_a.t() @ u.to(g_a.dtype)).mul_(s).to(b_dtype_B)  # eq. 2
        return grad_x, grad_w, grad_b, grad_A, grad_B, None, None, None


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    A: Tensor,
    B: Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
) -> Tensor:
    """LoRA forward ``x W^T + b + scaling * dropout(x) A^T B^T`` with the hand-derived backward.

    ``x`` is ``[..., in]``; ``weight`` ``[out, in]``; ``A`` ``[r, in]``; ``B`` ``[out, r]``. Dropout
    (probability ``dropout_p``, only when ``training``) acts on the bypass input only, never on the
    base path. Notebook 01 derives the backward and checks it against autograd and ``gradcheck``.
    """
    check_lora_inputs(x, weight, bias, A, B, scaling, dropout_p)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    mask, keep_scale = None, 1.0
    if training and dropout_p > 0:
        mask = torch.empty_like(x2).bernoulli_(1.0 - dropout_p)
        keep_scale = 1.0 / (1.0 - dropout_p)
    out = LoRALinearFunction.apply(x2, weight, bias, A, B, float(scaling), mask, keep_scale)
    return out.reshape(*lead, weight.shape[0])


def lora_linear_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, A: Tensor, B: Tensor, scaling: float
) -> Tensor:
    """The same forward written with plain autograd ops (no custom backward), for checks."""
    base = torch.nn.functional.linear(x, weight, bias)
    return (base.to(A.dtype) + scaling * ((x.to(A.dtype) @ A.t()) @ B.t())).to(base.dtype)
