"""Spectral figures: built from result dataclasses (no model inside), data as in the results."""

from __future__ import annotations

import numpy as np
import pytest

from steerlens.figures import save_html
from steerlens.figures.spectral import (
    alpha_curves,
    eigengap_profile,
    gap_vs_effect,
    krr_r2_heatmap,
    spectrum_before_after,
)
from steerlens.spectral import (
    GapTable,
    SpectralConfig,
    SpectralEdit,
    eigengaps,
    krr_fit,
    plan_edit,
    predict_steering,
    spectral_sweep,
)

PROMPTS = ["The cat sat on the mat.", "Glaciers carve valleys.", "Tea comes from a shrub."]


def test_eigengap_figures(tiny, tmp_path):
    res = eigengaps(tiny, PROMPTS, chat=False)
    fig = eigengap_profile(res)
    assert len(fig.data) == 9  # 3 kinds x (min, mean, median)
    # figures copy the result's numbers, they compute nothing: exact
    np.testing.assert_array_equal(fig.data[0].y, res.keys.min_gap)
    gaps = np.random.default_rng(0).uniform(0.5, 1.0, (4, 3, 2))  # 3 layers: the minimum for r
    pred = predict_steering(GapTable("keys", (0, 1, 2), gaps, gaps, gaps), {0: 1.0, 1: 2.0, 2: 0.5},
                            n_boot=50, n_perm=50)
    fig = gap_vs_effect(pred)
    np.testing.assert_array_equal(fig.data[0].x, pred.min_gap)
    np.testing.assert_array_equal(fig.data[0].y, [1.0, 2.0, 0.5])
    krr = krr_fit(tiny, PROMPTS[:2], lambdas=[0.1, 1.0], chat=False)
    fig = krr_r2_heatmap(krr)
    assert np.asarray(fig.data[0].z).shape == (2, 2)
    path = save_html(fig, tmp_path / "krr.html")
    assert "plotly" in path.read_text()[:5000].lower()


def test_weight_figures(tiny):
    report, _ = plan_edit(tiny, SpectralConfig((SpectralEdit(0, 0.5), SpectralEdit(1, -0.3))))
    fig = spectrum_before_after(report)
    assert len(fig.data) == 4
    np.testing.assert_array_equal(fig.data[1].y, report[0].s_after)
    res = spectral_sweep(tiny, [0, 1], [-0.3, 0.3], texts=["Rivers shape the land."],
                         prompts=["Hi there"], scorer=len, max_new_tokens=3, chat=False,
                         n_boot=50, show_progress=False)
    fig = alpha_curves(res)
    assert len(fig.data) == 3 * 2  # 3 measures x 2 layers
    assert list(fig.data[0].x) == [-0.3, 0.3]
    with pytest.raises(ValueError, match="valid measures"):
        alpha_curves(res, measures=("bogus",))
