"""Seeded fine-tuning runs of the course model on the Caesar task, evaluated on every task as they go.

* :func:`course_tasks`: the Caesar training words and the held-out evaluations: Caesar itself and the two
  pretraining tasks, ``copy`` (marker ``=``) and ``rot1`` (marker ``>``, the marker Caesar shares), on the same
  held-out words; optionally the training words themselves (``train``, for a generalisation gap).
* :class:`RunConfig` and :func:`build_model`: the pretrained (or a random) base, fine-tuned fully or with LoRA
  (any rank, scaling, targets, and one of the :data:`STARTS` of notebook 02).
* :func:`finetune`: AdamW on the trainable parameters, exactly :func:`lorakit.training.train`'s loop and
  minibatch order, with every task evaluated at step 0 and every ``eval_every`` steps; :func:`sweep` runs many.

One *seed* fixes everything random in a run: the adapter's initial factors (or the random base) and the
minibatch order. The words are the course's fixed task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from lorakit.data import Batch, caesar_task, evaluate, lm_loss, make_batch, random_words
from lorakit.models import TinyLM, load_tiny_lm
from lorakit.peft import LoRAConfig, apply_lora, lora_layers
from lorakit.training import seed_everything

__all__ = ["METHODS", "METRICS", "STARTS", "CourseTasks", "RunConfig", "build_model", "course_tasks", "finetune",
           "sweep"]

#: "lora": LoRA layers on ``target_modules``, everything else frozen; "full": every parameter trains.
METHODS = ("lora", "full")
#: Notebook 02's starts: name -> (``LoRAConfig.init``, whether B is then drawn like a Kaiming layer of fan-in r).
STARTS: dict[str, tuple[str, bool]] = {
    "kaiming": ("kaiming", False),  # A Kaiming-uniform, B = 0 (PEFT's default)
    "gaussian": ("gaussian", False),  # A ~ N(0, 1/r^2), B = 0 (PEFT's "gaussian")
    "zeros": ("zeros", False),  # A = B = 0: never learns
    "zero_A_random_B": ("zeros", True),  # A = 0, B random
    "random_A_random_B": ("kaiming", True),  # both random: starts away from the pretrained model
}
#: The metrics :func:`lorakit.data.evaluate` returns, recorded for every task.
METRICS = ("loss", "letter_acc", "exact_match")


@dataclass
class CourseTasks:
    """The training batch of a run and its evaluations ``{name: held-out batch}`` (see :func:`course_tasks`)."""

    train: Batch
    evals: dict[str, Batch] = field(default_factory=dict)


def course_tasks(n_train: int = 512, n_eval: int = 256, eval_train: bool = False, seed: int = 0) -> CourseTasks:
    """Caesar training words; held-out ``caesar``, ``copy`` and ``rot1`` on the same words (and ``train``).

    The training words are the first ``n_train`` of :func:`lorakit.data.caesar_task`'s stream, so a smaller
    training set is a prefix of a larger one; the held-out words are those of ``caesar_task(..., n_eval)``.
    """
    for name, n in (("n_train", n_train), ("n_eval", n_eval)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    train, heldout = caesar_task(n_train=n_train, n_eval=n_eval, seed=seed)
    words = random_words(n_eval, seed + 1, "heldout")  # the words of caesar_task's held-out batch
    evals = {"caesar": heldout, "copy": make_batch(words, "copy"), "rot1": make_batch(words, "rot1")}
    if eval_train:
        evals["train"] = train
    return CourseTasks(train=train, evals=evals)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class RunConfig:
    """One fine-tuning run. ``r``, ``alpha``, ``rslora``, ``start`` and ``target_modules`` apply to LoRA only."""

    method: str = "lora"
    lr: float = 3e-3
    seed: int = 0
    steps: int = 300
    r: int = 8
    alpha: float = 16
    rslora: bool = False
    start: str = "kaiming"
    target_modules: str = "all-linear"
    weight_decay: float = 0.0
    base: str = "pretrained"
    batch_size: int = 64
    eval_every: int = 25

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {sorted(STARTS)}, got {self.start!r}")
        if self.base not in ("pretrained", "random"):
            raise ValueError(f"base must be 'pretrained' or 'random', got {self.base!r}")
        for name in ("steps", "batch_size", "eval_every", "r"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        for name, low in (("lr", 0.0), ("alpha", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > low):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (math.isfinite(wd) and wd >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")


def build_model(cfg: RunConfig) -> nn.Module:
    """The model ``cfg`` fine-tunes (CPU, fp32), seeded with ``cfg.seed``; its trainable parameters require grad."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    if cfg.base == "pretrained":
        seed_everything(cfg.seed)
        model = load_tiny_lm()
    else:
        config = load_tiny_lm().config
        seed_everything(cfg.seed)
        model = TinyLM(config).eval()  # the same architecture with random weights
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    init, random_b = STARTS[cfg.start]
    apply_lora(model, LoRAConfig(r=cfg.r, alpha=cfg.alpha, target_modules=cfg.target_modules, rslora=cfg.rslora,
                                 init=init))
    if random_b:
        with torch.no_grad():
            for layer in lora_layers(model).values():
                nn.init.kaiming_uniform_(layer.lora_B, a=math.sqrt(5))  # fan-in of B is r: bound 1/sqrt(r)
    return model


