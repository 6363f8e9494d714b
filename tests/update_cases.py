"""Fixed synthetic rollouts and update settings shared by the update-equivalence fixture and its test."""

from __future__ import annotations

import torch

from upo_fast.policy import UnmaskingPolicy, UnmaskingPolicyConfig
from upo_fast.training.rollout import Trajectories
from upo_fast.training.update import UpdateOptions, update_policy

S, B, W, D, K = 6, 8, 7, 16, 4

# name -> UpdateOptions fields (+ rows; SGD lr 0.5, no gradient clipping: the parameters after one inner step are the
# parameters before minus 0.5 * gradient, so equal parameters mean equal gradients)
CASES = {
    "maxconf_ce": dict(reference="max_confidence", beta=0.05, inner_iters=1),
    "maxconf_ce_two_inner": dict(reference="max_confidence", beta=0.05, inner_iters=2),
    "softmax_kl_forced_moves": dict(reference="softmax_confidence", beta=0.1, inner_iters=2, certain_keep=0.5,
                                    certain_threshold=0.6),
    "topk_kl_clip_high": dict(reference="topk", beta=0.1, topk=3, clip_eps_high=0.28, inner_iters=2),
    "softmax_sequence_kl": dict(reference="softmax_confidence", beta=0.1, kl_mode="sequence", inner_iters=2),
    "rows_small_chunks": dict(reference="max_confidence", beta=0.05, inner_iters=2, chunk_states=10, rows="half"),
    "no_regularizer": dict(reference="softmax_confidence", beta=0.0, inner_iters=2),
}


def synthetic_batch() -> tuple[Trajectories, torch.Tensor]:
    """Recorded-looking rollouts: rows finish at different steps, candidates shrink, chosen is a candidate."""
    g = torch.Generator().manual_seed(0)
    cand = torch.rand(S, B, W, generator=g) < 0.7
    cand[..., 0] = True
    active = torch.ones(S, B, dtype=torch.bool)
    active[3:, :2] = False
    active[5:, 5] = False
    scores = torch.randn(S, B, W, generator=g).masked_fill(~cand, float("-inf"))
    gumbel = -torch.log(-torch.log(torch.rand(S, B, W, generator=g).clamp(1e-6, 1 - 1e-6)))
    chosen = (scores / 0.8 + gumbel).argmax(-1)
    probs = torch.rand(S, B, W, K, generator=g).sort(-1, descending=True).values
    traj = Trajectories(hidden=torch.randn(S, B, W, D, generator=g), topk_probs=probs, confidence=probs[..., 0].clone(),
                        ref_logsumexp=torch.randn(S, B, W, generator=g), candidates=cand, chosen=chosen,
                        behavior_logp=torch.log_softmax(scores / 0.8, -1).gather(-1, chosen[..., None]).squeeze(-1),
                        active=active, token=torch.zeros(S, B, W, dtype=torch.long))
    return traj, torch.randn(B, generator=g)


def make_policy() -> UnmaskingPolicy:
    torch.manual_seed(3)
    config = UnmaskingPolicyConfig(mdm_family="tiny_mdm", mdm_hidden_size=D, feature_topk=K, num_heads=2,
                                   intermediate_size=32, mlp_hidden=8, anchor="confidence")
    policy = UnmaskingPolicy(config)
    with torch.no_grad():  # the anchor's zero-initialized last layer would hide the head's gradients
        policy.head[-1].weight.normal_(0, 0.5)
    return policy


def run_case(name: str, policy, traj: Trajectories, adv: torch.Tensor) -> dict:
    options = dict(CASES[name])
    rows = None
    if options.pop("rows", None) == "half":
        rows = torch.arange(B) % 2 == 0
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    options = UpdateOptions(position_temperature=0.8, grad_clip=0.0, **options)
    metrics = update_policy(policy, opt, traj, adv, options, seed=5, rows=rows)
    return {k: v for k, v in metrics.items() if k in ("loss", "policy_loss", "clip_ratio", "divergence",
                                                       "ratio_mean", "grad_norm", "update_steps",
                                                       "update_states_used")}
