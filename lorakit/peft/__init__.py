"""The model-level API, PEFT-like (notebooks 01-04): config, targets, apply, count, merge, save and load.

The subpackage shows its parts, one concept a module:

* :mod:`~lorakit.peft.config`: ``LoRAConfig`` (PEFT's defaults) and PEFT's ``adapter_config.json``;
* :mod:`~lorakit.peft.targets`: which layers ``target_modules`` selects, and the no-stacking rule;
* :mod:`~lorakit.peft.model`: ``apply_lora``, ``trainable_parameters``, ``merge_lora``, ``unmerge_lora``,
  ``merge_and_unload``;
* :mod:`~lorakit.peft.io`: ``save_adapter`` / ``load_adapter`` in PEFT's on-disk format (PiSSA and
  AdaLoRA included).

Every function that changes a model is atomic: when it raises, the model is as it was.
"""

from lorakit.lora import INITS
from lorakit.peft.config import DEFAULT_TARGETS, LoRAConfig
from lorakit.peft.io import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MAGNITUDE_KEY,
    PEFT_PREFIX,
    adapter_state_dict,
    load_adapter,
    save_adapter,
)
from lorakit.peft.model import (
    apply_lora,
    lora_layers,
    merge_and_unload,
    merge_lora,
    refuse_adapted_model,
    trainable_parameters,
    unmerge_lora,
)
from lorakit.peft.targets import (
    check_model,
    check_target_modules,
    find_target_modules,
    select_target_modules,
    set_submodule,
)

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "DEFAULT_TARGETS", "INITS", "MAGNITUDE_KEY", "PEFT_PREFIX", "LoRAConfig",
    "adapter_state_dict", "apply_lora", "check_model", "check_target_modules", "find_target_modules", "load_adapter",
    "lora_layers", "merge_and_unload", "merge_lora", "refuse_adapted_model", "save_adapter", "select_target_modules",
    "set_submodule", "trainable_parameters", "unmerge_lora",
]
