"""Bytes moved per weight by each way of running a 4-bit layer, and the time bound they imply (notebook 15, sec. 1).

At decode batch sizes (a few tokens) a layer's product does ``2 M`` FLOPs per weight for ``M`` tokens while it
moves at least the weight's stored bytes, so its arithmetic intensity ``2 M / bytes_per_weight`` FLOP/byte sits far
below any GPU's ratio of peak FLOP/s to memory bandwidth: the time is the bytes over the bandwidth,

    t >= n_weights * bytes_per_weight / bandwidth,                               (notebook 15, eq. 1)

and the only way to go faster is to move fewer bytes. Two ways to count them:

* :func:`count_traffic` *measures* what a PyTorch computation moves: it runs it under a dispatch mode that sees
  every ATen operation and adds up the bytes each one reads and writes (views move nothing; an in-place op reads
  and writes its target, ``copy_`` only writes it; an ``out=`` argument is only written; a gather reads what it
  gathers, at most its whole source, plus the index). That is the DRAM traffic if no operand stays in a cache
  between operations: the right model for tensors larger than the cache, an upper bound otherwise;
* the Triton kernels read each input byte and write each output byte once by construction, so their traffic is a
  closed form: :func:`dequant_bytes_per_weight`, :func:`fused_bytes_per_weight`, :func:`gather_bytes`.

Pure PyTorch; needs no Triton.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "OpTraffic", "Traffic", "bgmv_bytes", "count_traffic", "dequant_bytes_per_weight", "fused_bytes_per_weight",
    "gather_bytes", "time_bound",
]

#: Operations that allocate or describe memory without reading or writing tensor data.
_NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
               "alias", "_local_scalar_dense"}
#: In-place operations that overwrite their target without reading it.
_WRITE_ONLY_TARGET = {"copy_", "fill_", "zero_"}
#: Gathers: they read at most what they write from their source (each gathered row once), plus the index.
_GATHERS = {"index_select", "gather", "embedding", "index"}


@dataclass(frozen=True)
class OpTraffic:
    """One ATen operation: its name and the bytes it read and wrote."""

    name: str
    read: int
    written: int


@dataclass
class Traffic:
    """Every operation of a computation with its bytes; totals in :attr:`read`, :attr:`written`, :attr:`total`."""

    ops: list[OpTraffic] = field(default_factory=list)

    @property
    def read(self) -> int:
        return sum(op.read for op in self.ops)

    @property
    def written(self) -> int:
        return sum(op.written for op in self.ops)

    @property
    def total(self) -> int:
        return self.read + self.written

    def by_op(self) -> dict[str, int]:
        """Total bytes per operation name, in first-seen order."""
        out: dict[str, int] = {}
        for op in self.ops:
            out[op.name] = out.get(op.name, 0) + op.read + op.written
        return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Counter(TorchDispatchMode):
    def __init__(self, traffic: Traffic) -> None:
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.is_view or name in _NO_TRAFFIC:
            return out
        read = written = 0
        mutated = False
        schema = func._schema.arguments
        values = list(args) + [kwargs.get(a.name) for a in schema[len(args):]]
        sources = []
        for arg, value in zip(schema, values, strict=False):
            tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
            size = sum(_nbytes(t) for t in tensors)
            writes = arg.alias_info is not None and arg.alias_info.is_write
            if writes:
                mutated = True
                written += size
                if not arg.kwarg_only and name not in _WRITE_ONLY_TARGET:  # in-place ops read their target
                    read += size
            elif arg.name in ("self", "input", "weight") and name in _GATHERS:
                sources.append(size)
            else:
                read += size
        if not mutated:
            written += sum(_nbytes(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        read += min(sum(sources), written)  # a gather reads each gathered row once, never more than its source
        self.traffic.ops.append(OpTraffic(name, read, written))
        return out


def count_traffic(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple[object, Traffic]:
    """``(fn(*args, **kwargs), Traffic)``: the result and the bytes every ATen operation inside read and wrote.

    Only PyTorch operations are seen: a Triton kernel launched inside is invisible (count it in closed form).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    traffic = Traffic()
    with _Counter(traffic):
        result = fn(*args, **kwargs)
    return result, traffic


def _check_blocksize(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0 or blocksize % 2:
        raise ValueError(f"blocksize must be a positive even int, got {blocksize!r}")
    return blocksize


def dequant_bytes_per_weight(out_bytes: int = 2, blocksize: int = 64, double_quant: bool = True,
                             nested_blocksize: int = 256) -> float:
    """Bytes one weight moves through a one-pass dequantize: read ``0.5`` (its code) + its share of the absmax
    (``4 / blocksize`` in fp32, or ``1 / blocksize + 4 / (blocksize * nested_blocksize)`` double-quantized), and
    write ``out_bytes`` (2 for bf16/fp16, 4 for fp32, 0 when the value never leaves the chip)."""
    _check_blocksize(blocksize)
    if out_bytes < 0:
        raise ValueError(f"out_bytes must be >= 0, got {out_bytes}")
    absmax = 1 / blocksize + 4 / (blocksize * nested_blocksize) if double_quant else 4 / blocksize
    return 0.5 + absmax + out_bytes


def fused_bytes_per_weight(blocksize: int = 64, double_quant: bool = True) -> float:
    """Bytes one weight moves through the fused 4-bit matmul: only its stored bytes (decoded in registers)."""
    return dequant_bytes_per_weight(0, blocksize, double_quant)


def gather_bytes(tokens: int, rank: int, d_in: int, d_out: int, element_size: int = 2) -> int:
    """Bytes gather + bmm spends on its gathered copies: ``T r (d_in + d_out)`` numbers written, then read again."""
    for name, value in (("tokens", tokens), ("rank", rank), ("d_in", d_in), ("d_out", d_out),
                        ("element_size", element_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return 2 * tokens * rank * (d_in + d_out) * element_size


def bgmv_bytes(tokens: int, rank: int, d_in: int, d_out: int, adapters_used: int, element_size: int = 2) -> int:
    """Bytes BGMV moves for a batch: each adapter in use read once (``r (d_in + d_out)`` numbers; rows sharing one
    re-read it from cache), each row's input read and its delta written (``T (d_in + d_out)``), ``v`` twice."""
    for name, value in (("tokens", tokens), ("rank", rank), ("d_in", d_in), ("d_out", d_out),
                        ("adapters_used", adapters_used), ("element_size", element_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return element_size * (adapters_used * rank * (d_in + d_out) + tokens * (d_in + d_out) + 2 * tokens * rank)


def time_bound(n_weights: float, bytes_per_weight: float, bandwidth: float) -> float:
    """Eq. 1: the least time, in seconds, to move ``n_weights * bytes_per_weight`` bytes at ``bandwidth`` bytes/s."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    return n_weights * bytes_per_weight / bandwidth
