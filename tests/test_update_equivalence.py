"""The GRPO update gives the loss, metrics and gradients it gave before it was rewritten as one batched
computation: ``tests/fixtures/grpo_update`` holds what ``update_policy`` produced at commit 63aac08 on fixed
synthetic rollouts (SGD, no clipping, so equal parameters after the update mean equal gradients)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from update_cases import CASES, make_policy, run_case

from upo_fast.training.rollout import Trajectories

FIXTURE = Path(__file__).parent / "fixtures" / "grpo_update"


@pytest.fixture(scope="module")
def expected():
    return load_file(str(FIXTURE / "expected.safetensors")), json.loads((FIXTURE / "expected.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_matches_the_recorded_one(expected, case):
    tensors, metrics = expected
    traj = Trajectories(**{name: tensors[f"traj.{name}"] for name in Trajectories._fields})
    policy = make_policy()
    got = run_case(case, policy, traj, tensors["advantages"])
    for name, want in metrics[case].items():
        assert got[name] == pytest.approx(want, rel=1e-5, abs=1e-6), name
    for name, value in policy.state_dict().items():
        torch.testing.assert_close(value, tensors[f"{case}.{name}"], rtol=1e-5, atol=1e-6, msg=f"{case}: {name}")
