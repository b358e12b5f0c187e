"""Checks for the "Check yourself" exercises of notebook 06 (NF4 quantile construction).

Every expected answer is computed here with :mod:`lorakit.nf4` (or scipy's normal quantile function) from the
arguments, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorakit.check import grade_callable, grade_choice, grade_value, report
from lorakit.nf4 import NF4_OFFSET, nf4_code, quantize_nf4

__all__ = ["q1", "q2", "q3", "q4", "q5", "nf4_code_of", "packed_byte"]


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def nf4_code_of(w: float, absmax: float) -> int:
    """Notebook 06, section 5: the 4-bit NF4 code lorakit stores for weight ``w`` in a block whose absmax is ``absmax``.

    Built as a real two-element block ``[w, absmax]`` (so the block's absmax is ``absmax``) and quantized
    with :func:`lorakit.nf4.quantize_nf4`; the code of ``w`` is the high nibble of the first byte.
    """
    w, absmax = _check_number("w", w), _check_number("absmax", absmax)
    if not absmax > 0 or abs(w) > absmax:
        raise ValueError(f"need absmax > 0 and |w| <= absmax, got w={w}, absmax={absmax}")
    q = quantize_nf4(torch.tensor([w, absmax], dtype=torch.float32))
    return int(q.packed[0]) >> 4


def packed_byte(first: int, second: int) -> int:
    """Notebook 06, section 5: the byte stored for two consecutive elements with NF4 codes ``first``, ``second``.

    The two elements are the NF4 levels themselves, in a block that also holds 1.0 (so the absmax is 1 and
    each level maps to its own code); the answer is read from :func:`lorakit.nf4.quantize_nf4`'s first byte.
    """
    for name, c in (("first", first), ("second", second)):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 15:
            raise ValueError(f"{name} must be a 4-bit code in 0..15, got {c!r}")
    code = nf4_code()
    w = torch.stack([code[first], code[second], torch.tensor(1.0)])
    return int(quantize_nf4(w).packed[0])


def q1(answer: object, w: float = 0.3, absmax: float = 0.6) -> bool:
    """06.1: the NF4 code (0..15) of weight ``w`` in a block with absmax ``absmax``."""
    expected = nf4_code_of(w, absmax)
    if answer is not None and not (isinstance(answer, int) and not isinstance(answer, bool)):
        return report("06.1", False, f"answer a code index 0..15 (an int), got {answer!r}")
    return grade_value(
        "06.1", answer, expected, rtol=0.0,
        hint="normalise w / absmax, then pick the NEAREST of the 16 levels in nf4_code() (index 0 = -1, 7 = 0.0); "
        "compare the distances to both neighbours, the nearest is not always the one a glance suggests",
    )


def q2(answer: object, first: int = 13, second: int = 2) -> bool:
    """06.2: the stored byte (0..255) for two consecutive elements with codes ``first`` and ``second``."""
    expected = packed_byte(first, second)
    if answer is not None and not (isinstance(answer, int) and not isinstance(answer, bool)):
        return report("06.2", False, f"answer the byte as an int 0..255, got {answer!r}")
    return grade_value(
        "06.2", answer, expected, rtol=0.0,
        hint="the first element goes in the HIGH nibble: byte = (first << 4) | second",
    )


def q3(fn: Callable[[float], torch.Tensor] | None) -> bool:
    """06.3: a function ``nf4_levels(offset) -> Tensor[16]`` that rebuilds the NF4 levels from normal quantiles."""
    return grade_callable(
        "06.3", fn, nf4_code, [(NF4_OFFSET,), (0.95,), (0.99,)],
        hint="8 positive levels Q(p) for p in linspace(offset, 0.5, 9)[:-1], 7 negative -Q(p) for "
        "linspace(offset, 0.5, 8)[:-1], one 0.0; sort ascending and divide by the largest",
    )


def q4(answer: object) -> bool:
    """06.4: why the 16 NF4 codes are not used equally often after blockwise absmax normalisation."""
    return grade_choice(
        "06.4",
        answer,
        "b",
        {
            "a": "no: the levels are the exact normal quantiles bitsandbytes uses (section 2 rebuilt them bit for "
            "bit); the mismatch is in the data the code receives",
            "b": "the code assumes the normalised weights are N(0,1) / Q(offset), i.e. the block maximum at 1.85 "
            "sigma, but the maximum of 64 normal draws averages about 2.6 sigma, so values crowd the middle codes; and "
            "every block puts one value exactly at -1 or +1",
            "c": "no: 4-bit rounding is deterministic and the same for every block; usage is uneven because of "
            "what the absmax division does to the distribution",
            "d": "no: MiniLM's heavier tails matter too, but the Gaussian weights of section 3 (exactly normal) "
            "already show the uneven usage",
        },
    )


def q5(answer: object) -> bool:
    """06.5: how many standard deviations the NF4 level +1 stands for: ``Q(NF4_OFFSET)``."""
    from scipy.stats import norm

    return grade_value(
        "06.5", answer, float(norm.ppf(NF4_OFFSET)), rtol=2e-3,
        hint="the levels are Q(p) / Q(offset): +1 corresponds to Q(offset) standard deviations (scipy.stats.norm.ppf)",
    )
