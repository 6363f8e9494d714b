"""The learned unmasking policy g_phi of UPO: one score per position of the active region.

    hidden [B, W, d]  (the hidden state entering the MDM's last block, positions of the active region)
    topk_probs [B, W, k >= feature_topk]  (top-k token probabilities, the mask token excluded: all the policy reads
                      of the token statistics; the sampler's protocol passes them inside ``stats``, a VocabStats)
    candidates [B, W] bool  (positions the policy may choose)
      -> scores [B, W] float32; g_phi(a | x) = softmax over the candidates of scores / position_temperature

Body: optional width projection d -> policy_dim, plus a Linear embedding of the per-position features
[is-candidate flag, top-k probabilities]; one pre-norm transformer block (``TinyMDMBlock``, fresh or copied from
the MDM's last block); ``extra_blocks`` more fresh blocks (default 0); a final RMSNorm; a 3-layer MLP (Linear, SiLU,
LayerNorm) to one score per position.

Lighter bodies (issue 13: the paper's policy is < 2% of its 8B MDM, but a block at the MDM's width costs about a
quarter of a 4-layer TinyMDM; ``upo_fast.evaluation.flops`` measures it): ``policy_dim`` runs the block at a
narrower width ("narrow"), and ``body="features"`` drops the transformer block: the per-position MLP reads the
(projected) hidden state plus the features embedding only, and nothing compares positions.

Why extra blocks: a copied block ends where the MDM's own prediction is formed, so after it only the per-position
MLP is left, and no layer can compare the predictions of *different* positions (two cells of a Sudoku row both
about to be filled with a 5). An extra block attends across positions after the prediction exists. Its output
projections start at zero, so a fresh policy with extra blocks scores exactly like one without them.

With ``anchor="confidence"`` the score is ``top1_prob / anchor_tau + correction`` and the MLP's last Linear starts
at zero, so a fresh policy *is* the max-confidence rule (scaled to a sharp softmax): training starts at the
heuristic the reference anchors to instead of at a random order.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from upo_fast.kernels.vocab_stats import VocabStats
from upo_fast.models.tiny_mdm import TinyMDM, TinyMDMBlock
from upo_fast.policy_config import ANCHORS, BLOCK_INITS, BODIES, UnmaskingPolicyConfig
from upo_fast.sampling.adapters import MDMAdapter
from upo_fast.sampling.families import detect_family

try:  # transformers >= 5: init helpers that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # transformers 4.x: plain torch init is fine there
    from torch.nn import init as _init

logger = logging.getLogger(__name__)

def _mdm_hidden_size(mdm: nn.Module) -> int:
    config = getattr(mdm, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)  # LLaDA names it d_model
    if size is None:
        raise ValueError("cannot read the MDM's hidden size: its config has neither hidden_size nor d_model")
    return int(size)


def _unwrap(mdm):
    return mdm.model if isinstance(mdm, MDMAdapter) else mdm


def _trunk(net: nn.Module, hidden, topk_probs, candidates, attention_mask, feature_topk: int, added=None):
    """The body both heads read, for ``net`` (the policy itself or its ``CommitNet``, which have the same parts):
    (x [B, W, width] after the final norm, features [B, W, 1 + k]); ``added`` [B, W, width]: more input, summed with
    the embeddings before the blocks. The MDM may run in bf16 while the policy trains in fp32: everything is computed
    in ``net``'s dtype."""
    dtype = net.feature_proj.weight.dtype
    topk = topk_probs[..., :feature_topk].to(dtype)
    features = torch.cat([candidates.to(dtype)[..., None], topk], dim=-1)  # [B, W, 1 + k]
    x = hidden.to(dtype)
    if net.input_proj is not None:
        x = net.input_proj(x)
    x = x + net.feature_proj(features)
    if added is not None:
        x = x + added
    if net.block is not None:  # body="features": per position, nothing to mask
        mask = UnmaskingPolicy._block_mask(attention_mask)
        x = net.block(x, mask)
        for block in net.extra_blocks:
            x = block(x, mask)
    return net.norm(x), features


