"""Sweep engine vs independent loops (KL vs scipy, batched vs per-strength generation), the tidy
table, summaries, per-layer effects, the random control and bad input, on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats
import torch

from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.methods import random_like
from steerlens.steer import steer, steered_forward
from steerlens.sweep import compare_random, layer_effect, sweep, zones
from steerlens.vectors import SteeringVector, SteeringVectorSet

PROMPTS = ["hi there", "a much longer prompt here, with commas", "x", "the cat"]
STRENGTHS = [-6.0, 0.0, 2.5, 6.0]


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(7)
    return SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)},
                          model_id="tiny-random")


def plain_kl(model, vector, layer, strength, prompts, positions="all", chat=False):
    """Independent loop: one prompt at a time (no padding), full forward + full unembed with the
    hook from steerlens.steer, softmax and KL in bits from scipy.

    Against the sweep (padded batches, reused prefix, strengths batched, last-position unembed):
    float32 logits agree to ~1e-6 relative, KLs of up to a few bits to ~1e-5; atol 1e-4 bits."""
    out = []
    for prompt in prompts:
        batch = runtime.encode_prompts(model, [prompt], chat=chat)
        base = runtime.forward(model, batch)[0, -1].double().numpy()
        with steer(model, vector.layer(layer), strength, positions) as st:
            steered = steered_forward(model, batch, st)[0, -1].double().numpy()
        p, q = scipy.special.softmax(base), scipy.special.softmax(steered)
        out.append(scipy.stats.entropy(p, q, base=2))
    return np.array(out)


@pytest.mark.parametrize("positions", ["all", "last", "first"])
def test_kl_matches_plain_loop(tiny, vec, positions):
    res = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, positions=positions, chat=False,
                batch_size=5, show_progress=False)
    t = res.table
    assert len(t) == 2 * len(STRENGTHS) * len(PROMPTS) == res.n_cells
    for layer in (0, 1):
        for s in STRENGTHS:
            got = t[(t.layer == layer) & (t.strength == s)].sort_values("prompt_idx")
            ref = plain_kl(tiny, vec, layer, s, PROMPTS, positions)
            np.testing.assert_allclose(got["kl_bits"].to_numpy(), ref, atol=1e-4, rtol=0)
    moved = t[t.strength != 0].kl_bits  # the comparison can fail: steering does move the KL
    assert (moved > 1e-7).all() and moved.max() > 0.1


@pytest.mark.parametrize("component", ["resid_post", "mlp_out", "attn_out"])
def test_kl_matches_plain_loop_other_components(tiny, vec, component):
    v = SteeringVector(dict(vec.directions), component=component)
    res = sweep(tiny, PROMPTS, v, layers=[0, 1], strengths=[-3.0, 4.0], chat=False, show_progress=False)
    t = res.table
    for layer in (0, 1):
        for s in (-3.0, 4.0):
            got = t[(t.layer == layer) & (t.strength == s)].sort_values("prompt_idx").kl_bits
            np.testing.assert_allclose(got.to_numpy(), plain_kl(tiny, v, layer, s, PROMPTS),
                                       atol=1e-4, rtol=0)


def test_forward_count_is_minimal(tiny, vec):
    res = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, chat=False, batch_size=64,
                show_progress=False)
    # one unsteered forward for the prompt chunk, one steered suffix forward per layer
    assert res.passes == {"base": 1, "steered": 2, "generate": 0, "perplexity": 0}
    res = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, chat=False, batch_size=5,
                show_progress=False)
    # rows per layer: 3 non-zero strengths x 4 prompts = 12 -> 3 forwards of <= 5 rows
    assert res.passes["steered"] == 2 * 3 and res.passes["base"] == 1


def test_several_vectors_and_chat(tiny, vec):
    other = SteeringVector({0: -vec[0] * 0.5, 1: vec[1] * 2.0})
    res = sweep(tiny, PROMPTS[:2], SteeringVectorSet({"a": vec, "b": other}), layers=[1],
                strengths=[3.0], chat=True, show_progress=False)
    assert list(dict.fromkeys(res.table.vector)) == ["a", "b"]
    for name, v in (("a", vec), ("b", other)):
        got = res.table[res.table.vector == name].sort_values("prompt_idx").kl_bits.to_numpy()
        np.testing.assert_allclose(got, plain_kl(tiny, v, 1, 3.0, PROMPTS[:2], chat=True),
                                   atol=1e-4)
    assert res.settings.chat is True and res.config["config"]["chat"] is True


def test_batched_generation_equals_per_strength_generate(tiny, vec):
    res = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, measures=("kl", "generate"),
                max_new_tokens=8, chat=False, batch_size=5, show_progress=False)
    t = res.table
    base = generate(tiny, PROMPTS, max_new_tokens=8, chat=False)
    assert list(res.baseline.text) == list(base.texts)
    for layer in (0, 1):
        for s in STRENGTHS:
            ref = (base if s == 0 else
                   generate(tiny, PROMPTS, vec.layer(layer), strength=s, max_new_tokens=8,
                            chat=False))
            got = t[(t.layer == layer) & (t.strength == s)].sort_values("prompt_idx")
            assert list(got.text) == list(ref.texts)
            changed = [a != b for a, b in zip(ref.tokens, base.tokens)]
            assert list(got.changed) == changed
    assert t[t.strength != 0].changed.any()
    # baseline generated once (one batch), then one batched call per (layer, row chunk)
    assert res.passes["generate"] == 1 + 2 * 3


def test_generation_measures_and_scorer_errors(tiny, vec):
    calls = []

    def flaky(text: str) -> float:
        calls.append(text)
        if len(calls) == 3:
            raise RuntimeError("scorer broke on this one")
        return float(len(text))

    res = sweep(tiny, PROMPTS[:3], vec, layers=[1], strengths=[0.0, 4.0], measures=("kl", "generate"),
                scorer=flaky, max_new_tokens=6, chat=False, show_progress=False)
    t = res.table
    # the scorer saw 3 baseline texts then 3 steered ones; the 3rd call (baseline of prompt 2,
    # reused for the strength-0 cell) failed and was recorded, not raised
    assert len(calls) == 6
    bad = t[t.error.notna()]
    assert len(bad) == 1 and bad.iloc[0].strength == 0.0 and bad.iloc[0].prompt_idx == 2
    assert "RuntimeError: scorer broke" in bad.iloc[0].error and math.isnan(bad.iloc[0].score)
    ok = t[t.error.isna()]
    np.testing.assert_array_equal(ok.score.to_numpy(), [float(len(x)) for x in ok.text])
    # perplexity of the steered continuation's tokens under the unsteered model, by hand
    steered = generate(tiny, PROMPTS[:3], vec.layer(1), strength=4.0, max_new_tokens=6,
                       chat=False)
    rows = t[t.strength == 4.0].sort_values("prompt_idx")
    assert list(rows.text) == list(steered.texts)
    for p, cont in enumerate(steered.tokens):
        ids = runtime.prompt_ids(tiny, PROMPTS[p], chat=False)
        with torch.no_grad():
            logp = tiny(torch.tensor([ids + list(cont)]))[0].double().log_softmax(-1)
        nll = -np.mean([float(logp[len(ids) - 1 + i, c]) for i, c in enumerate(cont)])
        # batched float32 vs one unpadded forward: mean NLL to ~1e-6, so ppl to ~1e-6 relative
        assert rows.iloc[p].perplexity == pytest.approx(math.exp(nll), rel=1e-5)


def test_table_summary_and_layer_effect(tiny, vec):
    res = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=[0.0, 3.0], measures=("kl", "generate"),
                scorer=lambda s: float(s.count("a")), max_new_tokens=5, chat=False,
                show_progress=False)
    t = res.table
    for col in ("vector", "layer", "strength", "prompt_idx", "kl_bits", "text", "changed",
                "score", "perplexity", "error"):
        assert col in t.columns
    assert (t[t.strength == 0.0].kl_bits == 0.0).all()  # strength 0 is the baseline: exact 0
    summ = res.summary(n_boot=500)
    assert len(summ) == 4 and (summ.n == len(PROMPTS)).all()
    # summaries vs pandas: float64 reductions of the same table, approx's default is ample
    for _, row in summ.iterrows():
        cell = t[(t.layer == row.layer) & (t.strength == row.strength)]
        assert row.kl_bits_mean == pytest.approx(cell.kl_bits.mean())
        assert row.changed_mean == pytest.approx(cell.changed.mean())
        assert row.kl_bits_low <= row.kl_bits_mean + 1e-12 <= row.kl_bits_high + 2e-12
    eff = layer_effect(res, "score")
    assert list(eff.layer) == [0, 1] and (eff.strength == 3.0).all() and (eff.n == 4).all()
    for _, row in eff.iterrows():
        cell = t[(t.layer == row.layer) & (t.strength == 3.0)].sort_values("prompt_idx")
        diff = cell.score.to_numpy() - res.baseline.score.to_numpy()
        assert row.effect == pytest.approx(diff.mean())
    kl_eff = layer_effect(res, "kl_bits", strength=3.0)
    assert kl_eff.effect.tolist() == pytest.approx(
        [t[(t.layer == lay) & (t.strength == 3.0)].kl_bits.mean() for lay in (0, 1)])
    z = zones(res)
    assert set(z.zone) <= {"unstable", "sweet spot", "frozen"}
    assert (z[z.strength == 0.0].zone == "frozen").all()
    with pytest.raises(ValueError, match="Unknown measure"):
        layer_effect(res, "accuracy")
    with pytest.raises(ValueError, match="not in this sweep"):
        layer_effect(res, "kl_bits", strength=7.0)


def test_random_control(tiny, vec):
    res = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=[0.0, 5.0], n_random=3, random_seed=10,
                chat=False, show_progress=False)
    names = list(dict.fromkeys(res.table.vector))
    assert names == ["vector", "random:10", "random:11", "random:12"]
    rnd = res.table[res.table.is_random]
    assert (rnd.control_for == "vector").all()
    # the random rows are exactly random_like(vector, seed) run through the same grid
    ref = plain_kl(tiny, random_like(vec, 11), 1, 5.0, PROMPTS)
    got = rnd[(rnd.vector == "random:11") & (rnd.layer == 1) & (rnd.strength == 5.0)]
    np.testing.assert_allclose(got.sort_values("prompt_idx").kl_bits, ref, atol=1e-4)
    cmp = compare_random(res, "kl_bits")
    assert len(cmp) == 4 and (cmp.n == 4).all() and (cmp.n_random == 3).all()
    for _, row in cmp[cmp.strength == 5.0].iterrows():
        real = res.table[(~res.table.is_random) & (res.table.layer == row.layer)
                         & (res.table.strength == 5.0)].kl_bits.mean()
        means = [rnd[(rnd.vector == n) & (rnd.layer == row.layer)
                     & (rnd.strength == 5.0)].kl_bits.mean() for n in names[1:]]
        # float64 means of the same table rows; the p-value is a count ratio
        assert row.real_mean == pytest.approx(real)
        assert row.random_low == pytest.approx(min(means))
        assert row.random_high == pytest.approx(max(means))
        assert row.p_value == pytest.approx((1 + sum(m >= real for m in means)) / 4)
    two = sweep(tiny, PROMPTS[:1], {"a": vec, "b": -vec}, layers=[0], strengths=[5.0], n_random=1,
                chat=False, show_progress=False)
    assert list(dict.fromkeys(two.table.vector)) == ["a", "b", "random:0@a", "random:0@b"]
    with pytest.raises(ValueError, match="no random controls"):
        compare_random(two.__class__(two.table[~two.table.is_random], two.baseline,
                                     two.config, 0, 0))


def test_bad_input(tiny, vec):
    ok = dict(show_progress=False, chat=False)
    with pytest.raises(ValueError, match="no layers"):
        sweep(tiny, PROMPTS, vec, layers=[], strengths=[1.0], **ok)
    with pytest.raises(ValueError, match="no strengths"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[], **ok)
    with pytest.raises(ValueError, match="no prompts"):
        sweep(tiny, [], vec, layers=[0], strengths=[1.0], **ok)
    with pytest.raises(ValueError, match="no vectors"):
        sweep(tiny, PROMPTS, {}, layers=[0], strengths=[1.0], **ok)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0, bad], **ok)
    with pytest.raises(ValueError, match="must not repeat"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0, 1.0], **ok)
    only0 = SteeringVector({0: vec[0]})
    with pytest.raises(ValueError, match=r"not built for layer\(s\) \[1\]; its layers are \[0\]"):
        sweep(tiny, PROMPTS, only0, layers=[0, 1], strengths=[1.0], **ok)
    with pytest.raises(ValueError, match="valid layers are the ints 0..1"):
        sweep(tiny, PROMPTS, vec, layers=[5], strengths=[1.0], **ok)
    with pytest.raises(ValueError, match="valid layers"):
        sweep(tiny, PROMPTS, vec, layers=[0.5], strengths=[1.0], **ok)
    with pytest.raises(ValueError, match="valid measures"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0], measures=("kl", "acc"), **ok)
    with pytest.raises(ValueError, match="needs generated text"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0], scorer="sentiment", **ok)
    with pytest.raises(ValueError, match="valid kinds|Unknown scorer"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0], measures=("generate",),
              scorer={"kind": "x"}, **ok)
    with pytest.raises(ValueError, match="valid values"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0], positions="middle", **ok)
    with pytest.raises(ValueError, match="batch_size"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0], batch_size=0, **ok)
    with pytest.raises(ValueError, match="reserved"):
        sweep(tiny, PROMPTS, {"random:1": vec}, layers=[0], strengths=[1.0], **ok)
    with pytest.raises(ValueError, match="d_model"):
        sweep(tiny, PROMPTS, SteeringVector({0: torch.ones(8)}), layers=[0], strengths=[1.0], **ok)
    with pytest.raises(ValueError, match="non-empty string"):
        sweep(tiny, ["ok", ""], vec, layers=[0], strengths=[1.0], **ok)


def test_single_values_and_table_types(tiny, vec):
    res = sweep(tiny, "hello", vec, layers=1, strengths=2.0, chat=False, show_progress=False)
    assert len(res.table) == 1 and isinstance(res.table, pd.DataFrame)
    assert res.table.kl_bits.dtype == np.float64 and res.n_resumed == 0 and res.n_computed == 1
    arr = sweep(tiny, ["a", "b"], vec, layers=np.arange(2), strengths=np.linspace(-2.0, 2.0, 3),
                chat=False, show_progress=False)
    assert arr.table.layer.tolist()[::6] == [0, 1] and arr.settings.strengths == (-2.0, 0.0, 2.0)


def test_prompt_chunk_holds_one_layer_and_matches_run_with_cache(tiny):
    """The KL engine keeps one layer's unsteered residual per prompt chunk (issue 14's memory
    rule), advancing it upwards and recomputing it for a lower layer. Against run_with_cache on
    the same padded batch: the same blocks on the same inputs, so equal to float32 rounding of a
    differently fused call (atol 1e-5 on activations of size ~1)."""
    from steerlens.config import SweepConfig
    from steerlens.sweep.engine import _Counts, _PromptChunk
    from steerlens.sweep.grid import make_grid

    v = SteeringVector({0: torch.ones(64), 1: torch.ones(64)}, model_id="tiny-random")
    grid = make_grid(tiny, v, PROMPTS, SweepConfig(layers=[0, 1], strengths=[1.0], chat=False))
    chunk = _PromptChunk(tiny, grid, [0, 1, 2, 3], [0, 1])
    counts = _Counts()
    chunk.ensure(counts)
    assert counts.passes["base"] == 1 and chunk.layer == 0
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    names = [runtime.hook_name(layer, "resid_pre") for layer in (0, 1)]
    _, cache = tiny.run_with_cache(batch.tokens, attention_mask=batch.attention_mask,
                                   names_filter=lambda n: n in names)
    for layer in (0, 1, 0, 1):  # up (advance), down (recompute), up again
        got = chunk.resid_at(layer)
        assert chunk.layer == layer and isinstance(chunk.resid, torch.Tensor)
        torch.testing.assert_close(got, cache[names[layer]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="start_layer < stop_layer"):
        runtime.run_blocks(tiny, got, batch.attention_mask, 1, 1)
