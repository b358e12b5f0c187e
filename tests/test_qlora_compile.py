"""The NF4 hot path is GPU-shaped (issue 9, item 10): no host sync, no float64, bounded scratch, one weight copy.

* ``torch.compile(fn, backend="eager", fullgraph=True)`` refuses any graph break, and ``.item()``,
  ``.tolist()`` or ``bool(tensor)`` (a host sync on a GPU) is one. The QLoRA layer's forward, and its forward
  plus backward (``torch.autograd.grad`` traced with ``trace_autograd_ops``), compile and give the eager
  results bit for bit.
* A dispatch-mode audit records every tensor the decode allocates on its non-CPU path (the chunking and the
  int64 pair container a GPU uses, forced here on the CPU): no float64 anywhere, no integer scratch larger than
  one chunk, and no more than one weight-sized tensor in the compute dtype. On the CPU path float64 appears
  only as the chunk-sized container of gathered bit patterns, never in arithmetic.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lorakit import nf4
from lorakit.nf4 import kernels
from lorakit.qlora import NF4Linear, QLoRALinear

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


def make_layer(double_quant: bool, compute_dtype: torch.dtype, bias: bool = True) -> QLoRALinear:
    torch.manual_seed(0)
    layer = QLoRALinear(torch.nn.Linear(128, 64, bias=bias), r=4, alpha=8, double_quant=double_quant,
                        compute_dtype=compute_dtype)
    with torch.no_grad():
        layer.lora_B.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    return layer


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("double_quant", [True, False])
def test_forward_compiles_fullgraph_and_matches_eager(double_quant, compute_dtype):
    layer = make_layer(double_quant, compute_dtype)
    x = torch.randn(3, 5, 128)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast branch compiles too
        torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("double_quant", [True, False])
def test_forward_and_backward_compile_fullgraph_and_match_eager(double_quant, bias):
    layer = make_layer(double_quant, torch.bfloat16, bias=bias)
    twin = copy.deepcopy(layer)
    x = torch.randn(6, 128, requires_grad=True)

    def grads(module: QLoRALinear, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = module(x).float().square().sum()
        return torch.autograd.grad(loss, [x, module.lora_A, module.lora_B])

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(grads, backend="eager", fullgraph=True)(layer, x)
    eager = grads(twin, x)
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_compiled_forward_then_eager_backward():
    """The usual training set-up: a compiled forward whose captured backward runs in loss.backward()."""
    layer = make_layer(True, torch.bfloat16)
    twin = copy.deepcopy(layer)
    x1 = torch.randn(4, 128, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    torch.compile(layer, backend="eager", fullgraph=True)(x1).square().sum().backward()
    twin(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    torch.testing.assert_close(layer.lora_A.grad, twin.lora_A.grad, rtol=0, atol=0)
    torch.testing.assert_close(layer.lora_B.grad, twin.lora_B.grad, rtol=0, atol=0)


def test_the_checked_dequantize_is_not_sync_free_but_the_kernel_is():
    """The public function validates (a host sync, by design); the layer's kernel compiles without one."""
    q = nf4.quantize_nf4(torch.randn(64, 128), double_quant=True)
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):  # the validation syncs (bool(tensor), .tolist())
        torch.compile(lambda q: nf4.dequantize_4bit(q), backend="eager", fullgraph=True)(q)
    layer = NF4Linear(q, None, torch.float32)
    decode = torch.compile(lambda: layer.dequantized_weight(torch.float32), backend="eager", fullgraph=True)
    torch.testing.assert_close(decode(), nf4.dequantize_4bit(q, torch.float32), rtol=0, atol=0)


