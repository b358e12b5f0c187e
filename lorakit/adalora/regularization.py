"""AdaLoRA's orthogonal regularizer (notebook 10, eq. 7): it keeps ``P`` and ``Q`` close to orthonormal.

``R = mean over every SVDLinear's A and B of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F``; the training loss is
``task loss + orth_reg_weight * R`` (PEFT's ``AdaLoraModel.forward``). Both functions build their identity
matrices on the factors' own device and dtype, so they run inside a CUDA training step without a host copy,
and :func:`orthogonal_regularization` has no host sync (``torch.compile(fullgraph=True)`` traces it).
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.adalora.layer import SVDLinear, adalora_layers

__all__ = ["orthogonal_regularization", "orthogonality_errors"]


def _gram_minus_identity(p: torch.Tensor, rows: bool) -> torch.Tensor:
    """``p pᵀ - I`` (``rows=True``, for Q = lora_A) or ``pᵀ p - I`` (for P = lora_B), on ``p``'s device."""
    cov = p @ p.T if rows else p.T @ p
    return cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)


def orthogonal_regularization(model: nn.Module) -> torch.Tensor:
    """``R = mean over all SVDLinear A and B of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F`` (eq. 7), unweighted.

    Exactly PEFT's ``AdaLoraModel.forward`` term before it multiplies by ``orth_reg_weight`` (the
    caller adds ``orth_reg_weight * R`` to the task loss), in the same order of operations. Masked singular
    values still count: the whole ``[r, r]`` Gram matrices are used.
    """
    layers = adalora_layers(model)
    if not layers:
        raise ValueError("model has no SVDLinear layers")
    regu_loss: torch.Tensor | int = 0
    num = 0
    for layer in layers.values():
        for p, rows in ((layer.lora_A, True), (layer.lora_B, False)):
            regu_loss = regu_loss + torch.norm(_gram_minus_identity(p, rows), p="fro")
            num += 1
    return regu_loss / num  # type: ignore[return-value]


def orthogonality_errors(layer: SVDLinear) -> tuple[float, float]:
    """``(||PᵀP - I||_F, ||Q Qᵀ - I||_F)`` of one layer, ``P = lora_B``, ``Q = lora_A``, in fp32 (notebook 10)."""
    if not isinstance(layer, SVDLinear):
        raise TypeError(f"layer must be an SVDLinear, got {type(layer).__name__}")
    with torch.no_grad():
        p_err = torch.linalg.matrix_norm(_gram_minus_identity(layer.lora_B.float(), rows=False))
        q_err = torch.linalg.matrix_norm(_gram_minus_identity(layer.lora_A.float(), rows=True))
        return float(p_err), float(q_err)
