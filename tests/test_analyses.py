"""The analyses package: its registry, shared flags and findings table, and smoke runs of the
analyses (`python -m analyses.NAME`) with tiny settings whose numbers are checked against
independent computations (scipy, numpy, direct measure calls, the saved sweeps)."""

from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from analyses import ANALYSES, ROOT, findings, get, names
from analyses import _capitals as caps
from analyses import _common as common
from steerlens.sweep import load_sweep

RESULTS = ROOT / "results"


def _load(name: str):
    return importlib.import_module(f"analyses.{name}")


def _args(name: str, tmp_path: Path, model: str = "tiny-random") -> list[str]:
    return ["--model", model, "--quick", "--out", str(tmp_path / name), "--fig-dir",
            str(tmp_path / "fig"), "--no-progress"]


# ------------------------------------------------------------------------------ shared helpers


def test_scale_to_residual_and_norms_match_a_hand_loop(tiny):
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
    # float32 rescaling of a float32 vector: a few ulps (~1e-7 relative) from the target norm
    assert scaled.norms[0] == pytest.approx(2.0, rel=1e-5)
    assert scaled.norms[1] == pytest.approx(5.0, rel=1e-5)
    assert torch.nn.functional.cosine_similarity(scaled[1], vec[1], dim=0) > 0.99999
    with pytest.raises(ValueError, match="No residual norm"):
        common.scale_to_residual(vec, {0: 1.0})


