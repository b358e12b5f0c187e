"""AdaLoRA: SVD-form adapters whose rank budget is re-allocated by importance (notebook 10).

Zhang et al. (2023), "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", arXiv:2303.10512.
Everything here follows Hugging Face PEFT's implementation (``peft.tuners.adalora``) operation by
operation, and ``tests/test_adalora_crosscheck.py`` checks that the numbers agree.

**The layer** (notebook 10, eq. 1). :class:`SVDLinear` writes the update in SVD *form*::

    h = W0 x + b + scaling / (ranknum + 1e-5) * P (Λ ⊙ (Q x))     P = lora_B [out, r]
                                                                 Λ = lora_E [r, 1]   (diagonal, as a column)
                                                                 Q = lora_A [r, in]

No SVD is ever computed: ``P`` and ``Q`` are ordinary trainable matrices, only *encouraged* to be
orthogonal by :func:`orthogonal_regularization`, and ranks are pruned by zeroing entries of ``Λ``.
As in PEFT: ``lora_E`` starts at zero (so the update starts at zero, like LoRA's ``B = 0``) and
``lora_A``/``lora_B`` ~ N(0, 0.02²); ``scaling = alpha``; ``ranknum = float(r)`` is fixed at the
*initial* rank and never updated, so the effective multiplier is ``alpha / (r + 1e-5)`` whatever rank
the pruning leaves (the ``1e-5`` is PEFT's guard against ``r = 0``, which PEFT allows and lorakit
does not).

**The allocator** (notebook 10, eqs. 2-6). :class:`RankAllocator` keeps, for every adapter entry
``w``, the sensitivity ``I = |w · ∂L/∂w|`` (first-order Taylor estimate of the loss change when
``w`` is zeroed), its exponential moving average ``Ī ← β1 Ī + (1-β1) I`` and the uncertainty
``Ū ← β2 Ū + (1-β2) |I - Ī|``; an entry's score is ``s = Ī · Ū``. The score of singular value ``i``
of a layer is ``s(Λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)``. Every ``deltaT`` steps the ``init_budget -
budget(step)`` lowest triplet scores over *all* layers are masked (their ``Λ_i`` set to 0). The
budget follows PEFT's cubic schedule: ``init_budget`` up to ``tinit``, then
``target + (init - target) (1 - (t - tinit) / (T - tfinal - tinit))³``, then ``target_budget``.

**Step numbering and call order** (as PEFT's ``AdaLoraModel.update_and_allocate``): call
``update_and_allocate(model, step)`` once per training step, after ``loss.backward()`` and
``optimizer.step()`` and *before* ``optimizer.zero_grad()`` (the sensitivity needs ``.grad``):

* ``step < total_step - tfinal``: update the scores; mask when the schedule says so;
* ``step == total_step - tfinal``: the final allocation at ``target_budget`` (no score update), which
  is then frozen and the scores are cleared;
* ``step > total_step - tfinal``: re-apply the frozen final mask (the optimizer keeps moving the
  masked ``Λ_i`` away from zero, so it is zeroed again every step).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.data import Batch, evaluate, lm_loss
from lorakit.layers import AdapterLayer
from lorakit.lora import MergeWarning, validate_lora_args
from lorakit.peft import (
    DEFAULT_TARGETS,
    check_model,
    check_target_modules,
    refuse_adapted_model,
    select_target_modules,
    set_submodule,
)

#: PEFT adds this to ``ranknum`` before dividing (``SVDLinear.forward``): ``scaling / (r + 1e-5)``.
RANKNUM_EPS = 1e-5
#: PEFT's initial standard deviation of ``lora_A`` and ``lora_B`` (``AdaLoraLayer.reset_lora_parameters``).
INIT_STD = 0.02


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _check_beta(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1) (an EMA coefficient), got {value}")
    return float(value)


def _check_schedule(tinit: object, tfinal: object, deltaT: object, total_step: object) -> None:
    _check_int("total_step", total_step, 1)
    _check_int("tinit", tinit, 0)
    _check_int("tfinal", tfinal, 0)
    _check_int("deltaT", deltaT, 1)
    if tinit >= total_step - tfinal:  # type: ignore[operator]
        raise ValueError(
            f"tinit={tinit} must be < total_step - tfinal = {total_step} - {tfinal}: "
            "the schedule leaves no budgeting phase (decrease tinit/tfinal or increase total_step)"
        )


def budget_schedule(
    step: int, init_budget: int, target_budget: int, tinit: int, tfinal: int, deltaT: int, total_step: int
) -> tuple[int, bool]:
    """``(total rank budget, mask at this step?)``: PEFT's ``RankAllocator.budget_schedule`` (notebook 10, eq. 6).

    ``step <= tinit``: ``(init_budget, False)`` (warm-up); ``step > total_step - tfinal``:
    ``(target_budget, True)`` (final phase); in between the cubic decay
    ``int(target + (init - target) * (1 - (step - tinit) / (total_step - tfinal - tinit))**3)``,
    masking when ``step % deltaT == 0``.
    """
    _check_int("step", step, 0)
    _check_int("init_budget", init_budget, 0)
    _check_int("target_budget", target_budget, 0)
    _check_schedule(tinit, tfinal, deltaT, total_step)
    if step <= tinit:
        return init_budget, False
    if step > total_step - tfinal:
        return target_budget, True
    mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    budget = int((init_budget - target_budget) * (mul_coeff**3) + target_budget)
    return budget, step % deltaT == 0


def triplet_score(score_a: torch.Tensor, score_e: torch.Tensor, score_b: torch.Tensor) -> torch.Tensor:
    """Score of each singular value ``i`` from element scores (notebook 10, eq. 5), as PEFT computes it.

    ``s(Λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)`` with ``score_a [r, in]`` (Q = lora_A), ``score_e [r, 1]``
    and ``score_b [out, r]`` (P = lora_B); returns ``[r]``.
    """
    r = score_e.shape[0]
    if score_a.shape[0] != r or score_b.shape[1] != r or score_e.numel() != r:
        raise ValueError(
            f"score shapes do not fit one layer: A {tuple(score_a.shape)}, E {tuple(score_e.shape)}, "
            f"B {tuple(score_b.shape)} (expected [r, in], [r, 1], [out, r])"
        )
    s_q = torch.mean(score_a, dim=1, keepdim=True)  # [r, 1]
    s_p = torch.mean(score_b, dim=0, keepdim=False).view(-1, 1)  # [r, 1]
    s_pq = torch.cat([s_q, s_p], dim=1).sum(dim=1, keepdim=False)
    return score_e.reshape(-1) + s_pq.view(-1)


class SVDLinear(AdapterLayer):
    """A frozen ``nn.Linear`` plus the AdaLoRA bypass ``P Λ Q`` (see the module docstring, eq. 1).

    Args:
        base: the layer to adapt; its parameters are frozen.
        r: the initial rank (PEFT's ``init_r``). alpha: PEFT's ``lora_alpha``; the bypass is multiplied
        by ``alpha / (r + 1e-5)``. dropout: dropout probability on the bypass input.
    Attributes: ``lora_A [r, in]`` (Q), ``lora_E [r, 1]`` (Λ), ``lora_B [out, r]`` (P), ``scaling``
    (``= alpha``, as PEFT), ``ranknum`` (a buffer holding ``float(r)``), ``merged``.
    """

    adapter_kind = "AdaLoRA"

    def __init__(self, base: nn.Linear, r: int = 12, alpha: float = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        validate_lora_args(r, alpha, dropout)
        weight = base.weight
        adapter_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.dropout = r, alpha, float(dropout)
        self.scaling = float(alpha)
        factory = {"device": weight.device, "dtype": adapter_dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_E = nn.Parameter(torch.empty(r, 1, **factory))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, **factory))
        # Not saved (PEFT drops ranknum from the adapter state dict: it is always float(r)).
        self.register_buffer("ranknum", torch.full((1,), float(r), **factory), persistent=False)
        self.merged = False
        self.reset_parameters()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def effective_scaling(self) -> float:
        """The number the bypass is multiplied by: ``alpha / (r + 1e-5)`` (``r`` = the initial rank)."""
        return self.scaling / (self.r + RANKNUM_EPS)

    @property
    def rank(self) -> int:
        """The current rank: the number of non-zero singular values ``lora_E``."""
        return int((self.lora_E != 0).sum())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PEFT's init: ``lora_E = 0``, ``lora_A``, ``lora_B`` ~ N(0, 0.02²) (the update starts at 0)."""
        if self.merged:
            raise RuntimeError("unmerge() before re-initialising a merged layer")
        nn.init.zeros_(self.lora_E)
        nn.init.normal_(self.lora_A, mean=0.0, std=INIT_STD)
        nn.init.normal_(self.lora_B, mean=0.0, std=INIT_STD)

    def delta_weight(self) -> torch.Tensor:
        """``P (Λ ⊙ Q) * scaling / (ranknum + 1e-5)`` as ``[out, in]`` in the base dtype (PEFT's order)."""
        delta = self.lora_B @ (self.lora_A * self.lora_E) * self.scaling / (self.ranknum + RANKNUM_EPS)
        return delta.to(self.base.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W0 + delta_weight()``; idempotent (warns when already merged)."""
        if self.merged:
            warnings.warn("layer is already merged; merge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W0 <- W0 - delta_weight()`` (warns when not merged)."""
        if not self.merged:
            warnings.warn("layer is not merged; unmerge() changed nothing", MergeWarning, stacklevel=2)
            return
        self.base.weight.sub_(self.delta_weight())
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:
            return result
        xa = x.to(self.lora_A.dtype)
        if self.dropout > 0.0:
            xa = F.dropout(xa, p=self.dropout, training=self.training)
        # Same operations in the same order as PEFT's SVDLinear.forward (bit-identical results).
        bypass = (xa @ (self.lora_A * self.lora_E).T @ self.lora_B.T) * self.scaling / (self.ranknum + RANKNUM_EPS)
        return result + bypass.to(result.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha}, dropout={self.dropout}, merged={self.merged}"
        )


def adalora_layers(model: nn.Module) -> dict[str, SVDLinear]:
    """``{module name: SVDLinear}`` for every AdaLoRA layer in ``model`` (named_modules order)."""
    check_model(model)
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SVDLinear)}


