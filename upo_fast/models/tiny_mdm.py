"""TinyMDM: a small bidirectional transformer used as a masked diffusion LM for toy tasks (Sudoku, copying).

It mirrors the interface of LLaDA/Dream closely enough for the sampler and adapters to treat it the same way:
``model(input_ids, attention_mask=..., position_ids=...).logits`` gives ``[B, L, V]`` logits everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from upo_fast.models.saved import load_saved

try:  # transformers >= 5: init helpers that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # transformers 4.x: plain torch init is fine there
    from torch.nn import init as _init

_TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5
POSITION_EMBEDDINGS = ("rope", "learned", "grid", "rope+learned")


def _require_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class TinyMDMConfig(PretrainedConfig):
    """Configuration of :class:`TinyMDM`. ``grid_size=n``: a row-major ``n x n`` grid, ``n`` a square."""

    model_type = "tiny_mdm"

    def __init__(
        self,
        vocab_size: int = 12,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 384,
        max_position_embeddings: int = 128,
        position_embedding: str = "rope",
        grid_size: int | None = None,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        mask_token_id: int | None = None,
        pad_token_id: int | None = 0,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        sizes = dict(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
        )  # fmt: skip
        for name, value in sizes.items():
            _require_positive_int(name, value)
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {', '.join(POSITION_EMBEDDINGS)}, got "
                             f"{position_embedding!r}")
        if hidden_size % num_attention_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_attention_heads")
        if position_embedding.startswith("rope") and (hidden_size // num_attention_heads) % 2 != 0:
            raise ValueError("rope needs an even head dim: hidden_size / num_attention_heads must be even")
        if position_embedding == "grid":
            if grid_size is None:
                raise ValueError('grid_size is required when position_embedding="grid"')
            _require_positive_int("grid_size", grid_size)
            if math.isqrt(grid_size) ** 2 != grid_size:
                raise ValueError(f"grid_size must be a perfect square (box side = sqrt(n)), got {grid_size}")
        elif grid_size is not None:
            _require_positive_int("grid_size", grid_size)
        for name, token in [("mask_token_id", mask_token_id), ("pad_token_id", pad_token_id)]:
            if token is not None and not (isinstance(token, int) and 0 <= token < vocab_size):
                raise ValueError(f"{name} must be an int in [0, vocab_size={vocab_size}), got {token!r}")
        floats = dict(rope_theta=rope_theta, rms_norm_eps=rms_norm_eps, initializer_range=initializer_range)
        for name, value in floats.items():
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")

        for name, value in sizes.items():
            setattr(self, name, value)
        self.position_embedding = position_embedding
        self.grid_size = grid_size
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        self.mask_token_id = mask_token_id
        self.initializer_range = float(initializer_range)
        # transformers 4 consumes these two in the base __init__; 5 stores them as extra attributes.
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.pad_token_id = pad_token_id
        self.tie_word_embeddings = tie_word_embeddings


class TinyMDMRotary(nn.Module):
    """Rotary embedding without buffers: the tables are rebuilt per forward (cheap at these sizes), which
    keeps the module free of non-persistent state that meta-device loading in ``from_pretrained`` loses."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B|1, L] -> (cos, sin), each [B|1, 1, L, head_dim] (broadcast over heads)."""
        device = position_ids.device
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim
        inv_freq = self.theta ** (-exponent)  # [head_dim / 2]
        angles = position_ids.float()[..., None] * inv_freq  # [B, L, head_dim / 2], fp32 for accuracy
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, D], cos/sin [B|1, 1, L, D] -> x rotated pairwise (first half with second half)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class TinyMDMGridPositions(nn.Module):
    """Sudoku-style grid embedding: cell p of a row-major n x n grid gets row + column + box embeddings.

    Cells that share a row, column or box share an embedding component, so attention can find constraint
    partners directly instead of having to learn the p // n and p % n arithmetic from scratch.
    position_ids [B|1, L] (cell indices in [0, n*n)) -> [B|1, L, hidden].
    """

    def __init__(self, grid_size: int, hidden_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.box_size = math.isqrt(grid_size)
        self.row = nn.Embedding(grid_size, hidden_size)
        self.col = nn.Embedding(grid_size, hidden_size)
        self.box = nn.Embedding(grid_size, hidden_size)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        n, b = self.grid_size, self.box_size
        row, col = position_ids // n, position_ids % n
        box = (row // b) * b + col // b
        return self.row(row) + self.col(col) + self.box(box)


class TinyMDMAttention(nn.Module):
    """Bidirectional multi-head self-attention: hidden [B, L, D] -> [B, L, D]."""

    def __init__(self, config: TinyMDMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        # One fused projection: a single GEMM is noticeably faster than three at these tiny widths.
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden, attn_mask=None, rotary=None):
        """hidden [B, L, D]; attn_mask bool [B|1, 1|H, L, L] (True = may attend) or None; rotary (cos, sin).
        Returns [B, L, D]."""
        bsz, seq_len, _ = hidden.shape
        qkv = self.qkv_proj(hidden).view(bsz, seq_len, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, head_dim]
        if rotary is not None:
            q, k = _apply_rotary(q, *rotary), _apply_rotary(k, *rotary)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq_len, -1))