def _round(x: float) -> float | None:
    """6 significant digits (small, readable JSON; the runs are deterministic anyway); None if not finite."""
    return float(f"{x:.6g}") if math.isfinite(x) else None


def _evaluate_all(model: nn.Module, tasks: CourseTasks, record: dict, step: int) -> None:
    record["eval_steps"].append(step)
    for name, batch in tasks.evals.items():
        metrics = evaluate(model, batch)
        for key in METRICS:
            record["metrics"][name][key].append(_round(metrics[key]))


def finetune(cfg: RunConfig, tasks: CourseTasks | None = None, device: torch.device | str = "cpu",
             progress: bool = False) -> tuple[nn.Module, dict]:
    """Run ``cfg``; return the trained model and its record.

    The record is a JSON-ready dict: ``config`` (the RunConfig as a dict), ``data`` (the number of training
    words and of words in each evaluation), ``eval_steps`` (0, every
    ``eval_every`` steps, and the last), ``metrics[task][metric]`` (one value per evaluated step, for every task
    of ``tasks`` and every metric of :data:`METRICS`) and ``train_loss`` (one value per step; None if not finite).
    The loop is :func:`lorakit.training.train`'s: the same AdamW and the same seeded minibatch order. Numbers
    printed by the notebooks are CPU results; on a GPU the last digits differ.
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    tasks = course_tasks() if tasks is None else tasks
    if not isinstance(tasks, CourseTasks):
        raise TypeError(f"tasks must be a CourseTasks, got {type(tasks).__name__}")
    model = build_model(cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = tasks.train
    sizes = {"n_train": len(data), **{name: len(batch) for name, batch in tasks.evals.items()}}
    record: dict = {"config": asdict(cfg), "data": sizes, "eval_steps": [], "train_loss": [],
                    "metrics": {name: {key: [] for key in METRICS} for name in tasks.evals}}
    _evaluate_all(model, tasks, record, 0)
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), disable=not progress, desc="finetune", leave=False):
        idx = torch.randint(len(data), (min(cfg.batch_size, len(data)),), generator=generator)
        loss = lm_loss(model(data.input_ids[idx].to(device)), data.targets[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record["train_loss"].append(_round(loss.detach().item()))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            _evaluate_all(model, tasks, record, step)
    model.eval()
    return model, record


def sweep(configs: Iterable[RunConfig], tasks: CourseTasks | None = None, progress: bool = False,
          on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """:func:`finetune` every config on CPU (the models are dropped); ``on_record(record)`` after each run."""
    configs = list(configs)
    bad = [c for c in configs if not isinstance(c, RunConfig)]
    if bad:
        raise TypeError(f"configs must be RunConfig objects, got {type(bad[0]).__name__}")
    tasks = course_tasks() if tasks is None else tasks
    records = []
    for cfg in tqdm(configs, disable=not progress, desc="sweep"):
        _, record = finetune(cfg, tasks)
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records
