"""Small seeded models and PEFT cross-check helpers shared by the test files (built from configs: no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from lorakit.models import TinyLM, TinyLMConfig


def tiny_llama(seed: int = 0) -> nn.Module:
    """A 2-layer Hugging Face LlamaForCausalLM (hidden 32, GQA 4/2 heads), eval mode."""
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_lm(seed: int = 0) -> TinyLM:
    """A randomly initialised course-architecture TinyLM (d_model 32), eval mode."""
    torch.manual_seed(seed)
    return TinyLM(TinyLMConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16)).eval()


# ------------------------------------------------------------------ PEFT cross-check helpers (LoRA and DoRA)
#: PEFT's key prefix for the wrapped model's modules.
PREFIX = "base_model.model."
#: The three ways of naming targets that lorakit and PEFT must both understand.
TARGETS = {"qv": ["q_proj", "v_proj"], "all-linear": "all-linear", "regex": r".*\.(k_proj|o_proj|down_proj)"}


def input_ids(vocab: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name in the base model: PEFT LoRA (or DoRA) layer}``."""
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix(PREFIX): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def load_script(filename: str) -> ModuleType:
    """Import ``scripts/<filename>`` as a module (its ``if __name__ == "__main__"`` part does not run)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
