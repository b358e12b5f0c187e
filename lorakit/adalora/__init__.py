"""AdaLoRA: SVD-form adapters whose rank budget is re-allocated by importance (notebook 10).

Zhang et al. (2023), "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", arXiv:2303.10512.
Everything here follows Hugging Face PEFT's implementation (``peft.tuners.adalora``) operation by
operation, and ``tests/test_adalora_crosscheck.py`` checks that the numbers agree.

The subpackage shows its parts, one concept a module:

* :mod:`~lorakit.adalora.layer`: ``SVDLinear``, the update ``P Λ Q`` (eq. 1), its merge and unmerge;
* :mod:`~lorakit.adalora.schedule`: the cubic budget schedule (eq. 6);
* :mod:`~lorakit.adalora.allocator`: ``RankAllocator``, importance scores and masking (eqs. 2-5);
* :mod:`~lorakit.adalora.regularization`: the orthogonal regularizer (eq. 7);
* :mod:`~lorakit.adalora.config`: ``AdaLoRAConfig`` and PEFT's ``adapter_config.json``;
* :mod:`~lorakit.adalora.model`: ``apply_adalora``;
* :mod:`~lorakit.adalora.io`: saving and loading in PEFT's AdaLoRA format (``lorakit.save_adapter`` /
  ``lorakit.load_adapter`` call it);
* :mod:`~lorakit.adalora.training`: ``train_adalora``, the course's loop plus the allocator;
* :mod:`~lorakit.adalora.report`: ranks per layer, as a grid and a table.

Merging (``lorakit.merge_lora``, ``unmerge_lora``, ``merge_and_unload``) works on AdaLoRA models as on LoRA
ones: ``W0 + scaling / (ranknum + 1e-5) * P Λ Q``, formed in the adapter dtype and rounded once.
"""

from lorakit.adalora.allocator import RankAllocator, triplet_score
from lorakit.adalora.config import ADALORA_UNSUPPORTED_FIELDS, RANK_PATTERN_SUFFIX, AdaLoRAConfig, check_rank_pattern
from lorakit.adalora.io import (
    FACTORS,
    adalora_state_dict,
    load_adalora_adapter,
    rank_pattern_of,
    save_adalora_adapter,
    tensor_key,
)
from lorakit.adalora.layer import INIT_STD, RANKNUM_EPS, SUPPORTED_DTYPES, SVDLinear, adalora_layers
from lorakit.adalora.model import apply_adalora
from lorakit.adalora.regularization import orthogonal_regularization, orthogonality_errors
from lorakit.adalora.report import effective_parameters, format_rank_table, rank_grid, rank_report
from lorakit.adalora.schedule import budget_schedule
from lorakit.adalora.training import AdaLoRAHistory, train_adalora

__all__ = [
    "ADALORA_UNSUPPORTED_FIELDS", "FACTORS", "INIT_STD", "RANKNUM_EPS", "RANK_PATTERN_SUFFIX", "SUPPORTED_DTYPES",
    "AdaLoRAConfig", "AdaLoRAHistory", "RankAllocator", "SVDLinear", "adalora_layers", "adalora_state_dict",
    "apply_adalora", "budget_schedule", "check_rank_pattern", "effective_parameters", "format_rank_table",
    "load_adalora_adapter", "orthogonal_regularization", "orthogonality_errors", "rank_grid", "rank_pattern_of",
    "rank_report", "save_adalora_adapter", "tensor_key", "train_adalora", "triplet_score",
]