class TinyMDMMLP(nn.Module):
    """SwiGLU feed-forward: [B, L, D] -> [B, L, D] via silu(gate) * up, fused into one input projection."""

    def __init__(self, config: TinyMDMConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class TinyMDMBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)). [B, L, D] -> [B, L, D]."""

    def __init__(self, config: TinyMDMConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = TinyMDMAttention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = TinyMDMMLP(config)

    def forward(self, hidden, attn_mask=None, rotary=None):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), attn_mask, rotary)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class TinyMDMBackbone(nn.Module):
    """Token + position embeddings, the block stack and the final norm (``TinyMDM.model``)."""

    def __init__(self, config: TinyMDMConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        head_dim = config.hidden_size // config.num_attention_heads
        # "rope+learned" (Zebra): rotary makes "attend to the token k places away" one rule for every position,
        # which binds each clue's three tokens; the learned table says which grid cell a position is.
        self.embed_absolute = None
        if config.position_embedding == "rope+learned":
            self.embed_absolute = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if config.position_embedding.startswith("rope"):
            self.embed_positions = TinyMDMRotary(head_dim, config.rope_theta)
        elif config.position_embedding == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.embed_positions = TinyMDMGridPositions(config.grid_size, config.hidden_size)
        self.layers = nn.ModuleList(TinyMDMBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids, attn_mask, position_ids, output_hidden_states=False):
        """input_ids [B, L], attn_mask bool [B|1, 1|H, L, L] or None, position_ids [B|1, L]
        -> (final hidden [B, L, D], tuple of num_layers + 1 hidden states or None)."""
        hidden = self.embed_tokens(input_ids)
        rotary = None
        if isinstance(self.embed_positions, TinyMDMRotary):
            rotary = self.embed_positions(position_ids, hidden.dtype)
            if self.embed_absolute is not None:
                hidden = hidden + self.embed_absolute(position_ids)
        else:
            hidden = hidden + self.embed_positions(position_ids)
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, attn_mask, rotary)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden  # Llama convention: the last entry is the normalized final state
        return hidden, (tuple(all_hidden) if all_hidden is not None else None)


class TinyMDM(PreTrainedModel):
    """Bidirectional transformer with an LM head: ``input_ids [B, L] -> logits [B, L, V]``."""

    config_class = TinyMDMConfig
    base_model_prefix = "model"
    _no_split_modules = ["TinyMDMBlock"]
    _supports_sdpa = True
    # transformers 5 wants a {target: source} dict, 4.x a list of targets; only used if tie_word_embeddings.
    _tied_weights_keys = (
        {"lm_head.weight": "model.embed_tokens.weight"} if _TRANSFORMERS_V5 else ["lm_head.weight"]
    )

    def __init__(self, config: TinyMDMConfig):
        super().__init__(config)
        self.model = TinyMDMBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        # `_init` is transformers.initialization on v5: its functions skip tensors flagged as loaded, so
        # from_pretrained only initializes what the checkpoint did not provide.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm) and module.weight is not None:
            _init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _attention_mask_4d(self, attention_mask: torch.Tensor | None, bsz: int, seq_len: int):
        """None | [B, L] (1 = real token) | bool [B|1, 1|H, L, L] (True = may attend) -> bool 4-D or None.

        A query row with no allowed key would make softmax produce NaN; such rows (pad queries) are allowed to
        attend to themselves instead, which changes nothing for rows that had at least one allowed key.
        """
        if attention_mask is None:
            return None
        shape = tuple(attention_mask.shape)
        if attention_mask.dim() == 2:
            if shape != (bsz, seq_len):
                raise ValueError(f"attention_mask {shape} must be [B, L] = {(bsz, seq_len)}")
            mask = (attention_mask != 0)[:, None, None, :].expand(bsz, 1, seq_len, seq_len)
        elif attention_mask.dim() == 4:
            b, h, q, k = attention_mask.shape
            heads = self.config.num_attention_heads
            if b not in (1, bsz) or h not in (1, heads) or (q, k) != (seq_len, seq_len):
                raise ValueError(f"attention_mask {shape} must be [B, 1, L, L] with B={bsz}, L={seq_len}")
            if attention_mask.is_floating_point():
                # Additive float masks (0 / -inf) and 0/1 masks look alike; refuse rather than guess.
                raise ValueError("a 4-D attention_mask must be bool (True = may attend), not floating point")
            mask = attention_mask != 0
        else:
            raise ValueError(f"attention_mask must be 2-D [B, L] or 4-D [B, 1, L, L], got {shape}")
        eye = torch.eye(seq_len, dtype=torch.bool, device=mask.device)
        return mask | (eye & ~mask.any(dim=-1, keepdim=True))

    def _position_ids(
        self, position_ids: torch.Tensor | None, bsz: int, seq_len: int, device
    ) -> torch.Tensor:
        """None | [B|1, L] -> [B|1, L] long, validated against the position embedding's range."""
        cfg = self.config
        if cfg.position_embedding == "grid" and seq_len > cfg.grid_size**2:
            raise ValueError(f"input_ids length {seq_len} exceeds the {cfg.grid_size}x{cfg.grid_size} grid")
        too_long = seq_len > cfg.max_position_embeddings
        if cfg.position_embedding.endswith("learned") and position_ids is None and too_long:
            raise ValueError(
                f"input_ids length {seq_len} > max_position_embeddings={cfg.max_position_embeddings}"
            )
        if position_ids is None:
            return torch.arange(seq_len, device=device)[None]
        if (
            position_ids.dim() != 2
            or position_ids.shape[0] not in (1, bsz)
            or position_ids.shape[1] != seq_len
        ):
            raise ValueError(f"position_ids {tuple(position_ids.shape)} must be [B, L] = {(bsz, seq_len)}")
        return position_ids.to(device=device, dtype=torch.long)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ):
        """input_ids [B, L] -> MaskedLMOutput(logits [B, L, V] float32, hidden_states tuple or None).

        attention_mask: None (full attention), [B, L] padding mask (1/True = real token), or bool
        [B, 1, L, L] (True = may attend). position_ids: [B, L]; for rope/learned they let left-padded rows
        start at 0 on the first real token; for grid they are cell indices. Outputs at pad positions are
        finite but meaningless.
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, L] with L >= 1, got {getattr(input_ids, 'shape', None)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        bsz, seq_len = input_ids.shape
        attn_mask = self._attention_mask_4d(attention_mask, bsz, seq_len)
        positions = self._position_ids(position_ids, bsz, seq_len, input_ids.device)
        hidden, all_hidden = self.model(input_ids, attn_mask, positions, output_hidden_states)
        logits = self.lm_head(hidden).float()
        if not return_dict:
            return (logits,) if all_hidden is None else (logits, all_hidden)
        return MaskedLMOutput(logits=logits, hidden_states=all_hidden)


def load_tiny_mdm(path, device="cpu") -> TinyMDM:
    """Load a TinyMDM saved with ``save_pretrained`` (or a pretraining ``checkpoint-last``) in eval mode; see
    :func:`load_saved` for what is checked."""
    return load_saved(TinyMDM, path, device)
