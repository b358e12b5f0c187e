"""``lorakit.kernels.bgmv``: the Triton BGMV/SGMV shrink and expand equal ``lorakit.serving``'s PyTorch kernels.

Each kernel is compared with the PyTorch backend of :mod:`lorakit.serving.kernels` (gather + bmm, segmented) and
with the float64 row-by-row definition there, within :func:`lorakit.kernels.reference.agreement_bound` (the same
float32 products in another order, one rounding). Shapes are random and odd (rank 1 and ranks that are not powers
of two, widths that are not multiples of a tile), rows without an adapter (slot ``-1``) are mixed in, and PEFT's
mixed-batch forward (``adapter_names=[...]``) is the outside cross-check. Interpreter on CPU (fp32, fp16) without a
GPU, compiled on CUDA (bf16 too) with one.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install 'lorakit[gpu]'): kernel tests skipped")

from lorakit.kernels import bgmv as kb  # noqa: E402
from lorakit.kernels import interpreting  # noqa: E402
from lorakit.kernels.reference import agreement_bound  # noqa: E402
from lorakit.serving import kernels as serving  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
DTYPES = (torch.float32, torch.float16) + (() if interpreting() else (torch.bfloat16,))


def _stack(seed: int, dtype: torch.dtype, n: int | None = None, t: int | None = None):
    """Random x [T, d_in], A [N, r, d_in], B' [N, d_out, r], slots in -1..N-1 (at least one -1)."""
    g = torch.Generator().manual_seed(seed)
    n = n or int(torch.randint(1, 6, (1,), generator=g))
    t = t or int(torch.randint(1, 12, (1,), generator=g))
    r = [1, 3, 8, 13][seed % 4]
    d_in, d_out = (int(v) for v in torch.randint(5, 90, (2,), generator=g))
    x = torch.randn(t, d_in, generator=g).to(DEVICE, dtype)
    A = (torch.randn(n, r, d_in, generator=g) / d_in**0.5).to(DEVICE, dtype)
    B = (torch.randn(n, d_out, r, generator=g) / r**0.5).to(DEVICE, dtype)
    indices = torch.randint(-1, n, (t,), generator=g).to(DEVICE)
    indices[t // 2] = -1
    return x, A, B, indices


def _operands(rows: torch.Tensor, stack: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype):
    """Per row, the [width] row and the [out, width] adapter matrix it meets (zero matrix for slot -1)."""
    w = stack.index_select(0, indices.clamp_min(0)).to(dtype).float()
    w[indices < 0] = 0
    return rows.to(dtype).float(), w


def _assert_agrees(got: torch.Tensor, want: torch.Tensor, rows: torch.Tensor, stack: torch.Tensor,
                   indices: torch.Tensor, dtype: torch.dtype) -> None:
    """Row by row within the bound; base-only rows exactly zero."""
    assert got.shape == want.shape and got.dtype == want.dtype
    a, w = _operands(rows, stack, indices, dtype)
    for t in range(got.shape[0]):
        bound = agreement_bound(a[t : t + 1], w[t].t(), want[t : t + 1].float(), dtype)
        err = (got[t].double() - want[t].double()).abs()
        assert bool((err <= bound[0]).all()), (t, err.max().item(), bound.max().item())
    assert bool((got[indices < 0] == 0).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_bgmv_shrink_and_expand_equal_gather_bmm(seed, dtype):
    x, A, B, indices = _stack(seed, dtype)
    v = kb.bgmv_shrink(x, A, indices)
    _assert_agrees(v, serving.bgmv_shrink(x, A, indices), x, A, indices, dtype)
    y = kb.bgmv_expand(v, B, indices)
    _assert_agrees(y, serving.bgmv_expand(v, B, indices), v, B, indices, dtype)
    exact = serving.reference_delta(x.double(), A.double(), B.double(), indices)
    tol = 8 * torch.finfo(dtype).eps * exact.abs().max().clamp_min(1e-30)  # shrink's rounding then expand's
    assert (y.double() - exact).abs().max() <= tol


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_sgmv_equals_segmented_pytorch(seed, dtype):
    """Sorted rows (one run per adapter), unsorted rows (many short runs), and runs longer than a tile."""
    x, A, B, indices = _stack(seed, dtype, t=40 if seed == 3 else None)
    order = torch.sort(indices, stable=True).indices
    for rows, ids in ((x[order], indices[order]), (x, indices)):
        segments = serving.segments_from_indices(ids)
        v = kb.sgmv_shrink(rows, A, segments)
        _assert_agrees(v, serving.sgmv_shrink(rows, A, segments), rows, A, ids, dtype)
        y = kb.sgmv_expand(v, B, segments)
        _assert_agrees(y, serving.sgmv_expand(v, B, segments), v, B, ids, dtype)


def test_sgmv_rows_outside_every_run_are_zero():
    x, A, B, _ = _stack(0, torch.float32, n=3, t=10)
    segments = serving.segments_from_runs([1, 6], [4, 10], [2, 0], torch.device(DEVICE))
    indices = torch.tensor([-1, 2, 2, 2, -1, -1, 0, 0, 0, 0], device=DEVICE)
    with pytest.raises(ValueError, match="segments cover"):
        kb.sgmv_shrink(x[:9], A, segments)
    v = kb.sgmv_shrink(x, A, segments)
    _assert_agrees(v, kb.bgmv_shrink(x, A, indices), x, A, indices, torch.float32)


def test_empty_batches_and_dtypes_follow_pytorch():
    x, A, B, indices = _stack(1, torch.float16)
    assert kb.bgmv_shrink(x[:0], A, indices[:0]).shape == (0, A.shape[1])
    assert kb.sgmv_expand(torch.zeros(0, A.shape[1], device=DEVICE, dtype=torch.float16), B,
                          serving.segments_from_indices(indices[:0])).shape == (0, B.shape[1])
    v32 = kb.bgmv_shrink(x.float(), A.float(), indices)
    assert kb.bgmv_expand(v32, B, indices).dtype == serving.bgmv_expand(v32, B, indices).dtype == torch.float16
    segments = serving.segments_from_indices(indices)
    assert kb.sgmv_expand(v32, B, segments).dtype == serving.sgmv_expand(v32, B, segments).dtype


def test_registered_as_the_serving_backend():
    kb.register_serving_backend()
    x, A, B, indices = _stack(2, torch.float32)
    got = serving.bgmv(x, A, B, indices, backend="triton")
    _assert_agrees(got, serving.bgmv(x, A, B, indices), kb.bgmv_shrink(x, A, indices), B, indices, torch.float32)


def test_equals_peft_mixed_batch():
    """PEFT's mixed-batch inference (one adapter name per row, "__base__" for none) on one Linear with three
    adapters of different ranks, padded into one stack as ``lorakit.serving``'s padded layout does."""
    import peft

    torch.manual_seed(0)

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(48, 40)

        def forward(self, x):
            return self.proj(x)

    ranks = {"cat": 2, "dog": 8, "emu": 5}
    model = peft.get_peft_model(One(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["proj"]), "cat")
    for name in ("dog", "emu"):
        model.add_adapter(name, peft.LoraConfig(r=ranks[name], lora_alpha=3 * ranks[name], target_modules=["proj"]))
    layer = model.base_model.model.proj
    A = torch.zeros(3, 8, 48)
    B = torch.zeros(3, 40, 8)
    with torch.no_grad():
        for slot, name in enumerate(ranks):
            torch.nn.init.normal_(layer.lora_B[name].weight, std=0.1)
            r = ranks[name]
            A[slot, :r] = layer.lora_A[name].weight
            B[slot, :, :r] = layer.lora_B[name].weight * layer.scaling[name]
    names = ["emu", "__base__", "cat", "dog", "dog", "cat", "__base__", "emu", "cat"]
    indices = torch.tensor([list(ranks).index(n) if n in ranks else -1 for n in names])
    x = torch.randn(len(names), 48)
    model.eval()
    with torch.no_grad():
        want = model(x, adapter_names=names)
        base = layer.base_layer(x)
    A, B, x, indices = A.to(DEVICE), B.to(DEVICE), x.to(DEVICE), indices.to(DEVICE)
    got = base.to(DEVICE) + kb.bgmv_expand(kb.bgmv_shrink(x, A, indices), B, indices)
    assert ((got.cpu() - want).abs().max() / want.abs().max()).item() < 1e-5


def test_bad_input_names_the_argument():
    x, A, B, indices = _stack(0, torch.float32)
    with pytest.raises(TypeError, match="indices must be a 1-D int64 tensor"):
        kb.bgmv_shrink(x, A, indices.int())
    with pytest.raises(ValueError, match="indices has"):
        kb.bgmv_shrink(x, A, indices[:-1])
    with pytest.raises(ValueError, match="x has"):
        kb.bgmv_shrink(x[:, :-1], A, indices)
    with pytest.raises(TypeError, match="A must be a 3-D"):
        kb.bgmv_shrink(x, A[0], indices)
    with pytest.raises(ValueError, match="v has"):
        kb.bgmv_expand(x, B, indices)
    with pytest.raises(TypeError, match="segments must be"):
        kb.sgmv_shrink(x, A, indices)


# ------------------------------------------------------------------ CUDA
@pytest.mark.cuda
def test_cuda_bf16_and_decode_scale_shapes():
    """A decode-sized batch on CUDA in bf16: 32 adapters of rank 16 on a 4096-wide layer, 64 rows."""
    g = torch.Generator().manual_seed(0)
    A = (torch.randn(32, 16, 4096, generator=g) / 64).cuda().bfloat16()
    B = (torch.randn(32, 4096, 16, generator=g) / 4).cuda().bfloat16()
    x = torch.randn(64, 4096, generator=g).cuda().bfloat16()
    indices = torch.randint(-1, 32, (64,), generator=g).cuda()
    v = kb.bgmv_shrink(x, A, indices)
    _assert_agrees(v, serving.bgmv_shrink(x, A, indices), x, A, indices, torch.bfloat16)
    y = kb.bgmv_expand(v, B, indices)
    _assert_agrees(y, serving.bgmv_expand(v, B, indices), v, B, indices, torch.bfloat16)