class CommitNet(nn.Module):
    """The commit net of a policy with ``commit_head=True``: the order trunk's parts over again (its own input
    projection, features embedding, ``commit_blocks`` transformer blocks, norm), and an MLP that reads the
    trunk's output with the raw features beside it (so the token confidence is one Linear away) -> one log-odds
    per position that the MDM's token there is already final. A separate trunk: training it leaves the order the
    policy was trained for unchanged, and its block compares positions (two cells about to take the same digit)."""

    def __init__(self, config: UnmaskingPolicyConfig):
        super().__init__()
        width, m = config.width, config.mlp_hidden
        self.input_proj = nn.Linear(config.mdm_hidden_size, width) if config.projects_input else None
        self.feature_proj = nn.Linear(1 + config.feature_topk, width)
        blocks = config.commit_blocks if config.body == "block" else 0
        self.block = TinyMDMBlock(config.block_config()) if blocks else None
        self.extra_blocks = nn.ModuleList(TinyMDMBlock(config.block_config()) for _ in range(max(blocks - 1, 0)))
        self.norm = nn.RMSNorm(width, eps=config.rms_norm_eps)
        # the token each candidate would take, so that the block can compare candidates' tokens (two cells of a
        # Sudoku row about to take the same digit); ids beyond the table share rows (id modulo its size)
        buckets = config.commit_token_buckets
        self.token_embed = nn.Embedding(buckets, width) if buckets else None
        self.head = nn.Sequential(
            nn.Linear(width + 1 + config.feature_topk, m), nn.SiLU(), nn.LayerNorm(m),
            nn.Linear(m, m), nn.SiLU(), nn.LayerNorm(m),
            nn.Linear(m, 1),
        )  # fmt: skip


