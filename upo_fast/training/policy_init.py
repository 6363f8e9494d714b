"""What the GRPO trainer and supervised imitation share: the policy a run starts from (:class:`PolicyInit`,
:func:`make_policy`), the seeds of its training puzzles (:func:`step_seed`) and validation (``VALIDATION_SEED``,
:func:`validate`). One home, so that neither run imports the other or builds the other's config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from upo_fast.evaluation.grids import HELD_OUT_SEED, evaluate
from upo_fast.models.saved import load_saved
from upo_fast.policy import BODIES, UnmaskingPolicy
from upo_fast.validation import field_check

INITS = ("anchor", "fresh", "copy")  # or a path to a saved policy (e.g. from `upo-fast pretrain-policy`)
VALIDATION_SEED = 97_531  # validation puzzles; != HELD_OUT_SEED, and training seeds are derived differently
assert VALIDATION_SEED != HELD_OUT_SEED


def step_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s puzzles and noise: the same on every process and on resume."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % 2**31


def validate(mdm, policy, task, puzzles, solutions) -> dict:
    """Greedy (position temperature 0) policy on the validation puzzles."""
    result = evaluate(mdm, task, puzzles, solutions, ["policy"], progress=False, policy=policy,
                      position_temperature=0.0)["policy"]
    return {"val_solved": result["solved_rate"], "val_cell_accuracy": result["cell_accuracy"]}


@dataclass(frozen=True)
class PolicyInit:
    """The settings a run's policy is built from, checked once here (a ValueError names the field); the fields
    mean what they mean in ``TrainConfig``, which builds one with ``policy_init()`` (as ``ImitationConfig`` does).

    init: anchor (score = confidence / anchor_tau + a zero-initialized correction) | fresh | copy (the block a copy
    of the MDM's last block) | a saved policy folder. candidate_topk: the K the policy chooses among (the Top-K
    reference's restriction, or a re-ranker's); None keeps a loaded policy's own and gives a new one none.
    """

    init: str = "anchor"
    anchor_tau: float = 0.1
    block_init: str = "copy"
    policy_body: str = "block"
    mlp_hidden: int = 128
    policy_dim: int | None = None
    extra_blocks: int = 0
    candidate_topk: int | None = None

    def __post_init__(self):
        check = field_check(self)

        check(self.init in INITS or (Path(self.init) / "config.json").is_file(), "init",
              f"one of {', '.join(INITS)} or a saved policy folder (with config.json)")
        check(isinstance(self.anchor_tau, (int, float)) and math.isfinite(self.anchor_tau) and self.anchor_tau > 0,
              "anchor_tau", "a finite number > 0")
        check(self.block_init in ("copy", "fresh"), "block_init", "'copy' or 'fresh'")
        check(self.policy_body in BODIES, "policy_body", f"one of {', '.join(BODIES)}")
        check(self.policy_body == "block" or (self.init != "copy" and self.extra_blocks == 0), "policy_body",
              "'block' with init='copy' or extra_blocks > 0 (body 'features' has no transformer block)")
        check(self.policy_dim is None or (isinstance(self.policy_dim, int) and self.policy_dim >= 1), "policy_dim",
              "None or an int >= 1")
        check(isinstance(self.mlp_hidden, int) and self.mlp_hidden >= 1, "mlp_hidden", "an int >= 1")
        check(isinstance(self.extra_blocks, int) and self.extra_blocks >= 0, "extra_blocks", "an int >= 0")
        check(self.candidate_topk is None or (isinstance(self.candidate_topk, int) and self.candidate_topk >= 1),
              "candidate_topk", "None or an int >= 1")


def make_policy(settings, mdm) -> UnmaskingPolicy:
    """The policy a run starts from, beside ``mdm``: ``settings`` is a :class:`PolicyInit`, or a config that builds
    one with ``policy_init()`` (``TrainConfig``, ``ImitationConfig``)."""
    s = settings if isinstance(settings, PolicyInit) else settings.policy_init()
    if s.init in INITS:
        block_init = "copy" if s.init == "copy" else s.block_init
        fields = dict(anchor="confidence" if s.init == "anchor" else "none", anchor_tau=s.anchor_tau,
                      block_init=block_init if s.policy_body == "block" else "fresh", mlp_hidden=s.mlp_hidden,
                      policy_dim=s.policy_dim, extra_blocks=s.extra_blocks, body=s.policy_body)
        policy = UnmaskingPolicy.for_mdm(mdm, **fields)  # its candidate_topk: None
    else:
        policy = load_saved(UnmaskingPolicy, s.init, next(mdm.parameters()).device)
    policy.check_compatible(mdm)
    if s.candidate_topk is not None:
        policy.config.candidate_topk = s.candidate_topk
    # else a loaded policy keeps its own restriction (a re-ranker from `pretrain-policy --candidate-topk K`)
    return policy


__all__ = ["INITS", "VALIDATION_SEED", "PolicyInit", "make_policy", "step_seed", "validate"]
