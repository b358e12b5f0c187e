"""lorakit.pitfalls.quantization: the interview article's "NF4" quantizer, wrong in the ways it documents."""

from __future__ import annotations

import pytest
import torch

from lorakit.nf4 import dequantize_nf4, nf4_code, quantize_nf4
from lorakit.pitfalls.quantization import (
    INTERVIEW_TABLE,
    interview_dequantize,
    interview_quantize,
    interview_roundtrip,
)


def weights(shape=(128, 256), seed: int = 0) -> torch.Tensor:
    return 0.02 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_table_is_not_nf4() -> None:
    t = INTERVIEW_TABLE
    assert t.shape == (16,) and torch.isinf(t[15]) and bool((t[:-1].diff() > 0).all())
    finite = t[:15]
    assert torch.equal(finite, -finite.flip(0))  # symmetric: 7 negative, 0, 7 positive
    assert int((finite < 0).sum()) == 7 and int((finite > 0).sum()) == 7 and int((finite == 0).sum()) == 1
    nf4 = nf4_code()
    assert torch.allclose(finite[:7], nf4[:7], atol=5e-5)  # the negative half is NF4's, to 4 decimals
    assert not torch.allclose(finite[8:], nf4[8:15], atol=1e-2)  # the positive half is not
    assert int((nf4 > 0).sum()) == 8


def test_as_written_produces_inf() -> None:
    w = weights()
    rebuilt = interview_roundtrip(w)  # absmax / 7 and searchsorted
    share_inf = float(torch.isinf(rebuilt).float().mean())
    assert 0.1 < share_inf < 0.9
    idx, scales = interview_quantize(w)
    normalised = w.reshape(-1, 64) / scales[:, None]
    assert float(normalised.abs().max()) == pytest.approx(7.0)
    assert torch.equal(torch.isinf(rebuilt).reshape(-1), normalised.reshape(-1) > 1)  # exactly the values above +1


def test_searchsorted_picks_the_level_above() -> None:
    w = weights()
    idx, scales = interview_quantize(w, divisor=1.0)
    normalised = (w.reshape(-1, 64) / scales[:, None]).reshape(-1)
    chosen = INTERVIEW_TABLE[idx]
    assert bool((chosen >= normalised).all())  # never below: the insertion point, not the nearest level
    near_idx, _ = interview_quantize(w, divisor=1.0, nearest=True)
    assert bool(((INTERVIEW_TABLE[near_idx] - normalised).abs() <= (chosen - normalised).abs()).all())
    assert float((near_idx != idx).float().mean()) > 0.3


def test_each_fix_lowers_the_error_and_real_nf4_is_best() -> None:
    w = weights()

    def rel_mse(w_hat: torch.Tensor) -> float:
        return float(((w_hat - w) ** 2).mean() / w.var())

    scale_fixed = rel_mse(interview_roundtrip(w, divisor=1.0))
    both_fixed = rel_mse(interview_roundtrip(w, divisor=1.0, nearest=True))
    nf4 = rel_mse(dequantize_nf4(quantize_nf4(w)))
    assert both_fixed < scale_fixed and nf4 < both_fixed


def test_storage_and_reshape_not_transpose() -> None:
    w = weights((128, 256))
    idx, scales = interview_quantize(w)
    assert idx.dtype == torch.int64 and idx.element_size() == 8 and scales.numel() == w.numel() // 64
    rebuilt = interview_dequantize(*interview_quantize(w, divisor=1.0, nearest=True), in_features=256, out_features=128)
    assert rebuilt.shape == (256, 128)
    close = interview_roundtrip(w, divisor=1.0, nearest=True)
    assert torch.equal(rebuilt.reshape(-1), close.reshape(-1))  # the same numbers ...
    assert not torch.allclose(rebuilt, close.T)  # ... but a reshape is not the transpose F.linear would need


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="weight"):
        interview_quantize([1.0] * 64)
    with pytest.raises(ValueError, match="multiple of 64"):
        interview_quantize(torch.randn(10))
    with pytest.raises(ValueError, match="divisor"):
        interview_quantize(torch.randn(64), divisor=0)
    with pytest.raises(TypeError, match="nearest"):
        interview_quantize(torch.randn(64), nearest=1)
    idx, scales = interview_quantize(torch.randn(128))
    with pytest.raises(ValueError, match="in_features"):
        interview_dequantize(idx, scales, 10, 10)
    with pytest.raises(TypeError, match="indices"):
        interview_dequantize(idx.int(), scales, 128, 1)
    with pytest.raises(ValueError, match="scales"):
        interview_dequantize(idx, scales[:1], 128, 1)
