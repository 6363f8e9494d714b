"""LLaDA written once for this project: loads the official checkpoints' parameter names, no remote code.

Architecture (LLaDA-8B's ``block_type="llama"``): token embedding ``wte`` (``embedding_size`` rows), blocks of
RMSNorm → q/k/v (grouped-query when ``n_kv_heads`` < ``n_heads``, optional biases) → RoPE on positions 0..L-1 →
bidirectional attention → ``attn_out``, then RMSNorm → ``ff_out(silu(ff_proj(x)) * up_proj(x))``; final ``ln_f``
and the head ``ff_out`` or, with ``weight_tying``, the embedding itself; ``scale_logits`` divides by √d_model.

Padding: the official forward builds an attention bias from ``attention_mask`` and then calls attention without
it, so every position (pad included) attends to every other. This model does the same by default, so that its
tokens equal the official code's; ``attention_mask`` is then accepted and not used. ``mask_padding = True`` (an
option of this implementation, off by default) makes the keys of pad positions invisible instead, so that a
left-padded row gets what the same prompt gets alone (RoPE scores depend only on relative positions).

Cached generation: ``final_hidden_states(ids, cache=KVCache, start=s)`` runs the rows [s, s + n) of a sequence
whose other rows' keys and values are in the cache (``upo_fast.models.kv_cache``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from upo_fast.models.attention import NativeMDM, RMSNorm, attend, rotary_tables, rotate
from upo_fast.models.kv_cache import KVCache


class LLaDAConfig(PretrainedConfig):
    """The fields of LLaDA's ``config.json`` that define the network; other fields are kept and ignored."""

    model_type = "llada"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers"}

    def __init__(self, d_model=4096, n_heads=32, n_kv_heads=None, multi_query_attention=None, n_layers=32,
                 mlp_ratio=4, mlp_hidden_size=None, vocab_size=126464, embedding_size=126464,
                 max_sequence_length=4096, rope_theta=500000.0, rms_norm_eps=1e-5, weight_tying=False,
                 include_bias=False, include_qkv_bias=False, bias_for_layer_norm=None, scale_logits=False,
                 input_emb_norm=False, mask_token_id=126336, block_type="llama", layer_norm_type="rms",
                 activation_type="silu", rope=True, alibi=False, attention_layer_norm=False, block_group_size=1,
                 **kwargs):
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.n_kv_heads, self.multi_query_attention = n_kv_heads, multi_query_attention
        self.mlp_ratio, self.mlp_hidden_size = mlp_ratio, mlp_hidden_size
        self.vocab_size, self.embedding_size = vocab_size, embedding_size
        self.max_sequence_length, self.rope_theta, self.rms_norm_eps = max_sequence_length, rope_theta, rms_norm_eps
        self.weight_tying, self.scale_logits, self.input_emb_norm = weight_tying, scale_logits, input_emb_norm
        self.include_bias, self.include_qkv_bias = include_bias, include_qkv_bias
        self.bias_for_layer_norm = bias_for_layer_norm
        self.mask_token_id = mask_token_id
        self.block_type, self.layer_norm_type, self.activation_type = block_type, layer_norm_type, activation_type
        self.rope, self.alibi, self.attention_layer_norm = rope, alibi, attention_layer_norm
        self.block_group_size = block_group_size
        # transformers ties an output embedding to the input one when this is true (its default): LLaDA's head is
        # separate unless ``weight_tying`` says otherwise
        kwargs["tie_word_embeddings"] = bool(weight_tying)
        super().__init__(**kwargs)

    @property
    def kv_heads(self) -> int:
        if self.n_kv_heads is not None:
            return int(self.n_kv_heads)
        return 1 if self.multi_query_attention else int(self.n_heads)

    @property
    def ffn_size(self) -> int:
        return int(self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model)

    @property
    def norm_bias(self) -> bool:
        return bool(self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm)

    @property
    def rows(self) -> int:
        return int(self.embedding_size or self.vocab_size)

    def check_supported(self) -> None:
        """LLaDA variants this implementation does not cover are a ValueError naming the field, never a silent
        difference from the official network."""
        expected = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
                    "alibi": False, "attention_layer_norm": False, "block_group_size": 1}
        for field, value in expected.items():
            if getattr(self, field) != value:
                raise ValueError(f"LLaDA config field {field}={getattr(self, field)!r} is not supported by "
                                 f"upo_fast's native LLaDA (supported: {value!r})")
        if self.d_model % self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(f"LLaDA config: d_model={self.d_model} must divide by n_heads={self.n_heads}, and "
                             f"n_heads by the key/value heads ({self.kv_heads})")


