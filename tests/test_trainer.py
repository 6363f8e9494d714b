"""The UPO trainer end to end on a tiny 4x4 Sudoku MDM: it runs, logs, checkpoints atomically, resumes to the same
parameters, skips non-finite updates, refuses bad configurations; and N-process updates equal one process."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from upo_fast.training import trainer as trainer_module
from upo_fast.training.config import TrainConfig
from upo_fast.training.trainer import train


@pytest.fixture(scope="module")
def mdm_dir(sudoku4_mdm_dir):
    return sudoku4_mdm_dir


def small_config(mdm_dir, out, **overrides):
    fields = dict(task="sudoku4", model=mdm_dir, out_dir=str(out), steps=4, prompts_per_step=2, group_size=3,
                  mlp_hidden=16, eval_every=2, eval_puzzles=4, checkpoint_every=1, certain_keep=1.0,
                  position_temperature=1.0, reward="cells", beta=0.1, lr=1e-2, tensorboard=False,
                  drop_zero_std=False)
    fields.update(overrides)
    return TrainConfig(**fields)


def weights(out):
    return load_file(str(out / "checkpoint-last" / "model.safetensors"))


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_logs_checkpoints_and_moves_the_policy(mdm_dir, tmp_path):
    summary = train(small_config(mdm_dir, tmp_path), progress=False)
    assert summary["last_step"] == 4 and not summary["stopped_early"]
    log = records(tmp_path)
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]
    assert "val_solved" in log[0] and "val_solved" in log[2] and "val_solved" in log[4]
    for r in log[1:]:
        assert 0 <= r["reward_mean"] <= 1 and r["skipped_nonfinite"] == 0 and math.isfinite(r["loss"])
        assert r["ms_rollout"] > 0 and r["update_steps"] > 0
    assert len(list(tmp_path.glob("ckpt-*"))) == 2  # keep_checkpoints
    assert (tmp_path / "best" / "config.json").exists()
    start = TrainConfig(**{**small_config(mdm_dir, tmp_path).to_dict()})
    assert start.steps == 4
    assert any(r["grad_norm"] > 0 for r in log[1:])


def test_a_compiled_policy_trains_like_the_eager_one(mdm_dir, tmp_path):
    """compile_backend: the policy behind torch.compile (aot_eager here: traced and differentiated in seconds)
    takes the eager run's steps; the saved policy is the plain one."""
    train(small_config(mdm_dir, tmp_path / "eager", steps=2, eval_every=0), progress=False)
    train(small_config(mdm_dir, tmp_path / "compiled", steps=2, eval_every=0, compile_backend="aot_eager"),
          progress=False)
    eager, compiled = records(tmp_path / "eager"), records(tmp_path / "compiled")
    for a, b in zip(eager, compiled, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6) and b["ms_step"] > 0
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(mdm_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(small_config(mdm_dir, straight), progress=False)
    first = train(small_config(mdm_dir, resumed, stop_at_step=2), progress=False)
    assert first["stopped_early"] and first["last_step"] == 2
    second = train(small_config(mdm_dir, resumed), progress=False)
    assert second["resumed_from_step"] == 2
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("ms_")} for r in rs]  # noqa: E731
    assert strip(records(straight)) == strip(records(resumed))


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(mdm_dir, tmp_path):
    train(small_config(mdm_dir, tmp_path, steps=3), progress=False)
    newest = (tmp_path / "checkpoint-last").resolve()
    (newest / "model.safetensors").write_bytes(b"half-written")
    with pytest.warns(UserWarning, match="falling back"):
        summary = train(small_config(mdm_dir, tmp_path, steps=3), progress=False)
    assert summary["resumed_from_step"] == 2 and summary["last_step"] == 3


def test_non_finite_rewards_skip_the_update(mdm_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "rewards_for", lambda *a, **k: torch.full((6,), float("nan")).numpy())
    train(small_config(mdm_dir, tmp_path, steps=1, eval_every=0, init="fresh"), progress=False)
    log = records(tmp_path)
    assert log[-1]["skipped"] == "non-finite rewards" and "loss" not in log[-1]


@pytest.mark.parametrize("reference,kl_mode", [("softmax_confidence", "exact"), ("topk", "sequence"),
                                               ("max_confidence", "exact")])
def test_every_reference_trains(mdm_dir, tmp_path, reference, kl_mode):
    cfg = small_config(mdm_dir, tmp_path, steps=1, eval_every=0, reference=reference, kl_mode=kl_mode, topk=2,
                       init="fresh", inner_iters=2)
    train(cfg, progress=False)
    r = records(tmp_path)[-1]
    assert math.isfinite(r["loss"])
    if kl_mode == "exact":  # the sequence-level value is a one-sample estimate and may be negative
        assert r["divergence"] >= -1e-6
    if reference == "topk":
        assert json.loads((tmp_path / "checkpoint-last" / "config.json").read_text())["candidate_topk"] == 2


def test_a_loaded_reranker_keeps_its_candidate_topk(mdm_dir, tmp_path):
    from upo_fast.assets import load_task_model
    from upo_fast.tasks import get_task
    from upo_fast.training.policy_init import make_policy

    mdm = load_task_model(mdm_dir, get_task("sudoku4"))
    saved = make_policy(TrainConfig(task="sudoku4", init="fresh", mlp_hidden=16), mdm)
    saved.config.candidate_topk = 3  # e.g. from `pretrain-policy --candidate-topk 3`
    saved.save_pretrained(tmp_path / "p")
    for reference, expected in [("max_confidence", 3), ("topk", 2)]:
        cfg = TrainConfig(task="sudoku4", init=str(tmp_path / "p"), reference=reference, topk=2)
        assert make_policy(cfg, mdm).config.candidate_topk == expected
    assert make_policy(TrainConfig(task="sudoku4", init="anchor", mlp_hidden=16), mdm).config.candidate_topk is None


@pytest.mark.parametrize("field,value,match", [
    ("group_size", 1, "group_size"), ("beta", -0.1, "beta"), ("reference", "margin", "reference"),
    ("task", "chess", "task"), ("clip_eps", 1.5, "clip_eps"), ("init", "nowhere", "init"),
    ("certain_keep", 0.0, "certain_keep"), ("compile_backend", "tvm", "compile_backend"),
])
def test_bad_configs_are_named(mdm_dir, tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        small_config(mdm_dir, tmp_path, **{field: value}).validate()


def test_sequence_kl_with_the_one_hot_reference_is_refused(mdm_dir, tmp_path):
    with pytest.raises(ValueError, match="kl_mode"):
        small_config(mdm_dir, tmp_path, kl_mode="sequence", reference="max_confidence").validate()


def test_config_files_and_unknown_options(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: sudoku4\nbeta: 0.05\nsteps: 7\n")
    cfg = TrainConfig.from_file(path, steps=9)
    assert (cfg.task, cfg.beta, cfg.steps) == ("sudoku4", 0.05, 9)
    path.write_text("betta: 0.05\n")
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "missing.yaml")


def test_a_policy_for_another_mdm_is_refused(mdm_dir, tmp_path):
    from upo_fast.policy import UnmaskingPolicy, UnmaskingPolicyConfig

    other = UnmaskingPolicy(UnmaskingPolicyConfig(mdm_family="tiny_mdm", mdm_hidden_size=48, num_heads=4))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="hidden size"):
        train(small_config(mdm_dir, tmp_path / "run", init=str(tmp_path / "other")), progress=False)