# ------------------------------------------------------------------------------------------ allocator


class RankAllocator:
    """Importance scores and the cubic rank budget over a model's :class:`SVDLinear` layers (as PEFT).

    Args:
        model: a model containing SVDLinear layers (e.g. from :func:`apply_adalora`).
        target_r: the average final rank; the final budget is ``target_r * number of layers``.
        tinit: steps of warm-up at the full budget. tfinal: steps of final fine-tuning at a frozen mask.
        deltaT: mask every ``deltaT`` steps during the budgeting phase. total_step: the planned number
        of training steps. beta1, beta2: EMA coefficients of the sensitivity and of the uncertainty.

    The scores live in ``ipt``, ``exp_avg_ipt`` and ``exp_avg_unc``, dicts keyed by
    ``"<module name>.lora_A"`` / ``".lora_E"`` / ``".lora_B"``; ``triplet_scores`` holds the last
    per-singular-value scores and ``rank_pattern`` the last mask (``{module name: bool tensor [r]}``).
    """

    def __init__(
        self,
        model: nn.Module,
        target_r: int,
        tinit: int,
        tfinal: int,
        deltaT: int,
        total_step: int,
        beta1: float = 0.85,
        beta2: float = 0.85,
    ) -> None:
        layers = adalora_layers(model)
        if not layers:
            raise ValueError("model has no SVDLinear layers (use apply_adalora first)")
        _check_int("target_r", target_r, 0)
        _check_schedule(tinit, tfinal, deltaT, total_step)
        self.beta1, self.beta2 = _check_beta("beta1", beta1), _check_beta("beta2", beta2)
        self.target_r, self.tinit, self.tfinal, self.deltaT, self.total_step = (
            target_r, tinit, tfinal, deltaT, total_step
        )
        self.names = sorted(layers)
        self.init_budget = sum(layer.r for layer in layers.values())
        self.target_budget = target_r * len(layers)
        if self.target_budget > self.init_budget:
            raise ValueError(
                f"target_r={target_r} exceeds the layers' initial ranks: target budget {self.target_budget} "
                f"> initial budget {self.init_budget} (AdaLoRA only prunes; target_r must be <= init_r)"
            )
        self.rank_pattern: dict[str, torch.Tensor] | None = None
        self.triplet_scores: dict[str, torch.Tensor] = {}
        self.reset_ipt()

    @classmethod
    def from_config(cls, model: nn.Module, config: AdaLoRAConfig | None = None) -> RankAllocator:
        """An allocator with the schedule of ``config`` (default: the one :func:`apply_adalora` stored)."""
        config = config if config is not None else getattr(model, "adalora_config", None)
        if not isinstance(config, AdaLoRAConfig):
            raise TypeError("config must be an AdaLoRAConfig (or the model must come from apply_adalora)")
        return cls(model, config.target_r, config.tinit, config.tfinal, config.deltaT, config.total_step,
                   config.beta1, config.beta2)

    def reset_ipt(self) -> None:
        """Forget every score (PEFT does this right after the final allocation)."""
        self.ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    # -- the schedule -------------------------------------------------------------------------------
    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """``(budget, mask_now)`` at ``step``, exactly PEFT's ``RankAllocator.budget_schedule``."""
        return budget_schedule(step, self.init_budget, self.target_budget, self.tinit, self.tfinal, self.deltaT,
                               self.total_step)

    def budget(self, step: int) -> int:
        """The total rank budget (sum of the layers' ranks) the schedule allows at ``step``."""
        return self.budget_schedule(step)[0]

    # -- the scores ---------------------------------------------------------------------------------
    def _layers_of(self, model: nn.Module) -> dict[str, SVDLinear]:
        layers = adalora_layers(model)
        if sorted(layers) != self.names:
            raise ValueError(
                "model: its SVDLinear layers differ from the ones this allocator was built for "
                f"(expected {self.names[:4]}..., got {sorted(layers)[:4]}...)"
            )
        return layers

    @staticmethod
    def _params(name: str, layer: SVDLinear) -> list[tuple[str, nn.Parameter]]:
        return [(f"{name}.lora_A", layer.lora_A), (f"{name}.lora_B", layer.lora_B), (f"{name}.lora_E", layer.lora_E)]

    def update_ipt(self, model: nn.Module) -> None:
        """One update of the sensitivity ``I``, its EMA ``Ī`` and the uncertainty ``Ū`` (eqs. 2-4)."""
        layers = self._layers_of(model)
        params = [kp for name in self.names for kp in self._params(name, layers[name])]
        missing = [key for key, p in params if p.grad is None]
        if missing:
            raise ValueError(
                f"model: {missing[0]} has no .grad (and {len(missing) - 1} more): call update_and_allocate "
                "after loss.backward() and optimizer.step(), before optimizer.zero_grad()"
            )
        with torch.no_grad():
            for key, p in params:
                if key not in self.ipt:
                    self.ipt[key] = torch.zeros_like(p)
                    self.exp_avg_ipt[key] = torch.zeros_like(p)
                    self.exp_avg_unc[key] = torch.zeros_like(p)
                self.ipt[key] = (p * p.grad).abs().detach()
                self.exp_avg_ipt[key] = self.beta1 * self.exp_avg_ipt[key] + (1 - self.beta1) * self.ipt[key]
                deviation = (self.ipt[key] - self.exp_avg_ipt[key]).abs()
                self.exp_avg_unc[key] = self.beta2 * self.exp_avg_unc[key] + (1 - self.beta2) * deviation

    def element_score(self, key: str) -> torch.Tensor:
        """``s = Ī · Ū`` for every entry of the parameter ``key`` (eq. 4)."""
        if key not in self.exp_avg_ipt:
            raise KeyError(f"no scores for {key!r} yet (scores exist after update_ipt, until the final allocation)")
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def compute_triplet_scores(self) -> dict[str, torch.Tensor]:
        """``{module: [r] scores}`` from the current element scores (:func:`triplet_score`, eq. 5)."""
        return {
            name: triplet_score(*(self.element_score(f"{name}.{k}") for k in ("lora_A", "lora_E", "lora_B")))
            for name in self.names
        }

    def mask_to_budget(self, model: nn.Module, budget: int) -> dict[str, torch.Tensor]:
        """Zero the ``init_budget - budget`` least important ``Λ_i`` over all layers; return the kept mask.

        The threshold is the ``k``-th smallest triplet score (``torch.kthvalue``, as PEFT); every score
        ``<=`` it is masked, so ties can mask a few more. ``budget >= init_budget`` masks nothing (PEFT
        raises there: ``kthvalue`` with ``k = 0``).
        """
        layers = self._layers_of(model)
        scores = self.compute_triplet_scores()
        self.triplet_scores = scores
        k = self.init_budget - budget
        if k <= 0:
            threshold = -math.inf
        else:
            threshold = torch.kthvalue(torch.cat([scores[n] for n in self.names]), k=k)[0].item()
        pattern = {}
        with torch.no_grad():
            for name in self.names:
                drop = scores[name].view(-1, 1) <= threshold
                layers[name].lora_E.masked_fill_(drop, 0.0)
                pattern[name] = ~drop.view(-1)
        return pattern

    def apply_rank_pattern(self, model: nn.Module, pattern: dict[str, torch.Tensor]) -> None:
        """Zero ``Λ_i`` wherever ``pattern`` (``{module: bool [r]}``) is False (PEFT's ``mask_using_rank_pattern``)."""
        layers = self._layers_of(model)
        with torch.no_grad():
            for name in self.names:
                keep = pattern[name].to(layers[name].lora_E.device).view(-1, 1)
                layers[name].lora_E.masked_fill_(~keep, 0.0)

    def update_and_allocate(self, model: nn.Module, step: int) -> dict[str, int] | None:
        """One allocation step (see the module docstring for the three phases); PEFT's semantics.

        Returns ``{module name: rank kept}`` when a mask was applied at this step, else ``None``.
        Raises ValueError when a gradient is missing (called before ``backward()`` or after
        ``zero_grad()``).
        """
        _check_int("step", step, 0)
        end = self.total_step - self.tfinal
        if step < end:
            self.update_ipt(model)
            budget, mask_now = self.budget_schedule(step)
            if not mask_now:
                return None
            self.rank_pattern = self.mask_to_budget(model, budget)
        elif step == end:
            if not self.exp_avg_ipt:
                raise RuntimeError(
                    f"the final allocation at step {end} needs scores: call update_and_allocate at every step "
                    "from the start of training"
                )
            self.rank_pattern = self.mask_to_budget(model, self.budget(step))
            self.reset_ipt()
        else:
            if self.rank_pattern is None:
                raise RuntimeError(
                    f"step {step} is in the final phase (> total_step - tfinal = {end}) but no allocation has "
                    f"been made yet: call update_and_allocate at every step, including step {end}"
                )
            self.apply_rank_pattern(model, self.rank_pattern)
        return {name: int(keep.sum()) for name, keep in self.rank_pattern.items()}


