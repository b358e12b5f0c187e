"""Byte accounting of fine-tuning: full fine-tuning vs LoRA (notebook 05).

**Model (eq. 1).** Mixed-precision training with Adam keeps, per *trainable* parameter:
a bf16/fp16 working weight (2 B), its gradient (2 B), an fp32 master copy (4 B) and Adam's two fp32
moments m and v (4 B + 4 B): ``2 + 2 + 4 + 4 + 4 = 16`` bytes. A *frozen* parameter costs only its
2-byte working weight. So full fine-tuning of Psi parameters costs ``16 Psi`` bytes before
activations, and LoRA ``2 Psi + 16 Psi_lora`` with ``Psi_lora`` ~ 0.1-1 % of Psi.

**Activations are not in that budget.** Backpropagation through a frozen layer still needs the
layer's input (to send the gradient to the LoRA bypass and to earlier layers), so LoRA saves almost
no activation memory; gradient checkpointing does. :func:`saved_activation_bytes` measures exactly
what autograd keeps for the backward pass, on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

#: Bytes per element of the dtypes the course talks about.
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "nf4": 0.5}

#: LLaMA-1 shapes (Touvron et al., 2023, Table 2; d_ff = the SwiGLU hidden size of the released
#: checkpoints), used to tabulate 7B/13B/33B/65B. Parameter counts follow from these shapes.
LLAMA_SHAPES: dict[str, dict[str, int]] = {
    "7B": {"d_model": 4096, "n_layers": 32, "d_ff": 11008, "vocab": 32000},
    "13B": {"d_model": 5120, "n_layers": 40, "d_ff": 13824, "vocab": 32000},
    "33B": {"d_model": 6656, "n_layers": 60, "d_ff": 17920, "vocab": 32000},
    "65B": {"d_model": 8192, "n_layers": 80, "d_ff": 22016, "vocab": 32000},
}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainingBytes:
    """Bytes held during training, by kind (activations excluded; see the module docstring)."""

    weights: float
    gradients: float
    master_weights: float
    optimizer_states: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.master_weights + self.optimizer_states

    def as_gib(self) -> dict[str, float]:
        names = ("weights", "gradients", "master_weights", "optimizer_states", "total")
        return {n: getattr(self, n) / 2**30 for n in names}


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def training_bytes(
    n_params: int,
    n_trainable: int,
    weight_bytes: float = 2,
    grad_bytes: float = 2,
    master_bytes: float = 4,
    optimizer_bytes: float = 8,
) -> TrainingBytes:
    """Eq. 1: bytes to train a model of ``n_params`` parameters of which ``n_trainable`` train.

    Defaults are mixed-precision Adam (bf16 weights and grads, fp32 master, fp32 m and v). For LoRA
    pass ``n_params = base + adapter`` and ``n_trainable = adapter``.
    """
    n_params, n_trainable = _count("n_params", n_params), _count("n_trainable", n_trainable)
    if n_trainable > n_params:
        raise ValueError(f"n_trainable ({n_trainable}) cannot exceed n_params ({n_params})")
    return TrainingBytes(
        weights=n_params * weight_bytes,
        gradients=n_trainable * grad_bytes,
        master_weights=n_trainable * master_bytes,
        optimizer_states=n_trainable * optimizer_bytes,
    )


def llama_shape(size: str) -> dict[str, int]:
    if size not in LLAMA_SHAPES:
        raise ValueError(f"size must be one of {sorted(LLAMA_SHAPES)}, got {size!r}")
    return LLAMA_SHAPES[size]


def llama_linear_shapes(size: str) -> dict[str, tuple[int, int]]:
    """``{module: (in_features, out_features)}`` of one LLaMA decoder layer."""
    s = llama_shape(size)
    d, f = s["d_model"], s["d_ff"]
    return {**{m: (d, d) for m in ATTENTION}, "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def llama_parameter_count(size: str) -> int:
    """Parameters of a LLaMA-1 model from its shape (embeddings, untied head, layers, norms)."""
    s = llama_shape(size)
    per_layer = sum(i * o for i, o in llama_linear_shapes(size).values()) + 2 * s["d_model"]
    return 2 * s["vocab"] * s["d_model"] + s["n_layers"] * per_layer + s["d_model"]


def lora_parameter_count(size: str, r: int, targets: Iterable[str] = ATTENTION) -> int:
    """``sum over adapted layers of r (d_in + d_out)`` (notebook 01, eq. 5) for a LLaMA model."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive int, got {r!r}")
    shapes = llama_linear_shapes(size)
    targets = list(targets)
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"targets {unknown} are not LLaMA linear layers {sorted(shapes)}")
    return llama_shape(size)["n_layers"] * sum(r * sum(shapes[t]) for t in targets)


# --------------------------------------------------------------------------- measurement helpers
def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind the given tensors, each storage counted once.

    A view counts its whole storage (a slice keeps all of its base tensor alive).
    """
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
    return sum(seen.values())


def _check_module(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def parameter_bytes(model: nn.Module, trainable: bool | None = None) -> int:
    """Bytes of ``model``'s parameters (all, or only trainable / only frozen ones)."""
    _check_module(model)
    return tensor_bytes(p for p in model.parameters() if trainable is None or p.requires_grad == trainable)


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the ``.grad`` tensors currently held by ``model``'s parameters."""
    _check_module(model)
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (Adam: ``exp_avg``, ``exp_avg_sq``, ``step``)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def saved_activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for the backward pass while ``forward()`` runs, parameters excluded.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage once, so it is exact
    and the same on CPU and CUDA. Gradient checkpointing shows up as fewer saved bytes.
    """
    _check_module(model)
    if not callable(forward):
        raise TypeError(f"forward must be a callable taking no arguments, got {type(forward).__name__}")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr != 0:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(saved.values())


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str = "cuda") -> int:
    """Peak CUDA memory allocated while ``fn()`` runs (raises RuntimeError without CUDA)."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_peak_bytes needs CUDA; on CPU use saved_activation_bytes and tensor_bytes")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
