"""The numbers behind the numeric questions, computed by lorakit (never typed into the bank).

A numeric question names one function of :data:`COMPUTE` and its arguments, e.g.
``compute: {fn: lora_layer_params, args: {d_in: 4096, d_out: 4096, r: 8}}``; :func:`compute_answer` calls it.
Each function is a one-line call into the module that the linked notebook derives (memory accounting:
notebook 05; NF4 storage: notebook 07; scaling: notebook 03; ...), so when lorakit changes, the bank's
answers change with it, and ``tests/test_question_bank.py`` recomputes every one independently.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lorakit.adalora.schedule import budget_schedule
from lorakit.lora import lora_scaling
from lorakit.memory import ATTENTION, MLP, llama_parameter_count, lora_parameter_count, training_bytes
from lorakit.nf4 import int4_code, nf4_code, storage_bytes
from lorakit.nf4.codes import NF4_OFFSET, NF4_OFFSET_EXACT
from lorakit.serving.capacity import adapters_that_fit, llama_adapter_bytes
from lorakit.widgets.parameters import lora_parameter_summary

__all__ = ["COMPUTE", "TARGETS", "compute_answer"]

#: Target-module shorthands a question may use instead of a list of names.
TARGETS: dict[str, tuple[str, ...]] = {
    "attention": ATTENTION, "qv": ("q_proj", "v_proj"), "q": ("q_proj",), "all-linear": ATTENTION + MLP,
}
GIB = 2**30
GB = 1e9
#: Elements of a tensor large enough that per-tensor constants vanish in bits per parameter (64 * 256 * 1024).
_BIG = 64 * 256 * 1024


def _targets(targets: str | list[str]) -> tuple[str, ...]:
    return TARGETS[targets] if isinstance(targets, str) else tuple(targets)


def lora_layer_params(d_in: int, d_out: int, r: int) -> int:
    """``r (d_in + d_out)``: trainable numbers of one LoRA layer (notebook 01, eq. 5)."""
    return int(lora_parameter_summary(d_in, d_out, r)["lora"])


def full_layer_params(d_in: int, d_out: int) -> int:
    """``d_in d_out``: the numbers of the weight that full fine-tuning trains."""
    return int(lora_parameter_summary(d_in, d_out, 1)["full"])


def lora_compression(d_in: int, d_out: int, r: int) -> float:
    """How many times fewer trainable numbers than the full ``d_out x d_in`` update."""
    return float(lora_parameter_summary(d_in, d_out, r)["savings"])


def lora_extra_flops_percent(d_in: int, d_out: int, r: int) -> float:
    """Extra forward FLOPs of the unmerged bypass, in % of the base matmul: ``100 r (d_in + d_out) / (d_in d_out)``."""
    return 100.0 * float(lora_parameter_summary(d_in, d_out, r)["fraction"])


def llama_params(size: str) -> int:
    """Parameters of LLaMA-1 ``size`` from its published shapes (notebook 05)."""
    return llama_parameter_count(size)


def llama_lora_params(size: str, r: int, targets: str | list[str] = "attention") -> int:
    """LoRA parameters on ``targets`` of every LLaMA layer: ``n_layers * sum r (d_in + d_out)``."""
    return lora_parameter_count(size, r, _targets(targets))


def llama_lora_percent(size: str, r: int, targets: str | list[str] = "attention") -> float:
    """LoRA parameters as a percentage of the base model's."""
    return 100.0 * llama_lora_params(size, r, targets) / llama_parameter_count(size)


def bytes_per_param(trainable: bool = True) -> float:
    """Training bytes of one parameter under mixed-precision Adam: 16 if it trains, 2 if frozen (notebook 05, eq. 1)."""
    return float(training_bytes(1, 1 if trainable else 0).total)


def lora_saved_bytes_per_param() -> float:
    """Bytes a frozen parameter no longer needs: gradient + fp32 master + Adam m and v (16 - 2)."""
    return bytes_per_param(True) - bytes_per_param(False)


