"""QLoRA: a frozen NF4 base plus a trainable LoRA bypass (notebook 08; Dettmers et al., 2023, arXiv:2305.14314).

QLoRA stores the frozen base weight ``W0 [out, in]`` in 4 bits (NF4, blockwise absmax, optionally double
quantization of the absmax constants; notebooks 06-07 and :mod:`lorakit.nf4`) and trains only the LoRA
factors ``A [r, in]``, ``B [out, r]``, kept in a wider dtype (fp32 by default). For an input ``x`` (eq. 1)::

    h = dequant(Q(W0)) x + b + s * B (A x),    s = alpha / r  (or alpha / sqrt(r) with rsLoRA)

where ``Q`` is 4-bit quantization and ``dequant`` rebuilds ``W0`` in the *compute dtype* (bf16 by default)
right before the matmul, block by block: ``W[i] = absmax[block(i)] * code[q_i]``. The 4-bit codes never
receive a gradient. The backward needs ``dL/dx = W^T g`` (eq. 2) to reach earlier layers, so the weight
is dequantized a second time in the backward instead of keeping the dequantized copy alive between the
two passes (that copy would cost 2 bytes per parameter per layer, the memory QLoRA set out to save).
``dL/dA`` and ``dL/dB`` are the LoRA gradients of notebook 01; they never involve ``W0``.

Numerics follow PEFT's bitsandbytes layer: the base path runs in the compute dtype and is cast back to
the input dtype, the bypass runs in the adapter dtype and is cast to the input dtype, then the two are
added. So with fp32 inputs and fp32 adapters only the base matmul is in bf16.

Two backends compute eq. 1:

* ``"lorakit"``: :class:`NF4Linear`, pure PyTorch on any device, using :mod:`lorakit.nf4`;
* ``"bitsandbytes"``: ``bitsandbytes.nn.Linear4bit`` (``quant_type="nf4"``), the layer PEFT and
  transformers use. Its stored bytes equal lorakit's (``tests/test_qlora_crosscheck.py``).

**Merging (notebook 08, section "merge").** A 4-bit base cannot absorb ``s B A`` exactly. Two ways:

* ``merge(requantize=False)``: ``W = dequant(Q(W0)) + s B A`` kept dense in ``dtype`` (bf16 by default):
  the only error is bf16 rounding, but the layer is back to 2 bytes per parameter;
* ``merge(requantize=True)``: ``Q(dequant(Q(W0)) + s B A)``: still 4 bits per parameter, but the new
  rounding error is of the size of one NF4 step, which is often larger than ``s B A`` itself
  (PEFT's ``merge_and_unload`` on a 4-bit model does this). :func:`merge_error` measures both.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorakit import nf4
from lorakit.lora import LoRALinear, MergeWarning
from lorakit.peft import LoRAConfig, check_model, refuse_adapted_model, select_target_modules, set_submodule

BACKENDS = ("lorakit", "bitsandbytes")
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ADAPTER_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- argument checks
def _check_choice(name: str, value: object, choices: tuple) -> None:
    if not any(value is c or value == c for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_dtype(name: str, value: object, choices: tuple[torch.dtype, ...]) -> None:
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype (one of {choices}), got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value}")


def _check_quant_args(blocksize: object, double_quant: object, compute_dtype: object, backend: object) -> None:
    if isinstance(backend, str):
        _check_choice("backend", backend, BACKENDS)
    else:
        raise TypeError(f"backend must be one of {BACKENDS}, got {type(backend).__name__} {backend!r}")
    _check_dtype("compute_dtype", compute_dtype, COMPUTE_DTYPES)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__} {double_quant!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise TypeError(f"blocksize must be an int, got {type(blocksize).__name__} {blocksize!r}")
    if backend == "bitsandbytes" and not (32 <= blocksize <= 4096 and blocksize & (blocksize - 1) == 0):
        # the "lorakit" backend leaves this check to lorakit.nf4 (same rule, same message style)
        raise ValueError(f"blocksize must be a power of two in [32, 4096], got {blocksize}")


def _check_base(base: object) -> None:
    if not isinstance(base, nn.Linear):
        raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
    if _is_bnb_linear4bit(base):
        raise TypeError("base must be a full-precision nn.Linear, got a bitsandbytes Linear4bit (already quantized)")
    if base.weight.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"base.weight must be fp32, bf16 or fp16 to be quantized, got {base.weight.dtype}")


def _is_bnb_linear4bit(module: object) -> bool:
    cls = type(module)
    return any(c.__name__ == "Linear4bit" and c.__module__.startswith("bitsandbytes") for c in cls.__mro__)


def _bnb() -> Any:
    from lorakit._bnb import import_bitsandbytes

    return import_bitsandbytes()


# --------------------------------------------------------------------------- the lorakit 4-bit base
class _NF4MatmulFunction(torch.autograd.Function):
    """``y = x dequant(q)^T + b`` whose backward dequantizes again (eq. 2) instead of saving ``W``."""

    @staticmethod
    def forward(ctx, x, bias, q, compute_dtype):  # type: ignore[override]
        weight = nf4.dequantize_4bit(q, dtype=compute_dtype)
        ctx.q, ctx.compute_dtype, ctx.has_bias = q, compute_dtype, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ nf4.dequantize_4bit(ctx.q, dtype=ctx.compute_dtype)  # eq. 2, W rebuilt on the fly
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_b = g.reshape(-1, g.shape[-1]).sum(0)
        return grad_x, grad_b, None, None


class NF4Linear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is stored as a :class:`lorakit.nf4.QuantizedTensor` (notebook 08).

    ``forward(x)`` casts ``x`` to ``compute_dtype``, dequantizes the weight into ``compute_dtype``, adds the
    bias (in ``compute_dtype``, as bitsandbytes' ``Linear4bit``) and casts the result back to ``x.dtype``.
    The quantized weight is a plain attribute (``quantized``), not a parameter or buffer, so
    ``model.to(torch.bfloat16)`` cannot re-round its fp32 absmax constants; ``model.to(device)`` moves it.
    """

    def __init__(
        self,
        quantized: nf4.QuantizedTensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        super().__init__()
        if not isinstance(quantized, nf4.QuantizedTensor):
            raise TypeError(f"quantized must be a lorakit.nf4.QuantizedTensor, got {type(quantized).__name__}")
        if len(quantized.shape) != 2:
            raise ValueError(f"quantized must hold a 2-D weight [out, in], got shape {tuple(quantized.shape)}")
        _check_dtype("compute_dtype", compute_dtype, COMPUTE_DTYPES)
        self.quantized = quantized
        self.out_features, self.in_features = int(quantized.shape[0]), int(quantized.shape[1])
        self.compute_dtype = compute_dtype
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            bias = nn.Parameter(bias.detach(), requires_grad=False)
        self.bias = bias

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        weight: torch.Tensor | None = None,
    ) -> NF4Linear:
        """Quantize ``linear`` (or ``weight`` in its place) to NF4; ``linear`` itself is not modified."""
        w = linear.weight.detach() if weight is None else weight.detach()
        q = nf4.quantize_nf4(w, blocksize=blocksize, double_quant=double_quant)
        return cls(q, None if linear.bias is None else linear.bias.detach(), compute_dtype)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The base weight rebuilt from its 4-bit codes, ``[out, in]``, in ``dtype`` (default compute_dtype)."""
        return nf4.dequantize_4bit(self.quantized, dtype=self.compute_dtype if dtype is None else dtype)

    @property
    def storage_bytes(self) -> int:
        """Bytes the quantized weight occupies (codes + absmax constants), bias excluded."""
        return self.quantized.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        out = _NF4MatmulFunction.apply(x.to(self.compute_dtype), bias, self.quantized, self.compute_dtype)
        return out.to(x.dtype)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # move the quantized weight with the module (device only: its dtypes are part of the format)
        super()._apply(fn, recurse)
        target = fn(torch.empty(0, device=self.quantized.device)).device
        if target != self.quantized.device:
            self.quantized = self.quantized.to(target)
        return self

    def extra_repr(self) -> str:
        q = self.quantized
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"blocksize={q.blocksize}, double_quant={q.double_quant}, compute_dtype={self.compute_dtype}"
        )


# --------------------------------------------------------------------------- the bitsandbytes 4-bit base
def bnb_linear4bit_from_linear(
    linear: nn.Linear,
    blocksize: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    weight: torch.Tensor | None = None,
) -> nn.Module:
    """``bitsandbytes.nn.Linear4bit`` (NF4) holding ``linear``'s weight (or ``weight``), on its device.

    bitsandbytes quantizes a ``Params4bit`` when it is first moved to a device (``Params4bit.to``), CPU
    included, so the weight is wrapped and moved to the device it already lives on. The layer is built
    on the meta device first, so no random full-precision weight is allocated. bitsandbytes' CPU
    inference fast path repacks the weight in place into another layout on the first eval-mode forward
    (CPUs with AVX512-BF16); it is switched off here so the stored bytes stay NF4's (and comparable).
    """
    bnb = _bnb()
    w = linear.weight.detach() if weight is None else weight.detach()
    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=compute_dtype,
        compress_statistics=double_quant, quant_type="nf4", device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        w.contiguous(), requires_grad=False, blocksize=blocksize, compress_statistics=double_quant,
        quant_type="nf4", module=layer,
    ).to(w.device)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    layer.support_avx512bf16_for_cpu = False
    if w.device.type == "cpu" and linear.in_features % blocksize != 0:
        warnings.warn(
            f"in_features={linear.in_features} is not a multiple of blocksize={blocksize}: bitsandbytes' CPU "
            "dequantize kernel (0.50.2) was measured to decode such layers wrongly; use backend='lorakit'",
            UserWarning, stacklevel=3,
        )
    return layer


def _bnb_dequantize(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    bnb = _bnb()
    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype)


def _quantize_base(
    linear: nn.Linear, blocksize: int, double_quant: bool, compute_dtype: torch.dtype, backend: str,
    weight: torch.Tensor | None = None,
) -> nn.Module:
    if backend == "lorakit":
        return NF4Linear.from_linear(linear, blocksize, double_quant, compute_dtype, weight)
    return bnb_linear4bit_from_linear(linear, blocksize, double_quant, compute_dtype, weight)


# --------------------------------------------------------------------------- QLoRALinear
class QLoRALinear(LoRALinear):
    """LoRA on a frozen NF4 base (eq. 1 of the module docstring; notebook 08; Dettmers et al., 2023).

    A :class:`~lorakit.lora.LoRALinear` subclass, so :mod:`lorakit.peft` (``lora_layers``,
    ``adapter_state_dict``, ``save_adapter``, ``load_adapter``, ``trainable_parameters``) treats it as a
    LoRA layer and writes the same PEFT-format keys.

    Args:
        base: the full-precision ``nn.Linear`` to quantize. It is not modified (``requires_grad`` of its
            parameters is switched off, as LoRALinear does); the layer keeps no reference to its weight,
            so once the caller drops ``base`` only the 4-bit copy remains.
        r, alpha, dropout, rslora, init: as :class:`~lorakit.lora.LoRALinear`. ``init="pissa"`` takes the
            top-r singular triplets of the full-precision weight and quantizes the residual (QPiSSA).
        blocksize: weights per absmax block (64 in QLoRA). double_quant: quantize the absmax constants to
            8 bits in blocks of 256 (QLoRA's double quantization). compute_dtype: dtype of the
            dequantized weight and of the base matmul. backend: ``"lorakit"`` or ``"bitsandbytes"``.
        adapter_dtype: dtype of ``lora_A``/``lora_B`` (fp32 by default, as PEFT keeps adapters on 4-bit bases).

    Attributes: ``base`` (:class:`NF4Linear` or ``bitsandbytes.nn.Linear4bit``; after
    ``merge(requantize=False)`` a dense ``nn.Linear``), ``lora_A``, ``lora_B``, ``scaling``, ``merged``.
    """

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
    ) -> None:
        _check_base(base)
        _check_quant_args(blocksize, double_quant, compute_dtype, backend)
        _check_dtype("adapter_dtype", adapter_dtype, ADAPTER_DTYPES)
        pissa = init == "pissa"
        if pissa and isinstance(r, int) and r > min(base.in_features, base.out_features):
            raise ValueError(f"r={r} exceeds min(in, out)={min(base.in_features, base.out_features)}; "
                             "PiSSA needs r singular vectors")
        # LoRALinear validates r/alpha/dropout/init, freezes base, creates A and B; PiSSA is done below so
        # that the caller's layer is never modified
        super().__init__(base, r, alpha, dropout, rslora, "zeros" if pissa else init, adapter_dtype)
        self.blocksize, self.double_quant, self.compute_dtype, self.backend = (
            blocksize, double_quant, compute_dtype, backend)
        self._unmerged_base: nn.Module | None = None
        self.base = _quantize_base(base, blocksize, double_quant, compute_dtype, backend)  # drops the fp weight
        if pissa:
            self._pissa_from(base.weight.detach().float(), base)
            self.init = "pissa"

    # ----------------------------------------------------------------------- weights
    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The frozen base weight rebuilt from its 4 bits, ``[out, in]``, in ``dtype`` (default compute_dtype).

        After ``merge()`` this is the merged weight (dense or requantized).
        """
        dtype = self.compute_dtype if dtype is None else dtype
        base = self.base
        if isinstance(base, NF4Linear):
            return base.dequantized_weight(dtype)
        if _is_bnb_linear4bit(base):
            return _bnb_dequantize(base, dtype)
        return base.weight.detach().to(dtype)

    @property
    def storage_bytes(self) -> int:
        """Bytes of the frozen base weight as stored now (4-bit codes + constants, or dense after a merge)."""
        base = self.base
        if isinstance(base, NF4Linear):
            return base.storage_bytes
        if _is_bnb_linear4bit(base):
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
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())

    @torch.no_grad()
    def _pissa_from(self, weight: torch.Tensor, like: nn.Linear) -> None:
        # W = U S V^T; s*B@A = the top-r part; the base stores Q(W - s*B@A) (PiSSA, Meng et al. 2024)
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(S[: self.r] / self.scaling)
        self.lora_A.copy_(root[:, None] * Vh[: self.r])
        self.lora_B.copy_(U[:, : self.r] * root[None, :])
        residual = (weight - self.scaling * (self.lora_B.float() @ self.lora_A.float())).to(like.weight.dtype)
        self.base = _quantize_base(like, self.blocksize, self.double_quant, self.compute_dtype, self.backend,
                                   weight=residual)

    @torch.no_grad()
    def _pissa_init(self) -> None:
        # re-initialising an existing layer: only the dequantized weight is left, so PiSSA runs on it
        like = _plain_linear_like(self, torch.float32)
        self._pissa_from(self.dequantized_weight(torch.float32), like)

    # ----------------------------------------------------------------------- merge
    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``dequant(Q(W0)) + scaling * B @ A`` in float32: the exact merge target (unmerged layers only)."""
        if self.merged:
            raise RuntimeError("the layer is merged already; merged_weight() needs the unmerged base")
        return self.dequantized_weight(torch.float32) + self.delta_weight()

    @torch.no_grad()
    def merge(self, requantize: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
        """Fold ``scaling * B @ A`` into the base and return the new base module.

        ``requantize=False``: the base becomes a dense ``nn.Linear`` in ``dtype`` (default compute_dtype,
        bf16) holding ``dequant(Q(W0)) + s B A``; ``requantize=True``: the base becomes a 4-bit layer of
        the same backend holding ``Q(dequant(Q(W0)) + s B A)`` (what PEFT's merge on 4-bit models does).
        The original 4-bit base is kept aside, so ``unmerge()`` restores it exactly. Merging a merged
        layer warns and changes nothing.
        """
        if not isinstance(requantize, bool):
            raise TypeError(f"requantize must be a bool, got {type(requantize).__name__} {requantize!r}")
        if dtype is not None:
            _check_dtype("dtype", dtype, COMPUTE_DTYPES)
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return self.base
        merged = self.merged_weight()
        if requantize:
            like = _plain_linear_like(self, merged.dtype)
            new = _quantize_base(like, self.blocksize, self.double_quant, self.compute_dtype, self.backend,
                                 weight=merged)
        else:
            new = _plain_linear_like(self, self.compute_dtype if dtype is None else dtype, weight=merged)
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
        if isinstance(base, NF4Linear) or _is_bnb_linear4bit(base):
            return base(x)  # both cast x to compute_dtype and the result back to x.dtype
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

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, backend={self.backend!r}, blocksize={self.blocksize}, "
            f"double_quant={self.double_quant}, compute_dtype={self.compute_dtype}"
        )


def _plain_linear_like(layer: QLoRALinear, dtype: torch.dtype, weight: torch.Tensor | None = None) -> nn.Linear:
    """A frozen ``nn.Linear`` with ``layer``'s shape, bias and device (weight = ``weight`` or empty)."""
    base = layer.base
    bias = getattr(base, "bias", None)
    device = layer.lora_A.device
    linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    w = torch.empty(layer.out_features, layer.in_features, device=device, dtype=dtype) if weight is None else weight
    linear.weight = nn.Parameter(w.detach().to(device=device, dtype=dtype), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().to(device=device, dtype=dtype).clone(), requires_grad=False)
    return linear


# --------------------------------------------------------------------------- merge error
@torch.no_grad()
def merge_error(layer: QLoRALinear, x: torch.Tensor) -> dict[str, float]:
    """How far each way of merging lands from the unmerged QLoRA layer (notebook 08, "merge").

    The reference is the unmerged layer's own output ``y = layer(x)`` (eval mode). For both merges,
    ``"bf16"`` (dense, ``merge(requantize=False)`` in the layer's compute dtype) and ``"requantized"``
    (``merge(requantize=True)``), it reports the relative output error ``||y_m - y|| / ||y||``
    (``output_rel_<way>``), the relative error of the stored weight against the exact fp32 merge
    ``W* = dequant(Q(W0)) + s B A`` (``weight_rel_<way>``), and that weight error divided by the norm of
    the update ``s B A`` (``weight_err_over_delta_<way>``: above 1 means the merge error is larger than
    the whole fine-tuning update). ``delta_rel`` is ``||s B A|| / ||W*||``. ``layer`` is not modified.
    """
    if not isinstance(layer, QLoRALinear):
        raise TypeError(f"layer must be a QLoRALinear, got {type(layer).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if x.shape[-1] != layer.in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim but the layer expects {layer.in_features}")
    if layer.merged:
        raise ValueError("layer is merged; merge_error needs the unmerged layer (call unmerge() first)")
    was_training = layer.training
    layer.eval()
    try:
        y = layer(x).float()
        exact = layer.merged_weight()
        delta_norm = layer.delta_weight().norm().item()
        out: dict[str, float] = {"delta_rel": delta_norm / exact.norm().item()}
        for way, requantize in (("bf16", False), ("requantized", True)):
            twin = copy.deepcopy(layer)
            twin.merge(requantize=requantize)
            y_m = twin(x).float()
            w_err = (twin.dequantized_weight(torch.float32) - exact).norm().item()
            out[f"output_rel_{way}"] = ((y_m - y).norm() / y.norm().clamp_min(1e-30)).item()
            out[f"weight_rel_{way}"] = w_err / exact.norm().item()
            out[f"weight_err_over_delta_{way}"] = w_err / delta_norm if delta_norm > 0 else math.inf
    finally:
        layer.train(was_training)
    return out


# --------------------------------------------------------------------------- model level
def qlora_layers(model: nn.Module) -> dict[str, QLoRALinear]:
    """``{module name: QLoRALinear}`` for every QLoRA layer in ``model``."""
    check_model(model)
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, QLoRALinear)}


