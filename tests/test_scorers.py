"""The scorer registry (``upo_fast.sampling.scorers``): what each scorer declares, and the options of a sampling call
(``upo_fast.sampling.loop.SamplingOptions``) checked once."""

from dataclasses import FrozenInstanceError
from types import SimpleNamespace

import pytest
import torch

from upo_fast.sampling.cuda_graphs import unsupported
from upo_fast.sampling.loop import SamplingOptions
from upo_fast.sampling.scorers import HEURISTICS, SCORERS, Scorer, get_scorer, independent_transfer


def test_each_scorer_is_registered_under_its_own_name():
    assert all(isinstance(s, Scorer) and s.name == name for name, s in SCORERS.items())
    assert HEURISTICS == tuple(name for name in SCORERS if name != "policy")


def test_what_the_scorers_declare():
    needs = {name: (s.needs_policy, s.needs_hidden, s.needs_ref, s.ranks) for name, s in SCORERS.items()}
    assert needs["policy"] == (True, True, False, True)
    assert needs["softmax_confidence"] == (False, False, True, True)
    assert needs["origin"] == (False, False, False, False)
    assert needs["max_confidence"] == (False, False, False, True)
    assert [name for name, s in SCORERS.items() if s.no_capture] == ["origin"]
    assert get_scorer("low_confidence") is SCORERS["max_confidence"]
    with pytest.raises(ValueError, match="unknown scorer 'best'"):
        get_scorer("best")


def test_a_scorer_that_needs_a_policy_checks_it():
    seen = []
    policy = SimpleNamespace(check_compatible=seen.append)
    SCORERS["policy"].check_policy(policy, "mdm")
    SCORERS["margin"].check_policy(None, "mdm")  # needs none: nothing checked
    assert seen == ["mdm"]
    with pytest.raises(ValueError, match=r"scorer='policy' needs policy=<a trained unmasking policy>"):
        SCORERS["policy"].check_policy(None, "mdm")


def test_origin_draws_one_uniform_per_position_from_the_generator():
    candidates = torch.tensor([[True, False, True, True], [False, True, True, False]])
    select = independent_transfer(candidates, 0.5, torch.Generator().manual_seed(3))
    draw = torch.rand(candidates.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(select, candidates & (draw < 0.5))


def test_cuda_graphs_ask_the_scorer_why_not():
    def loop(scorer):
        return SimpleNamespace(x=SimpleNamespace(device=torch.device("cuda")), kernels=True, recorder=None,
                               scorer=SCORERS[scorer])

    assert unsupported(loop("origin")) == "the origin rule draws from a torch generator"
    assert unsupported(loop("max_confidence")) is None


def test_sampling_options_are_checked_once_and_frozen():
    options = SamplingOptions(scorer="low_confidence", suppress_tokens=[3, 4], factor=1.0)
    assert options.scorer == "max_confidence" and options.suppress_tokens == (3, 4) and options.rule.ends_early
    assert SamplingOptions().suppress_tokens == () and not SamplingOptions().rule.ends_early
    with pytest.raises(FrozenInstanceError):
        options.temperature = 1.0
    for bad, message in [(dict(temperature=-1), "temperature must be"), (dict(topk=0), "topk must be an integer"),
                         (dict(threshold=0), r"threshold must be a finite number in \(0, 1\]"),
                         (dict(factor=0), "factor must be"), (dict(cfg_scale=float("nan")), "cfg_scale"),
                         (dict(position_temperature=-1), "position_temperature"),
                         (dict(scorer="best"), "unknown scorer 'best'")]:
        with pytest.raises(ValueError, match=message):
            SamplingOptions(**bad)


def test_a_scorer_with_its_own_selection_has_no_scores():
    with pytest.raises(TypeError, match="'origin' ranks nothing"):
        SCORERS["origin"](None, None, None)
