"""4-bit NormalFloat (NF4), blockwise absmax quantization and double quantization (notebooks 06-07).

QLoRA (Dettmers et al., 2023, arXiv:2305.14314) stores a frozen base weight in 4 bits a value and
dequantizes it on the fly. This module is a pure-PyTorch implementation (any device, fp32/bf16/fp16)
whose bytes equal bitsandbytes' ``quantize_4bit(..., quant_type="nf4")`` bit for bit; the tests
cross-check it (``tests/test_nf4_crosscheck.py``).

**The NF4 levels (notebook 06).** Quantile quantization puts one level per equal-probability slice of
the data's distribution. For weights ~ N(0, sigma^2) the paper's eq. (4) writes the i-th level as

    q_i = 1/2 * ( Q_X(i / (2^k + 1)) + Q_X((i + 1) / (2^k + 1)) ),

with ``Q_X`` the standard normal quantile function (inverse CDF), then normalises to [-1, 1].
bitsandbytes (and so every released QLoRA checkpoint) builds the table slightly differently, and
:func:`nf4_code` follows bitsandbytes, since the bytes must interoperate: it evaluates ``Q_X`` directly
at evenly spaced probabilities from 1/2 up to an ``offset`` just below 1 (``Q_X(1)`` is infinite, so
the top level cannot sit at probability 1), 8 points for the positive half and 7 for the negative half,
adds an exact zero and divides by the largest value. That gives 8 positive levels, 7 negative levels and
0: asymmetric, so all 16 codes are distinct and zero (padding, pruned weights) is represented exactly.

**Blockwise absmax (notebook 07).** The flattened tensor is cut into blocks of ``blocksize`` (64 in
QLoRA) consecutive elements; each block is divided by its own absolute maximum (stored in fp32) and
every value is rounded to the nearest level. One outlier then only coarsens its own block.
Two 4-bit codes share a byte, the first element in the high nibble.

**Double quantization (notebook 07).** The fp32 absmax costs 32/64 = 0.5 bit per parameter. QLoRA
quantizes those constants again: subtract their mean, then quantize them in blocks of 256 with an 8-bit
code (bitsandbytes' "dynamic" code, :func:`dynamic_code`), keeping one fp32 scale a block of 256 and the
fp32 mean. The overhead becomes 8/64 + 32/(64*256) = 0.127 bit per parameter (see
:func:`bits_per_parameter`).

**Behaviour copied from bitsandbytes 0.50.2 on purpose** (found by reading its CPU code and tested):

* scaling: full blocks compute ``x * (1 / absmax)``, the partial last block computes ``x / absmax``
  (the two can differ in the last bit, which can flip a rounding decision);
* ties: a value exactly half-way between two levels goes to the *lower* level
  (``torch.bucketize`` against the fp32 midpoints, ``right=False``);
* an all-zero block stores absmax 0 and code 7 (the level 0.0); an all-zero *partial last* block
  stores absmax 1e-38 (bitsandbytes clamps the divisor there and stores the clamped value);
* an odd element count is padded with one 0.0 before packing, so the spare low nibble holds code 7;
* double quantization rounds through bitsandbytes' CPU 65536-point grid (see :func:`double_quantize`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

#: bitsandbytes' NF4 offset, 0.9677083: the exact fraction 929/960 rounded to 7 decimals. See nf4_code.
NF4_OFFSET: float = round(929 / 960, 7)
#: The exact fraction the offset approximates: the mean of 1 - 1/(2*15) and 1 - 1/(2*16) (see nf4_code).
NF4_OFFSET_EXACT: float = 929 / 960

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Block sizes accepted (bitsandbytes' quantize_4bit accepts exactly these on every backend).
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Divisor floor used by bitsandbytes for all-zero blocks (a float32 subnormal once cast).
_TINY = 1e-38


# ----------------------------------------------------------------------------------------------
# codes
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _nf4_code_cached(offset: float) -> torch.Tensor:
    from scipy.stats import norm

    # float32 probabilities exactly as bitsandbytes' create_normal_map builds them
    positive = norm.ppf(torch.linspace(offset, 0.5, 9, dtype=torch.float32).numpy())[:-1]  # 8 levels > 0
    negative = -norm.ppf(torch.linspace(offset, 0.5, 8, dtype=torch.float32).numpy())[:-1]  # 7 levels < 0
    levels = torch.tensor([*positive.tolist(), 0.0, *negative.tolist()], dtype=torch.float32)
    levels = levels.sort().values
    return levels / levels.max()


def nf4_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, float32, ascending; ``code[i]`` is the value of 4-bit code ``i`` (notebook 06).

    Construction (bitsandbytes' ``create_normal_map``): with ``Q`` the standard normal quantile
    function, the positive levels are ``Q(p)`` for the 8 probabilities ``p`` evenly spaced from
    ``offset`` down to 1/2 (1/2 excluded), the negative levels are ``-Q(p)`` for 7 such probabilities,
    plus an exact 0; everything is divided by ``Q(offset)`` so the extremes are -1 and +1.
    This evaluates the quantile function *at* evenly spaced probabilities; it is not literally the
    average of neighbouring quantiles of Dettmers et al. (2023), eq. (4).

    Where the offset comes from: the top probability cannot be 1 (``Q(1) = inf``). If [0, 1] is cut
    into ``n`` equal-probability slices, the centre of the top slice sits at ``1 - 1/(2n)``. NF4 has 16
    codes but only 15 non-zero levels, so both ``n = 16`` and ``n = 15`` are defensible: ``1 - 1/32 =
    0.96875`` and ``1 - 1/30 = 0.966667``. The offset is their mean, ``(31/32 + 29/30)/2 = (465 + 464)/960
    = 929/960 = 0.96770833...`` (``NF4_OFFSET_EXACT``). The paper gives no derivation of this number; it is
    a heuristic compromise, not the solution of an optimisation. bitsandbytes hard-codes it rounded to
    7 decimals, 0.9677083 (= ``NF4_OFFSET``), and that rounding matters at the last bit: ``nf4_code(929/960)``
    differs from bitsandbytes' table by up to 3e-7, while ``nf4_code()`` equals it bit for bit.
    """
    if isinstance(offset, bool) or not isinstance(offset, (int, float)):
        raise TypeError(f"offset must be a float in (0.5, 1), got {type(offset).__name__} {offset!r}")
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset must be in (0.5, 1) (a probability above the median), got {offset}")
    return _nf4_code_cached(float(offset)).clone()