def orthogonal_regularization(model: nn.Module) -> torch.Tensor:
    """``R = mean over all SVDLinear A and B of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F`` (eq. 7), unweighted.

    Exactly PEFT's ``AdaLoraModel.forward`` term before it multiplies by ``orth_reg_weight`` (the
    caller adds ``orth_reg_weight * R`` to the task loss). Masked singular values still count: the
    whole ``[r, r]`` Gram matrices are used.
    """
    layers = adalora_layers(model)
    if not layers:
        raise ValueError("model has no SVDLinear layers")
    regu_loss: torch.Tensor | int = 0
    num = 0
    for layer in layers.values():
        for p, is_a in ((layer.lora_A, True), (layer.lora_B, False)):
            cov = p @ p.T if is_a else p.T @ p
            eye = torch.eye(*cov.size(), out=torch.empty_like(cov))
            regu_loss = regu_loss + torch.norm(cov - eye, p="fro")
            num += 1
    return regu_loss / num  # type: ignore[return-value]


def orthogonality_errors(layer: SVDLinear) -> tuple[float, float]:
    """``(||PᵀP - I||_F, ||Q Qᵀ - I||_F)`` of one layer, ``P = lora_B``, ``Q = lora_A`` (notebook 10)."""
    if not isinstance(layer, SVDLinear):
        raise TypeError(f"layer must be an SVDLinear, got {type(layer).__name__}")
    with torch.no_grad():
        p, q = layer.lora_B.float(), layer.lora_A.float()
        eye = torch.eye(layer.r)
        return float(torch.linalg.matrix_norm(p.T @ p - eye)), float(torch.linalg.matrix_norm(q @ q.T - eye))


