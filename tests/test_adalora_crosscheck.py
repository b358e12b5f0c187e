"""Cross-checks of lorakit.adalora against Hugging Face PEFT's AdaLoRA (peft.tuners.adalora).

* the budget schedule equals PEFT's ``RankAllocator.budget_schedule`` at every step of several configs;
* with identical weights, SVDLinear's forward, gradients, delta weight and merge equal PEFT's SVDLinear;
* orthogonal_regularization equals the term PEFT's ``AdaLoraModel.forward`` adds to the loss;
* driven through identical training steps (same weights, batches, loss incl. orthogonal
  regularization, AdamW), lorakit's sensitivity ``ipt``, ``exp_avg_ipt``, ``exp_avg_unc``, the masked
  ``lora_E`` and every adapter weight equal PEFT's bit for bit, through all three phases.
"""

from __future__ import annotations

import copy

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from builders import tiny_llama  # noqa: E402
from peft import AdaLoraConfig, get_peft_model  # noqa: E402
from peft.tuners.adalora import SVDLinear as PeftSVDLinear  # noqa: E402

from lorakit.adalora import (  # noqa: E402
    AdaLoRAConfig,
    RankAllocator,
    SVDLinear,
    adalora_layers,
    apply_adalora,
    orthogonal_regularization,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*"),
]

PREFIX = "base_model.model."
ADAPTER = "default"

SCHEDULES = [
    # init_r, target_r, tinit, tfinal, deltaT, total_step, targets
    (6, 2, 2, 3, 2, 15, "all-linear"),
    (12, 8, 0, 0, 1, 40, ["q_proj", "v_proj"]),
    (8, 1, 5, 10, 3, 100, "all-linear"),
    (4, 0, 0, 1, 1, 7, ["o_proj"]),
    (5, 5, 1, 2, 2, 9, ["k_proj", "down_proj"]),
    (16, 3, 37, 113, 10, 1000, "all-linear"),
]


def make_pair(cfg: AdaLoRAConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(PEFT AdaLoRA model, lorakit model) on the same tiny Llama, with lorakit's A/E/B copied from PEFT."""
    base = tiny_llama(seed)
    peft_model = get_peft_model(copy.deepcopy(base), AdaLoraConfig(**cfg.to_peft_dict()))
    lk_model = apply_adalora(base, cfg)
    ours = adalora_layers(lk_model)
    theirs = peft_layers(peft_model)
    assert sorted(ours) == sorted(theirs) and ours
    with torch.no_grad():
        for name, layer in ours.items():
            for attr in ("lora_A", "lora_E", "lora_B"):
                getattr(layer, attr).copy_(getattr(theirs[name], attr)[ADAPTER])
    return peft_model, lk_model


def peft_layers(model: torch.nn.Module) -> dict[str, PeftSVDLinear]:
    return {n.removeprefix(PREFIX): m for n, m in model.named_modules() if isinstance(m, PeftSVDLinear)}


def randomize_e(peft_model: torch.nn.Module, lk_model: torch.nn.Module, seed: int = 3) -> None:
    """Give both models the same non-zero singular values (PEFT starts them at zero)."""
    gen = torch.Generator().manual_seed(seed)
    theirs = peft_layers(peft_model)
    with torch.no_grad():
        for name, layer in sorted(adalora_layers(lk_model).items()):
            e = torch.randn(layer.lora_E.shape, generator=gen) * 0.5
            layer.lora_E.copy_(e)
            theirs[name].lora_E[ADAPTER].copy_(e)


def peft_key(key: str) -> str:
    """``"<module>.lora_A"`` (lorakit) -> ``"<module>.lora_A.default"`` (PEFT's allocator sees the inner model)."""
    return f"{key}.{ADAPTER}"


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "-".join(map(str, s[:6])))
def test_budget_schedule_equals_peft_at_every_step(schedule):
    init_r, target_r, tinit, tfinal, delta_t, total, targets = schedule
    cfg = AdaLoRAConfig(init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, deltaT=delta_t,
                        total_step=total, target_modules=targets)
    peft_model = get_peft_model(tiny_llama(0), AdaLoraConfig(**cfg.to_peft_dict()))
    theirs = peft_model.base_model.rankallocator
    ours = RankAllocator.from_config(apply_adalora(tiny_llama(0), cfg))
    assert (ours.init_budget, ours.target_budget) == (theirs.init_bgt, theirs.target_bgt)
    for step in range(total + 5):
        assert ours.budget_schedule(step) == theirs.budget_schedule(step), step
        assert ours.budget(step) == theirs.budget_schedule(step)[0]


