"""MultiLoRAModel: every row equals its own single-adapter model (merged and unmerged) and PEFT's mixed batch."""

from __future__ import annotations

import copy

import pytest
import torch
from builders import logits, peft_layers, tiny_llama, tiny_lm
from snapshot import assert_unchanged, snapshot
from test_serving_bank import assert_bank_unchanged, bank_state, trained_like

from lorakit import load_adapter, merge_lora, save_adapter
from lorakit.serving import AdapterBank, BatchedLoRALinear, MultiLoRAModel, random_adapter
from lorakit.serving.kernels import KERNELS

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*"),
]

QV = ["q_proj", "v_proj"]
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: (rank, alpha, rslora, targets): mixed ranks, scalings and target sets, as real adapter collections are.
SPECS = [(4, 8, False, QV), (8, 4, True, ["q_proj"]), (2, 6, False, ALL7)]
ROW_ADAPTERS = [0, -1, 2, 1, 0, 2]  # row i uses adapter ROW_ADAPTERS[i]; -1: the base model alone


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def saved_adapters(base, tmp_path) -> list:
    dirs = []
    for i, (r, alpha, rslora, targets) in enumerate(SPECS):
        save_adapter(trained_like(base, r, targets, seed=10 + i, alpha=alpha, rslora=rslora), tmp_path / f"a{i}")
        dirs.append(tmp_path / f"a{i}")
    return dirs


def served_model(base, dirs, layout="padded", kernel="bgmv", dtype=None):
    bank = AdapterBank(base, ALL7, max_rank=8, capacity=4, layout=layout, dtype=dtype)
    for i, d in enumerate(dirs):
        assert bank.add(f"a{i}", d) == i
    return MultiLoRAModel(copy.deepcopy(base), bank, kernel=kernel)


