"""Cached generation (Fast-dLLM's prefix and dual KV caches) in the native models and in ``upo_fast.generate``.

What the cache must do, checked on tiny random native LLaDA/Dream models: a forward over a slice of rows with a
filled cache gives those rows' states exactly; the buffers are allocated once per call and written in place; a
cached step runs only its rows; every scorer works, the policy reading the hidden states of the positions it scores
from the step's own forward; left-padded rows get what the same prompt gets alone; bad combinations are one clear
ValueError. Token equality with Fast-dLLM's own code is in test_cache_fastdllm.py."""

from __future__ import annotations

import pytest
import torch
from native_factories import make_native_dream, make_native_llada
from tiny_models import make_llada_like

import upo_fast
from upo_fast.models import kv_cache
from upo_fast.models.kv_cache import allocate_cache
from upo_fast.sampling.commit_rules import ScheduleAndThreshold, Threshold

VOCAB, MASK, PROMPT = 120, 117, 7
MAKERS = {"llada": make_native_llada, "dream": make_native_dream}


def make(family: str, **kw):
    return MAKERS[family](vocab_size=VOCAB, mask_id=MASK, n_kv_heads=2, pad_id=None, **kw)


def prompt(batch=2, length=PROMPT, seed=0):
    return torch.randint(0, MASK - 2, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", MAKERS)
@pytest.mark.parametrize("rows", [(0, 19), (8, 12), (8, 19), (18, 19)])
def test_a_cached_slice_gives_the_full_forward_rows(family, rows):
    model = make(family)
    x = prompt(2, 19, seed=1)
    full = model.final_hidden_states(x)
    cache = allocate_cache(model, 2, 19)
    model.final_hidden_states(x, cache=cache, start=0)  # fills every row
    first, last = rows
    got = model.final_hidden_states(x[:, first:last], cache=cache, start=first)
    torch.testing.assert_close(got, full[:, first:last], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", MAKERS)
def test_a_cached_forward_reads_the_other_rows_from_the_cache(family):
    """Change a token outside the slice after filling: the slice does not see it (the cache is what it reads)."""
    model = make(family)
    x = prompt(1, 16, seed=2)
    cache = allocate_cache(model, 1, 16)
    model.final_hidden_states(x, cache=cache, start=0)
    before = model.final_hidden_states(x[:, 8:12], cache=cache, start=8)
    changed = x.clone()
    changed[:, 2] = (changed[:, 2] + 1) % (MASK - 2)
    after = model.final_hidden_states(changed[:, 8:12], cache=cache, start=8)
    assert torch.equal(before, after)
    assert not torch.allclose(model.final_hidden_states(changed)[:, 8:12], before)


def test_a_slice_outside_the_cache_is_refused():
    model = make("llada")
    cache = allocate_cache(model, 1, 10)
    with pytest.raises(ValueError, match="rows \\[8, 12\\)"):
        model.final_hidden_states(prompt(1, 4), cache=cache, start=8)


@pytest.mark.parametrize("family", MAKERS)
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_buffers_are_allocated_once_and_steps_run_their_rows(family, mode, monkeypatch):
    model = make(family)
    allocations, widths, addresses = [], [], set()
    real_allocate, real_write = kv_cache.KVCache.allocate.__func__, kv_cache.KVCache.write

    def allocate(cls, *args, **kwargs):
        allocations.append(args)
        return real_allocate(cls, *args, **kwargs)

    def write(self, layer, start, k, v):
        addresses.add((layer, self.keys[layer].data_ptr(), self.values[layer].data_ptr()))
        return real_write(self, layer, start, k, v)

    monkeypatch.setattr(kv_cache.KVCache, "allocate", classmethod(allocate))
    monkeypatch.setattr(kv_cache.KVCache, "write", write)
    first_block = model.model.transformer["blocks"][0] if family == "llada" else model.model.layers[0]
    first_block.register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[1]))
    upo_fast.generate(model, prompt(), gen_length=12, block_length=4, steps=12, cache=mode)
    assert len(allocations) == 1 and len(addresses) == 2  # one buffer pair per layer, the same every step
    length, shift = PROMPT + 12, int(family == "dream")  # Dream also runs the row before the block
    want = []
    for start in range(PROMPT, length, 4):
        cached = length - start + shift if mode == "prefix" else 4 + shift
        want += [length] + [cached] * 3
    assert widths == want


@pytest.mark.parametrize("family", MAKERS)
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("scorer", ["max_confidence", "margin", "entropy", "random", "topk", "softmax_confidence"])
def test_every_scorer_fills_every_position(family, mode, scorer):
    model = make(family)
    out = upo_fast.generate(model, prompt(), gen_length=8, block_length=4, steps=8, scorer=scorer, cache=mode,
                            generator=torch.Generator().manual_seed(0))
    assert not (out == MASK).any() and torch.equal(out[:, :PROMPT], prompt())


