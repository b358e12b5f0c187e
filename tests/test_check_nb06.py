"""Tests for lorakit.check.nb06 (notebook 06's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm

from lorakit.check import nb06
from lorakit.nf4 import NF4_OFFSET, nf4_code


def test_q1_code_of_weight() -> None:
    code = nf4_code()
    # 0.3 / 0.6 = 0.5 lies between levels 12 (0.4407) and 13 (0.5626) and is nearer to 12
    assert abs(0.5 - code[12]) < abs(0.5 - code[13])
    assert nb06.nf4_code_of(0.3, 0.6) == 12
    assert nb06.q1(12) is True
    assert nb06.q1(13) is False  # rounded up instead of to the nearest level
    assert nb06.q1(12.0) is False  # a code is an int
    assert nb06.q1(None) is False
    assert nb06.q1(15, w=0.6, absmax=0.6) is True  # the block maximum itself is level +1
    assert nb06.q1(7, w=0.0, absmax=0.6) is True  # exact zero is code 7
    assert nb06.q1(0, w=-0.6, absmax=0.6) is True


def test_q1_validates() -> None:
    with pytest.raises(ValueError, match="absmax"):
        nb06.nf4_code_of(1.0, 0.5)
    with pytest.raises(TypeError):
        nb06.nf4_code_of("0.3", 0.6)


def test_q2_packed_byte() -> None:
    assert nb06.packed_byte(13, 2) == (13 << 4) | 2
    assert nb06.q2(0xD2) is True
    assert nb06.q2(210) is True
    assert nb06.q2((2 << 4) | 13) is False  # low nibble first
    assert nb06.q2(15) is False  # 13 + 2
    assert nb06.q2(None) is False
    assert nb06.q2(0x7F, first=7, second=15) is True
    with pytest.raises(ValueError):
        nb06.packed_byte(16, 0)


def test_q3_levels_function() -> None:
    def right(offset: float) -> torch.Tensor:
        pos = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].numpy())
        neg = -norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())
        v = torch.tensor(sorted([*pos.tolist(), 0.0, *neg.tolist()]), dtype=torch.float32)
        return v / v.max()

    def symmetric(offset: float) -> torch.Tensor:  # 8 and 8, no zero: the wrong construction
        pos = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].numpy())
        v = torch.tensor(sorted([*pos.tolist(), *(-pos).tolist()]), dtype=torch.float32)
        return v / v.max()

    def not_normalised(offset: float) -> torch.Tensor:
        return right(offset) * float(norm.ppf(offset))

    assert nb06.q3(right) is True
    assert nb06.q3(symmetric) is False
    assert nb06.q3(not_normalised) is False
    assert nb06.q3(lambda offset: 1 / 0) is False
    assert nb06.q3(None) is False


def test_q4_choice() -> None:
    assert nb06.q4("b") is True
    assert nb06.q4(" B ") is True
    for wrong in ("a", "c", "d", "e"):
        assert nb06.q4(wrong) is False
    assert nb06.q4(None) is False


def test_q5_sigma_of_level_one() -> None:
    assert nb06.q5(float(norm.ppf(NF4_OFFSET))) is True
    assert nb06.q5(1.848) is True
    assert nb06.q5(1.96) is False  # the 97.5 % quantile, not the offset's
    assert nb06.q5(1.0) is False
    assert nb06.q5(None) is False
