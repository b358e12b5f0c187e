"""Small seeded models shared by the test files (built from configs: no download)."""

from __future__ import annotations

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
