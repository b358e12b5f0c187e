"""Serving many LoRA adapters on one base model in one batch (notebook 12).

Every system that serves adapters at scale (Punica, S-LoRA, vLLM, LoRAX) computes, for batch row ``i`` with
adapter ``a(i)``, ``y_i = x_i W^T + s_{a(i)} (x_i A_{a(i)}^T) B_{a(i)}^T``: one shared base product and a gathered
low-rank add-on. The subpackage shows its parts, one concept a module:

* :mod:`~lorakit.serving.kernels`: the shrink/expand kernels, gather + bmm (BGMV) and segmented (SGMV), plus the
  naive masked loop; the tensor contract and ``register_backend`` for other implementations (Triton);
* :mod:`~lorakit.serving.layout`: how N adapters of mixed ranks sit in memory: padded to ``max_rank`` (vLLM) or
  grouped by rank;
* :mod:`~lorakit.serving.bank`: ``AdapterBank``, N PEFT-format adapters for one base, with add/remove at run time,
  the checks that refuse an adapter for another base, and bytes per adapter;
* :mod:`~lorakit.serving.plan`: one batch's metadata, computed once per forward;
* :mod:`~lorakit.serving.model`: ``MultiLoRAModel``, whose forward takes ``adapter_ids`` (one per row, -1 = base);
* :mod:`~lorakit.serving.routing`: ``Router``, requests to adapters by task or tenant;
* :mod:`~lorakit.serving.capacity`: adapter bytes at LLaMA scale and how many fit;
* :mod:`~lorakit.serving.synthetic`: random adapters and uniform/Zipf request mixes (benchmark, tests).
"""

from lorakit.serving.bank import AdapterBank, AdapterInfo
from lorakit.serving.capacity import adapters_that_fit, llama_adapter_bytes, llama_base_bytes
from lorakit.serving.kernels import KERNELS, Segments, bgmv, masked, register_backend, segments_from_indices, sgmv
from lorakit.serving.layout import LAYOUTS
from lorakit.serving.model import BatchedLoRALinear, MultiLoRAModel
from lorakit.serving.plan import BatchPlan
from lorakit.serving.routing import Router
from lorakit.serving.synthetic import popularity, random_adapter, request_mix

__all__ = [
    "KERNELS", "LAYOUTS", "AdapterBank", "AdapterInfo", "BatchPlan", "BatchedLoRALinear", "MultiLoRAModel", "Router",
    "Segments", "adapters_that_fit", "bgmv", "llama_adapter_bytes", "llama_base_bytes", "masked", "register_backend",
    "popularity", "random_adapter", "request_mix", "segments_from_indices", "sgmv",
]