def int4_code() -> torch.Tensor:
    """Symmetric uniform INT4 levels ``k/7, k = -7..7`` (float32, ascending, 16 entries; notebook 06).

    Symmetric absmax INT4 rounds ``7 * x / absmax`` to an integer in [-7, 7]: 15 distinct levels. The
    16th code (two's complement -8) cannot be used without breaking the symmetry, so the table holds 0
    twice: one of 16 codes is wasted. bitsandbytes' ``get_4bit_type("int4")`` lists the same integers
    (``7 .. 0, -0 .. -7``), but in 0.50.2 it raises (its integer list becomes a ``torch.long`` tensor
    that cannot be divided in place), so this table is checked against ``k/7`` instead.
    """
    k = torch.arange(-7, 8, dtype=torch.float32)
    return torch.cat([k[:8], k[7:]]) / 7


def fp4_code() -> torch.Tensor:
    """bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit) levels, float32, in *bit-pattern* order.

    ``code[i]`` is the value of 4-bit code ``i`` exactly as bitsandbytes encodes it (so
    ``quantize_4bit(w, fp4_code())`` gives bitsandbytes' fp4 bytes). Bit 3 is the sign; the 3 low bits
    000..111 mean 0, 0.0625 (subnormal), 8, 12, 4, 6, 2, 3 (exponent bias 2), divided by the maximum 12.
    The table is not sorted, and holds zero twice, for codes 0 and 8 (one wasted code; bitsandbytes stores
    both as +0.0, and so does this table). Sort it for plots.
    """
    magnitudes = torch.tensor([0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0], dtype=torch.float32)
    code = torch.cat([magnitudes, -magnitudes]) / 12.0
    code[8] = 0.0  # +0.0, as bitsandbytes' table
    return code


