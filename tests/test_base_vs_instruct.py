"""analyses.base_vs_instruct --breakdown: the first-crossing rule and its bootstrap by hand, and a
--quick run on the tiny model whose perplexity ratios are recomputed with `text_perplexity`, whose
behaviour shifts are recomputed from the saved sweep rows, and whose breakpoints follow from the
saved tables by the stated definitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analyses import _common as common
from analyses import base_vs_instruct as bvi


def test_first_crossing_by_hand():
    s = np.array([0.1, 0.2, 0.5, 1.0])
    assert bvi.first_crossing(s, np.array([0.2, 0.9, 1.1, 3.0]), 1.0) == 0.5
    assert bvi.first_crossing(s, np.array([0.2, 1.0, 0.9, 0.5]), 1.0) == math.inf  # > not >=
    assert bvi.first_crossing(s, np.array([0.0, -0.1, -0.3, -0.2]), -0.2, above=False) == 0.5
    assert bvi.first_crossing(s, np.array([0.0, -0.2, -0.3, -0.2]), -0.2, above=False) == 0.2


def test_crossing_ci_brackets_the_estimate_and_is_degenerate_without_spread():
    s = np.array([0.1, 0.2, 0.5, 1.0])
    same = np.tile([0.0, 0.5, 2.0, 4.0], (6, 1))  # every unit crosses at 0.5
    assert bvi.crossing_ci(s, same, 1.0, True, 200, 0) == (0.5, 0.5, 0.5)
    rng = np.random.default_rng(0)
    noisy = same + rng.normal(0, 0.8, size=same.shape)
    est, lo, hi = bvi.crossing_ci(s, noisy, 1.0, True, 500, 0)
    assert est == bvi.first_crossing(s, noisy.mean(0), 1.0)
    assert lo <= est <= hi and {lo, hi} <= {*s.tolist(), math.inf}


def test_breakdown_quick_run_on_tiny(tiny, tmp_path):
    d = tmp_path / "bvi"
    out = bvi.main(["--model", "tiny-random", "--quick", "--breakdown", "--out", str(d),
                    "--fig-dir", str(tmp_path / "fig"), "--no-progress"], models=(tiny, tiny))
    bd = d / "breakdown"
    saved = json.loads((bd / "breakdown.json").read_text())
    grid = saved["settings"]["strengths"]
    # held-out prose perplexity ratios, recomputed directly
    from steerlens.measures import text_perplexity
    from steerlens.spectral.evaluate import load_heldout
    from steerlens.vectors import SteeringVector

    texts = load_heldout(2, max_words=12)
    layer = saved["models"][0]["layer"]
    vec = SteeringVector.load(bd / "tiny-random" / "vector_sentiment_raw", tiny)
    prompts = common.heldout_prompts(common.sentiment_data(), 2)
    scaled = common.scale_to_residual(vec, common.residual_norms(tiny, prompts, [layer]))
    ppl = pd.read_csv(bd / "ppl_table.csv")
    real = ppl[(ppl.model == "tiny-random") & (ppl.kind == "real")]
    p0 = text_perplexity(tiny, texts).perplexity
    for a in grid:
        p1 = text_perplexity(tiny, texts, steering=scaled.layer(layer), strength=-a).perplexity
        got = real[real.strength == a].sort_values("text_idx")["log2_ratio"].to_numpy()
        # log2 of float32 perplexity ratios near 1: a few float32 ulps of the mean log-prob
        np.testing.assert_allclose(got, [math.log2(b / c) for c, b in zip(p0, p1)], atol=1e-5)
    # the breakpoint is the stated rule applied to the saved table
    means = real.groupby("strength")["log2_ratio"].mean().reindex(grid).to_numpy()
    want = bvi.first_crossing(np.array(grid), means, 1.0)
    pt = saved["points"][0]
    got = pt["real_ppl_breakdown"][0]
    assert (got is None and want == math.inf) or got == want
    # behaviour shifts: the saved sweep's scores minus the unsteered scores, per prompt
    gen = pd.read_csv(bd / "gen_table.csv")
    g = gen[(gen.model == "tiny-random") & (~gen.is_random)]
    base = g[g.strength == 0].set_index("prompt_idx")["score"]
    for a in grid:
        s = g[g.strength == -a].set_index("prompt_idx")["score"]
        assert pt["real_shift"][str(float(a))] == pytest.approx(float((s - base).mean()), abs=1e-12)
    assert any(f.headline for f in out["findings"])
    assert (bd / "findings.json").exists()
    assert any("breakdown" in str(e.path) for e in bvi.make_figures(d, tmp_path / "fig2"))