@pytest.mark.parametrize("family", MAKERS)
def test_the_policy_reads_the_block_states_of_the_steps_own_forward(family):
    """Under the dual cache the policy gets, for the block's positions, the input of the last layer computed by a
    forward over the block that attends to the cache filled at the block's first step."""
    model = make(family)
    seen = []

    def policy(hidden, stats, candidates):
        seen.append(hidden.clone())
        return stats.confidence
    x0 = prompt(1)
    out = upo_fast.generate(model, x0, gen_length=8, block_length=4, steps=8, scorer="policy", policy=policy,
                            cache="dual")
    assert [h.shape[1] for h in seen] == [4] * 8
    blocks = model.model.transformer["blocks"] if family == "llada" else model.model.layers
    captured = []
    blocks[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    # the second block's first step: a full forward of the sequence with the first block filled
    x = torch.cat([out[:, :PROMPT + 4], torch.full((1, 4), MASK)], dim=1)
    cache = allocate_cache(model, 1, PROMPT + 8)
    model.final_hidden_states(x, cache=cache, start=0)
    shift = int(family == "dream")
    expected = captured[-1][:, PROMPT + 4 - shift:PROMPT + 8 - shift]
    torch.testing.assert_close(seen[4], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("family", MAKERS)
def test_left_padded_rows_get_what_they_get_alone(family, mode):
    model = make(family)
    if family == "llada":
        model.mask_padding = True  # the official LLaDA attends to pads; this option hides them
    lengths, pad = (7, 4, 5), 0
    rows = [prompt(1, n, seed=10 + n) for n in lengths]
    batch = torch.full((3, max(lengths)), pad)
    mask = torch.zeros_like(batch)
    for i, row in enumerate(rows):
        batch[i, -row.shape[1]:], mask[i, -row.shape[1]:] = row, 1
    kw = dict(gen_length=8, block_length=4, steps=8, cache=mode, threshold=0.2)
    together = upo_fast.generate(model, batch, mask, **kw)
    for i, row in enumerate(rows):
        alone = upo_fast.generate(model, row, **kw)
        assert torch.equal(together[i, -alone.shape[1]:], alone[0]), f"row {i}"


def test_llada_attends_to_pads_unless_mask_padding():
    model = make("llada")
    x = prompt(1, 10)
    mask = torch.ones_like(x)
    mask[:, :3] = 0
    other = x.clone()
    other[:, :3] = 5  # different pad tokens
    def last(m, ids):
        return m.final_hidden_states(ids, mask)[:, -1]
    assert not torch.allclose(last(model, x), last(model, other))
    model.mask_padding = True
    torch.testing.assert_close(last(model, x), last(model, other), rtol=0, atol=1e-6)


def test_threshold_ignores_the_schedule_and_schedule_and_threshold_keeps_it():
    model = make("llada")
    widths = []
    model.model.transformer["blocks"][0].register_forward_pre_hook(lambda _m, a: widths.append(a[0].shape[1]))
    upo_fast.generate(model, prompt(1), gen_length=8, block_length=4, steps=2, threshold=0.999)
    assert len(widths) == 8  # nothing reaches 0.999: one commit a forward, four forwards a block
    widths.clear()
    upo_fast.generate(model, prompt(1), gen_length=8, block_length=4, steps=2, threshold=1e-6)
    assert len(widths) == 2  # everything passes: one forward a block
    widths.clear()
    upo_fast.generate(model, prompt(1), gen_length=8, block_length=4, steps=4, commit=ScheduleAndThreshold(0.999))
    assert len(widths) == 4  # the schedule's two a step
    assert upo_fast.generate(model, prompt(1), gen_length=8, block_length=4, steps=8, threshold=0.3).equal(
        upo_fast.generate(model, prompt(1), gen_length=8, block_length=4, steps=8, commit=Threshold(0.3)))


def test_bad_cache_combinations_are_one_clear_error():
    native = make("llada")
    ids = prompt(1)
    with pytest.raises(ValueError, match="cache must be None, 'prefix' or 'dual'"):
        upo_fast.generate(native, ids, gen_length=4, block_length=4, steps=4, cache="full")
    with pytest.raises(ValueError, match="cfg_scale=0"):
        upo_fast.generate(native, ids, gen_length=4, block_length=4, steps=4, cache="dual", cfg_scale=1.0)
    with pytest.raises(ValueError, match="unmask has one region"):
        upo_fast.unmask(native, torch.cat([ids, torch.full((1, 3), MASK)], 1), cache="prefix")
    with pytest.raises(ValueError, match="at most one of commit, threshold and factor"):
        upo_fast.generate(native, ids, gen_length=4, block_length=4, steps=4, threshold=0.9, factor=1.0)
    stand_in = make_llada_like(vocab_size=VOCAB, mask_id=MASK)  # learned positions: not LLaDA's layout
    with pytest.raises(ValueError, match="do not fit the native llada layout"):
        upo_fast.generate(stand_in, ids, gen_length=4, block_length=4, steps=4, cache="dual")
    with pytest.raises(ValueError, match="remasking"):
        upo_fast.llada_generate(native, ids, steps=4, gen_length=4, block_length=4, remasking="random",
                                threshold=0.9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cuda_graphs_replay_cached_steps(mode):
    model = make("llada").cuda()
    ids = prompt(2).cuda()
    kw = dict(gen_length=16, block_length=8, steps=16, cache=mode, fused_head=True, backend="triton")
    assert torch.equal(upo_fast.generate(model, ids, cuda_graph=True, **kw), upo_fast.generate(model, ids, **kw))


@pytest.mark.parametrize("family", MAKERS)
def test_a_model_without_the_cache_runs_on_its_native_twin(family):
    """A LLaDA / Dream from remote code (here: a native model with the native marker off, i.e. a model whose
    forward the adapter cannot give a cache) runs cached generation on a twin that shares its parameters."""
    from upo_fast.models.native_twin import native_twin

    native = make(family)
    remote = type("Remote", (type(native),), {"upo_native": False})(native.config)
    remote.load_state_dict(native.state_dict())
    remote.eval()
    twin = native_twin(remote)
    assert twin is native_twin(remote) and twin.upo_native
    assert all(a is b for a, b in zip(twin.parameters(), remote.parameters(), strict=True))  # shared, not copied
    kw = dict(gen_length=8, block_length=4, steps=8, cache="dual", threshold=0.2)
    assert torch.equal(upo_fast.generate(remote, prompt(), **kw), upo_fast.generate(native, prompt(), **kw))