# ------------------------------------------------------------------------------------ model-level API


@dataclass
class AdaLoRAConfig:
    """AdaLoRA hyper-parameters with PEFT's ``AdaLoraConfig`` defaults (``alpha`` = PEFT's ``lora_alpha``).

    ``total_step`` is required (PEFT refuses ``None`` too). ``target_modules`` works as in
    :class:`~lorakit.peft.LoRAConfig`. :meth:`to_peft_dict` gives the matching PEFT config.
    """

    init_r: int = 12
    target_r: int = 8
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    alpha: float = 8
    dropout: float = 0.0
    target_modules: Sequence[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        if self.total_step is None:
            raise ValueError("total_step is required: AdaLoRA's budget schedule needs the planned number of steps")
        _check_int("init_r", self.init_r, 1)
        validate_lora_args(self.init_r, self.alpha, self.dropout)
        _check_int("target_r", self.target_r, 0)
        if self.target_r > self.init_r:
            raise ValueError(f"target_r={self.target_r} must be <= init_r={self.init_r} (AdaLoRA only prunes)")
        _check_schedule(self.tinit, self.tfinal, self.deltaT, self.total_step)
        _check_beta("beta1", self.beta1)
        _check_beta("beta2", self.beta2)
        w = self.orth_reg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise TypeError(f"orth_reg_weight must be a number >= 0, got {type(w).__name__} {w!r}")
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"orth_reg_weight must be a finite number >= 0, got {w}")
        self.target_modules = check_target_modules(self.target_modules)

    def to_peft_dict(self) -> dict:
        """Keyword arguments for ``peft.AdaLoraConfig(**d)`` (and its ``adapter_config.json`` keys)."""
        return {
            "peft_type": "ADALORA",
            "task_type": None,
            "init_r": self.init_r,
            "target_r": self.target_r,
            "tinit": self.tinit,
            "tfinal": self.tfinal,
            "deltaT": self.deltaT,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "orth_reg_weight": self.orth_reg_weight,
            "total_step": self.total_step,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "init_lora_weights": True,
            "bias": "none",
            "fan_in_fan_out": False,
        }


