"""The level tables: NF4 (notebook 06), the INT4 and FP4 codes it is compared with, and the 8-bit dynamic code.

Every table is a float32 tensor whose entry ``i`` is the value of code ``i``. All of them equal
bitsandbytes' tables bit for bit (``tests/test_nf4_crosscheck.py``).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["NF4_OFFSET", "NF4_OFFSET_EXACT", "dynamic_code", "fp4_code", "int4_code", "is_code", "nf4_code"]

#: bitsandbytes' NF4 offset, 0.9677083: the exact fraction 929/960 rounded to 7 decimals. See nf4_code.
NF4_OFFSET: float = round(929 / 960, 7)
#: The exact fraction the offset approximates: the mean of 1 - 1/(2*15) and 1 - 1/(2*16) (see nf4_code).
NF4_OFFSET_EXACT: float = 929 / 960


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
def dynamic_code_on(device: torch.device) -> torch.Tensor:
    """The signed dynamic code on ``device`` (cached: shared, never to be written to)."""
    return _dynamic_code_cached(True).to(device)


def is_code(code: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``code`` holds exactly the bit patterns of ``reference`` (so +0.0 and -0.0 differ; a host sync)."""
    if code.shape != reference.shape or code.dtype != reference.dtype:
        return False
    return torch.equal(code.detach().cpu().view(torch.int32), reference.view(torch.int32))
