"""One capstone run: build an arm on MiniLM-L6, train it on the lexicon, measure everything (notebook 11, §2).

:func:`capstone_data` tokenizes the fixed splits once and embeds the test tokens with the untouched encoder (the
reference for the drift of section 6). :func:`run_arm` trains one :class:`CapstoneConfig` with AdamW on the mean
squared error of valence / 4, seeded minibatches, and returns a JSON-ready record:

* ``trainable`` / ``total``: parameters (the head's 385 included), counted like PEFT;
* ``memory_bytes``: measured bytes of the tensors a training step holds (weights, gradients, AdamW state,
  and the activations autograd saves for one batch, each storage once; :mod:`lorakit.memory`), and on CUDA the
  allocator's peak as well;
* ``step_seconds``: the median wall time of a training step (device-dependent: notebooks do not compare it);
* ``val``: Pearson r on the validation tokens every ``eval_every`` steps and at the end; ``test``: Pearson r and
  RMSE at the end;
* ``drift``: the mean cosine similarity of each test token's pooled embedding after training with the
  pretrained one (1 = the encoder's original behaviour kept; section 6, "learns less, forgets less").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.adalora import RankAllocator, orthogonal_regularization
from lorakit.capstone.arms import Arm, arms_for
from lorakit.capstone.lexicon import LexiconSplits, lexicon_splits
from lorakit.capstone.model import (
    Encoded,
    ValenceModel,
    by_length,
    embeddings,
    encode_tokens,
    evaluate,
    evaluate_and_embed,
)
from lorakit.family import loraplus_param_groups
from lorakit.memory import gradient_bytes, optimizer_state_bytes, parameter_bytes, saved_activation_bytes
from lorakit.models import load_minilm, load_minilm_tokenizer
from lorakit.peft import trainable_parameters
from lorakit.training import seed_everything

__all__ = ["CapstoneConfig", "CapstoneData", "build_model", "capstone_data", "run_arm"]


@dataclass(frozen=True)
class CapstoneConfig:
    """One run. ``arm`` names an entry of :func:`lorakit.capstone.arms_for` unless :func:`run_arm` is given one."""

    arm: str
    lr: float
    seed: int = 0
    steps: int = 100
    batch_size: int = 32
    eval_every: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.arm, str) or not self.arm:
            raise ValueError(f"arm must be a non-empty str, got {self.arm!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr)
                                                                                      and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name, low in (("seed", 0), ("steps", 1), ("batch_size", 1), ("eval_every", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


@dataclass(frozen=True)
class CapstoneData:
    """The tokenized splits and the pretrained encoder's test embeddings."""

    train: Encoded
    val: Encoded
    test: Encoded
    reference: torch.Tensor  # [n_test, 384]
    splits: LexiconSplits


def capstone_data(splits: LexiconSplits | None = None) -> CapstoneData:
    """Tokenize the fixed splits (seed 0) and embed the test tokens with the pretrained encoder."""
    splits = lexicon_splits() if splits is None else splits
    if not isinstance(splits, LexiconSplits):
        raise TypeError(f"splits must be a LexiconSplits, got {type(splits).__name__}")
    tokenizer = load_minilm_tokenizer()
    encoded = [encode_tokens(tokenizer, part) for part in (splits.train, splits.val, splits.test)]
    encoded[1:] = [by_length(e) for e in encoded[1:]]  # evaluation order does not matter: less padding
    model = ValenceModel(load_minilm(), nn.Linear(384, 1))
    return CapstoneData(*encoded, embeddings(model, encoded[2]), splits)


def build_model(arm: Arm, seed: int, device: torch.device | str = "cpu") -> ValenceModel:
    """The pretrained encoder adapted by ``arm`` and a fresh head, seeded with ``seed``."""
    if not isinstance(arm, Arm):
        raise TypeError(f"arm must be an Arm, got {type(arm).__name__}")
    encoder = load_minilm()
    for p in encoder.parameters():
        p.requires_grad_(False)
    seed_everything(seed)
    head = nn.Linear(384, 1)
    encoder = arm.adapt(encoder)
    return ValenceModel(encoder, head).to(device)


