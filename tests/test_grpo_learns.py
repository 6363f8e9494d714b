"""GRPO learns: on a stand-in MDM whose most confident position is a trap, rollouts + group advantages +
``update_policy`` (beta > 0, max-confidence reference) raise the reward far above the reference's, and the same
loop with a broken advantage or a flipped policy-gradient sign does not.

The trap (``TrapMDM``): six masked positions in three pairs (key, trap). A key always predicts the token KEY with
probability 0.6. A trap whose key is still masked predicts WRONG with probability 0.9; once its key is filled it
predicts RIGHT with probability 0.95. The reward of a row is the fraction of its traps that hold RIGHT, i.e. the
fraction of pairs whose key was unmasked before its trap. Max-confidence unmasks every trap first (0.9 > 0.6), so
the reference scores 0 by construction, while "keys first" scores 1.

The policy starts as the trainer builds it (``make_policy``, init="anchor": score = confidence / anchor_tau + a
zero correction), so its greedy order *is* the reference's; sampled at position temperature 1 it explores keys
first now and then. The regularizer (cross-entropy to the max-confidence reference, beta > 0) pulls toward the
trap, so only a working policy gradient can pull away from it.

Why the test can fail: with the advantages negated or zeroed, or the sign of the policy-gradient term flipped
(``grpo_loss`` monkeypatched), the update reinforces the trap (or only the regularizer acts) and the reward stays
at or below where it started; the parametrized broken cases assert exactly that, so a learning case that passes
is not an accident of this setting.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import upo_fast.training.update as update_module
from upo_fast.training.config import TrainConfig
from upo_fast.training.losses import group_advantages
from upo_fast.training.policy_init import make_policy
from upo_fast.training.rollout import rollout
from upo_fast.training.update import UpdateOptions, update_policy

KEY, WRONG, RIGHT, MASK = 1, 2, 3, 4  # token 0 is never predicted
V, D = 5, 16
KEYS, TRAPS = [0, 2, 4], [1, 3, 5]  # pair i: key KEYS[i], trap TRAPS[i]
L = 6
PROMPTS, GROUP = 4, 8  # rows per rollout batch: PROMPTS * GROUP, every prompt fully masked
STEPS, LR, BETA, ANCHOR_TAU, INNER = 12, 5e-3, 0.01, 0.25, 2


def _probs(*pairs) -> torch.Tensor:
    p = torch.full((V,), 1e-9)
    for token, prob in pairs:
        p[token] = prob
    return p


class TrapMDM(nn.Module):
    """A generic-family MDM (``.logits``, ``config.mask_token_id``) whose predictions follow the trap rule of the
    module docstring. Its hidden state (token + position embeddings, fixed) passes through ``model.layers[0]``, an
    identity, so the adapter's hook captures it as the policy's input."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="trap_mdm", mask_token_id=MASK, vocab_size=V, hidden_size=D)
        g = torch.Generator().manual_seed(0)
        self.tokens = nn.Embedding(V, D).requires_grad_(False)
        self.positions = nn.Embedding(L, D).requires_grad_(False)
        with torch.no_grad():
            self.tokens.weight.copy_(torch.randn(V, D, generator=g))
            self.positions.weight.copy_(torch.randn(L, D, generator=g))
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Identity()])
        self.register_buffer("key_probs", _probs((KEY, 0.6), (WRONG, 0.2), (RIGHT, 0.2)))
        self.register_buffer("trap_blind", _probs((KEY, 0.05), (WRONG, 0.9), (RIGHT, 0.05)))
        self.register_buffer("trap_seeing", _probs((KEY, 0.025), (WRONG, 0.025), (RIGHT, 0.95)))

    def forward(self, input_ids, attention_mask=None, **_):
        hidden = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1], device=input_ids.device))
        self.model.layers[0](hidden)  # the last block's input: what the unmasking policy reads
        key_masked = (input_ids[:, KEYS] == MASK)[..., None]  # [B, pairs, 1]
        probs = torch.empty(*input_ids.shape, V)
        probs[:, KEYS] = self.key_probs
        probs[:, TRAPS] = torch.where(key_masked, self.trap_blind, self.trap_seeing)
        return SimpleNamespace(logits=probs.log())


