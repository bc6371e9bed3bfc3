"""Figures for measures and statistics, built from real results on the tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from steerlens.figures.diversity import diversity_bars
from steerlens.figures.kl import kl_by_layer, kl_per_token
from steerlens.figures.logit_lens import residual_lens_heatmap, vector_lens_table
from steerlens.figures.stats import ci_forest, random_control_plot, transition_bars, transition_sankey
from steerlens.figures.tokens import save_token_view, token_kl_view
from steerlens.measures import (
    next_token_kl,
    per_token_kl,
    residual_lens,
    sampling_diversity,
    vector_lens,
)
from steerlens.methods import random_like
from steerlens.stats import bootstrap_ci, compare_to_random, transitions
from steerlens.vectors import SteeringVector

PROMPTS = ["hi there", "a longer prompt", "x y z"]


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(11)
    return SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)},
                          model_id="tiny-random", method="mean_diff")


def test_vector_lens_table(tiny, vec):
    lens = vector_lens(tiny, vec, k=4)
    fig = vector_lens_table(lens)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    cells = fig.data[0].cells.values
    assert list(cells[0]) == ["0", "1"]
    assert repr(lens.promoted[1][0].token) in cells[1][1]
    assert repr(lens.suppressed[0][3].token) in cells[2][0]


def test_residual_lens_heatmap(tiny):
    lens = residual_lens(tiny, "hello", k=3, target="o")
    fig = residual_lens_heatmap(lens)
    assert len(fig.data) == 2  # heatmap + target line
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (tiny.cfg.n_layers + 1, 3)
    # a figure copies the result's numbers, it computes nothing: exact
    np.testing.assert_array_equal(np.asarray(heat.z), np.asarray(lens.top_probs))
    assert list(heat.y) == list(lens.labels)
    np.testing.assert_array_equal(fig.data[1].x, lens.target_prob)
    assert len(residual_lens_heatmap(residual_lens(tiny, "hello", k=3)).data) == 1


def test_kl_by_layer_series_with_ci(tiny, vec):
    real = {lay: next_token_kl(tiny, PROMPTS, vec.select([lay]), 2.0, chat=False) for lay in (0, 1)}
    rand = {lay: next_token_kl(tiny, PROMPTS, random_like(vec, 1).select([lay]), 2.0, chat=False)
            for lay in (0, 1)}
    fig = kl_by_layer({"real": real, "random": rand}, n_boot=200)
    assert len(fig.data) == 2 and fig.layout.yaxis.type == "log"
    tr = fig.data[0]
    assert list(tr.x) == [0, 1]
    # float64 means of the same bits (bootstrap estimate vs KLResult.mean): rounding only
    np.testing.assert_allclose(tr.y, [real[0].mean, real[1].mean], rtol=1e-12)
    ci = bootstrap_ci(real[1].values, n_boot=200)
    assert tr.error_y.array[1] == pytest.approx(ci.high - ci.estimate, rel=1e-12)  # same seed
    assert [c[0] for c in tr.customdata] == [3, 3]  # n prompts per layer
    # a plain mapping and a DataFrame give one trace each
    assert len(kl_by_layer({0: real[0].bits, 1: real[1]}).data) == 1
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "bits": [0.1, 0.2, 0.3, 0.5],
                       "series": ["a", "a", "a", "a"]})
    f2 = kl_by_layer(df, log_y=False)
    assert len(f2.data) == 1 and f2.data[0].name == "a"
    np.testing.assert_allclose(f2.data[0].y, [0.15, 0.4], rtol=1e-12)  # float64 means of 2
    with pytest.raises(ValueError, match="columns"):
        kl_by_layer(pd.DataFrame({"x": [1]}))


def test_kl_per_token_and_circuitsvis_view(tiny, vec, tmp_path):
    res = per_token_kl(tiny, "hello", vec, 1.0)
    fig = kl_per_token(res)
    assert len(fig.data) == 1 and len(fig.data[0].y) == res.n == 6
    view = token_kl_view(res)
    path = save_token_view(view, tmp_path / "kl.html", title="KL <per token>")
    html = path.read_text(encoding="utf-8")
    assert "CircuitsVis.render" in html and "ColoredTokens" in html
    assert "unpkg.com" not in html and "<script src=" not in html  # offline: JS inlined
    assert "KL &lt;per token&gt;" in html
    assert f"{res.bits[2]}" in html or f"{res.bits[2]:.6}" in html
    with pytest.raises(ValueError, match="RenderedHTML"):
        save_token_view("<div/>", tmp_path / "x.html")


def test_diversity_bars(tiny, vec):
    base = sampling_diversity(tiny, PROMPTS, k=3, max_new_tokens=4)
    steered = sampling_diversity(tiny, PROMPTS, vec, 4.0, k=3, max_new_tokens=4)
    one = diversity_bars(base)
    assert len(one.data) == 1 and list(one.data[0].y) == list(base.distinct_fraction)
    both = diversity_bars({"base": base, "steered": steered}, metric="distinct_n", n_boot=100)
    assert len(both.data) == 1 and list(both.data[0].x) == ["base", "steered"]
    np.testing.assert_allclose(both.data[0].y, [np.mean(base.distinct_n),
                                                np.mean(steered.distinct_n)], rtol=1e-12)  # float64
    assert both.data[0].text[0].startswith("n=3")
    with pytest.raises(ValueError, match="valid metrics"):
        diversity_bars(base, metric="entropy")


def test_transition_figures_and_forest(tiny, vec):
    base = next_token_kl(tiny, PROMPTS, vec, 0.5, chat=False)
    strong = next_token_kl(tiny, PROMPTS, vec, 4.0, chat=False)
    before = base.values > np.median(base.values)
    after = strong.values > np.median(base.values)
    table = transitions(before, after)
    bars = transition_bars({"strength 4": table, "same": transitions(before, before)})
    assert len(bars.data) == 4 and bars.layout.barmode == "stack"
    assert sum(tr.y[0] for tr in bars.data) == table.n == 3
    sankey = transition_sankey(table)
    assert len(sankey.data) == 1 and sum(sankey.data[0].link.value) == table.n
    forest = ci_forest({"s=0.5": bootstrap_ci(base.values, n_boot=100),
                        "s=4": bootstrap_ci(strong.values, n_boot=100)})
    assert len(forest.data) == 1 and list(forest.data[0].y) == ["s=0.5 (n=3)", "s=4 (n=3)"]


def test_random_control_plot(tiny, vec):
    real = next_token_kl(tiny, PROMPTS, vec, 2.0, chat=False)
    controls = [next_token_kl(tiny, PROMPTS, random_like(vec, s), 2.0, chat=False).values
                for s in range(4)]
    res = compare_to_random(real.values, controls)
    fig = random_control_plot(res)
    assert len(fig.data) == 2 and len(fig.data[0].x) == 4
    assert fig.data[1].x[0] == pytest.approx(real.mean, rel=1e-12)  # float64 mean, same bits
