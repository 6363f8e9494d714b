"""The static key/value cache of the native LLaDA and Dream models (cached generation, Fast-dLLM's semantics).

One :class:`KVCache` per generation: two buffers per layer, ``[B, Hkv, L, D]``, allocated once and written in place
(gpt-fast's static cache is the model: no concatenation, no reallocation per step, so a CUDA graph keeps its
addresses). The models take it as ``final_hidden_states(ids, ..., cache=cache, start=s)``, where ``ids`` holds the
tokens of the rows ``[s, s + n)`` only. The whole rule is one sentence: *write the keys and values of the rows you
run, then attend over the whole buffer.* Which rows run is the sampler's choice:

    block start        every row (fills the cache; its output is that step's decision, as in Fast-dLLM)
    prefix cache       the block and everything after it: rows [block start, L)
    dual cache         the block only: rows [block start, block end)

Keys are stored after RoPE at each row's true position (the same values Fast-dLLM gets by rotating its cached,
unrotated keys again at every step: RoPE is elementwise, so rotating once gives the same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CACHE_MODES = ("prefix", "dual")


def check_cache_mode(cache, name: str = "cache") -> str | None:
    """None, "prefix" or "dual"; anything else is a ValueError naming ``name``."""
    if cache is not None and cache not in CACHE_MODES:
        raise ValueError(f"{name} must be None, 'prefix' or 'dual' (Fast-dLLM's prefix and dual KV caches), "
                         f"got {cache!r}")
    return cache


@dataclass(frozen=True)
class KVCache:
    """Per-layer key and value buffers ``[B, Hkv, L, D]`` of one generation, written in place."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @classmethod
    def allocate(cls, layers: int, batch: int, kv_heads: int, length: int, head_dim: int, *, dtype,
                 device) -> KVCache:
        def buffers():
            return tuple(torch.zeros(batch, kv_heads, length, head_dim, dtype=dtype, device=device)
                         for _ in range(layers))

        return cls(buffers(), buffers())

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def check_rows(self, batch: int, start: int, rows: int) -> None:
        """The rows ``[start, start + rows)`` of a batch of ``batch`` fit this cache (a ValueError otherwise)."""
        if batch != self.batch or not 0 <= start or start + rows > self.length:
            raise ValueError(f"a cached forward runs rows [{start}, {start + rows}) of a batch of {batch}; the cache "
                             f"holds {self.length} positions of a batch of {self.batch}")

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ``[B, Hkv, n, D]`` at rows ``[start, start + n)`` of ``layer`` and return that layer's whole
        key and value buffers, the attention's keys and values."""
        end = start + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, start:end].copy_(k)
        values[:, :, start:end].copy_(v)
        return keys, values


def allocate_cache(model, batch: int, length: int) -> KVCache:
    """A cache for ``model`` (a native LLaDA or Dream: ``cache_shape()``), in its parameters' dtype and device."""
    layers, kv_heads, head_dim = model.cache_shape()
    param = next(model.parameters())
    return KVCache.allocate(layers, batch, kv_heads, length, head_dim, dtype=param.dtype, device=param.device)
