"""Gap-vs-effect prediction: correlations vs scipy, layer alignment, predicted vs best layer; both
gating readings; quantile gates against random layer sets (exact hypergeometric and enumerated
baselines checked against scipy and itertools); the prompt split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from steerlens.spectral import (
    GapTable,
    choose_quantile,
    gated_layers,
    gating_test,
    predict_steering,
    quantile_gate,
    reading_verdicts,
    split_gating,
)
from steerlens.stats import CorrelationResult


def table(layers=(0, 2, 4, 6, 8, 10), seed=0) -> GapTable:
    gaps = np.random.default_rng(seed).uniform(0.6, 1.0, size=(7, len(layers), 3))
    return GapTable("rotated_keys", tuple(layers), gaps, gaps * 2, gaps, threshold=0.72)


def test_correlations_match_scipy_and_layers_align():
    t = table()
    effect = {layer: float(np.sin(layer)) for layer in (0, 2, 4, 6, 8, 10, 12)}  # 12 has no gap
    pred = predict_steering(t, effect, n_boot=200, n_perm=200)
    assert pred.layers == t.layers and pred.n == 6
    y = np.array([effect[layer] for layer in t.layers])
    # float64 correlations of the same numbers as scipy: rounding only
    assert pred.min_pearson.r == pytest.approx(stats.pearsonr(t.min_gap, y)[0], abs=1e-12)
    assert pred.min_spearman.r == pytest.approx(stats.spearmanr(t.min_gap, y)[0], abs=1e-12)
    assert pred.mean_pearson.r == pytest.approx(stats.pearsonr(t.mean_gap, y)[0], abs=1e-12)
    assert pred.mean_spearman.r == pytest.approx(stats.spearmanr(t.mean_gap, y)[0], abs=1e-12)
    assert pred.min_pearson.ci_low <= pred.min_pearson.r <= pred.min_pearson.ci_high
    assert pred.best_layer == max(t.layers, key=lambda layer: effect[layer])
    gap = dict(zip(t.layers, t.min_gap))
    flagged = [layer for layer in t.layers if gap[layer] <= 0.72]
    assert 0 < len(flagged) < len(t.layers)  # the fixture has flagged and unflagged layers
    # the claim as stated (default): the flagged (small-gap) layers, smallest gap first
    assert pred.reading == "stated" and pred.ranking == tuple(sorted(flagged, key=gap.get))
    assert pred.predicted_layer == min(flagged, key=gap.get)
    inverse = predict_steering(t, effect, reading="inverse", n_boot=200, n_perm=200)
    unflagged = [layer for layer in t.layers if gap[layer] > 0.72]
    assert inverse.ranking == tuple(sorted(unflagged, key=gap.get, reverse=True))
    assert inverse.min_pearson == pred.min_pearson  # the correlation does not depend on the reading
    d = pred.to_dict()
    assert d["n_layers"] == 6 and d["best_layer"] == pred.best_layer and d["reading"] == "stated"


def test_perfectly_monotone_effect_is_found():
    t = table()
    pred = predict_steering(t, dict(zip(t.layers, 3.0 * t.min_gap + 1.0)), threshold=0.0,
                            reading="inverse", n_boot=200, n_perm=500)
    # an exactly linear effect: r = 1 up to float64 rounding
    assert pred.min_pearson.r == pytest.approx(1.0, abs=1e-12)
    assert pred.min_spearman.r == pytest.approx(1.0, abs=1e-12)
    assert pred.min_pearson.p_perm < 0.01
    assert pred.predicted_layer == pred.best_layer and pred.rank_of_best == 1


def test_layer_effect_dataframe_input_drops_random_rows():
    t = table()
    rows = [{"vector": "v", "is_random": False, "layer": layer, "effect": float(layer)}
            for layer in t.layers]
    rows += [{"vector": "random:0", "is_random": True, "layer": layer, "effect": -1.0}
             for layer in t.layers]
    pred = predict_steering(t, pd.DataFrame(rows), n_boot=100, n_perm=100)
    np.testing.assert_array_equal(pred.effect, np.array(t.layers, float))  # copied, exact


def test_prediction_bad_input():
    t = table()
    with pytest.raises(ValueError, match="at least 3 layers"):
        predict_steering(t, {0: 1.0, 2: 2.0, 99: 3.0})
    two = pd.DataFrame([{"vector": v, "is_random": False, "layer": 0, "effect": 1.0}
                        for v in ("a", "b")])
    with pytest.raises(ValueError, match="several vectors"):
        predict_steering(t, two)
    with pytest.raises(ValueError, match="mapping or a DataFrame"):
        predict_steering(t, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="kind='keys'"):
        predict_steering(t, {0: 1.0, 2: 2.0, 4: 3.0}, kind="keys")
    with pytest.raises(ValueError, match="valid ones"):
        predict_steering(t, {0: 1.0, 2: 2.0, 4: 3.0}, reading="upside-down")


def test_gated_layers_stated_and_inverse_readings():
    gaps = np.array([0.9, 0.5, 0.7, 0.95, 0.6])[None, :, None].repeat(2, 0)  # 2 prompts, 1 head
    t = GapTable("keys", (0, 1, 2, 3, 4), gaps, gaps, gaps, threshold=0.7)
    # stated: min gap <= 0.7, smallest first; inverse: the rest, largest first (hand-written)
    assert gated_layers(t) == (1, 4, 2)
    assert gated_layers(t, reading="inverse") == (3, 0)
    assert gated_layers(t, threshold=0.0) == ()
    assert gated_layers(t, threshold=1.0, reading="inverse") == ()
    with pytest.raises(ValueError, match="valid ones"):
        gated_layers(t, reading="sideways")


def test_reading_verdicts_do_not_depend_on_the_sign_convention():
    neg = CorrelationResult(-0.8, -0.95, -0.4, 0.001, 10, "pearson")
    pos = CorrelationResult(0.8, 0.4, 0.95, 0.001, 10, "pearson")
    span = CorrelationResult(0.3, -0.2, 0.7, 0.3, 10, "pearson")
    assert reading_verdicts(neg) == {"stated": "supported", "inverse": "contradicted"}
    assert reading_verdicts(pos) == {"stated": "contradicted", "inverse": "supported"}
    assert reading_verdicts(span) == {"stated": "null", "inverse": "null"}
    nan = CorrelationResult(float("nan"), float("nan"), float("nan"), float("nan"), 10, "pearson")
    assert reading_verdicts(nan) == {"stated": "untestable", "inverse": "untestable"}


def test_quantile_gate_matches_numpy_quantile():
    gap = {0: 0.9, 2: 0.5, 4: 0.7, 6: 0.95, 8: 0.6, 10: 0.8}
    vals = np.array(list(gap.values()))
    t, gated = quantile_gate(gap, 0.3)
    assert t == np.quantile(vals, 0.3) and gated == tuple(k for k, v in gap.items() if v <= t)
    t, gated = quantile_gate(gap, 0.3, "inverse")
    assert t == np.quantile(vals, 0.7) and gated == tuple(k for k, v in gap.items() if v > t)
    assert gated == (0, 6)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            quantile_gate(gap, bad)


def test_gating_test_against_hypergeometric_and_enumeration():
    gen = np.random.default_rng(3)
    layers = list(range(0, 20, 2))
    gap = {k: float(v) for k, v in zip(layers, gen.uniform(0.6, 1.0, len(layers)))}
    effect = {k: float(v) for k, v in zip(layers, gen.normal(size=len(layers)))}
    res = gating_test(gap, effect, 0.8)
    gated = [k for k in layers if gap[k] <= 0.8]
    k, n = len(gated), len(layers)
    assert res.gated == tuple(gated) and res.k == k and 0 < k < n
    top = sorted(layers, key=lambda x: -effect[x])[:k]
    hits = len(set(gated) & set(top))
    assert res.hits == hits and res.precision == hits / k and res.expected_precision == k / n
    # exact sums of integers vs scipy's hypergeometric survival function: float rounding only
    assert res.p_precision == pytest.approx(stats.hypergeom.sf(hits - 1, n, k, k), rel=1e-12)
    means = [np.mean([effect[layers[i]] for i in c])
             for c in __import__("itertools").combinations(range(n), k)]
    observed = np.mean([effect[g] for g in gated])
    assert res.exhaustive and res.n_sets == len(means)
    assert res.mean_effect == pytest.approx(observed, rel=1e-12)
    assert res.p_mean_effect == pytest.approx(np.mean(np.array(means) >= observed - 1e-12))
    assert res.random_mean == pytest.approx(np.mean(list(effect.values())), rel=1e-12)
    assert res.random_low <= res.random_mean <= res.random_high
    sampled = gating_test(gap, effect, 0.8, max_sets=50, seed=1)
    assert not sampled.exhaustive and sampled.n_sets == 50 and 0 < sampled.p_mean_effect <= 1


def test_gating_test_finds_a_planted_gate_and_rejects_the_opposite_one():
    layers = list(range(16))
    gap = {k: 0.5 + 0.03 * k for k in layers}  # gap rises with depth
    effect = {k: 1.0 - 0.05 * k for k in layers}  # small gap, large effect: the claim as stated
    t, _ = quantile_gate(gap, 0.25)
    stated = gating_test(gap, effect, t, "stated")
    assert stated.gated == (0, 1, 2, 3) and stated.precision == 1.0
    assert stated.p_precision == pytest.approx(1 / math.comb(16, 4), rel=1e-12)
    assert stated.p_mean_effect == pytest.approx(1 / math.comb(16, 4), rel=1e-12)
    t, _ = quantile_gate(gap, 0.25, "inverse")
    inverse = gating_test(gap, effect, t, "inverse")
    assert inverse.precision == 0.0 and inverse.p_precision == 1.0 and inverse.p_mean_effect == 1.0
    empty = gating_test(gap, effect, 0.0, "stated")
    assert empty.k == 0 and math.isnan(empty.precision) and math.isnan(empty.p_precision)
    with pytest.raises(ValueError, match="at least 3 layers"):
        gating_test({0: 0.5, 1: 0.6}, {0: 1.0, 1: 2.0}, 0.7)
    with pytest.raises(ValueError, match="valid ones"):
        gating_test(gap, effect, 0.7, "both")


def test_choose_quantile_and_split_use_only_their_half():
    gap = {k: 0.5 + 0.03 * k for k in range(10)}
    effect = {k: (1.0 if k < 3 else 0.0) for k in range(10)}
    q, scores = choose_quantile(gap, effect, "stated", (0.1, 0.2, 0.3, 0.5))
    # q=0.1 gates layer 0 only (np.quantile 0.527 -> gaps <= it): mean 1.0; ties keep the smallest q
    assert q == 0.1 and scores[0.1] == 1.0 and scores[0.5] < 1.0
    with pytest.raises(ValueError, match="empty"):
        choose_quantile(gap, effect, "stated", ())
    # split: even prompts carry a planted stated-reading effect, odd prompts the opposite
    n_prompts, layers = 6, list(range(10))
    g = np.tile([gap[k] for k in layers], (n_prompts, 1))
    e = np.zeros((n_prompts, len(layers)))
    e[0::2, :3] = 1.0  # even: small-gap layers steer
    e[1::2, -3:] = 1.0  # odd: large-gap layers steer
    even_to_odd, odd_to_even = split_gating(g, e, layers, "stated", (0.1, 0.3))
    assert even_to_odd.selection_prompts == (0, 2, 4) and even_to_odd.test_prompts == (1, 3, 5)
    assert even_to_odd.quantile == 0.1  # ties on the selection half: 1.0 at both, smallest q
    assert even_to_odd.test.precision == 0.0  # the planted effect does not carry to odd prompts
    assert odd_to_even.test_prompts == (0, 2, 4)
    d = even_to_odd.to_dict()
    assert d["test"]["k"] == even_to_odd.test.k and set(d["selection_scores"]) == {"0.1", "0.3"}
    with pytest.raises(ValueError, match=r"\[prompt, layer\]"):
        split_gating(g[:, :3], e[:, :3], layers)  # 3 columns for 10 layers
    with pytest.raises(ValueError, match="at least 4 prompts"):
        split_gating(g[:3], e[:3], layers)
