"""What a fine-tune did to the weights: spectra, effective rank, energy in the top r, subspaces, magnitude/direction.

Notebook 09 measures the low-rank hypothesis of LoRA (Hu et al., 2021, arXiv:2106.09685, section 4.1 and 7)
on a full fine-tune of the course model, and repeats the magnitude/direction analysis of DoRA (Liu et al.,
2024, arXiv:2402.09353, section 3); the capstone applies the same tools to a real pretrained model.

* **Spectrum.** :func:`singular_values` of an update ``ΔW = W_t - W_0`` (float64, descending).
* **How low is "low rank"?** :func:`low_rank_approximation` is the best rank-``r`` approximation (truncated SVD);
  :func:`energy_in_top` is the share of ``||ΔW||_F^2`` that the best rank-``r``
  approximation keeps, ``sum_{i<=r} s_i^2 / sum_i s_i^2`` (Eckart-Young: no rank-``r`` matrix does better);
  :func:`rank_for_energy` inverts it; :func:`effective_rank` is Roy & Vetterli's (2007) entropy rank
  ``exp(-sum p_i log p_i)`` with ``p_i = s_i / sum_j s_j``; :func:`stable_rank` is ``||ΔW||_F^2 / s_1^2``.
* **Same directions?** :func:`subspace_similarity` is Hu et al.'s (2021, section 7.2) normalised overlap
  ``||U_a[:, :i]^T U_b[:, :j]||_F^2 / min(i, j)`` of two matrices' top singular directions (1: one
  subspace contains the other, about ``j / d`` for random directions in ``d`` dimensions).
* **Magnitude vs direction.** :func:`magnitude_direction_changes` gives the DoRA paper's ``(ΔM, ΔD)`` of
  every matrix (:func:`lorakit.dora.magnitude_direction_change`), and :func:`linear_fit` the slope of a scatter.
* :func:`effective_weights` reads ``W_t`` of every adapted layer of a model (LoRA, DoRA, QLoRA, AdaLoRA,
  merged or not) or of its plain linear layers (full fine-tuning), so the same analysis applies to all;
  :class:`CheckpointRecorder` collects them at chosen steps of a training run without changing the loop.

Everything accepts fp32/bf16/fp16 tensors on any device (it computes in float64 on the tensor's device)
and raises ValueError/TypeError naming the bad argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lorakit.dora import magnitude_direction_change
from lorakit.layers import adapter_layers

__all__ = [
    "CheckpointRecorder", "LineFit", "effective_rank", "effective_weights", "energy_in_top", "linear_fit",
    "low_rank_approximation", "magnitude_direction_changes", "rank_for_energy", "singular_values", "stable_rank",
    "subspace_similarity", "weight_deltas",
]


# ------------------------------------------------------------------------------------------- checks


def _float64(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or inf")
    return x


def _matrix(x: object, name: str) -> Tensor:
    m = _float64(x, name)
    if m.dim() != 2 or 0 in m.shape:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(m.shape)}")
    return m


def _spectrum(x: object, name: str) -> Tensor:
    """Singular values of ``x``: a 2-D matrix, or a 1-D tensor of singular values (non-negative, any order)."""
    if isinstance(x, Tensor) and x.dim() == 1:
        s = _float64(x, name)
        if s.numel() == 0 or bool((s < 0).any()):
            raise ValueError(f"{name} as 1-D singular values must be non-empty and >= 0")
        return s.sort(descending=True).values
    if isinstance(x, Tensor) and x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix or 1-D singular values, got shape {tuple(x.shape)}")
    return torch.linalg.svdvals(_matrix(x, name))


def _nonzero(s: Tensor, name: str) -> Tensor:
    if not bool((s > 0).any()):
        raise ValueError(f"{name} is zero: its rank measures are undefined")
    return s


def _rank_arg(r: object, name: str = "r") -> int:
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"{name} must be an int >= 0, got {r!r}")
    return r


# ------------------------------------------------------------------------------------------- spectra


def singular_values(matrix: Tensor) -> Tensor:
    """The singular values of a 2-D ``matrix``, float64, descending, on its device (notebooks 09 §7, 11 §4)."""
    return torch.linalg.svdvals(_matrix(matrix, "matrix"))


def low_rank_approximation(matrix: Tensor, r: int) -> Tensor:
    """The best rank-``r`` approximation of ``matrix`` in Frobenius norm (truncated SVD, Eckart-Young), in the
    matrix's dtype and device. Notebook 09 replaces a full fine-tune's update by it and measures what is left."""
    m = _matrix(matrix, "matrix")
    r = _rank_arg(r)
    U, S, Vh = torch.linalg.svd(m, full_matrices=False)
    return ((U[:, :r] * S[:r]) @ Vh[:r]).to(matrix.dtype)


def energy_in_top(x: Tensor, r: int) -> float:
    """Share of ``||x||_F^2`` in the best rank-``r`` approximation: ``sum_{i<=r} s_i^2 / sum_i s_i^2``.

    ``x`` is a 2-D matrix or its 1-D singular values. ``r = 0`` gives 0; ``r >= rank`` gives 1.
    """
    r = _rank_arg(r)
    s = _nonzero(_spectrum(x, "x"), "x")
    e = s.square()
    return float(e[:r].sum() / e.sum())


def rank_for_energy(x: Tensor, fraction: float) -> int:
    """The smallest ``r`` whose best rank-``r`` approximation keeps at least ``fraction`` of ``||x||_F^2``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    s = _nonzero(_spectrum(x, "x"), "x")
    cumulative = s.square().cumsum(0) / s.square().sum()
    # a tiny tolerance so that fraction=1 is reached despite float64 rounding of the cumulative sum
    return int((cumulative < fraction - 1e-12).sum().item()) + 1