def reward(filled: torch.Tensor) -> torch.Tensor:
    """[B] fraction of the traps that hold RIGHT (their key came first)."""
    return (filled[:, TRAPS] == RIGHT).float().mean(1)


def _flipped_pg_sign(grpo_loss):
    """``grpo_loss`` with the policy-gradient term's sign flipped (the regularizer kept): loss - 2 * pg."""
    signature = inspect.signature(grpo_loss)

    def flipped(*args, **kwargs):
        loss, metrics = grpo_loss(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.arguments.update(divergence=None, beta=0.0)
        pg_only, _ = grpo_loss(*bound.args, **bound.kwargs)
        return loss - 2 * pg_only, metrics

    return flipped


BREAKS = {
    "learns": lambda adv: adv,
    "negated_advantages": lambda adv: -adv,
    "zeroed_advantages": torch.zeros_like,
    "flipped_pg_sign": lambda adv: adv,  # + grpo_loss monkeypatched below
}


def train(case: str) -> dict:
    """STEPS GRPO steps from the anchored policy; returns the sampled mean reward per step and the greedy rewards
    of the reference and of the policy before and after."""
    mdm = TrapMDM()
    torch.manual_seed(0)
    cfg = TrainConfig(init="anchor", anchor_tau=ANCHOR_TAU, block_init="fresh", mlp_hidden=16,
                      reference="max_confidence", beta=BETA)
    policy = make_policy(cfg, mdm).eval()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    options = UpdateOptions(reference="max_confidence", beta=BETA, position_temperature=1.0, inner_iters=INNER)
    x = torch.full((PROMPTS * GROUP, L), MASK)

    def greedy(**options) -> float:
        return float(reward(rollout(mdm, x[:1], **options)[0]).mean())

    result = dict(reference=greedy(scorer="max_confidence"), greedy_before=greedy(policy=policy,
                                                                                  position_temperature=0.0))
    sampled = []
    for step in range(STEPS):
        filled, traj = rollout(mdm, x, policy=policy, position_temperature=1.0,
                               generator=torch.Generator().manual_seed(1000 + step))
        rewards = reward(filled).view(PROMPTS, GROUP)
        sampled.append(float(rewards.mean()))
        advantages = BREAKS[case](group_advantages(rewards).flatten())
        update_policy(policy, optimizer, traj, advantages, options, seed=step)
    result.update(sampled=sampled, greedy_after=greedy(policy=policy, position_temperature=0.0))
    return result


def test_the_trap_is_real():
    """Max-confidence (and the anchored policy, greedily) falls into every trap; keys first avoids them all."""
    mdm = TrapMDM()
    x = torch.full((1, L), MASK)
    assert float(reward(rollout(mdm, x, scorer="max_confidence")[0])) == 0.0
    keys_first = x.clone()
    keys_first[:, KEYS] = KEY  # what the MDM commits at a key
    filled, _ = rollout(mdm, keys_first, scorer="max_confidence")
    assert float(reward(filled)) == 1.0


@pytest.mark.parametrize("case", list(BREAKS))
def test_grpo_raises_the_reward_above_the_trap_reference(case, monkeypatch):
    if case == "flipped_pg_sign":
        monkeypatch.setattr(update_module, "grpo_loss", _flipped_pg_sign(update_module.grpo_loss))
    r = train(case)
    start, end = sum(r["sampled"][:3]) / 3, sum(r["sampled"][-3:]) / 3
    assert r["reference"] == 0.0 and r["greedy_before"] == r["reference"]  # anchored: starts at the reference
    if case == "learns":
        assert r["greedy_after"] >= 2 / 3, r  # greedy: at least two of the three traps avoided
        assert end >= start + 0.4 and end >= r["reference"] + 0.6, r
    else:  # a broken update must not learn the way out of the trap
        assert r["greedy_after"] == r["reference"], r
        assert end <= start + 0.05, r
