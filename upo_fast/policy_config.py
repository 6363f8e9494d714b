"""The configuration of the unmasking policy (:class:`UnmaskingPolicyConfig`) and the checks of its fields: what
``upo_fast.policy`` builds its network from, and what a saved policy's ``config.json`` holds."""

from __future__ import annotations

from transformers import PretrainedConfig

from upo_fast.models.tiny_mdm import TinyMDMConfig
from upo_fast.sampling.families import FAMILIES

ANCHORS = ("none", "confidence")
BLOCK_INITS = ("fresh", "copy")
BODIES = ("block", "features")  # block: one transformer block (+ extra_blocks); features: no block (per position)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _positive_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a float > 0, got {value!r}")


def _check_config(*, mdm_family, mdm_hidden_size, feature_topk, policy_dim, num_heads, intermediate_size, mlp_hidden,
                  anchor, anchor_tau, block_init, extra_blocks, candidate_topk, body, rms_norm_eps,
                  initializer_range) -> None:
    """The fields of an UnmaskingPolicyConfig as given: a ValueError naming the first one out of range."""
    if mdm_family not in FAMILIES:
        raise ValueError(f"mdm_family must be one of {', '.join(FAMILIES)}, got {mdm_family!r}")
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
    if block_init not in BLOCK_INITS:
        raise ValueError(f"block_init must be one of {', '.join(BLOCK_INITS)}, got {block_init!r}")
    for name, value in [("mdm_hidden_size", mdm_hidden_size), ("feature_topk", feature_topk),
                        ("num_heads", num_heads), ("mlp_hidden", mlp_hidden)]:
        _positive_int(name, value)
    for name, value in [("policy_dim", policy_dim), ("intermediate_size", intermediate_size),
                        ("candidate_topk", candidate_topk)]:
        if value is not None:
            _positive_int(name, value)
    if not isinstance(extra_blocks, int) or extra_blocks < 0:
        raise ValueError(f"extra_blocks must be an int >= 0, got {extra_blocks!r}")
    for name, value in [("anchor_tau", anchor_tau), ("rms_norm_eps", rms_norm_eps),
                        ("initializer_range", initializer_range)]:
        _positive_float(name, value)
    if body not in BODIES:
        raise ValueError(f"body must be one of {', '.join(BODIES)}, got {body!r}")
    if body == "features" and (block_init != "fresh" or extra_blocks):
        raise ValueError("body='features' has no transformer block: it needs block_init='fresh' and "
                         f"extra_blocks=0, got block_init={block_init!r}, extra_blocks={extra_blocks!r}")
    width = policy_dim if policy_dim is not None else mdm_hidden_size
    if body == "block" and width % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must divide the policy width {width} (policy_dim or "
                         "mdm_hidden_size)")


