"""``lorakit.kernels.nf4_matmul``: the fused 4-bit matmul and its input gradient equal their PyTorch reference.

"Equal" means within :func:`lorakit.kernels.reference.agreement_bound`: the same float32 products summed in
another order, then rounded once (the bound is derived in that module). The decoded weight tile is the reference's
bit for bit, so a wrong nibble, a wrong block's absmax or a skipped tile would show up as an error of the size of
a weight times an input, orders of magnitude above the bound. Interpreter on CPU (fp32, fp16) without a GPU,
compiled on CUDA (bf16 too) with one; the ``cuda`` tests add bitsandbytes' ``Linear4bit`` and PEFT's 4-bit layer.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install 'lorakit[gpu]'): kernel tests skipped")

from lorakit import nf4  # noqa: E402
from lorakit.kernels import interpreting  # noqa: E402
from lorakit.kernels import nf4_matmul as km  # noqa: E402
from lorakit.kernels.reference import (  # noqa: E402
    agreement_bound,
    decode_weight_reference,
    nf4_matmul_grad_x_reference,
    nf4_matmul_reference,
)
from lorakit.qlora import NF4Linear  # noqa: E402
from lorakit.qlora.matmul import nf4_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
DTYPES = (torch.float32, torch.float16) + (() if interpreting() else (torch.bfloat16,))


def _state(n: int, k: int, blocksize: int, double_quant: bool, seed: int) -> tuple[tuple, dict]:
    """A seeded ``[n, k]`` NF4 weight as (positional state, nested keyword arguments) for the kernels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w.view(-1)[7::53] *= 10
    q = nf4.quantize_nf4(w.to(DEVICE), blocksize, double_quant=double_quant)
    if double_quant:
        dq = q.absmax
        return (q.packed, dq.codes, q.code, (n, k), blocksize), {"nested_absmax": dq.scales,
                                                                 "nested_offset": dq.offset}
    return (q.packed, q.absmax, q.code, (n, k), blocksize), {}


def _assert_agrees(got: torch.Tensor, want: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype,
                   extra: torch.Tensor | None = None) -> None:
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    bound = agreement_bound(a, b, want.reshape(-1, want.shape[-1]), dtype, extra)
    err = (got.double() - want.double()).abs().reshape(bound.shape)
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g} above the bound ({bound.max().item():.3g})"


def _case(seed: int, blocksize: int) -> tuple[int, int, int]:
    """Random (M, N, K): odd sizes, K odd half the time (rows then straddle bytes and blocks)."""
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 40, (1,), generator=g))
    n = int(torch.randint(1, 70, (1,), generator=g))
    k = int(torch.randint(1, 3 * blocksize if blocksize <= 64 else 150, (1,), generator=g))
    return m, n, k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", nf4.BLOCKSIZES)
def test_forward_and_grad_x_equal_reference(blocksize, dtype):
    """Every blocksize, odd shapes with a partial last block, with and without double quantization and bias."""
    for seed, (m, n, k) in enumerate([_case(blocksize + dtype.itemsize, blocksize), (3, 17, min(blocksize, 1024))]):
        double_quant = bool(seed % 2) != (blocksize % 128 == 0)
        state, nested = _state(n, k, blocksize, double_quant, seed)
        x = torch.randn(m, k, device=DEVICE)
        bias = torch.randn(n, device=DEVICE) if seed == 0 else None
        w = decode_weight_reference(*state, dtype, **nested).float()
        y = km.nf4_matmul(x, *state, dtype, bias, **nested)
        _assert_agrees(y, nf4_matmul_reference(x, *state, dtype, bias, **nested), x.to(dtype).float(), w.t(),
                       dtype, None if bias is None else bias.to(dtype).float())
        g = torch.randn(m, n, device=DEVICE)
        gx = km.nf4_matmul_grad_x(g, *state, dtype, **nested)
        _assert_agrees(gx, nf4_matmul_grad_x_reference(g, *state, dtype, **nested), g.to(dtype).float(), w, dtype)


