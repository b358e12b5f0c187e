"""Checks for the "Check yourself" exercises of notebook 07 (blockwise and double quantization).

Every expected answer is computed here with :mod:`lorakit.nf4` and :mod:`lorakit.memory` from the arguments,
never hard-coded.
"""

from __future__ import annotations

from lorakit.check import grade_choice, grade_value
from lorakit.memory import LLAMA_SHAPES, llama_linear_shapes, llama_parameter_count
from lorakit.nf4 import BLOCKSIZES, storage_bytes

__all__ = ["q1", "q2", "q3", "q4", "q5", "bits_per_param", "llama_base_bytes", "SCHEMES"]

#: How the base weights are stored: everything bf16, or the linear layers in NF4 (with or without double quant).
SCHEMES = ("bf16", "nf4", "nf4+dq")


def bits_per_param(blocksize: int = 64, double_quant: bool = False) -> float:
    """Notebook 07, eq. (3)/(5): bits a parameter for a large tensor (4 bits + the absmax overhead).

    Measured from :func:`lorakit.nf4.storage_bytes` on ``blocksize * 256 * 64`` elements, a size where every
    block and every second-level block is full (the 4-byte mean of double quantization adds < 1e-4 bit).
    """
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")
    n = blocksize * 256 * 64
    return 8 * storage_bytes(n, blocksize, double_quant=double_quant) / n


def llama_base_bytes(size: str, scheme: str) -> int:
    """Notebook 07, section 5: bytes of LLaMA-``size``'s base weights under ``scheme`` (see :data:`SCHEMES`).

    ``"bf16"``: every parameter 2 bytes. ``"nf4"`` / ``"nf4+dq"``: each of the 7 linear weights of every decoder
    layer is quantized on its own (blocksize 64, as bitsandbytes' ``Linear4bit`` does), while the token
    embedding, the RMSNorm gains and ``lm_head`` stay bf16, as in QLoRA / ``BitsAndBytesConfig`` defaults.
    """
    if size not in LLAMA_SHAPES:
        raise ValueError(f"size must be one of {sorted(LLAMA_SHAPES)}, got {size!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    total = llama_parameter_count(size)
    if scheme == "bf16":
        return 2 * total
    shapes = llama_linear_shapes(size).values()
    n_layers = LLAMA_SHAPES[size]["n_layers"]
    linear = n_layers * sum(i * o for i, o in shapes)
    quantized = n_layers * sum(storage_bytes(i * o, 64, double_quant=scheme == "nf4+dq") for i, o in shapes)
    return quantized + 2 * (total - linear)


def q1(answer: object, blocksize: int = 128) -> bool:
    """07.1: bits a parameter of NF4 with ``blocksize`` and fp32 absmax (no double quantization)."""
    return grade_value(
        "07.1", answer, bits_per_param(blocksize), rtol=1e-3,
        hint="4 bits a code plus one 32-bit absmax shared by the block",
    )


def q2(answer: object) -> bool:
    """07.2: the absmax overhead in bits a parameter after double quantization (blocksize 64, second level 256)."""
    return grade_value(
        "07.2", answer, bits_per_param(64, double_quant=True) - 4, rtol=1e-3,
        hint="an 8-bit code per block of 64 weights, plus one fp32 scale per 256 blocks",
    )


def q3(answer: object, size: str = "65B") -> bool:
    """07.3: GB (10**9 bytes) of LLaMA-``size`` base weights with NF4 + double quant on the linear layers."""
    return grade_value(
        "07.3", answer, llama_base_bytes(size, "nf4+dq") / 1e9, rtol=1e-2,
        hint="linear layers at ~4.127 bits a parameter, embeddings + lm_head + norms at 16 bits; GB = 1e9 bytes",
    )


def q4(answer: object) -> bool:
    """07.4: what one large outlier does to per-tensor absmax 4-bit quantization."""
    return grade_choice(
        "07.4",
        answer,
        "c",
        {
            "a": "no: the outlier itself is stored well (it IS the absmax, level +-1); the damage is to the others",
            "b": "no: nothing overflows, every value is divided by the absmax so it lands in [-1, 1]",
            "c": "the absmax becomes the outlier, so every other value is divided by a huge number and lands in the "
            "one or two bins around 0: most weights are rounded to 0.0. Blocks confine this to the outlier's block",
            "d": "no: the error grows a lot (section 1 measured it); NF4's normal-shaped levels cannot absorb an "
            "absmax tens of sigma wide",
        },
    )


def q5(answer: object) -> bool:
    """07.5: lorakit and bitsandbytes disagree on a (64, 32) tensor's dequantization, agree on the flat shape."""
    return grade_choice(
        "07.5",
        answer,
        "a",
        {
            "a": "the stored bytes and absmax are identical, and the flat result equals code[idx] * absmax[block] "
            "computed by hand: the 2-D dequantize kernel picks the wrong absmax for blocks that straddle rows",
            "b": "no: the quantized bytes and absmax of both libraries are equal (torch.equal), so the quantizer "
            "is not the culprit",
            "c": "no: both use float32 and the flat call agrees exactly, which rounding differences could not explain",
            "d": "no: bitsandbytes' blockwise format is shape-independent (blocks run over the flattened tensor); "
            "a (64, 32) tensor is valid input, and its own flat call gets it right",
        },
    )
