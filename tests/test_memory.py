"""Tests of ``lorakit.memory`` (notebook 05): the 16-bytes-per-parameter model and the measurements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit import LoRAConfig, apply_lora
from lorakit.data import caesar_task
from lorakit.memory import (
    ATTENTION,
    LLAMA_SHAPES,
    MLP,
    cuda_peak_bytes,
    gradient_bytes,
    llama_linear_shapes,
    llama_parameter_count,
    lora_parameter_count,
    optimizer_state_bytes,
    parameter_bytes,
    saved_activation_bytes,
    tensor_bytes,
    training_bytes,
)
from lorakit.models import load_tiny_lm


# --------------------------------------------------------------------------- eq. 1
@pytest.mark.parametrize("n", [0, 1, 1000, 6_738_415_616])
def test_full_finetuning_is_16_bytes_per_parameter(n):
    tb = training_bytes(n, n)
    assert tb.total == 16 * n
    assert (tb.weights, tb.gradients, tb.master_weights, tb.optimizer_states) == (2 * n, 2 * n, 4 * n, 8 * n)


def test_lora_case():
    base, adapter = 1_000_000, 4_000
    tb = training_bytes(base + adapter, adapter)
    assert tb.total == 2 * (base + adapter) + 14 * adapter
    assert tb.weights == 2 * (base + adapter)
    assert tb.gradients == 2 * adapter and tb.master_weights == 4 * adapter and tb.optimizer_states == 8 * adapter


def test_frozen_model_costs_only_weights():
    assert training_bytes(100, 0).total == 200


def test_custom_byte_sizes_and_gib():
    tb = training_bytes(2**30, 2**30, weight_bytes=4, grad_bytes=4, master_bytes=0, optimizer_bytes=8)
    assert tb.total == 16 * 2**30
    gib = tb.as_gib()
    assert gib["total"] == 16.0 and gib["weights"] == 4.0 and set(gib) >= {"gradients", "master_weights"}


@pytest.mark.parametrize(
    "args, match",
    [((-1, 0), "n_params"), ((10, -1), "n_trainable"), ((10, 11), "cannot exceed"), ((1.5, 1), "n_params"),
     ((True, 0), "n_params"), ((10, "1"), "n_trainable")],
)
def test_training_bytes_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        training_bytes(*args)


# --------------------------------------------------------------------------- LLaMA shapes
@pytest.mark.parametrize("size, expected", [("7B", 6.74e9), ("13B", 13.0e9), ("33B", 32.5e9), ("65B", 65.2e9)])
def test_llama_parameter_count(size, expected):
    assert llama_parameter_count(size) == pytest.approx(expected, rel=0.01)


def test_llama_7b_exact_count():
    # 2 * 32000 * 4096 (embeddings + head) + 32 * (4 * 4096^2 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    assert llama_parameter_count("7B") == 6_738_415_616


def test_llama_linear_shapes():
    shapes = llama_linear_shapes("7B")
    assert set(shapes) == set(ATTENTION) | set(MLP)
    assert shapes["q_proj"] == (4096, 4096) and shapes["down_proj"] == (11008, 4096)
    assert shapes["gate_proj"] == shapes["up_proj"] == (4096, 11008)


@pytest.mark.parametrize("size", sorted(LLAMA_SHAPES))
@pytest.mark.parametrize("r", [1, 8, 64])
@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ATTENTION, ATTENTION + MLP])
def test_lora_parameter_count_formula(size, r, targets):
    s = LLAMA_SHAPES[size]
    d, f, n_layers = s["d_model"], s["d_ff"], s["n_layers"]
    per_target = {"q_proj": 2 * d, "k_proj": 2 * d, "v_proj": 2 * d, "o_proj": 2 * d,
                  "gate_proj": d + f, "up_proj": d + f, "down_proj": f + d}
    assert lora_parameter_count(size, r, targets) == n_layers * r * sum(per_target[t] for t in targets)


def test_lora_parameter_count_known_value():
    # Hu et al. (2021): r=8 on W_q, W_v of a 4096-wide, 32-layer model is 4.2M parameters.
    assert lora_parameter_count("7B", 8, ("q_proj", "v_proj")) == 4_194_304
    assert lora_parameter_count("7B", 8) == 2 * lora_parameter_count("7B", 8, ("q_proj", "v_proj"))


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (llama_parameter_count, ("7b",), "size"),
        (llama_parameter_count, ("70B",), "size"),
        (lora_parameter_count, ("7B", 0), "r must"),
        (lora_parameter_count, ("7B", -8), "r must"),
        (lora_parameter_count, ("7B", 8.0), "r must"),
        (lora_parameter_count, ("7B", True), "r must"),
        (lora_parameter_count, ("7B", 8, ["lm_head"]), "lm_head"),
        (lora_parameter_count, ("3B", 8), "size"),
        (llama_linear_shapes, ("", ), "size"),
    ],
)
def test_bad_inputs(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


# --------------------------------------------------------------------------- measuring tensors
def test_tensor_bytes_counts_shared_storage_once():
    t = torch.zeros(100)
    assert tensor_bytes([t]) == 400
    assert tensor_bytes([t, t, t[:10], t[50:], t.view(10, 10)]) == 400
    assert tensor_bytes([t, torch.zeros(10, dtype=torch.float16)]) == 420
    assert tensor_bytes([]) == 0


def test_parameter_gradient_and_optimizer_bytes():
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5, bias=False))
    model[1].weight.requires_grad_(False)
    n_train, n_frozen = 10 * 20 + 20, 20 * 5
    assert parameter_bytes(model) == 4 * (n_train + n_frozen)
    assert parameter_bytes(model, trainable=True) == 4 * n_train
    assert parameter_bytes(model, trainable=False) == 4 * n_frozen
    assert gradient_bytes(model) == 0
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    assert optimizer_state_bytes(opt) == 0
    model(torch.randn(3, 10)).sum().backward()
    assert gradient_bytes(model) == 4 * n_train
    opt.step()
    # exp_avg and exp_avg_sq per trainable parameter (fp32) + one scalar step tensor per parameter tensor
    assert optimizer_state_bytes(opt) == 2 * 4 * n_train + 2 * 4


def test_parameter_bytes_half():
    model = nn.Linear(8, 8).to(torch.bfloat16)
    assert parameter_bytes(model) == 2 * (64 + 8)


# --------------------------------------------------------------------------- saved activations
@pytest.fixture(scope="module")
def activation_measurements():
    ids = caesar_task(n_train=32, n_eval=8)[0].input_ids
    full = load_tiny_lm().train()
    for p in full.parameters():
        p.requires_grad_(True)
    lora = apply_lora(load_tiny_lm(), LoRAConfig(r=8, alpha=16, target_modules="all-linear")).train()
    result = {
        "full": saved_activation_bytes(full, lambda: full(ids)),
        "lora": saved_activation_bytes(lora, lambda: lora(ids)),
    }
    lora.gradient_checkpointing = True
    result["lora_ckpt"] = saved_activation_bytes(lora, lambda: lora(ids))
    full.gradient_checkpointing = True
    result["full_ckpt"] = saved_activation_bytes(full, lambda: full(ids))
    lora.eval()  # checkpointing is off outside training
    result["lora_ckpt_eval"] = saved_activation_bytes(lora, lambda: lora(ids))
    with torch.no_grad():
        result["no_grad"] = saved_activation_bytes(lora, lambda: lora(ids))
    return result


def test_lora_saves_most_of_full_finetuning_activations(activation_measurements):
    m = activation_measurements
    assert m["full"] > 0 and m["lora"] > 0
    # Measured 0.84 on this 2-layer model (all-linear, r=8): a frozen layer still needs its input for
    # the backward. The missing ~16% (about six [batch, seq, d_model] fp32 tensors) are what only weight
    # gradients need: the normalised inputs of the 5 RMSNorm weights and the input of lm_head.
    assert m["lora"] >= 0.75 * m["full"]
    assert m["lora"] <= m["full"]


def test_gradient_checkpointing_saves_less(activation_measurements):
    m = activation_measurements
    assert m["lora_ckpt"] < m["lora"]
    assert m["full_ckpt"] < m["full"]
    assert m["lora_ckpt"] < 0.5 * m["lora"]
    assert m["lora_ckpt_eval"] == m["lora"]


def test_no_grad_saves_nothing(activation_measurements):
    assert activation_measurements["no_grad"] == 0


def test_saved_activation_bytes_excludes_parameters():
    layer = nn.Linear(64, 64, bias=False)
    x = torch.randn(2, 64)
    # linear saves its input (2*64 fp32) and the weight; the weight is a parameter and is excluded
    assert saved_activation_bytes(layer, lambda: layer(x)) == 2 * 64 * 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_peak_bytes_without_cuda():
    with pytest.raises(RuntimeError, match="needs CUDA"):
        cuda_peak_bytes(lambda: None)


@pytest.mark.cuda
def test_cuda_peak_bytes_on_cuda():
    def alloc():
        x = torch.empty(1024, 1024, device="cuda")  # 4 MiB
        return x.sum()

    assert cuda_peak_bytes(alloc) >= 4 * 2**20
