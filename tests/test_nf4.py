"""Unit and property tests of ``lorakit.nf4`` (no bitsandbytes needed; see test_nf4_crosscheck.py for that)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from lorakit.nf4 import (
    BLOCKSIZES,
    NF4_OFFSET,
    NF4_OFFSET_EXACT,
    DoubleQuantizedAbsmax,
    QuantizedTensor,
    bits_per_parameter,
    dequantize_4bit,
    dequantize_nf4,
    double_quantize,
    dynamic_code,
    fp4_code,
    int4_code,
    nf4_code,
    quantize_4bit,
    quantize_nf4,
    storage_bytes,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _codes(q: QuantizedTensor) -> torch.Tensor:
    """Unpack the 4-bit codes (first element = high nibble), padding nibble dropped."""
    p = q.packed.long()
    return torch.stack([p >> 4, p & 15], dim=1).reshape(-1)[: q.numel]


def _randn(*shape: int, seed: int = 0, scale: float = 0.02, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


# ------------------------------------------------------------------ codes


def test_offset_arithmetic():
    # the exact fraction: mean of the half-slice insets for 15 and 16 slices
    assert Fraction(929, 960) == (1 - Fraction(1, 30) + 1 - Fraction(1, 32)) / 2
    assert NF4_OFFSET_EXACT == 929 / 960
    assert math.isclose(1 - 1 / 30, 0.966667, abs_tol=1e-6) and 1 - 1 / 32 == 0.96875
    # bitsandbytes' literal is that fraction rounded to 7 decimals
    assert NF4_OFFSET == 0.9677083
    assert abs(NF4_OFFSET - NF4_OFFSET_EXACT) < 5e-8


def test_nf4_code_structure():
    code = nf4_code()
    assert code.dtype == torch.float32 and code.shape == (16,)
    assert bool((code[1:] > code[:-1]).all()), "ascending, all distinct"
    assert code[0].item() == -1.0 and code[15].item() == 1.0 and code[7].item() == 0.0
    assert int((code > 0).sum()) == 8 and int((code < 0).sum()) == 7


def test_nf4_levels_are_normal_quantiles_at_even_probabilities():
    code = nf4_code().double()
    top = norm.ppf(NF4_OFFSET)
    probs_pos = norm.cdf(code[8:].numpy() * top)  # 8 positive levels
    probs_neg = norm.cdf(-code[:7].numpy() * top)  # 7 negative levels, mirrored
    steps_pos = (NF4_OFFSET - 0.5) / 8
    steps_neg = (NF4_OFFSET - 0.5) / 7
    assert probs_pos == pytest.approx([0.5 + steps_pos * k for k in range(1, 9)], abs=2e-7)
    assert sorted(probs_neg) == pytest.approx([0.5 + steps_neg * k for k in range(1, 8)], abs=2e-7)


def test_nf4_code_exact_fraction_differs_in_last_bits():
    exact, rounded = nf4_code(NF4_OFFSET_EXACT), nf4_code()
    assert not torch.equal(exact, rounded)
    assert (exact - rounded).abs().max().item() < 5e-7


def test_nf4_code_returns_a_copy():
    code = nf4_code()
    code.zero_()
    assert nf4_code()[0].item() == -1.0


def test_int4_code():
    code = int4_code()
    assert code.dtype == torch.float32 and code.shape == (16,)
    assert bool((code[1:] >= code[:-1]).all())
    assert torch.equal(code, -code.flip(0)), "symmetric"
    assert torch.allclose(code * 7, (code * 7).round(), atol=1e-6)
    assert int((code == 0).sum()) == 2, "symmetric INT4 wastes one of its 16 codes on a second zero"
    assert sorted(set(code.tolist())) == pytest.approx([k / 7 for k in range(-7, 8)])


def test_fp4_code_bit_patterns():
    code = fp4_code()
    assert code.dtype == torch.float32 and code.shape == (16,)
    magnitudes = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]
    for i in range(16):
        sign = -1.0 if i & 8 else 1.0
        assert code[i].item() == torch.tensor(sign * magnitudes[i & 7] / 12.0, dtype=torch.float32).item()
    assert code.abs().max().item() == 1.0
    assert int((code == 0).sum()) == 2


def test_dynamic_code_structure():
    code = dynamic_code()
    assert code.dtype == torch.float32 and code.shape == (256,)
    assert bool((code[1:] > code[:-1]).all()), "256 distinct ascending values"
    assert code[-1].item() == 1.0 and int((code == 0).sum()) == 1
    pos = code[code > 0]
    for exponent in range(7):  # 2**(6-E) midpoints of the decade [0.1, 1] * 10**-E
        lo, hi = 0.1 * 10.0**-exponent, 10.0**-exponent
        in_decade = pos[(pos > lo * 0.999999) & (pos < hi * 0.999999)]
        assert in_decade.numel() == 2 ** (6 - exponent)
    neg = -code[code < 0].flip(0)
    assert torch.equal(neg, pos[:-1]), "signed: mirror image, 1.0 only on the positive side"
    unsigned = dynamic_code(signed=False)
    assert unsigned.shape == (256,) and unsigned.min().item() == 0.0 and unsigned.max().item() == 1.0


# ------------------------------------------------------------------ quantize: layout, ties, zeros


def test_packing_first_element_high_nibble():
    q = quantize_nf4(torch.tensor([1.0, -1.0, 0.0, 1.0]), blocksize=32)
    assert q.packed.tolist() == [0xF0, 0x7F]
    assert q.absmax.tolist() == [1.0]


def test_odd_count_pads_with_code_of_zero():
    q = quantize_nf4(torch.tensor([1.0, -1.0, 1.0]), blocksize=32)
    assert q.packed.tolist() == [0xF0, 0xF7]
    assert dequantize_nf4(q).tolist() == [1.0, -1.0, 1.0]


def test_ties_go_to_the_lower_level():
    code = nf4_code()
    mid = (code[:-1] + code[1:]) / 2
    w = torch.cat([torch.tensor([1.0]), mid])  # absmax exactly 1, so scaled == w bit for bit
    codes = _codes(quantize_nf4(w, blocksize=32))
    assert codes[1:].tolist() == list(range(15))
    above = torch.nextafter(mid, torch.full_like(mid, 2.0))
    codes_above = _codes(quantize_nf4(torch.cat([torch.tensor([1.0]), above]), blocksize=32))
    assert codes_above[1:].tolist() == list(range(1, 16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_zero_blocks(dtype):
    w = torch.zeros(64 * 3 + 10, dtype=dtype)
    w[64:128] = _randn(64, dtype=dtype, scale=1.0)
    q = quantize_nf4(w, blocksize=64)
    assert q.absmax[0].item() == 0.0 and q.absmax[2].item() == 0.0, "full all-zero block: absmax 0"
    assert q.absmax[3].item() == torch.tensor(1e-38).item(), "partial all-zero block: the clamped 1e-38"
    codes = _codes(q)
    assert bool((codes[:64] == 7).all()) and bool((codes[128:] == 7).all())
    out = dequantize_nf4(q)
    assert bool((out[:64] == 0).all()) and bool((out[128:] == 0).all())


def test_chosen_level_is_nearest():
    w = _randn(64 * 800, seed=3)
    q = quantize_nf4(w, blocksize=64)
    code = nf4_code()
    scaled = (w.view(-1, 64) / q.absmax[:, None]).reshape(-1)
    chosen = (scaled - code[_codes(q)]).abs()
    best = (scaled[:, None] - code[None, :]).abs().min(dim=1).values
    assert bool((chosen <= best + 1e-6).all())


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 33), (65, 31), (2, 3, 257)])
def test_round_trip_shapes_and_blocksizes(blocksize, shape):
    w = _randn(*shape, seed=blocksize)
    q = quantize_nf4(w, blocksize=blocksize)
    n = w.numel()
    assert q.packed.dtype == torch.uint8 and q.packed.shape == ((n + 1) // 2,)
    assert q.absmax.shape == (-(-n // blocksize),) and q.absmax.dtype == torch.float32
    assert q.shape == w.shape and q.dtype == w.dtype and q.blocksize == blocksize and q.numel == n
    out = dequantize_nf4(q)
    assert out.shape == w.shape and out.dtype == w.dtype
    _assert_error_bound(w, out, q)


def _assert_error_bound(w: torch.Tensor, out: torch.Tensor, q: QuantizedTensor) -> None:
    """|w - deq| <= (largest gap / 2) * absmax of the block (+ float slack)."""
    code = q.code
    half_gap = ((code[1:] - code[:-1]).max() / 2).item()
    absmax = q.absmax.dequantize() if isinstance(q.absmax, DoubleQuantizedAbsmax) else q.absmax
    err = (w.float() - out.float()).reshape(-1).abs()
    per_elem = absmax.repeat_interleave(q.blocksize)[: q.numel]
    slack = 1e-6 * per_elem + (2e-2 if q.dtype != torch.float32 else 0) * per_elem
    assert bool((err <= half_gap * per_elem + slack).all())


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 700),
    blocksize=st.sampled_from(BLOCKSIZES[:4]),
    scale=st.floats(1e-4, 1e3),
    seed=st.integers(0, 2**16),
)
def test_property_round_trip_error_bound(n, blocksize, scale, seed):
    w = _randn(n, seed=seed, scale=scale)
    q = quantize_nf4(w, blocksize=blocksize)
    out = dequantize_nf4(q)
    _assert_error_bound(w, out, q)
    # quantizing the reconstruction reproduces the bytes (levels are fixed points), absmax unchanged
    q2 = quantize_nf4(out, blocksize=blocksize)
    assert torch.equal(q2.absmax, q.absmax)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_property_double_quant_error_bound(n, seed):
    w = _randn(n, seed=seed, scale=1.0)
    q = quantize_nf4(w, blocksize=32, double_quant=True)
    plain = quantize_nf4(w, blocksize=32)
    recon = q.absmax.dequantize()
    # one step of the dynamic code near 1 is 0.9/64; relative to the block's scale
    scales = q.absmax.scales.repeat_interleave(256)[: recon.numel()]
    assert bool(((recon - plain.absmax).abs() <= scales * (0.9 / 64) + 1e-6).all())
    assert torch.equal(q.packed, plain.packed), "double quant changes only how absmax is stored"


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_and_dtype_override(dtype):
    w = _randn(10, 70, dtype=dtype)
    q = quantize_nf4(w)
    assert q.dtype == dtype
    assert dequantize_nf4(q).dtype == dtype
    as32 = dequantize_nf4(q, dtype=torch.float32)
    assert as32.dtype == torch.float32
    assert torch.equal(dequantize_nf4(q), as32.to(dtype)), "float32 products, cast once"


def test_quantize_input_not_modified_and_grad_free():
    w = _randn(4, 64).requires_grad_(True)
    before = w.detach().clone()
    q = quantize_nf4(w)
    assert torch.equal(w.detach(), before)
    assert not q.packed.requires_grad and not dequantize_nf4(q).requires_grad


def test_non_contiguous_input():
    w = _randn(64, 96)
    assert torch.equal(quantize_nf4(w.t()).packed, quantize_nf4(w.t().contiguous()).packed)


# ------------------------------------------------------------------ other codes


def test_generic_quantize_with_int4_and_fp4():
    w = _randn(4096, seed=1)
    for code in (int4_code(), fp4_code()):
        q = quantize_4bit(w, code, blocksize=64)
        out = dequantize_4bit(q)
        assert torch.equal(q.code, code)
        _assert_error_bound(w, out, q)
        with pytest.raises(ValueError, match="NF4"):
            dequantize_nf4(q)


def test_nf4_beats_int4_and_fp4_on_gaussian_weights():
    w = _randn(64 * 2048, seed=7, scale=1.0)
    mse = {
        name: float(((dequantize_4bit(quantize_4bit(w, code)) - w) ** 2).mean())
        for name, code in (("nf4", nf4_code()), ("int4", int4_code()), ("fp4", fp4_code()))
    }
    assert mse["nf4"] < mse["int4"] and mse["nf4"] < mse["fp4"], mse


# ------------------------------------------------------------------ double quantization


def test_double_quantize_fields():
    absmax = quantize_nf4(_randn(64 * 1000, seed=2)).absmax
    dq = double_quantize(absmax)
    assert dq.codes.dtype == torch.uint8 and dq.codes.shape == (1000,)
    assert dq.scales.dtype == torch.float32 and dq.scales.shape == (4,)
    assert dq.blocksize == 256 and dq.offset == absmax.mean().item()
    assert dq.nbytes == 1000 + 4 * 4 + 4
    step = dq.scales.repeat_interleave(256)[:1000] * (0.9 / 64)
    assert bool(((dq.dequantize() - absmax).abs() <= step).all())


def test_double_quantize_constant_absmax_is_exact():
    absmax = torch.full((300,), 0.125)
    dq = double_quantize(absmax)
    assert dq.scales.tolist() == [0.0, 0.0] and bool((dq.codes == 0).all())
    assert torch.equal(dq.dequantize(), absmax)


def test_double_quantize_rounds_via_the_65536_point_grid():
    """Rounding copied from bitsandbytes' CPU kernel: x is snapped to g = floor((x+1)*32767.5 + 0.5) first,
    then the level nearest to that grid point is stored. Near a midpoint this can pick the farther level,
    never by more than one code step."""
    absmax = quantize_nf4(_randn(64 * 20_000, seed=11)).absmax
    dq = double_quantize(absmax)
    code = dynamic_code()
    centred = absmax - absmax.mean()
    full = absmax.numel() // 256 * 256
    x = (centred[:full].view(-1, 256) / dq.scales[: full // 256, None]).reshape(-1)
    x = torch.cat([x, centred[full:] / dq.scales[-1]])
    grid = torch.floor((x + 1.0) * 32767.5 + 0.5).long()
    grid_points = grid.float() / 32767.5 - 1
    via_grid = torch.bucketize(grid_points, (code[:-1] + code[1:]) / 2)
    assert torch.equal(dq.codes.long(), via_grid)
    nearest = torch.bucketize(x, (code[:-1] + code[1:]) / 2)
    differs = dq.codes.long() != nearest
    assert bool(((dq.codes.long() - nearest).abs() <= 1).all())
    assert differs.float().mean().item() < 0.05


# ------------------------------------------------------------------ bytes and bits


def test_bits_per_parameter_plain_is_exactly_4_5():
    q = quantize_nf4(_randn(1024, 1024))
    assert bits_per_parameter(q) == 4.5
    assert q.nbytes == 2**19 + 4 * 2**14


def test_bits_per_parameter_double_quant():
    n = 1024 * 1024
    q = quantize_nf4(_randn(1024, 1024), double_quant=True)
    blocks = n // 64
    expected = 4 + 8 / 64 + 32 / (64 * 256) + 8 * 4 / n  # codes, 8-bit absmax, fp32 scales, fp32 mean
    assert bits_per_parameter(q) == pytest.approx(expected, rel=1e-12)
    assert q.nbytes == n // 2 + blocks + 4 * (blocks // 256) + 4
    assert abs(bits_per_parameter(q) - 4.127) < 5e-4
    assert q.double_quant and not quantize_nf4(_randn(64)).double_quant


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_storage_bytes_matches_measured(blocksize, double_quant):
    for n in (1, 2, 3, 31, 32, 33, 63, 64, 65, 255, 1000, 4097, 64 * 257 + 5, 70_001):
        q = quantize_nf4(_randn(n, seed=n), blocksize=blocksize, double_quant=double_quant)
        assert storage_bytes(n, blocksize, double_quant) == q.nbytes, (n, blocksize, double_quant)
        measured = q.packed.nbytes + (
            q.absmax.codes.nbytes + q.absmax.scales.nbytes + 4 if double_quant else q.absmax.nbytes
        )
        assert measured == q.nbytes


def test_storage_bytes_dq_blocksize():
    assert storage_bytes(64 * 1024, 64, True, dq_blocksize=512) == 32 * 1024 + 1024 + 4 * 2 + 4


# ------------------------------------------------------------------ container behaviour


def test_quantized_tensor_to_and_properties():
    q = quantize_nf4(_randn(5, 100), double_quant=True)
    moved = q.to("cpu")
    assert moved.device == torch.device("cpu") and torch.equal(moved.packed, q.packed)
    assert torch.equal(dequantize_nf4(moved), dequantize_nf4(q))
    assert q.numel == 500 and q.n_blocks == 8 and q.double_quant


def test_shape_given_as_tuple_is_normalised():
    q = quantize_nf4(_randn(3, 40))
    q2 = QuantizedTensor(q.packed, q.absmax, (3, 40), q.dtype, q.blocksize, q.code)
    assert isinstance(q2.shape, torch.Size) and torch.equal(dequantize_nf4(q2), dequantize_nf4(q))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("double_quant", [False, True])
def test_cuda_equals_cpu(dtype, double_quant):
    w = _randn(257, 129, seed=5, dtype=dtype)
    q_cpu = quantize_nf4(w, double_quant=double_quant)
    q_gpu = quantize_nf4(w.cuda(), double_quant=double_quant)
    assert q_gpu.device.type == "cuda"
    assert torch.equal(q_gpu.packed.cpu(), q_cpu.packed)
    out_gpu = dequantize_nf4(q_gpu)
    assert out_gpu.device.type == "cuda" and out_gpu.dtype == dtype
    assert torch.equal(out_gpu.cpu(), dequantize_nf4(q_cpu))
    assert torch.equal(dequantize_nf4(q_cpu.to("cuda")).cpu(), dequantize_nf4(q_cpu))


@pytest.mark.parametrize("blocksize", [32, 64, 4096])
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_cpu_decode_equals_reference(monkeypatch, blocksize, dtype):
    """The CPU decoder works in chunks; with tiny chunks every boundary case (partial last chunk, partial
    last block, odd count) is exercised against the plain formula code[c] * absmax[block]."""
    from lorakit.nf4 import kernels

    monkeypatch.setattr(kernels, "CPU_CHUNK_BYTES", 2048)
    for n in (4096 * 3 + 1001, 2048 * 2, 2047 * 5):
        w = _randn(n, seed=n, dtype=dtype)
        q = quantize_nf4(w, blocksize=blocksize)
        reference = (q.code[_codes(q)] * q.absmax.repeat_interleave(blocksize)[:n]).to(dtype)
        assert torch.equal(dequantize_nf4(q), reference)


def test_unpack_codes_inverts_the_packing():
    from lorakit.nf4 import unpack_codes

    w = torch.randn(7, 9, generator=torch.Generator().manual_seed(0))  # odd count: a spare nibble
    q = quantize_nf4(w)
    codes = unpack_codes(q)
    assert codes.shape == (63,) and codes.dtype == torch.int64
    padded = torch.cat([codes, torch.tensor([7])])
    assert torch.equal(((padded[0::2] << 4) | padded[1::2]).to(torch.uint8), q.packed)
    with pytest.raises(TypeError, match="q must be a QuantizedTensor"):
        unpack_codes(q.packed)