class UnmaskingPolicy(PreTrainedModel):
    """Scores the positions of the active region: ``forward(hidden, stats, candidates) -> [B, W] float32``, or
    ``forward(hidden, candidates=..., topk_probs=...)`` with the only statistic it reads."""

    config_class = UnmaskingPolicyConfig
    base_model_prefix = "policy"
    _no_split_modules = ["TinyMDMBlock"]

    def __init__(self, config: UnmaskingPolicyConfig):
        super().__init__(config)
        width = config.width
        self.input_proj = nn.Linear(config.mdm_hidden_size, width) if config.projects_input else None
        # 1 candidate flag + the top-k probabilities, embedded at the block's width and added to the hidden state
        self.feature_proj = nn.Linear(1 + config.feature_topk, width)
        self.block = TinyMDMBlock(config.block_config()) if config.body == "block" else None
        self.extra_blocks = nn.ModuleList(TinyMDMBlock(config.block_config()) for _ in range(config.extra_blocks))
        self.norm = nn.RMSNorm(width, eps=config.rms_norm_eps)
        m = config.mlp_hidden
        self.head = nn.Sequential(
            nn.Linear(width, m), nn.SiLU(), nn.LayerNorm(m),
            nn.Linear(m, m), nn.SiLU(), nn.LayerNorm(m),
            nn.Linear(m, 1),
        )  # fmt: skip
        self.commit = CommitNet(config) if config.commit_head else None
        self.post_init()

    def _init_weights(self, module):
        # `_init` skips tensors already loaded from a checkpoint on transformers 5, so from_pretrained keeps them.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            # The anchor's correction starts at exactly 0: a fresh policy ranks like max-confidence.
            zero = self.config.anchor == "confidence" and module is self.head[-1]
            # A copied block must see the MDM's own hidden state at first: features enter through zero weights
            # (their gradient is not zero, so they are learned).
            zero = zero or (self.config.block_init == "copy" and module is self.feature_proj)
            # An extra block starts as the identity (its residual branches add 0), the commit net's too.
            extra = [*self.extra_blocks, *(self.commit.extra_blocks if getattr(self, "commit", None) else [])]
            zero = zero or any(module is b.self_attn.o_proj or module is b.mlp.down_proj for b in extra)
            if zero:
                _init.zeros_(module.weight)
            else:
                _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            if module.weight is not None:
                _init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then CPU tensors are copied into memory the model owns.

        On the CPU, transformers may leave tensors pointing into the safetensors buffer at unaligned offsets; BLAS
        then takes other code paths and the loaded policy's scores differ from the saved one's in the last bit.
        Owned (aligned) copies make a save/load round trip bit-exact, for the cost of one copy of a small model.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.device.type == "cpu":
                    tensor.data = tensor.data.clone()
        return loaded

    # ---- construction beside an MDM ------------------------------------------------------------------------
    @classmethod
    def for_mdm(cls, mdm_model, **overrides) -> UnmaskingPolicy:
        """A fresh policy that fits ``mdm_model`` (an MDM or an ``MDMAdapter``); ``overrides`` set config fields.

        With ``block_init="copy"`` the block starts as a copy of the MDM's last block: supported for a TinyMDM
        MDM at the policy width of the MDM (num_heads and intermediate_size default to the MDM's).
        """
        mdm = _unwrap(mdm_model)
        fields = dict(mdm_family=detect_family(mdm), mdm_hidden_size=_mdm_hidden_size(mdm))
        vocab = getattr(getattr(mdm, "config", None), "vocab_size", None)
        if isinstance(vocab, int) and vocab < 8:  # the sampler gives min(8, V) top-k probabilities
            fields["feature_topk"] = vocab
        copy = overrides.get("block_init") == "copy"
        if copy and isinstance(mdm, TinyMDM):
            fields.update(num_heads=mdm.config.num_attention_heads, intermediate_size=mdm.config.intermediate_size)
        fields.update(overrides)
        config = UnmaskingPolicyConfig(**fields)
        if copy:
            if not isinstance(mdm, TinyMDM) or config.projects_input:
                raise ValueError("block_init='copy' needs a TinyMDM MDM with matching width (policy_dim None or "
                                 f"{config.mdm_hidden_size}); got {type(mdm).__name__} and policy_dim="
                                 f"{config.policy_dim}; use block_init='fresh'")
            mdm_cfg = mdm.config
            if (config.num_heads, config.ffn_size) != (mdm_cfg.num_attention_heads, mdm_cfg.intermediate_size):
                raise ValueError(f"block_init='copy' needs num_heads={mdm_cfg.num_attention_heads} and "
                                 f"intermediate_size={mdm_cfg.intermediate_size} (the MDM's), got "
                                 f"{config.num_heads} and {config.ffn_size}")
        policy = cls(config)
        if copy:
            for block in (policy.block, policy.commit.block if policy.commit is not None else None):
                if block is not None:
                    block.load_state_dict(mdm.model.layers[-1].state_dict())
        policy.to(next(mdm.parameters()).device)
        logger.info("UnmaskingPolicy for a %s MDM (hidden %d): %.2fM parameters", config.mdm_family,
                    config.mdm_hidden_size, policy.num_parameters() / 1e6)
        return policy

    def check_compatible(self, mdm_model) -> None:
        """Raise a ValueError when ``mdm_model`` is not the kind of MDM this policy was trained beside."""
        mdm = _unwrap(mdm_model)
        family, hidden = detect_family(mdm), _mdm_hidden_size(mdm)
        cfg = self.config
        if family != cfg.mdm_family:
            raise ValueError(f"this policy fits a {cfg.mdm_family!r} MDM, but the model is a {family!r} MDM")
        if hidden != cfg.mdm_hidden_size:
            raise ValueError(f"this policy fits an MDM of hidden size {cfg.mdm_hidden_size}, but the model's "
                             f"hidden size is {hidden}")

    # ---- forward -------------------------------------------------------------------------------------------
    @staticmethod
    def _topk_probs(stats, topk_probs) -> tuple[torch.Tensor, str]:
        """(the top-k probabilities, their name in errors) from exactly one of ``stats`` / ``topk_probs``."""
        if (stats is None) == (topk_probs is None):
            raise ValueError("pass the token statistics as either stats (a VocabStats) or topk_probs ([B, W, k]), "
                             f"exactly one; got {'both' if stats is not None else 'neither'}")
        if stats is None:
            return topk_probs, "topk_probs"
        return stats.topk_probs, "stats.topk_probs"

    def _check_inputs(self, hidden, topk, topk_name, candidates, attention_mask) -> None:
        cfg = self.config
        if hidden is None:
            raise ValueError("hidden is required (the hidden state entering the MDM's last block, [B, W, d])")
        if not torch.is_tensor(hidden) or hidden.dim() != 3 or not hidden.is_floating_point():
            raise ValueError(f"hidden must be a [B, W, d] float tensor, got {getattr(hidden, 'shape', hidden)}")
        if hidden.shape[-1] != cfg.mdm_hidden_size:
            raise ValueError(f"hidden has last dim {hidden.shape[-1]}, but this policy fits an MDM of hidden size "
                             f"{cfg.mdm_hidden_size} (mdm_hidden_size)")
        bw = tuple(hidden.shape[:2])
        if not torch.is_tensor(topk) or topk.dim() != 3 or tuple(topk.shape[:2]) != bw:
            raise ValueError(f"{topk_name} must be [B, W, k] with [B, W] = {bw}, got "
                             f"{tuple(getattr(topk, 'shape', ()))}")
        if topk.shape[-1] < cfg.feature_topk:
            raise ValueError(f"{topk_name} has {topk.shape[-1]} values per position, the policy needs "
                             f"feature_topk={cfg.feature_topk}")
        if not torch.is_tensor(candidates) or candidates.dtype != torch.bool or tuple(candidates.shape) != bw:
            raise ValueError(f"candidates must be a bool [B, W] = {bw} tensor, got "
                             f"{getattr(candidates, 'dtype', type(candidates).__name__)} "
                             f"{tuple(getattr(candidates, 'shape', ()))}")
        if attention_mask is not None and tuple(attention_mask.shape) != bw:
            raise ValueError(f"attention_mask must be [B, W] = {bw} (1 = real position), got "
                             f"{tuple(attention_mask.shape)}")

    # ---- the commit net (learned parallel unmasking) ----------------------------------------------------------
    @property
    def has_commit_head(self) -> bool:
        return self.commit is not None

    def add_commit_head(self, mdm_model=None, blocks: int = 1) -> UnmaskingPolicy:
        """Give this policy a fresh commit net with ``blocks`` transformer blocks (the order part is unchanged); with
        ``block_init="copy"`` and a TinyMDM ``mdm_model`` of the policy's width, its first block starts as a copy of
        the MDM's last block."""
        if self.commit is not None:
            raise ValueError("this policy already has a commit net (config.commit_head is True)")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
        mdm = _unwrap(mdm_model) if mdm_model is not None else None
        vocab = getattr(getattr(mdm, "config", None), "vocab_size", None)
        self.config.commit_head, self.config.commit_blocks = True, blocks
        self.config.commit_token_buckets = min(vocab, 1024) if isinstance(vocab, int) else 0
        device = next(self.parameters()).device
        self.commit = CommitNet(self.config)
        self.commit.apply(self._init_weights)
        if (self.config.block_init == "copy" and isinstance(mdm, TinyMDM) and self.commit.block is not None
                and not self.config.projects_input):
            self.commit.block.load_state_dict(mdm.model.layers[-1].state_dict())
        self.commit.to(device)
        return self

    def commit_logits(self, hidden: torch.Tensor, stats: VocabStats | None = None,
                      candidates: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                      topk_probs: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """[B, W] float32 log-odds that the MDM's current token at each position is already final (what the learned
        commit rule thresholds); inputs as in ``forward``. A ValueError when the policy has no commit net."""
        if self.commit is None:
            raise ValueError("this policy has no commit net (config.commit_head is False): train one with "
                             "`upo-fast pretrain-commit`, or use a threshold/factor rule")
        all_topk, topk_name = self._topk_probs(stats, topk_probs)
        self._check_inputs(hidden, all_topk, topk_name, candidates, attention_mask)
        added = None
        if self.commit.token_embed is not None:  # the token each candidate would take (stats.token), else nothing
            tokens = stats.token if stats is not None else tokens
            if tokens is None or tuple(tokens.shape) != tuple(candidates.shape):
                raise ValueError(f"this commit net reads the candidates' tokens: pass stats (a VocabStats) or tokens "
                                 f"[B, W] = {tuple(candidates.shape)}")
            table = self.commit.token_embed
            added = table(tokens.long() % table.num_embeddings) * candidates[..., None].to(table.weight.dtype)
        x, features = _trunk(self.commit, hidden, all_topk, candidates, attention_mask, self.config.feature_topk,
                             added)
        return self.commit.head(torch.cat([x, features], dim=-1)).squeeze(-1).float()

    @staticmethod
    def _block_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """[B, W] (nonzero = real) -> bool [B, 1, W, W] (True = may attend). A pad query may attend to itself,
        so a row with no allowed key never turns softmax into NaN."""
        if attention_mask is None:
            return None
        valid = attention_mask != 0
        width = valid.shape[-1]
        mask = valid[:, None, None, :].expand(-1, 1, width, width)
        eye = torch.eye(width, dtype=torch.bool, device=valid.device)
        return mask | (eye & ~mask.any(dim=-1, keepdim=True))

    def forward(self, hidden: torch.Tensor, stats: VocabStats | None = None, candidates: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, topk_probs: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, W, d], candidates [B, W] bool, attention_mask [B, W] or None, and the top-k probabilities
        [B, W, k] either as ``stats.topk_probs`` (the sampler's scorer protocol: a VocabStats, of which only this
        field is read) or as ``topk_probs`` (recorded states: no other statistic needs to be made up) -> scores
        [B, W] float32. Scores at non-candidates are meaningless (callers mask them)."""
        all_topk, topk_name = self._topk_probs(stats, topk_probs)
        self._check_inputs(hidden, all_topk, topk_name, candidates, attention_mask)
        cfg = self.config
        x, _ = _trunk(self, hidden, all_topk, candidates, attention_mask, cfg.feature_topk)
        scores = self.head(x).squeeze(-1).float()  # [B, W]
        if cfg.anchor == "confidence":
            # top-1 probability with the mask token excluded, exactly what max-confidence ranks by
            scores = all_topk[..., 0].float() / cfg.anchor_tau + scores
        return scores


def _register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModel.from_pretrained`` read ``model_type="upo_policy"`` directories."""
    try:
        from transformers import AutoConfig, AutoModel

        AutoConfig.register(UnmaskingPolicyConfig.model_type, UnmaskingPolicyConfig, exist_ok=True)
        AutoModel.register(UnmaskingPolicyConfig, UnmaskingPolicy, exist_ok=True)
    except (ValueError, TypeError, ImportError, AttributeError):
        pass  # a transformers version with another registry API: the classes still load directly


_register_auto_classes()


def load_policy(path, task, mdm, model_dir=None) -> UnmaskingPolicy:
    """A saved UnmaskingPolicy, checked against the MDM ``mdm``; which folder: ``upo_fast.assets.policy_folder``
    (``path``, else ``model_dir``'s ``policy/``, else the one shipped with ``task``)."""
    from upo_fast.assets import policy_folder
    from upo_fast.models.saved import load_saved

    folder = policy_folder(path, task.name if task is not None else None, model_dir)
    policy = load_saved(UnmaskingPolicy, folder, next(mdm.parameters()).device)  # strict: missing weights error
    policy.check_compatible(mdm)
    return policy

__all__ = ["UnmaskingPolicyConfig", "UnmaskingPolicy", "CommitNet", "ANCHORS", "BLOCK_INITS", "BODIES", "load_policy"]
