"""Several processes (torchrun-style, gloo on the CPU) take exactly the update one process takes on all the rows:
gradients are all-reduced and the token mean is normalized by the global step count."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from update_cases import B, make_policy, synthetic_batch  # the synthetic rollouts of the update-equivalence test

from upo_fast.training.distributed import ProcessGroup
from upo_fast.training.rollout import Trajectories
from upo_fast.training.update import UpdateOptions, update_policy


def run_update(policy, traj, adv, group):
    # SGD: Adam's first steps are ~lr * sign(g), which turns float noise in a ~0 gradient into a full step
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    options = UpdateOptions(reference="softmax_confidence", beta=0.1, position_temperature=0.8, inner_iters=2,
                            chunk_states=8)
    return update_policy(policy, opt, traj, adv, options, seed=0, group=group)


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    traj, adv = synthetic_batch()
    rows = slice(rank * B // world, (rank + 1) * B // world)  # this process's share of the rows
    shard = Trajectories(*(t[:, rows] for t in traj))
    policy = make_policy()
    metrics = run_update(policy, shard, adv[rows], ProcessGroup(rank, world))
    if rank == 0:
        torch.save({"state": policy.state_dict(), "metrics": metrics}, out_file)
    dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    traj, adv = synthetic_batch()
    single = make_policy()
    want = run_update(single, traj, adv, ProcessGroup())
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "rank0.pt")), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt")
    for name, value in single.state_dict().items():
        torch.testing.assert_close(got["state"][name], value, atol=1e-6, rtol=1e-5)
    assert got["metrics"]["update_steps"] == want["update_steps"] == int(traj.active.sum())
    assert abs(got["metrics"]["loss"] - want["loss"]) < 1e-5
    assert any(not torch.equal(value, make_policy().state_dict()[name]) for name, value in single.state_dict().items())


def _any_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    group = ProcessGroup(rank, world)
    agreed = [group.any(rank == 0), group.any(False), group.any(True)]
    torch.save(agreed, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_any_is_the_same_decision_on_every_process(tmp_path):
    # a time limit read from each process's own clock may say "stop" on one process only: all must stop together
    out = str(tmp_path / "agreed")
    mp.spawn(_any_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{rank}") for rank in range(2)] == [[True, False, True]] * 2
    assert ProcessGroup().any(True) and not ProcessGroup().any(False)
