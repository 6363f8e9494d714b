"""The generic sampler (unmask / generate), its scorers and selection rule, and its bad-input errors."""

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

import upo_fast
from upo_fast.kernels.vocab_stats import vocab_stats_ref
from upo_fast.ops import select_positions
from upo_fast.sampling.scorers import HEURISTICS, SCORERS, ScoringContext, resolve_scorer

VOCAB, MASK = 13, 12


class TableModel(nn.Module):
    """logits[b, i] = table[i] (+ a per-token bias so rows differ): a model whose preferences we control."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.calls = 0
        self.seen = []  # the inputs of every call

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        self.seen.append(input_ids.clone())
        logits = self.table[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1).clone()
        return MaskedLMOutput(logits=logits)


@pytest.fixture
def tiny_mdm():
    from upo_fast.models import TinyMDM, TinyMDMConfig

    torch.manual_seed(0)
    config = TinyMDMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK)
    return TinyMDM(config).eval()


def masked_batch(batch=3, length=20, seed=0, p=0.6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, MASK, (batch, length), generator=g)
    return x.masked_fill(torch.rand(batch, length, generator=g) < p, MASK)


@pytest.mark.parametrize("scorer", sorted(set(SCORERS) - {"policy"}))
def test_unmask_fills_every_mask_and_keeps_the_rest(tiny_mdm, scorer):
    x = masked_batch()
    out = upo_fast.unmask(tiny_mdm, x, scorer=scorer, generator=torch.Generator().manual_seed(1))
    assert not (out == MASK).any()
    assert torch.equal(out[x != MASK], x[x != MASK])


def test_one_position_per_step_follows_max_confidence_order():
    # confidence of position i rises with i: max-confidence must fill right to left, one cell per step
    length = 6
    table = torch.zeros(length, VOCAB)
    for i in range(length):
        table[i, i % MASK] = 1.0 + i
    model = TableModel(table)
    x = torch.full((1, length), MASK)
    out = upo_fast.unmask(model, x, scorer="max_confidence", mask_id=MASK)
    seen = model.seen
    assert out.tolist() == [[i % MASK for i in range(length)]]
    filled_after_each_step = [int((s != MASK).sum()) for s in seen]
    assert filled_after_each_step == list(range(length))
    assert (seen[1] != MASK).nonzero()[:, 1].tolist() == [length - 1]  # the most confident went first


def test_margin_and_entropy_use_their_own_statistics():
    # position 0: high top-1 but a close runner-up (small margin); position 1: flatter top-1, big margin
    table = torch.full((2, VOCAB), -10.0)
    table[0, 0], table[0, 1] = 5.0, 4.9
    table[1, 2] = 3.0
    stats = vocab_stats_ref(table)
    assert stats.confidence[0] < stats.confidence[1] or stats.margin[0] < stats.margin[1]
    cand = torch.ones(1, 2, dtype=torch.bool)
    resh = lambda t: t.view(1, 2, *t.shape[1:])  # noqa: E731
    stats2d = type(stats)(*(resh(t) for t in stats))
    ctx = ScoringContext()
    assert SCORERS["margin"](stats2d, cand, ctx).scores.argmax().item() == 1
    assert SCORERS["entropy"](stats2d, cand, ctx).scores.argmax().item() == 1


def test_select_positions_per_row_counts_and_candidates():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    cand = torch.tensor([[True, False, True, True], [True, True, True, True]])
    sel = select_positions(scores, cand, torch.tensor([2, 1]), temperature=0.0)
    assert sel.tolist() == [[False, False, True, True], [False, False, True, False]]
    # stochastic with equal scores: every candidate is reachable, non-candidates never
    counts = torch.zeros(4)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        counts += select_positions(torch.zeros(1, 4), cand[:1], torch.tensor([1]), generator=g)[0].float()
    assert counts[1] == 0 and (counts[[0, 2, 3]] > 90).all()


def test_topk_scorer_only_picks_among_the_k_most_confident():
    table = torch.zeros(8, VOCAB)
    for i in range(8):
        table[i, 0] = float(i)  # confidence rises with position
    model = TableModel(table)
    x = torch.full((1, 8), MASK)
    firsts = set()
    for seed in range(30):
        seen = model.seen = []
        upo_fast.unmask(model, x, scorer="topk", topk=3, mask_id=MASK, generator=torch.Generator().manual_seed(seed))
        firsts.add(int((seen[1] != MASK).nonzero()[0, 1]))
    assert firsts == {5, 6, 7}


def test_topk_scorer_keeps_exactly_k_candidates_when_confidences_tie():
    # positions 1..6 tie at the top: the Top-K rule (upo_fast.ops.topk_candidates) keeps K of them, the lower positions
    table = torch.zeros(8, VOCAB)
    table[1:7, 0] = 5.0
    stats = vocab_stats_ref(table)
    stats = type(stats)(*(t.unsqueeze(0) for t in stats))
    cand = torch.ones(1, 8, dtype=torch.bool)
    cand[0, 2] = False
    scored = SCORERS["topk"](stats, cand, ScoringContext(topk=3, backend="torch"))
    assert scored.candidates[0].nonzero().flatten().tolist() == [1, 3, 4]
    assert torch.isfinite(scored.scores).sum() == 3
    # through the sampler: the first commit is always one of those three
    model = TableModel(table)
    firsts = set()
    for seed in range(30):
        seen = model.seen = []
        upo_fast.unmask(model, torch.full((1, 8), MASK), scorer="topk", topk=3, mask_id=MASK, backend="torch",
                        generator=torch.Generator().manual_seed(seed))
        firsts.add(int((seen[1] != MASK).nonzero()[0, 1]))
    assert firsts == {1, 2, 3}


def test_left_padding_is_never_unmasked_and_rows_are_independent(tiny_mdm):
    x = masked_batch(batch=2, length=12, seed=3)
    attn = torch.ones_like(x)
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), x], 1)
    attn = torch.cat([torch.zeros(2, 3, dtype=torch.long), attn], 1)
    out = upo_fast.unmask(tiny_mdm, padded, attention_mask=attn)
    assert torch.equal(out[:, :3], padded[:, :3])
    assert not (out[:, 3:] == MASK).any()
    # row 0 alone gives the same tokens as row 0 in the batch (no cross-row leakage)
    alone = upo_fast.unmask(tiny_mdm, padded[:1], attention_mask=attn[:1])
    assert torch.equal(alone[0], out[0])


def test_generate_appends_and_fills_blocks(tiny_mdm):
    prompt = torch.randint(0, MASK, (2, 5))
    out = upo_fast.generate(tiny_mdm, prompt, gen_length=12, block_length=4, steps=6)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt) and not (out == MASK).any()
    cfg = upo_fast.generate(tiny_mdm, prompt, gen_length=12, block_length=4, steps=6, cfg_scale=1.0)
    assert cfg.shape == out.shape and not (cfg == MASK).any()


def test_threshold_commits_several_per_step_and_finishes_early():
    table = torch.full((10, VOCAB), -20.0)
    table[:, 1] = 20.0  # every position is certain
    model = TableModel(table)
    out = upo_fast.unmask(model, torch.full((1, 10), MASK), steps=10, threshold=0.9, mask_id=MASK)
    assert (out == 1).all() and model.calls == 1


def test_temperature_sampling_is_reproducible_with_a_generator(tiny_mdm):
    x = masked_batch(seed=4)
    a = upo_fast.unmask(tiny_mdm, x, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = upo_fast.unmask(tiny_mdm, x, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = upo_fast.unmask(tiny_mdm, x, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_policy_scorer_uses_the_policy_scores_and_hidden_state(tiny_mdm):
    seen = {}

    def policy(hidden, stats, candidates):
        seen["hidden"] = hidden.shape
        return torch.arange(candidates.shape[1], dtype=torch.float32).expand_as(candidates)  # rightmost first

    x = torch.full((1, 6), MASK)
    out = upo_fast.unmask(tiny_mdm, x, steps=6, scorer="policy", policy=policy, position_temperature=0.0)
    assert seen["hidden"] == (1, 6, 32) and not (out == MASK).any()


# ---- bad input: one test each ---------------------------------------------------------------------------------

def test_unknown_scorer(tiny_mdm):
    with pytest.raises(ValueError, match="unknown scorer 'best'.*max_confidence"):
        upo_fast.unmask(tiny_mdm, masked_batch(), scorer="best")
    assert resolve_scorer("low_confidence") == "max_confidence" and "origin" in HEURISTICS


def test_gen_length_not_a_multiple_of_block_length(tiny_mdm):
    with pytest.raises(ValueError, match="gen_length"):
        upo_fast.generate(tiny_mdm, torch.zeros(1, 3, dtype=torch.long), gen_length=10, block_length=4, steps=5)


def test_steps_not_divisible_by_blocks(tiny_mdm):
    with pytest.raises(ValueError, match="steps .* multiple of the number of blocks"):
        upo_fast.generate(tiny_mdm, torch.zeros(1, 3, dtype=torch.long), gen_length=8, block_length=4, steps=3)


def test_more_steps_than_masks(tiny_mdm):
    x = masked_batch()
    most = int((x == MASK).sum(1).max())
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, "):
        upo_fast.unmask(tiny_mdm, x, steps=most + 1)
    with pytest.raises(ValueError, match="steps per block"):
        upo_fast.generate(tiny_mdm, torch.zeros(1, 3, dtype=torch.long), gen_length=8, block_length=4, steps=10)


def test_mask_id_outside_vocabulary(tiny_mdm):
    with pytest.raises(ValueError, match="mask_id=99 is outside the vocabulary"):
        upo_fast.unmask(tiny_mdm, masked_batch(), mask_id=99)


def test_token_ids_outside_vocabulary(tiny_mdm):
    with pytest.raises(ValueError, match="x holds token ids outside the vocabulary"):
        upo_fast.unmask(tiny_mdm, torch.full((1, 4), 50))


def test_pad_id_equal_to_mask_id(tiny_mdm):
    x = torch.tensor([[MASK, MASK, 3, MASK]])
    with pytest.raises(ValueError, match="pad id must differ from mask_id"):
        upo_fast.unmask(tiny_mdm, x, attention_mask=torch.tensor([[0, 0, 1, 1]]))


def test_attention_mask_shape_mismatch(tiny_mdm):
    with pytest.raises(ValueError, match="attention_mask must be a 0/1 tensor of shape"):
        upo_fast.unmask(tiny_mdm, masked_batch(batch=2, length=8), attention_mask=torch.ones(2, 7))


def test_non_finite_logits():
    table = torch.zeros(4, VOCAB)
    table[2] = float("nan")
    with pytest.raises(ValueError, match="non-finite logits"):
        upo_fast.unmask(TableModel(table), torch.full((1, 4), MASK), mask_id=MASK)


def test_generic_model_needs_a_mask_id():
    with pytest.raises(ValueError, match="mask_id is required"):
        upo_fast.unmask(TableModel(torch.zeros(4, VOCAB)), torch.full((1, 4), MASK))


def test_generate_on_dream_and_llada_batched_with_left_padding_equals_row_by_row():
    from tiny_models import left_padded_batch, make_dream_like, make_llada_like

    dream = make_dream_like(vocab_size=64, mask_id=63, seed=1, pad_id=0)
    llada = make_llada_like(vocab_size=64, mask_id=63, seed=1)
    ids, attn = left_padded_batch((4, 2, 6), 1, 60, pad_id=0, seed=2)
    for model in (dream, llada):
        batched = upo_fast.generate(model, ids, attn, gen_length=8, block_length=4, steps=4, scorer="margin")
        assert not (batched[:, ids.shape[1]:] == 63).any()
        if model is dream:  # Dream's positions come from the mask, so a padded row equals the row alone
            for row in range(3):
                keep = attn[row].bool()
                alone = upo_fast.generate(model, ids[row:row + 1, keep], gen_length=8, block_length=4, steps=4,
                                          scorer="margin")
                assert torch.equal(alone[0, -8:], batched[row, -8:])


@pytest.mark.gpu
@pytest.mark.parametrize("scorer", ["max_confidence", "topk", "softmax_confidence", "origin"])
def test_a_step_never_waits_on_the_host(scorer):
    from upo_fast.models import TinyMDM, TinyMDMConfig
    from upo_fast.sampling.adapters import MDMAdapter
    from upo_fast.sampling.loop import SamplingOptions, _Loop

    config = TinyMDMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK)
    model = TinyMDM(config).cuda().eval()
    x = masked_batch().cuda()
    loop = _Loop(MDMAdapter(model), x, None, SamplingOptions(scorer=scorer))
    k = torch.ones(x.shape[0], dtype=torch.long, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            loop.step(0, x.shape[1], k, transfer_prob=0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_factor_rule_walks_the_scorer_order():
    from upo_fast.sampling.schedules import factor_select

    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.5, 0.4, 0.3, 0.2]])
    cand = torch.tensor([[True, True, True, True], [True, False, True, True]])
    conf = torch.tensor([[0.99, 0.9, 0.5, 0.99], [0.8, 0.99, 0.99, 0.99]])
    # row 0: n=1: 2*0.01 < 0.5 ok; n=2: 3*0.1 < 0.5 ok; n=3: 4*0.5 fails -> stop (the 0.99 at rank 4 is not reached)
    # row 1: n=1 (conf 0.8): 2*0.2 = 0.4 < 0.5 ok; n=2 (pos 2): 3*0.01 ok; n=3 (pos 3): 4*0.01 ok
    assert factor_select(scores, cand, conf, 0.5).tolist() == [[True, True, False, False],
                                                                 [True, False, True, True]]
    assert not factor_select(scores, cand, conf, 0.01).any()


@pytest.mark.parametrize("rule", [dict(threshold=0.05), dict(factor=10.0)])  # an untrained model: low confidences
def test_parallel_rules_use_fewer_steps_and_fill_everything(tiny_mdm, rule):
    x = masked_batch(batch=4, length=20, p=0.8)
    one, steps_one = upo_fast.unmask(tiny_mdm, x, return_steps=True)
    par, steps_par = upo_fast.unmask(tiny_mdm, x, return_steps=True, **rule)
    assert torch.equal(steps_one, (x == MASK).sum(1))
    assert not (par == MASK).any() and torch.equal(par[x != MASK], x[x != MASK])
    assert (steps_par <= steps_one).all() and steps_par.sum() < steps_one.sum()


def test_cuda_graph_needs_cuda(tiny_mdm):
    with pytest.raises(ValueError, match="cuda_graph=True: CUDA graphs need CUDA tensors"):
        upo_fast.unmask(tiny_mdm, masked_batch(), cuda_graph=True)
