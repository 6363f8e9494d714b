"""Rollouts with recording (upo_fast/training/rollout.py): the recorded behavior log-prob is the log-probability of
the distribution that actually sampled the position, the buffers hold the policy's inputs, every mask is filled."""

import math

import pytest
import torch

from upo_fast.models import TinyMDM, TinyMDMConfig
from upo_fast.policy import UnmaskingPolicy, UnmaskingPolicyConfig
from upo_fast.training.losses import step_log_probs
from upo_fast.training.rollout import TrajectoryRecorder, rollout

MASK = 5


@pytest.fixture(scope="module")
def mdm():
    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=6, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, position_embedding="grid", grid_size=4, mask_token_id=MASK)
    return TinyMDM(config).eval()


def make_policy(mdm, **overrides):
    torch.manual_seed(1)
    fields = dict(num_heads=4, intermediate_size=64, mlp_hidden=16)
    fields.update(overrides)
    return UnmaskingPolicy.for_mdm(mdm, **fields).eval()


def puzzles(batch, seed=0, p=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 5, (batch, 16), generator=g)
    return x.masked_fill(torch.rand(batch, 16, generator=g) < p, MASK)


def test_records_every_step_and_the_recorded_inputs_reproduce_the_behavior_logp(mdm):
    policy = make_policy(mdm)
    x = puzzles(5)
    g = torch.Generator().manual_seed(3)
    filled, traj = rollout(mdm, x, policy=policy, position_temperature=0.7, generator=g)
    masks = (x == MASK).sum(1)
    assert not (filled == MASK).any() and torch.equal(filled[x != MASK], x[x != MASK])
    assert traj.hidden.shape[:3] == (int(masks.max()), 5, 16) and traj.hidden.shape[-1] == 32
    assert torch.equal(traj.active.sum(0), masks)  # one position per step until the row is done
    s, b = traj.active.nonzero(as_tuple=True)
    chosen = traj.chosen[s, b]
    assert traj.candidates[s, b].gather(1, chosen[:, None]).all()  # the chosen position was a candidate
    # the positions chosen in a row are distinct and are exactly its masks
    for row in range(5):
        picks = traj.chosen[traj.active[:, row], row]
        assert sorted(picks.tolist()) == (x[row] == MASK).nonzero().flatten().tolist()
    with torch.no_grad():
        scores = policy(**traj.policy_inputs((s, b)))
    recomputed = step_log_probs(scores, traj.candidates[s, b], chosen, 0.7)
    torch.testing.assert_close(traj.behavior_logp[s, b], recomputed, atol=1e-5, rtol=1e-5)
    assert (traj.behavior_logp[s, b] < 0).any()


def test_sampled_positions_follow_the_recorded_distribution(mdm):
    """Same state in every row: the first step's choices over 3000 rows match exp(behavior_logp) (chi-square)."""
    policy = make_policy(mdm, anchor="confidence", anchor_tau=0.5)
    x = puzzles(1, seed=4, p=0.3).expand(3000, -1).clone()
    filled, traj = rollout(mdm, x, policy=policy, position_temperature=1.0,
                           generator=torch.Generator().manual_seed(0))
    first = traj.chosen[0]
    masked = (x[0] == MASK).nonzero().flatten()
    assert len(masked) >= 3
    counts = torch.stack([(first == p).sum() for p in masked]).double()
    probs = torch.zeros(len(masked), dtype=torch.float64)
    for i, p in enumerate(masked):  # each row's recorded log-prob of its own choice gives the distribution
        rows = (first == p).nonzero().flatten()
        probs[i] = traj.behavior_logp[0, rows[0]].exp() if len(rows) else 0.0
    assert abs(probs.sum() - 1) < 1e-4, "the recorded log-probs must cover a full distribution"
    expected = probs * first.numel()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20.5 + 2 * math.sqrt(len(masked))  # generous: chi2(dof <= 8) at p ~ 1e-3
    assert probs.max() < 0.99  # really a stochastic choice


def test_top_k_policy_chooses_among_the_most_confident(mdm):
    policy = make_policy(mdm, candidate_topk=2)
    x = puzzles(4, seed=2)
    _, traj = rollout(mdm, x, policy=policy, generator=torch.Generator().manual_seed(0))
    assert (traj.candidates.sum(-1) <= 2).all()
    s, b = traj.active.nonzero(as_tuple=True)
    conf = traj.confidence[s, b]
    masked_conf = torch.where(traj.candidates[s, b], conf, torch.full_like(conf, -1.0))
    assert (masked_conf.max(-1).values >= 0).all()


def test_recorder_refuses_several_positions_per_step(mdm):
    x = puzzles(2)
    recorder = TrajectoryRecorder(16)
    from upo_fast.sampling.loop import unmask

    unmask(mdm, x, steps=2, recorder=recorder)
    with pytest.raises(ValueError, match="several positions"):
        recorder.trajectories()
    with pytest.raises(ValueError, match="max_steps"):
        TrajectoryRecorder(0)


def test_reference_rollouts_record_without_a_policy(mdm):
    x = puzzles(3)
    filled, traj = rollout(mdm, x, scorer="max_confidence")
    assert not (filled == MASK).any()
    assert (traj.behavior_logp == 0).all()  # deterministic choices
    s, b = traj.active.nonzero(as_tuple=True)
    conf = torch.where(traj.candidates[s, b], traj.confidence[s, b], torch.full_like(traj.confidence[s, b], -1))
    assert torch.equal(conf.argmax(-1), traj.chosen[s, b])  # max-confidence picked the most confident


def test_sampler_refuses_a_policy_trained_beside_another_mdm(mdm):
    from upo_fast.sampling.loop import unmask

    other = UnmaskingPolicy(UnmaskingPolicyConfig(mdm_family="tiny_mdm", mdm_hidden_size=48, num_heads=4))
    with pytest.raises(ValueError, match="hidden size"):
        unmask(mdm, puzzles(1), scorer="policy", policy=other)