def training_gib(size: str, method: str = "full", r: int = 16, targets: str | list[str] = "attention") -> float:
    """GiB of weights + gradients + master + optimizer (no activations) to fine-tune LLaMA ``size``.

    ``method``: ``"full"`` (everything trains), ``"lora"`` (bf16 base frozen) or ``"qlora"`` (NF4 + double
    quantization base at its measured bits per parameter, notebook 07).
    """
    n, n_lora = llama_parameter_count(size), lora_parameter_count(size, r, _targets(targets))
    if method == "full":
        return training_bytes(n, n).total / GIB
    if method == "lora":
        return training_bytes(n + n_lora, n_lora).total / GIB
    if method == "qlora":
        adapter = training_bytes(n_lora, n_lora).total
        return (adapter + n * nf4_bits_per_param(64, True) / 8) / GIB
    raise ValueError(f"method must be 'full', 'lora' or 'qlora', got {method!r}")


def scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """``alpha / r`` or rsLoRA's ``alpha / sqrt(r)`` (notebook 03, eq. 1)."""
    return lora_scaling(r, alpha, rslora=rslora)


def rslora_over_lora(r: int) -> float:
    """How many times larger rsLoRA's scaling is than LoRA's at the same alpha: ``sqrt(r)``."""
    return lora_scaling(r, 1.0, rslora=True) / lora_scaling(r, 1.0)


def rslora_equivalent_alpha(r: int, alpha: float) -> float:
    """The rsLoRA alpha with the same scaling as LoRA's ``alpha`` at rank ``r``."""
    return lora_scaling(r, alpha) / lora_scaling(r, 1.0, rslora=True)


def nf4_bits_per_param(blocksize: int = 64, double_quant: bool = False) -> float:
    """Bits per weight NF4 stores (codes + absmax constants) on a large tensor (notebook 07, eq. 3-5)."""
    return 8 * storage_bytes(_BIG, blocksize, double_quant) / _BIG


def nf4_overhead_bits(blocksize: int = 64, double_quant: bool = False) -> float:
    """Bits per weight spent on the quantization constants: bits per parameter minus the 4 code bits."""
    return nf4_bits_per_param(blocksize, double_quant) - 4


def dq_saving_bits(blocksize: int = 64) -> float:
    """Bits per weight that double quantization saves at ``blocksize``."""
    return nf4_bits_per_param(blocksize, False) - nf4_bits_per_param(blocksize, True)


def dq_saving_gb(n_billion: float = 65, blocksize: int = 64) -> float:
    """GB (10^9 bytes) double quantization saves on a model of ``n_billion`` billion weights."""
    return dq_saving_bits(blocksize) * n_billion * 1e9 / 8 / GB


def base_weight_gib(size: str, fmt: str = "bf16") -> float:
    """GiB of LLaMA ``size``'s weights in ``bf16``, ``fp32``, ``nf4`` (blocks of 64) or ``nf4-dq``."""
    n = llama_parameter_count(size)
    bits = {"fp32": 32.0, "bf16": 16.0, "nf4": nf4_bits_per_param(64, False), "nf4-dq": nf4_bits_per_param(64, True)}
    if fmt not in bits:
        raise ValueError(f"fmt must be one of {sorted(bits)}, got {fmt!r}")
    return n * bits[fmt] / 8 / GIB


def nf4_level(index: int) -> float:
    """The value of NF4 code ``index`` (0..15, ascending levels; notebook 06)."""
    return float(nf4_code()[index])


def nf4_smallest_positive() -> float:
    """The NF4 level closest to zero on the positive side."""
    code = nf4_code()
    return float(code[code > 0].min())


def nf4_level_count(sign: str = "positive") -> int:
    """How many NF4 levels are ``positive``, ``negative`` or ``zero``."""
    code = nf4_code()
    masks = {"positive": code > 0, "negative": code < 0, "zero": code == 0}
    return int(masks[sign].sum())


