"""Bad input to ``lorakit.nf4``: a TypeError/ValueError that names the argument, never a silent wrong answer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lorakit.nf4 import (
    DoubleQuantizedAbsmax,
    QuantizedTensor,
    bits_per_parameter,
    dequantize_4bit,
    dequantize_nf4,
    double_quantize,
    dynamic_code,
    int4_code,
    nf4_code,
    quantize_4bit,
    quantize_nf4,
    storage_bytes,
)


def _w(n: int = 200) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def q() -> QuantizedTensor:
    return quantize_nf4(_w(200).view(4, 50), blocksize=64)


@pytest.fixture
def qdq() -> QuantizedTensor:
    return quantize_nf4(_w(64 * 300), blocksize=64, double_quant=True)


# ------------------------------------------------------------------ quantize


@pytest.mark.parametrize("w", [[1.0, 2.0], 3.0, None, "w"])
def test_non_tensor(w):
    with pytest.raises(TypeError, match="w must be a torch.Tensor"):
        quantize_nf4(w)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.float64, torch.complex64])
def test_non_float_or_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match="w must be float32, bfloat16 or float16"):
        quantize_nf4(torch.ones(64, dtype=dtype))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 64)])
def test_empty(shape):
    with pytest.raises(ValueError, match="w must not be empty"):
        quantize_nf4(torch.empty(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nan_inf(bad, dtype):
    w = _w(100).to(dtype)
    w[37] = bad
    with pytest.raises(ValueError, match="w contains NaN or inf"):
        quantize_nf4(w)


@pytest.mark.parametrize("blocksize", [0, -64, 16, 48, 100, 8192, 2**13])
def test_blocksize_value(blocksize):
    with pytest.raises(ValueError, match=r"blocksize must be a power of two in \[32, 4096\]"):
        quantize_nf4(_w(), blocksize=blocksize)


@pytest.mark.parametrize("blocksize", [64.0, "64", None, True])
def test_blocksize_type(blocksize):
    with pytest.raises(TypeError, match="blocksize must be an int"):
        quantize_nf4(_w(), blocksize=blocksize)


def test_double_quant_type():
    with pytest.raises(TypeError, match="double_quant must be a bool"):
        quantize_nf4(_w(), double_quant=1)


@pytest.mark.parametrize(
    ("code", "error", "match"),
    [
        ([0.0] * 16, TypeError, "code must be a torch.Tensor"),
        (torch.zeros(15), ValueError, r"code must be a float32 tensor of shape \(16,\)"),
        (torch.zeros(16, dtype=torch.float64), ValueError, r"code must be a float32 tensor of shape \(16,\)"),
        (torch.zeros(4, 4), ValueError, r"code must be a float32 tensor of shape \(16,\)"),
        (torch.full((16,), float("nan")), ValueError, "code must hold finite levels"),
    ],
)
def test_bad_code(code, error, match):
    with pytest.raises(error, match=match):
        quantize_4bit(_w(), code)


# ------------------------------------------------------------------ dequantize


@pytest.mark.parametrize("obj", [torch.zeros(8, dtype=torch.uint8), None, (1, 2)])
def test_dequantize_non_quantized_tensor(obj):
    with pytest.raises(TypeError, match="q must be a QuantizedTensor"):
        dequantize_nf4(obj)
    with pytest.raises(TypeError, match="q must be a QuantizedTensor"):
        dequantize_4bit(obj)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64, "float32"])
def test_dequantize_bad_dtype(q, dtype):
    with pytest.raises(TypeError, match="dtype must be float32, bfloat16, float16 or None"):
        dequantize_nf4(q, dtype=dtype)


def test_dequantize_nf4_rejects_other_codes():
    with pytest.raises(ValueError, match="q.code is not the NF4 code"):
        dequantize_nf4(quantize_4bit(_w(), int4_code()))


def test_dequantize_mismatched_shape(q):
    bad = dataclasses.replace  # construction path: __post_init__ rejects it
    with pytest.raises(ValueError, match=r"packed has 100 bytes but shape \(4, 51\)"):
        bad(q, shape=torch.Size([4, 51]))
    # a QuantizedTensor corrupted after construction is caught again at dequantize time
    object.__setattr__(q, "shape", torch.Size([4, 51]))
    with pytest.raises(ValueError, match=r"packed has 100 bytes but shape \(4, 51\)"):
        dequantize_nf4(q)


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("packed", None, ValueError, "packed must be a 1-D uint8 tensor, got NoneType"),
        ("packed", torch.zeros(100, dtype=torch.int8), ValueError, "packed must be a 1-D uint8 tensor, got torch.int8"),
        ("packed", torch.zeros(50, 2, dtype=torch.uint8), ValueError, "packed must be a 1-D uint8 tensor"),
        ("packed", torch.zeros(99, dtype=torch.uint8), ValueError, "packed has 99 bytes but shape"),
        ("absmax", torch.ones(3), ValueError, r"absmax must be float32 of shape \(4,\)"),
        ("absmax", torch.ones(4, dtype=torch.float16), ValueError, r"absmax must be float32 of shape \(4,\)"),
        ("absmax", torch.ones(2, 2), ValueError, r"absmax must be float32 of shape \(4,\)"),
        ("absmax", [1.0] * 4, TypeError, "absmax must be a float32 tensor or a DoubleQuantizedAbsmax"),
        ("code", torch.zeros(15), ValueError, r"code must be a float32 tensor of shape \(16,\)"),
        ("code", torch.zeros(16, dtype=torch.float16), ValueError, r"code must be a float32 tensor of shape \(16,\)"),
        ("code", "nf4", TypeError, "code must be a torch.Tensor"),
        ("shape", torch.Size([0, 50]), ValueError, "shape must have at least one element"),
        ("shape", (4, -50), TypeError, "shape must be a torch.Size of non-negative ints"),
        ("shape", "4x50", TypeError, "shape must be a torch.Size"),
        ("dtype", torch.int8, TypeError, "dtype must be float32, bfloat16 or float16"),
        ("dtype", torch.float64, TypeError, "dtype must be float32, bfloat16 or float16"),
        ("blocksize", 48, ValueError, "blocksize must be a power of two"),
        ("blocksize", 128, ValueError, r"absmax must be float32 of shape \(2,\)"),
    ],
)
def test_corrupted_quantized_tensor(q, field, value, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(q, **{field: value})
    object.__setattr__(q, field, value)  # corrupted after construction: dequantize validates again
    with pytest.raises(error, match=match):
        dequantize_4bit(q)


def test_corrupted_double_quant_absmax(qdq):
    dq = qdq.absmax
    with pytest.raises(ValueError, match=r"absmax holds 299 blocks, expected 300"):
        dataclasses.replace(qdq, absmax=DoubleQuantizedAbsmax(dq.codes[:-1], dq.scales, dq.offset, dq.blocksize))
    with pytest.raises(ValueError, match="codes must be a 1-D uint8 tensor"):
        DoubleQuantizedAbsmax(dq.codes.float(), dq.scales, dq.offset)
    with pytest.raises(ValueError, match="codes must not be empty"):
        DoubleQuantizedAbsmax(dq.codes[:0], dq.scales[:0], dq.offset)
    with pytest.raises(ValueError, match=r"scales must be float32 of shape \(2,\)"):
        DoubleQuantizedAbsmax(dq.codes, dq.scales[:1], dq.offset)
    with pytest.raises(ValueError, match=r"scales must be float32 of shape \(2,\)"):
        DoubleQuantizedAbsmax(dq.codes, dq.scales.double(), dq.offset)
    with pytest.raises(ValueError, match="offset must be finite"):
        DoubleQuantizedAbsmax(dq.codes, dq.scales, float("nan"))
    with pytest.raises(TypeError, match="offset must be a float"):
        DoubleQuantizedAbsmax(dq.codes, dq.scales, torch.tensor(0.1))
    with pytest.raises(ValueError, match="DoubleQuantizedAbsmax.blocksize must be a power of two"):
        DoubleQuantizedAbsmax(dq.codes, dq.scales, dq.offset, 100)
    object.__setattr__(dq, "scales", dq.scales[:1])
    with pytest.raises(ValueError, match=r"scales must be float32 of shape \(2,\)"):
        dequantize_nf4(qdq)


# ------------------------------------------------------------------ other functions


@pytest.mark.parametrize(
    ("absmax", "error", "match"),
    [
        ([1.0, 2.0], TypeError, "absmax must be a torch.Tensor"),
        (torch.ones(10, dtype=torch.float16), TypeError, "absmax must be a 1-D float32 tensor"),
        (torch.ones(2, 5), TypeError, "absmax must be a 1-D float32 tensor"),
        (torch.empty(0), ValueError, "absmax must not be empty"),
        (torch.tensor([1.0, float("nan")]), ValueError, "absmax contains NaN or inf"),
    ],
)
def test_double_quantize_bad_absmax(absmax, error, match):
    with pytest.raises(error, match=match):
        double_quantize(absmax)


def test_double_quantize_bad_blocksize():
    with pytest.raises(ValueError, match="blocksize must be a power of two"):
        double_quantize(torch.ones(10), blocksize=300)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"numel": 0}, ValueError, "numel must be positive"),
        ({"numel": -5}, ValueError, "numel must be positive"),
        ({"numel": 10.0}, TypeError, "numel must be an int"),
        ({"numel": True}, TypeError, "numel must be an int"),
        ({"numel": 100, "blocksize": 100}, ValueError, "blocksize must be a power of two"),
        ({"numel": 100, "double_quant": True, "dq_blocksize": 16}, ValueError, "dq_blocksize must be a power of two"),
    ],
)
def test_storage_bytes_bad(kwargs, error, match):
    with pytest.raises(error, match=match):
        storage_bytes(**kwargs)


def test_bits_per_parameter_bad():
    with pytest.raises(TypeError, match="q must be a QuantizedTensor"):
        bits_per_parameter(torch.zeros(4))


@pytest.mark.parametrize(("offset", "error"), [(1.0, ValueError), (0.5, ValueError), (1.5, ValueError),
                                               ("0.96", TypeError), (True, TypeError)])
def test_nf4_code_bad_offset(offset, error):
    with pytest.raises(error, match="offset must"):
        nf4_code(offset)


def test_dynamic_code_bad_signed():
    with pytest.raises(TypeError, match="signed must be a bool"):
        dynamic_code(signed=1)


@pytest.mark.cuda
def test_mixed_devices_rejected(q):
    with pytest.raises(ValueError, match="fields must share one device"):
        dataclasses.replace(q, packed=q.packed.cuda())


# ------------------------------------------------------------------ item 11: mutated scales are rejected

BAD_SCALES = {"nan": float("nan"), "negative": -0.25, "inf": float("inf"), "minus-inf": float("-inf")}


@pytest.mark.parametrize("value", sorted(BAD_SCALES))
@pytest.mark.parametrize("entry", ["dequantize_4bit", "dequantize_nf4", "construct", "validate"])
def test_mutated_absmax_is_rejected(q, entry, value):
    """A QuantizedTensor whose absmax was mutated in place after construction (NaN, negative, inf)."""
    q.absmax[1] = BAD_SCALES[value]
    problem = {"nan": "NaN", "negative": "negative", "inf": "inf", "minus-inf": "inf|negative"}[value]
    with pytest.raises(ValueError, match=rf"QuantizedTensor\.absmax must hold finite values >= 0.*({problem})"):
        {"dequantize_4bit": dequantize_4bit, "dequantize_nf4": dequantize_nf4, "construct": dataclasses.replace,
         "validate": QuantizedTensor.validate}[entry](q)


@pytest.mark.parametrize("value", sorted(BAD_SCALES))
@pytest.mark.parametrize("entry", ["dequantize_nf4", "dq.dequantize", "construct"])
def test_mutated_double_quant_scales_are_rejected(qdq, entry, value):
    qdq.absmax.scales[0] = BAD_SCALES[value]
    with pytest.raises(ValueError, match=r"DoubleQuantizedAbsmax\.scales must hold finite values >= 0"):
        if entry == "dequantize_nf4":
            dequantize_nf4(qdq)
        elif entry == "dq.dequantize":
            qdq.absmax.dequantize()
        else:
            dataclasses.replace(qdq.absmax)


@pytest.mark.parametrize("offset", [-1e-3, -1.0, float("inf")])
def test_double_quant_offset_must_be_finite_and_non_negative(qdq, offset):
    dq = qdq.absmax
    with pytest.raises(ValueError, match="DoubleQuantizedAbsmax.offset must be"):
        DoubleQuantizedAbsmax(dq.codes, dq.scales, offset, dq.blocksize)


@pytest.mark.parametrize("absmax", [torch.tensor([0.5, -0.1, 0.3]), -torch.ones(300), torch.tensor([-1e-30])])
def test_double_quantize_rejects_a_negative_absmax(absmax):
    with pytest.raises(ValueError, match=r"absmax must hold values >= 0 \(absolute maxima\)"):
        double_quantize(absmax)


def test_double_quantize_accepts_zeros_and_negative_zero():
    """Legal edge cases: an all-zero absmax, and -0.0 (a zero; >= 0 holds)."""
    assert torch.equal(double_quantize(torch.zeros(10)).dequantize(), torch.zeros(10))
    absmax = torch.tensor([-0.0, 0.5, 0.25])
    dq = double_quantize(absmax)
    assert dq.offset == 0.25 and (dq.dequantize() - absmax).abs().max().item() <= 0.25 * 0.9 / 64


def test_zero_absmax_blocks_are_legal(q):
    q.absmax.zero_()
    assert torch.equal(dequantize_4bit(q), torch.zeros(4, 50))


# ------------------------------------------------------------------ serialization helpers

def test_quant_state_entries_bad_input():
    from lorakit.nf4 import quant_state_entries
    from lorakit.nf4.serialization import packed_as_storage, unpack_json

    with pytest.raises(TypeError, match="q must be a QuantizedTensor"):
        quant_state_entries(torch.zeros(3))
    with pytest.raises(TypeError, match="packed must be a uint8 tensor"):
        packed_as_storage(torch.zeros(4), torch.uint8)
    with pytest.raises(TypeError, match="quant_storage must be a torch.dtype"):
        packed_as_storage(torch.zeros(4, dtype=torch.uint8), "uint8")
    with pytest.raises(ValueError, match=r"needs the packed byte count \(3\) to be a multiple of 2"):
        packed_as_storage(torch.zeros(3, dtype=torch.uint8), torch.bfloat16)
    with pytest.raises(ValueError, match="meta must be a 1-D uint8 tensor"):
        unpack_json([1, 2], "meta")


@pytest.fixture
def entries(q):
    from lorakit.nf4 import quant_state_entries

    return {k: v.clone() for k, v in quant_state_entries(q).items()}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda p, e: (None, e), ValueError, "w must be a tensor of packed"),
        (lambda p, e: (p, [e]), TypeError, "entries must be a dict"),
        (lambda p, e: (p[:-1], e), ValueError, r"holds 99 bytes of packed codes"),
        (lambda p, e: (p, {k: v for k, v in e.items() if k != "quant_map"}), ValueError, "quant_map is missing"),
        (lambda p, e: (p, {**e, "quant_map": e["quant_map"].double()}), ValueError, "quant_map must be float32"),
        (lambda p, e: (p, {**e, "nested_absmax": torch.ones(1)}), ValueError, "needs both"),
        (lambda p, e: (p, {**e, "extra": torch.ones(1)}), ValueError, r"unexpected quantization entries \['w.extra'\]"),
        (lambda p, e: (p, {**e, "quant_state.bitsandbytes__fp4": e["quant_state.bitsandbytes__nf4"]}), ValueError,
         "exactly one"),
    ],
)
def test_quantized_from_state_bad_input(q, entries, change, error, match):
    from lorakit.nf4 import quantized_from_state

    packed, bad = change(q.packed.clone(), entries)
    with pytest.raises(error, match=match):
        quantized_from_state(packed, bad, "w")


def test_quantized_from_state_round_trip_and_where_type(q, entries):
    from lorakit.nf4 import quantized_from_state

    back = quantized_from_state(q.packed.view(-1, 1), entries, "w")
    assert torch.equal(dequantize_4bit(back), dequantize_4bit(q))
    with pytest.raises(TypeError, match="where must be a str"):
        quantized_from_state(q.packed, entries, 3)


def test_storage_bytes_double_quant_must_be_bool():
    with pytest.raises(TypeError, match="double_quant must be a bool"):
        storage_bytes(100, double_quant="yes")


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, "bf16"])
def test_dequantize_nf4_bad_dtype_before_anything(q, dtype):
    with pytest.raises(TypeError, match="dtype must be float32, bfloat16, float16 or None"):
        dequantize_nf4(q, dtype)