@pytest.mark.parametrize("tiles", [{"BN": 16, "BK": 64}, {"BN": 64, "BK": 16}, {"BN": 32, "BK": 32}])
def test_tiles_wider_and_narrower_than_a_block(monkeypatch, tiles):
    """On an aligned weight: a tile wider than a block (the per-element path) and no wider (one absmax a row)."""
    monkeypatch.setattr(km, "INTERPRETER_TILES", tiles)
    if not interpreting():
        pytest.skip("tile sizes are the autotuner's on a GPU")
    for double_quant in (False, True):
        state, nested = _state(40, 128, 32, double_quant, seed=3)
        x = torch.randn(19, 128)
        w = decode_weight_reference(*state, torch.float32, **nested)
        _assert_agrees(km.nf4_matmul(x, *state, torch.float32, **nested),
                       nf4_matmul_reference(x, *state, torch.float32, **nested), x, w.t(), torch.float32)
        g = torch.randn(19, 40)
        _assert_agrees(km.nf4_matmul_grad_x(g, *state, torch.float32, **nested),
                       nf4_matmul_grad_x_reference(g, *state, torch.float32, **nested), g, w, torch.float32)


def test_leading_dims_strides_and_empty_batches():
    state, nested = _state(24, 96, 64, True, seed=4)
    x = torch.randn(2, 3, 192, device=DEVICE)[..., ::2]  # non-contiguous, [2, 3, 96]
    y = km.nf4_matmul(x, *state, torch.float16, **nested)
    assert y.shape == (2, 3, 24)
    want = nf4_matmul_reference(x.reshape(6, 96), *state, torch.float16, **nested)
    w = decode_weight_reference(*state, torch.float16, **nested).float()
    _assert_agrees(y.reshape(6, 24), want, x.reshape(6, 96).half().float(), w.t(), torch.float16)
    assert km.nf4_matmul(x[:0], *state, torch.float16, **nested).shape == (0, 3, 24)
    assert km.nf4_matmul_grad_x(torch.randn(0, 24, device=DEVICE), *state, torch.float16, **nested).shape == (0, 96)


@pytest.mark.parametrize("compute_dtype", DTYPES, ids=str)
def test_nf4_linear_trains_like_the_pure_pytorch_layer(compute_dtype):
    """The autograd function QLoRALinear(backend="triton") runs, on an NF4Linear's own storage, next to the
    function the pure-PyTorch layer runs: outputs, dL/dx and dL/db agree; dtypes are the same."""
    torch.manual_seed(5)
    linear = torch.nn.Linear(96, 40).to(DEVICE)
    layer = NF4Linear.from_linear(linear, blocksize=64, double_quant=True, compute_dtype=compute_dtype)
    layer.bias.requires_grad_(True)
    x = torch.randn(4, 7, 96, device=DEVICE)
    upstream = torch.randn(4, 7, 40, device=DEVICE).to(compute_dtype)  # the same dL/dy for both
    outs = []
    for fn, levels in ((nf4_linear, layer.pair_table), (km.nf4_linear, layer.quant_map)):
        xi = x.clone().requires_grad_(True)
        out = fn(xi, layer.weight, layer.bias, layer.absmax, levels, tuple(layer.weight_shape), layer.blocksize,
                 compute_dtype, layer.nested_absmax, layer.nested_offset, layer.nested_quant_map,
                 layer.nested_blocksize)
        out.backward(upstream)
        outs.append((out.detach(), xi.grad, layer.bias.grad.clone()))
        layer.bias.grad = None
    (y_t, gx_t, gb_t), (y_k, gx_k, gb_k) = outs
    assert y_k.dtype == y_t.dtype == compute_dtype and gx_k.dtype == gx_t.dtype == torch.float32
    w = layer.dequantized_weight(compute_dtype).float()
    b = layer.bias.detach().to(compute_dtype).float()
    _assert_agrees(y_k, y_t, x.reshape(-1, 96).to(compute_dtype).float(), w.t(), compute_dtype, b)
    # dL/dx = g W in the compute dtype, then cast to fp32 (the input dtype); dL/db: the same fp32 sum
    _assert_agrees(gx_k.to(compute_dtype), gx_t.to(compute_dtype), upstream.reshape(-1, 40).float(), w,
                   compute_dtype)
    assert torch.equal(gb_k, gb_t)


