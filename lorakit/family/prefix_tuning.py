"""Prefix tuning: trained key/value vectors prepended in every attention layer (notebook 13, eq. 12;
Li & Liang 2021, arXiv:2101.00190).

Each of the ``L`` attention layers gets ``n`` extra keys and values, the *prefix*, that every real token
attends to; nothing else changes (notebook 13, section 2)::

    Attention(q, [P_k; K], [P_v; V]),     P_k, P_v ∈ R^{n x d_kv} per layer

The prefix is not an input token: it has no embedding, passes through no layer, and its keys carry no
rotary rotation (they *are* the cached keys). Trainable parameters: ``2 L n d_kv`` (eq. 13), where
``d_kv`` is the key/value width (``d_model``, or ``n_kv_heads * head_dim`` with grouped-query attention, as
PEFT computes it). With ``prefix_projection=True`` (Li & Liang's reparameterisation) the prefix is the output
of a two-layer MLP, ``P = W_2 tanh(W_1 E + b_1) + b_2`` over ``E [n, d_kv]``: more parameters while training,
and only its output is saved (PEFT does the same; so a reloaded adapter is the plain prefix).

How the prefix gets in, matching Hugging Face PEFT:

* **Hugging Face models**: as PEFT's ``get_prompt``: the ``[n, 2 L d_kv]`` prefix is cut into per-layer
  keys and values (layout ``[layer 0 K | layer 0 V | layer 1 K | ...]``), passed as a ``DynamicCache`` of
  length ``n`` (so the real tokens get positions n .. n+t-1) and the attention mask gets ``n`` ones in front.
* **The course TinyLM**: each ``self_attn`` is wrapped in a :class:`PrefixAttention` that concatenates its
  layer's prefix to the rotated keys and values and uses positions n .. n+t-1 for the real tokens, the same
  function as the Hugging Face path on the same weights (``tests/test_family_peft_crosscheck.py`` compares
  it with PEFT on :func:`lorakit.family.hf.tiny_lm_to_llama`). Gradient checkpointing is refused (PEFT
  refuses it too).

The cost is at inference: every layer's KV cache holds ``n`` more entries per sequence (``2 L n d_kv``
numbers, :func:`prefix_cache_bytes`) and every query attends to ``n`` more keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.family._apply import CONFIG_ATTR, refuse_family_model
from lorakit.family.config import check_bool, check_choice, check_positive_int, read_peft_dict
from lorakit.family.hf import is_hf_model
from lorakit.layers import AdapterLayer
from lorakit.models import Attention, TinyLM, apply_rotary, rotary_tables
from lorakit.peft import check_model, set_submodule

__all__ = ["PrefixAttention", "PrefixEncoder", "PrefixTuningConfig", "PrefixTuningModel", "apply_prefix_tuning",
           "prefix_cache_bytes", "prefix_dims"]

PEFT_TYPE = "PREFIX_TUNING"


@dataclass
class PrefixTuningConfig:
    """Prefix-tuning hyper-parameters (PEFT's ``PrefixTuningConfig``; ``num_virtual_tokens`` is required).

    ``encoder_hidden_size`` (MLP width with ``prefix_projection``) defaults to ``token_dim``;
    ``init_weights="zero"`` starts the prefix (or the MLP's last layer) at zero, PEFT's option.
    ``num_layers``, ``token_dim``, ``num_attention_heads`` are filled in from the model by :func:`apply_prefix_tuning`.
    """

    num_virtual_tokens: int
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    init_weights: str | None = None
    num_layers: int | None = None
    token_dim: int | None = None
    num_attention_heads: int | None = None

    PEFT_TYPE = PEFT_TYPE

    def __post_init__(self) -> None:
        self.num_virtual_tokens = check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        check_bool("prefix_projection", self.prefix_projection)
        for name in ("encoder_hidden_size", "num_layers", "token_dim", "num_attention_heads"):
            if getattr(self, name) is not None:
                setattr(self, name, check_positive_int(name, getattr(self, name)))
        if self.init_weights is not None:
            check_choice("init_weights", self.init_weights, ("zero",))
        td, heads = self.token_dim, self.num_attention_heads
        if td is not None and heads is not None and td % heads:
            raise ValueError(f"token_dim={td} must split into num_attention_heads={heads}")

    def to_peft_dict(self) -> dict:
        if None in (self.num_layers, self.token_dim, self.num_attention_heads):
            raise ValueError("the model dimensions are unknown: save a model made by apply_prefix_tuning")
        return {"peft_type": PEFT_TYPE, "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
                "num_virtual_tokens": self.num_virtual_tokens, "token_dim": self.token_dim,
                "num_transformer_submodules": 1, "num_attention_heads": self.num_attention_heads,
                "num_layers": self.num_layers, "encoder_hidden_size": self.encoder_hidden_size or self.token_dim,
                "prefix_projection": self.prefix_projection, "init_weights": self.init_weights,
                "modules_to_save": None, "inference_mode": True}

    @classmethod
    def from_peft_dict(cls, raw: dict, source: str = "adapter_config.json") -> PrefixTuningConfig:
        known = {"num_virtual_tokens", "token_dim", "num_attention_heads", "num_layers", "encoder_hidden_size",
                 "prefix_projection", "init_weights"}
        read_peft_dict(raw, PEFT_TYPE, known, {"num_transformer_submodules": 1, "modules_to_save": None}, source)
        try:
            return cls(raw.get("num_virtual_tokens"), raw.get("prefix_projection", False),
                       raw.get("encoder_hidden_size"), raw.get("init_weights"), raw.get("num_layers"),
                       raw.get("token_dim"), raw.get("num_attention_heads"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


def prefix_dims(model: nn.Module) -> tuple[int, int, int]:
    """``(num_layers, token_dim, num_kv_heads)`` of ``model``, as PEFT derives them (GQA: kv heads x head_dim)."""
    check_model(model)
    if isinstance(model, TinyLM):
        c = model.config
        return c.n_layers, c.d_model, c.n_heads
    if is_hf_model(model):
        c = model.config
        c = c.get_text_config() if hasattr(c, "get_text_config") else c
        layers, hidden, heads = c.num_hidden_layers, c.hidden_size, c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None)
        if kv is not None:
            head_dim = getattr(c, "head_dim", None) or hidden // heads
            return layers, head_dim * kv, kv
        return layers, hidden, heads
    raise TypeError(f"model must be the course TinyLM or a Hugging Face model, got {type(model).__name__}")


def prefix_cache_bytes(num_virtual_tokens: int, num_layers: int, token_dim: int, batch_size: int = 1,
                       bytes_per_value: int = 2) -> int:
    """Extra KV-cache bytes a prefix costs: ``batch * 2 * L * n * d_kv * bytes`` (notebook 13, eq. 14)."""
    values = [check_positive_int(name, v) for name, v in (("num_virtual_tokens", num_virtual_tokens),
              ("num_layers", num_layers), ("token_dim", token_dim), ("batch_size", batch_size),
              ("bytes_per_value", bytes_per_value))]
    n, layers, d, b, nbytes = values
    return b * 2 * layers * n * d * nbytes


class PrefixEncoder(nn.Module):
    """PEFT's ``PrefixEncoder``: ``embedding [n, 2 L d]``, or ``embedding [n, d]`` + ``transform`` (the MLP).

    Built in PEFT's order (embedding, then the two Linear layers), so the same seed gives PEFT's initial values.
    """

    def __init__(self, n: int, num_layers: int, token_dim: int, projection: bool, hidden: int,
                 init_weights: str | None) -> None:
        super().__init__()
        self.projection = projection
        if projection:
            self.embedding = nn.Embedding(n, token_dim)
            self.transform = nn.Sequential(nn.Linear(token_dim, hidden), nn.Tanh(),
                                           nn.Linear(hidden, num_layers * 2 * token_dim))
            if init_weights == "zero":
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            self.embedding = nn.Embedding(n, num_layers * 2 * token_dim)
            if init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    def forward(self) -> torch.Tensor:
        """The prefix ``[n, 2 L d]`` (no batch dimension)."""
        weight = self.embedding.weight
        return self.transform(weight) if self.projection else weight


class PrefixAttention(AdapterLayer):
    """TinyLM attention with a prefix: ``softmax(q [P_k; K]^T / sqrt(d)) [P_v; V]``, real tokens at n .. n+t-1.

    The prefix keys and values for one forward are handed over in ``pending`` (``[b, heads, n, head_dim]``
    each) by :class:`PrefixTuningModel`; called without them it raises.
    """

    adapter_kind = "prefix tuning"

    def __init__(self, base: Attention, model_config: object) -> None:
        super().__init__()
        if not isinstance(base, Attention):
            raise TypeError(f"base must be the course model's Attention, got {type(base).__name__}")
        self.base = base
        self.model_config = model_config
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.pending is None:
            raise RuntimeError("this attention belongs to a PrefixTuningModel: call that model, not its base")
        pk, pv = self.pending
        att = self.base
        b, t, d = x.shape
        n = pk.shape[2]
        q, k, v = (proj(x).view(b, t, att.n_heads, d // att.n_heads).transpose(1, 2)
                   for proj in (att.q_proj, att.k_proj, att.v_proj))
        cos, sin = rotary_tables(self.model_config, n + t, x.device)  # the real tokens sit after the prefix
        cos, sin = cos[n:].to(q.dtype), sin[n:].to(q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k = torch.cat([pk.to(k.dtype), k], dim=2)
        v = torch.cat([pv.to(v.dtype), v], dim=2)
        allowed = torch.ones(t, n + t, dtype=torch.bool, device=x.device).tril(diagonal=n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return att.o_proj(out.transpose(1, 2).reshape(b, t, d))


class PrefixTuningModel(AdapterLayer):
    """``base`` with a trainable prefix (``prefix_encoder``); ``model(input_ids, ...)`` as before."""

    adapter_kind = "prefix tuning"

    def __init__(self, base: nn.Module, config: PrefixTuningConfig) -> None:
        super().__init__()
        self.base = base
        self.hf = not isinstance(base, TinyLM)
        c = config
        self.num_virtual_tokens, self.num_layers, self.token_dim, self.num_heads = (
            c.num_virtual_tokens, c.num_layers, c.token_dim, c.num_attention_heads)
        self.prefix_encoder = PrefixEncoder(c.num_virtual_tokens, c.num_layers, c.token_dim, c.prefix_projection,
                                            c.encoder_hidden_size or c.token_dim, c.init_weights)
        if not self.hf:
            for i, layer in enumerate(base.layers):
                set_submodule(base, f"layers.{i}.self_attn", PrefixAttention(layer.self_attn, base.config))
        setattr(self, CONFIG_ATTR, config)

    def past_key_values(self, batch_size: int,
                        dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer ``(P_k, P_v)``, each ``[batch, kv_heads, n, head_dim]`` (PEFT's view and permute)."""
        prefix = self.prefix_encoder()
        if dtype is not None:
            prefix = prefix.to(dtype)
        n, heads = self.num_virtual_tokens, self.num_heads
        kv = prefix.view(1, n, self.num_layers * 2, heads, self.token_dim // heads).expand(batch_size, -1, -1, -1, -1)
        kv = kv.permute(2, 0, 3, 1, 4)  # [2L, b, heads, n, head_dim]
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(self.num_layers)]

    def forward(self, input_ids: torch.Tensor, *args: object, **kwargs: object) -> object:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise TypeError("input_ids must be a 2-D tensor [batch, seq]")
        b = input_ids.shape[0]
        if self.hf:
            from transformers import DynamicCache

            dtype = next(self.base.parameters()).dtype
            cache = DynamicCache([(k, v) for k, v in self.past_key_values(b, dtype)])
            mask = kwargs.get("attention_mask")
            if mask is not None:
                kwargs["attention_mask"] = torch.cat([mask.new_ones(b, self.num_virtual_tokens), mask], dim=1)
            return self.base(input_ids, *args, past_key_values=cache, **kwargs)
        if args or kwargs:
            raise TypeError("the course TinyLM takes input_ids only")
        if getattr(self.base, "gradient_checkpointing", False):
            raise ValueError("prefix tuning does not work with gradient checkpointing (PEFT refuses it too)")
        attentions = [layer.self_attn for layer in self.base.layers]
        for att, kv in zip(attentions, self.past_key_values(b), strict=True):
            att.pending = kv
        try:
            return self.base(input_ids)
        finally:
            for att in attentions:
                att.pending = None

    def extra_repr(self) -> str:
        return (f"num_virtual_tokens={self.num_virtual_tokens}, num_layers={self.num_layers}, "
                f"token_dim={self.token_dim}, projection={self.prefix_encoder.projection}")


def apply_prefix_tuning(model: nn.Module, config: PrefixTuningConfig) -> PrefixTuningModel:
    """Wrap ``model`` (TinyLM or a Hugging Face decoder) in a :class:`PrefixTuningModel`; freeze ``model``; atomic."""
    check_model(model)
    if not isinstance(config, PrefixTuningConfig):
        raise TypeError(f"config must be a PrefixTuningConfig, got {type(config).__name__}")
    refuse_family_model(model, "apply_prefix_tuning")
    layers, token_dim, heads = prefix_dims(model)
    for name, given, actual in (("num_layers", config.num_layers, layers), ("token_dim", config.token_dim, token_dim),
                                ("num_attention_heads", config.num_attention_heads, heads)):
        if given is not None and given != actual:
            raise ValueError(f"config.{name}={given} but the model has {actual}")
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):  # PEFT's test
        raise ValueError("prefix tuning does not work with gradient checkpointing (PEFT refuses it too)")
    stored = dataclasses.replace(config, num_layers=layers, token_dim=token_dim, num_attention_heads=heads)
    weight = next(model.parameters())
    with unchanged_on_error(model):
        for p in model.parameters():
            p.requires_grad_(False)
        wrapper = PrefixTuningModel(model, stored)
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        wrapper.prefix_encoder.to(device=weight.device, dtype=dtype)
    return wrapper


# ---------------------------------------------------------------------------------------------- PEFT format
def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's one tensor: ``prompt_embeddings [n, 2 L d]``, the encoder's output (the MLP applied, if any)."""
    if not isinstance(model, PrefixTuningModel):
        raise TypeError(f"model must be a PrefixTuningModel, got {type(model).__name__}")
    with torch.no_grad():
        return {"prompt_embeddings": model.prefix_encoder().detach().contiguous()}


def expected_shapes(model: nn.Module, config: PrefixTuningConfig) -> dict[str, tuple[int, ...]]:
    if isinstance(model, PrefixTuningModel):
        layers, token_dim = model.num_layers, model.token_dim
        if model.prefix_encoder.projection:
            raise ValueError("the model's prefix comes from an MLP (prefix_projection=True) and a saved adapter holds "
                             "only its output; load into the base model instead")
        if model.num_virtual_tokens != config.num_virtual_tokens:
            raise ValueError(f"the adapter has num_virtual_tokens={config.num_virtual_tokens} but the model "
                             f"{model.num_virtual_tokens}")
    else:
        layers, token_dim, heads = prefix_dims(model)
        for name, given, actual in (("num_layers", config.num_layers, layers), ("token_dim", config.token_dim,
                                    token_dim), ("num_attention_heads", config.num_attention_heads, heads)):
            if given is not None and given != actual:
                raise ValueError(f"the adapter has {name}={given} but the model has {actual}")
    return {"prompt_embeddings": (config.num_virtual_tokens, 2 * layers * token_dim)}


def load_into(model: nn.Module, config: PrefixTuningConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    plain = dataclasses.replace(config, prefix_projection=False, init_weights=None)  # only the prefix is stored
    if not isinstance(model, PrefixTuningModel):
        model = apply_prefix_tuning(model, plain)
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.copy_(tensors["prompt_embeddings"])
    return model
