"""lorakit.serving.kernels: BGMV (gather + bmm), SGMV (segmented) and the masked loop equal eq. 2 row by row."""

from __future__ import annotations

import pytest
import torch

from lorakit.serving import kernels
from lorakit.serving.kernels import (
    Segments,
    bgmv,
    bgmv_expand,
    bgmv_shrink,
    masked,
    reference_delta,
    register_backend,
    segments_from_indices,
    segments_from_runs,
    sgmv,
)


def make_stack(n: int = 5, r: int = 4, d_in: int = 12, d_out: int = 10, t: int = 9, seed: int = 0,
               dtype: torch.dtype = torch.float32, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, r, d_in, generator=gen).to(device, dtype)
    B = torch.randn(n, d_out, r, generator=gen).to(device, dtype)
    x = torch.randn(t, d_in, generator=gen).to(device, dtype)
    indices = torch.randint(-1, n, (t,), generator=gen).to(device)
    indices[0] = -1  # at least one base-only row
    return x, A, B, indices


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def grouped(x, indices):
    order = torch.sort(indices, stable=True).indices
    return x[order], indices[order], order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_kernel_equals_the_row_by_row_definition(seed):
    x, A, B, indices = make_stack(seed=seed, dtype=torch.float64)
    want = reference_delta(x, A, B, indices)
    assert want.abs().max() > 0.1 and bool((want[indices < 0] == 0).all())
    assert rel_err(bgmv(x, A, B, indices), want) < 1e-12
    assert rel_err(masked(x, A, B, indices), want) < 1e-12
    xs, ids, order = grouped(x, indices)
    assert rel_err(sgmv(xs, A, B, segments_from_indices(ids)), want[order]) < 1e-12
    # unsorted rows are still right with SGMV: only more, shorter segments
    assert rel_err(sgmv(x, A, B, segments_from_indices(indices)), want) < 1e-12


def test_shrink_then_expand_is_bgmv_and_base_rows_are_zero():
    x, A, B, indices = make_stack()
    v = bgmv_shrink(x, A, indices)
    assert v.shape == (x.shape[0], A.shape[1]) and bool((v[indices < 0] == 0).all())
    y = bgmv_expand(v, B, indices)
    assert y.shape == (x.shape[0], B.shape[1])
    assert torch.equal(y, bgmv(x, A, B, indices))
    segs = segments_from_indices(indices)
    assert torch.allclose(kernels.sgmv_expand(kernels.sgmv_shrink(x, A, segs), B, segs), y, atol=1e-5)


def test_base_rows_stay_zero_even_when_their_input_is_not_finite():
    x, A, B, indices = make_stack()
    x[0] = float("inf")  # row 0 is base-only: its delta must not turn into NaN
    assert bool((bgmv(x, A, B, indices)[0] == 0).all())
    assert bool((sgmv(x, A, B, segments_from_indices(indices))[0] == 0).all())


def test_segments_from_indices_and_from_runs_agree():
    indices = torch.tensor([2, 2, -1, 0, 0, 0, 2])
    segs = segments_from_indices(indices)
    assert (segs.starts, segs.ends, segs.slots) == ((0, 2, 3, 6), (2, 3, 6, 7), (2, -1, 0, 2))
    assert segs.offsets.tolist() == [0, 2, 3, 6, 7] and segs.slot_index.tolist() == [2, -1, 0, 2]
    again = segments_from_runs([0, 2, 3, 6], [2, 3, 6, 7], [2, -1, 0, 2], indices.device)
    assert (again.starts, again.ends, again.slots) == (segs.starts, segs.ends, segs.slots)
    assert torch.equal(again.offsets, segs.offsets) and len(again) == 4 and again.n_rows == 7
    empty = segments_from_indices(torch.zeros(0, dtype=torch.int64))
    assert len(empty) == 0 and empty.n_rows == 0


