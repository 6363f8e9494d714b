"""Tests for TinyMDM (model, loading) and MDM pretraining. Small models only: the file runs in seconds."""

import json
import os

import pytest
import torch

from upo_fast.checkpoints import load_trainer_state
from upo_fast.models import TinyMDM, TinyMDMConfig, load_tiny_mdm
from upo_fast.training.pretrain_mdm import PretrainConfig, mdm_loss, pretrain_mdm

VOCAB, MASK_ID = 12, 11


def small_config(position_embedding="rope", **kwargs):
    defaults = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        position_embedding=position_embedding,
        mask_token_id=MASK_ID,
    )
    if position_embedding == "grid":
        defaults["grid_size"] = 4
    defaults.update(kwargs)
    return TinyMDMConfig(**defaults)


def small_model(position_embedding="rope", seed=0, **kwargs):
    torch.manual_seed(seed)
    return TinyMDM(small_config(position_embedding, **kwargs)).eval()


def tokens(bsz, seq_len, seed=0):
    return torch.randint(1, MASK_ID, (bsz, seq_len), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("pos", ["rope", "learned", "grid", "rope+learned"])
def test_forward_shapes_and_hidden_states(pos):
    model = small_model(pos)
    out = model(tokens(3, 16), output_hidden_states=True)
    assert out.logits.shape == (3, 16, VOCAB) and out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (3, 16, 32) for h in out.hidden_states)
    (logits,) = model(tokens(3, 16), return_dict=False)
    assert logits.shape == (3, 16, VOCAB)


def test_init_is_sane_and_attribute_paths():
    model = small_model("learned")
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    assert model.get_output_embeddings() is model.lm_head and model.lm_head.bias is None
    assert len(model.model.layers) == 2 and isinstance(model.model.norm, torch.nn.RMSNorm)
    assert torch.equal(model.model.norm.weight, torch.ones(32))
    std = model.model.layers[0].self_attn.qkv_proj.weight.std().item()
    assert 0.015 < std < 0.025  # normal(0, initializer_range=0.02)


@pytest.mark.parametrize("pos", ["rope", "learned", "grid", "rope+learned"])
def test_bidirectional(pos):
    model = small_model(pos)
    x = tokens(1, 16)
    y = x.clone()
    y[0, -1] = (x[0, -1] % 10) + 1  # a different real token at the last position
    assert not torch.allclose(model(x).logits[0, 0], model(y).logits[0, 0])


def test_grid_positions_follow_rows_cols_boxes():
    model = small_model("grid")
    grid = model.model.embed_positions
    # 4x4 grid, 2x2 boxes: cell 5 = (row 1, col 1, box 0); cell 10 = (row 2, col 2, box 3)
    expected = grid.row.weight[2] + grid.col.weight[2] + grid.box.weight[3]
    assert torch.allclose(grid(torch.tensor([[10]]))[0, 0], expected)
    assert torch.allclose(
        grid(torch.tensor([[5]]))[0, 0], grid.row.weight[1] + grid.col.weight[1] + grid.box.weight[0]
    )
    with pytest.raises(ValueError, match="grid"):
        model(tokens(1, 17))


@pytest.mark.parametrize("pos", ["rope", "learned", "rope+learned"])
def test_left_padding_matches_unpadded(pos):
    model = small_model(pos)
    pad, seq_len = 3, 10
    x = tokens(1, seq_len)
    ref = model(x).logits[0]
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], dim=1)
    batch = torch.cat([padded, tokens(1, pad + seq_len, seed=1)])  # second row: no padding
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(batch, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(out[0, pad:], ref, atol=1e-5)
    assert torch.isfinite(out).all()
    # bool masks behave the same as 0/1 ints
    out_bool = model(batch, attention_mask=mask.bool(), position_ids=positions).logits
    assert torch.equal(out_bool, out)


def test_4d_mask_equivalent_to_2d_and_no_nan_on_pad_rows():
    model = small_model("rope")
    bsz, seq_len = 3, 8
    x = tokens(bsz, seq_len)
    mask2 = torch.ones(bsz, seq_len, dtype=torch.long)
    mask2[0, :2] = 0
    mask2[2, :] = 0  # a row that is all padding
    real = mask2.bool()
    key_mask4 = real[:, None, None, :].expand(bsz, 1, seq_len, seq_len)
    out2 = model(x, attention_mask=mask2).logits
    out4 = model(x, attention_mask=key_mask4).logits
    assert torch.allclose(out2, out4, atol=1e-6)
    # Dream-style mask (pad queries see nothing): real positions unchanged, pad rows finite.
    dream4 = real[:, None, None, :] & real[:, None, :, None]
    out_dream = model(x, attention_mask=dream4).logits
    assert torch.isfinite(out2).all() and torch.isfinite(out_dream).all()
    assert torch.allclose(out_dream[real], out2[real], atol=1e-6)


def test_shape_errors_name_the_argument():
    model = small_model("learned")
    with pytest.raises(ValueError, match="attention_mask"):
        model(tokens(2, 8), attention_mask=torch.ones(2, 7))
    with pytest.raises(ValueError, match="attention_mask"):
        model(tokens(2, 8), attention_mask=torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention_mask"):
        model(tokens(2, 8), attention_mask=torch.zeros(2, 1, 8, 8))  # float 4-D is ambiguous
    with pytest.raises(ValueError, match="input_ids"):
        model(tokens(2, 8)[0])
    with pytest.raises(ValueError, match="input_ids"):
        model(tokens(1, 33))  # longer than max_position_embeddings
    with pytest.raises(ValueError, match="position_ids"):
        model(tokens(2, 8), position_ids=torch.arange(7)[None])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(position_embedding="alibi"), "position_embedding"),
        (dict(hidden_size=30), "hidden_size"),
        (dict(position_embedding="grid", grid_size=None), "grid_size"),
        (dict(position_embedding="grid", grid_size=8), "grid_size"),
        (dict(mask_token_id=VOCAB), "mask_token_id"),
        (dict(mask_token_id=-1), "mask_token_id"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
    ],
)
def test_bad_model_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        small_config(**kwargs)


