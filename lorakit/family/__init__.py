"""The wider PEFT family, one concept a module (notebook 13).

Four families (notebook 13, section 1), each method with the same model-level conventions as
:func:`lorakit.apply_lora` (a config dataclass with PEFT's defaults and ``to_peft_dict``/``from_peft_dict``,
targets chosen by :func:`lorakit.peft.select_target_modules`, no stacking, atomic on error, counted by
:func:`lorakit.trainable_parameters`):

* **additive low-rank**: LoRA, rsLoRA, DoRA (:mod:`lorakit.lora`, :mod:`lorakit.dora`), and here
  :mod:`~lorakit.family.vera` (shared random A, B; trained vectors), :mod:`~lorakit.family.qdora` (DoRA on an
  NF4 base), :mod:`~lorakit.family.loraplus` (a larger learning rate for B: an optimizer helper);
* **additive modules**: :mod:`~lorakit.family.adapters` (Houlsby, Pfeiffer, parallel bottlenecks) and the
  multiplicative :mod:`~lorakit.family.ia3`;
* **soft prompts**: :mod:`~lorakit.family.prompt_tuning`, :mod:`~lorakit.family.prefix_tuning`;
* **selective**: :mod:`~lorakit.family.bitfit` (biases), :mod:`~lorakit.family.ln_tuning` (norm layers).

Plus :mod:`~lorakit.family.galore` (full-parameter training with a low-rank optimizer state),
:mod:`~lorakit.family.io` (PEFT's on-disk format for all of them), :mod:`~lorakit.family.hf` (the course
model as a transformers Llama, to run PEFT on it) and :mod:`~lorakit.family.minilm` (MiniLM-L6, offline).
"""

from lorakit.family.adapters import AdapterConfig, BottleneckAdapterLinear, apply_adapters
from lorakit.family.bitfit import BiasLinear, BitFitConfig, apply_bitfit, bitfit_parameters
from lorakit.family.galore import GaLoreAdamW, adam_state_numbers, galore_param_groups, galore_state_numbers
from lorakit.family.hf import tiny_lm_to_llama
from lorakit.family.ia3 import IA3Config, IA3Linear, apply_ia3
from lorakit.family.io import load_family_adapter, save_family_adapter
from lorakit.family.ln_tuning import LNTuningConfig, LNTuningLayer, apply_ln_tuning
from lorakit.family.loraplus import create_loraplus_optimizer, loraplus_param_groups
from lorakit.family.prefix_tuning import PrefixTuningConfig, PrefixTuningModel, apply_prefix_tuning, prefix_cache_bytes
from lorakit.family.prompt_tuning import PromptTuningConfig, PromptTuningModel, apply_prompt_tuning
from lorakit.family.qdora import QDoRALinear, apply_qdora, load_qdora_adapter, save_qdora_adapter
from lorakit.family.vera import VeRAConfig, VeRALinear, apply_vera, vera_projections

__all__ = [
    "AdapterConfig", "BiasLinear", "BitFitConfig", "BottleneckAdapterLinear", "GaLoreAdamW", "IA3Config", "IA3Linear",
    "LNTuningConfig", "LNTuningLayer", "PrefixTuningConfig", "PrefixTuningModel", "PromptTuningConfig",
    "PromptTuningModel", "QDoRALinear", "VeRAConfig", "VeRALinear", "adam_state_numbers", "apply_adapters",
    "apply_bitfit", "apply_ia3", "apply_ln_tuning", "apply_prefix_tuning", "apply_prompt_tuning", "apply_qdora",
    "apply_vera", "bitfit_parameters", "create_loraplus_optimizer", "galore_param_groups", "galore_state_numbers",
    "load_family_adapter", "load_qdora_adapter", "loraplus_param_groups", "prefix_cache_bytes", "save_family_adapter",
    "save_qdora_adapter", "tiny_lm_to_llama", "vera_projections",
]
