"""lorakit.serving.AdapterBank: layouts, add/remove at run time, memory per adapter, refusals (bank unchanged)."""

from __future__ import annotations

import copy

import pytest
import torch
from builders import tiny_llama, tiny_lm

from lorakit import LoRAConfig, apply_lora, lora_layers, lora_scaling, save_adapter
from lorakit.peft.io import PEFT_PREFIX
from lorakit.serving import AdapterBank, random_adapter

peft = pytest.importorskip("peft")  # imported at collection: its import-time warnings stay out of the reports
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

QV = ["q_proj", "v_proj"]


def bank_state(bank: AdapterBank) -> tuple:
    """Everything observable about a bank, cloned: stacks, slot table, version."""
    tensors = [t.detach().clone() for t in bank.storage.tensors()]
    members = {r: list(m) for r, m in getattr(bank.storage, "members", {}).items()}
    return tensors, list(bank._slots), bank.version, members


def assert_bank_unchanged(bank: AdapterBank, before: tuple) -> None:
    tensors, slots, version, members = before
    now = bank_state(bank)
    assert now[1] == slots and now[2] == version and now[3] == members
    assert len(now[0]) == len(tensors) and all(torch.equal(a, b) for a, b in zip(now[0], tensors, strict=True))


def trained_like(model, r, targets, seed, alpha=None, rslora=False):
    """A lorakit LoRA model of ``model`` with random nonzero A and B (stands in for a trained adapter)."""
    m = apply_lora(copy.deepcopy(model), LoRAConfig(r=r, alpha=alpha or 2 * r, target_modules=targets, rslora=rslora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)
    return m


@pytest.mark.parametrize("layout", ["padded", "grouped"])
def test_stacks_hold_A_and_scaled_B(layout):
    base = tiny_llama()
    tensors, config = random_adapter(base, 4, QV, alpha=6, rslora=True, seed=1)
    bank = AdapterBank(base, QV, max_rank=8, capacity=3, layout=layout)
    slot = bank.add_tensors("a", tensors, config)
    s = lora_scaling(4, 6, rslora=True)
    for name in bank.shapes:
        a, b = tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"]
        if layout == "padded":
            A, B = bank.storage.A[name][slot], bank.storage.B[name][slot]
            assert A.shape == (8, a.shape[1]) and B.shape == (b.shape[0], 8)
            assert torch.equal(A[:4], a) and torch.allclose(B[:, :4], s * b) and not A[4:].any() and not B[:, 4:].any()
        else:
            A, B = bank.storage.A[name][4][0], bank.storage.B[name][4][0]
            assert torch.equal(A, a) and torch.allclose(B, s * b)
    info = bank.info("a")
    assert (info.slot, info.rank, info.scaling, set(info.layers)) == (0, 4, pytest.approx(s), set(bank.shapes))


def test_add_from_directory_model_and_tensors_give_the_same_stacks(tmp_path):
    base = tiny_llama()
    ours = trained_like(base, 4, QV, seed=3)
    save_adapter(ours, tmp_path / "lorakit")
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=QV))
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    theirs.save_pretrained(tmp_path / "peft")
    banks = []
    for source in (tmp_path / "lorakit", tmp_path / "peft", str(tmp_path / "peft"), ours):
        bank = AdapterBank(base, QV, max_rank=4, capacity=1)
        bank.add("x", source)
        banks.append(bank)
    for bank in banks[1:]:
        assert all(torch.equal(a, b) for a, b in zip(bank.storage.tensors(), banks[0].storage.tensors(), strict=True))


@pytest.mark.parametrize("layout", ["padded", "grouped"])
def test_remove_frees_the_slot_and_keeps_the_others(layout):
    base = tiny_llama()
    bank = AdapterBank(base, QV, max_rank=8, capacity=3, layout=layout)
    adapters = [random_adapter(base, r, QV, seed=i) for i, r in enumerate((2, 8, 2))]
    ids = [bank.add_tensors(f"a{i}", t, c) for i, (t, c) in enumerate(adapters)]
    assert ids == [0, 1, 2] and len(bank) == 3 and "a1" in bank
    before = {n: bank.adapter_nbytes(n) for n in ("a1", "a2")}
    info = bank.remove("a0")
    assert info.name == "a0" and bank.occupied == [1, 2] and "a0" not in bank
    assert {n: bank.adapter_nbytes(n) for n in ("a1", "a2")} == before
    if layout == "grouped":  # a2 moved to position 0 of the rank-2 group; its numbers are unchanged
        name = next(iter(bank.shapes))
        assert bank.storage.members == {2: [2], 8: [1]}
        assert torch.equal(bank.storage.A[name][2][0], adapters[2][0][f"{PEFT_PREFIX}{name}.lora_A.weight"])
    else:
        assert not any(t[0].any() for t in bank.storage.tensors())  # the freed slot is zeroed
    assert bank.add_tensors("again", *adapters[0]) == 0  # the lowest free slot is reused
    bank.remove(1)
    assert bank.occupied == [0, 2]