@pytest.mark.parametrize("pos", ["rope", "grid", "rope+learned"])
def test_save_load_round_trip(tmp_path, pos):
    from transformers import AutoModelForMaskedLM

    model = small_model(pos)
    model.save_pretrained(tmp_path)
    x = tokens(2, 16)
    expected = model(x).logits
    loaded = load_tiny_mdm(tmp_path)
    assert not loaded.training and loaded.config.position_embedding == pos
    assert torch.equal(loaded(x).logits, expected)
    assert torch.equal(TinyMDM.from_pretrained(tmp_path).eval()(x).logits, expected)
    assert torch.equal(AutoModelForMaskedLM.from_pretrained(tmp_path).eval()(x).logits, expected)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_tiny_mdm(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json"):
        load_tiny_mdm(tmp_path)
    small_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_tiny_mdm(tmp_path)
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        load_tiny_mdm(tmp_path)
    weights.unlink()
    with pytest.raises(ValueError, match="model.safetensors"):
        load_tiny_mdm(tmp_path)


# ---------------------------------------------------------------------------------------------- loss


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits ignore the input: isolates which target positions the loss reads."""

    def __init__(self, bsz, seq_len):
        super().__init__()
        self.logits = torch.nn.Parameter(
            torch.randn(bsz, seq_len, VOCAB, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, input_ids):
        return (self.logits,)


@pytest.mark.parametrize("weighting", ["inverse_t", "none"])
def test_mdm_loss_counts_masked_tokens_only(weighting):
    x0 = tokens(2, 6)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = mask[1, 5] = True
    t = torch.tensor([0.25, 0.5])
    fixed = FixedLogits(2, 6)
    base = mdm_loss(fixed, x0, MASK_ID, t=t, weighting=weighting, mask=mask)
    changed = x0.clone()
    changed[0, 0] = changed[0, 0] % 10 + 1  # unmasked position
    assert torch.equal(mdm_loss(fixed, changed, MASK_ID, t=t, weighting=weighting, mask=mask), base)
    changed[0, 1] = changed[0, 1] % 10 + 1  # masked position
    assert not torch.equal(mdm_loss(fixed, changed, MASK_ID, t=t, weighting=weighting, mask=mask), base)
    # exact value: CE at masked tokens, 1/t per row, averaged over B * L (or over masked tokens for "none")
    ce = torch.nn.functional.cross_entropy(fixed.logits.reshape(-1, VOCAB), x0.reshape(-1), reduction="none")
    ce = ce.view(2, 6) * mask
    expected = (ce / t[:, None]).sum() / 12 if weighting == "inverse_t" else ce.sum() / mask.sum()
    assert torch.allclose(base, expected)


def test_mdm_loss_real_model_random_masks():
    model = small_model()
    x0 = tokens(4, 8)
    gen = torch.Generator().manual_seed(0)
    loss = mdm_loss(model, x0, MASK_ID, t=torch.full((4,), 1e-3), weighting="inverse_t", generator=gen)
    assert torch.isfinite(loss) and loss > 0  # t tiny: a forced masked token per row keeps it non-zero
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="t must"):
        mdm_loss(model, x0, MASK_ID, t=torch.zeros(4), weighting="inverse_t")
    with pytest.raises(ValueError, match="weighting"):
        mdm_loss(model, x0, MASK_ID, t=torch.ones(4), weighting="sqrt")


def test_mdm_loss_masks_only_maskable_positions():
    """A Zebra-style batch: the first 4 tokens (clues) are always given; only the rest are ever masked."""
    seen = []

    class Spy(FixedLogits):
        def forward(self, input_ids):
            seen.append(input_ids.clone())
            return (self.logits,)

    x0 = tokens(3, 8)
    maskable = torch.zeros(3, 8, dtype=torch.bool)
    maskable[:, 4:] = True
    gen = torch.Generator().manual_seed(1)
    for t in (1e-3, 0.5, 1.0):  # tiny t: the forced masked token must land in the maskable part too
        loss = mdm_loss(Spy(3, 8), x0, MASK_ID, t=torch.full((3,), t), generator=gen, maskable=maskable)
        masked = seen[-1] == MASK_ID
        assert not masked[:, :4].any() and masked.any(1).all() and torch.isfinite(loss)
    assert (seen[-1][:, 4:] == MASK_ID).all()  # t = 1 masks every maskable token
    with pytest.raises(ValueError, match="maskable"):
        mdm_loss(Spy(3, 8), x0, MASK_ID, t=torch.ones(3), maskable=torch.zeros(3, 8, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- training


def constant_rows(batch_size, generator, seq_len=8):
    """[B, L] rows repeating one random token: any visible token reveals the whole row (a copy task)."""
    return torch.randint(1, 11, (batch_size, 1), generator=generator).expand(batch_size, seq_len).clone()


def test_pretraining_lowers_the_loss(tmp_path):
    model = small_model("rope")
    eval_x = constant_rows(64, torch.Generator().manual_seed(123))
    eval_t = torch.full((64,), 0.5)

    def eval_loss():
        with torch.no_grad():
            gen = torch.Generator().manual_seed(7)
            return mdm_loss(model, eval_x, MASK_ID, t=eval_t, weighting="none", generator=gen).item()

    before = eval_loss()
    cfg = PretrainConfig(
        steps=60,
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        out_dir=str(tmp_path),
        checkpoint_every=30,
        log_every=10,
    )
    summary = pretrain_mdm(
        model, constant_rows, cfg, mask_id=MASK_ID, eval_fn=lambda m: {"n": 1}, progress=False
    )
    after = eval_loss()
    assert summary["steps"] == 60 and not summary["stopped_early"]
    assert after < 0.5 * before, (before, after)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert {"loss", "lr", "seconds"} <= set(records[0]) and records[2]["eval"] == {"n": 1}
    assert os.path.islink(tmp_path / "checkpoint-last")
    assert len([p for p in os.listdir(tmp_path) if p.startswith("ckpt-")]) == 1  # the old one was removed
    reloaded = load_tiny_mdm(tmp_path / "checkpoint-last")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), model.parameters()))


class Killed(Exception):
    pass


def test_resume_matches_uninterrupted_run(tmp_path):
    def cfg(out):
        return PretrainConfig(
            steps=20, batch_size=8, lr=3e-3, warmup_steps=3, out_dir=str(out), checkpoint_every=10
        )

    reference = small_model(seed=0)
    pretrain_mdm(reference, constant_rows, cfg(tmp_path / "ref"), mask_id=MASK_ID, progress=False)

    calls = 0

    def dies_after_ten_steps(batch_size, generator):
        nonlocal calls
        calls += 1
        if calls > 10:
            raise Killed
        return constant_rows(batch_size, generator)

    interrupted = small_model(seed=0)
    with pytest.raises(Killed):
        pretrain_mdm(
            interrupted, dies_after_ten_steps, cfg(tmp_path / "run"), mask_id=MASK_ID, progress=False
        )
    resumed = small_model(seed=99)  # a fresh process would start from other weights: the checkpoint must win
    summary = pretrain_mdm(resumed, constant_rows, cfg(tmp_path / "run"), mask_id=MASK_ID, progress=False)
    assert summary["resumed_from_step"] == 10 and summary["steps"] == 20
    for (name, a), b in zip(reference.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == [10, 20]  # no duplicated records after the resume


def test_time_limit_stops_early_with_checkpoint(tmp_path):
    cfg = PretrainConfig(
        steps=10_000, batch_size=4, time_limit_s=0.3, out_dir=str(tmp_path), checkpoint_every=10_000
    )
    summary = pretrain_mdm(small_model(), constant_rows, cfg, mask_id=MASK_ID, progress=False)
    assert summary["stopped_early"] and 0 < summary["steps"] < 10_000
    state = load_trainer_state(tmp_path / "checkpoint-last")
    assert state["step"] == summary["steps"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("batch_size", -1),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("weight_decay", -0.1),
        ("warmup_steps", -1),
        ("min_mask_ratio", 0.0),
        ("min_mask_ratio", 1.5),
        ("loss_weighting", "sqrt"),
        ("grad_clip", 0.0),
        ("checkpoint_every", 0),
        ("log_every", 0),
        ("time_limit_s", -1.0),
    ],
)
def test_bad_pretrain_config(field, value):
    with pytest.raises(ValueError, match=field):
        PretrainConfig(**{field: value})


def test_bad_mask_id_and_mutated_config():
    cfg = PretrainConfig(steps=1, batch_size=2)
    with pytest.raises(ValueError, match="mask_id"):
        pretrain_mdm(small_model(), constant_rows, cfg, mask_id=VOCAB, progress=False)
    cfg.lr = -1.0  # validated again at the start of training
    with pytest.raises(ValueError, match="lr"):
        pretrain_mdm(small_model(), constant_rows, cfg, mask_id=MASK_ID, progress=False)
