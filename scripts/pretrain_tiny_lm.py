"""Pretrain the course's tiny LLaMA-style model and write data/tiny_lm/ (run once; ~minutes on CPU).

    python scripts/pretrain_tiny_lm.py [--steps 3000] [--out data/tiny_lm]

Corpus: random letter strings (no external text, so no licence question), half as ``word=word.``
(copy) and half as ``word>rot1(word).`` (shift by one), training words only (lorakit.data's split).
The result is deterministic for a given seed, PyTorch version and machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lorakit.data import make_batch, random_words
from lorakit.models import TinyLM, TinyLMConfig, save_tiny_lm
from lorakit.training import seed_everything, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--words", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", default="data/tiny_lm")
    args = parser.parse_args()

    seed_everything(args.seed)
    words = random_words(args.words, seed=args.seed, split="train")
    half = len(words) // 2
    copy_b, rot1_b = make_batch(words[:half], "copy"), make_batch(words[half:], "rot1")
    corpus = type(copy_b)(torch.cat([copy_b.input_ids, rot1_b.input_ids]), torch.cat([copy_b.targets, rot1_b.targets]))
    model = TinyLM(TinyLMConfig())
    start = time.time()
    train(model, corpus, steps=args.steps, lr=3e-3, batch_size=128, seed=args.seed, weight_decay=0.01, progress=True)
    seconds = time.time() - start

    from lorakit.data import evaluate

    metrics = {}
    for task in ("copy", "rot1", "caesar"):
        metrics[task] = evaluate(model, make_batch(random_words(1000, seed=99, split="heldout"), task))
    print(json.dumps(metrics, indent=2))
    save_tiny_lm(model, args.out)
    log = {"steps": args.steps, "words": args.words, "seed": args.seed, "seconds": round(seconds, 1),
           "torch": torch.__version__, "heldout_metrics": metrics}
    with open(f"{args.out}/pretrain_log.json", "w") as fh:
        json.dump(log, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
