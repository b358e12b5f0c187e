"""Whole QLoRA models save and load (issue 9, item 3): state_dict, safetensors, transformers, both backends.

The 4-bit base is in ``state_dict()`` under bitsandbytes' ``Linear4bit`` keys, for both backends, so a model
reloads bit for bit, a checkpoint moves between backends, and transformers reads a merged 4-bit model as a
bitsandbytes model. Every bad or mismatched state dict is refused before anything is written (the model is
unchanged, checked with tests/snapshot.py).
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from builders import tiny_llama, tiny_lm
from safetensors.torch import load_file, load_model, save_file, save_model
from snapshot import assert_unchanged, snapshot
from torch import nn

from lorakit import nf4
from lorakit.nf4.serialization import pack_json, unpack_json
from lorakit.peft import LoRAConfig, apply_lora, lora_layers, trainable_parameters
from lorakit.qlora import NF4Linear, QLoRALinear, apply_qlora, merge_qlora

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

BACKENDS = ["lorakit", "bitsandbytes"]
CONFIG = LoRAConfig(r=4, alpha=8, target_modules="all-linear")
JSON_KEY = "quant_state.bitsandbytes__nf4"
Q = "layers.0.self_attn.q_proj.base.weight"  # the packed codes of one 4-bit layer of tiny_lm
LAST = "layers.1.mlp.down_proj.base.weight"  # ... and of the last one


def nudge(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(lora_layers(model).items()):
            layer.lora_B.add_(0.1 * torch.randn(layer.lora_B.shape, generator=gen))
    return model


def qlora_lm(backend: str = "lorakit", seed: int = 0, double_quant: bool = True, blocksize: int = 32) -> nn.Module:
    # blocksize 32: tiny_lm's layers are 32 wide, and bitsandbytes' CPU kernel needs rows of whole blocks
    return apply_qlora(tiny_lm(seed), CONFIG, blocksize=blocksize, double_quant=double_quant, backend=backend)


def ids(vocab: int = 32) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(7))


def out(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(tokens)
    return y if isinstance(y, torch.Tensor) else y.logits


# --------------------------------------------------------------------------- what state_dict holds
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_holds_the_4bit_base_in_bitsandbytes_layout(backend):
    model = qlora_lm(backend)
    state = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values()), "plain tensors only: safetensors, no pickle"
    for name in lora_layers(model):
        p = f"{name}.base.weight"
        assert {f"{p}.absmax", f"{p}.quant_map", f"{p}.nested_absmax", f"{p}.nested_quant_map",
                f"{p}.{JSON_KEY}"} <= set(state)
        assert state[f"{p}.absmax"].dtype == torch.uint8  # double-quantized: 8-bit codes
        meta = unpack_json(state[f"{p}.{JSON_KEY}"], "meta")
        assert meta["quant_type"] == "nf4" and meta["blocksize"] == 32 and meta["dtype"] == "float32"
        assert meta["shape"] == list(model.get_submodule(name).base.weight_shape if backend == "lorakit"
                                     else model.get_submodule(name).base.weight.quant_state.shape)
        numel = meta["shape"][0] * meta["shape"][1]
        assert state[p].dtype == torch.uint8 and state[p].shape == ((numel + 1) // 2, 1)
        assert f"{name}.lora_A" in state and f"{name}.lora_B" in state


def test_both_backends_write_the_same_keys():
    lk, bb = qlora_lm("lorakit").state_dict(), qlora_lm("bitsandbytes").state_dict()
    assert list(lk) == list(bb)
    assert {k: (v.dtype, v.shape) for k, v in lk.items()} == {k: (v.dtype, v.shape) for k, v in bb.items()}
    assert torch.equal(lk[Q], bb[Q]), "same packed bytes"


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_through_safetensors_is_bit_exact(tmp_path, backend, double_quant):
    model = nudge(qlora_lm(backend, seed=0, double_quant=double_quant))
    tokens = ids()
    want = out(model, tokens)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    fresh = qlora_lm(backend, seed=1, double_quant=double_quant)  # another base: every value must come from the file
    assert not torch.equal(out(fresh, tokens), want)
    result = fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(out(fresh, tokens), want, rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert trainable_parameters(fresh) == trainable_parameters(model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_through_safetensors_save_model_and_load_model(tmp_path, backend):
    model = nudge(qlora_lm(backend))
    save_model(model, str(tmp_path / "m.safetensors"))
    fresh = qlora_lm(backend, seed=3)
    missing, unexpected = load_model(fresh, str(tmp_path / "m.safetensors"))
    assert not missing and not unexpected
    torch.testing.assert_close(out(fresh, ids()), out(model, ids()), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformers_model_save_pretrained_round_trip(tmp_path, backend):
    """A transformers LlamaForCausalLM + apply_qlora: save_pretrained writes the 4-bit base too."""
    model = nudge(apply_qlora(tiny_llama(0), CONFIG, blocksize=32, backend=backend))
    model.save_pretrained(tmp_path)
    fresh = apply_qlora(tiny_llama(1), CONFIG, blocksize=32, backend=backend)
    missing, unexpected = load_model(fresh, str(tmp_path / "model.safetensors"))
    assert not missing and not unexpected
    tokens = ids(64)
    torch.testing.assert_close(out(fresh, tokens), out(model, tokens), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_requantized_merge_round_trip(tmp_path, backend):
    model = merge_qlora(nudge(qlora_lm(backend)), requantize=True)
    assert not lora_layers(model)
    save_file(model.state_dict(), tmp_path / "merged.safetensors")
    fresh = merge_qlora(qlora_lm(backend, seed=4), requantize=True)
    fresh.load_state_dict(load_file(tmp_path / "merged.safetensors"))
    torch.testing.assert_close(out(fresh, ids()), out(model, ids()), rtol=0, atol=0)
    plain_total = sum(p.numel() for p in tiny_lm().parameters())
    assert trainable_parameters(fresh) == (0, plain_total)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_transformers_from_pretrained_reads_a_requantized_merge_as_bitsandbytes_4bit(tmp_path, backend, targets):
    """The issue's case: merge_qlora(requantize=True), save_pretrained, reload with transformers. With
    bitsandbytes_config(model) in config.json, from_pretrained builds bitsandbytes Linear4bit layers from
    lorakit's entries (and keeps the dense layers dense), and the logits are bit for bit the merged model's."""
    transformers = pytest.importorskip("transformers")
    from lorakit.qlora import bitsandbytes_config

    config = LoRAConfig(r=4, alpha=8, target_modules=targets)
    model = merge_qlora(nudge(apply_qlora(tiny_llama(0), config, blocksize=32, backend=backend)), requantize=True)
    model.config.quantization_config = bitsandbytes_config(model)
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    kinds = {n: type(m).__name__ for n, m in loaded.named_modules() if isinstance(m, nn.Linear)}
    assert kinds["model.layers.0.self_attn.q_proj"] == "Linear4bit" and kinds["lm_head"] == "Linear"
    assert kinds["model.layers.0.mlp.up_proj"] == ("Linear4bit" if targets == "all-linear" else "Linear")
    for m in loaded.modules():  # bitsandbytes' CPU fast path repacks small layers wrongly; use the NF4 path
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    torch.testing.assert_close(out(loaded, ids(64)), out(model, ids(64)), rtol=0, atol=0)


def test_bitsandbytes_config_refuses_what_transformers_cannot_rebuild():
    from lorakit.qlora import bitsandbytes_config

    with pytest.raises(TypeError, match="model must be an nn.Module"):
        bitsandbytes_config("model")
    with pytest.raises(ValueError, match="still has adapter layers"):
        bitsandbytes_config(qlora_lm())
    with pytest.raises(ValueError, match="no 4-bit layers"):
        bitsandbytes_config(tiny_lm())
    mixed = merge_qlora(qlora_lm(), requantize=True)
    mixed.layers[0].self_attn.q_proj = NF4Linear.from_linear(nn.Linear(32, 32), blocksize=32, double_quant=False)
    with pytest.raises(ValueError, match="the layers differ"):
        bitsandbytes_config(mixed)


@pytest.mark.parametrize("source", BACKENDS)
def test_a_checkpoint_moves_between_backends(source):
    target = "bitsandbytes" if source == "lorakit" else "lorakit"
    model = nudge(apply_qlora(tiny_llama(0), CONFIG, blocksize=32, backend=source))
    fresh = apply_qlora(tiny_llama(5), CONFIG, blocksize=32, backend=target)
    fresh.load_state_dict(model.state_dict())
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(lora_layers(fresh)[name].dequantized_weight(torch.float32),
                                   layer.dequantized_weight(torch.float32), rtol=0, atol=0)
    got, want = out(fresh, ids(64)), out(model, ids(64))
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-2  # the backends' matmuls round alike


def test_standalone_layers_round_trip():
    layer = QLoRALinear(nn.Linear(96, 40), r=4, alpha=8, blocksize=32)
    nudge(nn.Sequential(layer))
    twin = QLoRALinear(nn.Linear(96, 40), r=4, alpha=8, blocksize=32)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(3, 96)
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
    base = NF4Linear.from_linear(nn.Linear(96, 40), blocksize=32)
    base2 = NF4Linear.from_linear(nn.Linear(96, 40), blocksize=32)
    base2.load_state_dict(base.state_dict())
    torch.testing.assert_close(base2(x), base(x), rtol=0, atol=0)


def test_load_with_assign_replaces_the_storage():
    model = nudge(qlora_lm())
    fresh = qlora_lm(seed=2)
    fresh.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)
    torch.testing.assert_close(out(fresh, ids()), out(model, ids()), rtol=0, atol=0)


# --------------------------------------------------------------------------- dtype casts and storage
@pytest.mark.parametrize("backend", BACKENDS)
def test_model_to_bf16_keeps_the_fp32_absmax(backend):
    model = nudge(qlora_lm(backend, double_quant=False))
    before = {k: v.clone() for k, v in model.state_dict().items() if ".base.weight" in k}
    model.to(torch.bfloat16)
    after = model.state_dict()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert after[f"{Q}.absmax"].dtype == torch.float32
    assert after["layers.0.self_attn.q_proj.lora_A"].dtype == torch.bfloat16  # the adapters do follow the cast
    y = out(model, ids())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    fresh = qlora_lm(backend, seed=1, double_quant=False).to(torch.bfloat16)
    fresh.load_state_dict(after)
    torch.testing.assert_close(out(fresh, ids()), y, rtol=0, atol=0)


def test_nf4linear_device_and_dtype_moves_keep_the_format():
    layer = NF4Linear.from_linear(nn.Linear(64, 32), double_quant=True)
    packed, codes, scales = layer.weight.clone(), layer.absmax.clone(), layer.nested_absmax.clone()
    layer.half()
    layer.to(torch.float64)
    layer.to("cpu")
    assert layer.weight.dtype == torch.uint8 and torch.equal(layer.weight, packed)
    assert torch.equal(layer.absmax, codes) and layer.nested_absmax.dtype == torch.float32
    assert torch.equal(layer.nested_absmax, scales) and layer.nested_offset.dtype == torch.float32
    assert layer.quant_map.dtype == torch.float32 and layer.bias.dtype == torch.float64


def test_quant_storage_bf16_stores_the_same_bytes_and_round_trips():
    """bitsandbytes' quant_storage: the codes viewed as bf16, so FSDP can flatten them with bf16 parameters."""
    linear = nn.Linear(128, 64)
    q = nf4.quantize_nf4(linear.weight.detach(), double_quant=True)
    as_bf16 = NF4Linear(q, linear.bias.detach(), quant_storage=torch.bfloat16)
    as_u8 = NF4Linear(q, linear.bias.detach())
    assert as_bf16.weight.dtype == torch.bfloat16 and as_bf16.weight.shape == (128 * 64 // 4, 1)
    assert torch.equal(as_bf16.weight.view(torch.uint8).view(-1), as_u8.weight.view(-1))
    x = torch.randn(5, 128)
    torch.testing.assert_close(as_bf16(x), as_u8(x), rtol=0, atol=0)
    cast = copy.deepcopy(as_bf16).to(torch.float16)  # a cast of the model must not convert the codes' values
    assert cast.weight.dtype == torch.bfloat16 and cast.bias.dtype == torch.float16
    torch.testing.assert_close(cast.dequantized_weight(torch.float32), as_u8.dequantized_weight(torch.float32),
                               rtol=0, atol=0)
    fresh = NF4Linear.from_linear(nn.Linear(128, 64))
    fresh.load_state_dict(as_bf16.state_dict())  # bf16-stored bytes load into a uint8 layer, and back
    torch.testing.assert_close(fresh(x), as_u8(x), rtol=0, atol=0)
    back = NF4Linear(nf4.quantize_nf4(torch.randn(64, 128), double_quant=True), torch.zeros(64),
                     quant_storage=torch.bfloat16)
    back.load_state_dict(as_u8.state_dict())
    torch.testing.assert_close(back(x), as_u8(x), rtol=0, atol=0)


def test_packed_codes_are_a_frozen_parameter_fsdp_can_shard():
    """FSDP2 shards parameters along dim 0 and all-gathers them before use: the codes are a frozen parameter, and
    a weight cut into row shards and concatenated again decodes exactly as before."""
    model = qlora_lm()
    layer = model.get_submodule("layers.0.self_attn.q_proj.base")
    params = dict(model.named_parameters())
    assert params[Q] is layer.weight and not layer.weight.requires_grad and layer.weight.is_contiguous()
    assert layer.quantized_parameters() == (layer.weight,)
    before = layer.dequantized_weight(torch.float32)
    shards = torch.chunk(layer.weight.detach(), 4, dim=0)
    with torch.no_grad():
        layer.weight.copy_(torch.cat(shards, dim=0))
    torch.testing.assert_close(layer.dequantized_weight(torch.float32), before, rtol=0, atol=0)
    assert all(name.startswith("absmax") or name.startswith(("nested", "quant_map", "pair_table"))
               for name, _ in layer.named_buffers()), "the quantization state: replicated buffers"


# --------------------------------------------------------------------------- trainable_parameters
@pytest.mark.parametrize("backend", BACKENDS)
def test_trainable_parameters_total_is_the_same_as_for_lora_and_the_plain_model(backend):
    plain = sum(p.numel() for p in tiny_lm().parameters())
    qlora, lora = qlora_lm(backend), apply_lora(tiny_lm(), CONFIG)
    assert trainable_parameters(qlora) == trainable_parameters(lora)
    assert trainable_parameters(qlora)[1] == plain + trainable_parameters(lora)[0]
    fresh = qlora_lm(backend, seed=1)
    fresh.load_state_dict(qlora.state_dict())
    assert trainable_parameters(fresh) == trainable_parameters(lora)
    assert trainable_parameters(merge_qlora(copy.deepcopy(qlora)))[1] == plain
    assert trainable_parameters(merge_qlora(copy.deepcopy(qlora), requantize=True))[1] == plain


# --------------------------------------------------------------------------- refused loads
@functools.cache
def _source_state(backend: str, double_quant: bool) -> dict[str, torch.Tensor]:
    """A trained-looking model's state dict, built once per (backend, double_quant); callers clone it."""
    return dict(nudge(qlora_lm(backend, double_quant=double_quant)).state_dict())


def source_state(backend: str, double_quant: bool = True) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _source_state(backend, double_quant).items()}


