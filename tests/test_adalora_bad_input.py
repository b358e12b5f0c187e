"""Bad input to every public function of lorakit.adalora (issue 9, item 4; notebook 10's API).

Each case asserts a clear TypeError/ValueError naming the argument (or, for a legal edge case, the right
result), and where a model is involved that the model is exactly as it was (``tests/snapshot.py``):
parameters, buffers, ``requires_grad`` flags, module structure and stored configs. A failing
``apply_adalora`` half-way through its targets is undone as well.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adalora_builders import ALL7, QV, config, randomize_lorakit, train_lorakit
from builders import tiny_lm
from safetensors.torch import load_file, save_file
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit.adalora import (
    AdaLoRAConfig,
    RankAllocator,
    SVDLinear,
    adalora_layers,
    apply_adalora,
    budget_schedule,
    effective_parameters,
    format_rank_table,
    load_adalora_adapter,
    orthogonal_regularization,
    orthogonality_errors,
    rank_grid,
    rank_report,
    train_adalora,
    triplet_score,
)
from lorakit.data import caesar_task

NAN, INF = float("nan"), float("inf")


def adalora_tiny(targets=QV, **kw) -> nn.Module:
    model = apply_adalora(tiny_lm(), config(targets, **kw))
    randomize_lorakit(model)
    return model


def with_grads(model: nn.Module) -> nn.Module:
    model(torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))).square().mean().backward()
    return model


def int8_linear(in_f: int = 4, out_f: int = 4) -> nn.Linear:
    layer = nn.Linear(in_f, out_f)
    layer.weight = nn.Parameter(torch.zeros(out_f, in_f, dtype=torch.int8), requires_grad=False)
    return layer


# ------------------------------------------------------------------------------------------ SVDLinear


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"base": int8_linear()}, ValueError, r"base.weight has dtype torch.int8"),
        ({"base": nn.Embedding(4, 4)}, TypeError, "base must be an nn.Linear"),
        ({"base": None}, TypeError, "base must be an nn.Linear"),
        ({"r": "4"}, TypeError, "r must be an int"),
        ({"r": 1.5}, TypeError, "r must be an int"),
        ({"alpha": "8"}, TypeError, "alpha must be a number"),
        ({"alpha": INF}, ValueError, "alpha must be a finite number"),
        ({"alpha": True}, TypeError, "alpha must be a number"),
        ({"dropout": -0.1}, ValueError, "dropout must be in"),
        ({"dropout": "0.1"}, TypeError, "dropout must be a number"),
        ({"dropout": NAN}, ValueError, "dropout must be in"),
    ],
)
def test_svdlinear_rejects(kwargs, error, match):
    base = kwargs.pop("base", None) if "base" in kwargs else nn.Linear(4, 4)
    flags = [p.requires_grad for p in base.parameters()] if isinstance(base, nn.Module) else None
    with pytest.raises(error, match=match):
        SVDLinear(base, **{"r": 2, "alpha": 8, "dropout": 0.0, **kwargs})
    if flags is not None:  # the caller's layer was not frozen by the failing constructor
        assert [p.requires_grad for p in base.parameters()] == flags


def test_svdlinear_accepts_numpy_rank_and_an_adalora_layer_is_not_a_base():
    layer = SVDLinear(nn.Linear(4, 3), r=np.int64(2))
    assert layer.r == 2 and type(layer.r) is int and layer.lora_A.shape == (2, 4)
    with pytest.raises(TypeError, match="base must be an nn.Linear, got SVDLinear"):
        SVDLinear(layer, r=2)


# ------------------------------------------------------------------------------------------ schedule


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": -1}, ValueError, "step must be an int >= 0"),
        ({"step": 1.5}, TypeError, "step must be an int"),
        ({"step": True}, TypeError, "step must be an int"),
        ({"init_budget": -1}, ValueError, "init_budget"),
        ({"init_budget": "8"}, TypeError, "init_budget"),
        ({"target_budget": 20}, ValueError, r"target_budget=20 must be <= init_budget=10"),
        ({"target_budget": -2}, ValueError, "target_budget"),
        ({"tinit": -1}, ValueError, "tinit"),
        ({"tfinal": 2.5}, TypeError, "tfinal"),
        ({"deltaT": 0}, ValueError, "deltaT"),
        ({"total_step": 0}, ValueError, "total_step"),
        ({"tinit": 6, "tfinal": 4}, ValueError, r"tinit=6 must be < total_step - tfinal"),
    ],
)
def test_budget_schedule_rejects(kwargs, error, match):
    args = {"step": 3, "init_budget": 10, "target_budget": 4, "tinit": 1, "tfinal": 2, "deltaT": 1,
            "total_step": 10, **kwargs}
    with pytest.raises(error, match=match):
        budget_schedule(**args)


def test_budget_schedule_accepts_numpy_integers():
    want = budget_schedule(3, 10, 4, 1, 2, 1, 10)
    assert budget_schedule(np.int64(3), np.int32(10), np.int64(4), 1, 2, 1, np.int64(10)) == want


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([[1.0]], torch.ones(1, 1), torch.ones(2, 1)), TypeError, "score_a must be a torch.Tensor"),
        ((torch.ones(1, 3), torch.ones(1), torch.ones(2, 1)), ValueError, "score_e must be a 2-D"),
        ((torch.ones(1, 3), torch.ones(1, 1), torch.ones(2, 1, dtype=torch.long)), ValueError, "score_b must be"),
        ((torch.ones(1, 3, 1), torch.ones(1, 1), torch.ones(2, 1)), ValueError, "score_a must be a 2-D"),
        ((torch.ones(2, 3), torch.ones(1, 1), torch.ones(2, 1)), ValueError, "score shapes do not fit one layer"),
    ],
)
def test_triplet_score_rejects(args, error, match):
    with pytest.raises(error, match=match):
        triplet_score(*args)


# ------------------------------------------------------------------------------------------ allocator


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beta2": "0.8"}, TypeError, "beta2"),
        ({"beta1": NAN}, ValueError, "beta1"),
        ({"deltaT": 1.0}, TypeError, "deltaT"),
        ({"tfinal": True}, TypeError, "tfinal"),
        ({"target_r": "1"}, TypeError, "target_r"),
        ({"total_step": -3}, ValueError, "total_step"),
    ],
)
def test_allocator_constructor_rejects_and_leaves_the_model(kwargs, error, match):
    model = adalora_tiny()
    before = snapshot(model)
    args = {"target_r": 1, "tinit": 0, "tfinal": 0, "deltaT": 1, "total_step": 8, **kwargs}
    with pytest.raises(error, match=match):
        RankAllocator(model, **args)
    assert_unchanged(model, before)


def test_allocator_accepts_numpy_integers():
    alloc = RankAllocator(adalora_tiny(), np.int64(1), np.int64(0), 0, np.int32(1), np.int64(8))
    assert (alloc.target_r, alloc.total_step) == (1, 8) and type(alloc.total_step) is int


def _pattern_for(model: nn.Module, value) -> dict:
    return {n: value(layer) for n, layer in adalora_layers(model).items()}


ALLOCATOR_CALLS = {
    "update-step-str": (lambda a, m: a.update_and_allocate(m, "3"), TypeError, "step must be an int"),
    "update-step-float": (lambda a, m: a.update_and_allocate(m, 2.5), TypeError, "step must be an int"),
    "update-not-a-model": (lambda a, m: a.update_and_allocate("model", 1), TypeError, "model must be an nn.Module"),
    "update-plain-model": (lambda a, m: a.update_and_allocate(tiny_lm(), 1), ValueError, "model: its SVDLinear"),
    "update-other-rank": (lambda a, m: a.update_and_allocate(with_grads(adalora_tiny(init_r=5)), 1), ValueError,
                          "model: its SVDLinear layers differ"),
    "mask-negative-budget": (lambda a, m: a.mask_to_budget(m, -1), ValueError, "budget must be an int >= 0"),
    "mask-float-budget": (lambda a, m: a.mask_to_budget(m, 2.5), TypeError, "budget must be an int"),
    "mask-before-scores": (lambda a, m: a.mask_to_budget(m, 3), ValueError, "no importance scores yet"),
    "pattern-not-a-dict": (lambda a, m: a.apply_rank_pattern(m, [True]), TypeError, "pattern must be a dict"),
    "pattern-missing-layers": (lambda a, m: a.apply_rank_pattern(m, {}), ValueError, "one entry per SVDLinear"),
    "pattern-float-values": (lambda a, m: a.apply_rank_pattern(m, _pattern_for(m, lambda x: torch.ones(x.r))),
                             ValueError, r"pattern\[.*\] must be a 1-D bool tensor"),
    "pattern-list-values": (lambda a, m: a.apply_rank_pattern(m, _pattern_for(m, lambda x: [True] * x.r)),
                            ValueError, "must be a 1-D bool tensor"),
    "pattern-wrong-length": (lambda a, m: a.apply_rank_pattern(m, _pattern_for(
        m, lambda x: torch.ones(x.r + 1, dtype=torch.bool))), ValueError, r"has 5 entries, the layer has r=4"),
    "score-key-int": (lambda a, m: a.element_score(3), TypeError, "key must be a str"),
    "score-key-unknown": (lambda a, m: a.element_score("layers.0.nope.lora_A"), ValueError, "key=.* has no scores"),
    "from-config-str": (lambda a, m: RankAllocator.from_config(m, "config"), TypeError, "config must be an AdaLoRA"),
    "from-config-lora": (lambda a, m: RankAllocator.from_config(m, lorakit.LoRAConfig()), TypeError,
                         "config must be an AdaLoRAConfig"),
}


@pytest.mark.parametrize("case", list(ALLOCATOR_CALLS))
def test_allocator_methods_reject_and_leave_the_model(case):
    call, error, match = ALLOCATOR_CALLS[case]
    model = with_grads(adalora_tiny())
    alloc = RankAllocator.from_config(model)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        call(alloc, model)
    assert_unchanged(model, before)
    assert alloc.rank_pattern is None and alloc.exp_avg_ipt == {}


# ------------------------------------------------------------------------------------------ regularization


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: orthogonal_regularization("model"), TypeError, "model must be an nn.Module"),
        (lambda: orthogonal_regularization(nn.Linear(3, 3)), ValueError, "no SVDLinear layers"),
        (lambda: orthogonality_errors("layer"), TypeError, "layer must be an SVDLinear"),
        (lambda: orthogonality_errors(adalora_tiny()), TypeError, "layer must be an SVDLinear, got TinyLM"),
    ],
)
def test_regularization_rejects(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"init_r": True}, TypeError, "init_r must be an int"),
        ({"target_r": "2"}, TypeError, "target_r must be an int"),
        ({"tinit": 1.5}, TypeError, "tinit must be an int"),
        ({"tfinal": True}, TypeError, "tfinal must be an int"),
        ({"deltaT": 2.0}, TypeError, "deltaT must be an int"),
        ({"total_step": "10"}, TypeError, "total_step must be an int"),
        ({"total_step": -5}, ValueError, "total_step must be an int >= 1"),
        ({"beta1": NAN}, ValueError, "beta1 must be in"),
        ({"beta2": None}, TypeError, "beta2 must be a number"),
        ({"orth_reg_weight": INF}, ValueError, "orth_reg_weight must be a finite number"),
        ({"orth_reg_weight": NAN}, ValueError, "orth_reg_weight must be a finite number"),
        ({"orth_reg_weight": True}, TypeError, "orth_reg_weight must be a number"),
        ({"alpha": "8"}, TypeError, "alpha must be a number"),
        ({"alpha": INF}, ValueError, "alpha must be a finite number"),
        ({"alpha": 0.0}, ValueError, "alpha must be a finite number > 0"),
        ({"dropout": True}, TypeError, "dropout must be a number"),
        ({"dropout": -0.5}, ValueError, "dropout must be in"),
        ({"target_modules": [""]}, TypeError, "target_modules must be a non-empty list"),
        ({"target_modules": 5}, TypeError, "target_modules must be a non-empty list"),
        ({"target_modules": ["q_proj", 3]}, TypeError, "target_modules must be a non-empty list"),
        ({"target_modules": ""}, ValueError, "target_modules must not be an empty string"),
        ({"rank_pattern": "all"}, TypeError, "rank_pattern must be a dict"),
        ({"rank_pattern": {"layers.0.q_proj": [True] * 12}}, ValueError, r"rank_pattern key .* must be"),
        ({"rank_pattern": {".lora_E": [True] * 12}}, ValueError, r"rank_pattern key '.lora_E' must be"),
        ({"rank_pattern": {"q.lora_E.default": [True] * 12}}, ValueError, r"rank_pattern key .*\(PEFT's format\)"),
        ({"rank_pattern": {"q.lora_E": [1] * 12}}, ValueError, r"rank_pattern\['q.lora_E'\] must be a list of"),
        ({"rank_pattern": {"q.lora_E": "true"}}, ValueError, r"must be a list of true/false"),
        ({"rank_pattern": {"q.lora_E": [True] * 3}}, ValueError, r"has 3 entries but init_r=12"),
    ],
)
def test_config_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaLoRAConfig(**{"total_step": 10, **kwargs})


def test_config_accepts_numpy_scalars_and_sets():
    cfg = AdaLoRAConfig(init_r=np.int64(6), target_r=np.int32(2), total_step=np.int64(10), alpha=np.float32(4.0),
                        target_modules={"v_proj", "q_proj"})
    assert (cfg.init_r, cfg.target_r, cfg.total_step, cfg.alpha) == (6, 2, 10, 4.0)
    assert all(type(v) in (int, float) for v in (cfg.init_r, cfg.target_r, cfg.total_step, cfg.alpha))
    assert cfg.target_modules == ["q_proj", "v_proj"]  # sorted: the saved json does not depend on hash order
    json.dumps(cfg.to_peft_dict())  # every value is JSON-serializable


# ------------------------------------------------------------------------------------------ apply_adalora


def _with_int8_last(model: nn.Module) -> None:
    model.layers[1].self_attn.v_proj.weight = nn.Parameter(torch.zeros(32, 32, dtype=torch.int8),
                                                           requires_grad=False)


def _with_lora(model: nn.Module) -> None:
    lorakit.apply_lora(model, lorakit.LoRAConfig(target_modules=["k_proj"]))


APPLY_CASES = {
    "not-a-model": (None, lambda m: apply_adalora("model", config(QV)), TypeError, "model must be an nn.Module"),
    "config-none": (None, lambda m: apply_adalora(m, None), TypeError, "config must be an AdaLoRAConfig"),
    "config-lora": (None, lambda m: apply_adalora(m, lorakit.LoRAConfig()), TypeError, "config must be an AdaLoRA"),
    "config-dict": (None, lambda m: apply_adalora(m, config(QV).to_peft_dict()), TypeError, "config must be"),
    "rank-pattern": (None, lambda m: apply_adalora(m, config(QV, rank_pattern={"a.lora_E": [True] * 4})),
                     ValueError, "config.rank_pattern is set"),
    "norm-target": (None, lambda m: apply_adalora(m, config(["input_layernorm"])), ValueError,
                    "a RMSNorm, but only nn.Linear"),
    "regex-no-match": (None, lambda m: apply_adalora(m, config(r".*\.nothing")), ValueError, "matched no nn.Linear"),
    "regex-block": (None, lambda m: apply_adalora(m, config(r"layers\.0\.self_attn")), ValueError, "a Attention"),
    "int8-last-target": (_with_int8_last, lambda m: apply_adalora(m, config(QV)), ValueError,
                         r"floating-point layers only; .*layers.1.self_attn.v_proj"),
    "lora-model": (_with_lora, lambda m: apply_adalora(m, config(QV)), ValueError, "already has adapter layers"),
    "adalora-model": (lambda m: apply_adalora(m, config(["o_proj"])), lambda m: apply_adalora(m, config(QV)),
                      ValueError, "already has adapter layers"),
}


@pytest.mark.parametrize("case", list(APPLY_CASES))
def test_apply_adalora_rejects_and_leaves_the_model(case):
    prepare, call, error, match = APPLY_CASES[case]
    model = tiny_lm()
    if prepare is not None:
        prepare(model)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        call(model)
    assert_unchanged(model, before)


def test_apply_adalora_failing_half_way_is_undone(monkeypatch):
    """An error in the middle of the targets (here injected into the 3rd layer's init) leaves no trace."""
    model = tiny_lm()
    model.layers[0].self_attn.q_proj.weight.requires_grad_(False)  # flags are restored as they were
    before = snapshot(model)
    calls = {"n": 0}
    original = SVDLinear.reset_parameters

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure while building the 3rd layer")
        return original(self)

    monkeypatch.setattr(SVDLinear, "reset_parameters", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        apply_adalora(model, config(ALL7))
    assert calls["n"] == 3
    assert_unchanged(model, before)
    assert not hasattr(model, "adalora_config")


# ------------------------------------------------------------------------------------------ report


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: rank_report("model"), TypeError, "model must be an nn.Module"),
        (lambda: effective_parameters("model"), TypeError, "model must be an nn.Module"),
        (lambda: effective_parameters(tiny_lm()), ValueError, "no SVDLinear layers"),
        (lambda: rank_grid(["layers.0.q_proj"]), ValueError, "report must be a non-empty"),
        (lambda: rank_grid({"layers.0.q_proj": -1}), ValueError, r"report\['layers.0.q_proj'\] must be a rank"),
        (lambda: rank_grid({"layers.0.q_proj": 1.5}), ValueError, "must be a rank"),
        (lambda: rank_grid({"layers.0.q_proj": True}), ValueError, "must be a rank"),
        (lambda: rank_grid({3: 1}), ValueError, "report keys must be module names"),
        (lambda: rank_grid({"": 1}), ValueError, "report keys must be module names"),
        (lambda: format_rank_table({}), ValueError, "report must be a non-empty"),
        (lambda: format_rank_table("q_proj: 3"), ValueError, "report must be a non-empty"),
    ],
)
def test_report_functions_reject(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------------------ train_adalora


@pytest.fixture(scope="module")
def caesar():
    return caesar_task(n_train=16, n_eval=8)


TRAIN_CALLS = {
    "not-a-model": (lambda m, d, e: train_adalora("model", d), TypeError, "model must be an nn.Module"),
    "eval-data": (lambda m, d, e: train_adalora(m, d, eval_data="held-out"), TypeError, "eval_data must be"),
    "steps-zero": (lambda m, d, e: train_adalora(m, d, steps=0), ValueError, "steps must be an int >= 1"),
    "steps-float": (lambda m, d, e: train_adalora(m, d, steps=6.0), TypeError, "steps must be an int"),
    "lr-zero": (lambda m, d, e: train_adalora(m, d, lr=0), ValueError, "lr must be > 0"),
    "lr-negative": (lambda m, d, e: train_adalora(m, d, lr=-1e-3), ValueError, "lr must be > 0"),
    "lr-nan": (lambda m, d, e: train_adalora(m, d, lr=NAN), ValueError, "lr must be > 0"),
    "lr-str": (lambda m, d, e: train_adalora(m, d, lr="1e-3"), ValueError, "lr must be > 0"),
    "lr-bool": (lambda m, d, e: train_adalora(m, d, lr=True), ValueError, "lr must be > 0"),
    "batch-size-zero": (lambda m, d, e: train_adalora(m, d, batch_size=0), ValueError, "batch_size must be"),
    "batch-size-float": (lambda m, d, e: train_adalora(m, d, batch_size=2.5), TypeError, "batch_size must be"),
    "eval-every-zero": (lambda m, d, e: train_adalora(m, d, eval_data=e, eval_every=0), ValueError, "eval_every"),
    "seed-negative": (lambda m, d, e: train_adalora(m, d, seed=-1), ValueError, "seed must be an int >= 0"),
    "seed-str": (lambda m, d, e: train_adalora(m, d, seed="0"), TypeError, "seed must be an int"),
    "orth-nan": (lambda m, d, e: train_adalora(m, d, orth_reg_weight=NAN), ValueError, "orth_reg_weight"),
    "orth-str": (lambda m, d, e: train_adalora(m, d, orth_reg_weight="0.5"), ValueError, "orth_reg_weight"),
    "allocator-str": (lambda m, d, e: train_adalora(m, d, allocator="alloc"), TypeError, "allocator must be"),
    "allocator-other-model": (lambda m, d, e: train_adalora(m, d, allocator=RankAllocator.from_config(
        adalora_tiny(ALL7))), ValueError, "model: its SVDLinear layers differ"),
    "no-config-no-allocator": (lambda m, d, e: train_adalora(m, d), TypeError, "config must be an AdaLoRAConfig"),
    "data-tensor": (lambda m, d, e: train_adalora(m, d.input_ids), TypeError, "data must be a lorakit.data.Batch"),
}


def _without_config(model: nn.Module) -> nn.Module:
    del model.adalora_config
    return model


@pytest.mark.parametrize("case", list(TRAIN_CALLS))
def test_train_adalora_rejects_before_the_first_step(caesar, case):
    call, error, match = TRAIN_CALLS[case]
    model = adalora_tiny()
    if case == "no-config-no-allocator":
        _without_config(model)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        call(model, *caesar)
    assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------ save_adapter


def _nan_e(model: nn.Module) -> None:
    with torch.no_grad():
        list(adalora_layers(model).values())[-1].lora_E[0] = NAN


def _float_mask(model: nn.Module) -> None:
    list(adalora_layers(model).values())[0].rank_mask = torch.ones(4)


def _short_mask(model: nn.Module) -> None:
    list(adalora_layers(model).values())[0].rank_mask = torch.ones(3, dtype=torch.bool)


SAVE_CASES = {
    "config-lora": (None, lambda m, d: lorakit.save_adapter(m, d, lorakit.LoRAConfig(r=4)), TypeError,
                    "config must be an AdaLoRAConfig"),
    "config-str": (None, lambda m, d: lorakit.save_adapter(m, d, "config"), TypeError, "config must be"),
    "no-stored-config": (_without_config, lambda m, d: lorakit.save_adapter(m, d), TypeError, "config must be"),
    "directory-int": (None, lambda m, d: lorakit.save_adapter(m, 123), TypeError, "directory must be a str"),
    "directory-is-file": (None, lambda m, d: lorakit.save_adapter(m, _a_file(d)), ValueError, "is a file"),
    "nan-factor": (_nan_e, lambda m, d: lorakit.save_adapter(m, d), ValueError, "lora_E holds NaN or inf"),
    "float-mask": (_float_mask, lambda m, d: lorakit.save_adapter(m, d), ValueError, "rank_mask must be a bool"),
    "short-mask": (_short_mask, lambda m, d: lorakit.save_adapter(m, d), ValueError, r"shape \(4,\)"),
    "direct-no-layers": (None, lambda m, d: lorakit.adalora.save_adalora_adapter(tiny_lm(), d), ValueError,
                         "no AdaLoRA"),
    "direct-not-a-model": (None, lambda m, d: lorakit.adalora.save_adalora_adapter("model", d), TypeError,
                           "model must be an nn.Module"),
}


def _a_file(directory):
    path = directory.parent / "a_file"
    path.write_text("x")
    return path


@pytest.mark.parametrize("case", list(SAVE_CASES))
def test_save_adapter_rejects_and_writes_nothing(tmp_path, case):
    prepare, call, error, match = SAVE_CASES[case]
    model = adalora_tiny()
    if prepare is not None:
        prepare(model)
    before = snapshot(model)
    target = tmp_path / "out"
    with pytest.raises(error, match=match):
        call(model, target)
    assert_unchanged(model, before)
    assert not target.exists() or not any(target.iterdir())


# ------------------------------------------------------------------------------------------ load_adapter


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pruned lorakit AdaLoRA adapter (rank pattern included), saved once."""
    directory = tmp_path_factory.mktemp("adalora")
    lorakit.save_adapter(train_lorakit("tinylm", seed=4), directory)
    return directory


def _layer_keys(tensors: dict, factor: str) -> list[str]:
    return sorted(k for k in tensors if k.endswith(f".{factor}"))


def _pattern_edit(fn):
    def edit(raw, tensors):
        fn(raw["rank_pattern"])
    return edit


def _first_kept_to_pruned(pattern):
    key = sorted(pattern)[0]
    row = pattern[key]
    row[row.index(True)] = False


def _drop_key(raw, tensors):
    del tensors[_layer_keys(tensors, "lora_E")[0]]


def _extra_key(raw, tensors):
    tensors["base_model.model.layers.0.mlp.up_proj.lora_A"] = torch.zeros(1, 32)


def _transpose_a(raw, tensors):
    key = _layer_keys(tensors, "lora_A")[-1]
    tensors[key] = tensors[key].T.contiguous()


def _nan_value(raw, tensors):
    key = _layer_keys(tensors, "lora_B")[0]
    tensors[key] = tensors[key].clone().fill_(NAN) if tensors[key].numel() else torch.full((32, 1), NAN)


def _int_tensor(raw, tensors):
    key = _layer_keys(tensors, "lora_E")[-1]
    tensors[key] = tensors[key].to(torch.int32)


def _set(**fields):
    def edit(raw, tensors):
        raw.update(fields)
    return edit


def _delete(field):
    def edit(raw, tensors):
        del raw[field]
    return edit


LOAD_CASES = {
    "missing-key": (_drop_key, "missing"),
    "unexpected-key": (_extra_key, "unexpected"),
    "wrong-shape": (_transpose_a, r"lora_A has shape .*, expected"),
    "nan-value": (_nan_value, "must hold finite floating-point values"),
    "int-tensor": (_int_tensor, "must hold finite floating-point values"),
    "pattern-sum": (_pattern_edit(_first_kept_to_pruned), "so the rank_pattern disagrees with the weights"),
    "pattern-length": (_pattern_edit(lambda p: p[sorted(p)[0]].append(True)), "has 5 entries but init_r=4"),
    "pattern-unknown-module": (_pattern_edit(lambda p: p.update({"layers.0.mlp.up_proj.lora_E": [True] * 4})),
                               r"rank_pattern names \['layers.0.mlp.up_proj'\]"),
    "pattern-adapter-name-key": (_pattern_edit(lambda p: p.update({f"{k}.default": p.pop(k) for k in list(p)})),
                                 r"rank_pattern key .*\(PEFT's format\)"),
    "pattern-int-values": (_pattern_edit(lambda p: p.update({k: [int(b) for b in v] for k, v in p.items()})),
                           "must be a list of true/false"),
    "pattern-list": (_set(rank_pattern=[[True] * 4]), "rank_pattern must be a dict"),
    "use-dora": (_set(use_dora=True), "use_dora"),
    "exclude-modules": (_set(exclude_modules=["q_proj"]), "exclude_modules"),
    "layers-to-transform": (_set(layers_to_transform=[0]), "layers_to_transform"),
    "lora-bias": (_set(lora_bias=True), "lora_bias"),
    "modules-to-save": (_set(modules_to_save=["lm_head"]), "modules_to_save"),
    "bias-all": (_set(bias="all"), "bias"),
    "fan-in-fan-out": (_set(fan_in_fan_out=True), "fan_in_fan_out"),
    "alpha-pattern": (_set(alpha_pattern={"q_proj": 2}), "alpha_pattern"),
    "target-parameters": (_set(target_parameters=["weight"]), "target_parameters"),
    "init-r-float": (_set(init_r=4.0), "init_r must be an integer"),
    "total-step-str": (_set(total_step="6"), "total_step must be an integer"),
    "beta1-str": (_set(beta1="0.85"), "beta1 must be a number"),
    "alpha-bool": (_set(lora_alpha=True), "lora_alpha must be a number"),
    "use-rslora-str": (_set(use_rslora="false"), "use_rslora must be a JSON boolean"),
    "r-str": (_set(r="8"), "r must be a JSON integer"),
    "total-step-missing": (_delete("total_step"), "total_step is missing"),
    "init-r-missing": (_delete("init_r"), "init_r is missing"),
    "targets-missing": (_delete("target_modules"), "target_modules is missing"),
    "targets-empty": (_set(target_modules=[]), "target_modules"),
    "init-gaussian": (_set(init_lora_weights="gaussian"), "init_lora_weights='gaussian' is not supported"),
    "unknown-field": (_set(my_extension=3), "fields unknown to lorakit"),
    "target-r-above-init": (_set(target_r=5), "target_r=5 must be <= init_r=4"),
    "no-budgeting-phase": (_set(tinit=5), "tinit=5 must be < total_step - tfinal"),
    "dropout-above-one": (_set(lora_dropout=1.5), "dropout must be in"),
    "orth-negative": (_set(orth_reg_weight=-1), "orth_reg_weight must be a finite number >= 0"),
    "delta-t-zero": (_set(deltaT=0), "deltaT must be an int >= 1"),
    "targets-no-match": (_set(target_modules=["nothing"]), "match no nn.Linear"),
    "targets-a-norm": (_set(target_modules=["input_layernorm"]), "a RMSNorm, but only nn.Linear"),
}

#: A hot swap cannot reach the target selection errors the same way; the rest are checked into both models.
FRESH_ONLY = {"targets-no-match", "targets-a-norm", "targets-empty"}


def _write_edited(saved, tmp_path, edit):
    raw = json.loads((saved / "adapter_config.json").read_text())
    tensors = load_file(saved / "adapter_model.safetensors")
    edit(raw, tensors)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "adapter_config.json").write_text(json.dumps(raw))
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    return tmp_path


@pytest.mark.parametrize("into", ["fresh", "adalora"])
@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_adapter_rejects_a_bad_file_and_leaves_the_model(saved, tmp_path, case, into):
    if into == "adalora" and case in FRESH_ONLY:
        pytest.skip("target selection errors are reached only when layers are created")
    edit, match = LOAD_CASES[case]
    directory = _write_edited(saved, tmp_path / "bad", edit)
    model = tiny_lm() if into == "fresh" else adalora_tiny()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        lorakit.load_adapter(model, directory)
    assert_unchanged(model, before)


def test_the_unedited_file_loads_into_both(saved, tmp_path):
    """The control for the cases above: the same file, unedited and rewritten the same way, loads."""
    directory = _write_edited(saved, tmp_path / "same", lambda raw, tensors: None)
    for model in (tiny_lm(), adalora_tiny()):
        lorakit.load_adapter(model, directory)
        assert sorted(adalora_layers(model)) == sorted(
            f"layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj"))


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("model", ".", {}, {}), TypeError, "model must be an nn.Module"),
        ((None, ".", "config", {}), ValueError, "must hold a JSON object"),
        ((None, ".", {"peft_type": "LORA"}, {}), ValueError, "peft_type must be 'ADALORA'"),
        ((None, ".", {}, [("k", 1)]), TypeError, "tensors must be a dict"),
        ((None, ".", {}, {"k": [1.0]}), TypeError, "tensors must be a dict"),
    ],
)
def test_load_adalora_adapter_direct_call_rejects(args, error, match):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        load_adalora_adapter(model if args[0] is None else args[0], *args[1:])
    assert_unchanged(model, before)
