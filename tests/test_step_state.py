"""The sampler's step state (``upo_fast.sampling.step_state.StepState``): the one object a step writes, which CUDA-graph
capture saves and restores field by field; and the one builder of a call's ``SamplingOptions``."""

import contextlib
import dataclasses
import inspect
from types import SimpleNamespace

import pytest
import torch

import upo_fast
from upo_fast.sampling import cuda_graphs
from upo_fast.sampling import loop as loop_module
from upo_fast.sampling.adapters import MDMAdapter
from upo_fast.sampling.loop import SamplingOptions, _Loop
from upo_fast.sampling.step_state import StepState

VOCAB, MASK = 13, 12
SEEDS = {"token_seed", "position_seed"}


@dataclasses.dataclass(frozen=True)
class GrownState(StepState):
    """A state with one more buffer, as a future step might need: the helpers must pick it up unasked."""

    extra: torch.Tensor | None = None


@pytest.fixture(scope="module")
def model():
    from upo_fast.models import TinyMDM, TinyMDMConfig

    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK)
    return TinyMDM(config).eval()


def masked(batch=2, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, MASK, (batch, length), generator=g)
    return x.masked_fill(torch.rand(batch, length, generator=g) < 0.6, MASK)


def grown(state: StepState) -> GrownState:
    return GrownState(**{f.name: getattr(state, f.name) for f in dataclasses.fields(state)}, extra=torch.zeros(3))


def test_every_field_is_a_tensor_the_helpers_list():
    names = {f.name for f in dataclasses.fields(StepState)}
    assert {"x", "row_steps", "step_index", "bad_step", "policy_bad_step"} | SEEDS == names
    assert set(StepState.start(masked(), seeds=True).tensors()) == names
    assert set(StepState.start(masked(), seeds=False).tensors()) == names - SEEDS  # the torch path has no seeds
    assert set(grown(StepState.start(masked(), seeds=True)).tensors()) == names | {"extra"}


@pytest.mark.parametrize("extend", [False, True])
def test_restore_writes_every_field_back_in_place(extend):
    state = StepState.start(masked(), seeds=True, generator=torch.Generator().manual_seed(1))
    state = grown(state) if extend else state
    saved = state.snapshot()
    assert set(saved) == {f.name for f in dataclasses.fields(state)}
    addresses = {name: t.data_ptr() for name, t in state.tensors().items()}
    for name, t in state.tensors().items():
        assert t.data_ptr() != saved[name].data_ptr()  # a copy, not a view the steps would overwrite
        t.add_(7)
    state.restore(saved)
    for name, t in state.tensors().items():
        assert torch.equal(t, saved[name]), name
        assert t.data_ptr() == addresses[name], name  # the same buffer: a captured graph still sees it


def test_the_state_is_never_reassigned_and_holds_all_a_step_writes(model):
    loop = _Loop(MDMAdapter(model), masked(), None, SamplingOptions(scorer="margin"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        loop.state.x = loop.state.x.clone()
    before = {name: t.clone() for name, t in loop.state.tensors().items()}
    addresses = {name: t.data_ptr() for name, t in loop.state.tensors().items()}
    loose = {name: v.clone() for name, v in vars(loop).items() if torch.is_tensor(v)}
    with torch.no_grad():
        loop.step(0, loop.x.shape[1], torch.ones(loop.x.shape[0], dtype=torch.long))
    assert {name: t.data_ptr() for name, t in loop.state.tensors().items()} == addresses
    assert not torch.equal(loop.state.x, before["x"]) and int(loop.state.step_index) == 1
    for name, value in loose.items():  # a tensor the step writes outside the state would escape graph capture
        assert torch.equal(getattr(loop, name), value), name


def fake_cuda(monkeypatch):
    """The CUDA-graph API as no-ops on the CPU: capture then runs its two steps (warm-up, recording) eagerly."""
    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(cuda_graphs, "unsupported", lambda loop: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: SimpleNamespace())
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())


def test_capture_restores_the_whole_state_including_a_new_field(model, monkeypatch):
    fake_cuda(monkeypatch)
    options = SamplingOptions(backend="triton", temperature=1.0, fused_head=False)  # seeds in the state
    loop = _Loop(MDMAdapter(model), masked(), None, options, generator=torch.Generator().manual_seed(2))
    loop.state = grown(loop.state)
    graphed = cuda_graphs.GraphedSteps(loop)
    before = {name: t.clone() for name, t in loop.state.tensors().items()}
    assert set(before) == {f.name for f in dataclasses.fields(GrownState)}
    eager_step, seen = loop.step, []

    def step(*args, **kwargs):
        eager_step(*args, **kwargs)
        loop.state.extra.add_(1)  # the new buffer, written by the step like the others
        seen.append({name: t.clone() for name, t in loop.state.tensors().items()})

    loop.step = step
    with torch.no_grad():
        graphed._capture(0, loop.x.shape[1])
    assert len(seen) == 2 and int(seen[-1]["step_index"]) == 2 and int(seen[-1]["extra"][0]) == 2
    assert all(not torch.equal(seen[-1][name], before[name]) for name in ("row_steps", *SEEDS))  # counts k = 0
    for name, t in loop.state.tensors().items():  # what the two capture steps wrote is gone, every field
        assert torch.equal(t, before[name]), name


def test_unmask_and_generate_build_their_options_in_one_place(model, monkeypatch):
    built, begin = [], loop_module._begin

    def spy(call):
        built.append(begin(call))
        return built[-1]

    monkeypatch.setattr(loop_module, "_begin", spy)
    upo_fast.unmask(model, masked(), scorer="low_confidence", temperature=0.5, suppress_tokens=[3])
    upo_fast.generate(model, masked(batch=1, length=4), gen_length=4, block_length=4, steps=2, scorer="low_confidence",
                      temperature=0.5, suppress_tokens=[3])
    want = SamplingOptions(scorer="max_confidence", temperature=0.5, suppress_tokens=(3,))
    assert [options for options, _ in built] == [want, want]


@pytest.mark.parametrize("entry", [loop_module.unmask, loop_module.generate])
def test_every_option_is_a_keyword_of_both_entry_points_with_its_default(entry):
    params = inspect.signature(entry).parameters
    names = [f.name for f in dataclasses.fields(SamplingOptions)]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in names)
    assert SamplingOptions(**{name: params[name].default for name in names}) == SamplingOptions()
