"""Layers shared by the native LLaDA and Dream models: RMSNorm, rotary tables, and the attention backends.

Backends (chosen once, at load time, by :func:`resolve_attention`):

    sdpa   ``torch.nn.functional.scaled_dot_product_attention`` (the default; what both official codes call)
    eager  softmax(q kᵀ / √d + mask) v written out, for debugging
    flash  ``flash_attn`` (the ``flash`` extra) on CUDA in fp16/bf16; a padded batch runs as variable-length
           sequences (pad rows removed, their outputs zero), never as a dense mask

Masks are boolean ``[B, 1, L|1, L]`` (True = may attend) or None for full attention. A row with no key to attend
(a pad query under Dream's outer-product mask) gives zeros in every backend, as SDPA does.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("auto", "sdpa", "eager", "flash")


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(attn: str, device: torch.device | str | None, dtype: torch.dtype) -> str:
    """The backend ``attn`` names, with "auto" = flash where it can run (CUDA, fp16/bf16, installed), else sdpa."""
    if attn not in ATTENTION_BACKENDS:
        raise ValueError(f"attn must be one of {ATTENTION_BACKENDS}, got {attn!r}")
    on_cuda = torch.device(device or "cpu").type == "cuda"
    flash_ok = on_cuda and dtype in (torch.float16, torch.bfloat16) and flash_available()
    if attn == "auto":
        return "flash" if flash_ok else "sdpa"
    if attn == "flash" and not flash_ok:
        raise ValueError("attn='flash' needs the flash_attn package (pip install -e '.[flash]'), a CUDA device and "
                         "dtype float16 or bfloat16; use attn='sdpa' otherwise")
    return attn


class NativeMDM:
    """Mixed into the native LLaDA and Dream models: the attention backend (chosen once, by the loader) and the
    marker the adapter reads to call ``final_hidden_states``/``output_head`` instead of swapping the head out."""

    upo_native = True
    attn_backend = "sdpa"

    def _init_weights(self, module):  # a fresh model (tests, save/load round trips); checkpoints overwrite it
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()

    def set_attention_backend(self, attn: str) -> str:
        """Resolve ``attn`` for this model's device and dtype and use it from now on; returns the backend."""
        param = next(self.parameters())
        self.attn_backend = resolve_attention(attn, param.device, param.dtype)
        return self.attn_backend


class RMSNorm(nn.Module):
    """RMS norm computed in fp32 and cast back before the affine part, as LLaDA's and Dream's norms do."""

    def __init__(self, dim: int, eps: float, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        h = self.weight * h
        return h + self.bias if self.bias is not None else h


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (cos, sin) of shape [B|1, 1, L, head_dim] for integer ``positions`` [B|1, L]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
                                / head_dim))
    freqs = positions.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)
    return angles.cos(), angles.sin()


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to t [B, H, L, D] in the dtype of ``cos``/``sin`` (the callers choose the precision)."""
    half = t.shape[-1] // 2
    rotated = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
    return t * cos + rotated * sin


def _repeat_kv(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def prepare_mask(mask: torch.Tensor | None, backend: str):
    """What ``attend`` takes as its mask, made once per forward (not per layer): the mask itself, or for flash
    the packing of the valid positions."""
    return flash_packing(mask) if backend == "flash" and mask is not None else mask


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, backend: str) -> torch.Tensor:
    """Bidirectional attention. q [B, H, L, D]; k, v [B, Hkv, L, D] (grouped-query when Hkv < H); ``mask`` from
    :func:`prepare_mask`. Returns [B, L, H * D]."""
    batch, heads, length, dim = q.shape
    groups = heads // k.shape[1]
    if backend == "flash":
        out = flash_attention(q, k, v, mask)
    else:
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
        if backend == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        elif backend == "eager":
            out = eager_attention(q, k, v, mask)
        else:
            raise ValueError(f"unknown attention backend {backend!r}; valid: {ATTENTION_BACKENDS[1:]}")
        out = out.transpose(1, 2)
    return out.reshape(batch, length, heads * dim)


def eager_attention(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no key to attend gives zeros, as SDPA
    return probs.to(v.dtype) @ v


@dataclass(frozen=True)
class FlashPacking:
    """The valid positions of a padded batch as variable-length sequences (for flash_attn_varlen_func)."""

    index: torch.Tensor  # [T] flat indices of the valid positions in [B * L]
    cu_seqlens: torch.Tensor  # [B + 1] int32
    longest: int


def flash_packing(mask: torch.Tensor) -> FlashPacking:
    """Pack an outer-product padding mask [B, 1, L, L]; any other mask is a ValueError. Reading the longest
    length is the one host sync of a varlen forward."""
    valid = mask[:, 0].diagonal(dim1=-2, dim2=-1)  # the positions that may attend to themselves
    if mask.shape[-2] != mask.shape[-1] or not torch.equal(mask, valid[:, None, :, None] & valid[:, None, None, :]):
        raise ValueError("attn='flash' takes padding masks only (an outer product of a [B, L] padding vector); "
                         "use attn='sdpa' for other masks")
    lengths = valid.sum(-1, dtype=torch.int32)
    return FlashPacking(valid.flatten().nonzero().squeeze(-1), F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)),
                        int(lengths.max()))


def flash_attention(q, k, v, packing: FlashPacking | None, varlen_fn=None, dense_fn=None):
    """flash_attn on [B, H, L, D] inputs; returns [B, L, H, D]. With a packing, the batch runs as variable-length
    sequences of its valid positions, and the pad rows' outputs are zero."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, L, H, D]
    if packing is None:
        if dense_fn is None:
            from flash_attn import flash_attn_func as dense_fn
        return dense_fn(qt, kt, vt, causal=False)
    if varlen_fn is None:
        from flash_attn import flash_attn_varlen_func as varlen_fn
    batch, length, heads, dim = qt.shape
    pack = lambda t: t.reshape(batch * length, *t.shape[2:]).index_select(0, packing.index)
    cu, longest = packing.cu_seqlens, packing.longest
    out = varlen_fn(pack(qt), pack(kt), pack(vt), cu, cu, longest, longest, causal=False)
    full = qt.new_zeros(batch * length, heads, dim)
    full.index_copy_(0, packing.index, out.to(full.dtype))
    return full.view(batch, length, heads, dim)
