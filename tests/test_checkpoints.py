"""Tests for upo_fast.checkpoints: rotation, sweeping, falling back to the newest readable checkpoint, the
JSON + safetensors trainer state, checksums, the resume-settings comparison, resuming and the stop check."""

import json
import math
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from upo_fast.checkpoint_files import decode_state, encode_state
from upo_fast.checkpoints import (
    CHECKPOINT_LINK,
    CHECKSUMS,
    LEGACY_TRAINER_STATE,
    TRAINER_STATE,
    TRAINER_TENSORS,
    changed_settings,
    check_resume,
    find_resumable,
    json_default,
    load_model_weights,
    restore,
    save_checkpoint,
    should_stop,
    truncate_log,
)
from upo_fast.training.finite_steps import step_if_finite


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
    with pytest.warns(UserWarning, match=r"ckpt-00000030-.*checksum mismatch in trainer_state\.json.*falling back"):
        assert find_resumable(tmp_path)[0] == by_step[20]
    for name in (TRAINER_STATE, TRAINER_TENSORS, CHECKSUMS):
        (by_step[30] / name).unlink()
    torch.save({"no_step": 1}, by_step[30] / LEGACY_TRAINER_STATE)  # legacy, readable, but not a trainer state
    with pytest.warns(UserWarning, match="'step'"):
        assert find_resumable(tmp_path)[0] == by_step[20]


def test_flipped_bytes_in_the_weights_fall_back_naming_the_file(tmp_path):
    by_step = save_steps(tmp_path, [10, 20, 30])
    weights = by_step[30] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) - 20  # inside the tensor data: the header still parses
    data[middle:middle + 4] = b"\xff\xff\xff\x7f"
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"ckpt-00000030-.*checksum mismatch in model\.safetensors.*falling back "
                                         r"to .*ckpt-00000020-"):
        path, state = find_resumable(tmp_path)
    assert path == by_step[20] and state["step"] == 20


def test_a_new_format_checkpoint_needs_its_checksums(tmp_path):
    by_step = save_steps(tmp_path, [10, 20])
    (by_step[20] / CHECKSUMS).unlink()
    with pytest.warns(UserWarning, match=rf"ckpt-00000020-.*no {CHECKSUMS}.*falling back"):
        assert find_resumable(tmp_path)[0] == by_step[10]
    sums = json.loads((by_step[10] / CHECKSUMS).read_text())
    del sums["files"][TRAINER_TENSORS]  # a list that leaves out a file the resume reads
    (by_step[10] / CHECKSUMS).write_text(json.dumps(sums))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=f"no checksum for {TRAINER_TENSORS}"):
        find_resumable(tmp_path)


def test_on_disk_layout_and_checksums(tmp_path):
    save_steps(tmp_path, [10])
    ckpt = (tmp_path / CHECKPOINT_LINK).resolve()
    assert sorted(os.listdir(ckpt)) == sorted([CHECKSUMS, "model.safetensors", TRAINER_STATE, TRAINER_TENSORS])
    sums = json.loads((ckpt / CHECKSUMS).read_text())
    assert sums["algorithm"] == "sha256" and sorted(sums["files"]) == sorted(
        ["model.safetensors", TRAINER_STATE, TRAINER_TENSORS])
    doc = json.loads((ckpt / TRAINER_STATE).read_text())
    assert doc["state"] == {"step": 10, "extra": [10]}


def test_state_round_trips_exactly(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    gen = torch.Generator().manual_seed(3)
    base = torch.arange(6.0)
    state = {"step": 7, "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state(),
             "data": gen.get_state(), "cuda": [torch.get_rng_state(), torch.get_rng_state()]},
             "seconds": 1.25, "nan": float("nan"), "inf": float("-inf"), "nested": ((1, "a"), [None, True]),
             "$odd": {"$tensor": "x"}, "mixed": {1: "int", "1": "str", (2, 3): "tuple"},
             "view": base[::2], "same": [base, base], "config": {"lr": 1e-4, "steps": 200, "device": "cpu"}}
    save_checkpoint(tmp_path, TinyModel(), state)
    _, loaded = find_resumable(tmp_path)
    assert isinstance(loaded["optimizer"]["state"], dict) and list(loaded["optimizer"]["state"]) == [0, 1]
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert loaded["nested"] == ((1, "a"), [None, True]) and loaded["mixed"] == state["mixed"]
    assert loaded["$odd"] == {"$tensor": "x"}  # a user key that looks like a tag stays data
    assert math.isnan(loaded["nan"]) and loaded["inf"] == float("-inf") and loaded["config"] == state["config"]
    assert torch.equal(loaded["view"], torch.tensor([0.0, 2.0, 4.0])) and loaded["view"].is_contiguous()
    assert torch.equal(loaded["rng"]["data"], gen.get_state()) and len(loaded["rng"]["cuda"]) == 2
    restored = torch.optim.AdamW(model.parameters(), lr=0.5)
    restored.load_state_dict(loaded["optimizer"])
    assert restored.param_groups[0]["lr"] == 1e-3
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(restored.state[model.weight][key], optimizer.state[model.weight][key])
    with pytest.raises(TypeError, match="object"):
        encode_state({"step": 1, "bad": object()})
    with pytest.raises(ValueError, match="unknown or malformed tag"):
        decode_state({"$eval": "print(1)"}, {})
    with pytest.raises(ValueError, match="lacks"):
        decode_state({"$tensor": "missing"}, {})


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
    torch.save({"step": 5}, tmp_path / CHECKPOINT_LINK / LEGACY_TRAINER_STATE)  # a legacy checkpoint
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


