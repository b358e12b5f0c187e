"""Tests of ``lorakit.functional``: the LoRA forward and its hand-derived backward (notebook 01)."""

from __future__ import annotations

import pytest
import torch

from lorakit.functional import lora_linear, lora_linear_reference


def make_inputs(
    lead: tuple[int, ...] = (5,),
    in_f: int = 7,
    out_f: int = 6,
    r: int = 3,
    dtype: torch.dtype = torch.float64,
    adapter_dtype: torch.dtype | None = None,
    bias: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random x, weight, bias, A, B (B non-zero so the bypass contributes)."""
    g = torch.Generator().manual_seed(seed)
    adapter_dtype = adapter_dtype or dtype

    def rnd(*shape: int, dt: torch.dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt)

    return {
        "x": rnd(*lead, in_f, dt=dtype),
        "weight": rnd(out_f, in_f, dt=dtype),
        "bias": rnd(out_f, dt=dtype) if bias else None,
        "A": rnd(r, in_f, dt=adapter_dtype),
        "B": rnd(out_f, r, dt=adapter_dtype),
    }


def naive(x, weight, bias, A, B, s):
    """``x W^T + b + s x A^T B^T`` written out with B @ A formed (only for checking)."""
    out = x @ weight.t() + s * (x @ A.t() @ B.t())
    return out if bias is None else out + bias


# --------------------------------------------------------------------------- forward values
@pytest.mark.parametrize("lead", [(5,), (2, 3), (1,), (2, 1, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_matches_reference_and_naive(lead, with_bias):
    t = make_inputs(lead=lead, bias=with_bias)
    s = 1.7
    out = lora_linear(t["x"], t["weight"], t["bias"], t["A"], t["B"], s)
    assert out.shape == (*lead, 6)
    ref = lora_linear_reference(t["x"], t["weight"], t["bias"], t["A"], t["B"], s)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, naive(t["x"], t["weight"], t["bias"], t["A"], t["B"], s), rtol=1e-12, atol=1e-12)


def test_integer_scaling_accepted():
    t = make_inputs()
    out = lora_linear(t["x"], t["weight"], t["bias"], t["A"], t["B"], 2)
    torch.testing.assert_close(out, naive(t["x"], t["weight"], t["bias"], t["A"], t["B"], 2.0))


def test_zero_B_gives_base_output_exactly():
    t = make_inputs(dtype=torch.float32)
    B = torch.zeros_like(t["B"])
    out = lora_linear(t["x"], t["weight"], t["bias"], t["A"], B, 3.0)
    assert torch.equal(out, torch.nn.functional.linear(t["x"], t["weight"], t["bias"]))


# --------------------------------------------------------------------------- gradients
def test_gradcheck_adapters_and_input_base_frozen():
    t = make_inputs()
    x = t["x"].requires_grad_()
    A, B = t["A"].requires_grad_(), t["B"].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, A, B: lora_linear(x, t["weight"], t["bias"], A, B, 0.75), (x, A, B), eps=1e-6, atol=1e-6
    )


def test_gradcheck_everything_trainable():
    t = make_inputs(lead=(2, 3))
    args = tuple(t[k].requires_grad_() for k in ("x", "weight", "bias", "A", "B"))
    assert torch.autograd.gradcheck(
        lambda x, w, b, A, B: lora_linear(x, w, b, A, B, 1.3), args, eps=1e-6, atol=1e-6
    )


def test_gradcheck_without_bias():
    t = make_inputs(bias=False)
    args = tuple(t[k].requires_grad_() for k in ("x", "weight", "A", "B"))
    assert torch.autograd.gradcheck(lambda x, w, A, B: lora_linear(x, w, None, A, B, 0.5), args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("lead", [(5,), (2, 4)])
@pytest.mark.parametrize("base_trainable", [False, True])
def test_gradients_equal_autograd_on_reference(lead, base_trainable):
    names = ("x", "weight", "bias", "A", "B") if base_trainable else ("x", "A", "B")
    t1 = make_inputs(lead=lead, dtype=torch.float32, seed=3)
    t2 = {k: (v.clone() if v is not None else None) for k, v in t1.items()}
    for t in (t1, t2):
        for k in names:
            t[k].requires_grad_()
    g = torch.randn(*lead, 6)
    lora_linear(t1["x"], t1["weight"], t1["bias"], t1["A"], t1["B"], 2.0).backward(g)
    lora_linear_reference(t2["x"], t2["weight"], t2["bias"], t2["A"], t2["B"], 2.0).backward(g)
    for k in names:
        torch.testing.assert_close(t1[k].grad, t2[k].grad, rtol=1e-5, atol=1e-5)
    if not base_trainable:
        assert t1["weight"].grad is None and t1["bias"].grad is None


def test_only_adapters_need_grad_no_input_grad():
    t = make_inputs(dtype=torch.float32)
    A, B = t["A"].requires_grad_(), t["B"].requires_grad_()
    lora_linear(t["x"], t["weight"], t["bias"], A, B, 1.0).sum().backward()
    assert A.grad is not None and B.grad is not None
    assert t["x"].grad is None


def test_saved_tensors_contain_no_out_by_in_matrix_other_than_weight():
    # out, in, r and the number of rows all differ, so an [out, in] shape can only be W or B @ A.
    in_f, out_f, r, n = 40, 24, 3, 11
    t = make_inputs(lead=(n,), in_f=in_f, out_f=out_f, r=r, dtype=torch.float32)
    for k in ("x", "A", "B"):
        t[k].requires_grad_()
    saved: list[torch.Tensor] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = lora_linear(t["x"], t["weight"], t["bias"], t["A"], t["B"], 1.0, dropout_p=0.2, training=True)
    shapes = [tuple(s.shape) for s in saved]
    assert (n, r) in shapes, "the hook did not see the custom Function's saved tensors (u = x A^T is [n, r])"
    big = [s for s in saved if s.shape == (out_f, in_f)]
    assert all(s.data_ptr() == t["weight"].data_ptr() for s in big)
    out.sum().backward()  # the graph is still usable


# --------------------------------------------------------------------------- dropout
def test_dropout_never_touches_base_path():
    t = make_inputs(lead=(64,), dtype=torch.float32)
    B = torch.zeros_like(t["B"])
    torch.manual_seed(0)
    out = lora_linear(t["x"], t["weight"], t["bias"], t["A"], B, 2.0, dropout_p=0.5, training=True)
    assert torch.equal(out, torch.nn.functional.linear(t["x"], t["weight"], t["bias"]))


def test_dropout_mask_statistics():
    # A = B = I, W = 0, s = 1: the output is exactly the dropped-out input x * mask / (1 - p).
    n, d, p = 4000, 16, 0.3
    x = torch.ones(n, d)
    eye = torch.eye(d)
    torch.manual_seed(1)
    out = lora_linear(x, torch.zeros(d, d), None, eye, eye, 1.0, dropout_p=p, training=True)
    assert torch.unique(out).numel() == 2
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 0.01  # 64k Bernoulli draws: std of the mean ~ 0.0018
    assert abs(out.mean().item() - 1.0) < 0.02  # inverted dropout keeps the expectation
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)))


def test_dropout_ignored_when_not_training():
    t = make_inputs(dtype=torch.float32)
    args = (t["x"], t["weight"], t["bias"], t["A"], t["B"], 1.5)
    ref = lora_linear(*args)
    for _ in range(3):
        assert torch.equal(lora_linear(*args, dropout_p=0.9, training=False), ref)


def test_dropout_zero_probability_in_training_is_identity():
    t = make_inputs(dtype=torch.float32)
    args = (t["x"], t["weight"], t["bias"], t["A"], t["B"], 1.5)
    assert torch.equal(lora_linear(*args, dropout_p=0.0, training=True), lora_linear(*args))


def test_dropout_forward_and_backward_match_masked_reference():
    p, s = 0.4, 1.25
    t = make_inputs(lead=(3, 5), dtype=torch.float64, seed=7)
    for k in ("x", "A", "B"):
        t[k].requires_grad_()
    torch.manual_seed(123)
    out = lora_linear(t["x"], t["weight"], t["bias"], t["A"], t["B"], s, dropout_p=p, training=True)
    g = torch.randn_like(out)
    out.backward(g)
    # Recover the mask the way lora_linear draws it (same seed, same call) and redo it with autograd.
    x2 = t["x"].detach().reshape(-1, 7)
    torch.manual_seed(123)
    mask = torch.empty_like(x2).bernoulli_(1.0 - p).reshape(t["x"].shape)
    x, A, B = (t[k].detach().clone().requires_grad_() for k in ("x", "A", "B"))
    ref = torch.nn.functional.linear(x, t["weight"], t["bias"]) + s * ((x * mask / (1 - p)) @ A.t()) @ B.t()
    ref.backward(g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(t["x"].grad, x.grad)
    torch.testing.assert_close(t["A"].grad, A.grad)
    torch.testing.assert_close(t["B"].grad, B.grad)


# --------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mixed", [True, False], ids=["fp32-adapters", "same-dtype-adapters"])
def test_half_precision_close_to_fp32(dtype, mixed):
    t32 = make_inputs(lead=(4, 8), in_f=32, out_f=24, r=4, dtype=torch.float32, seed=2)
    t32["x"] = t32["x"] * 0.5
    half = {k: v.to(dtype) for k, v in t32.items()}
    if mixed:
        half["A"], half["B"] = t32["A"].clone(), t32["B"].clone()
    for t in (t32, half):
        for k in ("x", "A", "B"):
            t[k].requires_grad_()
    out32 = lora_linear(t32["x"], t32["weight"], t32["bias"], t32["A"], t32["B"], 0.5)
    out = lora_linear(half["x"], half["weight"], half["bias"], half["A"], half["B"], 0.5)
    assert out.dtype == dtype
    scale = out32.abs().max().item()
    torch.testing.assert_close(out.float(), out32.detach(), rtol=0, atol=0.03 * scale)
    g = torch.randn_like(out32)
    out32.backward(g)
    out.backward(g.to(dtype))
    assert half["x"].grad.dtype == dtype
    assert half["A"].grad.dtype == half["A"].dtype and half["B"].grad.dtype == half["B"].dtype
    for k in ("x", "A", "B"):
        ref = t32[k].grad
        torch.testing.assert_close(half[k].grad.float(), ref, rtol=0, atol=0.03 * ref.abs().max().item())


# --------------------------------------------------------------------------- bad inputs
def _good():
    return make_inputs(dtype=torch.float32)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        ({"x": torch.ones(5, 8)}, ValueError, "x has 8 features"),
        ({"x": torch.ones(5, 7, dtype=torch.long)}, TypeError, "x must be a floating-point"),
        ({"x": [[1.0] * 7]}, TypeError, "x, weight, A and B"),
        ({"weight": torch.ones(6, 7, 1)}, ValueError, "weight, A, B must be 2-D"),
        ({"A": torch.ones(3, 8)}, ValueError, "expected A"),
        ({"B": torch.ones(5, 3)}, ValueError, "expected A"),
        ({"B": torch.ones(6, 2)}, ValueError, "expected A"),
        ({"bias": torch.ones(5)}, ValueError, "bias must have shape"),
        ({"scaling": torch.tensor(1.0)}, TypeError, "scaling must be a Python number"),
        ({"scaling": "2"}, TypeError, "scaling"),
        ({"scaling": True}, TypeError, "scaling"),
        ({"dropout_p": 1.0}, ValueError, "dropout_p"),
        ({"dropout_p": -0.1}, ValueError, "dropout_p"),
        ({"dropout_p": float("nan")}, ValueError, "dropout_p"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(change, exc, match):
    kwargs = {**_good(), "scaling": 1.0, "dropout_p": 0.0, **change}
    with pytest.raises(exc, match=match):
        lora_linear(**kwargs)


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
    def test_forward_backward_match_cpu(self, dtype):
        t = make_inputs(lead=(4, 16), in_f=64, out_f=48, r=8, dtype=torch.float32, seed=5)
        t["x"] = t["x"] * 0.5
        adapter_dtype = torch.float32 if dtype != torch.float32 else dtype
        cpu = {k: v.clone() for k, v in t.items()}
        gpu = {k: v.to("cuda", dtype if k in ("x", "weight", "bias") else adapter_dtype) for k, v in t.items()}
        for d in (cpu, gpu):
            for k in ("x", "A", "B"):
                d[k].requires_grad_()
        out_cpu = lora_linear(cpu["x"], cpu["weight"], cpu["bias"], cpu["A"], cpu["B"], 2.0)
        out_gpu = lora_linear(gpu["x"], gpu["weight"], gpu["bias"], gpu["A"], gpu["B"], 2.0)
        assert out_gpu.device.type == "cuda" and out_gpu.dtype == dtype
        tol = 1e-4 if dtype == torch.float32 else 0.03
        scale = out_cpu.abs().max().item()
        torch.testing.assert_close(out_gpu.float().cpu(), out_cpu.detach(), rtol=0, atol=tol * scale)
        g = torch.randn_like(out_cpu)
        out_cpu.backward(g)
        out_gpu.backward(g.to("cuda", dtype))
        for k in ("x", "A", "B"):
            ref = cpu[k].grad
            torch.testing.assert_close(gpu[k].grad.float().cpu(), ref, rtol=0, atol=tol * ref.abs().max().item())

    def test_dropout_on_cuda_keeps_base_path(self):
        t = {k: v.cuda() for k, v in make_inputs(lead=(32,), dtype=torch.float32).items()}
        B = torch.zeros_like(t["B"])
        out = lora_linear(t["x"], t["weight"], t["bias"], t["A"], B, 2.0, dropout_p=0.5, training=True)
        assert torch.equal(out, torch.nn.functional.linear(t["x"], t["weight"], t["bias"]))