def _optimizer(arm: Arm, model: ValenceModel, lr: float) -> torch.optim.Optimizer:
    if arm.kind == "loraplus":
        return torch.optim.AdamW(loraplus_param_groups(model, lr, arm.options["ratio"]), lr=lr, weight_decay=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _round(x: float) -> float | None:
    return float(f"{x:.6g}") if math.isfinite(x) else None


def _mse_into(holder: dict, model: ValenceModel, ids: torch.Tensor, mask: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
    holder["loss"] = (model(ids, mask) - target).square().mean()
    return holder["loss"]


def run_arm(cfg: CapstoneConfig, data: CapstoneData, arm: Arm | None = None, device: torch.device | str = "cpu",
            on_step: Callable[[ValenceModel, int], None] | None = None) -> tuple[ValenceModel, dict]:
    """Train ``cfg`` (module docstring); ``on_step(model, step)`` is called at step 0 and after every step."""
    if not isinstance(cfg, CapstoneConfig):
        raise TypeError(f"cfg must be a CapstoneConfig, got {type(cfg).__name__}")
    if not isinstance(data, CapstoneData):
        raise TypeError(f"data must be a CapstoneData, got {type(data).__name__}")
    if arm is None:
        arms = arms_for(cfg.steps)
        if cfg.arm not in arms:
            raise ValueError(f"arm must be one of {sorted(arms)} (or pass arm=), got {cfg.arm!r}")
        arm = arms[cfg.arm]
    elif not isinstance(arm, Arm) or arm.name != cfg.arm:
        raise ValueError(f"arm must be an Arm named cfg.arm={cfg.arm!r}")
    model = build_model(arm, cfg.seed, device)
    trainable, total = trainable_parameters(model)
    optimizer = _optimizer(arm, model, cfg.lr)
    allocator = RankAllocator.from_config(model.encoder) if arm.kind == "adalora" else None
    orth = model.encoder.adalora_config.orth_reg_weight if allocator is not None else 0.0
    generator = torch.Generator().manual_seed(cfg.seed)
    record: dict = {"config": dataclasses.asdict(cfg), "label": arm.label, "trainable": trainable, "total": total,
                    "val_steps": [], "val": [], "train_loss": []}

    def validate(step: int) -> None:
        record["val_steps"].append(step)
        record["val"].append(_round(evaluate(model, data.val)["pearson"]))

    if on_step is not None:
        on_step(model, 0)
    times = []
    model.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(data.train), (cfg.batch_size,), generator=generator)
        ids, mask, target = (t.to(device) for t in data.train.batch(idx))
        start = time.perf_counter()
        holder: dict = {}
        forward = functools.partial(_mse_into, holder, model, ids, mask, target)
        if step == 1:
            activations = saved_activation_bytes(model, forward)
        else:
            forward()
        loss = holder["loss"]
        total_loss = loss + orth * orthogonal_regularization(model.encoder) if allocator is not None else loss
        total_loss.backward()
        optimizer.step()
        if allocator is not None:
            allocator.update_and_allocate(model.encoder, step)
        if step == 1:
            record["memory_bytes"] = (parameter_bytes(model) + gradient_bytes(model) + optimizer_state_bytes(optimizer)
                                      + activations)
        optimizer.zero_grad(set_to_none=True)
        if device != "cpu" and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        record["train_loss"].append(_round(loss.detach().item()))
        if on_step is not None:
            on_step(model, step)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            validate(step)
    model.eval()
    record["step_seconds"] = statistics.median(times[1:] if len(times) > 1 else times)
    test, after = evaluate_and_embed(model, data.test)
    record["test"] = {key: _round(value) for key, value in test.items()}
    record["drift"] = _round(float(torch.cosine_similarity(after, data.reference, dim=1).mean()))
    return model, record
