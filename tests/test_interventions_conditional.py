"""Conditional (CAST) steering: hand-computed gates, per-row exactness, KV-cache exactness, errors.

The gate is checked against an independent computation: each prompt run alone (no padding)
through a plain capture hook, the prompt activation averaged in numpy and its cosine with the
condition direction taken in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.interventions import load_intervention, save_intervention
from steerlens.interventions.conditional import (
    Conditional,
    choose_threshold,
    condition_similarity,
    gate_counts,
    hook_rank,
)
from steerlens.steer import Injection, steer, steered_forward
from steerlens.vectors import SteeringVector

PROMPTS = ["Hello there, friend", "Hi", "The cat sat on the mat", "zzz qqq", "Once upon a time",
           "1 2 3 4 5 6"]


def _vec(tiny, layers=(1,), seed=0, component="resid_pre", scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({lay: scale * torch.randn(tiny.cfg.d_model, generator=g)
                           for lay in layers}, component=component, model_id="tiny-random")


def _hand_similarity(tiny, prompts, cond: SteeringVector, read_at="mean") -> np.ndarray:
    """Each prompt alone: activation at the condition site, reduced in numpy, cosine in float64."""
    layer = cond.layers[0]
    name = runtime.hook_name(layer, cond.component)
    c = cond[layer].double().numpy()
    out = []
    for p in prompts:
        ids = runtime.prompt_ids(tiny, p, chat=False)
        batch = runtime.batch_from_ids(tiny, [(ids, 1 if len(ids) > 1 else 0)])
        store = {}

        def grab(act, hook, store=store):
            store["x"] = act[0].double().numpy()

        with runtime.attached(tiny, [(name, grab)]):
            runtime.forward(tiny, batch)
        x = store["x"]
        start = int(batch.span_start[0])
        h = x[start:].mean(0) if read_at == "mean" else x[-1]
        out.append(float(h @ c / (np.linalg.norm(h) * np.linalg.norm(c))))
    return np.array(out)


def _logits(tiny, batch, interventions=None):
    if interventions is None:
        return runtime.forward(tiny, batch)
    with steer(tiny, interventions) as s:
        return steered_forward(tiny, batch, s), s


@pytest.mark.parametrize("read_at", ["mean", "last"])
def test_gate_matches_hand_computation_and_rows_are_exact(tiny, read_at):
    cond = _vec(tiny, layers=(1,), seed=1)
    sims = _hand_similarity(tiny, PROMPTS, cond, read_at)
    thr = float(np.median(sims))  # half the rows open
    expect = sims > thr
    assert 0 < expect.sum() < len(PROMPTS)
    behaviour = _vec(tiny, layers=(1,), seed=2, component="resid_post", scale=3.0)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    base = runtime.forward(tiny, batch)
    full, _ = _logits(tiny, batch, Injection(behaviour))
    gated, s = _logits(tiny, batch, Conditional(Injection(behaviour), cond, thr, read_at=read_at))
    bound = s._bound[0]
    # batched/padded float32 vs one-at-a-time float64 similarity: 1e-5 absolute on a cosine
    np.testing.assert_allclose(bound.similarity.numpy(), sims, atol=1e-5, rtol=0)
    assert bound.gate.tolist() == expect.tolist()
    for i, open_ in enumerate(expect):
        # same batch, same hook arithmetic (scale 1 or 0 per row; adding 0 is exact)
        ref = full[i] if open_ else base[i]
        assert torch.equal(gated[i], ref), i
    # the unsteered similarity function computes the same numbers (batched float32 vs float64)
    np.testing.assert_allclose(condition_similarity(tiny, PROMPTS, cond, read_at=read_at,
                                                    chat=False), sims,
                               atol=1e-5, rtol=0)


def test_comparison_less_and_projection(tiny):
    cond = _vec(tiny, layers=(1,), seed=1)
    sims = condition_similarity(tiny, PROMPTS, cond, similarity="projection", chat=False)
    # projection = cosine * |h|: check one against the hand value
    cos = _hand_similarity(tiny, PROMPTS, cond)
    thr = float(np.median(sims))
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    behaviour = _vec(tiny, seed=2, component="resid_post")
    _, s = _logits(tiny, batch, Conditional(Injection(behaviour), cond, thr,
                                             similarity="projection", comparison="less"))
    assert s._bound[0].gate.tolist() == (sims < thr).tolist()
    assert (np.sign(sims) == np.sign(cos)).all()


def test_gate_reads_before_an_edit_at_the_same_hook(tiny):
    cond = _vec(tiny, layers=(1,), seed=1)
    sims = _hand_similarity(tiny, PROMPTS, cond)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    same_site = _vec(tiny, layers=(1,), seed=3, scale=50.0)  # huge edit at the condition site
    _, s = _logits(tiny, batch, Conditional(Injection(same_site), cond, 0.0))
    np.testing.assert_allclose(s._bound[0].similarity.numpy(), sims, atol=1e-5, rtol=0)


def test_cached_and_uncached_generation_agree(tiny):
    cond = _vec(tiny, layers=(0,), seed=1)
    sims = condition_similarity(tiny, PROMPTS, cond)
    thr = float(np.median(sims))
    open_ = sims > thr
    behaviour = _vec(tiny, layers=(1,), seed=4, scale=8.0)
    base = generate(tiny, PROMPTS, max_new_tokens=6, stop_at_eos=False)
    steered = {}
    for cache in (True, False):
        iv = Conditional(Injection(behaviour), cond, thr)
        steered[cache] = generate(tiny, PROMPTS, [iv], max_new_tokens=6, stop_at_eos=False,
                                  use_kv_cache=cache)
    assert steered[True].tokens == steered[False].tokens
    for i in range(len(PROMPTS)):
        if not open_[i]:
            assert steered[True].tokens[i] == base.tokens[i], i
    # the steering is strong enough to change at least one open row (else the test proves little)
    assert any(steered[True].tokens[i] != base.tokens[i] for i in range(len(PROMPTS)) if open_[i])


def test_generated_only_inner_before_condition_is_allowed_and_cache_exact(tiny):
    cond = _vec(tiny, layers=(1,), component="resid_post", seed=1)
    sims = condition_similarity(tiny, PROMPTS, cond)
    thr = float(np.median(sims))
    early = _vec(tiny, layers=(0,), seed=5, scale=8.0)
    iv = Conditional(Injection(early, positions="generated"), cond, thr)
    toks = [generate(tiny, PROMPTS, [iv], max_new_tokens=5, stop_at_eos=False,
                     use_kv_cache=c).tokens for c in (True, False)]
    assert toks[0] == toks[1]
    base = generate(tiny, PROMPTS, max_new_tokens=5, stop_at_eos=False).tokens
    for i in np.flatnonzero(~(sims > thr)):
        assert toks[0][i] == base[i]


def test_inner_writing_before_the_condition_is_refused(tiny):
    cond = _vec(tiny, layers=(1,), seed=1)
    early = _vec(tiny, layers=(0,), seed=5)
    with pytest.raises(ValueError, match="before the condition site"), \
            steer(tiny, Conditional(Injection(early), cond, 0.0)):
        pass
    # resid_post of the condition's block also comes after resid_pre of the same block: fine
    late = _vec(tiny, layers=(1,), component="resid_post", seed=5)
    with steer(tiny, Conditional(Injection(late), cond, 0.0)):
        pass
    # but resid_pre of block 1 comes before resid_post of block 1
    cond_post = _vec(tiny, layers=(1,), component="resid_post", seed=1)
    with pytest.raises(ValueError, match="before the condition site"), \
            steer(tiny, Conditional(Injection(_vec(tiny, layers=(1,))), cond_post, 0.0)):
        pass
    assert runtime.attached_hook_count(tiny) == 0


def test_hook_rank_orders_a_block():
    names = ["blocks.2.hook_resid_pre", "blocks.2.attn.hook_z", "blocks.2.hook_attn_out",
             "blocks.2.hook_resid_mid", "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post",
             "blocks.3.hook_resid_pre"]
    ranks = [hook_rank(n, 3 if n.startswith("blocks.3") else 2) for n in names]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)


def test_per_row_conditional_strength(tiny):
    cond = _vec(tiny, layers=(1,), seed=1)
    sims = condition_similarity(tiny, PROMPTS, cond, chat=False)
    thr = float(np.median(sims))
    behaviour = _vec(tiny, layers=(1,), seed=2, component="resid_post")
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    rows = [0.0, 1.0, 2.0, 0.5, -1.0, 3.0]
    with steer(tiny, [Conditional(Injection(behaviour, strength=2.0), cond, thr)]) as s:
        s.set_strength(0, rows)
        got = steered_forward(tiny, batch, s)
    gate = sims > thr
    with steer(tiny, [Injection(behaviour)]) as s:
        s.set_strength(0, [2.0 * r * g for r, g in zip(rows, gate)])
        ref = steered_forward(tiny, batch, s)
    # per-row strength 2*r*g computed in one product either way; float32 rounding of the product
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_choose_threshold_hand_examples():
    c = choose_threshold([0.1, 0.2, 0.3, 0.4], [False, False, True, True])
    assert c.threshold == pytest.approx(0.25) and c.value == 1.0
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 0, 0, 2) and c.precision == 1.0 and c.recall == 1.0
    less = choose_threshold([0.1, 0.2, 0.3, 0.4], [True, True, False, False], comparison="less")
    assert less.threshold == pytest.approx(0.25) and less.value == 1.0
    # overlapping classes: brute force over a fine grid of thresholds, criteria computed by hand
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(1, 1, 40), rng.normal(0, 1, 60)])
    y = np.arange(100) < 40
    for crit in ("f1", "youden"):
        got = choose_threshold(s, y, criterion=crit)
        best = -1.0
        for t in np.linspace(s.min() - 1, s.max() + 1, 20001):
            p = s > t
            tp, fp, fn, tn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum(), (~p & ~y).sum()
            v = 2 * tp / (2 * tp + fp + fn) if crit == "f1" else tp / (tp + fn) - fp / (fp + tn)
            best = max(best, v)
        assert got.value == pytest.approx(best, abs=1e-12)
        assert gate_counts(s, y, got.threshold) == (got.tp, got.fp, got.fn, got.tn)


def test_choose_threshold_bad_input():
    with pytest.raises(ValueError, match="both matching"):
        choose_threshold([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="criterion"):
        choose_threshold([0.1, 0.2], [True, False], criterion="auc")
    with pytest.raises(ValueError, match="same length"):
        choose_threshold([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="NaN"):
        choose_threshold([0.1, float("nan")], [True, False])


def test_bad_conditionals(tiny):
    beh = Injection(_vec(tiny, layers=(1,), component="resid_post"))
    with pytest.raises(ValueError, match="exactly one layer"):
        Conditional(beh, _vec(tiny, layers=(0, 1)), 0.0)
    with pytest.raises(ValueError, match="zero"):
        Conditional(beh, SteeringVector({1: torch.zeros(64)}), 0.0)
    with pytest.raises(ValueError, match="threshold"):
        Conditional(beh, _vec(tiny), float("nan"))
    with pytest.raises(ValueError, match="read_at"):
        Conditional(beh, _vec(tiny), 0.0, read_at="first")
    # a ValueError from __post_init__, or jaxtyping's TypeError when the suite type-checks
    with pytest.raises((ValueError, TypeError), match="inner"):
        Conditional(_vec(tiny), _vec(tiny), 0.0)


def test_save_load_round_trip(tiny, tmp_path):
    cond = _vec(tiny, layers=(1,), seed=1)
    iv = Conditional(Injection(_vec(tiny, layers=(1,), component="resid_post", seed=2), 1.5,
                               positions="generated"), cond, 0.125, read_at="last",
                     comparison="less", name="cast")
    save_intervention(iv, tmp_path / "c")
    back = load_intervention(tmp_path / "c", model=tiny)
    assert isinstance(back, Conditional)
    assert (back.threshold, back.read_at, back.comparison, back.name) == (0.125, "last", "less",
                                                                          "cast")
    assert back.inner.strength == 1.5 and back.inner.positions == "generated"
    assert torch.equal(back.condition[1], cond[1])
    assert torch.equal(back.inner.vector[1], iv.inner.vector[1])


def test_save_load_when_the_condition_is_the_inner_vector(tiny, tmp_path):
    # CAST with the behaviour direction as its own condition: both fields hold one tensor, which
    # safetensors refuses to save unless the writer copies it
    vec = _vec(tiny, layers=(1,), seed=3)
    iv = Conditional(Injection(vec, 2.0), vec, 0.1)
    save_intervention(iv, tmp_path / "same")
    back = load_intervention(tmp_path / "same", model=tiny)
    assert torch.equal(back.condition[1], vec[1]) and torch.equal(back.inner.vector[1], vec[1])


def test_gated_ablation_rows_match_full_ablation(tiny):
    from steerlens.interventions.ablation import Ablation

    cond = _vec(tiny, layers=(1,), seed=1)
    sims = condition_similarity(tiny, PROMPTS, cond, chat=False)
    thr = float(np.median(sims))
    abl = Ablation(_vec(tiny, layers=(1,), seed=6), layers=[1], components=["resid_mid",
                                                                             "resid_post"])
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    base = runtime.forward(tiny, batch)
    full, _ = _logits(tiny, batch, abl)
    gated, _ = _logits(tiny, batch, Conditional(abl, cond, thr))
    for i, open_ in enumerate(sims > thr):
        # per-row strength 1.0 vs the scalar 1.0: the same float32 ops up to association; 0 rows
        # subtract an exact 0
        if open_:
            torch.testing.assert_close(gated[i], full[i], atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(gated[i], base[i]), i
    # the default Ablation edits every layer, including resid_pre 0 before the condition: refused
    with pytest.raises(ValueError, match="before the condition site"), \
            steer(tiny, Conditional(Ablation(_vec(tiny, layers=(1,), seed=6)), cond, thr)):
        pass
