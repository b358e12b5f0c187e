"""``RankAllocator``: AdaLoRA's importance scores and budgeted masking (notebook 10, eqs. 2-6), as PEFT.

For every adapter entry ``w`` the allocator keeps the sensitivity ``I = |w · ∂L/∂w|`` (first-order Taylor
estimate of the loss change when ``w`` is zeroed), its exponential moving average ``Ī ← β1 Ī + (1-β1) I``
and the uncertainty ``Ū ← β2 Ū + (1-β2) |I - Ī|``; an entry's score is ``s = Ī · Ū``. The score of
singular value ``i`` of a layer is ``s(Λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)`` (:func:`triplet_score`).
Every ``deltaT`` steps the ``init_budget - budget(step)`` lowest triplet scores over *all* layers are masked
(their ``Λ_i`` set to 0), the budget following :func:`~lorakit.adalora.schedule.budget_schedule`.

**Step numbering and call order** (as PEFT's ``AdaLoraModel.update_and_allocate``): call
``update_and_allocate(model, step)`` once per training step, after ``loss.backward()`` and
``optimizer.step()`` and *before* ``optimizer.zero_grad()`` (the sensitivity needs ``.grad``):

* ``step < total_step - tfinal``: update the scores; mask when the schedule says so;
* ``step == total_step - tfinal``: the final allocation at ``target_budget`` (no score update), which
  is then frozen and the scores are cleared;
* ``step > total_step - tfinal``: re-apply the frozen final mask (the optimizer keeps moving the
  masked ``Λ_i`` away from zero, so it is zeroed again every step).

Every mask is also written into the layers (``SVDLinear.rank_mask``), which is what ``save_adapter``
saves as PEFT's ``rank_pattern``. The masking itself never copies a tensor to the host (the threshold
stays a tensor), so it runs on any device without a sync; only the returned rank counts are Python ints.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.adalora.config import AdaLoRAConfig
from lorakit.adalora.layer import SVDLinear, adalora_layers
from lorakit.adalora.schedule import budget_schedule, check_beta, check_int, check_schedule

__all__ = ["RankAllocator", "triplet_score"]

_FACTORS = ("lora_A", "lora_E", "lora_B")


def triplet_score(score_a: torch.Tensor, score_e: torch.Tensor, score_b: torch.Tensor) -> torch.Tensor:
    """Score of each singular value ``i`` from element scores (notebook 10, eq. 5), as PEFT computes it.

    ``s(Λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)`` with ``score_a [r, in]`` (Q = lora_A), ``score_e [r, 1]``
    and ``score_b [out, r]`` (P = lora_B); returns ``[r]``.
    """
    for name, t in (("score_a", score_a), ("score_e", score_e), ("score_b", score_b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating-point tensor, got {t.dim()}-D {t.dtype}")
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


class RankAllocator:
    """Importance scores and the cubic rank budget over a model's :class:`SVDLinear` layers (as PEFT).

    Args:
        model: a model containing SVDLinear layers (e.g. from :func:`~lorakit.adalora.apply_adalora`).
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
        target_r = check_int("target_r", target_r, 0)
        tinit, tfinal, deltaT, total_step = check_schedule(tinit, tfinal, deltaT, total_step)
        self.beta1, self.beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
        self.target_r, self.tinit, self.tfinal, self.deltaT, self.total_step = (
            target_r, tinit, tfinal, deltaT, total_step
        )
        self.names = sorted(layers)
        self.ranks = {name: layers[name].r for name in self.names}
        self.init_budget = sum(self.ranks.values())
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
    def layers_of(self, model: nn.Module) -> dict[str, SVDLinear]:
        """``model``'s SVDLinear layers; ValueError unless they are the ones this allocator was built for."""
        layers = adalora_layers(model)
        if sorted(layers) != self.names or any(layers[n].r != self.ranks[n] for n in self.names):
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
        layers = self.layers_of(model)
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
        if not isinstance(key, str):
            raise TypeError(f"key must be a str such as '<module>.lora_A', got {type(key).__name__}")
        if key not in self.exp_avg_ipt:
            raise ValueError(f"key={key!r} has no scores (scores exist for '<module>.lora_A/E/B' keys after "
                             "update_ipt, until the final allocation)")
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def compute_triplet_scores(self) -> dict[str, torch.Tensor]:
        """``{module: [r] scores}`` from the current element scores (:func:`triplet_score`, eq. 5)."""
        return {
            name: triplet_score(*(self.element_score(f"{name}.{k}") for k in _FACTORS))
            for name in self.names
        }

    def mask_to_budget(self, model: nn.Module, budget: int) -> dict[str, torch.Tensor]:
        """Zero the ``init_budget - budget`` least important ``Λ_i`` over all layers; return the kept mask.

        The threshold is the ``k``-th smallest triplet score (``torch.kthvalue``, as PEFT), kept as a tensor
        (no host sync); every score ``<=`` it is masked, so ties can mask a few more. ``budget >= init_budget``
        masks nothing (PEFT raises there: ``kthvalue`` with ``k = 0``).
        """
        budget = check_int("budget", budget, 0)
        layers = self.layers_of(model)
        if not self.exp_avg_ipt:
            raise ValueError("no importance scores yet: mask_to_budget needs update_ipt (or update_and_allocate) first")
        scores = self.compute_triplet_scores()
        self.triplet_scores = scores
        k = self.init_budget - budget
        pattern = {}
        with torch.no_grad():
            threshold = torch.kthvalue(torch.cat([scores[n] for n in self.names]), k=k).values if k > 0 else None
            for name in self.names:
                if threshold is None:
                    keep = torch.ones_like(scores[name], dtype=torch.bool)
                else:
                    keep = ~(scores[name] <= threshold)
                layers[name].lora_E.masked_fill_(~keep.view(-1, 1), 0.0)
                layers[name].rank_mask = keep.to(layers[name].lora_E.device)
                pattern[name] = keep
        return pattern

    def check_rank_pattern(self, pattern: object) -> dict[str, torch.Tensor]:
        """``pattern`` checked to be ``{module name: bool tensor [r]}`` for exactly this allocator's layers."""
        if not isinstance(pattern, dict):
            raise TypeError(f"pattern must be a dict {{module name: bool tensor [r]}}, got {type(pattern).__name__}")
        if sorted(pattern) != self.names:
            raise ValueError(f"pattern must have one entry per SVDLinear layer {self.names[:4]}..., got "
                             f"{sorted(map(str, pattern))[:4]}...")
        for name, keep in pattern.items():
            if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.dim() != 1:
                raise ValueError(f"pattern[{name!r}] must be a 1-D bool tensor, got {keep!r:.60}")
        return pattern

    def apply_rank_pattern(self, model: nn.Module, pattern: dict[str, torch.Tensor]) -> None:
        """Zero ``Λ_i`` wherever ``pattern`` (``{module: bool [r]}``) is False (PEFT's ``mask_using_rank_pattern``)."""
        layers = self.layers_of(model)
        self.check_rank_pattern(pattern)
        for name in self.names:
            if pattern[name].numel() != layers[name].r:
                raise ValueError(f"pattern[{name!r}] has {pattern[name].numel()} entries, the layer has r="
                                 f"{layers[name].r}")
        with torch.no_grad():
            for name in self.names:
                keep = pattern[name].to(layers[name].lora_E.device)
                layers[name].lora_E.masked_fill_(~keep.view(-1, 1), 0.0)
                layers[name].rank_mask = keep

    def update_and_allocate(self, model: nn.Module, step: int) -> dict[str, int] | None:
        """One allocation step (see the module docstring for the three phases); PEFT's semantics.

        Returns ``{module name: rank kept}`` when a mask was applied at this step, else ``None``.
        Raises ValueError when a gradient is missing (called before ``backward()`` or after
        ``zero_grad()``).
        """
        step = check_int("step", step, 0)
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