def test_svdlinear_forward_gradients_and_merge_equal_peft():
    cfg = AdaLoRAConfig(init_r=5, target_r=2, total_step=10, alpha=3, target_modules="all-linear")
    peft_model, lk_model = make_pair(cfg)
    randomize_e(peft_model, lk_model)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    out_p = peft_model(ids).logits
    out_l = lk_model(ids).logits
    assert torch.equal(out_p, out_l)
    out_p.square().mean().backward()
    out_l.square().mean().backward()
    theirs = peft_layers(peft_model)
    for name, layer in adalora_layers(lk_model).items():
        for attr in ("lora_A", "lora_E", "lora_B"):
            assert torch.equal(getattr(layer, attr).grad, getattr(theirs[name], attr)[ADAPTER].grad), (name, attr)
        assert torch.equal(layer.delta_weight(), theirs[name].get_delta_weight(ADAPTER))
        assert layer.scaling == theirs[name].scaling[ADAPTER]
        assert torch.equal(layer.ranknum, theirs[name].ranknum[ADAPTER].data)
    with torch.no_grad():
        peft_model.base_model.merge_adapter()
        for layer in adalora_layers(lk_model).values():
            layer.merge()
        assert torch.equal(peft_model(ids).logits, lk_model(ids).logits)


def test_peft_init_distribution_matches():
    """PEFT's init: E = 0, A and B ~ N(0, 0.02^2); lorakit's SVDLinear draws the same way."""
    torch.manual_seed(0)
    layer = SVDLinear(torch.nn.Linear(256, 256), r=64)
    assert torch.count_nonzero(layer.lora_E) == 0
    for p in (layer.lora_A, layer.lora_B):
        assert abs(p.std().item() - 0.02) < 0.001 and abs(p.mean().item()) < 0.001


def test_orthogonal_regularization_equals_peft():
    cfg = AdaLoRAConfig(init_r=6, target_r=2, total_step=10, orth_reg_weight=0.7, target_modules="all-linear")
    peft_model, lk_model = make_pair(cfg)
    with torch.no_grad():  # move A and B away from their near-zero init so the term is not ~constant
        gen = torch.Generator().manual_seed(5)
        theirs = peft_layers(peft_model)
        for name, layer in adalora_layers(lk_model).items():
            for attr in ("lora_A", "lora_B"):
                value = torch.randn(getattr(layer, attr).shape, generator=gen) * 0.3
                getattr(layer, attr).copy_(value)
                getattr(theirs[name], attr)[ADAPTER].copy_(value)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # PeftModel without a task_type calls the transformers model directly; the orthogonal term is
        # added by AdaLoraModel.forward (peft_model.base_model), which PeftModelForCausalLM calls.
        with_reg = peft_model.base_model(input_ids=ids, labels=ids).loss
        task = peft_model.base_model.model(input_ids=ids, labels=ids).loss
        peft_reg = (with_reg - task) / 0.7
        ours = orthogonal_regularization(lk_model)
    assert ours.shape == () and ours.item() > 1.0
    torch.testing.assert_close(ours, peft_reg, rtol=1e-6, atol=1e-6)
    # and with the same weights the whole loss agrees to the last bit
    assert torch.equal(lk_model(input_ids=ids, labels=ids).loss + 0.7 * orthogonal_regularization(lk_model), with_reg)


