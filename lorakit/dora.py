"""DoRA: weight-decomposed low-rank adaptation (notebook 09; Liu et al. 2024, arXiv:2402.09353).

Weight normalization (Salimans & Kingma 2016) writes every output row ``i`` of a weight ``W [out, in]``
as a length times a unit direction, ``W[i] = m_i * V[i] / ||V[i]||``. DoRA starts from the pretrained
weight (``m = ||W0||`` row-wise, ``V = W0``), trains the magnitude vector ``m`` directly and moves the
direction with a LoRA update (notebook 09, eq. 2)::

    W' = diag(m / ||W0 + s B A||) (W0 + s B A)        (||.|| per output row: norm over dim=1)
    h  = W' x + b                                     (the bias is not rescaled)

``m`` is initialised to the row norms of ``W0``, so with ``B = 0`` the layer starts exactly at ``W0``.
As in the DoRA paper (section 4.3) and Hugging Face PEFT, the norm ``||W0 + s B A||`` is treated as a
constant in backpropagation (*detached*): it follows ``B A`` in the forward pass but receives no gradient,
which saves the memory of the ``[out, in]`` graph through the norm (notebook 09, section 3 shows how the
gradients change).

The forward is PEFT's (``peft/tuners/lora/dora.py``), term by term; with ``f = m / ||W0 + s B A||`` (a row
vector over outputs) and ``x_d`` the input after dropout (``x_d = x`` in eval mode or with ``dropout=0``)::

    h = (W0 x + b) + (f - 1) * (W0 x_d) + f * s * B A x_d      (eq. 3)

which equals ``W' x + b`` when ``x_d = x``. With dropout in training the base path sees ``x`` once
undropped and once dropped, as in PEFT (two base matmuls).

``merge()`` overwrites ``W0`` with ``W'`` and keeps the vector ``f`` it used; ``unmerge()`` recovers
``W0 = W' / f - s B A`` (PEFT's recipe), exact up to rounding (tests/test_dora.py measures it).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorakit.functional import check_lora_inputs
from lorakit.lora import LoRALinear, MergeWarning

__all__ = ["DoRALinear", "dora_linear", "dora_weight_norm", "magnitude_direction_change"]


def dora_weight_norm(weight: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """``||W0 + s B A||`` per output row (norm over dim=1), computed in the adapter dtype (notebook 09, eq. 2).

    The result carries gradients to ``A`` and ``B`` when they require grad; :func:`dora_linear` detaches it.
    """
    if not all(isinstance(t, Tensor) for t in (weight, A, B)):
        raise TypeError("weight, A and B must be torch.Tensor")
    if weight.dim() != 2 or A.dim() != 2 or B.dim() != 2:
        raise ValueError(f"weight, A, B must be 2-D, got {weight.dim()}-D, {A.dim()}-D, {B.dim()}-D")
    if A.shape[1] != weight.shape[1] or B.shape[0] != weight.shape[0] or A.shape[0] != B.shape[1]:
        raise ValueError(f"expected A [r, {weight.shape[1]}] and B [{weight.shape[0]}, r] for weight "
                         f"{tuple(weight.shape)}; got A {tuple(A.shape)} and B {tuple(B.shape)}")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise TypeError(f"scaling must be a Python number, got {type(scaling).__name__}")
    if not math.isfinite(scaling):
        raise ValueError(f"scaling must be finite, got {scaling}")
    dtype = A.dtype
    V = weight.to(dtype) + scaling * (B @ A)
    return torch.linalg.norm(V, dim=1)


def _check_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None, A: Tensor, B: Tensor, magnitude: Tensor, scaling: float,
    dropout_p: float,
) -> None:
    """LoRA's input checks (:func:`lorakit.functional.lora_linear`) plus the magnitude vector's."""
    if not isinstance(magnitude, Tensor):
        raise TypeError(f"magnitude must be a torch.Tensor, got {type(magnitude).__name__}")
    check_lora_inputs(x, weight, bias, A, B, scaling, dropout_p)
    out_f = weight.shape[0]
    if magnitude.shape != (out_f,):
        raise ValueError(f"magnitude must have shape ({out_f},) (one per output row), got {tuple(magnitude.shape)}")


def dora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    A: Tensor,
    B: Tensor,
    magnitude: Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    detach_norm: bool = True,
) -> Tensor:
    """The DoRA forward of eq. 3 (module docstring), with plain autograd ops.

    ``x [..., in]``, ``weight [out, in]`` (frozen), ``A [r, in]``, ``B [out, r]``, ``magnitude [out]``.
    The adapter part is computed in the adapter dtype (``A.dtype``; fp32 on a bf16 base, as PEFT) and the
    result is returned in the base output dtype. ``detach_norm=False`` lets the gradient flow through
    ``||W0 + s B A||`` as well (the "exact" gradient, notebook 09 section 3; not what PEFT or the paper train with).
    """
    _check_inputs(x, weight, bias, A, B, magnitude, scaling, dropout_p)
    dtype = A.dtype
    if detach_norm:
        with torch.no_grad():
            norm = dora_weight_norm(weight, A, B, scaling)
    else:
        norm = dora_weight_norm(weight, A, B, scaling)
    factor = magnitude.to(dtype) / norm  # f = m / ||W0 + sBA||, [out]
    x_d = F.dropout(x, dropout_p, training=True) if training and dropout_p > 0 else x
    base_d = F.linear(x_d, weight)  # W0 x_d, base dtype, no bias
    out = factor * (base_d.to(dtype) + scaling * ((x_d.to(dtype) @ A.t()) @ B.t()))
    if x_d is not x:  # PEFT: the base path also sees the undropped input, (W0 x) + (f - 1) W0 x_d + ...
        out = out + (F.linear(x, weight) - base_d).to(dtype)
    if bias is not None:
        out = out + bias.to(dtype)
    return out.to(base_d.dtype)


def _check_rows(norm: Tensor) -> None:
    """ValueError naming the rows whose norm ``||W0 + s B A||`` is zero or not finite (no direction there)."""
    bad = ((norm == 0) | ~torch.isfinite(norm)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"rows {bad[:8]} of W0 + s*B@A are zero or not finite: DoRA's direction V/||V|| is undefined for them"
        )


class DoRALinear(LoRALinear):
    """A frozen ``nn.Linear`` adapted by DoRA (see the module docstring); a :class:`LoRALinear` subclass.

    It has everything LoRALinear has (``base``, ``lora_A [r, in]``, ``lora_B [out, r]``, ``scaling``,
    ``merged``, ``merge()``/``unmerge()``), so lorakit's model-level API (``apply_lora`` with
    ``LoRAConfig(use_dora=True)``, merge, save, load) handles it, plus ``magnitude``: a trainable
    Parameter ``[out]`` initialised to the row norms ``||W0[i, :]||`` (PEFT's ``lora_magnitude_vector``).

    Args: as :class:`LoRALinear`. Raises TypeError when ``base`` is not an ``nn.Linear`` and ValueError when a
    row of ``base.weight`` is zero or not finite (its direction ``W0[i]/||W0[i]||`` is undefined).
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 8,
        dropout: float = 0.0,
        rslora: bool = False,
        init: str = "kaiming",
        adapter_dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear for DoRA, got {type(base).__name__}")
        with torch.no_grad():  # checked before the base is frozen: a refused layer leaves the caller's layer as it was
            wide = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else base.weight.dtype
            _check_rows(torch.linalg.norm(base.weight.detach().to(adapter_dtype or wide), dim=1))
        super().__init__(base, r, alpha, dropout, rslora, init, adapter_dtype)
        self.magnitude = nn.Parameter(self.weight_norm())
        self.register_buffer("_merge_factor", None, persistent=False)

    def weight_norm(self) -> Tensor:
        """``||W0 + s B A||`` per output row, detached, in the adapter dtype (eq. 2's denominator)."""
        with torch.no_grad():
            norm = dora_weight_norm(self.base.weight, self.lora_A, self.lora_B, self.scaling)
        _check_rows(norm)
        return norm

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        """Re-initialise A and B (as LoRALinear), then the magnitude to ``||W0 + s B A||`` (identity start)."""
        super().reset_lora_parameters(init)
        if "magnitude" in self._parameters:
            self.magnitude.copy_(self.weight_norm())

    def dora_factor(self) -> Tensor:
        """``f = m / ||W0 + s B A||`` ([out], gradient only through ``m``); a merged layer's stored ``f``."""
        if self.merged:
            return self._merge_factor
        return self.magnitude / self.weight_norm()

    def effective_weight(self) -> Tensor:
        """``W' = diag(f) (W0 + s B A)`` as an ``[out, in]`` tensor in the adapter dtype (what merge writes)."""
        if self.merged:  # the base weight already holds W'
            return self.base.weight.detach().to(self.lora_A.dtype)
        V = self.base.weight.to(self.lora_A.dtype) + self.scaling * (self.lora_B @ self.lora_A)
        return self.dora_factor()[:, None] * V

    @torch.no_grad()
    def check_merge(self) -> None:
        """ValueError if :meth:`merge` cannot merge (or could not be undone); nothing is changed.

        Checked: finite ``A``, ``B`` and magnitude, no zero row of ``W0 + s B A``, and a factor
        ``f = m / ||W0 + s B A||`` that is finite and non-zero in every row (``unmerge`` divides by it).
        :func:`lorakit.merge_lora` calls it on every layer before it merges the first one.
        """
        super().check_merge()
        if not bool(torch.isfinite(self.magnitude).all()):
            raise ValueError("magnitude holds NaN or inf: merging would write them into the base weight")
        factor = self.magnitude / self.weight_norm()
        bad = (~torch.isfinite(factor) | (factor == 0)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"magnitude / ||W0 + s*B@A|| is zero or non-finite in rows {bad[:8]}: the merge could "
                             "not be undone (unmerge divides by it)")

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W'`` (eq. 2); forward then costs one ``nn.Linear``. Idempotent (warns) like LoRALinear.

        ``W' = f (W0 + s B A)`` is formed in the adapter dtype (fp32 on a half-precision base) and rounded to
        the base dtype once, as PEFT does.
        """
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.check_merge()
        factor = self.dora_factor()
        weight = self.base.weight
        weight.copy_(self.effective_weight().to(weight.dtype))
        self._merge_factor = factor.detach().clone()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W0 <- W' / f - s B A`` with the ``f`` used by merge() (PEFT's recipe); exact up to rounding."""
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        weight = self.base.weight
        dtype = self.lora_A.dtype
        restored = weight.to(dtype) / self._merge_factor[:, None] - self.scaling * (self.lora_B @ self.lora_A)
        weight.copy_(restored.to(weight.dtype))
        self._merge_factor = None
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        return dora_linear(
            x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.magnitude, self.scaling,
            dropout_p=self.dropout, training=self.training,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"


def magnitude_direction_change(W_t: Tensor, W_0: Tensor) -> tuple[float, float]:
    """``(ΔM, ΔD)`` of the DoRA paper's weight-decomposition analysis (section 3), per output row.

    With ``m[i] = ||W[i, :]||`` (one magnitude per output neuron, PEFT's axis)::

        ΔM = mean_i |m_t[i] - m_0[i]|            ΔD = mean_i (1 - cos(W_t[i, :], W_0[i, :]))

    The paper writes the same averages over the ``k`` columns of its ``W ∈ R^{d×k}``, whose magnitude
    vector ``m ∈ R^{1×k}`` is the one DoRA trains; on a PyTorch ``[out, in]`` weight that is one entry
    per output row (notebook 09, section 4).
    """
    if not (isinstance(W_t, Tensor) and isinstance(W_0, Tensor)):
        raise TypeError("W_t and W_0 must be torch.Tensor")
    if W_t.dim() != 2 or W_t.shape != W_0.shape:
        raise ValueError(f"W_t and W_0 must be 2-D of the same shape, got {tuple(W_t.shape)} and {tuple(W_0.shape)}")
    if not (W_t.is_floating_point() and W_0.is_floating_point()):
        raise TypeError(f"W_t and W_0 must be floating-point tensors, got {W_t.dtype} and {W_0.dtype}")
    if W_t.numel() == 0:
        raise ValueError("W_t and W_0 must not be empty")
    a, b = W_t.detach().double(), W_0.detach().double()
    delta_m = (a.norm(dim=1) - b.norm(dim=1)).abs().mean().item()
    delta_d = (1 - F.cosine_similarity(a, b, dim=1)).mean().item()
    return delta_m, delta_d
