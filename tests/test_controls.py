"""Random controls that can reject: the empirical p-value against hand counts, the enforced
correct/wrong-balanced split of the outcome direction, its transition matrices against a hand
count, the diversity and mid-layer control tables against recomputation from saved results, and
the control figures."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from steerlens.stats import compare_to_random, transitions
from steerlens.sweep.control import EmpiricalP, control_verdict, empirical_p


def _load(name: str):
    return importlib.import_module(f"analyses.{name}")


# ------------------------------------------------------------------------------ empirical p


def test_empirical_p_matches_a_hand_count():
    ctrl = [0.1, 0.5, 0.7, -0.2]
    # greater: controls >= 0.5 are 0.5 and 0.7 -> (1 + 2) / (1 + 4)
    e = empirical_p(0.5, ctrl, "greater")
    assert (e.n_extreme, e.k, e.p_value) == (2, 4, 3 / 5)
    assert (e.band_low, e.band_high) == (-0.2, 0.7)
    # less: controls <= 0.5 are 0.1, 0.5, -0.2 -> (1 + 3) / 5
    assert empirical_p(0.5, ctrl, "less").p_value == 4 / 5
    # two-sided on |x|: |0.5|, |0.7| >= 0.5 -> (1 + 2) / 5; and -0.6 vs |0.7| only -> 2 / 5
    assert empirical_p(0.5, ctrl, "two-sided").p_value == 3 / 5
    assert empirical_p(-0.6, ctrl, "two-sided").p_value == 2 / 5
    # a real value above every control: p = 1 / (k + 1)
    assert empirical_p(9.0, ctrl).p_value == 1 / 5


def test_empirical_p_needs_twenty_controls_to_reject():
    below = list(np.linspace(-1, 0, 19))
    e19 = empirical_p(1.0, below)
    assert e19.p_value == pytest.approx(1 / 20) and not e19.can_reject  # 0.05 is not < 0.05
    e20 = empirical_p(1.0, below + [0.5])
    assert e20.p_value == pytest.approx(1 / 21) and e20.p_value < 0.05 and e20.can_reject
    assert "k=20" in e20.band() and "p=0.048" in e20.band()


def test_empirical_p_agrees_with_compare_to_random_on_means():
    rng = np.random.default_rng(0)
    real = rng.normal(0.3, 1, 12)
    ctrls = [rng.normal(0, 1, 12) for _ in range(20)]
    for alt in ("greater", "less", "two-sided"):
        ref = compare_to_random(real, ctrls, alternative=alt)
        mine = empirical_p(real.mean(), [c.mean() for c in ctrls], alt)
        assert mine.p_value == ref.p_value


def test_empirical_p_drops_nan_and_rejects_bad_input():
    e = empirical_p(0.0, [1.0, math.nan, -1.0])
    assert e.k == 2 and e.p_value == 2 / 3
    with pytest.raises(ValueError, match="valid"):
        empirical_p(0.0, [1.0], "bigger")
    with pytest.raises(ValueError, match="finite control"):
        empirical_p(0.0, [math.nan])
    with pytest.raises(ValueError, match="finite"):
        empirical_p(math.nan, [1.0])
    assert isinstance(e, EmpiricalP)


def test_control_verdict_cases():
    assert control_verdict(0.1, 0.3, 0.01) == "supported"
    assert control_verdict(0.1, 0.3, 0.2) == "not supported"  # real but not beyond random
    assert control_verdict(-0.1, 0.3, 0.01) == "null"
    assert control_verdict(-0.3, -0.1, 0.01) == "not supported"  # wrong side
    assert control_verdict(-0.3, -0.1, 0.01, direction=-1) == "supported"
    assert control_verdict(0.1, 0.3, math.nan) == "not supported"  # no controls: cannot beat them
    with pytest.raises(ValueError, match="direction"):
        control_verdict(0.1, 0.3, 0.01, direction=2)


# ------------------------------------------------------------------------------ outcome direction


def test_balanced_split_is_enforced_not_natural():
    od = _load("outcome_direction")
    #          0  1  2  3  4  5  6  7  8  9
    correct = [1, 1, 1, 1, 1, 1, 0, 1, 0, 0]  # natural split of the first 4 would be 4 right
    train, test = od.balanced_split(correct, 2, 5)
    assert train == [0, 1, 6, 8]  # the first 2 right, then the first 2 wrong, in order
    c = np.array(correct, bool)
    assert c[train].sum() == 2 and (~c[train]).sum() == 2
    assert test == [2, 3, 4, 5, 7]  # the rest, in order
    assert not set(train) & set(test)
    # a pool with too few wrong answers cannot be balanced: an error, not a silent natural split
    with pytest.raises(ValueError, match="right and wrong"):
        od.balanced_split(correct, 4, 2)
    with pytest.raises(ValueError, match="--n-test"):
        od.balanced_split(correct, 2, 7)


def test_balanced_split_on_many_draws():
    od = _load("outcome_direction")
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = rng.random(249) < rng.uniform(0.2, 0.8)
        train, test = od.balanced_split(c, 24, 150)
        assert c[train].sum() == 24 and (~c[train]).sum() == 24
        assert len(test) == 150 and not set(train) & set(test)


def test_transition_rows_match_a_hand_count():
    od = _load("outcome_direction")
    before = np.array([True, True, False, False, True, False])
    after = {"outcome +0.1": np.array([True, False, True, False, False, False]),
             "random0 0.1": np.array([False, False, False, True, True, False])}
    t = od.transition_rows(before, after, {"outcome +0.1": 0.1, "random0 0.1": 0.1})
    r = t.set_index("condition")
    # hand count: pairs (T,T) (T,F) (F,T) (F,F) (T,F) (F,F)
    assert r.loc["outcome +0.1", ["correct_to_correct", "correct_to_wrong", "wrong_to_correct",
                                  "wrong_to_wrong"]].tolist() == [1, 2, 1, 2]
    # (T,F) (T,F) (F,F) (F,T) (T,T) (F,F)
    assert r.loc["random0 0.1", ["correct_to_correct", "correct_to_wrong", "wrong_to_correct",
                                 "wrong_to_wrong"]].tolist() == [1, 2, 1, 2]
    assert r.loc["random0 0.1", "kind"] == "random" and (t["n"] == 6).all()


def test_condition_strengths_full_sweep_and_control_counts():
    od = _load("outcome_direction")
    st = {"strengths": od.STRENGTHS, "control_strengths": [0.1, 0.2], "n_random": 20,
          "n_random_other": 2}
    assert od.STRENGTHS == [-0.3, -0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2,
                            0.25, 0.3]
    cs = od.condition_strengths(st)
    real = [c for c in cs if c.startswith("outcome")]
    assert len(real) == 12 and "outcome +0.1" in real and "outcome -0.3" in real
    assert len(od.randoms_at(cs, 0.1)) == 20 and len(od.randoms_at(cs, -0.2)) == 20
    assert len(od.randoms_at(cs, 0.05)) == 2 and len(od.randoms_at(cs, 0.3)) == 2
    assert len(od.randoms_at(cs, 0.15)) == 2  # "0.15" is not mistaken for "0.1x"


def test_gain_table_against_hand_computation():
    od = _load("outcome_direction")
    before = np.array([1, 1, 0, 0, 0], float)
    after = {"outcome +0.1": np.array([1, 1, 1, 1, 0], bool)}  # gain +2/5
    for k, extra in enumerate([0, 1, 2, 0]):  # random gains -2/5, -1/5, 0, -2/5 ... by design
        a = np.array([0, 0, 0, 0, 0], bool)
        a[: extra] = True
        after[f"random{k} 0.1"] = a
    strength = {c: 0.1 for c in after}
    g = od.gain_table(before, after, strength).set_index("condition").loc["outcome +0.1"]
    assert g["gain"] == pytest.approx(0.4)
    rg = [np.mean(after[f"random{k} 0.1"].astype(float) - before) for k in range(4)]
    assert g["random_gains"] == pytest.approx(rg)
    assert g["p_random"] == pytest.approx(1 / 5)  # no random gain reaches +0.4
    assert g["random_low"] == pytest.approx(min(rg)) and g["k_random"] == 4


# ------------------------------------------------------------------------------ diversity


def test_diversity_table_and_findings_against_hand_values():
    from steerlens.measures import DiversityResult

    kd = _load("kl_diversity_by_layer")

    def res(dn, steered=True):
        return DiversityResult(prompts=("a", "b"), samples=(("x", "y"), ("x", "y")),
                               distinct_fraction=(1.0, 1.0), distinct_n=tuple(dn), k=2, ngram=2,
                               temperature=0.3, strength=0.2 if steered else None,
                               steered=steered)

    results = {(0.3, "unsteered"): res([0.8, 0.6], False), (0.3, "L5"): res([0.4, 0.4]),
               (0.3, "random L5"): res([0.8, 0.5]), (0.3, "random1 L5"): res([0.7, 0.7])}
    div = kd.diversity_table(results, [5])
    r = div.set_index("condition")
    assert r.loc["L5", "distinct_n_diff"] == pytest.approx(((0.4 - 0.8) + (0.4 - 0.6)) / 2)
    assert r.loc["random1 L5", "distinct_n_diff"] == pytest.approx(0.0)
    assert r.loc["random L5", "kind"] == "random" and r.loc["L5", "layer"] == 5
    found = kd.diversity_findings(div, {"div_layers": [5], "div_strength": 0.2})
    assert len(found) == 1
    # random diffs -0.05 and 0.0; steered -0.3 is below both: p = 1 / 3 with k = 2
    assert "k=2" in found[0].random_control and "p=0.33" in found[0].random_control
    assert "cannot fall below 0.05" in found[0].verdict


# ------------------------------------------------------------------------------ mid-layer control


def test_mid_layer_control_p_matches_the_saved_sweep(tiny, tmp_path):
    from steerlens.sweep import load_sweep
    from steerlens.sweep.result import effect_values

    mod = _load("mid_layer_sweep")
    argv = ["--model", "tiny-random", "--quick", "--out", str(tmp_path / "mls"), "--fig-dir",
            str(tmp_path / "fig"), "--no-progress", "--control-n-random", "4"]
    mod.main(argv, model=tiny)
    import pandas as pd

    ctrl = pd.read_csv(tmp_path / "mls" / "controls.csv")
    res = load_sweep(tmp_path / "mls" / "controls")
    eff = effect_values(res, "score")
    for _, r in ctrl.iterrows():
        sel = eff[(eff["layer"] == r["layer"]) & (eff["strength"] == r["strength"])]
        real = sel[~sel["is_random"]]["effect"].mean()
        means = sel[sel["is_random"]].groupby("vector")["effect"].mean().to_numpy()
        assert len(means) == 4 == r["k_random"]
        hand = (1 + int((means >= real).sum() if r["strength"] > 0 else (means <= real).sum())) / 5
        assert r["p_random"] == pytest.approx(hand)
        assert r["score_shift"] == pytest.approx(real)


# ------------------------------------------------------------------------------ figures


def test_control_figures():
    from steerlens.figures.controls import (
        grouped_ci_bars,
        real_vs_random,
        strength_band_curve,
        transition_matrices,
    )

    # hand count: (T,T) (T,T) (T,F) (F,T) (F,F) -> C->C 2, C->W 1, W->C 1, W->W 1
    tabs = {f"{s:+g}": transitions([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) for s in (-0.1, 0.0, 0.1)}
    fig = transition_matrices(tabs, columns=2)
    assert len(fig.data) == 3
    assert [list(row) for row in fig.data[0].z] == [[2, 1], [1, 1]]  # rows: before C, before W
    fig = strength_band_curve([0.1, -0.1], [0.2, -0.1], [0.1, -0.2], [0.3, 0.0],
                              {0.1: [0.0, 0.05, -0.02]})
    dots = [d for d in fig.data if d.name == "random directions"][0]
    assert len(dots.x) == 6  # |s| = 0.1 serves both signs
    fig = real_vs_random({"a": 1.0}, {"a": [0.1, 0.2]}, {"a": 1 / 3})
    assert "p=0.33" in fig.data[1].x[0]
    with pytest.raises(ValueError, match="random values"):
        real_vs_random({"a": 1.0}, {})
    with pytest.raises(ValueError, match="equally long"):
        strength_band_curve([0.1], [], [], [], {})
    assert len(grouped_ci_bars({"s": {"L1": (0.1, 0.0, 0.2)}}).data) == 1


# ------------------------------------------------------------------------------ cut-short sweeps


def test_partial_readers_reproduce_the_finished_control_sweeps(tiny, tmp_path):
    """--partial reads the saved records of a control sweep (finished or cut short); on a
    finished sweep it must give exactly the rows the full path gives."""
    kd, ms = _load("kl_diversity_by_layer"), _load("mid_layer_sweep")
    for mod, out, key in ((kd, "kld", "control"), (ms, "mls", "random directions")):
        argv = ["--model", "tiny-random", "--quick", "--out", str(tmp_path / out), "--fig-dir",
                str(tmp_path / "fig"), "--no-progress"]
        full = [f.as_dict() for f in mod.main(argv, model=tiny)["findings"] if key in f.measure]
        part = [f.as_dict() for f in mod.main(argv + ["--partial"], model=tiny)["findings"]
                if key in f.measure]
        assert full and full == part


def test_saved_records_keeps_complete_controls_only(tmp_path):
    import json

    from steerlens.sweep.control import complete_controls, saved_records

    lines = [{"part": "kl", "vector": v, "layer": 1, "strength": 0.2, "prompt_idx": p,
              "kl_bits": 0.1} for v in ("sentiment", "random:0", "random:1") for p in range(3)]
    lines = lines[:-1]  # random:1 cut short after 2 of 3 prompts
    text = "\n".join(json.dumps(x) for x in lines) + "\n{\"part\": \"kl\", \"vec"  # torn line
    (tmp_path / "cells.jsonl").write_text(text)
    recs = saved_records(tmp_path, "kl")
    assert len(recs) == 8 and recs["is_random"].sum() == 5
    kept = complete_controls(recs, 3)
    assert sorted(kept["vector"].unique()) == ["random:0", "sentiment"]
    with pytest.raises(ValueError, match="valid"):
        saved_records(tmp_path, "steer")