class UnmaskingPolicyConfig(PretrainedConfig):
    """Configuration of :class:`UnmaskingPolicy`. Records the MDM it fits (``mdm_family``, ``mdm_hidden_size``).

    ``policy_dim=None`` (or equal to ``mdm_hidden_size``) runs the block at the MDM's width; otherwise a Linear
    projects d -> policy_dim first. ``intermediate_size=None`` means 4 * policy width. ``body="features"``: no
    transformer block (``block_init`` must be "fresh", ``extra_blocks`` 0); a saved config without ``body`` is a
    "block" policy. ``candidate_topk=K`` (set for
    policies trained against the Top-K reference) makes the sampler offer only the K most confident candidates.

    ``commit_head=True``: the policy also has a commit net (learned parallel unmasking; ``policy.CommitNet``), which
    gives each candidate the probability that the MDM's token there is already final; the learned commit rule
    (``sampling.commit_rules.LearnedCommit``) commits every candidate whose probability is >= ``commit_threshold``
    (chosen on validation puzzles when the net is trained) besides the order's first pick. ``commit_blocks``: the
    transformer blocks of the commit net's trunk (the first a copy of the MDM's last block when the widths allow, the
    others fresh, identity at the start; none with ``body="features"``). ``commit_token_buckets``: rows of its
    embedding of the token each candidate would take (0: none; ``add_commit_head`` sets the MDM's vocabulary size, at
    most 1,024, larger ids sharing rows). A saved config without these fields has no commit net.
    """

    model_type = "upo_policy"

    def __init__(
        self,
        mdm_family: str = "generic",
        mdm_hidden_size: int = 32,
        feature_topk: int = 8,
        policy_dim: int | None = None,
        num_heads: int = 4,
        intermediate_size: int | None = None,
        mlp_hidden: int = 256,
        anchor: str = "none",
        anchor_tau: float = 0.1,
        block_init: str = "fresh",
        extra_blocks: int = 0,
        candidate_topk: int | None = None,
        body: str = "block",
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        commit_head: bool = False,
        commit_threshold: float = 0.5,
        commit_blocks: int = 1,
        commit_token_buckets: int = 0,
        **kwargs,
    ):
        _check_config(mdm_family=mdm_family, mdm_hidden_size=mdm_hidden_size, feature_topk=feature_topk,
                      policy_dim=policy_dim, num_heads=num_heads, intermediate_size=intermediate_size,
                      mlp_hidden=mlp_hidden, anchor=anchor, anchor_tau=anchor_tau, block_init=block_init,
                      extra_blocks=extra_blocks, candidate_topk=candidate_topk, body=body, rms_norm_eps=rms_norm_eps,
                      initializer_range=initializer_range)
        if not isinstance(commit_head, bool):
            raise ValueError(f"commit_head must be True or False, got {commit_head!r}")
        if isinstance(commit_threshold, bool) or not isinstance(commit_threshold, (int, float)) \
                or not 0 < commit_threshold < 1:
            raise ValueError(f"commit_threshold must be a probability in (0, 1), got {commit_threshold!r}")
        if isinstance(commit_blocks, bool) or not isinstance(commit_blocks, int) or commit_blocks < 0:
            raise ValueError(f"commit_blocks must be an int >= 0, got {commit_blocks!r}")
        if isinstance(commit_token_buckets, bool) or not isinstance(commit_token_buckets, int) \
                or commit_token_buckets < 0:
            raise ValueError(f"commit_token_buckets must be an int >= 0, got {commit_token_buckets!r}")
        self.mdm_family = mdm_family
        self.mdm_hidden_size = mdm_hidden_size
        self.feature_topk = feature_topk
        self.policy_dim = policy_dim
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.mlp_hidden = mlp_hidden
        self.anchor = anchor
        self.anchor_tau = float(anchor_tau)
        self.block_init = block_init
        self.extra_blocks = extra_blocks
        self.body = body
        self.candidate_topk = candidate_topk  # trained against Top-K: choose among the K most confident only
        self.rms_norm_eps = float(rms_norm_eps)
        self.initializer_range = float(initializer_range)
        self.commit_head = commit_head
        self.commit_threshold = float(commit_threshold)
        self.commit_blocks = commit_blocks
        self.commit_token_buckets = commit_token_buckets
        super().__init__(**kwargs)

    @property
    def width(self) -> int:
        """The width the body runs at (the transformer block's, or the MLP head's input with body="features")."""
        return self.policy_dim if self.policy_dim is not None else self.mdm_hidden_size

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.width

    @property
    def projects_input(self) -> bool:
        return self.width != self.mdm_hidden_size

    def block_config(self) -> TinyMDMConfig:
        """The TinyMDMConfig that builds the policy's block. "learned" positions: no rotary (the MDM's hidden
        states already carry position information), and it drops rope's even-head-dim requirement."""
        return TinyMDMConfig(vocab_size=1, hidden_size=self.width, num_hidden_layers=1,
                             num_attention_heads=self.num_heads, intermediate_size=self.ffn_size,
                             position_embedding="learned", rms_norm_eps=self.rms_norm_eps, pad_token_id=None)
