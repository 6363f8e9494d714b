"""Tests for upo_fast.checkpoints: rotation, sweeping and falling back to the newest readable checkpoint."""

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from upo_fast.checkpoints import (
    CHECKPOINT_LINK,
    TRAINER_STATE,
    find_resumable,
    json_default,
    load_model_weights,
    save_checkpoint,
    truncate_log,
)


class TinyModel(torch.nn.Module):
    """A Linear layer with a ``save_pretrained`` that writes ``model.safetensors``, like transformers does."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(4, 3)

    def save_pretrained(self, directory):
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, "model.safetensors"))


def ckpt_dirs(out_dir):
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith("ckpt-"))


def save_steps(out_dir, steps, keep=2):
    model = TinyModel()
    for step in steps:
        save_checkpoint(out_dir, model, {"step": step, "extra": [step]}, keep=keep)
    return {step: out_dir / name for name in ckpt_dirs(out_dir) for step in [int(name.split("-")[1])]}


def link_target(out_dir):
    return os.readlink(out_dir / CHECKPOINT_LINK)


def test_keeps_newest_and_points_link_at_it(tmp_path):
    by_step = save_steps(tmp_path, [10, 20, 30], keep=2)
    assert sorted(by_step) == [20, 30]
    assert link_target(tmp_path) == by_step[30].name  # relative link
    assert sorted(os.listdir(tmp_path)) == sorted([CHECKPOINT_LINK, by_step[20].name, by_step[30].name])
    path, state = find_resumable(tmp_path)
    assert path == by_step[30] and state == {"step": 30, "extra": [30]}
    assert find_resumable(tmp_path, load_state=False) == (by_step[30], {"step": 30})
    save_checkpoint(tmp_path, TinyModel(), {"step": 40}, keep=1)
    assert len(ckpt_dirs(tmp_path)) == 1 and link_target(tmp_path).startswith("ckpt-00000040-")


def test_truncated_weights_fall_back_with_warning(tmp_path):
    by_step = save_steps(tmp_path, [10, 20, 30])
    weights = by_step[30] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.warns(UserWarning, match=r"ckpt-00000030-.*model\.safetensors.*falling back to .*ckpt-00000020-"):
        path, state = find_resumable(tmp_path)
    assert path == by_step[20] and state["step"] == 20


def test_corrupt_trainer_state_falls_back(tmp_path):
    by_step = save_steps(tmp_path, [10, 20, 30])
    state_file = by_step[30] / TRAINER_STATE
    state_file.write_bytes(state_file.read_bytes()[:50])
    with pytest.warns(UserWarning, match=r"ckpt-00000030-.*trainer_state\.pt.*falling back"):
        assert find_resumable(tmp_path)[0] == by_step[20]
    torch.save({"no_step": 1}, state_file)  # readable, but not a trainer state
    with pytest.warns(UserWarning, match="'step'"):
        assert find_resumable(tmp_path)[0] == by_step[20]


def test_dangling_link_falls_back(tmp_path):
    by_step = save_steps(tmp_path, [10, 20, 30])
    for f in by_step[30].iterdir():
        f.unlink()
    by_step[30].rmdir()
    with pytest.warns(UserWarning, match=rf"{CHECKPOINT_LINK}: dangling.*falling back to .*ckpt-00000020-"):
        assert find_resumable(tmp_path)[0] == by_step[20]


def test_link_target_first_then_descending_steps(tmp_path):
    by_step = save_steps(tmp_path, [10, 20, 30], keep=3)
    os.replace(tmp_path / CHECKPOINT_LINK, tmp_path / "old")  # point the link at step 20 by hand
    os.symlink(by_step[20].name, tmp_path / CHECKPOINT_LINK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_resumable(tmp_path)[0] == by_step[20]
    (by_step[20] / "model.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="falling back to .*ckpt-00000030-"):
        assert find_resumable(tmp_path)[0] == by_step[30]


def test_all_corrupt_raises_and_empty_is_none(tmp_path):
    assert find_resumable(tmp_path) is None
    assert find_resumable(tmp_path / "missing") is None
    by_step = save_steps(tmp_path, [10, 20])
    for path in by_step.values():
        (path / TRAINER_STATE).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="falling back"), pytest.raises(ValueError, match="no readable") as info:
        find_resumable(tmp_path)
    assert by_step[10].name in str(info.value) and by_step[20].name in str(info.value)
    for path in by_step.values():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    with pytest.raises(ValueError, match="dangling"):  # only a dangling link left: still an error, not None
        find_resumable(tmp_path)


def test_save_sweeps_leftovers_and_drops_abandoned_future(tmp_path):
    save_steps(tmp_path, [10, 20])
    (tmp_path / ".tmp-ckpt-x").mkdir()
    (tmp_path / ".tmp-ckpt-x" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".{CHECKPOINT_LINK}.ckpt-00000030-x.tmp").symlink_to("nowhere")
    # A resume from step 10 writes step 20 again: the old (abandoned) step-20 checkpoint goes.
    save_checkpoint(tmp_path, TinyModel(), {"step": 20}, keep=2)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 3 and CHECKPOINT_LINK in names and not any(n.startswith(".") for n in names)
    assert [n[:13] for n in ckpt_dirs(tmp_path)] == ["ckpt-00000010", "ckpt-00000020"]
    assert link_target(tmp_path) in names


def test_plain_directory_link_is_used_then_replaced(tmp_path):
    model = TinyModel()
    (tmp_path / CHECKPOINT_LINK).mkdir()
    model.save_pretrained(tmp_path / CHECKPOINT_LINK)
    torch.save({"step": 5}, tmp_path / CHECKPOINT_LINK / TRAINER_STATE)
    assert find_resumable(tmp_path)[0] == tmp_path / CHECKPOINT_LINK
    save_checkpoint(tmp_path, model, {"step": 6})
    assert os.path.islink(tmp_path / CHECKPOINT_LINK) and len(os.listdir(tmp_path)) == 2


def test_save_errors_leave_no_temp_dir(tmp_path):
    class Broken(TinyModel):
        def save_pretrained(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, Broken(), {"step": 1})
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, TinyModel(), {"steps": 1})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, TinyModel(), {"step": 1}, keep=0)


def test_load_model_weights_round_trip_and_mismatch(tmp_path):
    save_checkpoint(tmp_path, TinyModel(seed=1), {"step": 1})
    model = TinyModel(seed=2)
    load_model_weights(model, tmp_path / CHECKPOINT_LINK, "cpu")
    assert torch.equal(model.linear.weight, TinyModel(seed=1).linear.weight)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="does not match"):
        load_model_weights(other, tmp_path / CHECKPOINT_LINK, "cpu")


def test_truncate_log_and_json_default(tmp_path):
    log = tmp_path / "train_log.jsonl"
    truncate_log(log, 10)
    assert not log.exists()
    log.write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n{"ste')
    truncate_log(log, 10)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [5, 10]
    assert json.dumps({"a": torch.tensor([1, 2]), "b": object}, default=json_default).startswith('{"a": [1, 2]')


def test_pretrain_resumes_from_previous_checkpoint_when_newest_is_corrupt(tmp_path, monkeypatch):
    from upo_fast.models import PretrainConfig, TinyMDM, TinyMDMConfig, pretrain_mdm
    from upo_fast.models import pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "KEEP_CHECKPOINTS", 2)
    config = TinyMDMConfig(vocab_size=13, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=16, mask_token_id=12)

    def rows(batch_size, generator):
        return torch.randint(1, 12, (batch_size, 8), generator=generator)

    def run(out_dir, stop_at_step=None, seed=0):
        torch.manual_seed(seed)
        model = TinyMDM(config)
        cfg = PretrainConfig(steps=15, batch_size=4, warmup_steps=2, out_dir=str(out_dir), checkpoint_every=5,
                             stop_at_step=stop_at_step)
        return model, pretrain_mdm(model, rows, cfg, mask_id=12, progress=False)

    reference, _ = run(tmp_path / "ref")
    run(tmp_path / "run", stop_at_step=10)
    newest = tmp_path / "run" / link_target(tmp_path / "run")
    (newest / "model.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="ckpt-00000010-.*falling back to .*ckpt-00000005-"):
        resumed, summary = run(tmp_path / "run", seed=1)  # other initial weights: the checkpoint must win
    assert summary["resumed_from_step"] == 5 and summary["steps"] == 15
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters()))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15]
    assert [n[:13] for n in ckpt_dirs(tmp_path / "run")] == ["ckpt-00000010", "ckpt-00000015"]