def effective_rank(x: Tensor) -> float:
    """Roy & Vetterli's (2007) effective rank ``exp(H(p))``, ``p_i = s_i / sum_j s_j`` (1 for rank one, n for
    ``n`` equal singular values). ``x`` is a 2-D matrix or its 1-D singular values."""
    s = _nonzero(_spectrum(x, "x"), "x")
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(x: Tensor) -> float:
    """``||x||_F^2 / ||x||_2^2 = sum_i s_i^2 / s_1^2`` (between 1 and the rank). 2-D matrix or 1-D singular values."""
    s = _nonzero(_spectrum(x, "x"), "x")
    return float(s.square().sum() / s[0].square())


def subspace_similarity(a: Tensor, b: Tensor, i: int, j: int) -> float:
    """Hu et al.'s (2021, section 7.2) ``phi(a, b, i, j) = ||U_a[:, :i]^T U_b[:, :j]||_F^2 / min(i, j)`` in [0, 1].

    ``U_a``, ``U_b`` are the left singular vectors of ``a`` and ``b`` (their column spaces; both need the same
    number of rows). For the row spaces, as the paper compares LoRA's ``A`` matrices, pass ``a.T`` and ``b.T``.
    Two random ``j``-dimensional subspaces of ``R^d`` give about ``max(i, j) / d``.
    """
    ma, mb = _matrix(a, "a"), _matrix(b, "b")
    if ma.shape[0] != mb.shape[0]:
        raise ValueError(f"a and b must have the same number of rows, got {tuple(ma.shape)} and {tuple(mb.shape)}")
    if ma.device != mb.device:
        raise ValueError(f"a and b must be on the same device, got {ma.device} and {mb.device}")
    for name, k, m in (("i", i, ma), ("j", j, mb)):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(m.shape):
            raise ValueError(f"{name} must be an int in [1, {min(m.shape)}] (the matrix's rank bound), got {k!r}")
    ua = torch.linalg.svd(ma, full_matrices=False).U[:, :i]
    ub = torch.linalg.svd(mb, full_matrices=False).U[:, :j]
    return float((ua.T @ ub).square().sum() / min(i, j))


# ------------------------------------------------------------------------------------------- models


def _layer_weight(name: str, module: nn.Module) -> Tensor:
    """``W_t`` ([out, in], float32) of one layer: adapted (merged or not) or a plain nn.Linear."""
    with torch.no_grad():
        if hasattr(module, "effective_weight"):  # DoRA: diag(m / ||W0 + sBA||) (W0 + sBA)
            return module.effective_weight().detach().float().clone()
        if hasattr(module, "delta_weight") and hasattr(module, "base"):  # LoRA, QLoRA, AdaLoRA
            if hasattr(module, "dequantized_weight"):  # a 4-bit base (after merge() it holds the merged weight)
                base = module.dequantized_weight(torch.float32)
            else:
                base = module.base.weight.detach().float()
            if getattr(module, "merged", False):
                return base.clone()
            return (base + module.delta_weight().detach().float()).clone()
        if isinstance(module, nn.Linear):
            return module.weight.detach().float().clone()
    raise TypeError(f"{name!r} is a {type(module).__name__}: effective_weights reads nn.Linear and LoRA-family layers")