def bnb_states(model: nn.Module) -> dict[str, tuple]:
    """bitsandbytes keeps its quantization state outside parameters and buffers: snapshot it too."""
    out = {}
    for name, m in model.named_modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            nested = () if qs.state2 is None else (qs.state2.absmax.clone(), qs.offset.clone(), qs.state2.code.clone())
            out[name] = (qs.absmax.clone(), qs.code.clone(), qs.dtype, tuple(qs.shape), qs.blocksize, *nested)
    return out


def assert_same_bnb_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, values in a.items():
        for x, y in zip(values, b[name], strict=True):
            assert (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y), name


def _edit_json(state: dict, key: str, **changes) -> None:
    meta = unpack_json(state[key], key)
    meta.update(changes)
    for name, value in list(changes.items()):
        if value is None:
            del meta[name]
    state[key] = pack_json(meta)


def _truncate(state, key):
    state[key] = state[key][:-1]


BAD_STATES = {
    # (edit of the state dict, error message) ; every edit touches the LAST 4-bit layer, after many good ones
    "absmax-float-codes": (lambda s: s.__setitem__(f"{LAST}.absmax", s[f"{LAST}.absmax"].float()),
                           r"absmax \(double-quantized\) must be uint8"),
    "absmax-missing": (lambda s: s.pop(f"{LAST}.absmax"), r"absmax is missing"),
    "packed-truncated": (lambda s: _truncate(s, LAST), r"holds \d+ bytes of packed codes"),
    "packed-not-tensor": (lambda s: s.__setitem__(LAST, [1, 2, 3]), r"must be a tensor of packed"),
    "packed-missing": (lambda s: s.pop(LAST), r"the packed codes\) is missing"),
    "json-missing": (lambda s: s.pop(f"{LAST}.{JSON_KEY}"), r"exactly one .*JSON"),
    "json-garbage": (lambda s: s.__setitem__(f"{LAST}.{JSON_KEY}", torch.tensor([255, 0, 1], dtype=torch.uint8)),
                     r"valid UTF-8 JSON"),
    "json-list": (lambda s: s.__setitem__(f"{LAST}.{JSON_KEY}", pack_json([1, 2])), r"must hold a JSON object"),
    "json-float-tensor": (lambda s: s.__setitem__(f"{LAST}.{JSON_KEY}", torch.zeros(4)), r"1-D uint8 tensor"),
    "json-blocksize-100": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", blocksize=100), r"blocksize must be a power"),
    "json-blocksize-str": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", blocksize="32"), r"'blocksize' must be an"),
    "json-dtype-float64": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", dtype="float64"), r"dtype must be one of"),
    "json-shape-bad": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", shape=[32, -1]), r"shape must be a non-empty"),
    "json-shape-other": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", shape=[64, 16]), r"shape \[64, 16\]"),
    "json-dtype-other": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", dtype="bfloat16"), r"dtype torch.bfloat16"),
    "json-quant-type": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", quant_type="fp4"), r"does not match the key"),
    "json-offset-nan": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", nested_offset=float("nan")),
                        r"offset must be finite"),
    "json-offset-negative": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", nested_offset=-1.0), r"offset must be >= 0"),
    "json-offset-str": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", nested_offset="0.1"), r"offset must be a number"),
    "json-nested-dtype": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", nested_dtype="float16"),
                          r"nested_dtype must be 'float32'"),
    "json-nested-blocksize": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", nested_blocksize=7),
                              r"nested_blocksize must be a power"),
    "json-other-nested-blocksize": (lambda s: _edit_json(s, f"{LAST}.{JSON_KEY}", nested_blocksize=128),
                                    r"scales must be float32 of shape|nested blocksize"),
    "scales-negative": (lambda s: s[f"{LAST}.nested_absmax"].__setitem__(0, -1.0), r"scales .*negative"),
    "scales-nan": (lambda s: s[f"{LAST}.nested_absmax"].__setitem__(0, float("nan")), r"scales .*NaN"),
    "scales-missing": (lambda s: s.pop(f"{LAST}.nested_absmax"), r"needs both .*nested_absmax"),
    "nested-code-other": (lambda s: s[f"{LAST}.nested_quant_map"].__setitem__(3, 0.5), r"nested_quant_map must be"),
    "quant-map-fp4": (lambda s: s.__setitem__(f"{LAST}.quant_map", nf4.fp4_code()), r"other 4-bit levels"),
    "quant-map-nan": (lambda s: s[f"{LAST}.quant_map"].__setitem__(0, float("nan")), r"code must hold finite"),
    "quant-map-short": (lambda s: s.__setitem__(f"{LAST}.quant_map", torch.zeros(15)), r"quant_map must be float32"),
    "unknown-entry": (lambda s: s.__setitem__(f"{LAST}.scale_factor", torch.ones(1)), r"unexpected quantization entr"),
    "bias-wrong-shape": (lambda s: s.__setitem__("layers.1.mlp.down_proj.base.bias", torch.zeros(5)),
                         r"bias must be a float tensor of shape|no bias"),
}