def apply_adalora(model: nn.Module, config: AdaLoRAConfig) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by :class:`SVDLinear` (rank ``init_r``), in place.

    Every other parameter is frozen. The config is stored as ``model.adalora_config`` (for
    :meth:`RankAllocator.from_config`). Raises ValueError, leaving the model unchanged, when nothing
    matches or the model already has adapters.
    """
    check_model(model)
    if not isinstance(config, AdaLoRAConfig):
        raise TypeError(f"config must be an AdaLoRAConfig, got {type(config).__name__}")
    refuse_adapted_model(model, "apply_adalora")
    names = select_target_modules(model, config.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        set_submodule(model, name, SVDLinear(model.get_submodule(name), config.init_r, config.alpha, config.dropout))
    model.adalora_config = config  # type: ignore[assignment]
    return model


def rank_report(model: nn.Module) -> dict[str, int]:
    """``{module name: rank}``, the rank being the number of non-zero ``lora_E`` entries."""
    layers = adalora_layers(model)
    if not layers:
        raise ValueError("model has no SVDLinear layers")
    return {name: layer.rank for name, layer in layers.items()}


def effective_parameters(model: nn.Module) -> int:
    """Adapter parameters left after pruning: ``sum rank * (in + out + 1)`` (what PEFT saves, resized)."""
    return sum(layer.rank * (layer.in_features + layer.out_features + 1) for layer in adalora_layers(model).values())


def _split_name(name: str) -> tuple[str, str]:
    """``"layers.0.self_attn.q_proj" -> ("layers.0", "q_proj")``: row = up to the last numeric part."""
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
    row = ".".join(parts[: digits[-1] + 1]) if digits else ".".join(parts[:-1])
    return row or "(root)", parts[-1]


def rank_grid(report: dict[str, int]) -> tuple[list[str], list[str], list[list[int | None]]]:
    """``(rows, columns, grid)`` of a :func:`rank_report`: one row per layer, one column per matrix name.

    ``grid[i][j]`` is the rank of matrix ``columns[j]`` in layer ``rows[i]`` (None where absent).
    """
    if not isinstance(report, dict) or not report:
        raise ValueError("report must be a non-empty {module name: rank} dict (from rank_report)")
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], int] = {}
    for name, rank in report.items():
        row, col = _split_name(name)
        rows += [row] if row not in rows else []
        cols += [col] if col not in cols else []
        cells[row, col] = rank
    return rows, cols, [[cells.get((r, c)) for c in cols] for r in rows]


def format_rank_table(report: dict[str, int]) -> str:
    """A plain-text table of a :func:`rank_report` (layers x matrices, with row totals)."""
    rows, cols, grid = rank_grid(report)
    width = max(len(c) for c in cols) + 1
    first = max(len(r) for r in rows + ["layer"]) + 1
    lines = ["layer".ljust(first) + "".join(c.rjust(width) for c in cols) + "total".rjust(7)]
    for row, vals in zip(rows, grid, strict=True):
        cells = "".join(("-" if v is None else str(v)).rjust(width) for v in vals)
        lines.append(row.ljust(first) + cells + str(sum(v for v in vals if v is not None)).rjust(7))
    col_totals = [sum(row[j] for row in grid if row[j] is not None) for j in range(len(cols))]
    totals = "".join(str(t).rjust(width) for t in col_totals)
    lines.append("total".ljust(first) + totals + str(sum(col_totals)).rjust(7))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- training


@dataclass
class AdaLoRAHistory:
    """What :func:`train_adalora` measured, per step: task loss, budget, total rank, orthogonality errors
    (mean over layers of ``||PᵀP - I||_F`` and ``||QQᵀ - I||_F``), and periodic held-out metrics."""

    loss: list[float] = field(default_factory=list)
    budget: list[int] = field(default_factory=list)
    total_rank: list[int] = field(default_factory=list)
    orth_p: list[float] = field(default_factory=list)
    orth_q: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.eval_metrics[-1] if self.eval_metrics else {}


def train_adalora(
    model: nn.Module,
    data: Batch,
    steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    orth_reg_weight: float | None = None,
    allocator: RankAllocator | None = None,
    eval_data: Batch | None = None,
    eval_every: int = 50,
) -> AdaLoRAHistory:
    """AdamW training with AdaLoRA pruning: the loop of :func:`lorakit.training.train` plus two lines.

    Each step: ``loss = task loss + orth_reg_weight * orthogonal_regularization(model)``; ``backward``;
    ``optimizer.step()``; ``allocator.update_and_allocate(model, step)`` with ``step = 1..steps`` (the
    number of optimizer steps taken, like a trainer's global step); ``zero_grad``. Minibatches are drawn
    exactly as :func:`~lorakit.training.train` draws them, so curves compare with LoRA runs.
    ``steps`` and ``orth_reg_weight`` default to the model's ``adalora_config`` (``total_step`` steps);
    the allocator defaults to ``RankAllocator.from_config(model)``.
    """
    config = getattr(model, "adalora_config", None)
    allocator = allocator if allocator is not None else RankAllocator.from_config(model)
    if not isinstance(allocator, RankAllocator):
        raise TypeError(f"allocator must be a RankAllocator, got {type(allocator).__name__}")
    if steps is None:
        steps = allocator.total_step
    _check_int("steps", steps, 1)
    if steps < allocator.total_step - allocator.tfinal:
        raise ValueError(
            f"steps={steps} ends before the final allocation at step total_step - tfinal = "
            f"{allocator.total_step - allocator.tfinal}: the budget would never reach its target"
        )
    if orth_reg_weight is None:
        orth_reg_weight = config.orth_reg_weight if isinstance(config, AdaLoRAConfig) else 0.5
    if isinstance(orth_reg_weight, bool) or not isinstance(orth_reg_weight, (int, float)) or orth_reg_weight < 0:
        raise ValueError(f"orth_reg_weight must be a number >= 0, got {orth_reg_weight!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not isinstance(data, Batch):
        raise TypeError(f"data must be a lorakit.data.Batch, got {type(data).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    layers = list(adalora_layers(model).values())
    history = AdaLoRAHistory()
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        ids, tgt = data.input_ids[idx].to(device), data.targets[idx].to(device)
        loss = lm_loss(model(ids), tgt)
        total = loss + orth_reg_weight * orthogonal_regularization(model) if orth_reg_weight > 0 else loss
        total.backward()
        optimizer.step()
        allocator.update_and_allocate(model, step)
        optimizer.zero_grad(set_to_none=True)
        history.loss.append(loss.detach().item())
        history.budget.append(allocator.budget(step))
        history.total_rank.append(sum(layer.rank for layer in layers))
        errs = [orthogonality_errors(layer) for layer in layers]
        history.orth_p.append(sum(e[0] for e in errs) / len(errs))
        history.orth_q.append(sum(e[1] for e in errs) / len(errs))
        if eval_data is not None and (step % eval_every == 0 or step == steps):
            history.eval_steps.append(step)
            history.eval_metrics.append(evaluate(model, eval_data))
    model.eval()
    return history


__all__ = [
    "INIT_STD", "RANKNUM_EPS", "AdaLoRAConfig", "AdaLoRAHistory", "RankAllocator", "SVDLinear", "adalora_layers",
    "apply_adalora", "budget_schedule", "effective_parameters", "format_rank_table", "orthogonal_regularization",
    "orthogonality_errors", "rank_grid", "rank_report", "train_adalora", "triplet_score",
]
