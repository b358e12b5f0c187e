"""GaLore: Adam whose state lives in a low-rank projection of the gradient (notebook 13, section 7;
Zhao et al. 2024, arXiv:2403.03507).

GaLore trains *all* the weights (no adapter), but keeps Adam's moments small: every ``T`` steps it takes
the top-``r`` singular vectors of the current gradient ``G [m, n]`` as a projection ``P`` and runs Adam on
the projected gradient (eq. 15)::

    m >= n:  R = G P^T  [m, r],  P = V_r^T [r, n]     |   m < n:  R = P^T G  [r, n],  P = U_r [m, r]
    M <- b1 M + (1 - b1) R,   V <- b2 V + (1 - b2) R ⊙ R,   N = M_hat / (sqrt(V_hat) + eps)
    W <- W - lr * alpha * (N P  or  P N)              (projected back; alpha = ``scale``)

so a weight's optimizer state is ``2 r max(m, n) + r min(m, n)`` numbers (two moments and ``P``) instead of
Adam's ``2 m n`` (eq. 16). The moments are *not* reset when ``P`` is refreshed (as in the paper's code). The
weight update at any step is confined to an ``r``-dimensional subspace, but the subspace moves, so over
training the total update can have full rank, unlike LoRA's ``B A``.

:class:`GaLoreAdamW` follows the reference implementation (the ``galore-torch`` package, v1.0) step for
step, so the two agree to rounding (``tests/test_family_galore.py``): parameter groups carrying a ``rank``
are projected (``update_proj_gap`` = T, ``scale`` = alpha, ``proj_type="std"``), other groups get plain
AdamW with the same formulas (bias correction folded into the step size; decoupled weight decay applied
after the update, ``W <- W - lr * wd * W``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence, Set

import torch
from torch import nn

from lorakit.family.config import check_positive_int, check_real
from lorakit.peft import check_model, select_target_modules

__all__ = ["GaLoreAdamW", "adam_state_numbers", "galore_param_groups", "galore_state_numbers"]


def galore_state_numbers(shape: tuple[int, int], rank: int) -> int:
    """Numbers GaLore keeps for one ``[m, n]`` weight: ``2 r max(m, n) + r min(m, n)`` (eq. 16)."""
    m, n = (check_positive_int("shape", v) for v in shape)
    rank = check_positive_int("rank", rank)
    if rank > min(m, n):
        raise ValueError(f"rank={rank} exceeds min(m, n)={min(m, n)}")
    return 2 * rank * max(m, n) + rank * min(m, n)


def adam_state_numbers(shape: tuple[int, ...]) -> int:
    """Numbers Adam keeps for one weight: two moments of its size."""
    return 2 * math.prod(check_positive_int("shape", v) for v in shape)


def _projection(grad: torch.Tensor, rank: int, side: str) -> torch.Tensor:
    """Top-``rank`` singular vectors of ``grad`` (SVD in fp32, returned in ``grad``'s dtype): ``V_r^T`` or ``U_r``.

    Cloned into a tensor of its own: a slice would keep the whole SVD factor alive (galore-torch 1.0 keeps
    its slice, i.e. the full ``[min(m, n), n]`` factor, for fp32 weights).
    """
    U, _, Vh = torch.linalg.svd(grad.float(), full_matrices=False)
    return (Vh[:rank, :] if side == "right" else U[:, :rank]).to(grad.dtype).clone()


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore projection for the groups that carry ``rank`` (module docstring).

    Per-group keys: ``rank`` (projected groups only; every parameter there must be 2-D with ``rank <=
    min(m, n)``), ``update_proj_gap`` (T, default 200), ``scale`` (alpha, default 0.25, the paper's),
    ``proj_type`` (``"std"`` only). Defaults as galore-torch's AdamW: ``eps=1e-6``, no weight decay.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True) -> None:
        lr = check_real("lr", lr, 0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        betas = (check_real("betas[0]", betas[0], 0.0), check_real("betas[1]", betas[1], 0.0))
        if betas[0] >= 1 or betas[1] >= 1:
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        eps = check_real("eps", eps, 0.0)
        weight_decay = check_real("weight_decay", weight_decay, 0.0)
        if not isinstance(correct_bias, bool):
            raise TypeError(f"correct_bias must be a bool, got {correct_bias!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "correct_bias": correct_bias})
        for group in self.param_groups:
            if "rank" not in group:
                continue
            group["rank"] = check_positive_int("rank", group["rank"])
            group["update_proj_gap"] = check_positive_int("update_proj_gap", group.setdefault("update_proj_gap", 200))
            group["scale"] = check_real("scale", group.setdefault("scale", 0.25), 0.0, low_open=True)
            if group.setdefault("proj_type", "std") != "std":
                raise ValueError(f"proj_type must be 'std', got {group['proj_type']!r}")
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"GaLore projects 2-D weights only; a parameter of shape {tuple(p.shape)} is in "
                                     "a group with a rank (put it in a plain group)")
                if group["rank"] > min(p.shape):
                    raise ValueError(f"rank={group['rank']} exceeds min(m, n)={min(p.shape)} of a {tuple(p.shape)} "
                                     "weight")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            projected = "rank" in group
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("GaLoreAdamW does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                if projected:
                    side = "right" if grad.shape[0] >= grad.shape[1] else "left"
                    if "projection" not in state or state["step"] % group["update_proj_gap"] == 0:
                        state["projection"] = _projection(grad, group["rank"], side)
                    P = state["projection"]
                    grad = grad @ P.t() if side == "right" else P.t() @ grad
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size = step_size * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
                update = exp_avg / denom
                if projected:
                    update = (update @ P if side == "right" else P @ update) * group["scale"]
                p.add_(update, alpha=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss


def galore_param_groups(model: nn.Module, rank: int, update_proj_gap: int = 200, scale: float = 0.25,
                        target_modules: Sequence[str] | Set[str] | str = "all-linear") -> list[dict]:
    """Two groups over ``model``'s trainable parameters: the targeted Linear weights (projected, ``rank``) and the rest.

    A targeted weight with ``min(m, n) <= rank`` is not worth projecting and goes to the plain group.
    """
    check_model(model)
    rank = check_positive_int("rank", rank)
    update_proj_gap = check_positive_int("update_proj_gap", update_proj_gap)
    scale = check_real("scale", scale, 0.0, low_open=True)
    names = select_target_modules(model, target_modules)
    projected_ids = set()
    for name in names:
        w = model.get_submodule(name).weight
        if w.requires_grad and min(w.shape) > rank:
            projected_ids.add(id(w))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("model has no trainable parameters")
    projected = [p for p in trainable if id(p) in projected_ids]
    rest = [p for p in trainable if id(p) not in projected_ids]
    groups = [{"params": rest}] if rest else []
    if projected:
        groups.append({"params": projected, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
                       "proj_type": "std"})
    return groups
