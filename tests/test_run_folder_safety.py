"""A run folder is data, never code: a crafted checkpoint cannot run anything when a trainer resumes from it; bytes
that went bad are caught by the checksums; non-finite weights and optimizer steps are refused; and a resume with
other settings than the run's is refused (or, for the settings that may change, applied and logged)."""

import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from upo_fast.checkpoints import (
    CHECKPOINT_LINK,
    CHECKSUMS,
    LEGACY_TRAINER_STATE,
    MODEL_WEIGHTS,
    TRAINER_STATE,
    TRAINER_TENSORS,
    find_resumable,
    load_trainer_state,
    save_checkpoint,
)
from upo_fast.models import TinyMDM, TinyMDMConfig
from upo_fast.training.config import TrainConfig
from upo_fast.training.pretrain_mdm import PretrainConfig, pretrain_mdm
from upo_fast.training.trainer import train

MDM_CONFIG = dict(vocab_size=13, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=16, mask_token_id=12)


class Payload:
    """Unpickling this creates the directory ``marker``: what a crafted ``trainer_state.pt`` could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def tiny_mdm(seed=0):
    torch.manual_seed(seed)
    return TinyMDM(TinyMDMConfig(**MDM_CONFIG))


def rows(batch_size, generator):
    return torch.randint(1, 12, (batch_size, 8), generator=generator)


def pretrain(out, seed=0, **overrides):
    fields = dict(steps=6, batch_size=4, warmup_steps=2, out_dir=str(out), checkpoint_every=3)
    model = tiny_mdm(seed)
    return model, pretrain_mdm(model, rows, PretrainConfig(**{**fields, **overrides}), mask_id=12, progress=False)


def plant_legacy_checkpoint(out_dir, payload_state, name="ckpt-00000009-evil"):
    ckpt = out_dir / name
    ckpt.mkdir(parents=True)
    tiny_mdm().save_pretrained(ckpt)
    torch.save(payload_state, ckpt / LEGACY_TRAINER_STATE)
    return ckpt


# --------------------------------------------------------------------------------------------------
# 1. no code runs from a run folder
# --------------------------------------------------------------------------------------------------


def test_the_payload_is_real(tmp_path):
    """The test payload does run when unpickled the unsafe way: the tests below are meaningful."""
    torch.save({"step": 1, "x": Payload(tmp_path / "marker")}, tmp_path / "state.pt")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert (tmp_path / "marker").exists()


def test_a_pickled_payload_in_a_legacy_checkpoint_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    plant_legacy_checkpoint(out, {"step": 9, "optimizer": Payload(marker)})
    with pytest.raises(ValueError, match=rf"(?s)no readable checkpoint.*unreadable {LEGACY_TRAINER_STATE}.*mkdir"):
        find_resumable(out)
    assert not marker.exists()
    # next to a good checkpoint: skipped with a warning, the good one is used
    _, summary = pretrain(tmp_path / "good", steps=3)
    good = (tmp_path / "good" / CHECKPOINT_LINK).resolve()
    shutil.copytree(good, out / good.name)
    with pytest.warns(UserWarning, match=rf"ckpt-00000009-evil: unreadable {LEGACY_TRAINER_STATE}.*falling back"):
        assert find_resumable(out)[0] == out / good.name
    assert not marker.exists()


def test_the_trainers_refuse_a_planted_payload(tmp_path):
    marker = tmp_path / "pwned"
    plant_legacy_checkpoint(tmp_path / "mdm", {"step": 9, "rng": Payload(marker)})
    with pytest.raises(ValueError, match="no readable checkpoint"):
        pretrain(tmp_path / "mdm")
    plant_legacy_checkpoint(tmp_path / "upo", {"step": 9, "optimizer": Payload(marker)})
    with pytest.raises(ValueError, match="no readable checkpoint"):
        train(TrainConfig(task="sudoku4", out_dir=str(tmp_path / "upo"), tensorboard=False), progress=False)
    assert not marker.exists()


def test_a_payload_next_to_a_new_format_state_is_never_read(tmp_path):
    marker = tmp_path / "pwned"
    pretrain(tmp_path / "run", steps=3)
    ckpt = (tmp_path / "run" / CHECKPOINT_LINK).resolve()
    torch.save({"step": 99, "x": Payload(marker)}, ckpt / LEGACY_TRAINER_STATE)
    assert find_resumable(tmp_path / "run")[1]["step"] == 3
    assert not marker.exists()


def test_a_crafted_trainer_state_json_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    pretrain(tmp_path / "run", steps=3)
    ckpt = (tmp_path / "run" / CHECKPOINT_LINK).resolve()
    doc = json.loads((ckpt / TRAINER_STATE).read_text())
    for crafted in ({"$reduce": ["os.mkdir", str(marker)]}, {"py/object": "os.mkdir", "$args": [str(marker)]},
                    {"$tensor": "../../etc/passwd"}):
        doc["state"]["rng"] = crafted
        (ckpt / TRAINER_STATE).write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=f"checksum mismatch in {TRAINER_STATE}"):
            load_trainer_state(ckpt)
        sums = json.loads((ckpt / CHECKSUMS).read_text())  # an attacker can rewrite the checksums too
        sums["files"][TRAINER_STATE] = __import__("hashlib").sha256((ckpt / TRAINER_STATE).read_bytes()).hexdigest()
        (ckpt / CHECKSUMS).write_text(json.dumps(sums))
        with pytest.raises(ValueError, match="tag|lacks"):
            load_trainer_state(ckpt)
    assert not marker.exists()


def test_a_legacy_checkpoint_still_resumes(tmp_path):
    """A run folder from before the JSON + safetensors format resumes through torch's safe loader."""
    reference, _ = pretrain(tmp_path / "ref")
    pretrain(tmp_path / "run", stop_at_step=3)
    ckpt = (tmp_path / "run" / CHECKPOINT_LINK).resolve()
    torch.save(load_trainer_state(ckpt), ckpt / LEGACY_TRAINER_STATE)  # what torch.save used to write
    for name in (TRAINER_STATE, TRAINER_TENSORS, CHECKSUMS):
        (ckpt / name).unlink()
    resumed, summary = pretrain(tmp_path / "run", seed=1)
    assert summary["resumed_from_step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters()))


# --------------------------------------------------------------------------------------------------
# 2. integrity
# --------------------------------------------------------------------------------------------------


def test_flipped_weight_bytes_fall_back_to_the_older_checkpoint(tmp_path, monkeypatch):
    from upo_fast.training import pretrain_mdm as pretrain_module

    monkeypatch.setattr(pretrain_module, "KEEP_CHECKPOINTS", 2)
    reference, _ = pretrain(tmp_path / "ref")
    pretrain(tmp_path / "run")  # checkpoints at steps 3 and 6
    newest = (tmp_path / "run" / CHECKPOINT_LINK).resolve()
    weights = newest / MODEL_WEIGHTS
    data = bytearray(weights.read_bytes())
    middle = (len(data) + 8 + int.from_bytes(data[:8], "little")) // 2  # in the middle of the tensor data
    data[middle] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert load_file(str(weights)).keys()  # still parses: only the checksum can tell
    with pytest.warns(UserWarning, match=rf"ckpt-00000006-.*checksum mismatch in {MODEL_WEIGHTS}.*falling back "
                                         r"to .*ckpt-00000003-"):
        resumed, summary = pretrain(tmp_path / "run", seed=1)
    assert summary["resumed_from_step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters()))


def test_non_finite_weights_in_a_checkpoint_are_refused(tmp_path):
    model, _ = pretrain(tmp_path, steps=3)
    state = load_trainer_state((tmp_path / CHECKPOINT_LINK).resolve())
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    save_checkpoint(tmp_path, model, state)  # consistent checksums: the weights themselves are bad
    with pytest.raises(ValueError, match="non-finite"):
        pretrain(tmp_path, steps=3)


def poison_adamw(monkeypatch):
    """Every AdamW step writes a NaN into the first parameter, as a diverging step would."""
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_pretraining_steps_to_non_finite_parameters_are_undone(tmp_path, caplog, monkeypatch):
    poison_adamw(monkeypatch)
    before = [p.detach().clone() for p in tiny_mdm().parameters()]
    with caplog.at_level(logging.WARNING):
        model, summary = pretrain(tmp_path, steps=3, log_every=1)
    assert summary["skipped_nonfinite"] == 3 and "undone" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("skipped_nonfinite") for r in log] == [1, 1, 1]
    assert load_trainer_state((tmp_path / CHECKPOINT_LINK).resolve())["optimizer"]["state"] == {}


# --------------------------------------------------------------------------------------------------
# the UPO trainer: undone steps, resume with other settings
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sudoku4_mdm(sudoku4_mdm_dir):
    return sudoku4_mdm_dir


def upo_config(mdm_dir, out, **overrides):
    fields = dict(task="sudoku4", model=mdm_dir, out_dir=str(out), steps=2, prompts_per_step=2, group_size=2,
                  mlp_hidden=16, eval_every=0, checkpoint_every=1, certain_keep=1.0, reward="cells", beta=0.1,
                  lr=1e-2, tensorboard=False, drop_zero_std=False, inner_iters=1, init="fresh")
    return TrainConfig(**{**fields, **overrides})


def upo_records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_update_to_non_finite_parameters_is_undone(sudoku4_mdm, tmp_path, caplog, monkeypatch):
    from upo_fast.assets import load_task_model
    from upo_fast.tasks import get_task
    from upo_fast.training.policy_init import make_policy

    poison_adamw(monkeypatch)
    cfg = upo_config(sudoku4_mdm, tmp_path, steps=1)
    with caplog.at_level(logging.WARNING):
        train(cfg, progress=False)
    record = upo_records(tmp_path)[-1]
    assert record["undone_nonfinite"] == 1 and "undone" in record["skipped"] and "undone" in caplog.text
    torch.manual_seed(cfg.seed)
    initial = make_policy(cfg, load_task_model(sudoku4_mdm, get_task("sudoku4"))).state_dict()
    saved = load_file(str(tmp_path / CHECKPOINT_LINK / MODEL_WEIGHTS))
    assert saved.keys() and all(torch.equal(saved[k], initial[k]) for k in saved)
    assert load_trainer_state((tmp_path / CHECKPOINT_LINK).resolve())["optimizer"]["state"] == {}


def test_resume_with_other_settings(sudoku4_mdm, tmp_path, caplog):
    train(upo_config(sudoku4_mdm, tmp_path, stop_at_step=1), progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.01 -> 0\.5(.|\n)*seed: 0 -> 7(.|\n)*new --out folder"):
        train(upo_config(sudoku4_mdm, tmp_path, lr=0.5, seed=7), progress=False)
    with pytest.raises(ValueError, match="task: 'sudoku4' -> 'sudoku9'"):
        train(upo_config(sudoku4_mdm, tmp_path, task="sudoku9"), progress=False)
    with caplog.at_level(logging.WARNING):
        summary = train(upo_config(sudoku4_mdm, tmp_path, steps=3), progress=False)
    assert summary["resumed_from_step"] == 1 and summary["last_step"] == 3
    assert "resume: steps 2 -> 3" in caplog.text and "resume: stop_at_step 1 -> None" in caplog.text
    assert [r["step"] for r in upo_records(tmp_path)] == [1, 2, 3]
    assert load_trainer_state((tmp_path / CHECKPOINT_LINK).resolve())["config"]["steps"] == 3
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == 3


def test_pretraining_refuses_a_changed_schedule(tmp_path, caplog):
    pretrain(tmp_path, stop_at_step=3)
    with pytest.raises(ValueError, match=r"steps: 6 -> 12"):
        pretrain(tmp_path, steps=12)
    with caplog.at_level(logging.WARNING):
        _, summary = pretrain(tmp_path, log_every=2)
    assert summary["resumed_from_step"] == 3 and "resume: log_every 20 -> 2" in caplog.text
