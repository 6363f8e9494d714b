"""Block mode of ``upo_fast.dream_generate``: Fast-dLLM's Dream block sampler (``upo_fast.sampling.dream_blocks``),
on the native tiny Dream (the only kind with a KV cache).

Its tokens against Fast-dLLM's own are checked by ``test_cache_fastdllm.py`` (recorded fixtures); here what holds
by construction: each row of a left-padded batch gets the tokens of its prompt alone, the prefix and the dual cache
fill every position and are really cached (they differ, and the dual one runs fewer rows), the number of forwards,
one cache per call, ``num_return_sequences``, the history, and the ValueErrors of the block-mode rules.
"""

import contextlib

import pytest
import torch
from native_factories import make_native_dream
from tiny_models import left_padded_batch, make_dream_like

import upo_fast
from upo_fast.sampling.adapters import MDMAdapter
from upo_fast.sampling.dream_dropin import DreamOptions

VOCAB, MASK, PAD = 320, 317, 0
NEW, BLOCK = 16, 4
THRESHOLD = dict(alg="confidence_threshold", max_new_tokens=NEW, block_length=BLOCK, steps=8)


@pytest.fixture(scope="module")
def model():
    return make_native_dream(vocab_size=VOCAB, mask_id=MASK, seed=2, pad_id=PAD)


@pytest.fixture(scope="module")
def sharp_model():
    """Peaked enough that some confidences pass 0.5: rows then commit different numbers of positions a forward."""
    model = make_native_dream(vocab_size=VOCAB, mask_id=MASK, seed=2, pad_id=PAD)
    with torch.no_grad():
        model.lm_head.weight *= 4.0
    return model


@pytest.fixture(scope="module")
def batch():
    return left_padded_batch((5, 3, 7), 1, 300, PAD, seed=0)


@pytest.fixture(scope="module")
def prompt():
    """A prompt for which the prefix and the dual cache give different tokens."""
    return torch.randint(1, 300, (1, 5), generator=torch.Generator().manual_seed(4))


