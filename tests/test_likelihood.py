"""``upo_fast.sampling.likelihood``: LLaDA's Monte-Carlo likelihood estimate (checked against a paraphrase of its
harness code on the same masks, and exactly for a one-token target) and the greedy check, on LLaDA and Dream."""

import pytest
import torch
import torch.nn.functional as F
from native_factories import make_native_dream, make_native_llada
from tiny_models import make_dream_like, make_llada_like

from upo_fast.sampling.adapters import wrap_model
from upo_fast.sampling.likelihood import greedy_reproduces, mc_loglikelihood, stratified_masks
from upo_fast.sampling.loop import unmask

SMALL = dict(vocab_size=400, mask_id=397)  # small vocabularies keep the tests fast
FACTORIES = {
    "llada-native": lambda: make_native_llada(**SMALL), "llada-standin": lambda: make_llada_like(**SMALL),
    "dream-native": lambda: make_native_dream(**SMALL, pad_id=396),
    "dream-standin": lambda: make_dream_like(**SMALL, pad_id=396),
    "llada-tied": lambda: make_llada_like(**SMALL, weight_tying=True),
}


@pytest.fixture(scope="module", params=list(FACTORIES))
def model(request):
    return FACTORIES[request.param]()


def official_estimate(model, prefix, target, masks_per_batch, cfg_scale=0.0):
    """LLaDA's ``get_loglikelihood`` (eval_llada.py), paraphrased, on given masks instead of its own draws: full
    logits of the noisy batch, CE at the masked target positions divided by the masked fraction, summed / b."""
    adapter = wrap_model(model)
    seq = torch.cat([prefix, target])[None]
    start, losses = len(prefix), []
    for masks in masks_per_batch:
        b = masks.shape[0]
        batch = seq.repeat(b, 1)
        is_mask = torch.cat([torch.zeros(b, start, dtype=torch.bool), masks], dim=1)
        noisy = torch.where(is_mask, adapter.mask_id, batch)
        p_mask = (masks.sum(1, keepdim=True) / len(target)).repeat(1, batch.shape[1])
        logits = adapter.logits(noisy, adapter.prepare_attention(None, *noisy.shape))
        if cfg_scale > 0:
            un = noisy.clone()
            un[:, :start] = adapter.mask_id
            un_logits = adapter.logits(un, adapter.prepare_attention(None, *un.shape))
            logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
        loss = F.cross_entropy(logits[is_mask].double(), batch[is_mask], reduction="none") / p_mask[is_mask]
        losses.append(float(loss.sum() / b))
    return -sum(losses) / len(losses)


def ids(*values):
    return torch.tensor(values, dtype=torch.long)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_equals_the_official_estimator_on_the_same_masks(model, cfg_scale):
    prefix, target = ids(11, 12, 13, 14), ids(21, 22, 23, 24, 25, 26, 27)
    batch, mc_num = 4, 12
    draws = torch.Generator().manual_seed(5)
    masks = [stratified_masks(batch, len(target), draws)[0] for _ in range(mc_num // batch)]
    ours = mc_loglikelihood(model, prefix, target, mc_num=mc_num, batch_size=batch, cfg_scale=cfg_scale,
                            generator=torch.Generator().manual_seed(5))
    assert ours == pytest.approx(official_estimate(model, prefix, target, masks, cfg_scale), rel=1e-4, abs=1e-4)


def test_one_token_targets_are_exact(model):
    adapter = wrap_model(model)
    prefix, target = ids(31, 32, 33), ids(44)
    x = torch.cat([prefix, ids(adapter.mask_id)])[None]
    exact = adapter.logits(x, adapter.prepare_attention(None, *x.shape))[0, -1].double().log_softmax(-1)[44]
    estimate = mc_loglikelihood(model, prefix, target, mc_num=4, batch_size=2, generator=torch.Generator())
    assert estimate == pytest.approx(float(exact), rel=1e-5)


def test_stratified_masks():
    masks, fraction = stratified_masks(5, 10, torch.Generator().manual_seed(0))
    counts = masks.sum(1)
    assert masks.shape == (5, 10) and torch.equal(fraction, counts.double() / 10)
    assert counts.min() >= 1 and counts.max() <= 10 and len(set(counts.tolist())) == 5  # spread over [1, T]
    gaps = sorted(counts.tolist())
    assert max(b - a for a, b in zip(gaps, gaps[1:])) <= 3  # ~T/b apart: stratified, not i.i.d.
    again, _ = stratified_masks(5, 10, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_deterministic_under_a_seed_and_checked():
    model = make_native_llada(**SMALL)
    prefix, target = ids(1, 2, 3), ids(4, 5, 6, 7)
    first = mc_loglikelihood(model, prefix, target, mc_num=8, batch_size=4, generator=torch.Generator().manual_seed(3))
    again = mc_loglikelihood(model, prefix, target, mc_num=8, batch_size=4, generator=torch.Generator().manual_seed(3))
    other = mc_loglikelihood(model, prefix, target, mc_num=8, batch_size=4, generator=torch.Generator().manual_seed(4))
    assert first == again != other and first < 0
    assert mc_loglikelihood(model, ids(), target, mc_num=4, batch_size=4) < 0  # an empty context is fine
    for kwargs, match in [(dict(mc_num=6, batch_size=4), "multiple of batch_size"), (dict(mc_num=0), "mc_num"),
                          (dict(cfg_scale=float("nan")), "cfg_scale")]:
        with pytest.raises(ValueError, match=match):
            mc_loglikelihood(model, prefix, target, **kwargs)
    with pytest.raises(ValueError, match="target"):
        mc_loglikelihood(model, prefix, ids())
    with pytest.raises(ValueError, match="mask id"):
        mc_loglikelihood(model, prefix, ids(4, wrap_model(model).mask_id))


def test_greedy_reproduces(model):
    adapter = wrap_model(model)
    prefix = ids(5, 6, 7, 8)
    x = torch.cat([prefix, torch.full((5,), adapter.mask_id)])[None]
    greedy = unmask(model, x, scorer="max_confidence")[0, 4:]
    assert greedy_reproduces(model, prefix, greedy)
    changed = greedy.clone()
    changed[2] = (changed[2] + 1) % adapter.mask_id
    assert not greedy_reproduces(model, prefix, changed)
