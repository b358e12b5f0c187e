"""``lorakit.kernels.nf4_dequant``: the Triton NF4 dequantize equals ``lorakit.nf4`` (and bitsandbytes) bit for bit.

Without a GPU the kernels run through Triton's interpreter (``lorakit.kernels`` switches it on when no CUDA device
is present, before the kernels are defined: see ``lorakit/kernels/_triton.py``), on CPU tensors, in fp32 and fp16
(the interpreter has no bf16). With a GPU the same tests run compiled on CUDA tensors, bf16 included, and the
``cuda`` tests compare with bitsandbytes' CUDA kernel. Without Triton the whole module is skipped.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install 'lorakit[gpu]'): kernel tests skipped")

from lorakit import nf4  # noqa: E402
from lorakit._bnb import import_bitsandbytes  # noqa: E402
from lorakit.kernels import interpreting  # noqa: E402
from lorakit.kernels import nf4_dequant as kd  # noqa: E402
from lorakit.kernels.reference import decode_weight_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
DTYPES = (torch.float32, torch.float16) + (() if interpreting() else (torch.bfloat16,))
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype])


def _weights(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    if w.numel() > 64:
        w.view(-1)[3::89] *= 25  # outliers: blocks with very different absmax
    return w.to(dtype).to(DEVICE)


def _shapes(blocksize: int, seed: int) -> list[tuple[int, ...]]:
    """Odd sizes, a partial last block, a single element, and random 2-D shapes whose rows straddle blocks."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = (int(v) for v in torch.randint(1, 40, (2,), generator=g))
    return [(1,), (7,), (blocksize,), (2 * blocksize + 1,), (rows, 2 * cols + 1), (3, blocksize + 5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", nf4.BLOCKSIZES)
def test_dequantize_equals_lorakit_bit_for_bit(blocksize, dtype):
    for k, shape in enumerate(_shapes(blocksize, seed=blocksize)):
        for double_quant in (False, True):
            q = nf4.quantize_nf4(_weights(shape, seed=k), blocksize, double_quant=double_quant)
            ours = kd.dequantize_nf4(q, dtype)
            assert ours.shape == q.shape and ours.dtype == dtype and ours.device == q.device
            assert torch.equal(_bits(ours), _bits(nf4.dequantize_nf4(q, dtype))), (shape, double_quant)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_default_dtype_is_the_quantized_weights(dtype):
    q = nf4.quantize_nf4(_weights((5, 77), seed=1, dtype=dtype), 64, double_quant=True)
    assert kd.dequantize_nf4(q).dtype == dtype
    assert torch.equal(_bits(kd.dequantize_nf4(q)), _bits(nf4.dequantize_nf4(q)))


def test_many_programs_and_a_ragged_end():
    """3 * 1024 + 1 bytes: four programs, the last one decodes a single byte whose low nibble is padding."""
    n = 2 * (3 * kd.BYTES_PER_PROGRAM + 1) - 1
    q = nf4.quantize_nf4(_weights((n,), seed=2), 64, double_quant=True)
    assert torch.equal(_bits(kd.dequantize_nf4(q)), _bits(nf4.dequantize_nf4(q)))


def test_other_4bit_codes_through_dequantize_4bit():
    w = _weights((9, 70), seed=3)
    for code in (nf4.fp4_code(), nf4.int4_code()):
        q = nf4.quantize_4bit(w, code, 64)
        assert torch.equal(_bits(kd.dequantize_4bit(q)), _bits(nf4.dequantize_4bit(q)))
        with pytest.raises(ValueError, match="not the NF4 code"):
            kd.dequantize_nf4(q)


def test_decode_weight_takes_a_layers_storage():
    """The unchecked entry point: packed codes stored [n, 1] or viewed as bf16 (quant_storage), the mean of a
    double-quantized absmax as a tensor (as NF4Linear keeps it) or a float: the same bits as the reference."""
    w = _weights((24, 96), seed=4)
    q = nf4.quantize_nf4(w, 64, double_quant=True)
    dq = q.absmax
    offset = torch.tensor(dq.offset, dtype=torch.float32, device=DEVICE)
    want = decode_weight_reference(q.packed, dq.codes, q.code, q.shape, 64, torch.float16, dq.scales, offset)
    for packed in (q.packed, q.packed.view(-1, 1), q.packed.view(torch.float16).view(-1, 1)):
        for off in (offset, dq.offset):
            got = kd.decode_weight(packed, dq.codes, q.code, q.shape, 64, torch.float16, dq.scales, off)
            assert torch.equal(_bits(got), _bits(want))
    assert torch.equal(_bits(want), _bits(nf4.dequantize_nf4(q, torch.float16)))


def test_equals_bitsandbytes_flat_dequantize():
    """bitsandbytes' own decode (CPU here; its 2-D CPU decode has a known bug, so flat tensors) of the same bytes."""
    import torch._dynamo

    bnb = import_bitsandbytes()
    with torch._dynamo.config.patch(disable=True):  # bnb's odd-size fallback is torch.compile'd: run it eagerly
        _compare_with_bnb_flat(bnb)


def _compare_with_bnb_flat(bnb) -> None:
    for shape, blocksize, double_quant in (((4097,), 64, True), ((31 * 33,), 32, False), ((5000,), 4096, True)):
        w = _weights(shape, seed=5).cpu()
        packed, state = bnb.functional.quantize_4bit(w, blocksize=blocksize, quant_type="nf4",
                                                      compress_statistics=double_quant)
        q = nf4.quantize_nf4(w.to(DEVICE), blocksize, double_quant=double_quant)
        assert torch.equal(q.packed.cpu(), packed.view(-1))
        theirs = bnb.functional.dequantize_4bit(packed, state).view(-1)
        assert torch.equal(_bits(kd.dequantize_nf4(q).cpu()), _bits(theirs))


# ------------------------------------------------------------------ bad input
def test_bad_input_names_the_argument():
    q = nf4.quantize_nf4(_weights((4, 64), seed=6), 64)
    with pytest.raises(TypeError, match="q must be a QuantizedTensor"):
        kd.dequantize_nf4(q.packed)
    with pytest.raises(TypeError, match="dtype"):
        kd.dequantize_nf4(q, torch.int8)
    with pytest.raises(ValueError, match="packed has 3 bytes"):
        kd.decode_weight(q.packed[:3], q.absmax, q.code, q.shape, 64, torch.float32)
    with pytest.raises(ValueError, match="blocksize"):
        kd.decode_weight(q.packed, q.absmax, q.code, q.shape, 48, torch.float32)
    with pytest.raises(ValueError, match="absmax has"):
        kd.decode_weight(q.packed, q.absmax[:1], q.code, q.shape, 32, torch.float32)
    with pytest.raises(TypeError, match="code must be the 16 float32 levels"):
        kd.decode_weight(q.packed, q.absmax, q.code[:8], q.shape, 64, torch.float32)
    with pytest.raises(TypeError, match="absmax must be float32"):
        kd.decode_weight(q.packed, q.absmax.half(), q.code, q.shape, 64, torch.float32)
    with pytest.raises(ValueError, match="nested_offset must be given"):
        kd.decode_weight(q.packed, q.absmax.to(torch.uint8), q.code, q.shape, 64, torch.float32, q.absmax)


def test_a_corrupted_tensor_is_refused_by_the_checked_entry_point():
    q = nf4.quantize_nf4(_weights((4, 64), seed=7), 64)
    q.absmax[1] = float("nan")
    with pytest.raises(ValueError, match="absmax"):
        kd.dequantize_nf4(q)


# ------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("blocksize", nf4.BLOCKSIZES)
def test_cuda_equals_bitsandbytes_cuda_dequantize(blocksize):
    """bitsandbytes' CUDA ``dequantize_4bit`` (2-D included) and the compiled kernel: the same bits, every dtype."""
    bnb = import_bitsandbytes()
    for k, shape in enumerate([(4096, 4096 + blocksize), (333, 127), (blocksize * 3 + 1,)]):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for double_quant in (False, True):
                w = (torch.randn(shape, generator=torch.Generator().manual_seed(k)) * 0.02).to("cuda", dtype)
                packed, state = bnb.functional.quantize_4bit(w, blocksize=blocksize, quant_type="nf4",
                                                              compress_statistics=double_quant)
                q = nf4.quantize_nf4(w, blocksize, double_quant=double_quant)
                assert torch.equal(q.packed, packed.view(-1))
                theirs = bnb.functional.dequantize_4bit(packed, state)
                assert torch.equal(_bits(kd.dequantize_nf4(q)), _bits(theirs)), (shape, dtype, double_quant)
