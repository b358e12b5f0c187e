"""How many bytes a quantized tensor stores, measured and in closed form (notebook 07, eq. 3-5)."""

from __future__ import annotations

from lorakit.nf4.containers import QuantizedTensor
from lorakit.nf4.validation import check_blocksize, n_blocks

__all__ = ["bits_per_parameter", "storage_bytes"]


def bits_per_parameter(q: QuantizedTensor) -> float:
    """``8 * q.nbytes / q.numel``, from the bytes ``q`` actually stores (notebook 07).

    NF4 with blocksize 64: 4 bits of code + 32/64 = 0.5 bit of fp32 absmax = exactly 4.5 (when 64 divides
    the size). With double quantization the 0.5 becomes 8/64 = 0.125 (one 8-bit code a block)
    + 32/(64*256) = 0.00195 (one fp32 scale per 256 blocks) + 32/n (the fp32 mean, once per tensor):
    4.12695... + 32/n, the "0.127 bit per parameter" overhead of the QLoRA paper.
    """
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    return 8 * q.nbytes / q.numel


def storage_bytes(numel: int, blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256) -> int:
    """Closed form of ``quantize_nf4(w, blocksize, double_quant).nbytes`` for a tensor of ``numel`` elements.

    ``ceil(n/2)`` packed bytes + ``4 * ceil(n/blocksize)`` (fp32 absmax), or with double quantization
    ``ceil(n/blocksize)`` one-byte codes + ``4 * ceil(n_blocks/dq_blocksize)`` fp32 scales + 4 (the mean).
    """
    if isinstance(numel, bool) or not isinstance(numel, int):
        raise TypeError(f"numel must be an int, got {type(numel).__name__}")
    if numel <= 0:
        raise ValueError(f"numel must be positive, got {numel}")
    check_blocksize(blocksize)
    check_blocksize(dq_blocksize, "dq_blocksize")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
    blocks = n_blocks(numel, blocksize)
    if double_quant:
        return (numel + 1) // 2 + blocks + 4 * n_blocks(blocks, dq_blocksize) + 4
    return (numel + 1) // 2 + 4 * blocks
