"""The capstone's model: MiniLM-L6 reads a token, a linear head predicts its valence (notebook 11, §1).

``ValenceModel(encoder, head)``: the encoder's last hidden states are mean-pooled over the real tokens (the
sentence-transformers pooling MiniLM-L6 was trained with), and ``head: nn.Linear(384, 1)`` maps the pooled
vector to the valence divided by 4 (so targets lie in [-1, 1]). The head always trains (PEFT's
``modules_to_save`` for a new task head); what else trains is the method under test. The adapters are put into
``encoder`` only, so the head is never adapted itself.

:func:`encode_tokens` tokenizes the lexicon once (``[CLS] token [SEP]``, padded to the longest, with the
attention mask); :func:`predict` and :func:`evaluate` run the model on them in chunks; :func:`embeddings` is the
encoder's pooled output alone (the "original behaviour" whose drift section 6 measures).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lorakit.capstone.lexicon import Lexicon, pearson

__all__ = ["SCALE", "Encoded", "ValenceModel", "by_length", "embeddings", "encode_tokens", "evaluate",
           "evaluate_and_embed", "mean_pool", "predict", "scores"]

#: Valence is predicted divided by SCALE (the rating scale's maximum), so the regression target lies in [-1, 1].
SCALE = 4.0


@dataclass(frozen=True)
class Encoded:
    """Tokenized lexicon entries: ``input_ids``/``attention_mask`` ``[n, L]`` and ``target`` (mean / SCALE)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``index``, cut to the longest real sequence among them (less padding, faster steps)."""
        mask = self.attention_mask[index]
        length = int(mask.sum(1).max())
        return self.input_ids[index, :length], mask[:, :length], self.target[index]


def encode_tokens(tokenizer: object, lexicon: Lexicon) -> Encoded:
    """Tokenize every entry of ``lexicon`` with MiniLM's own tokenizer (``lorakit.models.load_minilm_tokenizer``)."""
    if not isinstance(lexicon, Lexicon):
        raise TypeError(f"lexicon must be a Lexicon, got {type(lexicon).__name__}")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}")
    enc = tokenizer(list(lexicon.tokens), padding=True, return_tensors="pt")
    return Encoded(enc["input_ids"], enc["attention_mask"], (lexicon.mean / SCALE).float())


def by_length(data: Encoded) -> Encoded:
    """The same rows sorted by real length (shortest first), so that chunks of :func:`predict` carry little padding."""
    if not isinstance(data, Encoded):
        raise TypeError(f"data must be an Encoded, got {type(data).__name__}")
    order = torch.sort(data.attention_mask.sum(1), stable=True).indices
    return Encoded(data.input_ids[order], data.attention_mask[order], data.target[order])


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [b, L, d]`` over the positions where ``mask [b, L]`` is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


class ValenceModel(nn.Module):
    """``head(mean_pool(encoder(ids).last_hidden_state))``: the valence / SCALE of each sequence."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        if not isinstance(head, nn.Linear) or head.out_features != 1:
            raise TypeError("head must be an nn.Linear with out_features=1")
        self.encoder, self.head = encoder, head

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(input_ids, attention_mask)
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float()


@torch.no_grad()
def _chunks(fn, data: Encoded, chunk: int) -> torch.Tensor:
    outs = []
    for start in range(0, len(data), chunk):
        ids, mask, _ = data.batch(torch.arange(start, min(start + chunk, len(data))))
        outs.append(fn(ids, mask).float().cpu())
    return torch.cat(outs)


def predict(model: ValenceModel, data: Encoded, chunk: int = 512) -> torch.Tensor:
    """Predicted valence / SCALE of every row, in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return _chunks(lambda i, m: model(i.to(device), m.to(device)), data, chunk)
    finally:
        model.train(was)


def embeddings(model: ValenceModel, data: Encoded, chunk: int = 512) -> torch.Tensor:
    """The encoder's mean-pooled embeddings ``[n, d]`` (no head), in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return _chunks(lambda i, m: model.pooled(i.to(device), m.to(device)), data, chunk)
    finally:
        model.train(was)


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``pearson`` (with the ten-rater mean) and ``rmse`` on the -4..4 scale of predictions of valence / SCALE."""
    return {"pearson": pearson(pred, target), "rmse": float(((pred - target) * SCALE).square().mean().sqrt())}


def evaluate(model: ValenceModel, data: Encoded) -> dict[str, float]:
    """:func:`scores` of the model's predictions on ``data``."""
    return scores(predict(model, data), data.target)


def evaluate_and_embed(model: ValenceModel, data: Encoded) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`evaluate` and :func:`embeddings` in one pass over ``data`` (the head reads the pooled vectors)."""
    pooled = embeddings(model, data)
    with torch.no_grad():
        head = model.head
        pred = head(pooled.to(device=head.weight.device, dtype=head.weight.dtype)).squeeze(-1).float().cpu()
    return scores(pred, data.target), pooled
