"""AdaLoRA adapters on disk in PEFT's AdaLoRA format, both directions (issue 9, item 7).

* PEFT trains (with ``update_and_allocate``, so ranks are pruned) and saves; lorakit loads the file onto a
  fresh base and by hot-swap into an AdaLoRA model of the same shape: the same outputs as
  ``PeftModel.from_pretrained``.
* lorakit trains with its RankAllocator and saves; PEFT loads the file with the same outputs, and re-saves
  exactly the same keys, shapes, tensors and config fields; lorakit reloads PEFT's file.
* The config reads back (``AdaLoRAConfig.from_peft_dict``), an unpruned adapter is written full size with
  ``rank_pattern: null``, and a save that could not reproduce the model is refused.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adalora_builders import (  # noqa: E402
    ALL7,
    BUILDS,
    QV,
    config,
    ids_for,
    peft_layers,
    randomize_lorakit,
    randomize_peft,
    rel_diff,
    train_lorakit,
    train_peft,
)
from builders import logits  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from snapshot import assert_unchanged, snapshot  # noqa: E402

import lorakit  # noqa: E402
from lorakit.adalora import (  # noqa: E402
    AdaLoRAConfig,
    RankAllocator,
    SVDLinear,
    adalora_layers,
    apply_adalora,
    rank_report,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*"),
    # PEFT 0.21.2 warns about its own AdaLoRA files: rank-0 layers look like unsharded ZeRO-3 tensors, and
    # LoraModel's rank_pattern check does not know AdaLoRA's "<module>.lora_E" keys (it still applies them).
    pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape.*"),
    pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match.*"),
]

TOL = 1e-5
KINDS = ["llama", "tinylm"]


def saved_pattern(directory) -> dict[str, list[bool]]:
    return json.loads((directory / "adapter_config.json").read_text())["rank_pattern"]


@pytest.fixture(scope="module")
def peft_adapters(tmp_path_factory):
    """``{kind: (directory, PEFT model)}``: PEFT-trained, pruned adapters saved by PEFT."""
    out = {}
    for kind in KINDS:
        model = train_peft(kind, seed=3)
        directory = tmp_path_factory.mktemp(f"peft-{kind}")
        model.save_pretrained(directory)
        out[kind] = (directory, model)
    return out


# ------------------------------------------------------------------------------- PEFT -> lorakit


@pytest.mark.parametrize("kind", KINDS)
def test_lorakit_loads_a_pruned_peft_adapter_onto_a_fresh_base(peft_adapters, kind):
    directory, _ = peft_adapters[kind]
    pattern = saved_pattern(directory)
    assert pattern and not all(all(v) for v in pattern.values())  # PEFT pruned ranks
    assert {tuple(t.shape) for k, t in load_file(directory / "adapter_model.safetensors").items()
            if k.endswith("lora_E")} != {(4, 1)}  # and saved the resized factors
    ids = ids_for(kind)
    theirs = PeftModel.from_pretrained(BUILDS[kind](), directory).eval()
    ours = lorakit.load_adapter(BUILDS[kind](), directory)
    with torch.no_grad():
        want, got = logits(theirs, ids), logits(ours, ids)
        assert rel_diff(want, logits(BUILDS[kind](), ids)) > 1e-2  # the adapter matters
        assert rel_diff(got, want) <= TOL
    layers = adalora_layers(ours)
    assert sorted(f"{n}.lora_E" for n in layers) == sorted(pattern)
    for name, layer in layers.items():
        keep = pattern[f"{name}.lora_E"]
        assert layer.r == 4 and layer.rank_mask.tolist() == keep  # lorakit keeps rank init_r, masked
        assert torch.all(layer.lora_E[~layer.rank_mask] == 0) and torch.all(layer.lora_A[~layer.rank_mask] == 0)
        assert layer.ranknum.item() == 4.0  # as PEFT's resized layers (a rank-0 PEFT layer has no factors at all)
        if any(keep):
            assert peft_layers(theirs)[name].ranknum["default"].item() == 4.0
    assert ours.adalora_config.rank_pattern == pattern
    assert sum(rank_report(ours).values()) <= sum(sum(v) for v in pattern.values())


@pytest.mark.parametrize("kind", KINDS)
def test_lorakit_hot_swaps_peft_adapters_into_an_adalora_model(peft_adapters, tmp_path, kind):
    ids = ids_for(kind)
    ours = train_lorakit(kind, seed=5)  # trained and pruned by lorakit: its masks are replaced by the file's
    second = train_peft(kind, seed=7)
    second.save_pretrained(tmp_path)
    for directory, theirs in (peft_adapters[kind], (tmp_path, second)):
        lorakit.load_adapter(ours, directory)
        with torch.no_grad():
            assert rel_diff(logits(ours, ids), logits(theirs, ids)) <= TOL
        assert ours.adalora_config.rank_pattern == saved_pattern(directory)
    assert all(isinstance(m, SVDLinear) for m in adalora_layers(ours).values())


def test_unpruned_peft_adapter_loads_full_size(tmp_path):
    """Saved before any mask: ``rank_pattern`` null and full ``init_r`` factors."""
    from peft import AdaLoraConfig, get_peft_model

    theirs = get_peft_model(BUILDS["llama"](), AdaLoraConfig(**config(ALL7).to_peft_dict())).eval()
    randomize_peft(theirs)
    theirs.save_pretrained(tmp_path)
    assert saved_pattern(tmp_path) is None
    ours = lorakit.load_adapter(BUILDS["llama"](), tmp_path)
    assert all(layer.rank_mask is None for layer in adalora_layers(ours).values())
    with torch.no_grad():
        assert rel_diff(logits(ours, ids_for("llama")), logits(theirs, ids_for("llama"))) <= TOL


# ------------------------------------------------------------------------------- lorakit -> PEFT


@pytest.mark.parametrize("targets", [QV, "all-linear"], ids=["qv", "all-linear"])
@pytest.mark.parametrize("kind", KINDS)
def test_peft_loads_a_pruned_lorakit_adapter_and_resaves_it_identically(tmp_path, kind, targets):
    ids = ids_for(kind)
    ours = train_lorakit(kind, seed=4, targets=targets)
    masks = {n: layer.rank_mask for n, layer in adalora_layers(ours).items()}
    assert all(m is not None for m in masks.values()) and not all(bool(m.all()) for m in masks.values())
    before = snapshot(ours)
    lorakit.save_adapter(ours, tmp_path / "ours")
    assert_unchanged(ours, before)  # saving never changes the model
    theirs = PeftModel.from_pretrained(BUILDS[kind](), tmp_path / "ours").eval()
    assert sorted(peft_layers(theirs)) == sorted(masks)
    for name, layer in peft_layers(theirs).items():  # PEFT resized each layer to the kept triplets
        assert layer.lora_A["default"].shape[0] == int(masks[name].sum())
    with torch.no_grad():
        want = logits(ours, ids)
        assert rel_diff(want, logits(BUILDS[kind](), ids)) > 1e-2
        assert rel_diff(logits(theirs, ids), want) <= TOL
    theirs.save_pretrained(tmp_path / "theirs")
    mine, peft_file = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("ours", "theirs"))
    assert mine.keys() == peft_file.keys()
    assert all(torch.equal(mine[k], peft_file[k]) for k in mine)
    ours_cfg, peft_cfg = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ours", "theirs"))
    assert set(ours_cfg) <= set(peft_cfg)
    for key, value in ours_cfg.items():
        if key == "target_modules":
            assert sorted(value) == sorted(peft_cfg[key])
        else:
            assert value == peft_cfg[key], key
    back = lorakit.load_adapter(BUILDS[kind](), tmp_path / "theirs")
    with torch.no_grad():
        assert torch.equal(logits(back, ids), want)  # the same tensors came back into the same places


def test_lorakit_round_trip_and_hot_swap_in_lorakit(tmp_path):
    ids = ids_for("tinylm")
    ours = train_lorakit("tinylm", seed=4, targets=ALL7)
    lorakit.save_adapter(ours, tmp_path)
    with torch.no_grad():
        want = logits(ours, ids)
        fresh = lorakit.load_adapter(BUILDS["tinylm"](), tmp_path)
        assert torch.equal(logits(fresh, ids), want)
        other = apply_adalora(BUILDS["tinylm"](), config(ALL7, alpha=9.0, dropout=0.1))
        lorakit.load_adapter(other, tmp_path)  # hot swap replaces the weights, alpha, dropout and masks
        assert torch.equal(logits(other, ids), want)
    assert all(layer.alpha == 4.0 and layer.dropout == 0.0 for layer in adalora_layers(other).values())
    assert {n: m.rank_mask.tolist() for n, m in adalora_layers(other).items()} == \
        {n: m.rank_mask.tolist() for n, m in adalora_layers(ours).items()}
    lorakit.save_adapter(fresh, tmp_path / "again")  # a loaded model saves the same file again
    first, second = load_file(tmp_path / "adapter_model.safetensors"), load_file(tmp_path / "again" /
                                                                                "adapter_model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_unpruned_lorakit_adapter_is_written_full_size(tmp_path):
    ours = apply_adalora(BUILDS["llama"](), config(QV))
    randomize_lorakit(ours)
    lorakit.save_adapter(ours, tmp_path)
    assert saved_pattern(tmp_path) is None
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert {k.rsplit(".", 1)[-1] for k in tensors} == {"lora_A", "lora_E", "lora_B"}
    assert all(t.shape[0] == 4 for k, t in tensors.items() if not k.endswith("lora_B"))
    theirs = PeftModel.from_pretrained(BUILDS["llama"](), tmp_path).eval()
    with torch.no_grad():
        assert rel_diff(logits(theirs, ids_for("llama")), logits(ours, ids_for("llama"))) <= TOL


def test_budget_at_init_budget_masks_nothing_and_saves_full_size(tmp_path):
    ours = apply_adalora(BUILDS["tinylm"](), config(QV))
    randomize_lorakit(ours)
    allocator = RankAllocator.from_config(ours)
    logits(ours, ids_for("tinylm")).square().mean().backward()
    allocator.update_ipt(ours)
    allocator.mask_to_budget(ours, allocator.init_budget)  # an allocation that keeps everything
    lorakit.save_adapter(ours, tmp_path)
    assert all(all(v) for v in saved_pattern(tmp_path).values())
    assert all(t.shape[-1 if k.endswith("lora_B") else 0] == 4
               for k, t in load_file(tmp_path / "adapter_model.safetensors").items())
    theirs = PeftModel.from_pretrained(BUILDS["tinylm"](), tmp_path).eval()
    with torch.no_grad():
        assert rel_diff(logits(theirs, ids_for("tinylm")), logits(ours, ids_for("tinylm"))) <= TOL


# ------------------------------------------------------------------------------- the config


def test_config_reads_back_from_peft_files(peft_adapters, tmp_path):
    directory, theirs = peft_adapters["llama"]
    raw = json.loads((directory / "adapter_config.json").read_text())
    cfg = AdaLoRAConfig.from_peft_dict(raw)
    peft_cfg = theirs.peft_config["default"]
    for name in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step"):
        assert getattr(cfg, name) == getattr(peft_cfg, name), name
    assert (cfg.alpha, cfg.dropout, sorted(cfg.target_modules)) == (4.0, 0.0, sorted(QV))
    assert cfg.rank_pattern == raw["rank_pattern"]
    assert AdaLoRAConfig.from_peft_dict(cfg.to_peft_dict()) == cfg  # and round-trips
    plain = config(ALL7)
    assert AdaLoRAConfig.from_peft_dict(plain.to_peft_dict()) == plain
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft_back = peft.AdaLoraConfig(**cfg.to_peft_dict())  # PEFT accepts lorakit's dict, rank pattern included
    assert peft_back.rank_pattern == cfg.rank_pattern and peft_back.init_r == cfg.init_r


def test_saved_config_holds_the_fields_peft_writes(tmp_path):
    ours = train_lorakit("llama", seed=4)
    lorakit.save_adapter(ours, tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["peft_type"] == "ADALORA" and raw["inference_mode"] is True
    for key in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight",
                "total_step", "rank_pattern", "lora_alpha", "lora_dropout", "target_modules", "init_lora_weights",
                "bias", "fan_in_fan_out", "modules_to_save", "use_rslora", "use_dora"):
        assert key in raw, key
    assert sorted(raw["rank_pattern"]) == sorted(f"{n}.lora_E" for n in adalora_layers(ours))
    assert all(isinstance(b, bool) for v in raw["rank_pattern"].values() for b in v)


def test_all_linear_is_saved_as_explicit_suffixes(tmp_path):
    ours = train_lorakit("llama", seed=4, targets="all-linear")
    lorakit.save_adapter(ours, tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(raw["target_modules"]) == sorted(ALL7)
    back = lorakit.load_adapter(BUILDS["llama"](), tmp_path)
    assert sorted(adalora_layers(back)) == sorted(adalora_layers(ours))


# ------------------------------------------------------------------------------- what cannot be saved faithfully


def test_save_refuses_pruned_values_the_optimizer_moved_and_works_after_remasking(tmp_path):
    """Between masking steps (deltaT > 1) the optimizer moves pruned Λ_i off zero; PEFT would drop them."""
    model = apply_adalora(BUILDS["tinylm"](), config(QV, deltaT=2, tinit=0, tfinal=2, total_step=10))
    randomize_lorakit(model)
    allocator = RankAllocator.from_config(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, 4):  # masks at step 2; step 3 only moves the weights
        logits(model, ids_for("tinylm", seed=step)).square().mean().backward()
        opt.step()
        allocator.update_and_allocate(model, step)
        opt.zero_grad()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"lora_E is non-zero at triplets .* the allocator's last mask pruned"):
        lorakit.save_adapter(model, tmp_path / "stale")
    assert_unchanged(model, before)
    assert not (tmp_path / "stale" / "adapter_model.safetensors").exists()
    allocator.apply_rank_pattern(model, allocator.rank_pattern)
    lorakit.save_adapter(model, tmp_path / "ok")
    theirs = PeftModel.from_pretrained(BUILDS["tinylm"](), tmp_path / "ok").eval()
    with torch.no_grad():
        assert rel_diff(logits(theirs, ids_for("tinylm")), logits(model.eval(), ids_for("tinylm"))) <= TOL


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"init_r": 5}, r"config.init_r=5 but layer .* has r=4"),
        ({"alpha": 5.0}, r"config.alpha=5.0 but layer .* has alpha=4.0"),
        ({"dropout": 0.1}, r"config.dropout=0.1 but layer .* has dropout=0.0"),
        ({"target_modules": ["q_proj"]}, r"config.target_modules=\['q_proj'\] would adapt \[\] .* and miss"),
        ({"target_modules": ALL7}, r"would adapt \['layers.0.mlp.down_proj'"),
        ({"rank_pattern": "all-true"}, r"config.rank_pattern disagrees with the allocator's mask of layer"),
        ({"rank_pattern": "unknown"}, r"config.rank_pattern names \['layers.0.mlp.up_proj'\]"),
    ],
    ids=["init_r", "alpha", "dropout", "fewer-targets", "more-targets", "rank-pattern", "rank-pattern-module"],
)
def test_save_refuses_an_explicit_config_that_disagrees(tmp_path, change, match):
    model = train_lorakit("tinylm", seed=4)
    kw = dict(change)
    if kw.get("rank_pattern") == "all-true":
        kw["rank_pattern"] = {f"{n}.lora_E": [True] * 4 for n in adalora_layers(model)}
    elif kw.get("rank_pattern") == "unknown":
        kw["rank_pattern"] = {"layers.0.mlp.up_proj.lora_E": [True] * 4}
    cfg = config(QV, **kw)
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        lorakit.save_adapter(model, tmp_path, cfg)
    assert_unchanged(model, before)
    assert not any(tmp_path.iterdir())  # nothing written
    good = config(QV, rank_pattern=lorakit.adalora.rank_pattern_of(model))
    lorakit.save_adapter(model, tmp_path, good)  # the matching explicit config is accepted
    assert saved_pattern(tmp_path) == good.rank_pattern


def test_save_refuses_non_finite_factors_and_writes_nothing(tmp_path):
    model = train_lorakit("tinylm", seed=4)
    (tmp_path / "adapter_config.json").write_text("{}")
    with torch.no_grad():
        layer = list(adalora_layers(model).values())[-1]
        layer.lora_A[layer.rank_mask.nonzero()[0, 0], 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"lora_A holds NaN or inf"):
        lorakit.save_adapter(model, tmp_path)
    assert_unchanged(model, before)
    assert (tmp_path / "adapter_config.json").read_text() == "{}"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]


def test_adalora_adapter_into_another_kind_is_refused(tmp_path):
    model = train_lorakit("tinylm", seed=4)
    lorakit.save_adapter(model, tmp_path / "ada")
    lora = lorakit.apply_lora(BUILDS["tinylm"](), lorakit.LoRAConfig(r=4, target_modules=QV))
    before = snapshot(lora)
    with pytest.raises(ValueError, match="adapter layers of another kind"):
        lorakit.load_adapter(lora, tmp_path / "ada")
    assert_unchanged(lora, before)
    lorakit.save_adapter(lora, tmp_path / "lora")
    before = snapshot(model)
    with pytest.raises(ValueError, match="adapter layers of another kind"):
        lorakit.load_adapter(model, tmp_path / "lora")
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: apply_adalora(BUILDS["tinylm"](), config(QV, init_r=5, target_r=2)), "has init_r=4 but .* has r=5"),
        (lambda: apply_adalora(BUILDS["tinylm"](), config(["q_proj"])), r"select .* but the model's AdaLoRA layers"),
        (lambda: apply_adalora(BUILDS["tinylm"](), config(ALL7)), r"select .* but the model's AdaLoRA layers"),
        (lambda: lorakit.merge_lora(apply_adalora(BUILDS["tinylm"](), config(QV))), "is merged; unmerge"),
    ],
    ids=["other-init_r", "fewer-layers", "more-layers", "merged"],
)
def test_hot_swap_into_a_different_adalora_model_is_refused(tmp_path, build, match):
    lorakit.save_adapter(train_lorakit("tinylm", seed=4), tmp_path)
    model = build()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        lorakit.load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def test_loaded_model_keeps_training_with_an_allocator(tmp_path):
    """A loaded adapter is a full lorakit AdaLoRA model: train it on, prune again, save again."""
    lorakit.save_adapter(train_lorakit("tinylm", seed=4), tmp_path / "a")
    model = lorakit.load_adapter(BUILDS["tinylm"](), tmp_path / "a")
    allocator = RankAllocator.from_config(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, 7):
        logits(model, ids_for("tinylm", seed=step)).square().mean().backward()
        opt.step()
        allocator.update_and_allocate(model, step)
        opt.zero_grad()
    assert sum(rank_report(model).values()) == allocator.target_budget
    lorakit.save_adapter(model, tmp_path / "b")  # the stored (loaded) rank_pattern gives way to the new masks
    assert saved_pattern(tmp_path / "b") == {f"{n}.lora_E": m.rank_mask.tolist()
                                             for n, m in adalora_layers(model).items()}
    theirs = PeftModel.from_pretrained(BUILDS["tinylm"](), tmp_path / "b").eval()
    with torch.no_grad():
        assert rel_diff(logits(theirs, ids_for("tinylm")), logits(model.eval(), ids_for("tinylm"))) <= TOL
