"""Optional Triton kernels for the 4-bit and multi-adapter paths, each equal to a PyTorch reference (notebook 15).

lorakit's layers are pure PyTorch and run anywhere. On a GPU their 4-bit path moves several times the bytes it
needs (decode to an index, gather, scale, cast: each a full pass over memory, then the matmul reads the decoded
weight again). The kernels here fuse those steps, as the bitsandbytes CUDA kernels, Unsloth's and vLLM's Triton
kernels and Punica's BGMV do, one concept a module:

* :mod:`~lorakit.kernels.nf4_dequant`: NF4 dequantize in one pass (bitsandbytes' layout, any blocksize, partial
  last block, double-quantized absmax), equal to :func:`lorakit.nf4.dequantize_nf4` bit for bit;
* :mod:`~lorakit.kernels.nf4_matmul`: the fused ``y = x dequant(W)^T`` and ``dL/dx = g dequant(W)``, decoding
  tiles in registers and never writing the full-precision weight (``QLoRALinear(backend="triton")``);
* :mod:`~lorakit.kernels.bgmv`: batched LoRA shrink/expand with one adapter per row (BGMV) and per segment
  (SGMV), ``lorakit.serving``'s ``backend="triton"``;
* :mod:`~lorakit.kernels.reference`: the PyTorch references and the agreement bound (no Triton needed);
* :mod:`~lorakit.kernels.aot`: compiling every kernel for a GPU architecture on a machine without one.

**Optional.** ``import lorakit`` never imports Triton, and neither does ``import lorakit.kernels``: the kernel
modules import it when first used, and raise an ImportError that says what to install when it is missing
(``pip install 'lorakit[gpu]'``). :func:`available` tells without raising.

**Compiled or interpreted.** Without a CUDA device the kernels run through Triton's interpreter (on CPU tensors,
exact in fp32 and fp16; not bf16): that is how CI tests them. See :mod:`lorakit.kernels._triton` for why the
choice is made once, when the kernels are first imported.
"""

from __future__ import annotations

import importlib

from lorakit.kernels._triton import INSTALL_HINT, INTERPRETER_DTYPES, TRITON_VERSION, available

#: Functions exported lazily: ``{name: module}`` (importing them imports Triton).
_LAZY = {
    "decode_weight": "nf4_dequant", "dequantize_4bit": "nf4_dequant", "dequantize_nf4": "nf4_dequant",
    "nf4_linear": "nf4_matmul", "nf4_matmul_grad_x": "nf4_matmul",
    "bgmv_shrink": "bgmv", "bgmv_expand": "bgmv", "sgmv_shrink": "bgmv", "sgmv_expand": "bgmv",
    "register_serving_backend": "bgmv",
}

__all__ = ["INSTALL_HINT", "INTERPRETER_DTYPES", "TRITON_VERSION", "available", "interpreting", *sorted(_LAZY)]


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (imports Triton; ImportError with the install hint if absent)."""
    from lorakit.kernels._triton import interpreting as _interpreting

    return _interpreting()


def __getattr__(name: str) -> object:
    # ``nf4_matmul`` (the function) lives in the module of the same name: lorakit.kernels.nf4_matmul.nf4_matmul
    if name in _LAZY:
        return getattr(importlib.import_module(f"lorakit.kernels.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lorakit.kernels' has no attribute {name!r}")
