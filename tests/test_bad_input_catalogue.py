"""A catalogue of bad inputs across lorakit's core public API: every case is one distinct mistake a user
can make, asserts a clear TypeError/ValueError that names the argument (or the problem), and checks that
the model it was given is exactly as it was (tests/snapshot.py).

Cases are ``(id, make_model, call, exception, message regex)``; ``make_model`` builds a fresh model (or
None when the function takes no model), ``call(model, tmp_path)`` makes the mistake.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from builders import tiny_lm
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit import data, memory, models, results, timing, training, widgets
from lorakit.functional import lora_linear
from lorakit.peft import LoRAConfig, check_target_modules, find_target_modules, select_target_modules, set_submodule

QV = ["q_proj", "v_proj"]


def plain() -> nn.Module:
    return tiny_lm()


def lora() -> nn.Module:
    model = lorakit.apply_lora(tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules=QV))
    with torch.no_grad():
        for layer in lorakit.lora_layers(model).values():
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(0))
    return model


def dora_zero_last() -> nn.Module:
    model = lorakit.apply_lora(tiny_lm(), LoRAConfig(r=2, target_modules=QV, use_dora=True))
    with torch.no_grad():
        list(lorakit.lora_layers(model).values())[-1].magnitude[3] = 0.0
    return model


def nan_last_weight() -> nn.Module:
    model = tiny_lm()
    with torch.no_grad():
        model.layers[1].self_attn.v_proj.weight[0, 0] = float("nan")
    return model


def lora_with_nan_adapter() -> nn.Module:
    model = lora()
    with torch.no_grad():
        list(lorakit.lora_layers(model).values())[-1].lora_A[0, 0] = float("inf")
    return model


def saved(tmp_path, edit=None):
    """A valid adapter directory for ``lora()`` (optionally with its config edited)."""
    directory = tmp_path / "adapter"
    lorakit.save_adapter(lora(), directory)
    if edit is not None:
        path = directory / "adapter_config.json"
        raw = json.loads(path.read_text())
        edit(raw)
        path.write_text(json.dumps(raw))
    return directory


def cfg(**kw):
    return lambda m, p: LoRAConfig(**kw)


def peft_dict(**changes):
    def call(m, p):
        raw = LoRAConfig().to_peft_dict()
        raw.update(changes)
        return LoRAConfig.from_peft_dict(raw)
    return call


def load_edited(**changes):
    return lambda m, p: lorakit.load_adapter(m, saved(p, lambda raw: raw.update(changes)))


x8, w68, A28, B62 = torch.randn(5, 8), torch.randn(6, 8), torch.randn(2, 8), torch.randn(6, 2)

CASES = [
    # ---- LoRAConfig fields
    ("config-r-zero", None, cfg(r=0), ValueError, "^r must be a positive int"),
    ("config-r-negative-numpy", None, cfg(r=np.int64(-2)), ValueError, "^r must be a positive int"),
    ("config-r-float", None, cfg(r=8.0), TypeError, "^r must be an int, got float"),
    ("config-r-numpy-float", None, cfg(r=np.float32(8)), TypeError, "^r must be an int, got float32"),
    ("config-r-bool", None, cfg(r=True), TypeError, "^r must be an int, got bool"),
    ("config-r-string", None, cfg(r="8"), TypeError, "^r must be an int, got str"),
    ("config-alpha-zero", None, cfg(alpha=0), ValueError, "^alpha must be a finite number > 0"),
    ("config-alpha-inf", None, cfg(alpha=math.inf), ValueError, "^alpha must be a finite number > 0"),
    ("config-alpha-numpy-nan", None, cfg(alpha=np.float64("nan")), ValueError, "^alpha must be a finite number"),
    ("config-alpha-none", None, cfg(alpha=None), TypeError, "^alpha must be a number"),
    ("config-dropout-one", None, cfg(dropout=1.0), ValueError, r"^dropout must be in \[0, 1\)"),
    ("config-dropout-negative", None, cfg(dropout=-0.5), ValueError, r"^dropout must be in \[0, 1\)"),
    ("config-dropout-string", None, cfg(dropout="0.1"), TypeError, "^dropout must be a number"),
    ("config-init-unknown", None, cfg(init="olora"), ValueError, "^init must be one of"),
    ("config-init-none", None, cfg(init=None), ValueError, "^init must be one of"),
    ("config-rslora-string", None, cfg(rslora="yes"), TypeError, "^rslora must be a bool, got str"),
    ("config-rslora-int", None, cfg(rslora=1), TypeError, "^rslora must be a bool, got int"),
    ("config-use-dora-string", None, cfg(use_dora="false"), TypeError, "^use_dora must be a bool"),
    ("config-targets-empty-list", None, cfg(target_modules=[]), TypeError, "^target_modules must be a non-empty"),
    ("config-targets-empty-string", None, cfg(target_modules=""), ValueError,
     "^target_modules must not be an empty string"),
    ("config-targets-bad-regex", None, cfg(target_modules="(("), ValueError, "^target_modules is not a valid regex"),
    ("config-targets-int", None, cfg(target_modules=3), TypeError, "^target_modules must be a non-empty"),
    ("config-targets-list-of-int", None, cfg(target_modules=[1, 2]), TypeError, "^target_modules must be"),
    ("config-targets-empty-name", None, cfg(target_modules=["q_proj", ""]), TypeError, "^target_modules must be"),
    ("config-targets-dict", None, cfg(target_modules={"q": 1}), TypeError, "^target_modules must be a non-empty"),
    # ---- adapter_config.json read by from_peft_dict
    ("peft-dict-not-dict", None, lambda m, p: LoRAConfig.from_peft_dict([1]), ValueError, "must hold a JSON object"),
    ("peft-dict-type", None, peft_dict(peft_type="IA3"), ValueError, "peft_type must be 'LORA', got 'IA3'"),
    ("peft-dict-rslora-string", None, peft_dict(use_rslora="false"), ValueError,
     "use_rslora must be true or false"),
    ("peft-dict-dora-int", None, peft_dict(use_dora=0), ValueError, "use_dora must be true or false"),
    ("peft-dict-exclude-modules", None, peft_dict(exclude_modules=["lm_head"]), ValueError,
     r"PEFT features not supported by lorakit: \{'exclude_modules'"),
    ("peft-dict-lora-bias", None, peft_dict(lora_bias=True), ValueError, r"not supported.*'lora_bias': True"),
    ("peft-dict-rank-pattern", None, peft_dict(rank_pattern={"q_proj": 4}), ValueError, "'rank_pattern'"),
    ("peft-dict-alpha-pattern", None, peft_dict(alpha_pattern={"q_proj": 4}), ValueError, "'alpha_pattern'"),
    ("peft-dict-fan-in-fan-out", None, peft_dict(fan_in_fan_out=True), ValueError, "'fan_in_fan_out'"),
    ("peft-dict-modules-to-save", None, peft_dict(modules_to_save=["lm_head"]), ValueError, "'modules_to_save'"),
    ("peft-dict-layers-to-transform", None, peft_dict(layers_to_transform=[0]), ValueError, "layers_to_transform"),
    ("peft-dict-layer-replication", None, peft_dict(layer_replication=[[0, 1]]), ValueError, "layer_replication"),
    ("peft-dict-target-parameters", None, peft_dict(target_parameters=["w"]), ValueError, "target_parameters"),
    ("peft-dict-qalora", None, peft_dict(use_qalora=True), ValueError, "'use_qalora'"),
    ("peft-dict-unknown-field", None, peft_dict(use_magic=True), ValueError,
     r"fields unknown to lorakit.*'use_magic'"),
    ("peft-dict-init-olora", None, peft_dict(init_lora_weights="olora"), ValueError,
     "init_lora_weights='olora' is not supported"),
    ("peft-dict-init-pissa-niter", None, peft_dict(init_lora_weights="pissa_niter_16"), ValueError,
     "randomized SVD"),
    ("peft-dict-r-missing", None, lambda m, p: LoRAConfig.from_peft_dict({"peft_type": "LORA", "target_modules": QV}),
     ValueError, "r is missing"),
    ("peft-dict-targets-missing", None, peft_dict(target_modules=None), ValueError, "target_modules is missing"),
    ("peft-dict-r-string", None, peft_dict(r="8"), ValueError, "r must be an int, got str"),
    ("peft-dict-alpha-string", None, peft_dict(lora_alpha="16"), ValueError, "alpha must be a number"),
    # ---- target selection helpers
    ("targets-helper-empty", None, lambda m, p: check_target_modules([]), TypeError, "target_modules must be"),
    ("find-targets-not-module", None, lambda m, p: find_target_modules("model", QV), TypeError,
     "model must be an nn.Module"),
    ("find-targets-ints", plain, lambda m, p: find_target_modules(m, [1]), TypeError, "target_modules must be"),
    ("select-targets-nothing", plain, lambda m, p: select_target_modules(m, ["nope"]), ValueError,
     "matched no nn.Linear"),
    ("select-targets-norm", plain, lambda m, p: select_target_modules(m, ["norm"]), ValueError,
     "a RMSNorm, but only nn.Linear"),
    ("select-targets-embedding", plain, lambda m, p: select_target_modules(m, ["embed_tokens"]), ValueError,
     "a Embedding, but only nn.Linear"),
    ("select-targets-mlp-block", plain, lambda m, p: select_target_modules(m, ["mlp"]), ValueError, "a MLP"),
    ("select-targets-in-adapter", lora, lambda m, p: select_target_modules(m, "all-linear"), ValueError,
     "already carries a LoRA adapter"),
    ("set-submodule-bad-name", plain, lambda m, p: set_submodule(m, 3, nn.Identity()), TypeError,
     "name must be a non-empty dotted module path"),
    ("set-submodule-missing", plain, lambda m, p: set_submodule(m, "layers.7", nn.Identity()), ValueError,
     "is not a submodule"),
    ("set-submodule-not-module", plain, lambda m, p: set_submodule(m, "norm", "x"), TypeError, "new must be an"),
    # ---- apply_lora
    ("apply-not-module", None, lambda m, p: lorakit.apply_lora("model", LoRAConfig()), TypeError,
     "model must be an nn.Module"),
    ("apply-config-dict", plain, lambda m, p: lorakit.apply_lora(m, {"r": 8}), TypeError,
     "config must be a LoRAConfig"),
    ("apply-config-peft", plain, lambda m, p: lorakit.apply_lora(m, lorakit.AdaLoRAConfig(total_step=5)), TypeError,
     "config must be a LoRAConfig"),
    ("apply-no-match", plain, lambda m, p: lorakit.apply_lora(m, LoRAConfig(target_modules=["nope"])), ValueError,
     "matched no nn.Linear"),
    ("apply-regex-no-match", plain, lambda m, p: lorakit.apply_lora(m, LoRAConfig(target_modules=r"layers\.9\..*")),
     ValueError, "matched no nn.Linear"),
    ("apply-layernorm", plain, lambda m, p: lorakit.apply_lora(m, LoRAConfig(target_modules=["input_layernorm"])),
     ValueError, "a RMSNorm, but only nn.Linear"),
    ("apply-twice", lora, lambda m, p: lorakit.apply_lora(m, LoRAConfig(target_modules=["k_proj"])), ValueError,
     "already has adapter layers"),
    ("apply-pissa-rank-too-big", plain, lambda m, p: lorakit.apply_lora(m, LoRAConfig(r=64, init="pissa",
                                                                                      target_modules="all-linear")),
     ValueError, "init='pissa' needs r=64 <= min"),
    ("apply-pissa-nan-last", nan_last_weight, lambda m, p: lorakit.apply_lora(m, LoRAConfig(init="pissa",
                                                                                          target_modules=QV)),
     ValueError, r"init='pissa' needs finite base weights.*layers\.1\.self_attn\.v_proj"),
    ("apply-dora-zero-row", lambda: _zero_row(tiny_lm()), lambda m, p: lorakit.apply_lora(
        m, LoRAConfig(use_dora=True, target_modules=QV)), ValueError, "use_dora=True needs nonzero weight rows"),
    # ---- merge / unmerge / unload
    ("merge-no-adapters", plain, lambda m, p: lorakit.merge_lora(m), ValueError, "no adapter layers to merge"),
    ("unmerge-no-adapters", plain, lambda m, p: lorakit.unmerge_lora(m), ValueError, "no adapter layers"),
    ("unload-no-adapters", plain, lambda m, p: lorakit.merge_and_unload(m), ValueError, "no adapter layers"),
    ("merge-dora-zero-magnitude-last", dora_zero_last, lambda m, p: lorakit.merge_lora(m), ValueError,
     "zero or non-finite"),
    ("unload-dora-zero-magnitude-last", dora_zero_last, lambda m, p: lorakit.merge_and_unload(m), ValueError,
     "zero or non-finite"),
    ("merge-nan-adapter", lora_with_nan_adapter, lambda m, p: lorakit.merge_lora(m), ValueError,
     "lora_A/lora_B hold NaN or inf"),
    ("merge-not-module", None, lambda m, p: lorakit.merge_lora(None), TypeError, "model must be an nn.Module"),
    # ---- save_adapter
    ("save-no-adapters", plain, lambda m, p: lorakit.save_adapter(m, p / "a"), ValueError,
     "no LoRA or AdaLoRA layers"),
    ("save-directory-int", lora, lambda m, p: lorakit.save_adapter(m, 123), TypeError,
     "directory must be a str or os.PathLike"),
    ("save-directory-none", lora, lambda m, p: lorakit.save_adapter(m, None), TypeError, "directory must be"),
    ("save-directory-is-file", lora, lambda m, p: lorakit.save_adapter(m, _a_file(p)), ValueError,
     "is a file, not a directory"),
    ("save-config-dict", lora, lambda m, p: lorakit.save_adapter(m, p, config={"r": 4}), TypeError,
     "config must be a LoRAConfig"),
    ("save-config-wrong-alpha", lora, lambda m, p: lorakit.save_adapter(
        m, p, config=LoRAConfig(r=4, alpha=16, target_modules=QV)), ValueError, r"config\.alpha=16 but layer"),
    ("save-config-wrong-targets", lora, lambda m, p: lorakit.save_adapter(
        m, p, config=LoRAConfig(r=4, alpha=8, target_modules="all-linear")), ValueError, "would adapt"),
    ("save-config-wrong-rank", lora, lambda m, p: lorakit.save_adapter(
        m, p, config=LoRAConfig(r=8, alpha=8, target_modules=QV)), ValueError, r"config\.r=8 but layer"),
    ("save-convert-pissa-flag", lora, lambda m, p: lorakit.save_adapter(m, p, convert_pissa="yes"), TypeError,
     "convert_pissa must be a bool"),
    ("save-convert-plain", lora, lambda m, p: lorakit.save_adapter(m, p, convert_pissa=True), ValueError,
     "convert_pissa=True needs a PiSSA model"),
    # ---- load_adapter
    ("load-directory-int", plain, lambda m, p: lorakit.load_adapter(m, 123), TypeError,
     "directory must be a str or os.PathLike"),
    ("load-directory-bytes", plain, lambda m, p: lorakit.load_adapter(m, b"dir"), TypeError, "directory must be"),
    ("load-directory-missing", plain, lambda m, p: lorakit.load_adapter(m, p / "nope"), ValueError, "does not exist"),
    ("load-directory-is-file", plain, lambda m, p: lorakit.load_adapter(m, _a_file(p)), ValueError, "is a file"),
    ("load-rslora-string", plain, load_edited(use_rslora="false"), ValueError, "use_rslora must be true or false"),
    ("load-exclude-modules", plain, load_edited(exclude_modules=["q_proj"]), ValueError,
     "PEFT features not supported by lorakit"),
    ("load-lora-bias", lora, load_edited(lora_bias=True), ValueError, "'lora_bias': True"),
    ("load-rank-pattern", plain, load_edited(rank_pattern={"q_proj": 2}), ValueError, "'rank_pattern'"),
    ("load-other-rank-hot-swap", lora, lambda m, p: lorakit.load_adapter(m, _saved_rank(p, 2)), ValueError,
     "the adapter has r=2 but the model's LoRA layer"),
    ("load-dora-into-lora", lora, lambda m, p: lorakit.load_adapter(m, _saved_dora(p)), ValueError,
     "use_dora=True but the model's layer"),
    ("load-into-merged", lambda: lorakit.merge_lora(lora()), lambda m, p: lorakit.load_adapter(m, saved(p)),
     ValueError, "is merged; unmerge before loading"),
    ("load-targets-match-nothing", plain, load_edited(target_modules=["nope"]), ValueError,
     "match no nn.Linear"),
    ("load-targets-layernorm", plain, load_edited(target_modules=["input_layernorm"]), ValueError, "a RMSNorm"),
    ("load-lora-onto-adalora", lambda: lorakit.apply_adalora(
        tiny_lm(), lorakit.AdaLoRAConfig(init_r=4, target_r=2, total_step=10, target_modules=QV)),
     lambda m, p: lorakit.load_adapter(m, saved(p)), ValueError, "adapter layers of another kind"),
    # ---- LoRALinear
    ("layer-base-conv", None, lambda m, p: lorakit.LoRALinear(nn.Conv1d(2, 2, 1)), TypeError,
     "base must be an nn.Linear, got Conv1d"),
    ("layer-r-zero", None, lambda m, p: lorakit.LoRALinear(nn.Linear(4, 4), r=0), ValueError, "^r must be a positive"),
    ("layer-init-unknown", None, lambda m, p: lorakit.LoRALinear(nn.Linear(4, 4), init="loftq"), ValueError,
     "init must be one of"),
    ("layer-pissa-rank", None, lambda m, p: lorakit.LoRALinear(nn.Linear(4, 4), r=8, init="pissa"), ValueError,
     "PiSSA needs r singular vectors"),
    ("layer-pissa-nan", None, lambda m, p: lorakit.LoRALinear(_nan_linear(), r=2, init="pissa"), ValueError,
     "init='pissa' needs a finite base weight"),
    ("layer-reset-unknown", None, lambda m, p: lorakit.LoRALinear(nn.Linear(4, 4), r=2).reset_lora_parameters("x"),
     ValueError, "init must be one of"),
    ("layer-reset-merged", None, lambda m, p: _merged_layer().reset_lora_parameters("kaiming"), RuntimeError,
     "unmerge"),
    ("scaling-r-zero", None, lambda m, p: lorakit.lora_scaling(0, 8), ValueError, "^r must be a positive"),
    ("scaling-alpha-string", None, lambda m, p: lorakit.lora_scaling(8, "8"), TypeError, "^alpha must be a number"),
    # ---- lora_linear (functional)
    ("functional-x-list", None, lambda m, p: lora_linear([1.0], w68, None, A28, B62, 1.0), TypeError,
     "x, weight, A and B must be torch.Tensor"),
    ("functional-x-int", None, lambda m, p: lora_linear(x8.long(), w68, None, A28, B62, 1.0), TypeError,
     "x must be a floating-point tensor"),
    ("functional-weight-1d", None, lambda m, p: lora_linear(x8, w68[0], None, A28, B62, 1.0), ValueError,
     "must be 2-D"),
    ("functional-in-features", None, lambda m, p: lora_linear(x8[:, :7], w68, None, A28, B62, 1.0), ValueError,
     "x has 7 features"),
    ("functional-A-shape", None, lambda m, p: lora_linear(x8, w68, None, A28[:, :7], B62, 1.0), ValueError,
     r"expected A \[r, 8\] and B \[6, r\]"),
    ("functional-rank-mismatch", None, lambda m, p: lora_linear(x8, w68, None, A28, B62[:, :1], 1.0), ValueError,
     "expected A"),
    ("functional-bias-shape", None, lambda m, p: lora_linear(x8, w68, torch.zeros(5), A28, B62, 1.0), ValueError,
     r"bias must have shape \(6,\)"),
    ("functional-scaling-nan", None, lambda m, p: lora_linear(x8, w68, None, A28, B62, float("nan")), ValueError,
     "scaling must be a finite number"),
    ("functional-scaling-inf", None, lambda m, p: lora_linear(x8, w68, None, A28, B62, -math.inf), ValueError,
     "scaling must be a finite number"),
    ("functional-scaling-tensor", None, lambda m, p: lora_linear(x8, w68, None, A28, B62, torch.tensor(1.0)),
     TypeError, "scaling must be a Python number"),
    ("functional-dropout-one", None, lambda m, p: lora_linear(x8, w68, None, A28, B62, 1.0, dropout_p=1.0),
     ValueError, r"dropout_p must be in \[0, 1\)"),
    ("functional-dropout-string", None, lambda m, p: lora_linear(x8, w68, None, A28, B62, 1.0, dropout_p="0"),
     TypeError, "dropout_p must be a number"),
    # ---- training, data, models
    ("train-steps-zero", lora, lambda m, p: training.train(m, _batch(), steps=0), ValueError,
     "steps must be a positive int"),
    ("train-steps-float", lora, lambda m, p: training.train(m, _batch(), steps=10.0), ValueError, "steps must be"),
    ("train-lr-negative", lora, lambda m, p: training.train(m, _batch(), steps=1, lr=-1e-3), ValueError,
     "lr must be > 0"),
    ("train-lr-nan", lora, lambda m, p: training.train(m, _batch(), steps=1, lr=float("nan")), ValueError,
     "lr must be > 0"),
    ("train-no-trainable", lambda: _frozen(tiny_lm()), lambda m, p: training.train(m, _batch(), steps=1), ValueError,
     "no trainable parameters"),
    ("train-data-tensor", lora, lambda m, p: training.train(m, torch.zeros(2, 2), steps=1), TypeError,
     "data must be a lorakit.data.Batch"),
    ("train-batch-size-zero", lora, lambda m, p: training.train(m, _batch(), steps=1, batch_size=0), ValueError,
     "batch_size must be a positive int"),
    ("train-eval-every-zero", lora, lambda m, p: training.train(m, _batch(), steps=1, eval_every=0), ValueError,
     "eval_every must be a positive int"),
    ("train-weight-decay-negative", lora, lambda m, p: training.train(m, _batch(), steps=1, weight_decay=-1.0),
     ValueError, "weight_decay must be a number >= 0"),
    ("train-not-module", None, lambda m, p: training.train("model", _batch(), steps=1), TypeError,
     "model must be an nn.Module"),
    ("data-task-unknown", None, lambda m, p: data.make_batch(["abc"], task="rot13"), ValueError, "task must be one of"),
    ("data-split-unknown", None, lambda m, p: data.random_words(3, 0, split="test"), ValueError,
     "split must be 'train' or 'heldout'"),
    ("data-n-zero", None, lambda m, p: data.random_words(0, 0), ValueError, "n must be a positive int"),
    ("data-encode-unknown", None, lambda m, p: data.encode(["A"]), ValueError, "unknown token 'A'"),
    ("data-shift-uppercase", None, lambda m, p: data.shift_word("Abc", 1), ValueError, "word must be a non-empty"),
    ("data-evaluate-chunk-zero", plain, lambda m, p: data.evaluate(m, _batch(), chunk=0), ValueError,
     "chunk must be a positive int"),
    ("models-config-heads", None, lambda m, p: models.TinyLMConfig(d_model=30, n_heads=4), ValueError,
     "must split into n_heads"),
    ("models-ids-float", plain, lambda m, p: m(torch.zeros(1, 4)), TypeError, "input_ids must be a 2-D LongTensor"),
    ("models-ids-too-long", plain, lambda m, p: m(torch.zeros(1, 99, dtype=torch.long)), ValueError,
     "more than max_seq_len"),
    ("models-load-missing", None, lambda m, p: models.load_tiny_lm(p / "nowhere"), FileNotFoundError,
     "no model.safetensors"),
    # ---- memory, timing, widgets, results
    ("memory-negative-params", None, lambda m, p: memory.training_bytes(-1, 0), ValueError,
     "n_params must be a non-negative int"),
    ("memory-trainable-exceeds", None, lambda m, p: memory.training_bytes(10, 11), ValueError,
     "n_trainable .* cannot exceed"),
    ("memory-llama-size", None, lambda m, p: memory.llama_shape("70B"), ValueError, "size must be one of"),
    ("memory-lora-rank", None, lambda m, p: memory.lora_parameter_count("7B", 0), ValueError, "r must be a positive"),
    ("memory-lora-targets", None, lambda m, p: memory.lora_parameter_count("7B", 8, ["w_q"]), ValueError,
     "are not LLaMA linear layers"),
    ("memory-saved-forward", plain, lambda m, p: memory.saved_activation_bytes(m, 3), TypeError,
     "forward must be a callable"),
    ("memory-parameter-bytes-model", None, lambda m, p: memory.parameter_bytes("model"), TypeError,
     "model must be an nn.Module"),
    ("timing-repeats-zero", None, lambda m, p: timing.measure(lambda: None, repeats=0), ValueError,
     "repeats must be a positive int"),
    ("timing-warmup-negative", None, lambda m, p: timing.measure(lambda: None, warmup=-1), ValueError,
     "warmup must be a non-negative int"),
    ("timing-no-functions", None, lambda m, p: timing.measure_interleaved({}), ValueError, "fns must name at least"),
    ("timing-not-callable", None, lambda m, p: timing.measure(3), TypeError, "fn must be callable"),
    ("widgets-d-in-zero", None, lambda m, p: widgets.lora_parameter_summary(0, 8, 2), ValueError,
     "d_in must be a positive int"),
    ("widgets-scaling-r", None, lambda m, p: widgets.scaling_summary(0, 8), ValueError, "^r must be a positive"),
    ("widgets-memory-size", None, lambda m, p: widgets.memory_summary("3B", 8), ValueError, "size must be one of"),
    ("results-name-path", None, lambda m, p: results.save_results("../x", {}, [0], 0.0, directory=p), ValueError,
     "name must be a plain file stem"),
    ("results-not-dict", None, lambda m, p: results.save_results("x", [], [0], 0.0, directory=p), TypeError,
     "results must be a dict"),
    ("results-missing", None, lambda m, p: results.load_results("none", directory=p), FileNotFoundError,
     "make results"),
]


def _zero_row(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model.layers[1].self_attn.v_proj.weight[2] = 0.0
    return model


def _nan_linear() -> nn.Linear:
    layer = nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight[1, 1] = float("nan")
    return layer


def _merged_layer() -> lorakit.LoRALinear:
    layer = lorakit.LoRALinear(nn.Linear(4, 4), r=2)
    layer.merge()
    return layer


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    return path


def _saved_rank(tmp_path, r):
    directory = tmp_path / f"rank{r}"
    lorakit.save_adapter(lorakit.apply_lora(tiny_lm(), LoRAConfig(r=r, alpha=8, target_modules=QV)), directory)
    return directory


def _saved_dora(tmp_path):
    directory = tmp_path / "dora"
    lorakit.save_adapter(lorakit.apply_lora(tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules=QV, use_dora=True)),
                         directory)
    return directory


def _batch() -> data.Batch:
    return data.make_batch(["abc", "hello"])


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_the_catalogue_is_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 150 - 100  # the rest of the >=150 distinct cases live in the other test_bad_input* files


@pytest.mark.parametrize(("make_model", "call", "exc", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, make_model, call, exc, message):
    model = make_model() if make_model is not None else None
    before = snapshot(model) if model is not None else None
    with pytest.raises(exc, match=message):
        call(model, tmp_path)
    if model is not None:
        assert_unchanged(model, before)
