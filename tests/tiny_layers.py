"""Layers shared by the tiny LLaDA and Dream stand-ins of ``tiny_models``: RMSNorm, RoPE, bidirectional SDPA
attention, SwiGLU, a pre-norm block, padding-mask conversion and a seeded re-initialisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h * scale * self.weight


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float):
    """Rotate q, k ([B, H, L, D]) by the angles of ``positions`` ([B, L] or [L])."""
    head_dim = q.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=q.device) / head_dim))
    pos = positions.to(device=q.device, dtype=torch.float32)
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    angles = pos.unsqueeze(-1) * inv_freq  # [B?, L, D/2]
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)  # [B?, 1, L, D]
    cos, sin = angles.cos(), angles.sin()

    def rotate(t):
        half = t.shape[-1] // 2
        return torch.cat([-t[..., half:], t[..., :half]], dim=-1)

    return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin


class Attention(nn.Module):
    def __init__(self, hidden: int, n_heads: int, theta: float):
        super().__init__()
        self.n_heads = n_heads
        self.theta = theta
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, h, positions, attn_mask):
        b, length, hidden = h.shape
        head_dim = hidden // self.n_heads

        def split(t):
            return t.view(b, length, self.n_heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        q, k = rope(q, k, positions, self.theta)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, hidden))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, h):
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Block(nn.Module):
    def __init__(self, hidden: int, n_heads: int, inner: int, theta: float):
        super().__init__()
        self.attn_norm = RMSNorm(hidden)
        self.attn = Attention(hidden, n_heads, theta)
        self.ff_norm = RMSNorm(hidden)
        self.ff = SwiGLU(hidden, inner)

    def forward(self, h, positions, attn_mask):
        h = h + self.attn(self.attn_norm(h), positions, attn_mask)
        return h + self.ff(self.ff_norm(h))


def to_sdpa_mask(attention_mask, batch: int, length: int, device):
    """Turn the accepted mask forms into something SDPA takes (or None for full attention)."""
    if attention_mask is None or isinstance(attention_mask, str):
        if isinstance(attention_mask, str) and attention_mask != "full":
            raise ValueError(f"unknown attention_mask string {attention_mask!r}")
        return None
    mask = attention_mask.to(device)
    if mask.dim() == 2:  # [B, L] padding mask: keys with 0 are not attended
        if bool(mask.all()):
            return None
        return mask.bool()[:, None, None, :]
    if mask.dim() == 4:
        return mask if mask.dtype == torch.bool else mask.float()
    raise ValueError(f"attention_mask of shape {tuple(mask.shape)} not understood")


def reinit(model: nn.Module, seed: int, head_names: tuple[str, ...]) -> None:
    """Deterministic weights: N(0, 1) embeddings, N(0, 1/fan_in) linears, sharper head, unit norms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif p.dim() == 2 and any(name.startswith(h) or f".{h}" in name for h in head_names):
                p.normal_(0.0, 2.5 / math.sqrt(p.shape[1]), generator=gen)
            elif p.dim() == 2 and ("wte" in name or "embed_tokens" in name):
                p.normal_(0.0, 1.0, generator=gen)
            elif p.dim() == 2 and ("wpe" in name or "embed_positions" in name):
                p.normal_(0.0, 0.5, generator=gen)
            elif p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
