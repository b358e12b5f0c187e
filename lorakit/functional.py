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
bypass is then computed in the adapter dtype and the sum cast back to the base output dtype.
"""

from __future__ import annotations

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
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a number in [0, 1), got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


class LoRALinearFunction(torch.autograd.Function):
    """``h = x W^T + b + s (x_d A^T) B^T`` on 2-D ``x``, with the backward of eqs. 2-4."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, A, B, scaling, mask, keep_scale):  # type: ignore[override]
        x_d = x if mask is None else x * mask * keep_scale
        x_d = x_d.to(A.dtype)
        u = x_d @ A.t()  # [n, r]: the only intermediate of the bypass
        base = torch.nn.functional.linear(x, weight, bias)
        if base.dtype == A.dtype:
            out = base.addmm_(u, B.t(), alpha=scaling)
        else:  # wider adapters: add in the adapter dtype, return the base dtype (as PEFT)
            out = torch.addmm(base.to(A.dtype), u, B.t(), alpha=scaling).to(base.dtype)
        ctx.save_for_backward(x if weight.requires_grad else None, x_d, weight, A, B, u, mask)
        ctx.scaling, ctx.keep_scale, ctx.has_bias = scaling, keep_scale, bias is not None
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):  # type: ignore[override]
        x, x_d, weight, A, B, u, mask = ctx.saved_tensors
        s = ctx.scaling
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
                    bypass.mul_(mask).mul_(ctx.keep_scale)
                grad_x.add_(bypass.to(weight.dtype))
        if ctx.needs_input_grad[1]:
            grad_w = g.t().to(x.dtype) @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        if ctx.needs_input_grad[3]:
            grad_A = (gB.t() @ x_d).mul_(s)  # eq. 3
        if ctx.needs_input_grad[4]:
            grad_B = (g_a.t() @ u).mul_(s)  # eq. 2
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