@functools.lru_cache(maxsize=2)
def _dynamic_code_cached(signed: bool) -> torch.Tensor:
    values: list[float] = []
    for decade in range(7):  # magnitude 10**(decade - 6): 1e-6 ... 1
        n_fraction = 2**decade if signed else 2 ** (decade + 1)  # 2**(fraction bits) linear steps
        edges = torch.linspace(0.1, 1.0, n_fraction + 1, dtype=torch.float32)
        midpoints = (edges[:-1] + edges[1:]) / 2.0
        magnitude = (10.0 ** (decade - 6)) * midpoints
        values += magnitude.tolist()
        if signed:
            values += (-magnitude).tolist()
    values += [0.0, 1.0]
    assert len(values) == 256
    return torch.tensor(sorted(values), dtype=torch.float32)


def dynamic_code(signed: bool = True) -> torch.Tensor:
    """bitsandbytes' 8-bit "dynamic" code (``create_dynamic_map``), float32 [256], ascending.

    Dynamic tree quantization (Dettmers, 2015, arXiv:1511.04561), used by double quantization
    (notebook 07). Read an 8-bit pattern as: a sign bit; then a run of ``E`` zero bits ended by a 1
    (the indicator), which sets the decade ``10**-E``; the remaining ``6 - E`` bits are a linear fraction
    that picks one of ``2**(6 - E)`` equal slices of [0.1, 1], represented by the slice midpoint.
    So small magnitudes get a large exponent range and few fraction bits, large magnitudes the reverse:
    ``E = 0`` gives 64 values between 0.1 and 1, ``E = 6`` a single value 0.55e-6. Counting
    ``sum_E 2**(6-E) = 127`` magnitudes, both signs give 254 values; the all-zero pattern is 0 and
    bitsandbytes adds 1.0 to fill the 256th slot. (``signed=False`` spends the sign bit on one more
    fraction bit instead.) The stored byte is the index into this sorted table.
    """
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__} {signed!r}")
    return _dynamic_code_cached(signed).clone()


@functools.lru_cache(maxsize=16)
def _code_on(kind: str, device: torch.device) -> torch.Tensor:
    if kind == "dynamic":
        return _dynamic_code_cached(True).to(device)
    raise KeyError(kind)  # pragma: no cover


#: Cells of the uniform grid over [-1, 1] that bitsandbytes' CPU 8-bit quantizer rounds to first.
_GRID_CELLS = 65536


@functools.lru_cache(maxsize=8)
def _dynamic_grid_table(device: torch.device) -> torch.Tensor:
    """uint8 [65536]: for grid point ``g`` (value ``g / 32767.5 - 1``), the index of the nearest dynamic level."""
    code = _dynamic_code_cached(True)
    grid = torch.arange(_GRID_CELLS, dtype=torch.float32) / ((_GRID_CELLS - 1) / 2) - 1
    return torch.bucketize(grid, (code[:-1] + code[1:]) / 2).to(torch.uint8).to(device)


@functools.lru_cache(maxsize=64)
def _pair_table(code_bits: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """float64 [256] whose entry ``b`` holds, bit for bit, the two float32 values (code[b >> 4], code[b & 15]).

    Viewing a pair of float32 as one 8-byte scalar lets one fast 1-D gather decode two elements.
    (Keyed by the code's bit patterns, so +0.0 and -0.0 levels stay distinct.)
    """
    code = torch.tensor(code_bits, dtype=torch.int32).view(torch.float32)
    pairs = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1).contiguous()
    return pairs.view(torch.float64).view(256).to(device)


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _check_blocksize(blocksize: object, name: str = "blocksize") -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise TypeError(f"{name} must be an int power of two in [32, 4096], got {type(blocksize).__name__}")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"{name} must be a power of two in [32, 4096], got {blocksize}")
    return blocksize


