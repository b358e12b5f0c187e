"""``SVDLinear``: a frozen ``nn.Linear`` plus AdaLoRA's update in SVD form (notebook 10, eq. 1).

::

    h = W0 x + b + scaling / (ranknum + 1e-5) * P (Λ ⊙ (Q x))     P = lora_B [out, r]
                                                                 Λ = lora_E [r, 1]   (diagonal, as a column)
                                                                 Q = lora_A [r, in]

No SVD is ever computed: ``P`` and ``Q`` are ordinary trainable matrices, only *encouraged* to be
orthogonal (:mod:`lorakit.adalora.regularization`), and ranks are pruned by zeroing entries of ``Λ``
(:mod:`lorakit.adalora.allocator`). As in PEFT: ``lora_E`` starts at zero (so the update starts at zero,
like LoRA's ``B = 0``) and ``lora_A``/``lora_B`` ~ N(0, 0.02²); ``scaling = alpha``; ``ranknum = float(r)``
is fixed at the *initial* rank and never updated, so the effective multiplier is ``alpha / (r + 1e-5)``
whatever rank the pruning leaves (the ``1e-5`` is PEFT's guard against ``r = 0``, which PEFT allows and
lorakit does not).

The layer also remembers the allocator's last decision, ``rank_mask`` (bool ``[r]``, True = the triplet is
kept; None until the first mask): it is what ``save_adapter`` writes as PEFT's ``rank_pattern``.
"""

from __future__ import annotations

import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.layers import LinearAdapterLayer
from lorakit.lora import MergeWarning, validate_lora_args
from lorakit.peft import check_model

__all__ = ["INIT_STD", "RANKNUM_EPS", "SUPPORTED_DTYPES", "SVDLinear", "adalora_layers"]

#: PEFT adds this to ``ranknum`` before dividing (``SVDLinear.forward``): ``scaling / (r + 1e-5)``.
RANKNUM_EPS = 1e-5
#: PEFT's initial standard deviation of ``lora_A`` and ``lora_B`` (``AdaLoraLayer.reset_lora_parameters``).
INIT_STD = 0.02
#: Base weight dtypes SVDLinear adapts (the adapters are float32 on a float16/bfloat16 base, as PEFT).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SVDLinear(LinearAdapterLayer):
    """A frozen ``nn.Linear`` plus the AdaLoRA bypass ``P Λ Q`` (see the module docstring, eq. 1).

    Args:
        base: the layer to adapt; its parameters are frozen. Its weight must be float16, bfloat16, float32 or
        float64. r: the initial rank (PEFT's ``init_r``; NumPy integers accepted). alpha: PEFT's
        ``lora_alpha``; the bypass is multiplied by ``alpha / (r + 1e-5)``. dropout: dropout probability
        on the bypass input.
    Attributes: ``lora_A [r, in]`` (Q), ``lora_E [r, 1]`` (Λ), ``lora_B [out, r]`` (P), ``scaling``
    (``= alpha``, as PEFT), ``ranknum`` (a buffer holding ``float(r)``), ``rank_mask``, ``merged``.
    """

    adapter_kind = "AdaLoRA"

    def __init__(self, base: nn.Linear, r: int = 12, alpha: float = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(r, numbers.Integral) and not isinstance(r, bool):
            r = int(r)
        validate_lora_args(r, alpha, dropout)
        weight = base.weight
        if weight.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"base.weight has dtype {weight.dtype}; SVDLinear adapts a floating-point layer "
                f"({', '.join(str(d).removeprefix('torch.') for d in SUPPORTED_DTYPES)})"
            )
        adapter_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.dropout = r, alpha, float(dropout)
        self.scaling = float(alpha)
        factory = {"device": weight.device, "dtype": adapter_dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_E = nn.Parameter(torch.empty(r, 1, **factory))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, **factory))
        # Not saved (PEFT drops ranknum from the adapter state dict: it is always float(r)).
        self.register_buffer("ranknum", torch.full((1,), float(r), **factory), persistent=False)
        # The allocator's last mask (True = kept); written by RankAllocator and load_adapter, saved as rank_pattern.
        self.register_buffer("rank_mask", None, persistent=False)
        self.merged = False
        self.reset_parameters()

    @property
    def effective_scaling(self) -> float:
        """The number the bypass is multiplied by: ``alpha / (r + 1e-5)`` (``r`` = the initial rank)."""
        return self.scaling / (self.r + RANKNUM_EPS)

    @property
    def rank(self) -> int:
        """The current rank: the number of non-zero singular values ``lora_E``."""
        return int((self.lora_E != 0).sum())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PEFT's init: ``lora_E = 0``, ``lora_A``, ``lora_B`` ~ N(0, 0.02²) (the update starts at 0)."""
        if self.merged:
            raise RuntimeError("unmerge() before re-initialising a merged layer")
        nn.init.zeros_(self.lora_E)
        nn.init.normal_(self.lora_A, mean=0.0, std=INIT_STD)
        nn.init.normal_(self.lora_B, mean=0.0, std=INIT_STD)
        self.rank_mask = None

    @torch.no_grad()
    def apply_rank_mask(self) -> None:
        """Zero ``Λ_i`` wherever :attr:`rank_mask` is False (the optimizer moves pruned ``Λ_i`` between masks)."""
        if self.rank_mask is not None:
            self.lora_E.masked_fill_(~self.rank_mask.view(-1, 1), 0.0)

    def delta_weight_unrounded(self) -> torch.Tensor:
        """``P (Λ ⊙ Q) * scaling / (ranknum + 1e-5)`` in the adapter dtype (fp32 on a half base), PEFT's order.

        This is what :meth:`merge` adds: ``W0 + ΔW`` is then formed in the wider dtype and rounded once.
        """
        return self.lora_B @ (self.lora_A * self.lora_E) * self.scaling / (self.ranknum + RANKNUM_EPS)

    def delta_weight(self) -> torch.Tensor:
        """:meth:`delta_weight_unrounded` as ``[out, in]`` in the base weight's dtype."""
        return self.delta_weight_unrounded().to(self.base.weight.dtype)

    @torch.no_grad()
    def check_merge(self) -> None:
        """ValueError if :meth:`merge` would write non-finite weights (model-level merges check every layer first)."""
        bad = [n for n in ("lora_A", "lora_E", "lora_B") if not bool(torch.isfinite(getattr(self, n)).all())]
        if bad:
            raise ValueError(f"{'/'.join(bad)} hold NaN or inf: merging would write them into the base weight")

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W0 + ΔW``, rounded once into the base dtype; idempotent (warns when already merged)."""
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.check_merge()
        self.base.weight.add_(self.delta_weight_unrounded())  # the sum is formed in the adapter dtype, rounded once
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W0 <- W0 - ΔW`` (exact in fp32 up to rounding; warns when not merged)."""
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base.weight.sub_(self.delta_weight_unrounded())
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:
            return result
        xa = x.to(self.lora_A.dtype)
        if self.dropout > 0.0:
            xa = F.dropout(xa, p=self.dropout, training=self.training)
        # Same operations in the same order as PEFT's SVDLinear.forward (bit-identical results).
        bypass = (xa @ (self.lora_A * self.lora_E).T @ self.lora_B.T) * self.scaling / (self.ranknum + RANKNUM_EPS)
        return result + bypass.to(result.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha}, dropout={self.dropout}, merged={self.merged}"
        )


def adalora_layers(model: nn.Module) -> dict[str, SVDLinear]:
    """``{module name: SVDLinear}`` for every AdaLoRA layer in ``model`` (named_modules order)."""
    check_model(model)
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SVDLinear)}
