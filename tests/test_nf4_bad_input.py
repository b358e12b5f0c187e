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
