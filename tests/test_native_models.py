"""The native LLaDA and Dream (``upo_fast.models``) against what the official modeling code produced.

``tests/fixtures/official/`` holds tiny checkpoints saved by the official code (NVlabs/Fast-dLLM 24cc59e under
transformers 4.49; see its PROVENANCE.md and ``make_official_fixtures.py``) and, beside each, the inputs and the
official outputs. No official code is needed here: ``upo_fast.load_model`` reads those folders, and the logits
must match in fp32 to 1e-5, and in bf16 within twice the official model's own bf16 error.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import upo_fast
from upo_fast.models.attention import attend, flash_attention, flash_packing
from upo_fast.sampling.adapters import MDMAdapter

OFFICIAL = Path(__file__).parent / "fixtures" / "official"
NAMES = ("llada_untied", "llada_tied", "dream")


def cases(name):
    return load_file(str(OFFICIAL / f"{name}.cases.safetensors"))


@pytest.fixture(scope="module", params=NAMES)
def official(request):
    name = request.param
    return name, upo_fast.load_model(OFFICIAL / name, dtype=torch.float32), cases(name)


def dream_padding(mask):
    """The 4-D mask Dream's own sampler builds for a left-padded batch."""
    valid = mask.bool()
    return valid[:, None, :, None] & valid[:, None, None, :]


def test_fp32_logits_equal_the_official_code(official):
    name, model, case = official
    logits = model(case["input_ids"]).logits
    torch.testing.assert_close(logits, case["logits_full_fp32"], rtol=1e-5, atol=1e-5)


def test_fp32_padded_logits_equal_the_official_code(official):
    name, model, case = official
    ids, mask = case["input_ids"], case["attention_mask"]
    if name.startswith("llada"):  # the official LLaDA attends to padding; so does ours
        logits = model(ids, attention_mask=mask).logits
    else:  # as Dream's sampler calls it: (ids, 4-D mask, position ids); the official copy used arange positions
        logits = model(ids, dream_padding(mask), None).logits
        torch.testing.assert_close(logits, case["logits_padded_fp32_default_positions"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, case["logits_padded_fp32"], rtol=1e-5, atol=1e-5)


def test_hidden_states_equal_the_official_code(official):
    name, model, case = official
    adapter = MDMAdapter(model)
    adapter.capture_last_block_input()
    final = model.final_hidden_states(case["input_ids"])
    torch.testing.assert_close(adapter.last_hidden, case["last_block_input_fp32"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, case["final_hidden_fp32"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_error_within_twice_the_official_bf16_error(name):
    case = cases(name)
    truth = case["logits_full_fp64"].double()
    model = upo_fast.load_model(OFFICIAL / name, dtype=torch.bfloat16)
    ours = (model(case["input_ids"]).logits.double() - truth).abs().max()
    theirs = (case["logits_full_bf16"].double() - truth).abs().max()
    assert theirs > 0
    assert ours <= 2 * theirs, f"native bf16 error {ours:.4f} vs official bf16 error {theirs:.4f}"


@pytest.mark.parametrize("name", NAMES)
def test_eager_equals_sdpa(name):
    case = cases(name)
    model = upo_fast.load_model(OFFICIAL / name, dtype=torch.float32, attn="eager")
    assert model.attn_backend == "eager"
    ids, mask = case["input_ids"], case["attention_mask"]
    args = (ids, dream_padding(mask), None) if name == "dream" else (ids, mask)
    eager = model(*args).logits
    model.set_attention_backend("sdpa")
    torch.testing.assert_close(eager, model(*args).logits, rtol=1e-5, atol=1e-5)


def _varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, causal=False):
    """Stand-in for flash_attn_varlen_func: SDPA per packed sequence ([T, H, D] layout, equal q/k heads)."""
    out = torch.empty_like(q)
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        q1, k1, v1 = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(q1, k1, v1)[0].transpose(0, 1)
    return out


def test_flash_varlen_packing_matches_masked_sdpa():
    """The flash path's unpadding (pack valid rows, run per sequence, scatter back, zeros on pad rows) checked with
    a PyTorch stand-in for flash_attn_varlen_func: flash_attn itself needs a GPU."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 7, 8, generator=gen) for _ in range(3))
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, :2] = False
    valid[2, :5] = False
    mask = valid[:, None, :, None] & valid[:, None, None, :]
    packed = flash_attention(q, k, v, flash_packing(mask), varlen_fn=_varlen_reference)  # [B, L, H, D]
    dense = attend(q, k, v, mask, "sdpa").view(3, 7, 4, 8)
    torch.testing.assert_close(packed[valid], dense[valid], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(packed[~valid]) == 0
    with pytest.raises(ValueError, match="padding masks only"):
        flash_packing(mask & (torch.rand(3, 1, 7, 7, generator=gen) > 0.5))


@pytest.mark.parametrize("name", NAMES)
def test_fused_head_path_equals_logits_path(name):
    """The fused path reads final_hidden_states and output_head (tied LLaDA included): same tokens."""
    model = upo_fast.load_model(OFFICIAL / name, dtype=torch.float32)
    case = cases(name)
    mask_id = model.config.mask_token_id
    x = case["input_ids"][:, :10].clone()
    x[:, 4:] = mask_id
    plain = upo_fast.unmask(model, x, fused_head=False)
    fused = upo_fast.unmask(model, x, fused_head=True)
    assert torch.equal(plain, fused)
    assert not (plain == mask_id).any()


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_round_trip(name, tmp_path):
    model = upo_fast.load_model(OFFICIAL / name, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    again = upo_fast.load_model(tmp_path, dtype=torch.float32)
    ids = cases(name)["input_ids"]
    assert torch.equal(model(ids).logits, again(ids).logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_attention_backends_give_the_same_tokens_on_the_gpu(name):
    """bf16 on CUDA: SDPA, eager and (when installed) flash-attn give the same tokens at temperature 0, batched
    with left padding."""
    from upo_fast.models.attention import flash_available

    model = upo_fast.load_model(OFFICIAL / name, dtype=torch.bfloat16, device="cuda")
    case = cases(name)
    ids, mask = case["input_ids"].cuda(), case["attention_mask"].cuda()
    outputs = {}
    for backend in ("sdpa", "eager") + (("flash",) if flash_available() else ()):
        model.set_attention_backend(backend)
        outputs[backend] = upo_fast.generate(model, ids, mask, gen_length=8, block_length=8, steps=8)
    for backend, out in outputs.items():
        assert torch.equal(out, outputs["sdpa"]), backend