def batch(vocab: int, rows: int = len(ROW_ADAPTERS), seq: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build", [tiny_llama, tiny_lm], ids=["hf-llama", "tinylm"])
@pytest.mark.parametrize("layout", ["padded", "grouped"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seq", [1, 7], ids=["decode", "prefill"])
def test_each_row_equals_its_single_adapter_model_merged_and_unmerged(tmp_path, build, layout, kernel, seq):
    base = build()
    dirs = saved_adapters(base, tmp_path)
    served = served_model(base, dirs, layout, kernel)
    vocab = 64 if build is tiny_llama else 32
    ids = batch(vocab, seq=seq)
    with torch.no_grad():
        got = logits_of(served(ids, adapter_ids=ROW_ADAPTERS))
        for row, a in enumerate(ROW_ADAPTERS):
            if a < 0:
                want = logits(base, ids[row:row + 1])
                assert rel_err(got[row:row + 1], want) < 1e-6
                continue
            single = load_adapter(copy.deepcopy(base), dirs[a])
            unmerged = logits(single, ids[row:row + 1])
            merged = logits(merge_lora(single), ids[row:row + 1])
            if seq > 1:  # (with one token, attention returns v whatever q is: a q_proj-only adapter does nothing)
                assert rel_err(unmerged, logits(base, ids[row:row + 1])) > 1e-3  # the adapter matters
            assert rel_err(got[row:row + 1], unmerged) < 1e-5
            assert rel_err(got[row:row + 1], merged) < 1e-5


@pytest.mark.parametrize("build", [tiny_llama, tiny_lm], ids=["hf-llama", "tinylm"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_equals_peft_mixed_batch_inference(tmp_path, build, kernel):
    from peft import PeftModel

    base = build()
    dirs = saved_adapters(base, tmp_path)
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), dirs[0], adapter_name="a0")
    for i, d in enumerate(dirs[1:], start=1):
        theirs.load_adapter(d, adapter_name=f"a{i}")
    theirs.eval()
    assert len(peft_layers(theirs)) > 0
    ours = served_model(base, dirs, "grouped" if kernel == "sgmv" else "padded", kernel)
    ids = batch(64 if build is tiny_llama else 32)
    names = ["__base__" if a < 0 else f"a{a}" for a in ROW_ADAPTERS]
    with torch.no_grad():
        want = logits_of(theirs(ids, adapter_names=names))
        got = logits_of(ours(ids, adapter_ids=ROW_ADAPTERS))
        plain = logits(base, ids)
    assert rel_err(want, plain) > 1e-3
    assert rel_err(got, want) < 1e-5


def logits_of(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bank_dtype", ["base", "fp32"])
def test_half_precision_base_close_to_fp32_mixed_batch(tmp_path, dtype, bank_dtype):
    base = tiny_llama()
    dirs = saved_adapters(base, tmp_path)
    want = logits_of(served_model(base, dirs)(batch(64), adapter_ids=ROW_ADAPTERS)).detach()
    low = base.to(dtype)
    served = served_model(low, dirs, dtype=None if bank_dtype == "base" else torch.float32)
    with torch.no_grad():
        got = logits_of(served(batch(64), adapter_ids=ROW_ADAPTERS))
    assert got.dtype == dtype
    assert rel_err(got, want) < 3e-2


@pytest.mark.parametrize("kernel", KERNELS)
def test_autocast_bf16_matches_fp32(tmp_path, kernel):
    base = tiny_llama()
    dirs = saved_adapters(base, tmp_path)
    served = served_model(base, dirs, kernel=kernel)
    ids = batch(64)
    with torch.no_grad():
        want = logits_of(served(ids, adapter_ids=ROW_ADAPTERS))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = logits_of(served(ids, adapter_ids=ROW_ADAPTERS))
    assert rel_err(got, want) < 3e-2


def test_all_base_rows_equal_the_base_model_exactly(tmp_path):
    base = tiny_llama()
    served = served_model(base, saved_adapters(base, tmp_path))
    ids = batch(64)
    with torch.no_grad():
        assert torch.equal(logits_of(served(ids, adapter_ids=[-1] * ids.shape[0])), logits(base, ids))


def test_add_and_remove_while_serving(tmp_path):
    base = tiny_llama()
    dirs = saved_adapters(base, tmp_path)
    served = served_model(base, dirs[:2])
    ids = batch(64)
    bank = served.bank
    with torch.no_grad():
        before = logits_of(served(ids, adapter_ids=[0, 1, 0, 1, 0, 1]))
        new = bank.add("late", dirs[2])
        late = logits_of(served(ids, adapter_ids=[new] * 6))
        single = logits(load_adapter(copy.deepcopy(base), dirs[2]), ids)
        assert rel_err(late, single) < 1e-5
        bank.remove("a1")
        with pytest.raises(ValueError, match=r"adapter_ids\[1\] = 1 is not an adapter in the bank"):
            served(ids, adapter_ids=[0, 1, 0, 1, 0, 1])
        again = logits_of(served(ids, adapter_ids=[0, -1, 0, -1, 0, -1]))
    assert torch.allclose(again[0::2], before[0::2], atol=1e-6)


def test_bind_fixes_the_adapter_ids(tmp_path):
    from lorakit.data import evaluate, make_batch, random_words
    from lorakit.models import load_tiny_lm

    base = load_tiny_lm()  # the course model: its sequences are the Caesar task's
    served = served_model(base, saved_adapters(base, tmp_path))
    batch_ = make_batch(random_words(6, 0), "caesar")
    bound = served.bind(ROW_ADAPTERS)
    with torch.no_grad():
        assert torch.equal(bound(batch_.input_ids), served(batch_.input_ids, adapter_ids=ROW_ADAPTERS))
    assert 0.0 <= evaluate(bound, batch_)["exact_match"] <= 1.0
    with pytest.raises(ValueError, match="is not an adapter in the bank"):
        served.bind([7] * 6)


def test_unload_gives_back_the_base_model(tmp_path):
    base = tiny_llama()
    served = served_model(base, saved_adapters(base, tmp_path))
    assert sum(isinstance(m, BatchedLoRALinear) for m in served.modules()) == 2 * 7
    plain = served.unload()
    assert not any(isinstance(m, BatchedLoRALinear) for m in plain.modules())
    with torch.no_grad():
        assert torch.equal(logits(plain, batch(64)), logits(base, batch(64)))


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def served(tmp_path):
    base = tiny_llama()
    return base, served_model(base, saved_adapters(base, tmp_path))


@pytest.mark.parametrize(("adapter_ids", "exc", "match"), [
    ([0, 1, 2], ValueError, "adapter_ids has 3 entries but the batch has 6 rows"),
    ([0, 1, 2, 3, 0, 1], ValueError, r"adapter_ids\[3\] = 3 is not an adapter in the bank"),
    ([0, 1, 2, -2, 0, 1], ValueError, r"adapter_ids\[3\] = -2 is not an adapter"),
    (torch.zeros(6), TypeError, "adapter_ids must hold integers"),
    (torch.zeros(6, 1, dtype=torch.long), ValueError, "adapter_ids must be 1-D"),
    (["a0"] * 6, TypeError, "adapter_ids must hold ints"),
    ("a0", TypeError, "adapter_ids must be a 1-D integer tensor or a list"),
    ([True] * 6, TypeError, "adapter_ids must hold ints"),
])
def test_bad_adapter_ids_leave_model_and_bank_unchanged(served, adapter_ids, exc, match):
    _, model = served
    before, bank_before = snapshot(model), bank_state(model.bank)
    with pytest.raises(exc, match=match):
        model(batch(64), adapter_ids=adapter_ids)
    assert_unchanged(model, before)
    assert_bank_unchanged(model.bank, bank_before)
    assert model._context.plan is None


def test_input_dtype_mismatch(served):
    base, model = served
    embeds = torch.randn(6, 7, 32, dtype=torch.float64)
    with pytest.raises(TypeError, match="got an input of dtype torch.float64"):
        model(inputs_embeds=embeds, adapter_ids=ROW_ADAPTERS)
    assert model._context.plan is None


def test_served_layer_outside_the_wrapper(served):
    _, model = served
    layer = next(m for m in model.modules() if isinstance(m, BatchedLoRALinear))
    with pytest.raises(RuntimeError, match="outside MultiLoRAModel.forward"):
        layer(torch.randn(2, layer.in_features))


def test_wrapping_refusals_leave_the_model_unchanged(served, tmp_path):
    base, model = served
    import transformers

    wider = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    for other, bank, exc, match in [
        (wider, model.bank, ValueError, "the bank was built for another base"),
        (tiny_lm(), model.bank, ValueError, "which model does not have"),
        (copy.deepcopy(base).to(torch.bfloat16), AdapterBank(base, QV, dtype=torch.float16), TypeError,
         "bank has dtype torch.float16 but layer .* holds torch.bfloat16"),
        (model.model, model.bank, ValueError, "already carries a multi-LoRA serving adapter"),
    ]:
        before = snapshot(other)
        with pytest.raises(exc, match=match):
            MultiLoRAModel(other, bank)
        assert_unchanged(other, before)
    with pytest.raises(ValueError, match="kernel must be one of"):
        MultiLoRAModel(copy.deepcopy(base), model.bank, kernel="punica")
    with pytest.raises(ValueError, match="backend must be one of"):
        MultiLoRAModel(copy.deepcopy(base), model.bank, backend="triton-missing")
    with pytest.raises(TypeError, match="bank must be a lorakit.serving.AdapterBank"):
        MultiLoRAModel(copy.deepcopy(base), {"a": 1})
    with pytest.raises(ValueError, match="kernel must be one of"):
        model.kernel = "fast"
    assert model.kernel == "bgmv"


def test_a_plan_is_refused_after_the_bank_changed(served):
    base, model = served
    plan = model.bank.plan(ROW_ADAPTERS)
    model.bank.add_tensors("new", *random_adapter(base, 2, QV))
    with pytest.raises(RuntimeError, match="plan the batch again"):
        plan.for_tokens(7)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernel", KERNELS)
def test_cuda_matches_cpu(tmp_path, dtype, kernel):
    base = tiny_llama()
    dirs = saved_adapters(base, tmp_path)
    want = logits_of(served_model(base, dirs)(batch(64), adapter_ids=ROW_ADAPTERS)).detach()
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = base.to("cuda", dtype)
    for layout in ("padded", "grouped"):
        served_gpu = served_model(gpu, dirs, layout, kernel)
        with torch.no_grad():
            got = logits_of(served_gpu(batch(64).cuda(), adapter_ids=torch.tensor(ROW_ADAPTERS, device="cuda")))
        assert got.device.type == "cuda"
        assert rel_err(got.cpu(), want) < (1e-5 if dtype == torch.float32 else 3e-2)