def nf4_offset(exact: bool = False) -> float:
    """The top probability of the NF4 construction: bitsandbytes' 0.9677083, or the exact 929/960."""
    return NF4_OFFSET_EXACT if exact else NF4_OFFSET


def int4_distinct_levels() -> int:
    """Distinct values of symmetric absmax INT4 (one of 16 codes duplicates zero)."""
    return int(int4_code().unique().numel())


def adapter_mib(size: str = "7B", r: int = 8, targets: str | list[str] = "qv", bytes_per_number: float = 2) -> float:
    """MiB of one LoRA adapter file on LLaMA ``size`` (notebook 12)."""
    return llama_adapter_bytes(size, r, _targets(targets), bytes_per_number) / 2**20


def adapters_fit(memory_gib: float, size: str = "7B", r: int = 8, targets: str | list[str] = "qv") -> int:
    """Adapters that fit next to one bf16 LLaMA ``size`` base in ``memory_gib`` (notebook 12)."""
    base = llama_parameter_count(size) * 2
    return adapters_that_fit(memory_gib * GIB, base, llama_adapter_bytes(size, r, _targets(targets)))


def adalora_budget(step: int, init_budget: int, target_budget: int, tinit: int, tfinal: int, total_step: int,
                   deltaT: int = 1) -> int:
    """AdaLoRA's total rank budget at ``step`` (cubic schedule, notebook 10, eq. 6)."""
    return budget_schedule(step, init_budget, target_budget, tinit, tfinal, deltaT, total_step)[0]


def dora_params(d_in: int, d_out: int, r: int) -> int:
    """Trainable numbers of one DoRA layer: LoRA's ``r (d_in + d_out)`` plus one magnitude per output row."""
    return lora_layer_params(d_in, d_out, r) + d_out


def first_step_grad_norms(d_in: int = 16, d_out: int = 12, r: int = 4) -> tuple[float, float]:
    """``(||dL/dA||, ||dL/dB||)`` at LoRA's initialisation on a random layer and loss (notebook 01, sec. 5)."""
    import torch
    from torch import nn

    from lorakit.lora import LoRALinear

    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(d_in, d_out)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d_out, d_in, generator=gen))
    layer = LoRALinear(base, r=r, alpha=2 * r)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(r, d_in, generator=gen))
    layer(torch.randn(5, d_in, generator=gen)).pow(2).sum().backward()
    return float(layer.lora_A.grad.norm()), float(layer.lora_B.grad.norm())


def first_step_grad_A_norm() -> float:
    """``||dL/dA||`` at the first step: exactly 0 because ``B = 0``."""
    return first_step_grad_norms()[0]


def log2(x: float) -> float:
    """``log2(x)``: e.g. the bits needed for ``x`` codes."""
    return math.log2(x)


#: Every function a numeric question may name.
COMPUTE: dict[str, Callable[..., float]] = {f.__name__: f for f in (
    lora_layer_params, full_layer_params, lora_compression, lora_extra_flops_percent, llama_params,
    llama_lora_params, llama_lora_percent, bytes_per_param, lora_saved_bytes_per_param, training_gib, scaling,
    rslora_over_lora, rslora_equivalent_alpha, nf4_bits_per_param, nf4_overhead_bits, dq_saving_bits, dq_saving_gb,
    base_weight_gib, nf4_level, nf4_smallest_positive, nf4_level_count, nf4_offset, int4_distinct_levels,
    adapter_mib, adapters_fit, adalora_budget, dora_params, first_step_grad_A_norm, log2,
)}


def compute_answer(fn: str, args: dict | None = None) -> float:
    """Call ``COMPUTE[fn](**args)``; ValueError naming the function when it is unknown or its arguments are wrong."""
    if fn not in COMPUTE:
        raise ValueError(f"compute function {fn!r} is unknown; choose one of {sorted(COMPUTE)}")
    try:
        value = COMPUTE[fn](**(args or {}))
    except TypeError as err:
        raise ValueError(f"compute function {fn!r} rejected its args {args!r}: {err}") from err
    return float(value)
