"""Fine-tune the course model with LoRA/DoRA/AdaLoRA/QLoRA under DDP or FSDP2, on N processes (notebook 16).

    torchrun --nproc_per_node 2 scripts/train_distributed.py --method qlora --engine fsdp --out run.json
    torchrun --nproc_per_node 2 scripts/train_distributed.py --method lora --engine ddp --adapter-dir adapter/

CPU: the ``gloo`` backend (several processes on one machine, as in CI); GPU: ``nccl``, one GPU per process
(``--backend auto`` picks nccl when CUDA is present). Each rank trains on its rows of the same global batches
(:mod:`lorakit.distributed.recipe`), so the losses equal a single-process run's. Rank 0 writes a JSON file with
the loss per step, the bytes each rank holds (weights, gradients, Adam's moments; measured with
:func:`lorakit.distributed.rank_bytes`), the derived bytes per rank (:func:`lorakit.distributed.per_rank_bytes`,
fp32 training) and its provenance (command, versions, machine, wall time). ``--adapter-dir`` saves the trained
adapter from rank 0 in PEFT's format.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from lorakit.distributed import (
    METHODS,
    build_model,
    per_rank_bytes,
    rank_bytes,
    save_adapter,
    shard_model,
    train_steps,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=METHODS, default="lora")
    p.add_argument("--engine", choices=("ddp", "fsdp"), default="ddp")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (split over the ranks)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the JSON file rank 0 writes")
    p.add_argument("--adapter-dir", type=Path, default=None, help="save the trained adapter here (rank 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "RANK" not in os.environ:
        sys.exit("run me with torchrun, e.g. torchrun --nproc_per_node 2 scripts/train_distributed.py --out run.json")
    backend = args.backend if args.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    dist.init_process_group(backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        start = time.perf_counter()
        model = build_model(args.method, steps=args.steps, seed=args.seed, device=device)
        params = list(model.parameters())
        n_params = sum(p.numel() for p in params)
        n_trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen_bytes = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
        wrapped = shard_model(model, args.engine)
        losses, optimizer = train_steps(wrapped, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                        seed=args.seed)
        measured = rank_bytes(wrapped, optimizer)
        if args.adapter_dir is not None:
            save_adapter(wrapped, args.adapter_dir)
        wall = time.perf_counter() - start
        gathered: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, measured)
        if rank == 0:
            # eq. 1 in fp32 (4 B weights and grads, no master copy, Adam's two fp32 moments); the frozen base's
            # real bytes (4-bit codes for QLoRA) are used for the frozen weights
            derived = per_rank_bytes(n_trainable, n_trainable, world, args.engine, weight_bytes=4, grad_bytes=4,
                                     master_bytes=0, optimizer_bytes=8)
            shard = world if args.engine == "fsdp" else 1
            record = {
                "method": args.method, "engine": args.engine, "backend": backend, "world_size": world,
                "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "losses": losses,
                "n_param_elements": n_params, "n_trainable": n_trainable,
                "bytes_per_rank": gathered,
                "derived_bytes_per_rank": {
                    "frozen_weights": frozen_bytes / shard, "trainable_weights": derived.weights,
                    "gradients": derived.gradients, "optimizer_states": derived.optimizer_states,
                },
                "provenance": {
                    "command": "torchrun --nproc_per_node {} {}".format(world, " ".join(sys.argv)),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "machine": platform.machine(), "wall_s_rank0": round(wall, 2),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                },
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=2) + "\n")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
