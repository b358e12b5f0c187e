"""How far each way of merging a QLoRA layer lands from the unmerged layer (notebook 08, "merge")."""

from __future__ import annotations

import copy
import math

import torch

from lorakit.qlora.layer import QLoRALinear

__all__ = ["merge_error"]


@torch.no_grad()
def merge_error(layer: QLoRALinear, x: torch.Tensor) -> dict[str, float]:
    """How far each way of merging lands from the unmerged QLoRA layer (notebook 08, "merge").

    The reference is the unmerged layer's own output ``y = layer(x)`` (eval mode). For both merges,
    ``"bf16"`` (dense, ``merge(requantize=False, dtype=layer.compute_dtype)``: bf16 by default) and
    ``"requantized"`` (``merge(requantize=True)``), it reports the relative output error ``||y_m - y|| / ||y||``
    (``output_rel_<way>``), the relative error of the stored weight against the exact fp32 merge
    ``W* = dequant(Q(W0)) + s B A`` (``weight_rel_<way>``), and that weight error divided by the norm of
    the update ``s B A`` (``weight_err_over_delta_<way>``: above 1 means the merge error is larger than
    the whole fine-tuning update). ``delta_rel`` is ``||s B A|| / ||W*||``. ``layer`` is not modified.
    """
    if not isinstance(layer, QLoRALinear):
        raise TypeError(f"layer must be a QLoRALinear, got {type(layer).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if x.dim() == 0 or x.shape[-1] != layer.in_features:
        raise ValueError(f"x must have {layer.in_features} features in its last dim, got shape {tuple(x.shape)}")
    if layer.merged:
        raise ValueError("layer is merged; merge_error needs the unmerged layer (call unmerge() first)")
    was_training = layer.training
    layer.eval()
    try:
        y = layer(x).float()
        exact = layer.merged_weight()
        delta_norm = layer.delta_weight().norm().item()
        out: dict[str, float] = {"delta_rel": delta_norm / exact.norm().item()}
        for way, requantize in (("bf16", False), ("requantized", True)):
            twin = copy.deepcopy(layer)
            twin.merge(requantize=requantize, dtype=None if requantize else layer.compute_dtype)
            y_m = twin(x).float()
            w_err = (twin.dequantized_weight(torch.float32) - exact).norm().item()
            out[f"output_rel_{way}"] = ((y_m - y).norm() / y.norm().clamp_min(1e-30)).item()
            out[f"weight_rel_{way}"] = w_err / exact.norm().item()
            out[f"weight_err_over_delta_{way}"] = w_err / delta_norm if delta_norm > 0 else math.inf
    finally:
        layer.train(was_training)
    return out