class _Allocations(TorchDispatchMode):
    """Records (op, dtype, numel) of every tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.records.append((str(func), t.dtype, t.numel()))
        return out


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("double_quant", [True, False])
def test_device_decode_path_allocates_no_float64_and_bounded_scratch(monkeypatch, double_quant, compute_dtype):
    """On a GPU the decode runs in chunks of DEVICE_CHUNK_BYTES; shrink it and audit a forward + backward."""
    chunk = 1024
    monkeypatch.setattr(kernels, "CPU_CHUNK_BYTES", chunk)  # the CPU path, with the device path's rules
    monkeypatch.setattr(kernels, "CPU_PAIR_DTYPE", kernels.DEVICE_PAIR_DTYPE)
    layer = make_layer(double_quant, compute_dtype)
    n_weights = 128 * 64
    assert n_weights // 2 > 2 * chunk, "several chunks"
    x = torch.randn(4, 128, requires_grad=True)
    with _Allocations() as audit:
        layer(x).float().square().sum().backward()
    dtypes = {dtype for _, dtype, _ in audit.records}
    assert torch.float64 not in dtypes, audit.records
    int_sizes = [n for op, dtype, n in audit.records if dtype in (torch.int32, torch.int64) and "view" not in op]
    assert max(int_sizes) <= chunk, "integer scratch must be one chunk, never the whole weight"
    weight_sized = [r for r in audit.records if r[2] >= n_weights and r[1] == compute_dtype and "view" not in r[0]
                    and "empty" in r[0]]
    assert len(weight_sized) == 2, weight_sized  # one weight in the forward, one in the backward, never both
    float_scratch = [n for op, dtype, n in audit.records if dtype == torch.float32 and "empty" in op and n < n_weights]
    assert not float_scratch or max(float_scratch) <= 2 * chunk


def test_cpu_decode_path_uses_float64_only_as_a_bit_container(monkeypatch):
    chunk = 1024
    monkeypatch.setattr(kernels, "CPU_CHUNK_BYTES", chunk)
    layer = make_layer(True, torch.bfloat16)
    x = torch.randn(4, 128, requires_grad=True)
    with _Allocations() as audit:
        layer(x).float().square().sum().backward()
    f64 = [(op, n) for op, dtype, n in audit.records if dtype == torch.float64]
    assert f64, "the CPU path gathers float64 bit patterns"
    ops = {op.rsplit(".", 1)[0] for op, _ in f64}  # "aten.index_select.out" -> "aten.index_select"
    assert ops <= {"aten.empty", "aten.index_select", "aten.view", "aten.slice", "aten.detach"}, ops
    assert max(n for _, n in f64) <= chunk


def test_decode_chunks_default_by_device():
    assert kernels.CPU_CHUNK_BYTES <= kernels.DEVICE_CHUNK_BYTES
    assert kernels.DEVICE_CHUNK_BYTES % 2048 == 0 and kernels.CPU_CHUNK_BYTES % 2048 == 0, "chunks start blocks"


def test_backward_keeps_no_weight_copy_between_passes():
    """Between forward and backward only the 4-bit state is referenced (module state, not activations)."""
    from lorakit.memory import saved_activation_bytes

    layer = make_layer(True, torch.bfloat16)
    x = torch.randn(4, 128, requires_grad=True)
    saved = saved_activation_bytes(layer, lambda: layer(x))
    assert saved < 128 * 64 * 2 / 4  # far below one bf16 copy of W


@pytest.mark.cuda
@pytest.mark.parametrize("backward", [False, True])
def test_cuda_layer_compiles_fullgraph(backward):
    """On CUDA a host sync is a graph break too: forward (and backward) compile and match eager."""
    layer = make_layer(True, torch.bfloat16).cuda()
    twin = copy.deepcopy(layer)
    x = torch.randn(8, 128, device="cuda", requires_grad=True)
    if not backward:
        with torch.no_grad():
            compiled = torch.compile(layer, backend="eager", fullgraph=True)
            torch.testing.assert_close(compiled(x), twin(x), rtol=0, atol=0)
        return

    def grads(module, x):
        return torch.autograd.grad(module(x).float().square().sum(), [x, module.lora_A, module.lora_B])

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(grads, backend="eager", fullgraph=True)(layer, x)
    for got, want in zip(compiled, grads(twin, x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
