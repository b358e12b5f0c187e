"""lorakit under DDP and FSDP2 with the gloo backend: 2 CPU processes agree with one (notebook 16).

One ``torch.multiprocessing.spawn`` of 2 ranks runs every case (spawning is the slow part), writes each
rank's losses, bytes and rank 0's saved adapter to a temporary directory; the tests compare them with a
single process on the same global batches. Run them alone with ``pytest -m distributed``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

import lorakit
from lorakit.adalora import adalora_layers, adalora_state_dict
from lorakit.distributed import build_model, per_rank_bytes, rank_bytes, save_adapter, shard_model, train_steps
from lorakit.peft import adapter_state_dict as lora_state_dict

pytestmark = pytest.mark.distributed

WORLD = 2
STEPS = 4
#: (method, engine) pairs run on 2 ranks.
CASES = [("lora", "ddp"), ("dora", "ddp"), ("adalora", "ddp"), ("qlora", "ddp"), ("lora", "fsdp"), ("qlora", "fsdp")]
LOSS_TOL, ADAPTER_TOL = 1e-5, 1e-5


def build_hf_lora() -> torch.nn.Module:
    """A tiny Hugging Face LLaMA (random, built from a config: nothing downloaded) with LoRA on q_proj, v_proj."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    return lorakit.apply_lora(model, lorakit.LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for method, engine in CASES:
            model = shard_model(build_model(method, steps=STEPS), engine)
            losses, optimizer = train_steps(model, steps=STEPS)
            measured = rank_bytes(model, optimizer)
            if engine == "fsdp":  # the plain save_adapter refuses shards with a clear error and writes nothing
                try:
                    lorakit.save_adapter(model, Path(out) / f"plain_{method}_{rank}")
                    refused = ""
                except ValueError as err:
                    refused = str(err)
                results[f"refused_{method}"] = refused
            save_adapter(model, Path(out) / f"{method}_{engine}")
            results[f"{method}_{engine}"] = {"losses": losses, "bytes": measured}
        hf = shard_model(build_hf_lora(), "ddp")
        losses, _ = train_steps(hf, steps=STEPS)
        save_adapter(hf, Path(out) / "hf_lora_ddp")
        results["hf_lora_ddp"] = {"losses": losses}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def single() -> dict:
    """One process, the same global batches: losses, adapter tensors and bytes per method."""
    ref = {}
    for method in sorted({m for m, _ in CASES}):
        model = build_model(method, steps=STEPS)
        losses, optimizer = train_steps(model, steps=STEPS)
        ref[method] = {"losses": losses, "adapter": adapter_state_dict(model), "bytes": rank_bytes(model, optimizer),
                       "model": model}
    return ref


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``save_adapter`` writes (PEFT's keys), for LoRA/DoRA/QLoRA and AdaLoRA models."""
    return adalora_state_dict(model) if adalora_layers(model) else lora_state_dict(model)


def _max_abs(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def _rank_results(runs: Path) -> list[dict]:
    return [json.loads((runs / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("method,engine", CASES)
def test_two_ranks_agree_with_one_process(runs, single, method, engine):
    ranks = _rank_results(runs)
    key = f"{method}_{engine}"
    want = single[method]["losses"]
    assert len(set(want)) == STEPS, "the reference run must actually train (the loss changes every step)"
    if method != "adalora":  # AdaLoRA starts from Lambda = 0 and barely moves the loss in 4 steps
        assert want[-1] < want[0] - 1.0
    for r in ranks:
        got = r[key]["losses"]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < LOSS_TOL, (key, got, want)
    saved = load_file(runs / key / lorakit.peft.ADAPTER_WEIGHTS)
    ref = single[method]["adapter"]
    assert set(saved) == set(ref)
    init = build_ref_adapter(method)
    moved = max(_max_abs(ref[k] - init[k]) for k in ref if ref[k].shape == init[k].shape)
    assert moved > 1e-3, "the adapters must have moved away from their initialisation"
    assert all(saved[k].shape == ref[k].shape for k in ref), "the same triplets must be pruned"
    diff = max(_max_abs(saved[k] - ref[k]) for k in ref)
    assert diff < ADAPTER_TOL, (key, diff)


_INIT: dict[str, dict[str, torch.Tensor]] = {}


def build_ref_adapter(method: str) -> dict[str, torch.Tensor]:
    if method not in _INIT:
        _INIT[method] = adapter_state_dict(build_model(method, steps=STEPS))
    return _INIT[method]


def test_hugging_face_model_under_ddp_agrees_with_one_process(runs):
    model = build_hf_lora()
    want, _ = train_steps(model, steps=STEPS)
    assert want[-1] < want[0]
    for r in _rank_results(runs):
        assert max(abs(a - b) for a, b in zip(r["hf_lora_ddp"]["losses"], want, strict=True)) < LOSS_TOL
    saved = load_file(runs / "hf_lora_ddp" / lorakit.peft.ADAPTER_WEIGHTS)
    ref = lora_state_dict(model)
    assert set(saved) == set(ref) and max(_max_abs(saved[k] - ref[k]) for k in ref) < ADAPTER_TOL


def test_plain_save_adapter_refuses_a_sharded_model(runs):
    for r in _rank_results(runs):
        for method in ("lora", "qlora"):
            assert "lorakit.distributed.save_adapter" in r[f"refused_{method}"]
    assert not list(runs.glob("plain_*")), "a refused save must not write anything"


def test_adalora_prunes_the_same_ranks_on_every_rank(runs, single):
    cfg = json.loads((runs / "adalora_ddp" / lorakit.peft.ADAPTER_CONFIG).read_text())
    ref_model = single["adalora"]["model"]
    from lorakit.adalora import rank_pattern_of

    want = rank_pattern_of(ref_model)
    assert want is not None and any(not all(v) for v in want.values()), "the reference run must prune"
    assert cfg["rank_pattern"] == want


def test_saved_adapter_reloads_to_the_single_process_outputs(runs, single):
    ids, _ = lorakit.distributed.global_batch(99)
    for method, engine in CASES:
        fresh = build_model(method, steps=STEPS)
        lorakit.load_adapter(fresh, runs / f"{method}_{engine}")
        with torch.no_grad():
            got, want = fresh(ids), single[method]["model"](ids)
        assert (got - want).abs().max().item() < 1e-4 * want.abs().max().item(), (method, engine)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_fsdp_bytes_per_rank_match_the_derivation(runs, single, method):
    """FSDP2 shards weights, gradients and Adam's moments: each rank holds 1/N of each (up to dim-0 padding)."""
    one = single[method]["bytes"]
    for r in _rank_results(runs):
        got = r[f"{method}_fsdp"]["bytes"]
        for kind in ("frozen_weights", "trainable_weights", "gradients", "optimizer_states"):
            want = one[kind] / WORLD
            assert abs(got[kind] - want) <= 0.02 * one[kind], (method, kind, got[kind], want)
    ddp = [r[f"{method}_ddp"]["bytes"] for r in _rank_results(runs)] if method != "lora" else None
    if ddp:
        assert all(d == one for d in ddp), "DDP replicates: every rank holds what one process holds"


def test_ddp_replicates_and_derivation_agrees(runs, single):
    one = single["lora"]["bytes"]
    for r in _rank_results(runs):
        assert r["lora_ddp"]["bytes"] == one
    model = single["lora"]["model"]
    n = sum(p.numel() for p in model.parameters())
    nt = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fp32 = per_rank_bytes(n, nt, WORLD, "ddp", weight_bytes=4, grad_bytes=4, master_bytes=0, optimizer_bytes=8)
    assert fp32.weights == one["frozen_weights"] + one["trainable_weights"]
    assert fp32.gradients == one["gradients"] and fp32.optimizer_states == one["optimizer_states"]
    sharded = per_rank_bytes(n, nt, WORLD, "fsdp", weight_bytes=4, grad_bytes=4, master_bytes=0, optimizer_bytes=8)
    assert sharded.total == pytest.approx(fp32.total / WORLD)


def test_per_rank_bytes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="engine"):
        per_rank_bytes(10, 1, 2, "zero")
    with pytest.raises(ValueError, match="world_size"):
        per_rank_bytes(10, 1, 0, "ddp")
    with pytest.raises(ValueError, match="world_size"):
        per_rank_bytes(10, 1, 2, "single")
    with pytest.raises(ValueError, match="n_trainable"):
        per_rank_bytes(10, 11, 2, "fsdp")
