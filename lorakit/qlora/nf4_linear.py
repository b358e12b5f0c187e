"""``NF4Linear``: a frozen ``nn.Linear`` whose weight is stored in 4 bits, pure PyTorch (notebook 08).

**Storage (what ``state_dict()`` holds).** Exactly the keys bitsandbytes' ``Linear4bit`` writes, so a
checkpoint moves between the two backends and is readable by bitsandbytes and transformers
(:mod:`lorakit.nf4.serialization`)::

    weight                                  packed 4-bit codes, a frozen nn.Parameter [ceil(n/2) bytes, 1]
    weight.absmax, weight.quant_map, ...    the quantization state (fp32 absmax or its double-quantized form)
    weight.quant_state.bitsandbytes__nf4    JSON metadata: blocksize, dtype and shape of the original weight
    bias                                    the frozen bias, if any

Why the packed codes are an ``nn.Parameter``: sharding a model with FSDP2 (``fully_shard``) splits the
*parameters* of each module along dim 0 and all-gathers them before use; buffers are only replicated. The
codes are the bulk of a 4-bit model, so they must be a parameter FSDP can see, shard and flatten. FSDP
flattens a module's parameters into one buffer of one dtype; ``quant_storage`` (as in bitsandbytes) stores
the same bytes viewed as another dtype (e.g. ``torch.bfloat16``, two bytes of codes per element), so the
codes can share that buffer with bf16 parameters. The quantization state (absmax, levels) is small and
stays in non-persistent buffers, replicated on every rank, with the layer's shape kept as attributes, so
a sharded-then-gathered ``weight`` decodes exactly like the original. The codes are frozen
(``requires_grad=False``) and listed by :meth:`NF4Linear.quantized_parameters`, so
:func:`lorakit.peft.trainable_parameters` counts them as the weights they hold, not as bytes.

**dtype casts never touch the format.** ``model.to(torch.bfloat16)`` casts the bias, as for any layer,
but moves the 4-bit storage only across devices: the fp32 absmax constants are part of the format, and
rounding them to bf16 would silently change every weight.

**Loading checks everything first.** ``load_state_dict`` reads the entries, checks them (shape, dtype,
blocksize, double quantization, levels, absmax finite and >= 0, byte count) against this layer, and only
then writes them: a mismatched or corrupted state dict raises a ValueError naming the key, and the layer is
unchanged. Afterwards the forward uses the state unchecked (:mod:`lorakit.nf4.kernels`).
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit import nf4
from lorakit.nf4 import kernels
from lorakit.nf4.codes import dynamic_code_on
from lorakit.nf4.containers import DoubleQuantizedAbsmax, QuantizedTensor
from lorakit.nf4.serialization import check_same_format, packed_as_storage, quant_state_entries, quantized_from_state
from lorakit.qlora.checks import COMPUTE_DTYPES, QUANT_STORAGES, check_dtype, quant_code
from lorakit.qlora.matmul import nf4_linear

__all__ = ["NF4Linear"]

#: The buffers holding the quantization state (their dtypes are part of the format).
_STATE_BUFFERS = ("absmax", "nested_absmax", "nested_offset", "quant_map", "nested_quant_map", "pair_table")


class NF4Linear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is stored as NF4 (or another 4-bit code); see the module docstring.

    ``forward(x)`` computes ``x W^T + b`` with ``W`` dequantized into ``compute_dtype`` (or the autocast
    dtype under ``torch.autocast``), the bias in that dtype too (as bitsandbytes' ``Linear4bit``), and casts
    the result back to ``x.dtype``.

    Args:
        quantized: the 2-D weight ``[out, in]`` as a :class:`lorakit.nf4.QuantizedTensor` (checked here).
        bias: ``[out]`` or None. compute_dtype: fp32, bf16 or fp16.
        quant_storage: the dtype the packed codes are stored as (default uint8; see the module docstring).

    Attributes: ``weight`` (the packed codes), ``bias``, ``weight_shape``, ``weight_dtype`` (the dtype of
    the weight that was quantized), ``blocksize``, ``double_quant``, ``compute_dtype``, ``quant_storage``;
    ``quantized`` is a :class:`~lorakit.nf4.QuantizedTensor` view of the stored state.
    """

    #: ``"pytorch"`` (:func:`lorakit.qlora.nf4_linear`) or ``"triton"`` (the fused kernels of
    #: :mod:`lorakit.kernels.nf4_matmul`, ``QLoRALinear(backend="triton")``); the storage is the same.
    matmul = "pytorch"

    def __init__(
        self,
        quantized: QuantizedTensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype = torch.bfloat16,
        quant_storage: torch.dtype = torch.uint8,
    ) -> None:
        super().__init__()
        if not isinstance(quantized, QuantizedTensor):
            raise TypeError(f"quantized must be a lorakit.nf4.QuantizedTensor, got {type(quantized).__name__}")
        quantized.validate()
        if len(quantized.shape) != 2:
            raise ValueError(f"quantized must hold a 2-D weight [out, in], got shape {tuple(quantized.shape)}")
        check_dtype("compute_dtype", compute_dtype, COMPUTE_DTYPES)
        check_dtype("quant_storage", quant_storage, QUANT_STORAGES)
        out_features, in_features = int(quantized.shape[0]), int(quantized.shape[1])
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
                raise TypeError(f"bias must be a floating-point tensor or None, got {type(bias).__name__}")
            if tuple(bias.shape) != (out_features,):
                raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
            if bias.device != quantized.device:
                raise ValueError(f"bias is on {bias.device} but quantized is on {quantized.device}")
        self.out_features, self.in_features = out_features, in_features
        self.compute_dtype = compute_dtype
        self.quant_storage = quant_storage
        self.weight = nn.Parameter(packed_as_storage(quantized.packed, quant_storage), requires_grad=False)
        self._set_state(quantized)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    # ------------------------------------------------------------------ construction
    def _set_state(self, q: QuantizedTensor) -> None:
        """Register ``q``'s quantization state (everything but the packed codes) as buffers."""
        self.weight_shape, self.weight_dtype, self.blocksize = torch.Size(q.shape), q.dtype, q.blocksize
        if isinstance(q.absmax, DoubleQuantizedAbsmax):
            dq = q.absmax
            self.register_buffer("absmax", dq.codes, persistent=False)
            self.register_buffer("nested_absmax", dq.scales, persistent=False)
            self.register_buffer("nested_offset", torch.tensor(dq.offset, dtype=torch.float32, device=dq.device),
                                 persistent=False)
            self.register_buffer("nested_quant_map", dynamic_code_on(dq.device).clone(), persistent=False)
            self.nested_blocksize = dq.blocksize
        else:
            self.register_buffer("absmax", q.absmax, persistent=False)
            for name in ("nested_absmax", "nested_offset", "nested_quant_map"):
                self.register_buffer(name, None, persistent=False)
            self.nested_blocksize = None
        self.register_buffer("quant_map", q.code, persistent=False)
        self.register_buffer("pair_table", kernels.pair_table(q.code), persistent=False)

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        dtype: torch.dtype | None = None,
        quant_storage: torch.dtype = torch.uint8,
        quant_type: str = "nf4",
    ) -> NF4Linear:
        """NF4-quantize ``weight`` (any float dtype, quantized as given: one rounding); ``dtype`` is the dtype to
        record as the original weight's (default ``weight.dtype``: what ``dequantized_weight`` and merges use).
        ``quant_type="fp4"``/``"int4"`` stores the same layout with another 16-level code (the capstone's table)."""
        q = nf4.quantize_4bit(weight.detach(), quant_code(quant_type), blocksize=blocksize, double_quant=double_quant)
        if dtype is not None and dtype != q.dtype:
            check_dtype("dtype", dtype, COMPUTE_DTYPES)
            q = QuantizedTensor(q.packed, q.absmax, q.shape, dtype, q.blocksize, q.code)
        return cls(q, None if bias is None else bias.detach(), compute_dtype, quant_storage)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        weight: torch.Tensor | None = None,
        quant_storage: torch.dtype = torch.uint8,
    ) -> NF4Linear:
        """Quantize ``linear`` (or ``weight`` in its place) to NF4; ``linear`` itself is not modified."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight if weight is None else weight
        return cls.from_weight(w, linear.bias, blocksize, double_quant, compute_dtype, quant_storage=quant_storage)

    # ------------------------------------------------------------------ views
    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    @property
    def quantized(self) -> QuantizedTensor:
        """The stored weight as a :class:`~lorakit.nf4.QuantizedTensor` (a view: it shares this layer's tensors)."""
        packed = self.weight.detach().reshape(-1).view(torch.uint8)
        absmax: torch.Tensor | DoubleQuantizedAbsmax = self.absmax
        if self.nested_absmax is not None:
            absmax = DoubleQuantizedAbsmax.trusted(self.absmax, self.nested_absmax, float(self.nested_offset),
                                                   self.nested_blocksize)
        return QuantizedTensor.trusted(packed, absmax, self.weight_shape, self.weight_dtype, self.blocksize,
                                       self.quant_map)

    def quantized_parameters(self) -> tuple[nn.Parameter, ...]:
        """The parameters that hold packed codes (counted as weights by ``trainable_parameters``)."""
        return (self.weight,)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight rebuilt from its 4-bit codes, ``[out, in]``, in ``dtype`` (default compute_dtype)."""
        dtype = self.compute_dtype if dtype is None else dtype
        check_dtype("dtype", dtype, COMPUTE_DTYPES)
        with torch.no_grad():
            return kernels.decode_weight(self.weight, self.absmax, self.pair_table, tuple(self.weight_shape),
                                         self.blocksize, dtype, self.nested_absmax, self.nested_offset,
                                         self.nested_quant_map, self.nested_blocksize or 256)

    @property
    def storage_bytes(self) -> int:
        """Bytes the quantized weight occupies (codes + absmax constants), bias excluded."""
        n_blocks = self.absmax.numel()
        absmax_bytes = n_blocks + 4 * self.nested_absmax.numel() + 4 if self.double_quant else 4 * n_blocks
        return self.weight.numel() * self.weight.element_size() + absmax_bytes

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features in its last dim but the layer expects {self.in_features}")
        if self.matmul == "triton":
            from lorakit.kernels.nf4_matmul import nf4_linear as fused_nf4_linear

            out = fused_nf4_linear(x, self.weight, self.bias, self.absmax, self.quant_map, tuple(self.weight_shape),
                                   self.blocksize, self.compute_dtype, self.nested_absmax, self.nested_offset,
                                   self.nested_quant_map, self.nested_blocksize or 256)
        else:
            out = nf4_linear(x, self.weight, self.bias, self.absmax, self.pair_table, tuple(self.weight_shape),
                             self.blocksize, self.compute_dtype, self.nested_absmax, self.nested_offset,
                             self.nested_quant_map, self.nested_blocksize or 256)
        return out.to(x.dtype)

    # ------------------------------------------------------------------ moves and casts
    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # device moves reach the 4-bit storage; dtype casts do not (the dtypes are part of the format)
        protected = {id(t) for t in (self.weight, *(self._buffers.get(n) for n in _STATE_BUFFERS)) if t is not None}

        def keep_format(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in protected:
                return fn(t)
            device = fn(torch.empty(0, dtype=t.dtype, device=t.device)).device
            if t.is_meta:
                return torch.empty_like(t, device=device)
            return t if device == t.device else t.to(device)

        return super()._apply(keep_format, recurse)

    # ------------------------------------------------------------------ state dict
    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight (packed codes) and bias
        for key, value in quant_state_entries(self.quantized).items():
            destination[f"{prefix}weight.{key}"] = value if keep_vars else value.detach()

    def check_state(self, state_dict: dict, prefix: str = "") -> tuple[QuantizedTensor | None, torch.Tensor | None]:
        """Check this layer's entries of ``state_dict`` (keys ``prefix + "weight"``, ...) without loading them.

        Returns ``(quantized, bias)`` read from the state dict (None where the key is absent). ValueError,
        naming the key, when an entry is malformed or describes another layer (shape, dtype, blocksize, double
        quantization, levels) than this one.
        """
        key = prefix + "weight"
        entries = {k[len(key) + 1:]: v for k, v in state_dict.items() if k.startswith(key + ".")}
        q = None
        if key in state_dict:
            q = quantized_from_state(state_dict[key], entries, key)
            check_same_format(q, self.quantized, key)
        elif entries:
            raise ValueError(f"{key} (the packed codes) is missing, but its quantization entries are present")
        bias = state_dict.get(prefix + "bias")
        if bias is not None:
            if self.bias is None:
                raise ValueError(f"{prefix}bias is in the state dict but this layer has no bias")
            if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or bias.shape != self.bias.shape:
                raise ValueError(f"{prefix}bias must be a float tensor of shape {tuple(self.bias.shape)}, got "
                                 f"{getattr(bias, 'dtype', type(bias).__name__)} {tuple(getattr(bias, 'shape', ()))}")
            if not bool(torch.isfinite(bias).all()):
                raise ValueError(f"{prefix}bias contains NaN or inf")
        return q, bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        for hook in self._load_state_dict_pre_hooks.values():
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        q, bias = self.check_state(state_dict, prefix)  # raises before anything is written
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        with torch.no_grad():
            if q is not None:
                if assign:
                    self.weight = nn.Parameter(packed_as_storage(q.packed, self.quant_storage), requires_grad=False)
                    self._set_state(q)
                else:
                    self._copy_state(q)
            if bias is not None:
                if assign:
                    self.bias = nn.Parameter(bias.detach(), requires_grad=False)
                else:
                    self.bias.copy_(bias)
        if q is None:
            missing_keys.append(prefix + "weight")
        if self.bias is not None and bias is None:
            missing_keys.append(prefix + "bias")
        if strict:
            known = {"weight", "bias"}
            for k in state_dict:
                if k.startswith(prefix):
                    rest = k[len(prefix):]
                    if rest not in known and not rest.startswith("weight."):
                        unexpected_keys.append(k)

    def _copy_state(self, q: QuantizedTensor) -> None:
        self.weight.reshape(-1).view(torch.uint8).copy_(q.packed)
        if isinstance(q.absmax, DoubleQuantizedAbsmax):
            self.absmax.copy_(q.absmax.codes)
            self.nested_absmax.copy_(q.absmax.scales)
            self.nested_offset.fill_(q.absmax.offset)
        else:
            self.absmax.copy_(q.absmax)
        self.quant_map.copy_(q.code)
        self.pair_table.copy_(kernels.pair_table(self.quant_map))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"blocksize={self.blocksize}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}"
        )

