"""``LoRALinear``: a frozen ``nn.Linear`` plus a trainable low-rank bypass (notebooks 01-04).

``h = W0 x + b + scaling * B (A x)`` with ``A [r, in]``, ``B [out, r]`` (Hu et al., 2021, eq. 3).

* ``scaling = alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA, Kalajdzievski 2023); notebook 03.
* init (notebook 02): ``"kaiming"`` (default, as PEFT: A Kaiming-uniform with a=sqrt(5), B = 0),
  ``"gaussian"`` (A ~ N(0, 1/r^2) as PEFT, B = 0), ``"zeros"`` (A = B = 0: the never-learns case,
  for teaching) and ``"pissa"`` (A, B from the top-r singular triplets of W0; W0 becomes the residual,
  Meng et al., 2024; as PEFT).
* ``merge()`` folds ``scaling * B @ A`` into ``W0`` (notebook 04); ``unmerge()`` takes it out again.
  Both are idempotent: merging a merged layer (or unmerging an unmerged one) warns and does nothing.

A rank larger than ``min(in, out)`` is allowed with a :class:`RankWarning`: ``B @ A`` cannot have rank
above ``min(in, out)``, so the extra columns add parameters but no expressiveness, yet the layer is
well defined (PEFT allows it too, and notebook 03 sweeps r past the layer width on purpose).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn

from lorakit.functional import lora_linear
from lorakit.layers import LinearAdapterLayer

INITS = ("kaiming", "gaussian", "zeros", "pissa")


class RankWarning(UserWarning):
    """``r`` exceeds ``min(in_features, out_features)``: legal, but the extra rank is wasted."""


class MergeWarning(UserWarning):
    """``merge()`` on a merged layer or ``unmerge()`` on an unmerged one: nothing was changed."""


def validate_lora_args(r: object, alpha: object, dropout: object, init: object = "kaiming") -> None:
    """Raise TypeError/ValueError naming the argument when a LoRA hyper-parameter is invalid.

    ``r`` may be any integer type (NumPy's included; bools are refused), ``alpha`` and ``dropout`` any
    real number type; callers convert them to Python numbers after this check.
    """
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"r must be an int, got {type(r).__name__} {r!r}")
    if r <= 0:
        raise ValueError(f"r must be a positive int, got {r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__} {alpha!r}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"dropout must be a number in [0, 1), got {type(dropout).__name__} {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA); notebook 03, eq. 1."""
    validate_lora_args(r, alpha, 0.0)
    return alpha / math.sqrt(r) if rslora else alpha / r


def frozen_linear_like(base: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    """A new frozen ``nn.Linear`` holding ``weight`` and sharing ``base``'s bias; ``base`` is not modified."""
    linear = nn.Linear(base.in_features, base.out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.bias = base.bias
    return linear


class LoRALinear(LinearAdapterLayer):
    """Wrap a frozen ``nn.Linear`` with a LoRA bypass; see the module docstring.

    Args:
        base: the layer to adapt. Its parameters are frozen (``requires_grad=False``).
        r: the rank of the update. alpha: the numerator of the scaling. dropout: probability of
        dropout on the bypass input (the base path never sees dropout). rslora: use ``alpha/sqrt(r)``.
        init: one of :data:`INITS`. adapter_dtype: dtype of ``lora_A``/``lora_B``; by default
        float32 when the base is fp16/bf16 (PEFT's ``autocast_adapter_dtype``), else the base dtype.

    With ``init="pissa"`` the layer's ``base`` is a *new* frozen ``nn.Linear`` holding the residual
    ``W0 - U_r S_r V_r^T`` (the caller's layer is left as it was), and the initial ``A0``, ``B0`` are kept
    (buffers ``pissa_A0``/``pissa_B0``, not saved in ``state_dict``) so that :func:`lorakit.save_adapter`
    can convert the trained adapter into a plain LoRA adapter for the original base (notebook 04).
    """

    adapter_kind = "LoRA"

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
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        validate_lora_args(r, alpha, dropout, init)
        r, alpha = int(r), (int(alpha) if isinstance(alpha, numbers.Integral) else float(alpha))
        if r > min(base.in_features, base.out_features):
            if init == "pissa":
                raise ValueError(
                    f"r={r} exceeds min(in, out)={min(base.in_features, base.out_features)}; "
                    "PiSSA needs r singular vectors"
                )
            warnings.warn(
                f"r={r} exceeds min(in_features, out_features)={min(base.in_features, base.out_features)}: "
                "B @ A cannot have rank above that, so the extra rank only adds parameters",
                RankWarning,
                stacklevel=2,
            )
        weight = base.weight
        if adapter_dtype is None:
            adapter_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.register_buffer("pissa_A0", None, persistent=False)
        self.register_buffer("pissa_B0", None, persistent=False)
        self.r, self.alpha, self.rslora, self.init = r, alpha, rslora, init
        self.dropout = float(dropout)
        self.scaling = lora_scaling(r, alpha, rslora)
        factory = {"device": weight.device, "dtype": adapter_dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, **factory))
        self.merged = False
        self.reset_lora_parameters(init)

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        """(Re)initialise A and B; see the module docstring for the schemes."""
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if self.merged:
            raise RuntimeError("unmerge() before re-initialising a merged layer")
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
            nn.init.zeros_(self.lora_B)
        elif init == "zeros":
            nn.init.zeros_(self.lora_A)
            nn.init.zeros_(self.lora_B)
        else:
            self._pissa_init()
        self.init = init

    @torch.no_grad()
    def _pissa_init(self) -> None:
        # W0 = U S V^T; A = sqrt(S_r / s) V_r^T, B = U_r sqrt(S_r / s), so s*B@A is the top-r part,
        # and the base becomes a new layer holding the residual W0 - s*B@A (PEFT's "pissa", full SVD).
        weight = self.base.weight
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("init='pissa' needs a finite base weight (the SVD of a NaN/inf weight is undefined)")
        U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
        root = torch.sqrt(S[: self.r] / self.scaling)
        self.lora_A.copy_(root[:, None] * Vh[: self.r])
        self.lora_B.copy_(U[:, : self.r] * root[None, :])
        residual = weight.float() - self.scaling * (self.lora_B.float() @ self.lora_A.float())
        self.base = frozen_linear_like(self.base, residual.to(weight.dtype))
        self.pissa_A0, self.pissa_B0 = self.lora_A.detach().clone(), self.lora_B.detach().clone()

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` as an ``[out, in]`` tensor in the base weight's dtype (fp32 math)."""
        return self.delta_weight_fp32().to(self.base.weight.dtype)

    def delta_weight_fp32(self) -> torch.Tensor:
        """``scaling * B @ A`` in float32 (what merge adds: the sum is rounded once, as PEFT's in-place add)."""
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())

    @torch.no_grad()
    def check_merge(self) -> None:
        """ValueError if :meth:`merge` would write non-finite weights (model-level merges check every layer first)."""
        if not (bool(torch.isfinite(self.lora_A).all()) and bool(torch.isfinite(self.lora_B).all())):
            raise ValueError("lora_A/lora_B hold NaN or inf: merging would write them into the base weight")

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W0 + scaling * B @ A``; afterwards forward costs exactly one ``nn.Linear``.

        The sum is formed in float32 and rounded to the base dtype once (a bf16 base is not rounded twice).
        """
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base.weight.add_(self.delta_weight_fp32())  # computed in fp32, rounded once into the base dtype
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W0 <- W0 - scaling * B @ A`` (exact in fp32 up to rounding; notebook 04 measures bf16)."""
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base.weight.sub_(self.delta_weight_fp32())
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return lora_linear(
            x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling,
            dropout_p=self.dropout, training=self.training,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha}, scaling={self.scaling:.4g}, rslora={self.rslora}, "
            f"dropout={self.dropout}, merged={self.merged}"
        )
