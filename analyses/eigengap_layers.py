"""Do key-Gram eigengaps predict which layers steer well?

Steps, on one embedded model:
1. Eigengaps of every layer's key Gram matrices (per key/value head, before and after rotary) and
   of the attention patterns, on a behaviour's evaluation prompts; the layer table with the
   weakest-link (min), mean and median gap and the layers at or below the threshold.
2. The KRR reading of attention that the claim rests on: R² of K_qk (K_kk + λI)⁻¹ V against each
   head's actual output over a relative λ grid.
3. A steering sweep (CAA mean-difference vector from the behaviour's training pairs, every
   `--layer-step`-th layer, one strength, greedy generations scored by the behaviour's scorer,
   plus one norm-matched random direction per layer) giving the per-layer steering effect (mean
   paired change in score) and next-token KL. By default (`--scale residual`) each layer's
   vector is rescaled to the median residual-stream norm entering that layer, so the strength is
   a fraction of the residual norm and comparable across layers (raw mean-difference norms grow
   with depth, which would confound the per-layer effect with the perturbation size); layers
   whose vector is exactly zero are dropped.
4. Pearson and Spearman correlations (bootstrap CIs, permutation p) of min and mean gap with the
   effect, the layer the gaps rank first vs the best measured layer, and a verdict that judges
   both readings from the same intervals: the claim as stated (small gaps mark unstable heads
   that are susceptible to steering, so r(min gap, effect) < 0 and the gate keeps layers with
   min gap <= threshold, smallest first) and the inverse reading (r > 0).
5. Gating against chance, per reading: the fixed threshold (0.77), every quantile threshold of
   the model's own min gaps (0.1-0.5, descriptive), and a quantile chosen on one half of the
   prompts (even indices; the largest mean effect of the gated layers) and tested on the other
   (odd indices), then the reverse. The test is precision@k of the gated layers against the k
   layers with the largest measured effect (exact hypergeometric p) and the gated layers' mean
   effect against every same-size random layer set (the random-layer baseline).

Writes results/eigengap_layers/<model>/ (summary.json, arrays.json, layer_table.csv, findings.json
and the resumable sweep) and figures/eigengap_layers_<model>_*.html.

    python -m analyses.eigengap_layers [--model smollm2-135m-instruct] [--device cpu]
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.spectral import eigengap_profile, gap_vs_effect, krr_r2_heatmap
from steerlens.io import atomic_write_text
from steerlens.methods import build_vector
from steerlens.pairs import load_behaviour
from steerlens.spectral import (
    DEFAULT_QUANTILES,
    GATING_READINGS,
    EigengapResult,
    GapPrediction,
    GapTable,
    KRRResult,
    eigengaps,
    gating_test,
    krr_fit,
    load_heldout,
    predict_steering,
    quantile_gate,
    reading_verdicts,
    split_gating,
)
from steerlens.stats import CorrelationResult
from steerlens.sweep import effect_values, layer_effect, sweep

from . import command
from ._common import (
    Context,
    GalleryEntry,
    each_run,
    jsonable,
    parser,
    residual_norms,
    scale_to_residual,
    start,
)
from .findings import Finding, fmt, save_findings

NAME = "eigengap_layers"


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0], quick=False, per_model=True)
    p.add_argument("--behaviour", default="sentiment")
    p.add_argument("--n-prompts", type=int, default=12, help="evaluation prompts (gaps + sweep)")
    p.add_argument("--krr-prompts", type=int, default=6)
    p.add_argument("--layer-step", type=int, default=2)
    p.add_argument("--scale", choices=["residual", "raw"], default="residual",
                   help="residual: strength is a fraction of the median residual norm per layer; "
                   "raw: strength multiplies the raw mean-difference vector")
    p.add_argument("--strength", type=float, default=None,
                   help="the one strength swept (default 0.3 with --scale residual, 6 with raw)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--n-random", type=int, default=1)
    p.add_argument("--threshold", type=float, default=0.77)
    p.add_argument("--n-boot", type=int, default=2000)
    return p


def corr_line(name: str, c) -> str:
    return (f"  {name:<28} r = {c.r:+.3f}  95% CI [{c.ci_low:+.3f}, {c.ci_high:+.3f}]  "
            f"p_perm = {c.p_perm:.4f}  (n = {c.n} layers)")


def verdict(pred) -> str:
    """Judge both readings of the min-gap correlation from the same intervals (`reading_verdicts`).

    The claim as stated predicts r(min gap, effect) < 0. SUPPORTED when both the Pearson and the
    Spearman CI lie below 0; CONTRADICTED (the inverse reading holds) when both lie above 0;
    PARTIAL when only one of them lies on one side; NOT SUPPORTED under either reading otherwise."""
    mp, ms = pred.min_pearson, pred.min_spearman
    vp, vs = reading_verdicts(mp), reading_verdicts(ms)
    if vp["stated"] == vs["stated"] == "supported":
        head = ("SUPPORTED: the weakest-link gap correlates negatively with the steering effect "
                "(small gaps steer more, as stated)")
    elif vp["inverse"] == vs["inverse"] == "supported":
        head = ("CONTRADICTED: the weakest-link gap correlates positively with the steering effect "
                "(the inverse reading holds, not the stated one)")
    elif "supported" in (vp["stated"], vs["stated"], vp["inverse"], vs["inverse"]):
        which = [f"{m} ({r})" for m, v in (("Pearson", vp), ("Spearman", vs))
                 for r in GATING_READINGS if v[r] == "supported"]
        head = "PARTIAL: only " + ", ".join(which) + " has a CI on one side of 0"
    else:
        head = ("NOT SUPPORTED: no reliable correlation between weakest-link gap and steering "
                "effect under either reading")
    better = abs(mp.r) > abs(pred.mean_pearson.r)
    return (f"{head} (Pearson r = {mp.r:+.2f} [{mp.ci_low:+.2f}, {mp.ci_high:+.2f}], p = "
            f"{mp.p_perm:.3f}; Spearman {ms.r:+.2f} [{ms.ci_low:+.2f}, {ms.ci_high:+.2f}], p = "
            f"{ms.p_perm:.3f}; n = {pred.n} layers; the stated reading predicts r < 0, the "
            f"inverse r > 0). The min gap {'beats' if better else 'does not beat'} the mean gap "
            f"in |r| (Pearson r = {pred.mean_pearson.r:+.2f} [{pred.mean_pearson.ci_low:+.2f}, "
            f"{pred.mean_pearson.ci_high:+.2f}]). Gated at {pred.threshold:g} as stated: "
            f"{list(pred.ranking) or 'no swept layer'}; best measured layer {pred.best_layer}.")


def per_prompt_effect(res, strength: float, layers: list[int]) -> np.ndarray:
    """[prompt, layer] score change of the real (non-random) vector at `strength`, from a sweep."""
    ev = effect_values(res, "score")
    ev = ev[(~ev["is_random"].astype(bool)) & (ev["strength"] == float(strength))]
    table = ev.pivot_table(index="prompt_idx", columns="layer", values="effect", aggfunc="mean",
                           dropna=False)
    return table.reindex(columns=layers).to_numpy(float)


def gating_analysis(table: GapTable, effect: np.ndarray, layers: list[int], threshold: float,
                    seed: int = 0) -> dict:
    """Both readings' gates against random layer sets (see step 5 of the module docstring).

    `effect` is the per-prompt score change [prompt, layer] for `layers` on the prompts the gaps
    were computed on."""
    cols = [table.layers.index(layer) for layer in layers]
    gap_pp = table.per_prompt("min")[:, cols]
    gap = {layer: float(v) for layer, v in zip(layers, gap_pp.mean(0))}
    count = np.isfinite(effect).sum(0)
    mean_eff = np.where(count > 0, np.nansum(effect, 0) / np.maximum(count, 1), np.nan)
    eff = {layer: float(v) for layer, v in zip(layers, mean_eff)}
    out = {"split": "quantile chosen on even-index prompts, tested on odd-index prompts, and the "
                    "reverse; selection criterion: largest mean effect of the gated layers",
           "quantiles": list(DEFAULT_QUANTILES), "n_prompts": int(effect.shape[0]),
           "readings": {}}
    for reading in GATING_READINGS:
        fixed = gating_test(gap, eff, threshold, reading, seed=seed)
        curve = []
        for q in DEFAULT_QUANTILES:
            t, _ = quantile_gate(gap, q, reading)
            curve.append(gating_test(gap, eff, t, reading, quantile=q, seed=seed).to_dict())
        folds = split_gating(gap_pp, effect, layers, reading, seed=seed)
        out["readings"][reading] = {"fixed_threshold": fixed.to_dict(), "quantile_curve": curve,
                                    "split": [f.to_dict() for f in folds]}
    return out


def gating_line(gating: dict) -> str:
    """One sentence: does a split-chosen quantile gate beat random layer sets, per reading?"""
    parts = []
    for reading, d in gating["readings"].items():
        folds = d["split"]
        ps = ", ".join(f"q={f['quantile']:g}: precision {f['test']['precision']:.2f} vs "
                       f"{f['test']['expected_precision']:.2f} random, p = "
                       f"{f['test']['p_precision']:.2f}; mean-effect p = "
                       f"{f['test']['p_mean_effect']:.2f}" for f in folds)
        better = any(f["test"]["p_mean_effect"] < 0.05 and f["test"]["p_precision"] < 0.05
                     for f in folds)
        parts.append(f"{reading} reading {'beats' if better else 'does not beat'} random layer "
                     f"sets ({ps})")
    return "Quantile gate chosen on half the prompts, tested on the other half: " + \
        "; ".join(parts) + "."


ARRAYS_FILE = "arrays.json"  # full per-prompt gap and R² arrays, for redrawing the figures


def gaps_arrays(gaps: EigengapResult) -> dict:
    tables = {k: t for k, t in (("keys", gaps.keys), ("rotated_keys", gaps.rotated_keys),
                                ("patterns", gaps.patterns)) if t is not None}
    return {"model": gaps.model, "n_tokens": list(gaps.n_tokens), "threshold": gaps.threshold,
            **{k: {"kind": t.kind, "layers": list(t.layers), "gaps": t.gaps.tolist(),
                   "lambda1": t.lambda1.tolist(), "lambda2": t.lambda2.tolist(),
                   "threshold": t.threshold} for k, t in tables.items()}}


def krr_arrays(krr: KRRResult) -> dict:
    return {"model": krr.model, "layers": list(krr.layers), "lambdas": list(krr.lambdas),
            "relative": krr.relative, "causal": krr.causal, "r2": krr.r2.tolist(),
            "n_tokens": list(krr.n_tokens)}


def _gap_table(d: dict | None) -> GapTable | None:
    if d is None:
        return None
    return GapTable(d["kind"], tuple(d["layers"]), np.asarray(d["gaps"], float),
                    np.asarray(d["lambda1"], float), np.asarray(d["lambda2"], float),
                    float(d["threshold"]))


def _correlation(d: dict) -> CorrelationResult:
    """A CorrelationResult from its saved dict (undefined values were saved as null)."""
    num = {k: math.nan if d[k] is None else float(d[k]) for k in ("r", "ci_low", "ci_high", "p_perm")}
    return CorrelationResult(num["r"], num["ci_low"], num["ci_high"], num["p_perm"], d["n"],
                             d["method"])


def saved_prediction(d: dict) -> GapPrediction:
    """Rebuild a GapPrediction from its `to_dict()` form in summary.json."""
    rows = d["layers"]
    return GapPrediction(
        d["kind"], tuple(r["layer"] for r in rows), np.array([r["min_gap"] for r in rows]),
        np.array([r["mean_gap"] for r in rows]), np.array([r["effect"] for r in rows]), d["effect"],
        _correlation(d["min_gap_pearson"]), _correlation(d["min_gap_spearman"]),
        _correlation(d["mean_gap_pearson"]), _correlation(d["mean_gap_spearman"]),
        tuple(d["ranking"]), float(d["threshold"]), d.get("reading", "inverse"))


def draw(out: Path, fig_dir: Path, results_command: str | None = None) -> list[GalleryEntry]:
    """Draw one model's figures from `out` (summary.json, arrays.json; no model)."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    name, n = summary["model"], summary["n_prompts"]
    cmd = results_command or command(NAME, f"--model {name}")
    entries = []
    primary = "rotated_keys" if summary["eigengaps"].get("rotated_keys") else "keys"
    pred = saved_prediction(summary["predictions"][f"{primary}/score"])
    path = save_html(gap_vs_effect(pred), fig_dir / f"eigengap_layers_{name}_correlation.html")
    entries.append(GalleryEntry(
        NAME, path, f"{name}: eigengap vs steering effect",
        f"Per-layer min and mean key eigengap vs the sentiment-score effect at "
        f"{summary['strength']:g} ({summary['scale']} scale), n={pred.n} layers x {n} prompts; "
        f"Pearson/Spearman with bootstrap CI and permutation p.", cmd))
    if (out / ARRAYS_FILE).exists():
        arrays = json.loads((out / ARRAYS_FILE).read_text(encoding="utf-8"))
        g = arrays["eigengaps"]
        gaps = EigengapResult(g["model"], tuple(g["n_tokens"]), float(g["threshold"]),
                              _gap_table(g["keys"]), _gap_table(g.get("rotated_keys")),
                              _gap_table(g.get("patterns")))
        path = save_html(eigengap_profile(gaps), fig_dir / f"eigengap_layers_{name}_profile.html")
        entries.append(GalleryEntry(
            NAME, path, f"{name}: eigengap profile",
            f"Weakest-link (min), mean and median eigengap per layer for keys (pre/post rotary) "
            f"and attention patterns, n={gaps.n_prompts} prompts.", cmd))
        k = arrays["krr"]
        krr = KRRResult(k["model"], tuple(k["layers"]), tuple(k["lambdas"]), k["relative"],
                        k["causal"], np.asarray(k["r2"], float), tuple(k["n_tokens"]))
        path = save_html(krr_r2_heatmap(krr), fig_dir / f"eigengap_layers_{name}_krr.html")
        entries.append(GalleryEntry(
            NAME, path, f"{name}: KRR reading of attention",
            f"Median R² of the kernel-ridge-regression reading of each head's output per layer "
            f"and λ, n={krr.n_prompts} prompts.", cmd))
    return entries


