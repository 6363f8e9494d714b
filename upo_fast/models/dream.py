"""Dream written once for this project: loads the official checkpoints' parameter names, no remote code.

Architecture (Qwen2-style, bidirectional): ``model.embed_tokens``, layers of RMSNorm → q/k/v with biases
(grouped-query: ``num_key_value_heads`` ≤ ``num_attention_heads``) → RoPE on ``position_ids`` → attention →
``o_proj``, then RMSNorm → ``down_proj(silu(gate_proj(x)) * up_proj(x))``; ``model.norm`` and ``lm_head``.
Output i scores token i + 1 (the samplers shift it back).

Attention masks as Dream's own sampler passes them: None or "full" (full attention), a 4-D boolean
``[B, 1, L, L]`` (True = may attend; its outer-product padding mask) or a 4-D additive float mask, with
``position_ids`` for left padding; a 2-D ``[B, L]`` padding mask is turned into the outer-product mask.

Cached generation: ``final_hidden_states(ids, mask, position_ids, cache=KVCache, start=s)`` runs the rows
[s, s + n) of a sequence whose other rows' keys and values are in the cache (``upo_fast.models.kv_cache``); the mask
and the position ids then cover the whole sequence, and the rows' own are read from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from upo_fast.models.attention import NativeMDM, RMSNorm, attend, prepare_mask, rotary_tables, rotate
from upo_fast.models.kv_cache import KVCache

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


class DreamConfig(PretrainedConfig):
    """The fields of Dream's ``config.json`` that define the network; other fields are kept and ignored."""

    model_type = "Dream"

    def __init__(self, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=131072,
                 rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=False,
                 mask_token_id=151666, pad_token_id=151643, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.hidden_act, self.max_position_embeddings = hidden_act, max_position_embeddings
        self.rms_norm_eps, self.rope_theta = rms_norm_eps, rope_theta
        if rope_scaling is not None:  # transformers 5 warns on the attribute even when it is null
            self.rope_scaling = rope_scaling
        self.mask_token_id = mask_token_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, **kwargs)

    def check_supported(self) -> None:
        if self.hidden_act != "silu":
            raise ValueError(f"Dream config field hidden_act={self.hidden_act!r} is not supported by upo_fast's "
                             "native Dream (supported: 'silu')")
        scaling = getattr(self, "rope_scaling", None) or {}
        if scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"Dream config field rope_scaling={scaling!r} is not supported by upo_fast's "
                             "native Dream (supported: null)")
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        if self.hidden_size % heads or heads % kv:
            raise ValueError(f"Dream config: hidden_size={self.hidden_size} must divide by num_attention_heads="
                             f"{heads}, and that by num_key_value_heads={kv}")


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.heads
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

    def forward(self, h, rotary, mask, backend, cached: tuple[KVCache, int, int] | None = None):
        """``cached``: (cache, layer index, first row) when h holds a slice of a cached sequence."""
        b, length, _ = h.shape
        q = self.q_proj(h).view(b, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary
        k = rotate(k, cos, sin)
        if cached is not None:
            cache, layer, start = cached
            k, v = cache.write(layer, start, k, v)
        return self.o_proj(attend(rotate(q, cos, sin), k, v, mask, backend))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, h):
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rotary, mask, backend, cached=None):
        x = x + self.self_attn(self.input_layernorm(x), rotary, mask, backend, cached)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    """``model``: embed_tokens, layers, norm (the official names)."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def dream_attention_mask(attention_mask, batch: int, length: int) -> torch.Tensor | None:
    """What the layers take: None (full attention) or a 4-D mask, from any form Dream's forward accepts."""
    if attention_mask is None or isinstance(attention_mask, str):
        if isinstance(attention_mask, str) and attention_mask != "full":
            raise ValueError(f"attention_mask must be a tensor, None or 'full', got {attention_mask!r}")
        return None
    if attention_mask.dim() == 2:
        if attention_mask.shape != (batch, length):
            raise ValueError(f"a 2-D attention_mask must have shape {(batch, length)}, got "
                             f"{tuple(attention_mask.shape)}")
        valid = attention_mask.bool()
        return valid[:, None, :, None] & valid[:, None, None, :]
    if attention_mask.dim() != 4:
        raise ValueError(f"attention_mask must be [B, L] or [B, 1, L, L], got shape {tuple(attention_mask.shape)}")
    return attention_mask


class DreamModel(NativeMDM, PreTrainedModel):
    """Dream with the official checkpoint layout (``model.*``, ``lm_head``)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True
    # transformers 5 describes tied parameters as {target: source}, 4.x as a list of targets
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if _TRANSFORMERS_5 else ["lm_head.weight"]

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        config.check_supported()
        self.model = DreamBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def tie_weights(self, *args, **kwargs):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def output_head(self) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        return self.lm_head.weight, None, 1.0

    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head dim) of this model's KV cache."""
        config = self.config
        return config.num_hidden_layers, config.num_key_value_heads, config.hidden_size // config.num_attention_heads

    def final_hidden_states(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                            collect: list | None = None, *, cache: KVCache | None = None,
                            start: int = 0) -> torch.Tensor:
        """[B, n, d] after the final norm; row i scores token i + 1. ``cache``: the ids are the rows
        [start, start + n) of a sequence of the cache's length (see the module docstring)."""
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, rows = x.shape[:2]
        length = rows
        if cache is not None:
            cache.check_rows(batch, start, rows)
            length = cache.length
        mask = dream_attention_mask(attention_mask, batch, length)
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device)[None]
        if cache is not None:  # the rows' own queries and positions
            mask = None if mask is None else mask[:, :, start:start + rows]
            position_ids = position_ids[:, start:start + rows]
            if mask is not None and self.attn_backend == "flash":
                raise ValueError("a cached forward over a padded batch needs attn='sdpa' or 'eager'")
        mask = prepare_mask(mask, self.attn_backend)
        rotary = rotary_tables(position_ids, self.config.hidden_size // self.config.num_attention_heads,
                               self.config.rope_theta)
        rotary = tuple(t.to(x.dtype) for t in rotary)  # Dream rotates in the model's dtype
        for index, layer in enumerate(self.model.layers):
            if collect is not None:
                collect.append(x)
            x = layer(x, rotary, mask, self.attn_backend, None if cache is None else (cache, index, start))
        x = self.model.norm(x)
        if collect is not None:
            collect.append(x)
        return x

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, output_hidden_states=None, return_dict=None, cache: KVCache | None = None,
                start: int = 0, **kwargs):
        collect = [] if output_hidden_states else None
        hidden = self.final_hidden_states(input_ids, attention_mask, position_ids, inputs_embeds, collect,
                                          cache=cache, start=start)
        return MaskedLMOutput(logits=self.lm_head(hidden), hidden_states=tuple(collect) if collect else None)