def apply_qlora(
    model: nn.Module,
    config: LoRAConfig,
    blocksize: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    backend: str = "lorakit",
    adapter_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by :class:`QLoRALinear`, in place; return ``model``.

    Targets follow :class:`lorakit.peft.LoRAConfig` (suffixes, regex or ``"all-linear"``, as
    :func:`lorakit.peft.apply_lora`). Every other parameter is frozen, so gradients reach only the LoRA
    factors. ``model.lora_config`` is set, so :func:`lorakit.peft.save_adapter` works unchanged and writes
    the same keys as a LoRA adapter on the same model. Bad arguments raise before the model changes.
    """
    check_model(model)
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    if config.use_dora:
        raise ValueError("config.use_dora=True is not supported by apply_qlora (QLoRA trains plain LoRA factors)")
    _check_quant_args(blocksize, double_quant, compute_dtype, backend)
    _check_dtype("adapter_dtype", adapter_dtype, ADAPTER_DTYPES)
    refuse_adapted_model(model, "apply_qlora")
    names = select_target_modules(model, config.target_modules)
    new_layers = {}
    for name in names:  # build every layer first: any error leaves the model's structure unchanged
        base = model.get_submodule(name)
        new_layers[name] = QLoRALinear(
            base, config.r, config.alpha, config.dropout, config.rslora, blocksize, double_quant, compute_dtype,
            backend, config.init, adapter_dtype,
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in new_layers.items():
        set_submodule(model, name, layer)
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    model.lora_config = config  # type: ignore[assignment]
    return model


def merge_qlora(model: nn.Module, requantize: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """Merge every QLoRA layer and unload it: each becomes its merged base module (in place).

    ``requantize=False``: dense ``nn.Linear`` layers in ``dtype`` (default: each layer's compute dtype,
    bf16), holding ``dequant(Q(W0)) + s B A``; the rest of the model keeps its dtype, so run it in that
    dtype (or pass ``dtype=model's dtype``). ``requantize=True``: 4-bit layers (the same backend) holding
    ``Q(dequant(Q(W0)) + s B A)``, still taking inputs of any float dtype. See :func:`merge_error`.
    """
    layers = qlora_layers(model)
    if not layers:
        raise ValueError("model has no QLoRA layers to merge")
    if not isinstance(requantize, bool):
        raise TypeError(f"requantize must be a bool, got {type(requantize).__name__} {requantize!r}")
    if dtype is not None:
        _check_dtype("dtype", dtype, COMPUTE_DTYPES)
    for name, layer in layers.items():
        if layer.merged:
            layer.unmerge()
        set_submodule(model, name, layer.merge(requantize=requantize, dtype=dtype))
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


#: PEFT's name for :func:`merge_qlora`.
merge_and_unload = merge_qlora


__all__ = [
    "ADAPTER_DTYPES", "BACKENDS", "COMPUTE_DTYPES", "NF4Linear", "QLoRALinear", "apply_qlora",
    "bnb_linear4bit_from_linear", "merge_and_unload", "merge_error", "merge_qlora", "qlora_layers",
]