class LLaDABlock(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, head_dim = config.d_model, config.d_model // config.n_heads
        qkv_bias = bool(config.include_bias or config.include_qkv_bias)
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, config.kv_heads, head_dim
        self.attn_norm = RMSNorm(d, config.rms_norm_eps, config.norm_bias)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps, config.norm_bias)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_proj = nn.Linear(d, config.ffn_size, bias=config.include_bias)
        self.up_proj = nn.Linear(d, config.ffn_size, bias=config.include_bias)
        self.ff_out = nn.Linear(config.ffn_size, d, bias=config.include_bias)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], backend: str, mask=None,
                cached: tuple[KVCache, int, int] | None = None) -> torch.Tensor:
        """x: the rows being run; ``cached``: (cache, layer index, first row) when they are a slice of a cached
        sequence (their keys and values are written there and the attention reads the whole buffer)."""
        b, length, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary  # LLaDA rotates in fp32 (rope_full_precision) and casts back
        q, k = rotate(q.float(), cos, sin).to(q.dtype), rotate(k.float(), cos, sin).to(k.dtype)
        if cached is not None:
            cache, layer, start = cached
            k, v = cache.write(layer, start, k, v)
        x = x + self.attn_out(attend(q, k, v, mask, backend))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDABackbone(nn.Module):
    """``model.transformer``: the official module names (wte, blocks, ln_f, ff_out)."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        parts = {"wte": nn.Embedding(config.rows, config.d_model),
                 "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
                 "ln_f": RMSNorm(config.d_model, config.rms_norm_eps, config.norm_bias)}
        if not config.weight_tying:
            parts["ff_out"] = nn.Linear(config.d_model, config.rows, bias=config.include_bias)
        self.transformer = nn.ModuleDict(parts)


class LLaDAModelLM(NativeMDM, PreTrainedModel):
    """LLaDA with the official checkpoint layout: parameters under ``model.transformer``."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        config.check_supported()
        self.model = LLaDABackbone(config)
        self.post_init()

    _rotary_key = None

    def _rotary(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for positions 0..length-1 (LLaDA's positions never depend on the input), made once per
        length and device rather than at every sampling step."""
        if self._rotary_key != (length, device):
            positions = torch.arange(length, device=device)[None]
            self._rotary_tables = rotary_tables(positions, self.config.d_model // self.config.n_heads,
                                                self.config.rope_theta)
            self._rotary_key = (length, device)
        return self._rotary_tables

    def tie_weights(self, *args, **kwargs):  # the tied head is the embedding itself: nothing to tie
        pass

    def get_input_embeddings(self):
        return self.model.transformer["wte"]

    def get_output_embeddings(self):
        return None if self.config.weight_tying else self.model.transformer["ff_out"]

    def output_head(self) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(weight [V, d], bias or None, logit scale): logits = (hidden @ weight.T + bias) * scale."""
        t = self.model.transformer
        head = t["wte"] if self.config.weight_tying else t["ff_out"]
        scale = 1.0 / math.sqrt(self.config.d_model) if self.config.scale_logits else 1.0
        return head.weight, getattr(head, "bias", None), scale

    mask_padding = False  # the official LLaDA attends to pad positions (see the module docstring)

    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head dim) of this model's KV cache."""
        config = self.config
        return config.n_layers, config.kv_heads, config.d_model // config.n_heads

    def _padding_mask(self, attention_mask) -> torch.Tensor | None:
        """[B, 1, 1, L] keys that may be attended (``mask_padding``), or None: every key. No test of whether the
        mask hides anything: that would be a host read at every forward of the step loop."""
        if not self.mask_padding or attention_mask is None or attention_mask.dim() != 2:
            return None
        if self.attn_backend == "flash":
            raise ValueError("mask_padding=True needs attn='sdpa' or 'eager' (load_model(..., attn='sdpa'))")
        return attention_mask.bool()[:, None, None, :]

    def final_hidden_states(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                            collect: list | None = None, *, cache: KVCache | None = None,
                            start: int = 0) -> torch.Tensor:
        """[B, n, d] after ``ln_f``. ``attention_mask`` [B, L] is used only with ``mask_padding`` (see the module
        docstring). ``collect``, when given, receives every block's input and the final state
        (``output_hidden_states``). ``cache``: the ids are the rows [start, start + n) of a sequence of the
        cache's length (the mask, when given, covers the whole sequence)."""
        t = self.model.transformer
        x = t["wte"](input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.input_emb_norm:
            x = x * self.config.d_model ** 0.5
        rows = x.shape[1]
        if cache is not None:
            cache.check_rows(x.shape[0], start, rows)
        cos, sin = self._rotary(cache.length if cache is not None else rows, x.device)
        rotary = (cos[:, :, start:start + rows], sin[:, :, start:start + rows])
        mask = self._padding_mask(attention_mask)
        for index, block in enumerate(t["blocks"]):
            if collect is not None:
                collect.append(x)
            x = block(x, rotary, self.attn_backend, mask, None if cache is None else (cache, index, start))
        x = t["ln_f"](x)
        if collect is not None:
            collect.append(x)
        return x

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                return_dict=None, cache: KVCache | None = None, start: int = 0, **kwargs):
        collect = [] if output_hidden_states else None
        hidden = self.final_hidden_states(input_ids, attention_mask, inputs_embeds, collect, cache=cache, start=start)
        weight, bias, scale = self.output_head()
        logits = F.linear(hidden, weight, bias)
        if scale != 1.0:
            logits = logits * scale
        return CausalLMOutputWithPast(logits=logits, hidden_states=tuple(collect) if collect else None)
