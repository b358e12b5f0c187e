"""The containers of a quantized tensor: :class:`QuantizedTensor` and :class:`DoubleQuantizedAbsmax` (notebooks 06-08).

Both check everything when they are made (shapes, dtypes, devices, and that every absmax scale is finite
and non-negative), and again whenever a *checked* function receives one (a field can be replaced or
mutated in place after construction). The layer's hot path uses the tensors directly, unchecked
(:mod:`lorakit.nf4.kernels`); :meth:`QuantizedTensor.trusted` builds a view on a layer's storage without
checking it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lorakit.nf4 import kernels
from lorakit.nf4.codes import dynamic_code_on
from lorakit.nf4.validation import FLOAT_DTYPES, check_blocksize, check_code, check_nonnegative_finite, n_blocks

__all__ = ["DoubleQuantizedAbsmax", "QuantizedTensor"]


def _trusted(cls, **values):
    obj = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


@dataclass(frozen=True, eq=False)
class DoubleQuantizedAbsmax:
    """The per-block absmax after double quantization (QLoRA section 3; notebook 07).

    ``absmax ~= dynamic_code()[codes] * scales[block // blocksize] + offset``.
    """

    codes: torch.Tensor  # uint8 [n_blocks]
    scales: torch.Tensor  # float32 [ceil(n_blocks / blocksize)], finite and >= 0
    offset: float  # the subtracted mean (a float32 value, finite and >= 0)
    blocksize: int = 256

    def __post_init__(self) -> None:
        check_blocksize(self.blocksize, "DoubleQuantizedAbsmax.blocksize")
        if not isinstance(self.codes, torch.Tensor) or self.codes.dtype != torch.uint8 or self.codes.dim() != 1:
            raise ValueError("DoubleQuantizedAbsmax.codes must be a 1-D uint8 tensor")
        if self.codes.numel() == 0:
            raise ValueError("DoubleQuantizedAbsmax.codes must not be empty")
        n_scales = n_blocks(self.codes.numel(), self.blocksize)
        if (
            not isinstance(self.scales, torch.Tensor)
            or self.scales.dtype != torch.float32
            or self.scales.shape != (n_scales,)
        ):
            raise ValueError(
                f"DoubleQuantizedAbsmax.scales must be float32 of shape ({n_scales},) for {self.codes.numel()} "
                f"codes in blocks of {self.blocksize}"
            )
        if self.scales.device != self.codes.device:
            raise ValueError("DoubleQuantizedAbsmax.codes and .scales must be on the same device")
        if isinstance(self.offset, bool) or not isinstance(self.offset, (int, float)):
            raise TypeError(f"DoubleQuantizedAbsmax.offset must be a float, got {type(self.offset).__name__}")
        if not math.isfinite(self.offset):
            raise ValueError(f"DoubleQuantizedAbsmax.offset must be finite, got {self.offset}")
        if self.offset < 0:
            raise ValueError(f"DoubleQuantizedAbsmax.offset must be >= 0 (the mean of the absmax values), "
                             f"got {self.offset}")
        check_nonnegative_finite(self.scales, "DoubleQuantizedAbsmax.scales")

    @classmethod
    def trusted(cls, codes: torch.Tensor, scales: torch.Tensor, offset: float, blocksize: int) -> DoubleQuantizedAbsmax:
        """Build one without checking (the fields come from a layer that checked them when it was made or loaded)."""
        return _trusted(cls, codes=codes, scales=scales, offset=offset, blocksize=blocksize)

    def validate(self) -> DoubleQuantizedAbsmax:
        """Run the construction checks again (a field may have been replaced or mutated since); return self."""
        self.__post_init__()
        return self

    @property
    def n_blocks(self) -> int:
        return self.codes.numel()

    @property
    def nbytes(self) -> int:
        """Bytes stored: one byte a code, 4 a scale, 4 for the fp32 offset."""
        return self.codes.numel() + 4 * self.scales.numel() + 4

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: torch.device | str) -> DoubleQuantizedAbsmax:
        return DoubleQuantizedAbsmax(self.codes.to(device), self.scales.to(device), self.offset, self.blocksize)

    def dequantize(self) -> torch.Tensor:
        """The reconstructed absmax, float32 [n_blocks], on ``self.device`` (as bitsandbytes' nested state)."""
        self.validate()
        return kernels.dequantize_absmax(self.codes, self.scales, self.offset, self.blocksize,
                                         dynamic_code_on(self.codes.device))


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor stored as packed 4-bit codes plus per-block absmax (notebooks 06-08).

    ``packed``: uint8, 1-D, ``ceil(numel/2)`` bytes, element ``2j`` in the high nibble of byte ``j``.
    ``absmax``: float32 ``[ceil(numel/blocksize)]``, finite and >= 0, or a :class:`DoubleQuantizedAbsmax`.
    ``shape``/``dtype``: the original tensor's. ``code``: the 16 float32 levels (``nf4_code()`` for NF4).
    """

    packed: torch.Tensor
    absmax: torch.Tensor | DoubleQuantizedAbsmax
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    code: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.shape, (torch.Size, tuple, list)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.shape
        ):
            raise TypeError(f"QuantizedTensor.shape must be a torch.Size of non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", torch.Size(self.shape))
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"QuantizedTensor.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        check_blocksize(self.blocksize, "QuantizedTensor.blocksize")
        check_code(self.code, "QuantizedTensor.code")
        numel = self.shape.numel()
        if numel == 0:
            raise ValueError(f"QuantizedTensor.shape must have at least one element, got {tuple(self.shape)}")
        if not isinstance(self.packed, torch.Tensor) or self.packed.dtype != torch.uint8 or self.packed.dim() != 1:
            got = (
                f"{self.packed.dtype} with {self.packed.dim()} dims"
                if isinstance(self.packed, torch.Tensor)
                else type(self.packed).__name__
            )
            raise ValueError(f"QuantizedTensor.packed must be a 1-D uint8 tensor, got {got}")
        if self.packed.numel() != (numel + 1) // 2:
            raise ValueError(
                f"QuantizedTensor.packed has {self.packed.numel()} bytes but shape {tuple(self.shape)} "
                f"({numel} elements) needs {(numel + 1) // 2}"
            )
        blocks = n_blocks(numel, self.blocksize)
        if isinstance(self.absmax, DoubleQuantizedAbsmax):
            self.absmax.validate()  # again: its tensors may have been swapped since
            if self.absmax.n_blocks != blocks:
                raise ValueError(
                    f"QuantizedTensor.absmax holds {self.absmax.n_blocks} blocks, expected {blocks} "
                    f"({numel} elements in blocks of {self.blocksize})"
                )
            absmax_device = self.absmax.device
        elif isinstance(self.absmax, torch.Tensor):
            if self.absmax.dtype != torch.float32 or self.absmax.shape != (blocks,):
                raise ValueError(
                    f"QuantizedTensor.absmax must be float32 of shape ({blocks},) ({numel} elements in blocks "
                    f"of {self.blocksize}), got {self.absmax.dtype} {tuple(self.absmax.shape)}"
                )
            absmax_device = self.absmax.device
        else:
            raise TypeError(
                "QuantizedTensor.absmax must be a float32 tensor or a DoubleQuantizedAbsmax, "
                f"got {type(self.absmax).__name__}"
            )
        if not (self.packed.device == absmax_device == self.code.device):
            raise ValueError(
                f"QuantizedTensor fields must share one device, got packed on {self.packed.device}, "
                f"absmax on {absmax_device}, code on {self.code.device}"
            )
        if isinstance(self.absmax, torch.Tensor):
            check_nonnegative_finite(self.absmax, "QuantizedTensor.absmax")

    @classmethod
    def trusted(
        cls, packed: torch.Tensor, absmax: torch.Tensor | DoubleQuantizedAbsmax, shape: torch.Size,
        dtype: torch.dtype, blocksize: int, code: torch.Tensor,
    ) -> QuantizedTensor:
        """Build one without checking (the fields come from a layer that checked them when it was made or loaded)."""
        return _trusted(cls, packed=packed, absmax=absmax, shape=torch.Size(shape), dtype=dtype,
                        blocksize=blocksize, code=code)

    def validate(self) -> QuantizedTensor:
        """Run the construction checks again (a field may have been replaced or mutated since); return self."""
        self.__post_init__()
        return self

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def n_blocks(self) -> int:
        return n_blocks(self.numel, self.blocksize)

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def double_quant(self) -> bool:
        return isinstance(self.absmax, DoubleQuantizedAbsmax)

    @property
    def nbytes(self) -> int:
        """Bytes this tensor stores: packed codes + absmax (fp32 each, or the double-quantized form).

        The 16-entry code table is shared by every tensor of a type and is not counted.
        """
        absmax_bytes = self.absmax.nbytes if isinstance(self.absmax, DoubleQuantizedAbsmax) else 4 * self.n_blocks
        return self.packed.numel() + absmax_bytes

    def to(self, device: torch.device | str) -> QuantizedTensor:
        """A copy on ``device`` (the bytes are unchanged)."""
        return QuantizedTensor(
            self.packed.to(device), self.absmax.to(device), self.shape, self.dtype, self.blocksize, self.code.to(device)
        )

    def absmax_fp32(self) -> torch.Tensor:
        """The per-block absmax as float32 (reconstructed when double-quantized), unchecked."""
        if isinstance(self.absmax, DoubleQuantizedAbsmax):
            a = self.absmax
            return kernels.dequantize_absmax(a.codes, a.scales, a.offset, a.blocksize, dynamic_code_on(a.device))
        return self.absmax
