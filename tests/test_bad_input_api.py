"""Bad arguments to the model-level, data and memory functions: a clear TypeError/ValueError naming them."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_lm

import lorakit
from lorakit.data import caesar_task, evaluate, make_batch
from lorakit.memory import saved_activation_bytes
from lorakit.peft import (
    check_target_modules,
    find_target_modules,
    select_target_modules,
    set_submodule,
)


@pytest.mark.parametrize(
    "call",
    [
        lambda: lorakit.lora_layers("model"),
        lambda: lorakit.trainable_parameters(None),
        lambda: lorakit.merge_lora([1, 2]),
        lambda: lorakit.unmerge_lora(3),
        lambda: lorakit.merge_and_unload({}),
        lambda: lorakit.save_adapter("model", "somewhere"),
        lambda: lorakit.load_adapter("model", "somewhere"),
        lambda: find_target_modules("model", ["q_proj"]),
    ],
)
def test_model_functions_reject_non_modules(call):
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        call()


def test_find_target_modules_rejects_non_string_targets():
    with pytest.raises(TypeError, match="target_modules"):
        find_target_modules(tiny_lm(), [1, 2])


def test_make_batch_rejects_a_bare_string_and_bad_words():
    with pytest.raises(TypeError, match="words must be a non-empty list"):
        make_batch("abc")
    with pytest.raises(TypeError, match="words"):
        make_batch([])
    with pytest.raises(ValueError, match="every word"):
        make_batch(["abcdefghijk"])
    with pytest.raises(ValueError, match="word must be a non-empty string of lower-case letters"):
        make_batch(["ABC"])


def test_evaluate_rejects_wrong_types():
    _, heldout = caesar_task(n_train=4, n_eval=4)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        evaluate("model", heldout)
    with pytest.raises(TypeError, match="batch must be a lorakit.data.Batch"):
        evaluate(tiny_lm(), heldout.input_ids)


def test_saved_activation_bytes_rejects_wrong_types():
    model = tiny_lm()
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        saved_activation_bytes("model", lambda: None)
    with pytest.raises(TypeError, match="forward must be a callable"):
        saved_activation_bytes(model, torch.zeros(1))


def test_target_module_helpers_name_the_bad_argument():
    with pytest.raises(TypeError, match="target_modules must be a non-empty list"):
        check_target_modules([])
    with pytest.raises(ValueError, match="target_modules is not a valid regex"):
        check_target_modules("((")
    assert check_target_modules(("q_proj",)) == ["q_proj"] and check_target_modules("all-linear") == "all-linear"
    with pytest.raises(ValueError, match=r"matched no nn.Linear in the model; its Linear layers are: \['layers"):
        select_target_modules(tiny_lm(), ["no_such_proj"])
    assert select_target_modules(tiny_lm(), ["q_proj"]) == ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"]


def test_set_submodule_names_the_bad_argument():
    model = tiny_lm()
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        set_submodule("model", "layers.0", torch.nn.Identity())
    with pytest.raises(TypeError, match="name must be a non-empty dotted module path"):
        set_submodule(model, "", torch.nn.Identity())
    with pytest.raises(TypeError, match="new must be an nn.Module, got str"):
        set_submodule(model, "layers.0.mlp", "identity")
    for missing in ("layers.0.no_such", "no.such.path"):
        with pytest.raises(ValueError, match=f"name='{missing}' is not a submodule"):
            set_submodule(model, missing, torch.nn.Identity())
    new = torch.nn.Identity()
    set_submodule(model, "layers.0.mlp", new)
    assert model.layers[0].mlp is new
