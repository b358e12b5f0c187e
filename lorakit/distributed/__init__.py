"""lorakit under PyTorch's own distributed engines, DDP and FSDP2 (notebook 16).

Nothing here replaces DDP (``torch.nn.parallel.DistributedDataParallel``) or FSDP2
(``torch.distributed.fsdp.fully_shard``): lorakit's layers are ordinary modules and run under both
unchanged. This subpackage holds what a training script around them needs, one concept a module:

* :mod:`~lorakit.distributed.recipe`: the course's fine-tuning step split over ranks (each rank takes a
  slice of the global batch; the loss is normalised by the *global* token count, so averaging the
  gradients gives exactly the single-process gradient), wrapping with DDP or FSDP2, and where AdaLoRA's
  ``update_and_allocate`` goes (after ``backward`` and ``optimizer.step``, before ``zero_grad``: the
  gradients are all-reduced by then, so every rank prunes the same singular values);
* :mod:`~lorakit.distributed.accounting`: bytes held per rank, measured (shards of DTensors counted
  locally) and derived (notebook 16, eq. 1);
* :mod:`~lorakit.distributed.checkpoint`: ``save_adapter`` from rank 0 of a DDP or FSDP2 model (every
  rank gathers the shards, rank 0 writes PEFT's format).
"""

from lorakit.distributed.accounting import ENGINES, local_bytes, per_rank_bytes, rank_bytes
from lorakit.distributed.checkpoint import save_adapter, unwrap
from lorakit.distributed.recipe import METHODS, build_model, global_batch, shard_model, train_steps

__all__ = [
    "ENGINES", "METHODS", "build_model", "global_batch", "local_bytes", "per_rank_bytes", "rank_bytes",
    "save_adapter", "shard_model", "train_steps", "unwrap",
]
