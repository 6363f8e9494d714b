"""The GRPO update gives the loss, metrics and gradients it gave before it was rewritten as one batched
computation: ``tests/fixtures/grpo_update`` holds what ``update_policy`` produced at commit 63aac08 on fixed
synthetic rollouts (SGD, no clipping, so equal parameters after the update mean equal gradients)."""

import json
import os
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


def _compiled_matches_eager(expected, backend: str):
    from upo_fast.training.trainer import compiled

    tensors, metrics = expected
    traj = Trajectories(**{name: tensors[f"traj.{name}"] for name in Trajectories._fields})
    case = "softmax_kl_forced_moves"
    policy = make_policy()
    got = run_case(case, compiled(policy, backend), traj, tensors["advantages"])
    assert got["loss"] == pytest.approx(metrics[case]["loss"], rel=1e-5, abs=1e-6)
    for name, value in policy.state_dict().items():
        torch.testing.assert_close(value, tensors[f"{case}.{name}"], rtol=1e-4, atol=1e-5, msg=name)


def test_a_compiled_policy_gives_the_eager_loss_and_gradients(expected):
    """torch.compile's tracing and autograd (aot_eager: no code generation, seconds) on the recorded update."""
    _compiled_matches_eager(expected, "aot_eager")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("UPO_COMPILE_FULL"), reason="inductor compiles for ~40 s on 2 cores: set "
                    "UPO_COMPILE_FULL=1 (the GPU check runs it)")
def test_an_inductor_compiled_policy_gives_the_eager_loss_and_gradients(expected):
    """The same with generated code (inductor: about a minute of compiling on the CPU)."""
    _compiled_matches_eager(expected, "inductor")


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, caplog):
    import torch._dynamo

    from upo_fast.training.trainer import CompiledPolicy

    policy = make_policy()
    wrapped = CompiledPolicy(policy, "aot_eager")

    def broken(*args, **kwargs):
        raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no compiler here"), None)

    object.__setattr__(wrapped, "_compiled", broken)
    traj, _ = __import__("update_cases").synthetic_batch()
    inputs = traj.policy_inputs((0,))
    with caplog.at_level("WARNING"):
        assert torch.equal(wrapped(**inputs), policy(**inputs))
    assert "runs eagerly" in caplog.text and wrapped._compiled is None
    assert wrapped.config is policy.config and list(wrapped.parameters()) == list(policy.parameters())
