"""Smoke runs of the measurement analyses (analyses/*.py) with tiny settings, plus checks of their
numbers against independent computations (scipy, numpy, direct measure calls)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"
sys.path.insert(0, str(ANALYSES))


def _load(name: str):
    return importlib.import_module(name)


def _args(name: str, tmp_path: Path, model: str = "tiny-random") -> list[str]:
    return ["--model", model, "--quick", "--out", str(tmp_path / name), "--fig-dir",
            str(tmp_path / "fig"), "--no-progress"]


# ------------------------------------------------------------------------------ shared helpers


def test_scale_to_residual_and_norms_match_a_hand_loop(tiny):
    common = _load("_common")
    from steerlens.backend import runtime
    from steerlens.vectors import SteeringVector

    texts = ["the cat sat on the mat", "hello there"]
    norms = common.residual_norms(tiny, texts, [0, 1])
    # independent: run_with_cache on each text alone, all tokens after BOS
    for layer in (0, 1):
        vals = []
        for t in texts:
            ids = runtime.prompt_ids(tiny, t, chat=False)
            _, cache = tiny.run_with_cache(torch.tensor([ids]))
            act = cache[f"blocks.{layer}.hook_resid_pre"][0, 1:]
            vals.append(act.norm(dim=-1))
        assert norms[layer] == pytest.approx(float(torch.cat(vals).double().median()), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)})
    scaled = common.scale_to_residual(vec, {0: 2.0, 1: 5.0})
    assert scaled.norms[0] == pytest.approx(2.0, rel=1e-6)
    assert scaled.norms[1] == pytest.approx(5.0, rel=1e-6)
    assert torch.nn.functional.cosine_similarity(scaled[1], vec[1], dim=0) > 0.99999
    with pytest.raises(ValueError, match="No residual norm"):
        common.scale_to_residual(vec, {0: 1.0})


def test_relative_layers_and_findings_markdown(tiny, tmp_path):
    common = _load("_common")
    assert common.relative_layers(tiny, [0.0, 1.0]) == [0, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        common.relative_layers(tiny, [1.5])
    d = tmp_path / "mid_layer_sweep"
    d.mkdir()
    f = common.Finding("mid_layer_sweep", "m", 0.5, 0.25, 0.75, "12", "random 0.1", "ok")
    (d / "findings.json").write_text(json.dumps({"analysis": "mid_layer_sweep", "quick": False,
                                                 "settings": {"a": 1},
                                                 "findings": [f.as_dict()]}))
    md = common.write_findings_md(tmp_path).read_text()
    assert "| mid_layer_sweep | m | 0.5 | [0.25, 0.75] | 12 | random 0.1 | ok |" in md


def test_capital_items_and_answer_checking():
    caps = _load("_capitals")
    items = caps.all_items()
    assert len(items) == len({it.question for it in items}) == 249
    for it in items:  # echoing the question can never count as an answer
        assert not it.is_correct(it.question), it.region
        assert it.is_correct(f"The capital of {it.region} is {it.answers[0]}.")
    assert caps.is_correct("The capital of Tunisia is Tunis.", "Tunisia", ["Tunis"])
    assert not caps.is_correct("Nigeria's capital is Abuja.", "Niger", ["Niamey"])
    assert caps.is_correct("It is Indianapolis.", "Indiana", ["Indianapolis"])
    a, b = caps.split_items(49, seed=0), caps.split_items(49, seed=0)
    assert a == b and len(a[0]) == 49 and len(a[1]) == 200
    assert not {i.region for i in a[0]} & {i.region for i in a[1]}
    with pytest.raises(ValueError, match="n_train"):
        caps.split_items(1)


# ------------------------------------------------------------------------------ script smoke runs


def test_mid_layer_sweep_quick(tiny, tmp_path):
    mod = _load("mid_layer_sweep")
    out = mod.main(_args("mls", tmp_path), model=tiny)
    d = tmp_path / "mls"
    for f in ("cells.csv", "zones.csv", "summary.csv", "findings.json", "cells_table.csv"):
        assert (d / f).exists(), f
    for f in ("zones", "score_curves", "change_curves"):
        assert (tmp_path / "fig" / f"mid_layer_sweep_{f}.html").exists()
    # the per-cell change rate equals the raw table's mean of `changed` (recomputed here)
    table = pd.read_csv(d / "cells_table.csv")
    cells = out["cells"]
    for _, r in cells.iterrows():
        sel = table[(table.vector == "sentiment") & (table.layer == r.layer)
                    & (table.strength == r.strength)]
        assert r.change_rate == pytest.approx(sel["changed"].astype(bool).mean())
    assert not (tmp_path / "FINDINGS_measurement.md").exists()  # quick runs stay local
    with pytest.raises(ValueError, match="--model"):
        mod.main(_args("mls2", tmp_path, model="smollm2-135m-instruct"), model=tiny)


def test_kl_diversity_quick_matches_next_token_kl(tiny, tmp_path):
    mod = _load("kl_diversity_by_layer")
    out = mod.main(_args("kld", tmp_path), model=tiny)
    d = tmp_path / "kld"
    assert (d / "diversity.csv").exists() and (d / "kl_by_layer.csv").exists()
    for f in ("kl_raw", "kl_resid", "diversity", "distinct2"):
        assert (tmp_path / "fig" / f"kl_diversity_by_layer_{f}.html").exists()
    # independent path: measures.next_token_kl (two full forwards) on the saved vector x 8
    from steerlens.measures import next_token_kl
    from steerlens.vectors import SteeringVector

    res = out["results"]["raw"]
    vec = SteeringVector.load(d / "vector_sentiment", tiny)
    prompts = list(dict.fromkeys(res.table["prompt"]))
    kl = next_token_kl(tiny, prompts, vec.layer(1), 8.0, reuse_prefix=False)
    mine = res.table[(res.table.vector == "sentiment") & (res.table.strength == 8.0)]
    np.testing.assert_allclose(mine.sort_values("prompt_idx")["kl_bits"].to_numpy(), kl.values,
                               rtol=1e-4, atol=1e-7)
    div = out["diversity"]
    assert set(div["condition"]) == {"unsteered", "L1", "random L1"}
    assert div["distinct_fraction"].between(0.5, 1.0).all()  # k=2: 1/k..1


def test_ratio_ci_estimate_is_ratio_of_means():
    mod = _load("kl_diversity_by_layer")
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, size=30), rng.gamma(2.0, size=30) / 10
    c = mod.ratio_ci(a, b)
    assert c.estimate == pytest.approx(a.mean() / b.mean())
    assert c.low < c.estimate < c.high and c.n == 30


def test_base_vs_instruct_quick_same_model_twice(tiny, tmp_path):
    mod = _load("base_vs_instruct")
    out = mod.main(_args("bvi", tmp_path), models=(tiny, tiny))
    kl = out["kl_summary"]
    assert len(kl) == 2
    assert kl["kl_mean"].iloc[0] == pytest.approx(kl["kl_mean"].iloc[1])  # same model: same KL
    # the degeneration ratio recomputed from text_perplexity directly
    from steerlens.measures import text_perplexity
    from steerlens.spectral.evaluate import load_heldout

    ppl = out["results"][0]["ppl"]
    real = ppl[ppl.kind == "real"]
    texts = load_heldout(2, max_words=12)
    common = _load("_common")
    from steerlens.vectors import SteeringVector

    vec = SteeringVector.load(tmp_path / "bvi" / "tiny-random" / "vector_sentiment_raw", tiny)
    prompts = common.heldout_prompts(common.sentiment_data(), 2)
    scaled = common.scale_to_residual(vec, common.residual_norms(tiny, prompts, [1]))
    p0 = text_perplexity(tiny, texts).perplexity
    p1 = text_perplexity(tiny, texts, steering=scaled.layer(1), strength=0.5).perplexity
    np.testing.assert_allclose(real["log2_ratio"].to_numpy(),
                               [math.log2(b / a) for a, b in zip(p0, p1)], rtol=1e-6)


def test_outcome_direction_needs_both_outcomes(tiny, tmp_path):
    mod = _load("outcome_direction")
    with pytest.raises(ValueError, match="right and wrong"):
        mod.main(_args("od", tmp_path), model=tiny)


@pytest.mark.embedded
def test_outcome_direction_quick_on_smol(smol, tmp_path):
    mod = _load("outcome_direction")
    threads = torch.get_num_threads()
    try:  # one thread: on a shared 2-core machine two threads spin and run 2-3x slower
        out = mod.main(_args("od", tmp_path, model="smollm2-135m-instruct") + ["--threads", "1"],
                       model=smol)
    finally:
        torch.set_num_threads(threads)
    table = out["table"]
    items = json.loads((tmp_path / "od" / "items.json").read_text())
    test_correct = np.array([it["baseline_correct"] for it in items if it["split"] == "test"])
    for _, r in table.iterrows():
        n = r["n"]
        assert r.became_correct + r.became_wrong + r.stayed_correct + r.stayed_wrong == n
        assert r.acc_before == pytest.approx(test_correct[:n].mean())
        # McNemar exact = two-sided binomial test on the discordant pairs (scipy)
        k = int(r.became_correct + r.became_wrong)
        p = 1.0 if k == 0 else sps.binomtest(int(r.became_correct), k, 0.5).pvalue
        assert r.mcnemar_p == pytest.approx(p)


def test_sae_steering_quick(tiny, tmp_path):
    mod = _load("sae_steering")
    out = mod.main(_args("sae", tmp_path), model=tiny)
    d = tmp_path / "sae"
    for f in ("conditions.csv", "diffusion_overlap.csv", "overlap_table.csv", "findings.json",
              "selections.json", "cells_table_sentiment.csv", "cells_table_french.csv"):
        assert (d / f).exists(), f
    for f in ("score_curves", "perplexity_curves", "kl_curves", "overlap", "diffusion",
              "features_sentiment"):
        assert (tmp_path / "fig" / f"sae_steering_{f}.html").exists(), f
    # every condition is norm-matched (the residual norm at the SAE's layer)
    for vecs in out["vectors"].values():
        norms = {name: v.norms[1] for name, v in vecs.items()}
        assert max(norms.values()) == pytest.approx(min(norms.values()), rel=1e-5), norms
    # score shift and the paired difference from random, recomputed from the raw cell table
    cells = out["cells"]
    table = pd.read_csv(d / "cells_table_french.csv")
    base = table[table.strength == 0].groupby("prompt_idx")["score"].first()
    for _, r in cells[(cells.behaviour == "french") & (cells.strength > 0)].iterrows():
        sel = table[(table.vector == r.vector) & (table.strength == r.strength)]
        shift = (sel.set_index("prompt_idx")["score"] - base)
        assert r.score_shift == pytest.approx(shift.mean(), abs=1e-9)
        if r.vector != "random":
            rnd = table[(table.vector == "random") & (table.strength == r.strength)]
            diff = shift - (rnd.set_index("prompt_idx")["score"] - base)
            assert r.vs_random == pytest.approx(diff.mean(), abs=1e-9)
    # diffusion rows agree with a numpy threshold count of the same decomposition
    diff = out["diffusion"]
    row = diff[(diff.behaviour == "sentiment") & (diff.decomposition == "contrastive (encoder)")]
    sae = out["sae"]
    assert json.loads((d / "findings.json").read_text())["quick"] is True
    from steerlens.vectors import SteeringVector

    vec = SteeringVector.load(d / "vector_sentiment", tiny)
    vals = (-vec[1].double()).numpy() @ sae.W_enc.detach().double().numpy()
    assert int(row.n_active.iloc[0]) == int((np.abs(vals) > 0.1 * np.abs(vals).max()).sum())
    with pytest.raises(ValueError, match="--k must be in 1..256"):
        mod.main(_args("sae2", tmp_path) + ["--k", "300"], model=tiny)