@contextlib.contextmanager
def forwards(model):
    """The number of rows of every forward run inside the block."""
    rows = []
    handle = model.register_forward_pre_hook(lambda _m, args, kwargs: rows.append(
        (args[0] if args else kwargs["input_ids"]).shape[1]), with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def generate(model, ids, attention_mask=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    return upo_fast.dream_generate(model, ids, attention_mask, **kwargs)


def masks_left_per_forward(out):
    return (torch.stack(out.history) == MASK).sum(-1).T.tolist()  # [B][forward]


@pytest.mark.parametrize("kwargs", [
    dict(THRESHOLD, threshold=0.5, block_length=8),
    dict(THRESHOLD, threshold=0.5, block_length=8, dual_cache=True),
    dict(THRESHOLD, alg="entropy"),
    dict(THRESHOLD, alg="entropy", dual_cache=True),
], ids=["threshold-prefix", "threshold-dual", "entropy-prefix", "entropy-dual"])
def test_left_padded_rows_get_the_tokens_of_their_prompt_alone(sharp_model, batch, kwargs):
    ids, mask = batch
    out = generate(sharp_model, ids, mask, return_dict_in_generate=True, output_history=True, **kwargs)
    assert not (out.sequences == MASK).any()
    for row, length in enumerate(mask.sum(-1).tolist()):
        alone = generate(sharp_model, ids[row:row + 1, -length:], **kwargs)
        assert torch.equal(out.sequences[row, -(length + NEW):], alone[0]), row
    if kwargs["alg"] == "confidence_threshold":  # the rule is per row: the rows do not fill in step
        assert len({tuple(left) for left in masks_left_per_forward(out)}) > 1


def test_prefix_and_dual_caches_fill_every_position_and_differ(model, prompt):
    with forwards(model) as prefix_rows:
        prefix = generate(model, prompt, **THRESHOLD)
    with forwards(model) as dual_rows:
        dual = generate(model, prompt, dual_cache=True, **THRESHOLD)
    assert not (prefix == MASK).any() and not (dual == MASK).any()
    assert not torch.equal(prefix, dual)  # the rows after the block come from the cache: it is real
    length, first = prompt.shape[1] + NEW, prompt.shape[1]
    starts = [first + b * BLOCK for b in range(NEW // BLOCK)]
    # threshold 0.9 is never reached here: the block start, then one position a forward
    assert prefix_rows == [n for s in starts for n in [length] + [length - s] * (BLOCK - 1)]
    assert dual_rows == [n for s in starts for n in [length] + [BLOCK] * (BLOCK - 1)]


@pytest.mark.parametrize("kwargs, expected", [
    # entropy: every step of the schedule, batch 1: blocks * steps_per_block
    (dict(THRESHOLD, alg="entropy", steps=16), 16),
    (dict(THRESHOLD, alg="entropy", dual_cache=True, steps=8), 8),
    # the threshold rule at its strictest: one position a forward
    (dict(THRESHOLD, threshold=1.0), NEW),
    # block_length 1: the block's first forward fills it; Fast-dLLM runs one more, unread, forward a block
    (dict(THRESHOLD, block_length=1, steps=NEW), NEW),
])
def test_forward_counts(model, prompt, kwargs, expected):
    with forwards(model) as rows:
        out = generate(model, prompt, **kwargs)
    assert len(rows) == expected
    assert not (out == MASK).any()


def test_one_step_per_block_commits_the_block_start_only_without_fastdllms_extra_forward(model, prompt):
    """Fast-dLLM's entropy loop starts at step 1, so with steps_per_block = 1 a block keeps all but its first
    position masked (reproduced); it runs a cached forward before it breaks (not run here)."""
    with forwards(model) as rows:
        out = generate(model, prompt, alg="entropy", max_new_tokens=NEW, block_length=8, steps=2)
    assert rows == [prompt.shape[1] + NEW] * 2
    generated = out[0, prompt.shape[1]:]
    assert (generated[[0, 8]] != MASK).all() and (generated[1:8] == MASK).all() and (generated[9:] == MASK).all()


def test_the_cache_is_allocated_once_per_call(model, prompt, monkeypatch):
    calls = []
    allocate = MDMAdapter.allocate_cache
    monkeypatch.setattr(MDMAdapter, "allocate_cache",
                        lambda self, *shape: calls.append(shape) or allocate(self, *shape))
    generate(model, prompt, **THRESHOLD)
    assert calls == [(1, prompt.shape[1] + NEW)]


@pytest.mark.parametrize("alg", ["confidence_threshold", "entropy"])
def test_num_return_sequences(model, batch, alg):
    ids, mask = batch
    kwargs = dict(THRESHOLD, alg=alg)
    out = generate(model, ids, mask, num_return_sequences=2, **kwargs)
    once = generate(model, ids, mask, **kwargs)
    assert out.shape == (2 * ids.shape[0], ids.shape[1] + NEW)
    assert torch.equal(out[0::2], once) and torch.equal(out[1::2], once)  # greedy: the copies agree


def test_history_holds_x_after_every_forward(model, prompt):
    with forwards(model) as rows:
        out = generate(model, prompt, return_dict_in_generate=True, output_history=True, **THRESHOLD)
    assert len(out.history) == len(rows)
    assert torch.equal(out.history[-1], out.sequences)
    left = masks_left_per_forward(out)[0]
    assert left == sorted(left, reverse=True) and left[-1] == 0


def test_sampling_is_reproducible_and_seeded(model, prompt):
    kwargs = dict(THRESHOLD, threshold=0.05, block_length=8, temperature=1.0, top_p=0.9)
    assert torch.equal(generate(model, prompt, seed=3, **kwargs), generate(model, prompt, seed=3, **kwargs))
    assert not torch.equal(generate(model, prompt, seed=3, **kwargs), generate(model, prompt, seed=4, **kwargs))


def test_block_mode_options():
    assert DreamOptions(alg="confidence_threshold").block_mode
    assert DreamOptions(alg="entropy", dual_cache=False).block_mode
    assert not DreamOptions(alg="entropy").block_mode
    options = DreamOptions.from_call(None, {"alg": "entropy", "block_length": 8, "dual_cache": True})
    assert (options.block_length, options.threshold, options.dual_cache) == (8, None, True)


ALGS = r"\('confidence_threshold', 'entropy'\)"


@pytest.mark.parametrize("kwargs, message", [
    ({"block_length": 4}, rf"^alg must be one of {ALGS} .*pass alg='entropy'"),
    ({"alg": "maskgit_plus", "dual_cache": True}, rf"^alg must be one of {ALGS}"),
    ({"alg": "entropy", "threshold": 0.5}, r"^threshold must be None unless alg='confidence_threshold'"),
    ({"alg": "confidence_threshold", "threshold": 0}, r"^threshold must be a finite number in \(0, 1\]"),
    ({"alg": "confidence_threshold", "threshold": 1.5}, r"^threshold must be a finite number in \(0, 1\]"),
    ({"alg": "confidence_threshold", "block_length": 0}, r"^block_length must be an integer >= 1"),
    ({"alg": "confidence_threshold", "block_length": 4.0}, r"^block_length must be an integer >= 1"),
    ({"alg": "entropy", "dual_cache": "yes"}, r"^dual_cache must be True, False or None, got 'yes'$"),
    ({"alg": "entropy", "block_length": 4, "generation_tokens_hook_func": lambda i, x, logits: x},
     r"^generation_tokens_hook_func is not supported in block mode"),
    ({"alg": "confidence_threshold", "generation_logits_hook_func": lambda i, x, logits: logits},
     r"^generation_logits_hook_func is not supported in block mode"),
    ({"alg": "confidence_threshold"}, r"^block_length \(32\) must divide the generation length \(20 = "),
    ({"alg": "confidence_threshold", "max_new_tokens": 10, "block_length": 4},
     r"^block_length \(4\) must divide the generation length \(10"),
    ({"alg": "entropy", "max_new_tokens": NEW, "block_length": BLOCK, "steps": 6},
     r"^steps \(6\) must be a multiple of the number of blocks \(4 = "),
])
def test_block_mode_rules_are_one_line_value_errors(model, prompt, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        upo_fast.dream_generate(model, prompt, **kwargs)
    assert "\n" not in str(error.value)


def test_a_model_that_commits_the_mask_token_ends_each_block_after_block_length_forwards(prompt):
    """All-zero logits: every argmax is token 0, here the mask token, so a committed position stays masked.
    Fast-dLLM's threshold loop never ends then; here a block ends after ``block_length`` threshold forwards."""
    blank = make_native_dream(vocab_size=VOCAB, mask_id=0, seed=2, pad_id=None)
    with torch.no_grad():
        blank.lm_head.weight.zero_()
    with forwards(blank) as rows:
        out = generate(blank, prompt, mask_token_id=0, **THRESHOLD)
    assert len(rows) == (NEW // BLOCK) * (1 + BLOCK)
    assert (out[0, prompt.shape[1]:] == 0).all()


@pytest.mark.parametrize("alg", ["confidence_threshold", "entropy"])
def test_non_finite_logits_name_the_forward(prompt, alg):
    broken = make_native_dream(vocab_size=VOCAB, mask_id=MASK, seed=2, pad_id=PAD)
    with torch.no_grad():
        broken.lm_head.weight[5] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite logits .* at step 0 "):
        upo_fast.dream_generate(broken, prompt, **dict(THRESHOLD, alg=alg))


def test_a_model_without_a_cache_is_refused(prompt):
    standin = make_dream_like(vocab_size=VOCAB, mask_id=MASK, seed=2, pad_id=PAD)
    with pytest.raises(ValueError, match="needs the KV cache of upo_fast's native LLaDA or Dream"):
        upo_fast.dream_generate(standin, prompt, **THRESHOLD)