def effective_weights(model: nn.Module, target_modules: Sequence[str] | str = "all-linear") -> dict[str, Tensor]:
    """``{layer name: W_t}`` (float32 copies, ``[out, in]``) of a model's adapted or target linear layers.

    A model with lorakit adapter layers gives every adapter layer's effective weight: ``W0 + s B A`` (LoRA,
    AdaLoRA's ``W0 + P Lambda Q`` scaled), ``dequant(Q(W0)) + s B A`` (QLoRA), DoRA's ``m V / ||V||``. A
    plain model (full fine-tuning) gives the weights of the ``nn.Linear`` layers that ``target_modules``
    selects (PEFT's rules, ``"all-linear"`` excluding ``lm_head``), i.e. the same layers LoRA would adapt.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    adapted = adapter_layers(model)
    if adapted:
        return {name: _layer_weight(name, module) for name, module in adapted.items()}
    from lorakit.peft.targets import select_target_modules

    names = select_target_modules(model, target_modules)
    return {name: _layer_weight(name, model.get_submodule(name)) for name in names}


def _check_weight_dicts(after: object, before: object) -> None:
    for name, d in (("after", after), ("before", before)):
        if not isinstance(d, Mapping) or not d:
            raise TypeError(f"{name} must be a non-empty dict of weight tensors, got {type(d).__name__}")
    if set(after) != set(before):
        raise ValueError(f"after and before must name the same layers; differ in {sorted(set(after) ^ set(before))}")
    for key in after:
        a, b = after[key], before[key]
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
            raise ValueError(f"layer {key!r}: after and before must be tensors of the same shape")


def weight_deltas(after: Mapping[str, Tensor], before: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{name: after[name] - before[name]}`` in float32: the update ``ΔW`` of every layer."""
    _check_weight_dicts(after, before)
    return {k: after[k].detach().float() - before[k].detach().float().to(after[k].device) for k in after}


def magnitude_direction_changes(
    after: Mapping[str, Tensor], before: Mapping[str, Tensor]
) -> dict[str, tuple[float, float]]:
    """``{name: (ΔM, ΔD)}`` of the DoRA paper (section 3), per output row then averaged, for every layer.

    ``ΔM = mean_i | ||W_t[i]|| - ||W_0[i]|| |`` and ``ΔD = mean_i (1 - cos(W_t[i], W_0[i]))``
    (:func:`lorakit.dora.magnitude_direction_change`).
    """
    _check_weight_dicts(after, before)
    return {k: magnitude_direction_change(after[k], before[k].to(after[k].device)) for k in after}


def _points(v: object, name: str) -> Tensor:
    if not isinstance(v, Tensor):
        try:
            v = torch.as_tensor(v, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a sequence of numbers or a tensor, got {type(v).__name__}") from None
    return _float64(v, name).flatten()


class LineFit(NamedTuple):
    """Least-squares line ``y = slope * x + intercept`` and Pearson's correlation ``r`` of the points."""

    slope: float
    intercept: float
    r: float


def linear_fit(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> LineFit:
    """Least-squares slope, intercept and Pearson ``r`` of ``y`` against ``x`` (float64, at least 2 points).

    Notebook 09 fits ``ΔM`` against ``ΔD`` over layers and checkpoints, as DoRA's paper reads the slope of
    its Figure 2 (negative for full fine-tuning and DoRA, positive for LoRA in the paper).
    """
    xs, ys = (_points(v, name) for v, name in ((x, "x"), (y, "y")))
    if xs.numel() != ys.numel() or xs.numel() < 2:
        raise ValueError(f"x and y need the same number of points, at least 2; got {xs.numel()} and {ys.numel()}")
    dx, dy = xs - xs.mean(), ys.to(xs.device) - ys.mean()
    sxx, syy = float((dx * dx).sum()), float((dy * dy).sum())
    if sxx == 0:
        raise ValueError("x must not be constant (the slope is undefined)")
    slope = float((dx * dy).sum()) / sxx
    r = float((dx * dy).sum()) / math.sqrt(sxx * syy) if syy > 0 else 0.0
    return LineFit(slope, float(ys.mean()) - slope * float(xs.mean()), r)


class CheckpointRecorder:
    """Collect ``read(model)`` after chosen numbers of optimizer steps, without touching the training loop.

    ``with CheckpointRecorder(model, steps=[0, 50, 100]) as rec: train(model, ...)`` then ``rec.checkpoints``
    is ``{step: effective_weights(model)}``. A forward pre-hook counts the model's calls in training mode:
    in a loop that calls the model once per step (``lorakit.training.train``, ``train_adalora``) the k-th
    such call happens after k optimizer steps, so the hook records step k then; evaluation (eval mode) is
    not counted. The state after the last step is recorded on leaving the ``with`` block.
    """

    def __init__(self, model: nn.Module, steps: Iterable[int], read: Callable[[nn.Module], Any] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        steps = sorted(set(steps)) if not isinstance(steps, (str, bytes)) else None
        if not steps or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in steps):
            raise ValueError(f"steps must be a non-empty collection of ints >= 0, got {steps!r}")
        if read is not None and not callable(read):
            raise TypeError(f"read must be callable (model -> anything), got {type(read).__name__}")
        self.model, self.steps, self.read = model, steps, read if read is not None else effective_weights
        self.checkpoints: dict[int, Any] = {}
        self.calls = 0
        self._handle = None

    def _hook(self, module: nn.Module, args: object) -> None:
        if not module.training:
            return
        if self.calls in self.steps and self.calls not in self.checkpoints:
            self.checkpoints[self.calls] = self.read(module)
        self.calls += 1

    def __enter__(self) -> CheckpointRecorder:
        self._handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        if self.calls in self.steps and self.calls not in self.checkpoints:
            self.checkpoints[self.calls] = self.read(self.model)