def _check_weight(w: object, name: str = "w") -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or inf; quantization needs finite values")
    return w


def _check_code(code: object, name: str = "code") -> torch.Tensor:
    if not isinstance(code, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 16 float32 levels, got {type(code).__name__}")
    if code.dtype != torch.float32 or code.shape != (16,):
        raise ValueError(f"{name} must be a float32 tensor of shape (16,), got {code.dtype} {tuple(code.shape)}")
    if not bool(torch.isfinite(code).all()):
        raise ValueError(f"{name} must hold finite levels")
    return code


def _n_blocks(numel: int, blocksize: int) -> int:
    return -(-numel // blocksize)


# ----------------------------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DoubleQuantizedAbsmax:
    """The per-block absmax after double quantization (QLoRA section 3; notebook 07).

    ``absmax ~= dynamic_code()[codes] * scales[block // blocksize] + offset``.
    """

    codes: torch.Tensor  # uint8 [n_blocks]
    scales: torch.Tensor  # float32 [ceil(n_blocks / blocksize)]
    offset: float  # the subtracted mean (a float32 value)
    blocksize: int = 256

    def __post_init__(self) -> None:
        _check_blocksize(self.blocksize, "DoubleQuantizedAbsmax.blocksize")
        if not isinstance(self.codes, torch.Tensor) or self.codes.dtype != torch.uint8 or self.codes.dim() != 1:
            raise ValueError("DoubleQuantizedAbsmax.codes must be a 1-D uint8 tensor")
        if self.codes.numel() == 0:
            raise ValueError("DoubleQuantizedAbsmax.codes must not be empty")
        n_scales = _n_blocks(self.codes.numel(), self.blocksize)
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
        self.__post_init__()  # re-validate: fields can be swapped or mutated after construction
        code = _code_on("dynamic", self.codes.device)
        values = code[self.codes.long()]
        return _scale_blocks(values, self.scales, self.blocksize) + self.offset


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor stored as packed 4-bit codes plus per-block absmax (notebooks 06-08).

    ``packed``: uint8, 1-D, ``ceil(numel/2)`` bytes, element ``2j`` in the high nibble of byte ``j``.
    ``absmax``: float32 ``[ceil(numel/blocksize)]`` or a :class:`DoubleQuantizedAbsmax`.
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
        _check_blocksize(self.blocksize, "QuantizedTensor.blocksize")
        _check_code(self.code, "QuantizedTensor.code")
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
        n_blocks = _n_blocks(numel, self.blocksize)
        if isinstance(self.absmax, DoubleQuantizedAbsmax):
            DoubleQuantizedAbsmax.__post_init__(self.absmax)  # again: its tensors may have been swapped since
            if self.absmax.n_blocks != n_blocks:
                raise ValueError(
                    f"QuantizedTensor.absmax holds {self.absmax.n_blocks} blocks, expected {n_blocks} "
                    f"({numel} elements in blocks of {self.blocksize})"
                )
            absmax_device = self.absmax.device
        elif isinstance(self.absmax, torch.Tensor):
            if self.absmax.dtype != torch.float32 or self.absmax.shape != (n_blocks,):
                raise ValueError(
                    f"QuantizedTensor.absmax must be float32 of shape ({n_blocks},) ({numel} elements in blocks "
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

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def n_blocks(self) -> int:
        return _n_blocks(self.numel, self.blocksize)

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


# ----------------------------------------------------------------------------------------------
# quantize / dequantize
# ----------------------------------------------------------------------------------------------


def _blockwise_scale(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(absmax [n_blocks], x / absmax clamped to [-1, 1]) with bitsandbytes' exact float32 arithmetic."""
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    body = flat[:full].view(full // blocksize, blocksize)
    absmax = body.abs().amax(dim=1)
    scaled = torch.clamp(body * (1.0 / absmax.clamp(min=_TINY)).unsqueeze(1), -1, 1).reshape(-1)
    if rem:
        tail_absmax = flat[full:].abs().max().clamp(min=_TINY)  # stored clamped, as bitsandbytes does
        absmax = torch.cat([absmax, tail_absmax.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_absmax, -1, 1)])
    return absmax, scaled


def _nearest_level(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level of ``code`` for each value; ties to the lower level (as bitsandbytes)."""
    order = torch.argsort(code)
    ordered = code[order]
    midpoints = (ordered[:-1] + ordered[1:]) / 2
    position = torch.bucketize(scaled, midpoints, out_int32=True)
    if bool((order == torch.arange(code.numel(), device=code.device)).all()):
        return position
    return order.to(torch.int32)[position]


def _scale_blocks(values: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``values[i] * absmax[i // blocksize]`` in float32 (in place on ``values``)."""
    n = values.numel()
    rem = n % blocksize
    full = n - rem
    if full:
        values[:full].view(-1, blocksize).mul_(absmax[: full // blocksize].unsqueeze(1))
    if rem:
        values[full:].mul_(absmax[full // blocksize])
    return values


def quantize_4bit(
    w: torch.Tensor, code: torch.Tensor, blocksize: int = 64, double_quant: bool = False
) -> QuantizedTensor:
    """Blockwise absmax 4-bit quantization of ``w`` to the 16 levels ``code`` (notebook 07; QLoRA eq. (1)-(2)).

    For block ``b``: ``absmax_b = max |w_i|``, code ``c_i = argmin_j |w_i / absmax_b - code[j]|``
    (ties to the lower level), two codes a byte, first in the high nibble. ``code`` need not be sorted
    (``fp4_code()`` is in bit-pattern order). ``double_quant`` stores absmax via :func:`double_quantize`.
    Runs on ``w``'s device; ``w`` must be a non-empty, finite float32/bfloat16/float16 tensor.
    """
    _check_weight(w)
    code = _check_code(code).to(w.device)
    _check_blocksize(blocksize)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
    flat = w.detach().reshape(-1).float()
    absmax, scaled = _blockwise_scale(flat, blocksize)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))  # the spare nibble holds the code of 0.0
    q = _nearest_level(scaled, code).to(torch.uint8)
    packed = (q[0::2] << 4) | q[1::2]
    stored: torch.Tensor | DoubleQuantizedAbsmax = double_quantize(absmax) if double_quant else absmax
    return QuantizedTensor(packed, stored, w.shape, w.dtype, blocksize, code)


def unpack_codes(q: QuantizedTensor) -> torch.Tensor:
    """The 4-bit code of every element, int64 ``[numel]`` in storage order (notebook 06, section 5).

    Byte ``j`` holds element ``2j`` in its high nibble and element ``2j + 1`` in its low nibble
    (``byte = (c0 << 4) | c1``); the spare low nibble of an odd count is dropped.
    """
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    return torch.stack([q.packed >> 4, q.packed & 15], dim=1).reshape(-1)[: q.numel].long()


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False) -> QuantizedTensor:
    """NF4-quantize ``w`` (QLoRA's storage format); bytes and absmax equal bitsandbytes'
    ``quantize_4bit(w, blocksize, quant_type="nf4", compress_statistics=double_quant)``."""
    return quantize_4bit(w, nf4_code(), blocksize=blocksize, double_quant=double_quant)


def _resolve_dtype(q: QuantizedTensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return q.dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, bfloat16, float16 or None, got {dtype!r}")
    return dtype


#: Bytes decoded per step on CPU: small enough that the scratch buffers stay in cache, so the only
#: large allocation is the output itself (fresh memory is what dominates at this size).
_CPU_CHUNK_BYTES = 1 << 18


def _scale_into(values: torch.Tensor, absmax: torch.Tensor, blocksize: int, out: torch.Tensor) -> None:
    """``out[i] = values[i] * absmax[i // blocksize]`` (float32 product, then cast). ``values`` starts a block
    and is overwritten; the cast is a separate copy, much faster on CPU than a multiply that casts."""
    out.copy_(_scale_blocks(values, absmax, blocksize))


def dequantize_4bit(q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reconstruct ``code[c_i] * absmax_b`` (float32 products, then cast) with ``q``'s shape, on ``q.device``.

    The result has ``q.dtype`` unless ``dtype`` is given. Vectorised: a 256-entry table maps each byte
    to the values of its two nibbles, so one gather decodes two elements; on CPU the bytes are decoded
    in cache-sized chunks straight into the output.
    """
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    out_dtype = _resolve_dtype(q, dtype)
    # re-validate: a QuantizedTensor's tensors can be replaced or mutated in place after construction
    QuantizedTensor.__post_init__(q)
    absmax = q.absmax.dequantize() if isinstance(q.absmax, DoubleQuantizedAbsmax) else q.absmax
    table = _pair_table(tuple(q.code.view(torch.int32).tolist()), q.device)
    packed = q.packed
    n_bytes = packed.numel()
    chunk = _CPU_CHUNK_BYTES if q.device.type == "cpu" else n_bytes  # a multiple of blocksize / 2
    out = torch.empty(2 * n_bytes, dtype=out_dtype, device=q.device)
    index = torch.empty(min(chunk, n_bytes), dtype=torch.int32, device=q.device)
    # decode into a cache-sized float32 scratch, scale there, then one sequential copy (and cast) to the output
    scratch = torch.empty(min(chunk, n_bytes), dtype=torch.float64, device=q.device)
    bs = q.blocksize
    for start in range(0, n_bytes, chunk):
        stop = min(start + chunk, n_bytes)
        k = stop - start
        index[:k].copy_(packed[start:stop])
        target = out[2 * start : 2 * stop]
        torch.index_select(table, 0, index[:k], out=scratch[:k])
        _scale_into(scratch[:k].view(torch.float32), absmax[2 * start // bs :], bs, target)
    return out[: q.numel].view(q.shape)


def dequantize_nf4(q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`dequantize_4bit` for a tensor made by :func:`quantize_nf4` (checks that ``q.code`` is NF4);
    equals bitsandbytes' ``dequantize_4bit`` of the same bytes."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    if not torch.equal(q.code.cpu(), _nf4_code_cached(NF4_OFFSET)):
        raise ValueError("q.code is not the NF4 code; use dequantize_4bit for other 4-bit codes")
    return dequantize_4bit(q, dtype)


def double_quantize(absmax: torch.Tensor, blocksize: int = 256) -> DoubleQuantizedAbsmax:
    """Quantize the per-block absmax with the 8-bit dynamic code (QLoRA's double quantization; notebook 07).

    Subtract the mean (the constants are all positive; centring lets the signed code spend its sign bit
    on them), then blockwise absmax-quantize in blocks of ``blocksize`` to :func:`dynamic_code`, keeping
    one fp32 scale a block and the fp32 mean. Codes, scales and mean equal bitsandbytes'
    ``quantize_4bit(..., compress_statistics=True)`` state on CPU.

    Rounding detail copied from bitsandbytes' CPU kernel (found by probing it; tests pin it): the
    normalised value ``x = v / scale`` is first snapped to a uniform grid of 65536 points on [-1, 1]
    (``g = floor((x + 1) * 32767.5 + 0.5)``) and the level nearest to that grid point is stored. So a value
    within half a grid step (1.5e-5) of a midpoint between two levels may take the farther level, and the
    levels of magnitude below 1.5e-5 are never used. Both effects are far below the code's own step
    there, so the reconstruction error stays within one code step of exact nearest rounding. An all-zero
    block (every absmax equal to the mean) stores scale 0 and code 0, and reconstructs to the mean.
    """
    if not isinstance(absmax, torch.Tensor):
        raise TypeError(f"absmax must be a torch.Tensor, got {type(absmax).__name__}")
    if absmax.dtype != torch.float32 or absmax.dim() != 1:
        raise TypeError(f"absmax must be a 1-D float32 tensor, got {absmax.dtype} with {absmax.dim()} dims")
    _check_weight(absmax, "absmax")
    _check_blocksize(blocksize)
    offset = absmax.mean()
    centred = absmax - offset
    n = centred.numel()
    rem = n % blocksize
    full = n - rem
    body = centred[:full].view(full // blocksize, blocksize)
    scales = body.abs().amax(dim=1)
    scaled = (body / scales.unsqueeze(1)).reshape(-1)
    if rem:
        tail_scale = centred[full:].abs().max()
        scales = torch.cat([scales, tail_scale.unsqueeze(0)])
        scaled = torch.cat([scaled, centred[full:] / tail_scale])
    half = (_GRID_CELLS - 1) / 2
    grid = torch.floor((scaled + 1.0) * half + 0.5)
    grid = torch.nan_to_num(grid, nan=0.0).clamp_(0, _GRID_CELLS - 1).long()  # 0/0 (all-zero block) -> code 0
    codes = _dynamic_grid_table(absmax.device)[grid]
    return DoubleQuantizedAbsmax(codes, scales, float(offset), blocksize)


def bits_per_parameter(q: QuantizedTensor) -> float:
    """``8 * q.nbytes / q.numel``, from the bytes ``q`` actually stores (notebook 07).

    NF4 with blocksize 64: 4 bits of code + 32/64 = 0.5 bit of fp32 absmax = exactly 4.5 (when 64 divides
    the size). With double quantization the 0.5 becomes 8/64 = 0.125 (one 8-bit code a block)
    + 32/(64*256) = 0.00195 (one fp32 scale per 256 blocks) + 32/n (the fp32 mean, once per tensor):
    4.12695... + 32/n, the "0.127 bit per parameter" overhead of the QLoRA paper.
    """
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    return 8 * q.nbytes / q.numel


def storage_bytes(numel: int, blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256) -> int:
    """Closed form of ``quantize_nf4(w, blocksize, double_quant).nbytes`` for a tensor of ``numel`` elements.

    ``ceil(n/2)`` packed bytes + ``4 * ceil(n/blocksize)`` (fp32 absmax), or with double quantization
    ``ceil(n/blocksize)`` one-byte codes + ``4 * ceil(n_blocks/dq_blocksize)`` fp32 scales + 4 (the mean).
    """
    if isinstance(numel, bool) or not isinstance(numel, int):
        raise TypeError(f"numel must be an int, got {type(numel).__name__}")
    if numel <= 0:
        raise ValueError(f"numel must be positive, got {numel}")
    _check_blocksize(blocksize)
    _check_blocksize(dq_blocksize, "dq_blocksize")
    n_blocks = _n_blocks(numel, blocksize)
    if double_quant:
        return (numel + 1) // 2 + n_blocks + 4 * _n_blocks(n_blocks, dq_blocksize) + 4
    return (numel + 1) // 2 + 4 * n_blocks


__all__ = [
    "BLOCKSIZES", "NF4_OFFSET", "NF4_OFFSET_EXACT", "DoubleQuantizedAbsmax", "QuantizedTensor",
    "bits_per_parameter", "dequantize_4bit", "dequantize_nf4", "double_quantize", "dynamic_code", "fp4_code",
    "int4_code", "nf4_code", "quantize_4bit", "quantize_nf4", "storage_bytes", "unpack_codes",
]