make_figures = each_run(draw)  # the gallery hook: one model per subdirectory of results_dir


def findings_from_run(out: Path) -> list[Finding]:
    """The finding rows of one model's run, from its saved summary.json and arrays.json: the gap
    vs effect correlations (with the random-direction control), the post-softmax pattern gaps and
    the KRR reading."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    name, n_prompts = summary["model"], summary["n_prompts"]
    preds = {k: saved_prediction(d) for k, d in summary["predictions"].items()}
    kind = "rotated_keys" if "rotated_keys/score" in preds else "keys"
    rc = preds[f"{kind}/random_control_score"].min_pearson \
        if f"{kind}/random_control_score" in preds else None
    control = (f"r(min gap, random-direction Δ) = {rc.r:+.2f} [{rc.ci_low:+.2f}, "
               f"{rc.ci_high:+.2f}]" if rc else "none")
    if rc and not math.isfinite(rc.r):
        rand = preds[f"{kind}/random_control_score"].effect
        control = (f"random-direction Δ {fmt(float(rand[0]))} at every layer (constant), so "
                   "r(min gap, random-direction Δ) is undefined" if np.ptp(rand) == 0 else
                   "r(min gap, random-direction Δ) undefined")
    out_rows = []
    for key, label in ((f"{kind}/score", f"Δ {summary['behaviour']} score"),
                       (f"{kind}/score_minus_random", "Δ score minus random-direction Δ")):
        if key not in preds:
            continue
        p = preds[key]
        for stat, c in (("min gap", p.min_pearson), ("min gap (Spearman)", p.min_spearman),
                        ("mean gap", p.mean_pearson)):
            head = key.endswith("/score") and stat == "min gap"
            rv = reading_verdicts(c)
            out_rows.append(Finding(
                NAME, f"{name}: r({stat}, {label})", c.r, c.ci_low, c.ci_high,
                f"{c.n} layers x {n_prompts} prompts", control,
                (summary["verdict"].split(":")[0] + f" (stated reading, r < 0: {rv['stated']}; "
                 f"inverse, r > 0: {rv['inverse']}); " if head else "")
                + f"p_perm = {c.p_perm:.3f}"
                + (f"; gated at {p.threshold:g} ({p.reading}): "
                   f"{', '.join(f'L{x}' for x in p.ranking) or 'no swept layer'}; best measured "
                   f"L{p.best_layer}" if head else ""), headline=head))
    patterns = summary["eigengaps"].get("patterns")
    if patterns:
        per_layer = np.asarray(patterns["head_gap"], float).mean(1)
        out_rows.append(Finding(
            NAME, f"{name}: post-softmax attention-pattern eigengap, mean per layer (value = "
            "overall mean; range over layers in CI columns)", summary["pattern_gap_overall_mean"],
            float(per_layer.min()), float(per_layer.max()),
            f"{len(per_layer)} layers x {patterns['n_prompts']} prompts", "-",
            ("near 1 in every layer" if per_layer.min() > 0.95 else
             f"not collapsed to ~1: per-layer means {fmt(per_layer.min())} to "
             f"{fmt(per_layer.max())}") + f"; key gaps overall {fmt(summary['key_gap_overall_mean'])}",
            headline=True))
    for reading, d in summary.get("gating", {}).get("readings", {}).items():
        for i, f in enumerate(d["split"]):
            t = f["test"]
            out_rows.append(Finding(
                NAME, f"{name}: {reading}-reading gate (min gap "
                + (f"<= its {f['quantile']:g} quantile" if reading == "stated" else
                   f"> its {1 - f['quantile']:g} quantile")
                + f" over layers, q = {f['quantile']:g} chosen on {'even' if i == 0 else 'odd'}-"
                f"index prompts, tested on {'odd' if i == 0 else 'even'}-index): precision@k of "
                "gated layers among the top-k measured", t["precision"], None, None,
                f"k = {t['k']} of {t['n_layers']} layers x {len(f['test_prompts'])} prompts",
                f"random k-set precision {t['expected_precision']:.2f}; gated mean effect "
                f"{fmt(t['mean_effect'])} vs random k-sets {fmt(t['random_mean'])} "
                f"[{fmt(t['random_low'])}, {fmt(t['random_high'])}]",
                f"p_precision = {t['p_precision']:.3f}, p_mean_effect = {t['p_mean_effect']:.3f}: "
                + ("better than random layers" if t["p_precision"] < 0.05
                   and t["p_mean_effect"] < 0.05 else "no better than random layers"),
                headline=False))
    arrays = json.loads((out / ARRAYS_FILE).read_text(encoding="utf-8"))
    best = np.asarray(arrays["krr"]["r2"], float).max(-1)  # best λ per (prompt, layer, head)
    out_rows.append(Finding(
        NAME, f"{name}: KRR reading of attention, median over (prompt, layer, head) of the best-λ "
        "R² against the head's output", float(np.median(best)), None, None,
        f"{best.shape[0]} prompts", "-",
        f"best-λ R² > 0 for {summary['krr_fraction_positive_r2']:.0%} of (prompt, layer, head)"
        + ("; the KRR formula does not reproduce head outputs" if np.median(best) < 0 else ""),
        headline=True))
    return out_rows


def save_run_findings(ctx: Context) -> Path:
    """Write `ctx.out`/findings.json from the run saved there (summary.json, arrays.json)."""
    summary = json.loads((ctx.out / "summary.json").read_text(encoding="utf-8"))
    settings = {k: v for k, v in summary.items()
                if k in ("model", "behaviour", "n_prompts", "strength", "scale", "max_new_tokens",
                         "n_random", "sweep_layers", "zero_vector_layers", "threshold")}
    return save_findings(ctx, findings_from_run(ctx.out), settings, notes=[summary["verdict"]])


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    t0 = time.time()
    args, ctx, model = start(NAME, build_parser(), argv, model, per_model=True)
    name = runtime.model_id(model)
    out, figs = ctx.out, ctx.fig_dir
    behaviour = load_behaviour(args.behaviour)
    prompts = list(behaviour.eval_prompts[: args.n_prompts])
    chat = runtime.is_instruct(model) and runtime.has_chat_template(model)
    n_layers = runtime.n_layers(model)
    print(f"model {name}: {n_layers} layers; behaviour {behaviour.name}; n = {len(prompts)} prompts "
          f"(chat={chat})")

    # 1. eigengaps (all layers)
    gaps = eigengaps(model, prompts, chat=chat, threshold=args.threshold)
    print(f"[{time.time() - t0:.0f}s] eigengaps: tokens per prompt {min(gaps.n_tokens)}-"
          f"{max(gaps.n_tokens)}")
    # 2. KRR reading
    krr = krr_fit(model, prompts[: args.krr_prompts], chat=chat)
    print(f"[{time.time() - t0:.0f}s] KRR R² on n = {krr.n_prompts} prompts")

    # 3. steering sweep
    if args.strength is None:
        args.strength = 0.3 if args.scale == "residual" else 6.0
    layers = list(range(0, n_layers, args.layer_step))
    vec = build_vector(model, behaviour.train, layers, chat=chat, show_progress=False)
    # A layer whose vector is exactly zero cannot be steered (e.g. layer 0's resid_pre is the
    # token embedding, and the contrast completions can end on the same token): leave it out.
    raw_norms = vec.norms
    zero = [layer for layer in layers if raw_norms[layer] == 0.0]
    layers = [layer for layer in layers if raw_norms[layer] > 0.0]
    if zero:
        print(f"layers {zero} have a zero steering vector and are left out")
    vec = vec.select(layers)
    resid = {}
    if args.scale == "residual":
        resid = residual_norms(model, load_heldout(8, max_words=80), layers)
        vec = scale_to_residual(vec, resid)
    res = sweep(model, prompts, vec, layers=layers, strengths=[args.strength],
                measures=("kl", "generate"),
                scorer=behaviour.scorer, max_new_tokens=args.max_new_tokens,
                n_random=args.n_random, random_seed=ctx.seed, chat=chat,
                show_progress=ctx.progress, resume=ctx.resume,
                out_dir=out / f"sweep_{args.scale}_{args.strength:g}_step{args.layer_step}")
    unit = "x median residual norm" if args.scale == "residual" else "x raw vector"
    print(f"[{time.time() - t0:.0f}s] sweep: {len(layers)} layers x {len(prompts)} prompts, "
          f"strength {args.strength:+g} {unit}, {args.n_random} random control(s)")
    eff = layer_effect(res, "score", args.strength, n_boot=args.n_boot)
    kl_eff = layer_effect(res, "kl_bits", args.strength, n_boot=args.n_boot)
    real = eff[~eff["is_random"].astype(bool)].set_index("layer")
    rand = eff[eff["is_random"].astype(bool)].groupby("layer")["effect"].mean()
    kl_real = kl_eff[~kl_eff["is_random"].astype(bool)].set_index("layer")
    usable = layers
    score_eff = {layer: float(real.loc[layer, "effect"]) for layer in usable}
    kl_map = {layer: float(kl_real.loc[layer, "effect"]) for layer in usable}
    specific = {layer: score_eff[layer] - float(rand[layer]) for layer in usable if layer in rand}

    # 4. predictions
    preds = {}
    for kind in ("rotated_keys", "keys") if gaps.rotated_keys is not None else ("keys",):
        kw = {"kind": kind, "n_boot": args.n_boot, "n_perm": args.n_boot}
        preds[f"{kind}/score"] = predict_steering(
            gaps, score_eff, effect_label=f"Δ {behaviour.name} score", **kw)
        if specific:
            preds[f"{kind}/score_minus_random"] = predict_steering(
                gaps, specific, effect_label=f"Δ {behaviour.name} score minus random-direction Δ",
                **kw)
            preds[f"{kind}/random_control_score"] = predict_steering(
                gaps, {layer: float(rand[layer]) for layer in usable},
                effect_label="Δ score, random direction", **kw)
        preds[f"{kind}/kl"] = predict_steering(gaps, kl_map, effect_label="next-token KL (bits)",
                                               **kw)

    primary_kind = "rotated_keys" if gaps.rotated_keys is not None else "keys"
    table = gaps.table(primary_kind)
    gating = gating_analysis(table, per_prompt_effect(res, args.strength, usable), usable,
                             args.threshold, seed=ctx.seed)
    rows = []
    for r in table.rows():
        layer = r["layer"]
        row = {"layer": layer, "min_gap": r["min_gap"], "mean_gap": r["mean_gap"],
               "median_gap": r["median_gap"], "flagged": r["flagged"],
               "min_gap_prerotary": gaps.keys.rows()[table.layers.index(layer)]["min_gap"],
               "pattern_mean_gap": (float(gaps.patterns.mean_gap[table.layers.index(layer)])
                                    if gaps.patterns is not None else math.nan),
               "krr_median_r2_best_lambda": float(np.median(krr.r2[:, krr.layers.index(layer)]
                                                            .max(-1)))}
        if layer in real.index:
            row.update(raw_vector_norm=raw_norms[layer],
                       residual_norm=resid.get(layer, math.nan), effect=real.loc[layer, "effect"],
                       effect_low=real.loc[layer, "low"],
                       effect_high=real.loc[layer, "high"], effect_n=int(real.loc[layer, "n"]),
                       random_effect=float(rand.get(layer, math.nan)),
                       kl_bits=kl_real.loc[layer, "effect"])
        rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write_text(out / "layer_table.csv", df.to_csv(index=False))
    summary = {
        "model": name, "behaviour": behaviour.name, "n_prompts": len(prompts),
        "n_tokens": list(gaps.n_tokens), "strength": args.strength, "scale": args.scale,
        "max_new_tokens": args.max_new_tokens, "n_random": args.n_random,
        "sweep_layers": layers, "zero_vector_layers": zero, "threshold": args.threshold,
        "eigengaps": gaps.to_dict(), "krr": krr.to_dict(),
        "predictions": {k: p.to_dict() for k, p in preds.items()},
        "verdict": verdict(preds[f"{primary_kind}/score"]) + " " + gating_line(gating),
        "readings": {stat: reading_verdicts(c) for stat, c in (
            ("min_gap_pearson", preds[f"{primary_kind}/score"].min_pearson),
            ("min_gap_spearman", preds[f"{primary_kind}/score"].min_spearman))},
        "gating": gating,
        "krr_fraction_positive_r2": float((krr.r2.max(-1) > 0).mean()),
        "pattern_gap_overall_mean": (float(gaps.patterns.gaps.mean())
                                     if gaps.patterns is not None else None),
        "key_gap_overall_mean": float(table.gaps.mean()),
        "seconds": time.time() - t0,
    }
    atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2))
    atomic_write_text(out / ARRAYS_FILE, json.dumps(jsonable(
        {"eigengaps": gaps_arrays(gaps), "krr": krr_arrays(krr)})))
    save_run_findings(ctx)
    draw(out, figs)

    pd.set_option("display.width", 200)
    print(f"\nLayer table ({primary_kind}; gaps over n = {len(prompts)} prompts; effect = mean Δ "
          f"{behaviour.name} score at strength {args.strength:+g} {unit}, n = {len(prompts)} "
          f"prompts):")
    print(df[["layer", "min_gap", "mean_gap", "median_gap", "flagged", "raw_vector_norm",
              "effect", "effect_low", "effect_high", "random_effect", "kl_bits"]]
          .to_string(index=False, float_format="%.3f"))
    print(f"\nFlagged layers (min gap <= {args.threshold}): {list(table.flagged())}")
    print(f"Pattern gaps: mean {summary['pattern_gap_overall_mean']:.3f} vs key gaps mean "
          f"{summary['key_gap_overall_mean']:.3f}")
    print(f"KRR: best-λ R² > 0 for {summary['krr_fraction_positive_r2']:.1%} of (prompt, layer, "
          f"head); median best-λ R² {float(np.median(krr.r2.max(-1))):+.3f} "
          f"(n = {krr.n_prompts} prompts)")
    for key, p in preds.items():
        print(f"\n{key} vs {p.effect_label}:")
        print(corr_line("min gap, Pearson", p.min_pearson))
        print(corr_line("min gap, Spearman", p.min_spearman))
        print(corr_line("mean gap, Pearson", p.mean_pearson))
        print(corr_line("mean gap, Spearman", p.mean_spearman))
        print(f"  predicted layer {p.predicted_layer}; best measured layer {p.best_layer}")
    for reading, d in gating["readings"].items():
        fx = d["fixed_threshold"]
        print(f"\n{reading} reading, fixed threshold {args.threshold}: gated {fx['gated']} "
              f"(precision {fx['precision']}, p {fx['p_precision']})")
        for c in d["quantile_curve"]:
            print(f"  q={c['quantile']:g} t={c['threshold']:.3f} gated {c['gated']} top-k "
                  f"{c['top_k']} precision {c['precision']:.2f} (random {c['expected_precision']:.2f},"
                  f" p {c['p_precision']:.3f}); mean effect {c['mean_effect']:+.3f} vs random "
                  f"[{c['random_low']:+.3f}, {c['random_high']:+.3f}] p {c['p_mean_effect']:.3f}")
    print("\nVerdict:", summary["verdict"])
    print(f"[{time.time() - t0:.0f}s] wrote {out} and {figs}/eigengap_layers_{name}_*.html")
    return {"summary": summary, "predictions": preds}


if __name__ == "__main__":
    main()
