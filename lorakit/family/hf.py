"""The course's TinyLM as a Hugging Face ``LlamaForCausalLM`` with the same weights (notebook 13, section 6).

TinyLM is a LLaMA at toy scale (RMSNorm, rotary embeddings with ``rotate_half``, SwiGLU, no biases, the
same module names), so transformers' Llama computes the same function from the same tensors. That lets
the notebook and the tests run Hugging Face PEFT's prompt and prefix tuning on the course model and compare
them with lorakit's, which on TinyLM work through lorakit's own hooks (:mod:`lorakit.family.prompt_tuning`,
:mod:`lorakit.family.prefix_tuning`). transformers is needed only here (imported on call).
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.models import TinyLM

__all__ = ["is_hf_model", "tiny_lm_to_llama"]


def is_hf_model(model: object) -> bool:
    """True for a transformers ``PreTrainedModel`` (has a ``config`` and ``get_input_embeddings``)."""
    return isinstance(model, nn.Module) and hasattr(model, "config") and callable(
        getattr(model, "get_input_embeddings", None)) and not isinstance(model, TinyLM)


def tiny_lm_to_llama(model: TinyLM) -> nn.Module:
    """A ``transformers.LlamaForCausalLM`` holding copies of ``model``'s weights (same dtype and device), eval mode."""
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a lorakit.models.TinyLM, got {type(model).__name__}")
    import transformers

    c = model.config
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads, max_position_embeddings=max(c.max_seq_len, 64),
        rms_norm_eps=c.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    weight = model.lm_head.weight
    llama = transformers.LlamaForCausalLM(config).to(device=weight.device, dtype=weight.dtype)
    state = {("lm_head." + k[len("lm_head."):]) if k.startswith("lm_head.") else "model." + k: v
             for k, v in model.state_dict().items()}
    missing, unexpected = llama.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"TinyLM -> Llama weight mapping failed: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():  # the copy must not share storage with the course model
        for p in llama.parameters():
            p.data = p.data.clone()
    return llama.eval()