#: cases for a plain (not double-quantized) fp32 absmax
BAD_PLAIN_STATES = {
    "absmax-nan": (lambda s: s[f"{LAST}.absmax"].__setitem__(0, float("nan")), r"absmax .*NaN"),
    "absmax-negative": (lambda s: s[f"{LAST}.absmax"].__setitem__(1, -0.5), r"absmax .*negative"),
    "absmax-inf": (lambda s: s[f"{LAST}.absmax"].__setitem__(1, float("inf")), r"absmax .*inf"),
    "absmax-fp16": (lambda s: s.__setitem__(f"{LAST}.absmax", s[f"{LAST}.absmax"].half()), r"absmax must be float32"),
    "absmax-short": (lambda s: _truncate(s, f"{LAST}.absmax"), r"absmax must be float32 of shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLAIN_STATES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_plain_absmax_is_refused_and_the_model_is_unchanged(backend, case):
    edit, match = BAD_PLAIN_STATES[case]
    state = source_state(backend, double_quant=False)
    edit(state)
    target = qlora_lm(backend, seed=1, double_quant=False)
    before, before_bnb = snapshot(target), bnb_states(target)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(state)
    assert_unchanged(target, before)
    assert_same_bnb_states(bnb_states(target), before_bnb)


@pytest.mark.parametrize("case", sorted(BAD_STATES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_state_dict_is_refused_and_the_model_is_unchanged(backend, case):
    edit, match = BAD_STATES[case]
    state = source_state(backend)
    edit(state)
    target = qlora_lm(backend, seed=1)
    before, before_bnb = snapshot(target), bnb_states(target)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(state)
    assert_unchanged(target, before)
    assert_same_bnb_states(bnb_states(target), before_bnb)


@pytest.mark.parametrize(("source", "error"), [
    ({"blocksize": 64}, r"blocksize 64 \(the layer's is 32\)"),
    ({"double_quant": False}, r"double_quant=False \(the layer's is True\)"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_dict_of_another_quantization_is_refused(backend, source, error):
    settings = {"blocksize": 32, "double_quant": True} | source
    state = apply_qlora(tiny_lm(), CONFIG, backend=backend, **settings).state_dict()
    target = qlora_lm(backend, seed=1)
    before = snapshot(target)
    with pytest.raises(ValueError, match=error):
        target.load_state_dict(state)
    assert_unchanged(target, before)


def test_a_bf16_quantized_state_dict_is_refused_by_an_fp32_model():
    state = apply_qlora(tiny_lm().to(torch.bfloat16), CONFIG, blocksize=32).state_dict()
    target = qlora_lm(seed=1)
    before = snapshot(target)
    with pytest.raises(ValueError, match=r"dtype torch.bfloat16 \(the layer's is torch.float32\)"):
        target.load_state_dict(state)
    assert_unchanged(target, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_4bit_entries_strict_and_not_strict(backend):
    state = {k: v for k, v in qlora_lm(backend).state_dict().items() if ".base.weight" not in k}
    target = qlora_lm(backend, seed=1)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*base\.weight"):  # PyTorch's own strict check
        target.load_state_dict(state)
    target = qlora_lm(backend, seed=1)
    before = snapshot(target)
    result = target.load_state_dict({k: v for k, v in state.items() if k.endswith("lora_B")}, strict=False)
    assert Q in result.missing_keys and not result.unexpected_keys  # not strict: reported, the base kept
    assert torch.equal(target.state_dict()[Q], before["state"][f"param:{Q}"][0])
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items() if k.endswith("lora_B"))


def test_a_dense_state_dict_is_refused_by_a_4bit_layer():
    """Loading a plain model's state dict into a QLoRA layer's base: the codes are the wrong size."""
    layer = QLoRALinear(nn.Linear(64, 32), blocksize=32)
    before = snapshot(layer)
    dense = {"base.weight": torch.randn(32, 64), "base.bias": torch.zeros(32), "lora_A": layer.lora_A.detach(),
             "lora_B": layer.lora_B.detach()}
    with pytest.raises(ValueError, match=r"base\.weight"):
        layer.load_state_dict(dense)
    assert_unchanged(layer, before)


def test_a_standalone_nf4linear_refuses_before_writing():
    layer = NF4Linear.from_linear(nn.Linear(64, 32), blocksize=32, double_quant=False)
    state = layer.state_dict()
    state["weight.absmax"] = state["weight.absmax"].clone()
    state["weight.absmax"][-1] = float("nan")
    state["bias"] = torch.ones(32)
    before = snapshot(layer)
    with pytest.raises(ValueError, match="absmax"):
        layer.load_state_dict(state)
    assert_unchanged(layer, before)


def test_the_json_metadata_is_valid_utf8_json_readable_without_torch():
    state = qlora_lm().state_dict()
    raw = bytes(state[f"{Q}.{JSON_KEY}"].numpy())
    assert json.loads(raw.decode("utf-8"))["nested_blocksize"] == 256


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_state_dict_round_trip(tmp_path, backend):
    model = nudge(qlora_lm(backend)).cuda()
    tokens = ids().cuda()
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    fresh = qlora_lm(backend, seed=1).cuda()
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors", device="cuda"))
    torch.testing.assert_close(out(fresh, tokens), out(model, tokens), rtol=0, atol=0)
    cpu = qlora_lm(backend, seed=2)
    cpu.load_state_dict(load_file(tmp_path / "m.safetensors"))  # saved on CUDA, loaded on CPU
    torch.testing.assert_close(out(cpu, tokens.cpu()), out(model, tokens).cpu(), rtol=2e-2, atol=2e-2)
