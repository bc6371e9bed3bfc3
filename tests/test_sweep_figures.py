"""Sweep figures draw what the result holds: zones per cell, CI bands, random bands, KL by layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.figures import save_html
from steerlens.figures.sweep import (
    ZONE_COLORS,
    kl_by_layer_at_strength,
    strength_curves,
    zone_heatmap,
)
from steerlens.sweep import sweep, zones
from steerlens.vectors import SteeringVector

PROMPTS = ["hi", "the cat sat", "ok then"]


@pytest.fixture(scope="module")
def results(tiny):
    g = torch.Generator().manual_seed(5)
    vec = SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)})
    kl = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=[-4.0, 0.0, 0.5, 4.0], n_random=2,
               chat=False, show_progress=False)
    gen = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=[0.0, 0.05, 4.0],
                measures=("kl", "generate"), max_new_tokens=4, chat=False, show_progress=False)
    return kl, gen


def test_zone_heatmap_matches_zones(results, tmp_path):
    for res in results:
        fig = zone_heatmap(res)
        z = zones(res)
        heat = fig.data[0]
        codes = list(ZONE_COLORS)
        for i, layer in enumerate(heat.y):
            for j, s in enumerate(heat.x):
                row = z[(z.vector == "vector") & (z.layer == int(layer)) & (z.strength == float(s))]
                assert codes[heat.z[i][j]] == row.zone.iloc[0]
        assert 0.0 not in [float(s) for s in heat.x]  # the baseline column is left out
        assert "n=3" in fig.layout.title.text
    kl_zones = zones(results[0])
    assert (kl_zones[kl_zones.strength == 0.0].zone == "frozen").all()
    assert save_html(zone_heatmap(results[1]), tmp_path / "z.html").stat().st_size > 1000


def test_strength_curves_bands(results):
    res = results[0]
    fig = strength_curves(res, "kl_bits", layers=[1])
    band, ci_band, line = fig.data
    t = res.table
    rnd = t[t.is_random & (t.layer == 1)]
    means = rnd.groupby(["strength", "vector"]).kl_bits.mean().groupby("strength")
    # float64 means of the same table values (summary vs pandas groupby): rounding only
    np.testing.assert_allclose(band.y[:4], means.max().sort_index().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(band.y[4:], means.min().sort_index().to_numpy()[::-1], rtol=1e-12)
    real = t[~t.is_random & (t.layer == 1)].groupby("strength").kl_bits.mean()
    np.testing.assert_allclose(line.y, real.sort_index().to_numpy(), rtol=1e-12)
    assert len(ci_band.y) == 8
    with pytest.raises(ValueError, match="not in this sweep"):
        strength_curves(res, layers=[7])
    with pytest.raises(ValueError, match="Unknown measure"):
        strength_curves(res, "score")
    assert len(strength_curves(results[1], "changed").data) == 4  # no random band


def test_kl_by_layer_at_strength(results):
    res = results[0]
    fig = kl_by_layer_at_strength(res)
    assert fig.layout.yaxis.type == "log"
    names = [d.name for d in fig.data]
    assert names == ["random (k=2)", "vector"]
    t = res.table
    real = t[~t.is_random & (t.strength == 4.0)].groupby("layer").kl_bits.mean()
    np.testing.assert_allclose(fig.data[1].y, real.to_numpy(), rtol=1e-12)  # float64 means
    with pytest.raises(ValueError, match="not in this sweep"):
        kl_by_layer_at_strength(res, strength=3.0)
    with pytest.raises(ValueError, match="Unknown vector"):
        kl_by_layer_at_strength(res, vectors=["nope"])
