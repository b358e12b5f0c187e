"""Prompt tuning: a trained soft prompt prepended to the input embeddings (notebook 13, eq. 10;
Lester et al. 2021, arXiv:2104.08691).

The model is frozen; ``n`` "virtual tokens" ``P [n, d]`` are placed before the embedded input, so the
model reads ``[P; E(x)]`` (n + t positions; the real tokens sit at positions n .. n+t-1) and the output
for the real tokens is kept. Trainable parameters: ``n d`` (eq. 11), independent of depth. The prompt
costs ``n`` extra positions in every forward and in the KV cache, and it cannot be merged into a weight.

Initialisation, PEFT's three (``prompt_tuning_init``): ``"random"`` (standard normal; Lester et al. note
it can fall far from the embedding manifold), ``"sample_vocab"`` (embeddings of ``n`` token ids drawn
uniformly from the vocabulary) and ``"text"`` (the embeddings of a tokenised text, repeated or cut to ``n``).
For the same ``torch.manual_seed`` lorakit draws the same numbers as PEFT: PEFT first makes an
``nn.Embedding`` (a standard-normal draw of ``n x d``, the random init) and only then, for
``sample_vocab``, draws the token ids, so lorakit draws the normal block first too (it is the random init,
overwritten by the other two).

How the prompt gets in:

* **Hugging Face models**: as PEFT, ``inputs_embeds = [P; E(x)]``, the attention mask gets ``n`` ones in
  front and ``labels`` ``n`` ignored entries (-100); lorakit returns the logits of the real tokens only
  (PEFT returns all ``n + t``; the tests compare ``theirs[:, n:]``).
* **The course TinyLM**, whose forward takes token ids only: the wrapper prepends ``n`` placeholder ids and
  swaps the input embedding for a :class:`VirtualTokenEmbedding` that puts ``P`` at those positions (so the
  model's own rotary positions count them, exactly as in the Hugging Face path), then drops their logits.
  TinyLM's ``max_seq_len`` must hold ``n + t``.

Saved in PEFT's format: ``adapter_config.json`` (``peft_type: "PROMPT_TUNING"``) and one tensor,
``prompt_embeddings [n, d]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.family._apply import CONFIG_ATTR, refuse_family_model
from lorakit.family.config import check_choice, check_positive_int, read_peft_dict
from lorakit.family.hf import is_hf_model
from lorakit.layers import AdapterLayer
from lorakit.models import TinyLM
from lorakit.peft import check_model, set_submodule

__all__ = ["INITS", "PromptTuningConfig", "PromptTuningModel", "VirtualTokenEmbedding", "apply_prompt_tuning",
           "input_embedding"]

PEFT_TYPE = "PROMPT_TUNING"
INITS = ("random", "sample_vocab", "text")
_TO_PEFT = {"random": "RANDOM", "sample_vocab": "SAMPLE_VOCAB", "text": "TEXT"}


@dataclass
class PromptTuningConfig:
    """Prompt-tuning hyper-parameters (PEFT's ``PromptTuningConfig``; ``num_virtual_tokens`` has no default there).

    ``init_text`` is used with ``init="text"`` (tokenised by the ``tokenizer`` given to
    :func:`apply_prompt_tuning`); ``tokenizer_name_or_path`` is only recorded, for PEFT's config file.
    ``token_dim`` is filled in by :func:`apply_prompt_tuning`.
    """

    num_virtual_tokens: int
    init: str = "random"
    init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    token_dim: int | None = None

    PEFT_TYPE = PEFT_TYPE

    def __post_init__(self) -> None:
        self.num_virtual_tokens = check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        check_choice("init", self.init, INITS)
        if self.init == "text" and not (isinstance(self.init_text, str) and self.init_text):
            raise ValueError(f"init='text' needs a non-empty init_text, got {self.init_text!r}")
        if self.init_text is not None and not isinstance(self.init_text, str):
            raise TypeError(f"init_text must be a str or None, got {type(self.init_text).__name__}")
        if self.tokenizer_name_or_path is not None and not isinstance(self.tokenizer_name_or_path, str):
            raise TypeError(f"tokenizer_name_or_path must be a str or None, got {self.tokenizer_name_or_path!r}")
        if self.token_dim is not None:
            self.token_dim = check_positive_int("token_dim", self.token_dim)

    def to_peft_dict(self) -> dict:
        if self.token_dim is None:
            raise ValueError("token_dim is unknown: save a model made by apply_prompt_tuning")
        text = self.init == "text"
        return {"peft_type": PEFT_TYPE, "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
                "num_virtual_tokens": self.num_virtual_tokens, "token_dim": self.token_dim,
                "num_transformer_submodules": 1, "num_attention_heads": None, "num_layers": None,
                "prompt_tuning_init": _TO_PEFT[self.init], "prompt_tuning_init_text": self.init_text if text else None,
                # PEFT requires a tokenizer name for TEXT; it is only used to initialise a *new* prompt
                "tokenizer_name_or_path": (self.tokenizer_name_or_path or "lorakit") if text else None,
                "tokenizer_kwargs": None, "modules_to_save": None, "inference_mode": True}

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> PromptTuningConfig:
        known = {"num_virtual_tokens", "token_dim", "prompt_tuning_init", "prompt_tuning_init_text",
                 "tokenizer_name_or_path", "num_attention_heads", "num_layers"}
        read_peft_dict(raw, PEFT_TYPE, known, {"num_transformer_submodules": 1, "modules_to_save": None,
                                                "tokenizer_kwargs": None}, source)
        init = {v: k for k, v in _TO_PEFT.items()}.get(raw.get("prompt_tuning_init", "RANDOM"))
        if init is None:
            raise ValueError(f"{source}: prompt_tuning_init={raw.get('prompt_tuning_init')!r} is not one of "
                             f"{sorted(_TO_PEFT.values())}")
        try:
            return cls(raw.get("num_virtual_tokens"), init, raw.get("prompt_tuning_init_text"),
                       raw.get("tokenizer_name_or_path"), raw.get("token_dim"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


def input_embedding(model: nn.Module) -> tuple[str, nn.Embedding]:
    """``(name, module)`` of the token embedding: ``get_input_embeddings()`` (HF) or TinyLM's ``embed_tokens``."""
    check_model(model)
    if isinstance(model, TinyLM):
        return "embed_tokens", model.embed_tokens
    if is_hf_model(model):
        emb = model.get_input_embeddings()
        for name, module in model.named_modules():
            if module is emb:
                return name, emb
    raise TypeError(f"model must be the course TinyLM or a Hugging Face model with get_input_embeddings(), got "
                    f"{type(model).__name__}")


class VirtualTokenEmbedding(AdapterLayer):
    """TinyLM's input embedding, with the first ``n`` positions taken by the soft prompt it is handed.

    Used only inside :class:`PromptTuningModel` (which sets ``pending`` for one forward); called on its own it
    raises, so the bare base model cannot silently eat ``n`` real tokens.
    """

    adapter_kind = "prompt tuning"

    def __init__(self, base: nn.Embedding, num_virtual_tokens: int) -> None:
        super().__init__()
        self.base = base
        self.num_virtual_tokens = num_virtual_tokens
        self.pending: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        prompt = self.pending
        if prompt is None:
            raise RuntimeError("this embedding belongs to a PromptTuningModel: call that model, not its base")
        embeds = self.base(input_ids[:, self.num_virtual_tokens:])
        return torch.cat([prompt.to(embeds.dtype).expand(embeds.shape[0], -1, -1), embeds], dim=1)


class PromptTuningModel(AdapterLayer):
    """``base`` with a trainable soft prompt ``prompt_embeddings [n, d]``; ``model(input_ids, ...)`` as before.

    Returns what ``base`` returns, with the ``n`` virtual positions removed from its logits (a decoder) or
    its ``last_hidden_state`` (an encoder such as MiniLM), so outputs line up with the input tokens.
    """

    adapter_kind = "prompt tuning"

    def __init__(self, base: nn.Module, prompt: torch.Tensor, config: PromptTuningConfig) -> None:
        super().__init__()
        self.base = base
        self.num_virtual_tokens = config.num_virtual_tokens
        self.prompt_embeddings = nn.Parameter(prompt)
        self.hf = not isinstance(base, TinyLM)
        self.embedding_name, embedding = input_embedding(base)
        if not self.hf:
            set_submodule(base, self.embedding_name, VirtualTokenEmbedding(embedding, self.num_virtual_tokens))
        setattr(self, CONFIG_ATTR, config)

    def forward(self, input_ids: torch.Tensor, *args: object, **kwargs: object) -> object:
        n = self.num_virtual_tokens
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise TypeError("input_ids must be a 2-D tensor [batch, seq]")
        b = input_ids.shape[0]
        if self.hf:
            embeds = self.base.get_input_embeddings()(input_ids)
            embeds = torch.cat([self.prompt_embeddings.to(embeds.dtype).expand(b, -1, -1), embeds], dim=1)
            mask = kwargs.get("attention_mask")
            if mask is not None:
                kwargs["attention_mask"] = torch.cat([mask.new_ones(b, n), mask], dim=1)
            labels = kwargs.get("labels")
            if labels is not None:
                kwargs["labels"] = torch.cat([labels.new_full((b, n), -100), labels], dim=1)
            token_types = kwargs.get("token_type_ids")  # encoders (BERT): the prompt is segment 0
            if token_types is not None:
                kwargs["token_type_ids"] = torch.cat([token_types.new_zeros(b, n), token_types], dim=1)
            out = self.base(*args, inputs_embeds=embeds, **kwargs)
        else:
            if kwargs or args:
                raise TypeError("the course TinyLM takes input_ids only")
            ids = torch.cat([input_ids.new_zeros(b, n), input_ids], dim=1)  # placeholder ids: replaced by P
            embedding = self.base.get_submodule(self.embedding_name)
            embedding.pending = self.prompt_embeddings
            try:
                out = self.base(ids)
            finally:
                embedding.pending = None
        if isinstance(out, torch.Tensor):
            return out[:, n:]
        for field in ("logits", "last_hidden_state"):  # a decoder's logits, an encoder's hidden states
            value = getattr(out, field, None)
            if isinstance(value, torch.Tensor):
                setattr(out, field, value[:, n:])
        return out

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, token_dim={self.prompt_embeddings.shape[1]}"


def _initial_prompt(config: PromptTuningConfig, embedding: nn.Embedding,
                    tokenizer: Callable[[str], object] | None) -> torch.Tensor:
    n, d = config.num_virtual_tokens, embedding.embedding_dim
    weight = torch.randn(n, d)  # PEFT's nn.Embedding(n, d) draw: the random init (always drawn first)
    if config.init == "random":
        return weight
    if config.init == "sample_vocab":
        ids = torch.randint(0, embedding.num_embeddings, (n,), dtype=torch.long)
    else:
        if tokenizer is None or not callable(tokenizer):
            raise TypeError(f"init='text' needs tokenizer, a callable str -> token ids, got {tokenizer!r}")
        encoded = tokenizer(config.init_text)
        if isinstance(encoded, dict) or hasattr(encoded, "keys"):
            encoded = encoded["input_ids"]
        ids_list = [int(i) for i in encoded]
        if not ids_list:
            raise ValueError(f"init_text={config.init_text!r} tokenises to no ids")
        if any(not 0 <= i < embedding.num_embeddings for i in ids_list):
            raise ValueError(f"tokenizer returned ids outside the vocabulary [0, {embedding.num_embeddings})")
        ids_list = (ids_list * (n // len(ids_list) + 1))[:n]  # repeat or cut to n, as PEFT
        ids = torch.tensor(ids_list, dtype=torch.long)
    with torch.no_grad():
        return embedding(ids.to(embedding.weight.device)).detach().float().cpu()


def apply_prompt_tuning(model: nn.Module, config: PromptTuningConfig,
                        tokenizer: Callable[[str], object] | None = None) -> PromptTuningModel:
    """Wrap ``model`` (TinyLM or a Hugging Face model) in a :class:`PromptTuningModel`; freeze ``model``.

    Returns the wrapper (as PEFT's ``get_peft_model`` returns a ``PeftModel``); ``model`` itself is frozen and,
    for TinyLM, gets a :class:`VirtualTokenEmbedding` (call the wrapper, not ``model``). Atomic on error.
    """
    check_model(model)
    if not isinstance(config, PromptTuningConfig):
        raise TypeError(f"config must be a PromptTuningConfig, got {type(config).__name__}")
    refuse_family_model(model, "apply_prompt_tuning")
    _, embedding = input_embedding(model)
    if isinstance(model, TinyLM) and config.num_virtual_tokens >= model.config.max_seq_len:
        raise ValueError(f"num_virtual_tokens={config.num_virtual_tokens} leaves no room in TinyLM's "
                         f"max_seq_len={model.config.max_seq_len}")
    prompt = _initial_prompt(config, embedding, tokenizer)
    w = embedding.weight
    prompt = prompt.to(device=w.device, dtype=torch.float64 if w.dtype == torch.float64 else torch.float32)
    stored = dataclasses.replace(config, token_dim=embedding.embedding_dim)
    with unchanged_on_error(model):
        for p in model.parameters():
            p.requires_grad_(False)
        wrapper = PromptTuningModel(model, prompt, stored)
    return wrapper


# ---------------------------------------------------------------------------------------------- PEFT format
def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, PromptTuningModel):
        raise TypeError(f"model must be a PromptTuningModel, got {type(model).__name__}")
    return {"prompt_embeddings": model.prompt_embeddings.detach().contiguous()}


def expected_shapes(model: nn.Module, config: PromptTuningConfig) -> dict[str, tuple[int, ...]]:
    if isinstance(model, PromptTuningModel):
        shape = tuple(model.prompt_embeddings.shape)
        if shape[0] != config.num_virtual_tokens:
            raise ValueError(f"the adapter has num_virtual_tokens={config.num_virtual_tokens} but the model {shape[0]}")
        return {"prompt_embeddings": shape}
    _, emb = input_embedding(model)
    if config.token_dim is not None and config.token_dim != emb.embedding_dim:
        raise ValueError(f"the adapter has token_dim={config.token_dim} but the model's embedding has "
                         f"{emb.embedding_dim}")
    return {"prompt_embeddings": (config.num_virtual_tokens, emb.embedding_dim)}


def load_into(model: nn.Module, config: PromptTuningConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    if not isinstance(model, PromptTuningModel):
        model = apply_prompt_tuning(model, dataclasses.replace(config, init="random"))
        setattr(model, CONFIG_ATTR, dataclasses.replace(config, token_dim=model.prompt_embeddings.shape[1]))
    with torch.no_grad():
        model.prompt_embeddings.copy_(tensors["prompt_embeddings"])
    return model
