"""analyses.composition: summed vs two-vectors-in-one-block steering is the same edit (exact algebra
on the tiny model, against a hand-written TransformerLens hook), a switching schedule produces the
first vector's tokens up to the switch step, and the summary statistics equal numpy's paired
differences and ratios; plus a --quick run of the analysis on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import composition as comp
from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.steer import Injection, steer, steered_forward
from steerlens.vectors import SteeringVector

LAYER = 1


def _vecs(seed: int = 0) -> tuple[SteeringVector, SteeringVector]:
    g = torch.Generator().manual_seed(seed)
    return (SteeringVector({LAYER: 3.0 * torch.randn(64, generator=g)}),
            SteeringVector({LAYER: 3.0 * torch.randn(64, generator=g)}))


def _logits(model, batch, injections):
    with steer(model, injections) as s, torch.no_grad():
        return steered_forward(model, batch, s).double()


def test_summed_vector_equals_two_vectors_in_one_block_and_a_hand_hook(tiny):
    va, vb = _vecs()
    sa, sb = -0.7, 1.3
    prompts = ["the cat sat on the mat", "hello there, how are you"]
    batch = runtime.encode_prompts(tiny, prompts, chat=False)
    summed = _logits(tiny, batch, [Injection(va * sa + vb * sb, 1.0)])
    two = _logits(tiny, batch, [Injection(va, sa), Injection(vb, sb)])
    # independent: a plain TransformerLens hook adding sa*va + sb*vb at every position
    delta = sa * va[LAYER] + sb * vb[LAYER]

    def hook(act, hook):
        return act + delta

    one = runtime.encode_prompts(tiny, prompts[:1], chat=False)  # unpadded: a plain TL forward
    with torch.no_grad():
        hand = tiny.run_with_hooks(one.tokens, fwd_hooks=[(f"blocks.{LAYER}.hook_resid_pre",
                                                           hook)]).double()
        base = _logits(tiny, batch, [Injection(va, 0.0)])
    summed_one = _logits(tiny, one, [Injection(va * sa + vb * sb, 1.0)])
    mask = batch.attention_mask.bool()
    scale = float(summed[mask].abs().max())
    # (x + a) + b vs x + (a + b) in float32: one rounding of the residual (~6e-8 relative) carried
    # through one block and the unembedding; 1e-6 of the largest logit bounds it with margin
    assert float((summed - two)[mask].abs().max()) <= 1e-6 * scale
    assert float((summed_one - hand).abs().max()) <= 1e-6 * scale
    # and the edit is not a no-op (the check above could not pass by steering nothing)
    assert float((summed - base)[mask].abs().max()) > 1e-2
    # the analysis's own check reports the same difference scale
    alg = comp.algebra_check(tiny, prompts, va, vb, sa, sb)
    assert alg["max_abs_logit_diff"] <= 1e-6 * alg["max_abs_logit"]
    assert alg["max_abs_steering_effect"] > 1e-2 and alg["n_prompts"] == 2


def test_switch_schedule_keeps_the_first_vectors_tokens_until_the_switch(tiny):
    va, vb = _vecs(1)
    k, n = 3, 8
    prompts = ["the cat sat on the mat", "once upon a time"]
    conds = comp.conditions(va, vb, 2.0, -2.0, k, n_random=1, seed=0)
    assert set(conds) == {"unsteered", "A alone", "B alone", "summed", "two in block",
                          "switch A->B", "switch B->A", "random 0"}
    gens = {c: generate(tiny, prompts, s, max_new_tokens=n, stop_at_eos=False, chat=False)
            for c, s in conds.items()}
    for i in range(len(prompts)):
        # tokens 0..k-1 come from forwards at positions with generated index < k: A only
        assert gens["switch A->B"].tokens[i][:k] == gens["A alone"].tokens[i][:k]
        assert gens["switch B->A"].tokens[i][:k] == gens["B alone"].tokens[i][:k]
    # the schedule did switch: some later token differs from A alone's
    assert any(gens["switch A->B"].tokens[i][k:] != gens["A alone"].tokens[i][k:]
               for i in range(len(prompts)))
    # random control has the summed vector's norm
    rnd = conds["random 0"][0].vector
    assert rnd.norms[LAYER] == pytest.approx((va * 2.0 + vb * -2.0).norms[LAYER], rel=1e-5)


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for c in ("unsteered", "A alone", "B alone", "summed", "random 0", "random 1"):
        for i in range(9):
            for seg in comp.SEGMENTS:
                rows.append({"condition": c, "prompt_idx": i, "segment": seg, "n_tokens": 5,
                             "log2_ppl": rng.normal(2.0, 0.3), "text": "",
                             "fa": rng.normal(0.3 if c == "A alone" else 0.0, 0.1),
                             "fb": rng.normal(-0.4 if c == "B alone" else 0.0, 0.1)})
    return pd.DataFrame(rows)


def test_summary_matches_numpy_paired_differences_and_ratios():
    t = _table()
    s = comp.summarise(t, {"A": "fa", "B": "fb"}, n_boot=500, seed=0)

    def v(c, seg, col):
        return t[(t.condition == c) & (t.segment == seg)].sort_values("prompt_idx")[col].to_numpy()

    for c in ("A alone", "summed"):
        r = s[(s.condition == c) & (s.segment == "full") & (s.behaviour == "fa")].iloc[0]
        d = v(c, "full", "fa") - v("unsteered", "full", "fa")
        assert r["shift"] == pytest.approx(d.mean(), rel=1e-12)
        assert r["low"] <= r["shift"] <= r["high"] and r["n"] == 9
    r = s[(s.condition == "summed") & (s.segment == "after") & (s.behaviour == "fb")].iloc[0]
    num = v("summed", "after", "fb") - v("unsteered", "after", "fb")
    den = v("B alone", "after", "fb") - v("unsteered", "after", "fb")
    assert r["retention"] == pytest.approx(num.mean() / den.mean(), rel=1e-12)
    assert r["vs_B_alone"] == pytest.approx((v("summed", "after", "fb")
                                             - v("B alone", "after", "fb")).mean(), rel=1e-12)
    rs = [(v(f"random {k}", "after", "fb") - v("unsteered", "after", "fb")).mean() for k in (0, 1)]
    assert r["random_min"] == pytest.approx(min(rs), rel=1e-12)
    assert r["random_max"] == pytest.approx(max(rs), rel=1e-12)
    lp = v("summed", "full", "log2_ppl") - v("unsteered", "full", "log2_ppl")
    assert r["log2_ppl_ratio"] == pytest.approx(lp.mean(), rel=1e-12)
    # the "moved" rule: CI beyond 0 in the pushed direction and beyond every random direction
    row = pd.Series({"shift": -0.4, "low": -0.5, "high": -0.3, "random_min": -0.1,
                     "random_max": 0.1})
    assert comp._moved(row, -1.0) and not comp._moved(row, 1.0)
    assert not comp._moved(pd.Series({**row.to_dict(), "random_min": -0.6}), -1.0)


def test_switch_step_is_checked():
    p = comp.build_parser()
    args = p.parse_args(["--switch-step", "40", "--max-new-tokens", "40"])
    with pytest.raises(ValueError, match="switch-step must be in 1..39"):
        comp.settings_for(args, 30)


def test_quick_run_on_tiny(tiny, tmp_path):
    out = comp.main(["--model", "tiny-random", "--quick", "--out", str(tmp_path / "c"),
                     "--fig-dir", str(tmp_path / "fig"), "--no-progress"], model=tiny)
    t, s = out["table"], out["summary"]
    assert set(t.condition) >= {"unsteered", "summed", "two in block", "switch A->B"}
    # saved scores are the library scorers applied to the saved texts
    from steerlens.measures import get_scorer

    f, sent = get_scorer("formality"), get_scorer("sentiment")
    for _, r in t.head(12).iterrows():
        if r["n_tokens"] > 0:
            assert r["formality"] == pytest.approx(f(r["text"]))
            assert r["sentiment"] == pytest.approx(sent(r["text"]))
    assert (tmp_path / "c" / "findings.json").exists()
    assert out["algebra"]["max_abs_logit_diff"] <= 1e-6 * out["algebra"]["max_abs_logit"]
    assert math.isfinite(out["algebra"]["greedy_identical"])
    assert comp.make_figures(tmp_path / "c", tmp_path / "fig2")
    assert len(s) and {"shift", "low", "high", "retention"} <= set(s.columns)