def test_bgmv_has_no_graph_break_or_host_sync():
    """BGMV is capturable (decode under CUDA graphs); SGMV's segment bounds live on the host by design."""
    x, A, B, indices = make_stack()
    compiled = torch.compile(lambda x, A, B, i: kernels._torch_bgmv_expand(kernels._torch_bgmv_shrink(x, A, i), B, i),
                             backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, A, B, indices), bgmv(x, A, B, indices))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp64(dtype):
    x, A, B, indices = make_stack(n=6, r=8, d_in=64, d_out=48, t=16, dtype=dtype)
    want = reference_delta(x, A, B, indices)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got in (bgmv(x, A, B, indices), sgmv(x, A, B, segments_from_indices(indices)), masked(x, A, B, indices)):
        assert got.dtype == dtype
        assert rel_err(got, want) < tol


def test_autocast_bf16_on_cpu():
    x, A, B, indices = make_stack(n=6, r=8, d_in=64, d_out=48, t=16)
    want = reference_delta(x, A, B, indices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [bgmv(x, A, B, indices), sgmv(x, A, B, segments_from_indices(indices)), masked(x, A, B, indices)]
    for got in outs:
        assert got.dtype == torch.bfloat16
        assert rel_err(got, want) < 2e-2


def test_register_backend_is_called_and_falls_back_to_torch():
    calls = []

    def counting_shrink(x, A, indices):
        calls.append(x.shape)
        return kernels._torch_bgmv_shrink(x, A, indices)

    register_backend("counting", bgmv_shrink=counting_shrink)
    try:
        x, A, B, indices = make_stack()
        assert torch.equal(bgmv(x, A, B, indices, backend="counting"), bgmv(x, A, B, indices))
        assert calls == [x.shape]  # shrink from the new backend, expand from torch's
        assert torch.equal(sgmv(x, A, B, segments_from_indices(indices), backend="counting"),
                           sgmv(x, A, B, segments_from_indices(indices)))
    finally:
        kernels.BACKENDS.pop("counting")


def test_register_backend_validates():
    with pytest.raises(ValueError, match="unknown operations"):
        register_backend("bad", bgmv_fused=lambda *a: None)
    with pytest.raises(TypeError, match="must be callable"):
        register_backend("bad", bgmv_shrink=3)
    with pytest.raises(TypeError, match="name"):
        register_backend("", bgmv_shrink=lambda *a: None)
    assert "bad" not in kernels.BACKENDS


def test_bad_input_names_the_argument():
    x, A, B, indices = make_stack()
    with pytest.raises(ValueError, match="backend must be one of"):
        bgmv(x, A, B, indices, backend="triton-not-registered")
    with pytest.raises(TypeError, match="indices must be a 1-D int64"):
        bgmv(x, A, B, indices.float())
    with pytest.raises(ValueError, match="indices has"):
        bgmv(x, A, B, indices[:-1])
    with pytest.raises(ValueError, match="x has 11 features"):
        bgmv(x[:, :11], A, B, indices)
    with pytest.raises(TypeError, match="A must be a floating-point tensor"):
        bgmv(x, A[0], B, indices)
    with pytest.raises(ValueError, match="does not match A"):
        bgmv(x, A, B[:, :, :2], indices)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        bgmv(x.long(), A, B, indices)
    with pytest.raises(ValueError, match="segments cover"):
        sgmv(x, A, B, segments_from_indices(indices[:-1]))
    with pytest.raises(TypeError, match="segments must be"):
        sgmv(x, A, B, [(0, 9, 1)])
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.check_kernel("punica")
    with pytest.raises(ValueError, match="one entry per run"):
        segments_from_runs([0], [1, 2], [0], torch.device("cpu"))
    assert isinstance(segments_from_indices(indices), Segments)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernels_on_cuda(dtype):
    x, A, B, indices = make_stack(n=6, r=8, d_in=64, d_out=48, t=16, dtype=dtype, device="cuda")
    want = reference_delta(x, A, B, indices)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.backends.cuda.matmul.allow_tf32 = False
    for got in (bgmv(x, A, B, indices), sgmv(x, A, B, segments_from_indices(indices)), masked(x, A, B, indices)):
        assert got.device.type == "cuda" and got.dtype == dtype
        assert rel_err(got, want) < tol
