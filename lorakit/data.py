"""The course task: Caesar's cipher on random letter strings (DESIGN.md, "The course model and task").

The tiny pretrained model (:mod:`lorakit.models`) was pretrained on two string transformations:

* ``word=word.``      copy the word (separator ``=``);
* ``word>rot1(word).`` shift every letter by one (separator ``>``), ``abc>bcd.``.

The downstream task is Caesar's own cipher, a shift by **three** under the same ``>`` marker:
``abc>def.``. Before fine-tuning the model confidently answers with a shift by one, so its held-out
exact-match accuracy is 0; the notebooks fine-tune it with LoRA and measure how fast it adapts.

Everything here is generated from a seed by code (no downloaded data, so no licence question):
words are uniform random lower-case strings of 3-8 letters; a word belongs to the held-out split
when ``crc32(word) % 5 == 0``, so train and evaluation words never overlap.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch

PAD, BOS = "<pad>", "<s>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
#: Token strings; the id of a token is its index. ``<`` is reserved (unused by the shipped tasks).
VOCAB: tuple[str, ...] = (PAD, BOS, "=", ">", "<", ".") + tuple(LETTERS)
TOKEN_ID: dict[str, int] = {tok: i for i, tok in enumerate(VOCAB)}
PAD_ID = TOKEN_ID[PAD]
#: Longest word and the fixed sequence length of every example: <s> word sep answer .
MIN_WORD_LEN, MAX_WORD_LEN = 3, 8
SEQ_LEN = 1 + MAX_WORD_LEN + 1 + MAX_WORD_LEN + 1
#: The task names the notebooks use, mapped to (separator, letter shift).
TASKS: dict[str, tuple[str, int]] = {"copy": ("=", 0), "rot1": (">", 1), "caesar": (">", 3)}


def shift_word(word: str, shift: int) -> str:
    """Shift every letter of ``word`` by ``shift`` places in the alphabet (wrapping z -> a)."""
    if not isinstance(word, str) or not word or any(c not in LETTERS for c in word):
        raise ValueError(f"word must be a non-empty string of lower-case letters a-z, got {word!r}")
    return "".join(LETTERS[(LETTERS.index(c) + shift) % 26] for c in word)


def is_heldout(word: str) -> bool:
    """True when ``word`` belongs to the held-out split (``crc32(word) % 5 == 0``)."""
    return zlib.crc32(word.encode()) % 5 == 0


def random_words(n: int, seed: int, split: str = "train") -> list[str]:
    """``n`` distinct random words of 3-8 letters from ``split`` ("train" or "heldout"), seeded."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        length = rng.randint(MIN_WORD_LEN, MAX_WORD_LEN)
        word = "".join(rng.choice(LETTERS) for _ in range(length))
        if word in seen or is_heldout(word) != (split == "heldout"):
            continue
        seen.add(word)
        words.append(word)
    return words


def encode(text_tokens: list[str]) -> list[int]:
    """Token strings -> ids (raises ValueError naming an unknown token)."""
    try:
        return [TOKEN_ID[t] for t in text_tokens]
    except KeyError as err:
        raise ValueError(f"unknown token {err.args[0]!r}; the vocabulary is {VOCAB}") from None


def decode(ids: list[int] | torch.Tensor) -> str:
    """Ids -> a readable string (``<s>`` and padding dropped)."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return "".join(VOCAB[i] for i in ids if i not in (PAD_ID, TOKEN_ID[BOS]))


@dataclass
class Batch:
    """Token ids ``[n, SEQ_LEN]`` and next-token ``targets`` (``-100`` where no loss is taken).

    The loss is taken only on the answer letters and the final ``.``: the prompt is given.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.targets.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def make_batch(words: list[str], task: str = "caesar") -> Batch:
    """Encode ``words`` as examples of ``task`` (one of :data:`TASKS`)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words:
        raise TypeError(f"words must be a non-empty list of strings, got {type(words).__name__}")
    if any(not isinstance(w, str) or not 1 <= len(w) <= MAX_WORD_LEN for w in words):
        raise ValueError(f"every word must be a string of 1-{MAX_WORD_LEN} letters (the sequence length is fixed)")
    sep, shift = TASKS[task]
    n = len(words)
    input_ids = torch.full((n, SEQ_LEN), PAD_ID, dtype=torch.long)
    targets = torch.full((n, SEQ_LEN), -100, dtype=torch.long)
    for row, word in enumerate(words):
        answer = shift_word(word, shift)
        tokens = [BOS, *word, sep, *answer, "."]
        ids = torch.tensor(encode(tokens))
        input_ids[row, : len(ids)] = ids
        start = 1 + len(word)  # position of the separator: it predicts the first answer letter
        targets[row, start : start + len(answer) + 1] = ids[start + 1 : start + len(answer) + 2]
    return Batch(input_ids, targets)


def caesar_task(n_train: int = 512, n_eval: int = 512, seed: int = 0) -> tuple[Batch, Batch]:
    """The downstream task of the course: (train batch, held-out batch) of Caesar shift-3 examples."""
    return (
        make_batch(random_words(n_train, seed, "train"), "caesar"),
        make_batch(random_words(n_eval, seed + 1, "heldout"), "caesar"),
    )


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions (``targets != -100``), computed in fp32."""
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, batch: Batch, chunk: int = 1024) -> dict[str, float]:
    """Held-out metrics with teacher forcing: loss, per-letter accuracy, exact-match accuracy.

    Because every answer letter is a deterministic function of the prompt, greedy decoding gives the
    same exact-match as teacher forcing on the argmax (a wrong letter is already a miss).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(batch, Batch):
        raise TypeError(f"batch must be a lorakit.data.Batch, got {type(batch).__name__}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses, correct, counted, exact = [], 0, 0, 0
    for i in range(0, len(batch), chunk):
        ids = batch.input_ids[i : i + chunk].to(device)
        tgt = batch.targets[i : i + chunk].to(device)
        logits = model(ids)
        mask = tgt != -100
        losses.append(lm_loss(logits, tgt) * mask.sum())
        hit = (logits.argmax(-1) == tgt) | ~mask
        correct += int((hit & mask).sum())
        counted += int(mask.sum())
        exact += int(hit.all(dim=1).sum())
    model.train(was_training)
    return {
        "loss": float(torch.stack(losses).sum() / counted),
        "letter_acc": correct / counted,
        "exact_match": exact / len(batch),
    }
