"""QLoRA: a frozen 4-bit base plus a trainable LoRA bypass (notebook 08; Dettmers et al., 2023, arXiv:2305.14314).

QLoRA stores the frozen base weight ``W0 [out, in]`` in 4 bits (NF4, blockwise absmax, optionally double
quantization of the absmax constants; notebooks 06-07 and :mod:`lorakit.nf4`) and trains only the LoRA
factors ``A [r, in]``, ``B [out, r]``, kept in a wider dtype (fp32 by default). For an input ``x`` (eq. 1)::

    h = dequant(Q(W0)) x + b + s * B (A x),    s = alpha / r  (or alpha / sqrt(r) with rsLoRA)

where ``dequant`` rebuilds ``W0`` in the compute dtype (bf16 by default; the autocast dtype under
``torch.autocast``) right before the matmul: ``W[i] = absmax[block(i)] * code[q_i]``. The 4-bit codes never
receive a gradient; the backward dequantizes again for ``dL/dx = W^T g`` (eq. 2) instead of keeping the
dequantized copy alive. The subpackage shows its parts, one concept a module:

* :mod:`~lorakit.qlora.matmul`: the 4-bit matmul with its hand-written backward (autocast, sync-free);
* :mod:`~lorakit.qlora.nf4_linear`: ``NF4Linear``, the pure-PyTorch 4-bit base (``backend="lorakit"``), and
  its storage (packed codes as an FSDP-shardable parameter, bitsandbytes' state-dict keys);
* :mod:`~lorakit.qlora.bnb`: the ``"bitsandbytes"`` backend (``bitsandbytes.nn.Linear4bit``, the layer
  PEFT and transformers use; same bytes, same keys);
* :mod:`~lorakit.qlora.base`: the frozen base built per backend (4-bit, or the dense layer a merge leaves);
* :mod:`~lorakit.qlora.layer`: ``QLoRALinear`` (eq. 1, merging, QPiSSA);
* :mod:`~lorakit.qlora.merge`: ``merge_error``, what each way of merging costs;
* :mod:`~lorakit.qlora.model`: ``apply_qlora``, ``merge_qlora`` / ``merge_and_unload`` (atomic);
* :mod:`~lorakit.qlora.serialization`: saving and loading whole 4-bit models, checked before any write, and
  ``bitsandbytes_config`` so transformers' ``from_pretrained`` reloads a merged 4-bit model;
* :mod:`~lorakit.qlora.checks`: the argument checks.
"""

from lorakit.qlora.bnb import bnb_linear4bit_from_linear
from lorakit.qlora.checks import ADAPTER_DTYPES, BACKENDS, COMPUTE_DTYPES, QUANT_STORAGES
from lorakit.qlora.layer import QLoRALinear
from lorakit.qlora.merge import merge_error
from lorakit.qlora.model import apply_qlora, merge_and_unload, merge_qlora, qlora_layers
from lorakit.qlora.nf4_linear import NF4Linear
from lorakit.qlora.serialization import bitsandbytes_config, check_quantized_load, install_load_check

__all__ = [
    "ADAPTER_DTYPES", "BACKENDS", "COMPUTE_DTYPES", "QUANT_STORAGES", "NF4Linear", "QLoRALinear", "apply_qlora",
    "bitsandbytes_config", "bnb_linear4bit_from_linear", "check_quantized_load", "install_load_check",
    "merge_and_unload", "merge_error", "merge_qlora", "qlora_layers",
]
