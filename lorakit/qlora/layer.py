"""``QLoRALinear``: LoRA on a frozen 4-bit base (notebook 08; Dettmers et al., 2023, arXiv:2305.14314).

For an input ``x`` (eq. 1)::

    h = dequant(Q(W0)) x + b + s * B (A x),    s = alpha / r  (or alpha / sqrt(r) with rsLoRA)

Numerics follow PEFT's bitsandbytes layer: the base path runs in the compute dtype (or the autocast dtype
under ``torch.autocast``) and is cast back to the input dtype, the bypass runs in the adapter dtype (or
autocast's) and is cast to the input dtype, then the two are added.

**Merging (notebook 08, section "merge").** A 4-bit base cannot absorb ``s B A`` exactly. Two ways:

* ``merge(requantize=False)``: ``W = dequant(Q(W0)) + s B A`` kept dense, by default in the dtype of the
  weight that was quantized (``weight_dtype``: an fp32 model merges into fp32 layers, a bf16 one into bf16);
  the sum is formed in fp32 and rounded once;
* ``merge(requantize=True)``: ``Q(dequant(Q(W0)) + s B A)``: still 4 bits per parameter, but the new
  rounding error is of the size of one NF4 step, which is often larger than ``s B A`` itself
  (PEFT's ``merge_and_unload`` on a 4-bit model does this). :func:`~lorakit.qlora.merge_error` measures both.

Every check runs before the layer changes: a failing constructor leaves the caller's ``base`` as it was
(its ``requires_grad`` flags included), a failing merge leaves the layer unmerged.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.lora import LoRALinear, MergeWarning
from lorakit.nf4.validation import check_weight
from lorakit.qlora.base import plain_linear_like, quantize_base
from lorakit.qlora.bnb import bnb_dequantize
from lorakit.qlora.checks import (
    ADAPTER_DTYPES,
    COMPUTE_DTYPES,
    bnb,
    check_base,
    check_dtype,
    check_quant_args,
    check_quant_type,
    is_bnb_linear4bit,
)
from lorakit.qlora.nf4_linear import NF4Linear
from lorakit.qlora.serialization import check_quantized_load

__all__ = ["QLoRALinear"]


class QLoRALinear(LoRALinear):
    """LoRA on a frozen NF4 base (eq. 1 of the module docstring; notebook 08; Dettmers et al., 2023).

    A :class:`~lorakit.lora.LoRALinear` subclass, so :mod:`lorakit.peft` (``lora_layers``,
    ``adapter_state_dict``, ``save_adapter``, ``load_adapter``, ``trainable_parameters``, ``merge_lora``,
    ``merge_and_unload``) treats it as a LoRA layer and writes the same PEFT-format keys.

    Args:
        base: the full-precision ``nn.Linear`` to quantize. It is not modified (``requires_grad`` of its
            parameters is switched off, as LoRALinear does); the layer keeps no reference to its weight,
            so once the caller drops ``base`` only the 4-bit copy remains.
        r, alpha, dropout, rslora, init: as :class:`~lorakit.lora.LoRALinear`. ``init="pissa"`` takes the
            top-r singular triplets of the full-precision weight and quantizes the residual (QPiSSA).
        blocksize: weights per absmax block (64 in QLoRA). double_quant: quantize the absmax constants to
            8 bits in blocks of 256 (QLoRA's double quantization). compute_dtype: dtype of the
            dequantized weight and of the base matmul (outside autocast). backend: ``"lorakit"``,
            ``"bitsandbytes"`` or ``"triton"`` (lorakit's storage, the fused 4-bit matmul of :mod:`lorakit.kernels`).
        adapter_dtype: dtype of ``lora_A``/``lora_B`` (fp32 by default, as PEFT keeps adapters on 4-bit bases).
        quant_type: the 4-bit code of the base: ``"nf4"`` (QLoRA's), ``"fp4"`` or ``"int4"`` (for comparison;
            bitsandbytes has nf4 and fp4).

    Attributes: ``base`` (:class:`~lorakit.qlora.NF4Linear` or ``bitsandbytes.nn.Linear4bit``; after
    ``merge(requantize=False)`` a dense ``nn.Linear``), ``lora_A``, ``lora_B``, ``scaling``, ``merged``,
    ``weight_dtype`` (the dtype of the weight that was quantized; follows ``model.to(dtype)``: merges use it).
    """

    adapter_kind = "QLoRA"

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 8,
        dropout: float = 0.0,
        rslora: bool = False,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        backend: str = "lorakit",
        init: str = "kaiming",
        adapter_dtype: torch.dtype = torch.float32,
        quant_type: str = "nf4",
    ) -> None:
        check_base(base)
        check_quant_args(blocksize, double_quant, compute_dtype, backend)
        check_quant_type(quant_type, backend)
        check_dtype("adapter_dtype", adapter_dtype, ADAPTER_DTYPES)
        if not isinstance(rslora, bool):
            raise TypeError(f"rslora must be a bool, got {type(rslora).__name__} {rslora!r}")
        check_weight(base.weight.detach(), "base.weight")  # NaN/inf: refuse before the caller's base is touched
        pissa = init == "pissa"
        if pissa and isinstance(r, int) and r > min(base.in_features, base.out_features):
            raise ValueError(f"r={r} exceeds min(in, out)={min(base.in_features, base.out_features)}; "
                             "PiSSA needs r singular vectors")
        if backend == "bitsandbytes":
            bnb()  # ImportError now, not after the base was frozen
        if backend == "triton":
            import lorakit.kernels.nf4_matmul  # noqa: F401  (ImportError with the install hint, before any change)
        # LoRALinear validates r/alpha/dropout/init, freezes base, creates A and B; PiSSA is done below so
        # that the caller's layer is never modified
        super().__init__(base, r, alpha, dropout, rslora, "zeros" if pissa else init, adapter_dtype)
        self.blocksize, self.double_quant, self.compute_dtype, self.backend, self.quant_type = (
            blocksize, double_quant, compute_dtype, backend, quant_type)
        self.weight_dtype = base.weight.dtype
        self._unmerged_base: nn.Module | None = None
        weight = base.weight.detach()
        if pissa:
            weight = self._pissa_residual(weight.float())
        self.base = quantize_base(weight, base.bias, blocksize, double_quant, compute_dtype, backend,
                                  self.weight_dtype, quant_type)  # no reference to the full-precision weight is kept
        if pissa:
            self.init = "pissa"

    # ----------------------------------------------------------------------- weights
    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The frozen base weight rebuilt from its 4 bits, ``[out, in]``, in ``dtype`` (default compute_dtype).

        After ``merge()`` this is the merged weight (dense or requantized).
        """
        dtype = self.compute_dtype if dtype is None else dtype
        check_dtype("dtype", dtype, COMPUTE_DTYPES)
        base = self.base
        if isinstance(base, NF4Linear):
            return base.dequantized_weight(dtype)
        if is_bnb_linear4bit(base):
            return bnb_dequantize(base, dtype)
        return base.weight.detach().to(dtype)

    @property
    def storage_bytes(self) -> int:
        """Bytes of the frozen base weight as stored now (4-bit codes + constants, or dense after a merge)."""
        base = self.base
        if isinstance(base, NF4Linear):
            return base.storage_bytes
        if is_bnb_linear4bit(base):
            qs = base.weight.quant_state
            tensors = [base.weight.data, qs.absmax]
            if qs.state2 is not None:
                tensors += [qs.state2.absmax]
            # bnb keeps the 8-bit double-quant code (256 fp32) and offset per layer too
            extra = 0 if qs.state2 is None else qs.state2.code.numel() * 4 + 4
            return sum(t.numel() * t.element_size() for t in tensors) + extra
        return base.weight.numel() * base.weight.element_size()

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` as an ``[out, in]`` float32 tensor (merging adds it in fp32)."""
        return self.delta_weight_fp32()

    @torch.no_grad()
    def _pissa_residual(self, weight: torch.Tensor) -> torch.Tensor:
        # W = U S V^T; s*B@A = the top-r part; the base stores Q(W - s*B@A) (PiSSA, Meng et al. 2024)
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(S[: self.r] / self.scaling)
        self.lora_A.copy_(root[:, None] * Vh[: self.r])
        self.lora_B.copy_(U[:, : self.r] * root[None, :])
        self.pissa_A0, self.pissa_B0 = self.lora_A.detach().clone(), self.lora_B.detach().clone()
        return weight - self.scaling * (self.lora_B.float() @ self.lora_A.float())  # fp32: quantized as is

    @torch.no_grad()
    def _pissa_init(self) -> None:
        # re-initialising an existing layer: only the dequantized weight is left, so PiSSA runs on it
        residual = self._pissa_residual(self.dequantized_weight(torch.float32))
        self.base = quantize_base(residual, getattr(self.base, "bias", None), self.blocksize, self.double_quant,
                                  self.compute_dtype, self.backend, self.weight_dtype, self.quant_type)

    # ----------------------------------------------------------------------- merge
    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``dequant(Q(W0)) + scaling * B @ A`` in float32: the exact merge target (unmerged layers only)."""
        if self.merged:
            raise RuntimeError("the layer is merged already; merged_weight() needs the unmerged base")
        return self.dequantized_weight(torch.float32) + self.delta_weight()

    def _check_merge_args(self, requantize: object, dtype: object) -> torch.dtype:
        if not isinstance(requantize, bool):
            raise TypeError(f"requantize must be a bool, got {type(requantize).__name__} {requantize!r}")
        if dtype is not None:
            check_dtype("dtype", dtype, COMPUTE_DTYPES)
        return self.weight_dtype if dtype is None else dtype

    @torch.no_grad()
    def _checked_merge_target(self, requantize: bool, dtype: torch.dtype) -> torch.Tensor:
        super().check_merge()  # finite adapters
        merged = self.merged_weight()
        stored = merged if requantize else merged.to(dtype)
        if not bool(torch.isfinite(stored).all()):
            where = "requantized" if requantize else f"stored in {dtype}"
            raise ValueError(f"merging would give non-finite weights ({where}): |W + s B A| overflows; merge with "
                             "dtype=torch.float32 or scale the adapters down")
        return merged

    def check_merge(self, requantize: bool = False, dtype: torch.dtype | None = None) -> None:
        """ValueError if :meth:`merge` with these arguments would fail or write non-finite weights (changes nothing).

        :func:`lorakit.peft.merge_lora` and :func:`~lorakit.qlora.merge_qlora` call it on every layer before
        merging any.
        """
        if self.merged:
            return
        self._checked_merge_target(requantize, self._check_merge_args(requantize, dtype))

    @torch.no_grad()
    def merge(self, requantize: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
        """Fold ``scaling * B @ A`` into the base and return the new base module.

        ``requantize=False``: the base becomes a dense ``nn.Linear`` in ``dtype`` (default ``weight_dtype``,
        the dtype of the weight that was quantized) holding ``dequant(Q(W0)) + s B A``, summed in fp32 and
        rounded once; ``requantize=True``: the base becomes a 4-bit layer of the same backend holding
        ``Q(dequant(Q(W0)) + s B A)`` (the fp32 sum quantized directly; what PEFT's merge on 4-bit models
        does). The original 4-bit base is kept aside, so ``unmerge()`` restores it exactly. Merging a merged
        layer warns and changes nothing. Everything is checked before the layer changes.
        """
        dtype = self._check_merge_args(requantize, dtype)
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return self.base
        merged = self._checked_merge_target(requantize, dtype)
        if requantize:
            new = quantize_base(merged, getattr(self.base, "bias", None), self.blocksize, self.double_quant,
                                self.compute_dtype, self.backend, self.weight_dtype, self.quant_type)
        else:
            new = plain_linear_like(self, dtype, merged)
        self._unmerged_base, self.base = self.base, new
        self.merged = True
        return new

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original 4-bit base (bit for bit: it was kept aside by ``merge()``)."""
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base, self._unmerged_base = self._unmerged_base, None
        self.merged = False

    # ----------------------------------------------------------------------- forward
    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        if isinstance(base, NF4Linear) or is_bnb_linear4bit(base):
            return base(x)  # both cast x to the matmul dtype and the result back to x.dtype
        return base(x.to(base.weight.dtype)).to(x.dtype)  # dense merged base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self._base_forward(x)
        if self.merged:
            return result
        a = self.lora_A
        x_a = x.to(a.dtype)
        if self.training and self.dropout > 0:
            x_a = F.dropout(x_a, p=self.dropout, training=True)
        bypass = F.linear(F.linear(x_a, a), self.lora_B) * self.scaling
        return result + bypass.to(result.dtype)  # as PEFT: both paths in the input dtype, then added

    # ----------------------------------------------------------------------- casts and state dict
    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # weight_dtype follows float casts of the model (model.to(torch.bfloat16) merges into bf16 layers)
        probe = fn(torch.empty(0, dtype=self.weight_dtype, device=self.lora_A.device))
        super()._apply(fn, recurse)
        if probe.dtype in COMPUTE_DTYPES:
            self.weight_dtype = probe.dtype
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        check_quantized_load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                             error_msgs)  # every 4-bit entry below, before lora_A/lora_B are written
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, backend={self.backend!r}, quant_type={self.quant_type!r}, "
            f"blocksize={self.blocksize}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}"
        )
