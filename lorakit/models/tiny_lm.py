"""The small pretrained model of the course: a tiny LLaMA-style causal LM (DESIGN.md).

The architecture follows LLaMA (Touvron et al., 2023) at toy scale and uses Hugging Face's module
names, so LoRA ``target_modules`` read exactly as they do for real models: ``q_proj k_proj v_proj
o_proj`` in ``self_attn``, ``gate_proj up_proj down_proj`` in a SwiGLU ``mlp``, RMSNorm before each
block, rotary position embeddings, no biases. The shipped checkpoint ``data/tiny_lm/`` was pretrained
by ``scripts/pretrain_tiny_lm.py`` on the copy and shift-by-one tasks of :mod:`lorakit.data`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Where the shipped checkpoint lives (inside the repository's data/ folder).
CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "data" / "tiny_lm"


@dataclass
class TinyLMConfig:
    vocab_size: int = 32
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_seq_len: int = 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even size"
            )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotary_tables(cfg: TinyLMConfig, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    head_dim = cfg.d_model // cfg.n_heads
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            proj(x).view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLM(nn.Module):
    """A LLaMA-style decoder: ``model(input_ids [b, t]) -> logits [b, t, vocab]``.

    Set ``gradient_checkpointing = True`` to recompute each decoder layer in the backward pass
    instead of storing its activations (notebook 05 measures what that saves).
    """

    def __init__(self, cfg: TinyLMConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or TinyLMConfig()
        c = self.config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dtype != torch.long or input_ids.dim() != 2:
            raise TypeError(
                f"input_ids must be a 2-D LongTensor [batch, seq], got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        t = input_ids.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"input_ids has {t} positions, more than max_seq_len={self.config.max_seq_len}")
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_tables(self.config, t, input_ids.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def save_tiny_lm(model: TinyLM, directory: str | Path, extra: dict | None = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` (safetensors: no pickle)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({**asdict(model.config), **(extra or {})}, indent=2) + "\n")


def load_tiny_lm(
    directory: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TinyLM:
    """Load the shipped pretrained model (or one saved by :func:`save_tiny_lm`), offline."""
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors in {directory}")
    fields = TinyLMConfig.__dataclass_fields__
    raw = json.loads((directory / "config.json").read_text())
    model = TinyLM(TinyLMConfig(**{k: v for k, v in raw.items() if k in fields}))
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.to(device=device, dtype=dtype).eval()