def test_load_model_weights_refuses_non_finite_values(tmp_path):
    model = TinyModel(seed=1)
    with torch.no_grad():
        model.linear.bias[1] = float("nan")
    save_checkpoint(tmp_path, model, {"step": 1})
    target = TinyModel(seed=2)
    with pytest.raises(ValueError, match="non-finite.*linear.bias"):
        load_model_weights(target, tmp_path / CHECKPOINT_LINK, "cpu")
    assert torch.equal(target.linear.bias, TinyModel(seed=2).linear.bias)  # untouched


def test_a_step_to_non_finite_parameters_is_undone():
    model = TinyModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.linear(torch.randn(2, 4)).sum().backward()
    assert step_if_finite(optimizer) and len(optimizer.state) == 2
    before = [p.detach().clone() for p in model.parameters()]
    moments = {k: v.clone() for k, v in optimizer.state[model.linear.weight].items()}
    optimizer.param_groups[0]["lr"] = float("inf")
    model.linear(torch.randn(2, 4)).sum().backward()
    assert not step_if_finite(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = optimizer.state[model.linear.weight]
    assert all(torch.equal(after[k], v) for k, v in moments.items())
    fresh = torch.optim.AdamW(TinyModel().parameters(), lr=float("inf"))
    next(iter(fresh.param_groups[0]["params"])).grad = torch.ones(3, 4)
    assert not step_if_finite(fresh) and len(fresh.state) == 0  # a first step undone leaves no state behind


def test_changed_settings():
    saved = {"steps": 200, "lr": 0.01, "seed": 0, "task": "sudoku4", "old_option": 1}
    given = {"steps": 400, "lr": 0.01, "seed": 0, "task": "sudoku4", "new_option": 2}
    assert changed_settings(saved, given, frozenset({"steps"})) == {"steps": (200, 400)}
    with pytest.raises(ValueError) as info:
        changed_settings(saved, {**given, "lr": 0.5, "seed": 7}, frozenset({"steps"}), where="run X")
    message = str(info.value)
    assert "run X" in message and "lr: 0.01 -> 0.5" in message and "seed: 0 -> 7" in message
    assert "steps" not in message.splitlines()[1] and "new --out folder" in message


def test_check_resume_refuses_other_settings_and_restore_puts_the_run_back(tmp_path, caplog):
    model = TinyModel(seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.linear(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    config = {"steps": 10, "lr": 0.01, "log_every": 2}
    save_checkpoint(tmp_path, model, {"step": 4, "optimizer": optimizer.state_dict(), "config": config})
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 2}\n{"step": 4}\n{"step": 6}\n')
    assert check_resume(tmp_path / "empty", config, frozenset()) is None
    with pytest.raises(ValueError, match=r"(?s)the run in .* \(checkpoint ckpt-00000004-.*\).*lr: 0.01 -> 0.5"):
        check_resume(tmp_path, {**config, "lr": 0.5}, frozenset({"log_every"}))
    found = check_resume(tmp_path, {**config, "log_every": 3}, frozenset({"log_every"}))
    assert found.step == 4 and found.changes == {"log_every": (2, 3)} and found.checkpoint.name.startswith("ckpt-")
    target = TinyModel(seed=2)
    target_optimizer = torch.optim.AdamW(target.parameters(), lr=1e-2)
    assert not torch.equal(target.linear.weight, model.linear.weight)
    with caplog.at_level("WARNING"):
        assert restore(found, target, target_optimizer, "cpu", log) == 4
    assert "resume: log_every 2 -> 3" in caplog.text
    assert torch.equal(target.linear.weight, model.linear.weight)
    moments = [o.state_dict()["state"][0]["exp_avg"] for o in (target_optimizer, optimizer)]
    assert torch.equal(*moments)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4]
    assert restore(found, target, target_optimizer, "cpu", tmp_path / "other.jsonl", main=False) == 4
    assert restore(None, target, target_optimizer, "cpu", log, main=False) == 0 and log.exists()
    assert restore(None, target, target_optimizer, "cpu", log) == 0 and not log.exists()  # a fresh start


def test_should_stop():
    import time

    now = time.perf_counter()
    assert not should_stop(3, now, None, None) and not should_stop(3, now, 3600.0, 4)
    assert should_stop(4, now, None, 4) and should_stop(5, now, None, 4)
    assert should_stop(1, now - 10.0, 5.0, None) and not should_stop(1, now, 5.0, None)


def test_truncate_log_and_json_default(tmp_path):
    log = tmp_path / "train_log.jsonl"
    truncate_log(log, 10)
    assert not log.exists()
    log.write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n{"ste')
    truncate_log(log, 10)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [5, 10]
    assert json.dumps({"a": torch.tensor([1, 2]), "b": object}, default=json_default).startswith('{"a": [1, 2]')


def test_pretrain_resumes_from_previous_checkpoint_when_newest_is_corrupt(tmp_path, monkeypatch):
    from upo_fast.models import TinyMDM, TinyMDMConfig
    from upo_fast.training import pretrain_mdm as pretrain_module
    from upo_fast.training.pretrain_mdm import PretrainConfig, pretrain_mdm

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