def _train_in_lockstep(cfg: AdaLoRAConfig, steps: int, random_e: bool, lr: float = 5e-3) -> list[int]:
    """Run PEFT and lorakit side by side; assert equal scores, masks and weights after every step."""
    peft_model, lk_model = make_pair(cfg)
    if random_e:
        randomize_e(peft_model, lk_model)
    allocator = RankAllocator.from_config(lk_model)
    theirs_alloc = peft_model.base_model.rankallocator
    opt_p = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    opt_l = torch.optim.AdamW([p for p in lk_model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(7)
    theirs = peft_layers(peft_model)
    masked_steps = []
    peft_model.train()
    lk_model.train()
    for step in range(steps):
        ids = torch.randint(0, 64, (4, 9), generator=gen)
        loss_p = peft_model.base_model(input_ids=ids, labels=ids).loss  # AdaLoraModel adds orth_reg_weight * R
        loss_l = lk_model(input_ids=ids, labels=ids).loss + cfg.orth_reg_weight * orthogonal_regularization(lk_model)
        assert torch.equal(loss_p, loss_l), step
        loss_p.backward()
        loss_l.backward()
        opt_p.step()
        opt_l.step()
        peft_model.base_model.update_and_allocate(step)
        ranks = allocator.update_and_allocate(lk_model, step)
        if ranks is not None:
            masked_steps.append(step)
            assert sum(ranks.values()) == allocator.budget(step)  # no ties in these runs
        opt_p.zero_grad()
        opt_l.zero_grad()
        # scores: identical keys (empty after the final allocation) and identical values
        for ours_d, theirs_d in ((allocator.ipt, theirs_alloc.ipt), (allocator.exp_avg_ipt, theirs_alloc.exp_avg_ipt),
                                 (allocator.exp_avg_unc, theirs_alloc.exp_avg_unc)):
            assert sorted(peft_key(k) for k in ours_d) == sorted(theirs_d), step
            for key, value in ours_d.items():
                assert torch.equal(value, theirs_d[peft_key(key)]), (step, key)
        for name, layer in adalora_layers(lk_model).items():
            for attr in ("lora_E", "lora_A", "lora_B"):
                assert torch.equal(getattr(layer, attr), getattr(theirs[name], attr)[ADAPTER]), (step, name, attr)
        if ranks is not None and peft_model.peft_config[ADAPTER].rank_pattern is not None:
            pattern = peft_model.peft_config[ADAPTER].rank_pattern
            for name, keep in allocator.rank_pattern.items():
                assert keep.tolist() == pattern[f"{name}.lora_E.{ADAPTER}"], (step, name)
    return masked_steps


@pytest.mark.parametrize("random_e", [False, True], ids=["peft-init", "random-E"])
def test_scores_masks_and_weights_equal_peft_through_all_phases(random_e):
    cfg = AdaLoRAConfig(init_r=6, target_r=2, tinit=2, tfinal=3, deltaT=2, total_step=14, alpha=4,
                        orth_reg_weight=0.3, target_modules="all-linear")
    masked = _train_in_lockstep(cfg, steps=cfg.total_step + 3, random_e=random_e)
    end = cfg.total_step - cfg.tfinal
    # masks during the budgeting phase every deltaT steps, the final allocation, then every step after
    budgeting = [s for s in range(cfg.tinit + 1, end) if s % cfg.deltaT == 0]
    assert masked == budgeting + list(range(end, cfg.total_step + 3))


def test_scores_equal_peft_every_step_masking():
    cfg = AdaLoRAConfig(init_r=4, target_r=1, tinit=0, tfinal=0, deltaT=1, total_step=6, alpha=8,
                        target_modules=["q_proj", "v_proj", "down_proj"])
    masked = _train_in_lockstep(cfg, steps=8, random_e=True, lr=1e-2)
    assert masked == list(range(1, 8))
