"""Policy pretraining (``upo_fast.training.imitation``): the oracle and reference losses against hand computations,
which states a rollout contributes to the DAgger buffer, and the config's errors."""

import math

import pytest
import torch
from torch import nn

from upo_fast.training.imitation import ImitationConfig, StateBuffer, imitation_loss, select_states
from upo_fast.training.rollout import Trajectories


class FixedScores(nn.Module):
    """A stand-in policy whose scores are a parameter, so the loss's gradient can be read directly."""

    def __init__(self, scores):
        super().__init__()
        self.scores = nn.Parameter(torch.tensor(scores, dtype=torch.float32))

    def forward(self, hidden, stats=None, candidates=None, *, topk_probs=None):  # UnmaskingPolicy's signature
        return self.scores


def batch_of(confidence, candidates, correct):
    n, w = len(confidence), len(confidence[0])
    confidence = torch.tensor(confidence)
    return dict(hidden=torch.zeros(n, w, 2, dtype=torch.bfloat16), topk_probs=confidence[..., None].repeat(1, 1, 8),
                confidence=confidence, ref_logsumexp=torch.zeros(n, w), candidates=torch.tensor(candidates),
                correct=torch.tensor(correct))


def test_oracle_loss_is_minus_log_mass_on_correct_candidates():
    scores = [[1.0, 0.0, 2.0, -1.0], [0.5, 0.2, 0.0, 0.0], [0.0, 1.0, 0.0, 3.0]]
    batch = batch_of(confidence=[[0.9, 0.1, 0.5, 0.2]] * 3,
                     candidates=[[True, True, True, False], [True, True, False, False], [True, True, True, True]],
                     correct=[[True, False, True, True], [False, False, True, False], [False, False, False, True]])
    policy = FixedScores(scores)
    loss = imitation_loss(policy, batch, ImitationConfig(target="oracle", position_temperature=0.5))
    g0 = torch.softmax(torch.tensor(scores[0][:3]) / 0.5, 0)
    g2 = torch.softmax(torch.tensor(scores[2]) / 0.5, 0)
    expected = (-math.log(g0[0] + g0[2]) - math.log(g2[3])) / 2  # row 1 has no correct candidate: weight 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    grad = policy.scores.grad
    assert torch.isfinite(grad).all() and grad[1].abs().max() == 0 and grad[0, 3] == 0  # not a candidate


def test_reranker_loss_ignores_correct_cells_outside_its_top_k():
    batch = batch_of(confidence=[[0.9, 0.8, 0.1]], candidates=[[True, True, True]], correct=[[False, True, True]])
    loss = imitation_loss(FixedScores([[0.0, 0.0, 5.0]]), batch,
                          ImitationConfig(target="oracle", candidate_topk=2))
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-5)  # only cells 0 and 1 compete; cell 1 is right


def test_reference_loss_is_cross_entropy_to_max_confidence():
    batch = batch_of(confidence=[[0.2, 0.7, 0.1]], candidates=[[True, True, True]], correct=[[True, True, True]])
    loss = imitation_loss(FixedScores([[1.0, 0.0, 0.0]]), batch, ImitationConfig(reference="max_confidence"))
    assert loss.item() == pytest.approx(-torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), 0)[1].item(), rel=1e-5)


def trajectories(chosen, token, candidates, confidence):
    S, B, W = len(chosen), len(chosen[0]), len(token[0][0])
    return Trajectories(hidden=torch.zeros(S, B, W, 2), topk_probs=torch.zeros(S, B, W, 8),
                        confidence=torch.tensor(confidence), ref_logsumexp=torch.zeros(S, B, W),
                        candidates=torch.tensor(candidates), chosen=torch.tensor(chosen),
                        behavior_logp=torch.zeros(S, B), active=torch.ones(S, B, dtype=torch.bool),
                        token=torch.tensor(token))


def test_oracle_states_stop_at_the_first_wrong_commit():
    solution = torch.tensor([[1, 2, 3], [1, 2, 3]])
    # row 0 commits cell 0 (right), cell 1 (wrong: token 9), cell 2; row 1 commits cells 2, 1, 0, all right
    token = [[[1, 9, 3], [1, 2, 3]]] * 3
    candidates = [[[True, True, True], [True, True, True]], [[False, True, True], [True, True, False]],
                  [[False, False, True], [True, False, False]]]
    traj = trajectories(chosen=[[0, 2], [1, 1], [2, 0]], token=token, candidates=candidates,
                        confidence=[[[0.9, 0.5, 0.4]] * 2] * 3)
    gen = torch.Generator().manual_seed(0)
    index, correct, failed = select_states(traj, solution, ImitationConfig(target="oracle", keep_rate=1.0), gen)
    assert failed.tolist() == [True, False]
    assert sorted(zip(index[0].tolist(), index[1].tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)]
    # keep_rate 0: only contested states (a wrong candidate among the top) and the wrong commit remain
    index, _, _ = select_states(traj, solution, ImitationConfig(target="oracle", keep_rate=0.0), gen)
    assert sorted(zip(index[0].tolist(), index[1].tolist())) == [(0, 0), (1, 0)]
    buffer = StateBuffer()
    buffer.add(traj, index, correct)
    sample = buffer.sample(5, gen)
    assert len(buffer) == 2 and sample["hidden"].dtype == torch.bfloat16 and sample["correct"].shape == (5, 3)


@pytest.mark.parametrize("field,value", [("target", "best"), ("rounds", -1), ("keep_rate", 1.5),
                                         ("candidate_topk", 0), ("reference", "margin"), ("puzzles_per_round", 0),
                                         ("extra_blocks", -1), ("init", "no/such/policy"),
                                         # the policy's init settings (PolicyInit), checked as the trainer's are
                                         ("block_init", "cube"), ("policy_body", "mlp"), ("mlp_hidden", 0),
                                         ("policy_dim", 0), ("task", "chess"), ("topk", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ImitationConfig(**{field: value}).validate()