def test_nf4_linear_follows_autocast():
    """Inside torch.autocast the matmul runs in the autocast dtype, as the pure-PyTorch layer (fp16 on CPU here)."""
    layer = NF4Linear.from_linear(torch.nn.Linear(64, 32).to(DEVICE), compute_dtype=torch.float32)
    x = torch.randn(5, 64, device=DEVICE, requires_grad=True)
    dtype = torch.float16
    with torch.autocast(DEVICE, dtype=dtype):
        y = km.nf4_linear(x, layer.weight, layer.bias, layer.absmax, layer.quant_map, tuple(layer.weight_shape),
                          64, torch.float32, layer.nested_absmax, layer.nested_offset, layer.nested_quant_map,
                          layer.nested_blocksize)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.shape == x.shape


def test_bad_input_names_the_argument():
    state, nested = _state(8, 64, 64, False, seed=6)
    x = torch.randn(2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="x must have 64 features"):
        km.nf4_matmul(torch.randn(2, 63, device=DEVICE), *state, torch.float32)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        km.nf4_matmul(x.long(), *state, torch.float32)
    with pytest.raises(ValueError, match="bias must be a tensor of shape"):
        km.nf4_matmul(x, *state, torch.float32, torch.randn(7, device=DEVICE))
    with pytest.raises(ValueError, match="shape must be the 2-D weight shape"):
        km.nf4_matmul(x, state[0], state[1], state[2], (512,), 64, torch.float32)
    with pytest.raises(ValueError, match="packed has"):
        km.nf4_matmul(x, state[0][:-1], *state[1:], torch.float32)
    with pytest.raises(TypeError, match="dtype must be"):
        km.nf4_matmul(x, *state, torch.int32)
    with pytest.raises(ValueError, match="g must have 8 features"):
        km.nf4_matmul_grad_x(x, *state, torch.float32)


# ------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("tokens", [1, 16, 512])
def test_cuda_equals_bitsandbytes_linear4bit_and_peft(tokens):
    """On bitsandbytes' own bytes: the fused kernel next to ``Linear4bit`` (dequantize + cuBLAS), and a fused
    QLoRA forward (kernel + the LoRA bypass) next to PEFT's 4-bit LoRA layer, in bf16, within bf16 rounding."""
    import peft

    from lorakit._bnb import import_bitsandbytes

    bnb = import_bitsandbytes()
    torch.manual_seed(7)
    linear = torch.nn.Linear(1024, 768).cuda()
    four = bnb.nn.Linear4bit(1024, 768, compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
    four.load_state_dict(linear.state_dict())
    four = four.cuda()
    qs = four.weight.quant_state
    x = torch.randn(tokens, 1024, device="cuda", dtype=torch.bfloat16)
    y = km.nf4_matmul(x, four.weight.data, qs.absmax, qs.code, (768, 1024), qs.blocksize, torch.bfloat16,
                      four.bias, qs.state2.absmax, qs.offset, qs.state2.code, qs.state2.blocksize)
    with torch.no_grad():
        theirs = four(x)
    scale = theirs.float().abs().max()
    assert ((y.float() - theirs.float()).abs().max() / scale).item() < 2e-2

    class One(torch.nn.Module):
        def __init__(self, proj):
            super().__init__()
            self.proj = proj

        def forward(self, x):
            return self.proj(x)

    model = One(four)
    model.is_loaded_in_4bit = True
    pm = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=["proj"]))
    lora = pm.base_model.model.proj
    torch.nn.init.normal_(lora.lora_B["default"].weight, std=0.02)
    a, b = lora.lora_A["default"].weight, lora.lora_B["default"].weight
    with torch.no_grad():
        peft_out = pm(x)
        ours = y + ((x.to(a.dtype) @ a.t()) @ b.t() * lora.scaling["default"]).to(y.dtype)
    assert ((ours.float() - peft_out.float()).abs().max() / peft_out.float().abs().max()).item() < 2e-2