def test_memory_per_adapter_padded_vs_grouped():
    base = tiny_llama()  # hidden 32, GQA: q_proj 32 -> 32, v_proj 32 -> 16
    d = {"q_proj": 32 + 32, "v_proj": 32 + 16}
    per_layer = d["q_proj"] + d["v_proj"]
    n_layers = 2
    banks = {lay: AdapterBank(base, QV, max_rank=16, capacity=4, layout=lay) for lay in ("padded", "grouped")}
    for bank in banks.values():
        bank.add_tensors("r4", *random_adapter(base, 4, QV, seed=0))
        bank.add_tensors("r16", *random_adapter(base, 16, QV, seed=1))
        bank.add_tensors("q-only", *random_adapter(base, 4, ["q_proj"], seed=2))
    padded, grouped = banks["padded"], banks["grouped"]
    assert padded.nbytes() == 4 * 16 * per_layer * n_layers * 4  # capacity slots of r_max, fp32
    assert padded.adapter_nbytes("r4") == 16 * per_layer * n_layers * 4
    assert grouped.adapter_nbytes("r4") == 4 * per_layer * n_layers * 4
    assert grouped.adapter_nbytes("r16") == padded.adapter_nbytes("r16")
    assert padded.exact_nbytes("q-only") == grouped.exact_nbytes("q-only") == 4 * d["q_proj"] * n_layers * 4
    assert grouped.nbytes() == sum(grouped.adapter_nbytes(n) for n in grouped.adapters)
    report = padded.memory()
    assert report["occupied_bytes"] == 3 * padded.adapter_nbytes("r4")
    assert report["padding_overhead"] > grouped.memory()["padding_overhead"] > 0  # q-only is zero in v_proj
    assert set(report["per_adapter"]) == {"r4", "r16", "q-only"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bank_dtype_follows_the_base_or_is_given(dtype):
    base = tiny_llama().to(dtype)
    assert AdapterBank(base, QV).dtype == dtype
    bank = AdapterBank(base, QV, dtype=torch.float32)
    bank.add_tensors("a", *random_adapter(base, 4, QV))
    assert all(t.dtype == torch.float32 for t in bank.storage.tensors())


# ------------------------------------------------------------------------------------------- refusals


def refuses(bank, exc, match, call):
    before = bank_state(bank)
    with pytest.raises(exc, match=match):
        call()
    assert_bank_unchanged(bank, before)


@pytest.fixture
def llama_bank():
    base = tiny_llama()
    bank = AdapterBank(base, QV, max_rank=8, capacity=2)
    bank.add_tensors("a", *random_adapter(base, 4, QV, seed=0))
    return base, bank


def test_rank_above_max_rank(llama_bank):
    base, bank = llama_bank
    refuses(bank, ValueError, "r=16 > the bank's max_rank=8",
            lambda: bank.add_tensors("b", *random_adapter(base, 16, QV)))


def test_adapter_for_a_base_of_other_shapes(llama_bank, tmp_path):
    _, bank = llama_bank
    import transformers

    wider = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    save_adapter(trained_like(wider, 4, QV, seed=1), tmp_path)
    refuses(bank, ValueError, "has shape .*an adapter for another base", lambda: bank.add("wide", tmp_path))


def test_adapter_whose_layers_the_base_does_not_have(llama_bank, tmp_path):
    _, bank = llama_bank
    save_adapter(trained_like(tiny_lm(), 4, QV, seed=1), tmp_path)  # TinyLM names: layers.0.self_attn.q_proj
    refuses(bank, ValueError, "which this base model does not have", lambda: bank.add("tiny", tmp_path))


def test_adapter_on_layers_the_bank_does_not_serve(llama_bank):
    base, bank = llama_bank
    refuses(bank, ValueError, "which the bank does not serve",
            lambda: bank.add_tensors("b", *random_adapter(base, 4, ["q_proj", "k_proj"])))


def test_config_that_disagrees_with_the_weights(llama_bank):
    base, bank = llama_bank
    tensors, _ = random_adapter(base, 4, ["q_proj"])
    refuses(bank, ValueError, "selects .* but its weights adapt",
            lambda: bank.add_tensors("b", tensors, LoRAConfig(r=4, target_modules=QV)))
    refuses(bank, ValueError, "unexpected tensor key",
            lambda: bank.add_tensors("b", {**tensors, "base_model.model.x.lora_magnitude_vector": torch.ones(3)},
                                     LoRAConfig(r=4, target_modules=["q_proj"])))
    half = {k: v for k, v in tensors.items() if "lora_A" in k}
    refuses(bank, ValueError, "needs lora_A and lora_B",
            lambda: bank.add_tensors("b", half, LoRAConfig(r=4, target_modules=["q_proj"])))


def test_dora_pissa_and_adalora_are_refused(llama_bank, tmp_path):
    base, bank = llama_bank
    tensors, _ = random_adapter(base, 4, QV)
    refuses(bank, ValueError, "is DoRA", lambda: bank.add_tensors("b", tensors, LoRAConfig(r=4, use_dora=True)))
    refuses(bank, ValueError, "is PiSSA", lambda: bank.add_tensors("b", tensors, LoRAConfig(r=4, init="pissa")))
    from lorakit import AdaLoRAConfig, apply_adalora

    ada = apply_adalora(copy.deepcopy(base), AdaLoRAConfig(target_r=2, init_r=4, target_modules=QV, total_step=10))
    save_adapter(ada, tmp_path)
    refuses(bank, ValueError, "serves plain LoRA", lambda: bank.add("ada", tmp_path))


def test_values_that_overflow_the_bank_dtype():
    base = tiny_llama().half()
    bank = AdapterBank(base, QV, max_rank=8, capacity=2)
    tensors, config = random_adapter(base, 4, QV)
    tensors = {k: v * 1e6 if "lora_B" in k else v for k, v in tensors.items()}
    refuses(bank, ValueError, "overflows the bank's dtype torch.float16",
            lambda: bank.add_tensors("big", tensors, config))
    nan = {k: v.clone() for k, v in random_adapter(base, 4, QV)[0].items()}
    next(iter(nan.values()))[0, 0] = float("nan")
    refuses(bank, ValueError, "finite floating-point", lambda: bank.add_tensors("nan", nan, config))


def test_names_slots_and_capacity(llama_bank):
    base, bank = llama_bank
    tensors, config = random_adapter(base, 4, QV, seed=5)
    refuses(bank, ValueError, "already in the bank", lambda: bank.add_tensors("a", tensors, config))
    refuses(bank, TypeError, "name must be a non-empty string", lambda: bank.add_tensors("", tensors, config))
    refuses(bank, TypeError, "config must be a lorakit.LoRAConfig", lambda: bank.add_tensors("b", tensors, {"r": 4}))
    bank.add_tensors("b", tensors, config)
    refuses(bank, ValueError, "the bank is full", lambda: bank.add_tensors("c", tensors, config))
    refuses(bank, ValueError, "is not in the bank", lambda: bank.remove("zzz"))
    refuses(bank, ValueError, "is not an occupied slot", lambda: bank.remove(5))
    refuses(bank, TypeError, "name .* or a slot id", lambda: bank.remove(1.0))
    refuses(bank, ValueError, "does not exist", lambda: bank.add("d", "/nonexistent/adapter"))
    refuses(bank, ValueError, "no LoRA layers", lambda: bank.add("d", copy.deepcopy(base)))
    refuses(bank, TypeError, "source must be an adapter directory", lambda: bank.add("d", {"r": 4}))


def test_constructor_validates():
    base = tiny_llama()
    with pytest.raises(ValueError, match="max_rank must be a positive int"):
        AdapterBank(base, QV, max_rank=0)
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        AdapterBank(base, QV, capacity=2.5)
    with pytest.raises(ValueError, match="layout must be one of"):
        AdapterBank(base, QV, layout="paged")
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        AdapterBank(base, QV, dtype=torch.int8)
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        AdapterBank(base, ["query"])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        AdapterBank("llama", QV)
    assert "layout='padded'" in repr(AdapterBank(base, QV))
