"""The update's settings are one frozen UpdateOptions, checked once when built (a ValueError names the field), and
the trainer's are built from its config by TrainConfig.update_options()."""

import dataclasses

import pytest
import torch

from upo_fast.training.config import TrainConfig
from upo_fast.training.references import REFERENCES
from upo_fast.training.update import UpdateOptions, update_policy


def test_train_config_builds_the_update_s_options():
    cfg = TrainConfig(reference="topk", beta=0.05, position_temperature=0.5, clip_eps=0.1, clip_eps_high=0.3,
                      inner_iters=3, grad_clip=0.5, kl_mode="sequence", topk=4, update_chunk=64,
                      certain_threshold=0.9, certain_keep=0.5)
    options = cfg.update_options()
    assert options == UpdateOptions(reference=REFERENCES["topk"], beta=0.05, position_temperature=0.5, clip_eps=0.1,
                                    clip_eps_high=0.3, inner_iters=3, grad_clip=0.5, kl_mode="sequence", topk=4,
                                    chunk_states=64, certain_threshold=0.9, certain_keep=0.5)
    assert options.reference is REFERENCES["topk"]  # the name is resolved once
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.beta = 0.0
    assert dataclasses.replace(options, certain_keep=1.0).certain_keep == 1.0  # re-checked, reference kept


@pytest.mark.parametrize("field, value, match", [
    ("reference", "margin", "reference must be one of"), ("beta", -0.1, "beta must be >= 0"),
    ("beta", float("nan"), "beta must be a finite number"), ("position_temperature", 0.0, "position_temperature"),
    ("clip_eps", 1.5, r"clip_eps must be in \(0, 1\)"), ("clip_eps_high", 0.0, "clip_eps_high"),
    ("inner_iters", 0, "inner_iters must be an int >= 1"), ("grad_clip", -1.0, "grad_clip"),
    ("kl_mode", "exactly", "kl_mode must be one of exact, sequence"), ("topk", 0, "topk"),
    ("chunk_states", 0, "chunk_states"), ("certain_threshold", 1.5, "certain_threshold"),
    ("certain_keep", 0.0, "certain_keep"),
])
def test_bad_options_name_the_field(field, value, match):
    fields = dict(reference="softmax_confidence", beta=0.1, position_temperature=1.0)
    with pytest.raises(ValueError, match=match):
        UpdateOptions(**{**fields, field: value})


def test_the_sequence_kl_needs_a_reference_with_a_finite_log_ratio():
    with pytest.raises(ValueError, match="kl_mode must be 'exact' with the max_confidence reference"):
        UpdateOptions(reference="max_confidence", beta=0.1, position_temperature=1.0, kl_mode="sequence")
    UpdateOptions(reference="max_confidence", beta=0.0, position_temperature=1.0, kl_mode="sequence")  # no term


def test_update_policy_takes_the_options_object():
    with pytest.raises(ValueError, match="options must be an UpdateOptions"):
        update_policy(None, None, None, torch.zeros(1), dict(reference="topk"), seed=0)