def test_relative_layers(tiny):
    assert common.relative_layers(tiny, [0.0, 1.0]) == [0, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        common.relative_layers(tiny, [1.5])


# ------------------------------------------------------------------------------ the package


def test_registry_lists_every_analysis_module():
    modules = {p.stem for p in (ROOT / "analyses").glob("*.py")
               if not p.stem.startswith("_") and p.stem not in ("gallery", "findings")}
    assert sorted(names()) == sorted(modules) and len(set(names())) == len(names())
    for a in ANALYSES:
        mod = a.load()
        for attr in ("main", "make_figures", "build_parser"):
            assert callable(getattr(mod, attr, None)), f"{a.name} has no {attr}()"
        assert a.question and a.question == mod.__doc__.strip().splitlines()[0]
    assert get("train_sae").results_dir(RESULTS) == RESULTS / "sae_training"
    with pytest.raises(ValueError, match="registered analyses are"):
        get("no_such_analysis")


def test_no_sys_path_preambles():
    files = [*(ROOT / "analyses").glob("*.py"), ROOT / "tests" / "test_analyses.py",
             ROOT / "tests" / "test_gallery.py"]
    hack = re.compile(r"sys\.path\.(insert|append)")
    for f in files:
        assert not hack.search(f.read_text(encoding="utf-8")), f.name


def test_every_analysis_shares_the_flag_skeleton(capsys):
    shared = {"--model", "--device", "--threads", "--out", "--fig-dir", "--seed", "--no-progress"}
    with_strengths = []
    for a in ANALYSES:
        p = a.load().build_parser()
        flags = {o for action in p._actions for o in action.option_strings}
        assert shared <= flags, f"{a.name} lacks {shared - flags}"
        assert p.prog == f"python -m analyses.{a.name}"
        if "--strengths" in flags:
            with_strengths.append(a.name)
            assert "--alphas" in flags  # the old name still parses
            assert p.parse_args(["--strengths", "0.1, 0.2"]).strengths == [0.1, 0.2]
            assert p.parse_args(["--strengths", "-0.4", "-0.2", "0.1"]).strengths == [-0.4, -0.2, 0.1]
            assert p.parse_args(["--strengths=-0.4,0.2"]).strengths == [-0.4, 0.2]
            capsys.readouterr()
            assert p.parse_args(["--alphas", "0.3,0.4"]).strengths == [0.3, 0.4]
            assert "--alphas is deprecated; use --strengths" in capsys.readouterr().err
            with pytest.raises(SystemExit):
                p.parse_args(["--strengths", "0.1,big"])
    assert {"mid_layer_sweep", "kl_diversity_by_layer", "base_vs_instruct", "outcome_direction",
            "sae_steering"} <= set(with_strengths)
    kl = _load("kl_diversity_by_layer").build_parser()
    assert kl.parse_args(["--div-alpha", "0.3"]).div_strength == 0.3  # a renamed single value
    assert "--div-alpha is deprecated; use --div-strength" in capsys.readouterr().err
    assert _load("train_sae").build_parser().parse_args(["--extra-l1"]).extra_l1 == []


def test_python_dash_m_runs_an_analysis_and_the_findings_builder(tmp_path):
    env_cmd = [sys.executable, "-m"]
    r = subprocess.run([*env_cmd, "analyses.mid_layer_sweep", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m analyses.mid_layer_sweep") and "--strengths" in r.stdout
    d = tmp_path / "outcome_direction"
    d.mkdir()
    row = findings.Finding("outcome_direction", "m", 1.0, 0.5, 1.5, "20", "-", "ok", headline=True)
    (d / "findings.json").write_text(json.dumps({"analysis": "outcome_direction", "quick": False,
                                                 "findings": [row.as_dict()]}))
    r = subprocess.run([*env_cmd, "analyses.findings", "--results", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert row.row() in (tmp_path / findings.FINDINGS_MD).read_text()


def _write_run(root: Path, rel: str, analysis: str, rows, quick: bool = False) -> None:
    d = root / rel
    d.mkdir(parents=True)
    ctx = common.Context(analysis, d, root / "fig", "cpu", False, 0, quick, True)
    findings.save_findings(ctx, rows, {"n": 3}, notes=["a caveat"])


def test_findings_table_order_escaping_and_quick_runs(tmp_path):
    F = findings.Finding
    _write_run(tmp_path, "base_vs_instruct", "base_vs_instruct",
               [F("base_vs_instruct", "ratio", 2.5, 2.0, 3.1, "26", "random 12", "more", True)])
    _write_run(tmp_path, "kl_diversity_by_layer", "kl_diversity_by_layer",
               [F("kl_diversity_by_layer", "share with |value| > 0", 0.25, math.nan, math.nan,
                  "20", "-", "null")])
    _write_run(tmp_path, "mid_layer_sweep", "mid_layer_sweep",
               [F("mid_layer_sweep", "smoke", 9.0, 1.0, 2.0, "2", "-", "quick", True)], quick=True)
    _write_run(tmp_path, "other", "not_registered", [F("not_registered", "x", 1, 0, 2, "1", "-", "-")])
    text = findings.build(tmp_path).read_text()
    assert text == findings.render(tmp_path)
    # registry order (kl_diversity_by_layer before base_vs_instruct), not alphabetical
    assert text.index("### kl_diversity_by_layer") < text.index("### base_vs_instruct")
    assert "| base_vs_instruct | ratio | 2.5 | [2, 3.1] | 26 | random 12 | more |" in text
    # a pipe inside a cell is escaped; a NaN bound leaves the CI cell empty
    assert "| kl_diversity_by_layer | share with \\|value\\| > 0 | 0.25 |  | 20 | - | null |" in text
    assert "smoke" not in text and "not_registered" not in text  # quick runs, unknown analyses
    heads = text.split("## Headline findings")[1].split("## All findings")[0]
    assert "ratio" in heads and "share with" not in heads
    assert "| eigengap_layers |" in text and "(no findings recorded)" in text
    assert [f.measure for f in findings.headline(tmp_path)] == ["ratio"]
    saved = json.loads((tmp_path / "base_vs_instruct" / "findings.json").read_text())
    assert saved["settings"] == {"n": 3} and saved["notes"] == ["a caveat"]
    assert findings.load_findings(tmp_path / "base_vs_instruct" / "findings.json")[0].value == 2.5


def test_committed_findings_table_is_rebuilt_from_the_saved_rows():
    """results/FINDINGS.md is exactly what `python -m analyses.findings` writes, and every
    registered analysis with results has recorded findings."""
    assert (RESULTS / findings.FINDINGS_MD).read_text(encoding="utf-8") == findings.render(RESULTS)
    for a in ANALYSES:
        if a.results_dir(RESULTS).is_dir():
            assert any(a.results_dir(RESULTS).glob("**/findings.json")), a.name
    assert not (RESULTS / "FINDINGS_measurement.md").exists()


def _same_rows(rows, path: Path) -> bool:
    """Rows equal to a saved findings.json's, as written (NaN saved as null)."""
    saved = json.loads(path.read_text(encoding="utf-8"))["findings"]
    return [common.jsonable(r.as_dict()) for r in rows] == saved


def test_saved_rows_rebuild_from_summaries_and_match_independent_files():
    """eigengap_layers, spectral_weights and train_sae write their rows from their saved
    summaries; the rebuilt rows equal the committed ones and agree with other saved files."""
    eig, spec, sae = _load("eigengap_layers"), _load("spectral_weights"), _load("train_sae")
    for out in sorted((RESULTS / "eigengap_layers").iterdir()):
        rows = eig.findings_from_run(out)
        assert _same_rows(rows, out / "findings.json")
        arrays = json.loads((out / "arrays.json").read_text())
        gaps = np.asarray(arrays["eigengaps"]["patterns"]["gaps"], float)  # prompt, layer, head
        per_layer = gaps.mean(axis=(0, 2))
        pattern = next(r for r in rows if "pattern eigengap" in r.measure)
        assert (pattern.value, pattern.low, pattern.high) == pytest.approx(
            (gaps.mean(), per_layer.min(), per_layer.max()), rel=1e-9)
        summary = json.loads((out / "summary.json").read_text())
        r2 = np.asarray(arrays["krr"]["r2"], float).max(-1)
        assert summary["krr_fraction_positive_r2"] == pytest.approx((r2 > 0).mean())
    for out in sorted((RESULTS / "spectral_weights").iterdir()):
        assert _same_rows(spec.findings_from_run(out), out / "findings.json")
    out = get("train_sae").results_dir(RESULTS)
    results = json.loads((out / "results.json").read_text())
    rows = sae.findings_from_results(results)
    assert _same_rows(rows, out / "findings.json")
    ship_dir = ROOT / "steerlens" / "data" / "saes" / "smollm2-135m-instruct-l12-resid_pre-4608"
    shipped = json.loads((ship_dir / "metrics.json").read_text())
    assert shipped["metrics"]["explained_variance"] in [r.value for r in rows]
    # the shipped weights are the run's chosen setting, and its chat metrics are what it reports
    config = json.loads((ship_dir / "training_config.json").read_text())
    run = next(r for r in results["runs"] if r["config"] == config)
    assert sae.label(config) == results["shipped"] == shipped["setting"]
    assert run["domains"]["chat"]["metrics"] == shipped["metrics"]


def test_docs_run_analyses_as_modules():
    """Commands in the docs use `python -m analyses.NAME` with a module that exists."""
    docs = [ROOT / "README.md", ROOT / "figures" / "README.md", *(ROOT / "notebooks").glob("*"),
            *(ROOT / "docs").glob("**/*.md"), *(ROOT / "results").glob("**/README.md")]
    for f in docs:
        if not f.is_file() or f.suffix not in (".md", ".py"):
            continue
        text = f.read_text(encoding="utf-8")
        assert "python analyses/" not in text, f"{f.name}: run analyses with python -m"
        for mod in re.findall(r"python -m analyses\.([a-z_][a-z0-9_]*)", text):  # not NAME
            assert (ROOT / "analyses" / f"{mod}.py").is_file(), (f.name, mod)


def test_capital_items_and_answer_checking():
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
    for f in ("cells.csv", "summary.csv", "findings.json", "sweep/sweep.json"):
        assert (d / f).exists(), f
    for f in ("cells_table.csv", "baseline.csv", "zones.csv", "random_score.csv"):
        assert not (d / f).exists(), f"{f} repeats the saved sweep"
    for f in ("zones", "score_curves", "change_curves"):
        assert (tmp_path / "fig" / f"mid_layer_sweep_{f}.html").exists()
    # the per-cell change rate equals the saved sweep's mean of `changed` (recomputed here)
    table = load_sweep(d / "sweep").table
    cells = out["cells"]
    for _, r in cells.iterrows():
        sel = table[(table.vector == "sentiment") & (table.layer == r.layer)
                    & (table.strength == r.strength)]
        assert r.change_rate == pytest.approx(sel["changed"].astype(bool).mean())
    assert not (tmp_path / findings.FINDINGS_MD).exists()  # quick runs stay local
    with pytest.raises(ValueError, match="--model"):
        mod.main(_args("mls2", tmp_path, model="smollm2-135m-instruct"), model=tiny)


def test_kl_diversity_quick_matches_next_token_kl(tiny, tmp_path):
    mod = _load("kl_diversity_by_layer")
    out = mod.main(_args("kld", tmp_path), model=tiny)
    d = tmp_path / "kld"
    assert (d / "diversity.csv").exists() and (d / "kl_by_layer.csv").exists()
    assert not (d / "kl_table.csv").exists() and not (d / "diversity_samples.json").exists()
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


def test_base_vs_instruct_quick_same_model_twice(tiny, tmp_path):
    mod = _load("base_vs_instruct")
    out = mod.main(_args("bvi", tmp_path), models=(tiny, tiny))
    kl = out["kl_summary"]
    assert len(kl) == 2
    # same model and prompts, two runs: the same float32 KL up to summation order
    assert kl["kl_mean"].iloc[0] == pytest.approx(kl["kl_mean"].iloc[1], rel=1e-5, abs=1e-9)
    # the degeneration ratio recomputed from text_perplexity directly
    from steerlens.measures import text_perplexity
    from steerlens.spectral.evaluate import load_heldout

    ppl = out["results"][0]["ppl"]
    real = ppl[ppl.kind == "real"]
    texts = load_heldout(2, max_words=12)
    from steerlens.vectors import SteeringVector

    vec = SteeringVector.load(tmp_path / "bvi" / "tiny-random" / "vector_sentiment_raw", tiny)
    prompts = common.heldout_prompts(common.sentiment_data(), 2)
    scaled = common.scale_to_residual(vec, common.residual_norms(tiny, prompts, [1]))
    p0 = text_perplexity(tiny, texts).perplexity
    p1 = text_perplexity(tiny, texts, steering=scaled.layer(1), strength=0.5).perplexity
    np.testing.assert_allclose(real["log2_ratio"].to_numpy(),
                               [math.log2(b / a) for a, b in zip(p0, p1)], rtol=1e-5,
                               atol=1e-5)  # log2 of float32 perplexity ratios near 1
    # the gallery rebuilds the KL table from the saved sweeps (kl_table.csv is not written)
    d = tmp_path / "bvi"
    assert not (d / "kl_table.csv").exists() and not (d / "gen_table.csv").exists()
    saved = mod.saved_kl_table(d)
    mem = pd.concat([r["kl"] for r in out["results"]], ignore_index=True)
    key = ["model", "vector", "layer", "strength", "prompt_idx"]
    pd.testing.assert_frame_equal(saved.sort_values(key).reset_index(drop=True)[mem.columns],
                                  mem.sort_values(key).reset_index(drop=True), check_dtype=False)
    assert mod.make_figures(d, tmp_path / "fig2")


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
    for f in ("conditions.csv", "diffusion_overlap.csv", "findings.json", "selections.json",
              "sweep_sentiment/sweep.json", "sweep_french/sweep.json", "figure_data/overlap.json"):
        assert (d / f).exists(), f
    for f in ("overlap_table.csv", "cells_table_sentiment.csv", "cells_table_french.csv"):
        assert not (d / f).exists(), f"{f} repeats other saved files"
    for f in ("score_curves", "perplexity_curves", "kl_curves", "overlap", "diffusion",
              "features_sentiment"):
        assert (tmp_path / "fig" / f"sae_steering_{f}.html").exists(), f
    # every condition is norm-matched (the residual norm at the SAE's layer)
    for vecs in out["vectors"].values():
        norms = {name: v.norms[1] for name, v in vecs.items()}
        assert max(norms.values()) == pytest.approx(min(norms.values()), rel=1e-5), norms
    # score shift and the paired difference from random, recomputed from the saved sweep
    cells = out["cells"]
    table = load_sweep(d / "sweep_french").table
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


def test_spectral_weights_on_tiny_writes_rows_through_the_shared_writer(tiny, tmp_path):
    mod = _load("spectral_weights")
    d = tmp_path / "sw"
    out = mod.main(["--model", "tiny-random", "--out", str(d), "--fig-dir", str(tmp_path / "fig"),
                    "--n-prompts", "2", "--n-texts", "2", "--max-words", "10", "--layers", "0,1",
                    "--alphas", "-0.3", "0.3", "--max-new-tokens", "2", "--n-boot", "50",
                    "--no-progress"], model=tiny)
    saved = json.loads((d / "findings.json").read_text())
    assert saved["analysis"] == "spectral_weights" and saved["quick"] is False
    assert saved["settings"]["layers"] == [0, 1] and saved["settings"]["alphas"] == [-0.3, 0.3]
    best = max(out["result"].points, key=lambda p: p.delta_score.estimate)
    rows = findings.load_findings(d / "findings.json")
    assert rows[0].headline and rows[0].value == pytest.approx(best.delta_score.estimate)
    assert rows[1].value == pytest.approx(best.delta_nll.estimate)
    assert not (tmp_path / findings.FINDINGS_MD).exists()  # saved outside results/: no rebuild
    assert {e.path.name for e in mod.make_figures(tmp_path, tmp_path / "fig2")} == {
        "spectral_weights_tiny-random_alpha_curves.html", "spectral_weights_tiny-random_spectrum.html"}


@pytest.mark.parametrize("name,files", [
    ("refusal", ("refusal.json", "conditions.csv", "sweep.csv", "findings.json")),
    ("conditional_steering", ("conditional.json", "conditions.csv", "layers.csv", "findings.json")),
])
def test_refusal_analyses_quick_on_a_two_layer_model(tiny, tmp_path, name, files):
    # the default candidate layers (every 3rd from 3) do not exist in a 2-layer model; the quick
    # run falls back to the model's own layers instead of failing on an empty list
    _load(name).main(_args(name, tmp_path), model=tiny)
    for f in files:
        assert (tmp_path / name / f).exists(), f
    assert not (tmp_path / findings.FINDINGS_MD).exists()  # quick runs stay local
