"""Gap-vs-effect prediction: correlations vs scipy, layer alignment, predicted vs best layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from steerlens.spectral import GapTable, predict_steering


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
    unflagged = [layer for layer, g in zip(t.layers, t.min_gap) if g > 0.72]
    assert 0 < len(unflagged) < len(t.layers)  # the fixture has flagged and unflagged layers
    assert pred.predicted_layer == max(unflagged, key=lambda layer: t.min_gap[t.layers.index(layer)])
    d = pred.to_dict()
    assert d["n_layers"] == 6 and d["best_layer"] == pred.best_layer


def test_perfectly_monotone_effect_is_found():
    t = table()
    pred = predict_steering(t, dict(zip(t.layers, 3.0 * t.min_gap + 1.0)), threshold=0.0,
                            n_boot=200, n_perm=500)
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
