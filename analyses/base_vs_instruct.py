"""Is an instruct model more fragile under steering than a base model? SmolLM2 vs Gemma 3.

Compares the embedded SmolLM2-135M-Instruct (30 layers, d_model 576) with the embedded Gemma 3
270M *base* model (18 layers, d_model 640) under the same behaviour (sentiment):

- Layers are matched by relative depth: fraction f of the way through the blocks maps to layer
  round(f x (n_layers - 1)) of each model.
- Strengths are matched by the residual stream's own scale. Residual norms differ between the
  models by orders of magnitude (Gemma multiplies its embeddings by sqrt(d_model), and norms grow
  with depth), so a raw multiple of a mean-difference vector means different things in each. Each
  model's vector (mean difference of its own activations on the train pairs) is rescaled per layer
  to the median per-token L2 norm of that model's residual stream entering that layer, measured
  on the same held-out prompts (`_common.residual_norms`). Strength s therefore adds
  s x (typical residual norm) at every layer of both models; s = 1 doubles the scale of a
  typical token's residual. `--norm centred` uses the median distance of a token's residual from
  the mean residual instead (the stream's spread), which discounts constant massive-activation
  dimensions: in Gemma one dimension carries most of the residual norm (e.g. 5114 of 5493 at
  layer 8), so the plain norm lets Gemma's push be several times larger relative to how much its
  residuals actually vary from token to token. Results of that check go to `<out>/centred/`.
- Both models read the same raw text (no chat template), so the inputs match; SmolLM2 is also
  measured with its chat template, to show how much the input format alone moves the numbers.

Measures: next-token KL (bits) after each held-out prompt (`sweep`, with norm-matched random
directions); degeneration as the perplexity of held-out prose under steering relative to
unsteered (`measures.text_perplexity`, reported as the mean log2 ratio, with a random direction);
greedy change rate on a few prompts (`sweep` with generation).

Breakdown point with a task score (`--breakdown`, results in `<out>/breakdown/`): at one matched
depth (0.45: SmolLM2 L13, Gemma L8), a grid of pushes towards negative sentiment, |strength| in
{0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1} x median residual norm, with definitions fixed before
the run:
- breakdown point = the first |strength| where held-out prose perplexity doubles (mean over texts
  of log2(steered / unsteered) > 1); also for the steered continuations' own perplexity under the
  unsteered model;
- behaviour onset = the first |strength| where the mean paired VADER shift of greedy continuations
  of held-out prompts (raw text) is <= -0.2; the peak = the |strength| of the largest shift.
  VADER scores 0 on text without sentiment words, so each row also gives the fraction of
  continuations scored exactly 0 (degenerate output reads as a shift towards 0), and the onset's
  verdict says when the random direction reaches the onset shift at the same or a smaller push;
- CIs: the same first-crossing rule on bootstrap resamples of texts / prompts; a norm-matched
  random direction gives the random breakpoints;
- normalisation shown as above: each breakpoint is also given in units of the centred residual
  norm and of the raw mean-difference vector (the same push, relabelled), so the comparison can be
  read in each unit. `--breakdown-only 0|1` measures one model (two processes in parallel); a
  later `--breakdown` reuses the cached sweeps and perplexities.

Confound: the two models differ in family, size, tokenizer, training data and vocabulary, not only
in instruction tuning; any difference is "these two models", not "base vs instruct".

Saved in results/base_vs_instruct/ (`centred/` for `--norm centred`): per model label the
resumable sweeps (`<label>/kl_sweep/`, `<label>/gen_sweep/`), `models.json` (labels, layers, residual
norms), `ppl_table.csv` (every held-out text's perplexity, steered and unsteered), and the summaries
`kl_summary.csv` and `ppl_summary.csv`.

    python -m analyses.base_vs_instruct [--base-model gemma-3-270m] [--strengths 0.25,0.5,1]
    python -m analyses.base_vs_instruct --breakdown [--breakdown-depth 0.45] [--threads 1]
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.breakdown import BreakdownCurve, breakdown_curves
from steerlens.figures.kl import kl_by_layer as kl_figure
from steerlens.io import atomic_write_text
from steerlens.measures import text_perplexity
from steerlens.methods import random_like
from steerlens.spectral.evaluate import load_heldout
from steerlens.stats import bootstrap_ci, proportion_ci, ratio_ci
from steerlens.sweep import load_sweep, sweep

from . import command
from ._common import (
    GalleryEntry,
    add_list,
    add_strengths,
    cached_vector,
    context,
    deprecated_alias,
    get_model,
    heldout_prompts,
    log,
    parser,
    relative_layers,
    residual_norms,
    run_variants,
    scale_to_residual,
    sentiment_data,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, print_findings, save_findings

NAME = "base_vs_instruct"
BREAKDOWN_STRENGTHS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0]
ONSET_SHIFT = -0.2  # behaviour onset: mean VADER shift at or below this (10% of VADER's range)


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--base-model", default="gemma-3-270m")
    add_list(p, "--depths", float, [0.15, 0.3, 0.45, 0.6, 0.75, 0.9], "relative depths (0..1)")
    add_strengths(p, [0.25, 0.5, 1.0], "strengths as fractions of the median residual norm")
    p.add_argument("--n-prompts", type=int, default=26, help="held-out prompts for KL (max 26)")
    p.add_argument("--n-random", type=int, default=2)
    add_list(p, "--ppl-strengths", float, [0.5, 1.0], "strengths of the held-out perplexity check")
    deprecated_alias(p, "--ppl-alphas", "--ppl-strengths")
    p.add_argument("--n-texts", type=int, default=8, help="held-out prose paragraphs")
    p.add_argument("--max-words", type=int, default=60)
    p.add_argument("--gen-prompts", type=int, default=6, help="prompts for the change rate")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--no-chat-check", action="store_true", help="skip SmolLM2-with-chat KL")
    p.add_argument("--breakdown", action="store_true",
                   help="measure each model's breakdown point (behaviour score and perplexity "
                   "over a strength grid at one matched depth); results go to <out>/breakdown/")
    p.add_argument("--breakdown-depth", type=float, default=0.45)
    add_list(p, "--breakdown-strengths", float, BREAKDOWN_STRENGTHS,
             "|strengths| of the breakdown grid, x median residual norm (pushed towards negative "
             "sentiment)")
    p.add_argument("--breakdown-prompts", type=int, default=16)
    p.add_argument("--breakdown-saved", action="store_true",
                   help="use only finished generation sweeps already saved (a model without one "
                   "gets the perplexity breakdown only)")
    p.add_argument("--breakdown-only", type=int, choices=(0, 1), default=None,
                   help="measure only this model (0 = --model, 1 = --base-model) and stop; a later "
                   "--breakdown run reuses the cached measurements (two processes in parallel)")
    p.add_argument("--norm", choices=("norm", "centred"), default="norm",
                   help="yardstick for strengths: median residual norm, or median distance from the "
                   "mean residual (centred); centred results go to <out>/centred/")
    return p


def settings_for(args) -> dict:
    if args.quick:
        return dict(norm=args.norm, depths=[1.0], strengths=[0.5], n_prompts=2, n_random=1,
                    ppl_strengths=[0.5], n_texts=2, max_words=12, gen_prompts=1, max_new_tokens=2)
    return dict(norm=args.norm, depths=args.depths, strengths=args.strengths,
                n_prompts=args.n_prompts, n_random=args.n_random,
                ppl_strengths=args.ppl_strengths, n_texts=args.n_texts,
                max_words=args.max_words, gen_prompts=args.gen_prompts,
                max_new_tokens=args.max_new_tokens)


def measure_model(model, label: str, ctx, st, beh, prompts, texts, chat: bool,
                  vec_dir: Path) -> dict:
    """KL sweep, perplexity degeneration and change rate for one model (one input format)."""
    layers = relative_layers(model, st["depths"])
    depth_of = dict(zip(layers, st["depths"]))  # as `saved_kl_table` reads it back
    vec = cached_vector(model, beh, layers, ctx, cache_dir=vec_dir / label, chat=chat)
    plain = residual_norms(model, prompts, layers)
    centred = residual_norms(model, prompts, layers, centred=True)
    norms = centred if st["norm"] == "centred" else plain
    scaled = scale_to_residual(vec, norms)
    log(f"{label}: layers {layers}; median residual norms "
        + ", ".join(f"L{la} {norms[la]:.3g}" for la in layers))
    kl = sweep(model, prompts, {"sentiment": scaled}, layers=layers, strengths=st["strengths"],
               measures=("kl",),
               n_random=st["n_random"], random_seed=ctx.seed, chat=chat,
               out_dir=ctx.out / label / "kl_sweep", resume=ctx.resume, show_progress=ctx.progress)
    kt = kl.table.copy()
    kt["model"], kt["depth"] = label, kt["layer"].map(depth_of)
    out = {"label": label, "layers": layers, "norms": norms, "vector_norms": vec.norms,
           "plain_over_centred": {la: plain[la] / centred[la] for la in layers},
           "kl": kt, "model_id": runtime.model_id(model)}
    if chat:  # format check only: KL
        return out
    # degeneration: held-out prose perplexity under steering, as log2(steered / unsteered)
    base = text_perplexity(model, texts)
    rnd = random_like(scaled, seed=ctx.seed)
    rows = []
    for layer in layers:
        for a in st["ppl_strengths"]:
            for kind, v in (("real", scaled), ("random", rnd)):
                r = text_perplexity(model, texts, steering=v.layer(layer), strength=a)
                for i, (p0, p1) in enumerate(zip(base.perplexity, r.perplexity)):
                    rows.append({"model": label, "layer": layer, "depth": depth_of[layer],
                                 "strength": a, "kind": kind, "text_idx": i, "ppl_base": p0,
                                 "ppl_steered": p1, "log2_ratio": math.log2(p1 / p0)})
    out["ppl"] = pd.DataFrame(rows)
    # change rate: greedy continuations of a few prompts (no random control: cost)
    if st["gen_prompts"]:
        gen = sweep(model, prompts[: st["gen_prompts"]], {"sentiment": scaled}, layers=layers,
                    strengths=[0.0, *st["strengths"]], measures=("kl", "generate"),
                    max_new_tokens=st["max_new_tokens"], chat=chat,
                    out_dir=ctx.out / label / "gen_sweep", resume=ctx.resume,
                    show_progress=ctx.progress)
        gt = gen.table.copy()
        gt["model"], gt["depth"] = label, gt["layer"].map(depth_of)
        out["gen"] = gt
    return out


def _ci_row(vals: np.ndarray, seed: int) -> tuple[float, float, float]:
    c = bootstrap_ci(vals, n_boot=4000, seed=seed)
    return c.estimate, c.low, c.high


def summarise(results: list[dict], st, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (model, depth, strength): mean KL with CI and the random mean; per-model perplexity."""
    kl_rows = []
    for r in results:
        t = r["kl"]
        for (depth, layer, a), g in t.groupby(["depth", "layer", "strength"]):
            real = g[~g["is_random"]]["kl_bits"].to_numpy(float)
            rnd = g[g["is_random"]].groupby("vector")["kl_bits"].mean()
            est, lo, hi = _ci_row(real, seed)
            kl_rows.append({"model": r["label"], "depth": depth, "layer": layer, "strength": a,
                            "kl_mean": est, "kl_low": lo, "kl_high": hi, "n": real.size,
                            "kl_random": float(rnd.mean()) if len(rnd) else float("nan")})
    ppl_rows = []
    for r in results:
        if "ppl" not in r:
            continue
        for (depth, layer, a, kind), g in r["ppl"].groupby(["depth", "layer", "strength", "kind"]):
            est, lo, hi = _ci_row(g["log2_ratio"].to_numpy(float), seed)
            ppl_rows.append({"model": r["label"], "depth": depth, "layer": layer, "strength": a,
                             "kind": kind, "log2_ppl_ratio": est, "low": lo, "high": hi,
                             "n": len(g)})
    return pd.DataFrame(kl_rows), pd.DataFrame(ppl_rows)


def _per_prompt_kl(r: dict, strength: float) -> np.ndarray:
    """Per prompt, the real vector's KL averaged over the matched depths."""
    t = r["kl"]
    t = t[(~t["is_random"]) & (t["strength"] == strength)]
    return t.groupby("prompt_idx")["kl_bits"].mean().sort_index().to_numpy(float)


def _random_kl(r: dict, strength: float) -> float:
    t = r["kl"]
    t = t[t["is_random"] & (t["strength"] == strength)]
    return float(t["kl_bits"].mean()) if len(t) else float("nan")


def findings(results, kl_sum, ppl_sum, st, seed) -> list[Finding]:
    inst, base = results[0], results[1]
    out = []
    tag = f"[{st['norm']}] "
    n = int(kl_sum["n"].iloc[0])
    for a in st["strengths"]:
        # per prompt, mean KL over matched depths; paired ratio base / instruct
        ki, kb = _per_prompt_kl(inst, a), _per_prompt_kl(base, a)
        c = ratio_ci(kb, ki, n_boot=4000, seed=seed)
        ri, rb = _random_kl(inst, a), _random_kl(base, a)
        ci_i = bootstrap_ci(ki, n_boot=4000, seed=seed)
        ci_b = bootstrap_ci(kb, n_boot=4000, seed=seed)
        for r, cc, rr in ((inst, ci_i, ri), (base, ci_b, rb)):
            out.append(Finding(NAME, f"{tag}{r['label']}: next-token KL (bits), mean over depths "
                               f"{st['depths']}, strength {a:g}", cc.estimate, cc.low, cc.high,
                               f"{cc.n} prompts", f"random {fmt(rr)}", "-"))
        if c.low > 1:
            verdict = f"{base['label']} more disturbed"
        elif c.high < 1:
            verdict = f"{inst['label']} more disturbed"
        else:
            verdict = "no reliable difference (CI includes 1)"
        out.append(Finding(NAME, f"{tag}KL ratio {base['label']} / {inst['label']}, strength {a:g}",
                           c.estimate, c.low, c.high, f"{n} prompts (paired)",
                           f"random ratio {fmt(rb / ri) if ri > 0 else '-'}", verdict,
                           headline=True))
    if len(ppl_sum):
        for a in st["ppl_strengths"]:
            for r in results[:2]:
                g = r["ppl"]
                g = g[(g["strength"] == a)]
                real = g[g["kind"] == "real"].groupby("text_idx")["log2_ratio"].mean()
                rnd = g[g["kind"] == "random"]["log2_ratio"].mean()
                c = bootstrap_ci(real.to_numpy(float), n_boot=4000, seed=seed)
                out.append(Finding(
                    NAME, f"{tag}{r['label']}: degeneration, log2(perplexity steered / unsteered) on "
                    f"held-out prose, mean over depths, strength {a:g}", c.estimate, c.low, c.high,
                    f"{c.n} texts", f"random {fmt(rnd)}",
                    f"perplexity x{2 ** c.estimate:.2f}", headline=a == st["ppl_strengths"][0]))
    for r in results[:2]:
        if "gen" not in r:
            continue
        g = r["gen"]
        g = g[(~g["is_random"]) & (g["strength"] > 0)]
        for a, ga in g.groupby("strength"):
            k, m = int(ga["changed"].sum()), len(ga)
            ci = proportion_ci(k, m)
            out.append(Finding(NAME, f"{tag}{r['label']}: greedy change rate, all depths pooled, "
                               f"strength {a:g} (Wilson; cells not independent)", ci.estimate, ci.low,
                               ci.high, f"{m} cells ({ga['prompt_idx'].nunique()} prompts)",
                               "not run (cost)", "-"))
    return out


def saved_kl_table(out: Path) -> pd.DataFrame:
    """Every model's KL sweep records from a finished run in `out`, with the model label and the
    relative depth of each layer (rebuilt from the saved sweeps and models.json; no model)."""
    depths = json.loads((out / "findings.json").read_text(encoding="utf-8"))["settings"]["depths"]
    parts = []
    for m in json.loads((out / "models.json").read_text(encoding="utf-8")):
        t = load_sweep(out / m["label"] / "kl_sweep").table.copy()
        t["model"], t["depth"] = m["label"], t["layer"].map(dict(zip(m["layers"], depths)))
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Draw the KL-by-depth figures of a finished run from its saved sweeps (no model)."""
    settings = json.loads((out / "findings.json").read_text(encoding="utf-8"))["settings"]
    tag = "centred_" if settings.get("norm") == "centred" else ""
    table = saved_kl_table(out)
    n = int(table["prompt_idx"].nunique())
    entries = []
    # KL by relative depth (x = depth in % of layers), one series per model, at each strength
    for a in pd.unique(table["strength"]):
        series = {}
        for label, t in table[table["strength"] == a].groupby("model", sort=False):
            series[label] = {int(round(100 * d)): g[~g["is_random"]]["kl_bits"].to_numpy(float)
                             for d, g in t.groupby("depth")}
            series[f"{label} random"] = {
                int(round(100 * d)): g[g["is_random"]].groupby("prompt_idx")["kl_bits"].mean()
                .to_numpy(float) for d, g in t.groupby("depth")}
        fig = kl_figure(series)
        fig.update_layout(
            title=f"Next-token KL vs relative depth, push = {a:g} x median residual norm "
                  f"(n={n} prompts, mean and 95% CI; random = norm-matched directions)",
            xaxis_title="depth (% of layers)")
        path = save_html(fig, fig_dir / f"{NAME}_{tag}kl_strength{a:g}.html")
        scale = "mean-centred residual norm" if tag else "median residual norm"
        entries.append(GalleryEntry(
            NAME, path, f"KL vs relative depth, {a:g} x {scale}",
            f"SmolLM2-Instruct vs Gemma-3-270M base (and SmolLM2 with its chat template), push "
            f"{a:g} x {scale}, with random directions (n={n} prompts, 95% CI).", results_command))
    return entries


# the gallery hook: the plain-norm run, the run in centred/ and the breakdown run, where present
_kl_figures = run_variants(NAME, draw, "models.json", {"centred": ("--norm centred",)})


def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
    """Redraw every saved run's figures (KL runs and the breakdown run) from the saved results."""
    entries = _kl_figures(results_dir, figures_dir)
    if (Path(results_dir) / "breakdown" / "breakdown.json").exists():
        entries += draw_breakdown(Path(results_dir) / "breakdown", Path(figures_dir))
    return entries


# ------------------------------------------------------------------------------ breakdown point


def first_crossing(strengths: np.ndarray, values: np.ndarray, threshold: float,
                   above: bool = True) -> float:
    """The smallest strength whose value is above (or at/below, `above=False`) the threshold;
    inf if none is. `strengths` ascending, `values` one per strength."""
    hit = values > threshold if above else values <= threshold
    idx = np.flatnonzero(hit)
    return float(strengths[idx[0]]) if idx.size else math.inf


def crossing_ci(strengths: np.ndarray, per_unit: np.ndarray, threshold: float, above: bool,
                n_boot: int, seed: int) -> tuple[float, float, float]:
    """First crossing of the mean over units (rows of `per_unit`: unit x strength), with a
    percentile bootstrap interval over units (the crossing is a grid value; inf = never)."""
    est = first_crossing(strengths, per_unit.mean(0), threshold, above)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_unit.shape[0], size=(n_boot, per_unit.shape[0]))
    boots = np.array([first_crossing(strengths, per_unit[i].mean(0), threshold, above)
                      for i in idx])
    lo, hi = np.percentile(boots, [2.5, 97.5], method="lower"), np.percentile(
        boots, [97.5], method="higher")[0]
    return est, float(lo[0]), float(hi)


def breakdown_model(model, label: str, ctx, st: dict, beh, prompts, texts, out: Path) -> dict:
    """One model's strength grid at one matched depth: sentiment score and continuation
    perplexity (sweep, with a norm-matched random direction) and held-out prose perplexity."""
    layer = relative_layers(model, [st["depth"]])[0]
    vec = cached_vector(model, beh, [layer], ctx, cache_dir=out / label, chat=False)
    plain = residual_norms(model, prompts, [layer])[layer]
    centred = residual_norms(model, prompts, [layer], centred=True)[layer]
    scaled = scale_to_residual(vec, {layer: plain})
    grid = [0.0, *[-a for a in st["strengths"]]]  # pushed towards negative sentiment
    log(f"{NAME} breakdown: {label} L{layer}, median residual norm {plain:.3g} (centred "
        f"{centred:.3g}), |vector| {vec.norms[layer]:.3g}")
    # held-out prose perplexity first (the breakdown point), cached in <label>/ppl.csv
    ppl_path = out / label / "ppl.csv"
    key = json.dumps({"grid": grid, "n_texts": len(texts), "n_random": st["n_random_ppl"],
                      "layer": layer, "seed": ctx.seed})
    key_path = out / label / "ppl_key.json"
    if (ctx.resume and ppl_path.exists() and key_path.exists()
            and key_path.read_text(encoding="utf-8") == key):
        ppl = pd.read_csv(ppl_path)
    else:
        base = text_perplexity(model, texts)
        rows = []
        for kind, v in (("real", scaled), *((f"random {r}", random_like(scaled, seed=ctx.seed + r))
                                            for r in range(st["n_random_ppl"]))):
            for a in grid[1:]:
                r = text_perplexity(model, texts, steering=v.layer(layer), strength=a)
                for i, (p0, p1) in enumerate(zip(base.perplexity, r.perplexity)):
                    rows.append({"model": label, "kind": kind, "strength": abs(a), "text_idx": i,
                                 "log2_ratio": math.log2(p1 / p0) if p1 > 0 and math.isfinite(p1)
                                 else math.inf})
        ppl = pd.DataFrame(rows)
        write_csv(ppl_path, ppl)
        atomic_write_text(key_path, key)
    log(f"{NAME} breakdown: {label} prose perplexity done; generation sweep")
    gen = None
    if st.get("saved_only"):  # use the generation sweep only if a finished one is saved
        try:
            gen = load_sweep(out / label / "gen_sweep").table.copy()
        except (ValueError, FileNotFoundError) as err:
            log(f"{NAME} breakdown: {label}: no finished generation sweep ({err}); prose only")
    else:
        gen = sweep(model, prompts, {"sentiment": scaled}, layers=[layer], strengths=grid,
                    measures=("kl", "generate"), scorer="sentiment", n_random=1,
                    random_seed=ctx.seed, max_new_tokens=st["max_new_tokens"], chat=False,
                    out_dir=out / label / "gen_sweep", resume=ctx.resume,
                    show_progress=ctx.progress).table.copy()
    if gen is not None:
        gen["model"] = label
    return {"label": label, "model_id": runtime.model_id(model), "layer": layer,
            "plain_norm": plain, "centred_norm": centred, "vector_norm": vec.norms[layer],
            "gen": gen, "ppl": ppl}


def breakdown_points(r: dict, st: dict, seed: int) -> dict:
    """Onset, peak and breakdown strengths (x median residual norm) of one model, with CIs."""
    grid = np.array([0.0, *st["strengths"]])
    out = {"label": r["label"], "layer": r["layer"], "has_generation": r["gen"] is not None}
    g = r["gen"] if r["gen"] is not None else pd.DataFrame({"is_random": [], "failed": []})
    g = g[~g["failed"].astype(bool)] if "failed" in g else g
    g = g.assign(is_random=g["is_random"].astype(bool))
    for kind, sub in (("real", g[~g["is_random"]]), ("random", g[g["is_random"]])):
        if not len(sub):
            continue
        sub = sub.assign(a=sub["strength"].abs())
        score = sub.pivot_table(index="prompt_idx", columns="a", values="score")
        ppl = sub.pivot_table(index="prompt_idx", columns="a", values="perplexity")
        base_s = g[(~g["is_random"]) & (g["strength"] == 0)].set_index("prompt_idx")["score"]
        base_p = g[(~g["is_random"]) & (g["strength"] == 0)].set_index("prompt_idx")["perplexity"]
        cols = [a for a in grid if a in score.columns and a > 0]
        out["unsteered_neutral"] = float((base_s.dropna() == 0).mean())
        shift = score[cols].sub(base_s, axis=0).dropna()
        lpr = np.log2(ppl[cols].div(base_p, axis=0)).dropna()
        strengths = np.array(cols)
        out[f"{kind}_shift"] = {float(a): float(shift[a].mean()) for a in cols}
        # VADER scores exactly 0 on text with no sentiment words, e.g. degenerate output, so a
        # "shift" to 0 from a positive baseline can be the model breaking, not the behaviour
        out[f"{kind}_neutral"] = {float(a): float((score[a].dropna() == 0).mean()) for a in cols}
        out[f"{kind}_cont_log2_ppl"] = {float(a): float(lpr[a].mean()) for a in cols}
        out[f"{kind}_onset"] = crossing_ci(strengths, shift.to_numpy(float), ONSET_SHIFT, False,
                                           2000, seed)
        out[f"{kind}_cont_breakdown"] = crossing_ci(strengths, lpr.to_numpy(float), 1.0, True,
                                                    2000, seed)
        out[f"{kind}_peak"] = float(strengths[int(np.argmin(shift.mean(axis=0).to_numpy()))])
        out["n_prompts"] = int(shift.shape[0])
        out[f"{kind}_shift_ci"] = {float(a): _ci_row(shift[a].to_numpy(float), seed) for a in cols}
    p = r["ppl"]
    for kind in dict.fromkeys(p["kind"]):
        t = p[p["kind"] == kind].pivot_table(index="text_idx", columns="strength",
                                              values="log2_ratio")
        strengths = np.array(t.columns, float)
        key = "real" if kind == "real" else "random"
        vals = t.to_numpy(float)
        out.setdefault(f"{key}_ppl_breakdown_all", []).append(
            crossing_ci(strengths, np.minimum(vals, 1e6), 1.0, True, 2000, seed))
        out.setdefault(f"{key}_prose_log2_ppl_all", []).append(
            {float(a): float(t[a].mean()) for a in strengths})
        out["n_texts"] = int(vals.shape[0])
    out["real_ppl_breakdown"] = out["real_ppl_breakdown_all"][0]
    return out


def breakdown_findings(points: list[dict], runs: list[dict], st: dict) -> list[Finding]:
    out = []
    units = {r["label"]: {"x median residual norm": 1.0,
                          "x centred residual norm": r["plain_norm"] / r["centred_norm"],
                          "x raw mean-difference vector": r["plain_norm"] / r["vector_norm"]}
             for r in runs}
    for pt in points:
        lab = pt["label"]
        rnd = [c[0] for c in pt.get("random_ppl_breakdown_all", [])]
        est, lo, hi = pt["real_ppl_breakdown"]
        conv = "; ".join(f"{est * f:.3g} {u}" for u, f in units[lab].items() if u != "x median "
                         "residual norm") if math.isfinite(est) else "never within the grid"
        out.append(Finding(
            NAME, f"[breakdown] {lab} L{pt['layer']}: breakdown point = first |strength| (x median "
            "residual norm) where held-out prose perplexity doubles (mean log2 ratio > 1)", est, lo,
            hi, f"{pt['n_texts']} texts", "random direction: " + ", ".join(fmt(x) for x in rnd),
            (f"same push in other units: {conv}" if math.isfinite(est) else
             f"not reached within the grid (> {max(st['strengths']):g})"), headline=True))
        if not pt["has_generation"]:
            out.append(Finding(
                NAME, f"[breakdown] {lab}: behaviour score over the grid", math.nan, None, None,
                "0 prompts", "-", "not measured: the generation sweep did not finish in time"))
            continue
        est, lo, hi = pt["real_cont_breakdown"]
        rr = pt.get("random_cont_breakdown", (math.nan,))[0]
        out.append(Finding(
            NAME, f"[breakdown] {lab}: first |strength| where the steered continuation's perplexity "
            "(under the unsteered model) doubles vs the unsteered continuation", est, lo, hi,
            f"{pt['n_prompts']} prompts", f"random direction {fmt(rr)}", "-"))
        est, lo, hi = pt["real_onset"]
        rr = pt.get("random_onset", (math.nan,))[0]
        both = pt["real_ppl_breakdown"][0]
        verdict = ("behaviour appears before breakdown" if est < both else
                   "onset not reached within the grid" if not math.isfinite(est) else
                   "behaviour onset only at or after breakdown")
        if math.isfinite(est) and math.isfinite(rr) and rr <= est:
            verdict += (f"; not specific to the vector: a random direction of the same norm "
                        f"reaches the onset shift at |strength| {rr:g}")
        if math.isfinite(est):
            verdict += (f"; VADER-neutral (score 0) continuations at the onset: "
                        f"{pt['real_neutral'].get(est, math.nan):.0%} (random "
                        f"{pt.get('random_neutral', {}).get(est, math.nan):.0%}, unsteered "
                        f"{pt['unsteered_neutral']:.0%})")
        out.append(Finding(
            NAME, f"[breakdown] {lab}: behaviour onset = first |strength| where the mean VADER shift "
            f"<= {ONSET_SHIFT} (pushed negative); peak shift at |strength| {pt['real_peak']:g}", est,
            lo, hi, f"{pt['n_prompts']} prompts", f"random direction onset {fmt(rr)}", verdict))
        for a, (e, lo_, hi_) in pt["real_shift_ci"].items():
            out.append(Finding(
                NAME, f"[breakdown] {lab}: VADER shift at |strength| {a:g} x median residual norm",
                e, lo_, hi_, f"{pt['n_prompts']} prompts (paired)",
                f"random {fmt(pt.get('random_shift', {}).get(a, math.nan))}",
                f"continuation log2 perplexity ratio {fmt(pt['real_cont_log2_ppl'][a])}, prose "
                f"{fmt(pt['real_prose_log2_ppl_all'][0].get(a, math.nan))}; VADER-neutral "
                f"continuations {pt['real_neutral'][a]:.0%} (random "
                f"{pt.get('random_neutral', {}).get(a, math.nan):.0%})"))
    if len(points) >= 2:
        a, b = points[0], points[1]
        ra, rb = runs[0], runs[1]
        for unit in ("x median residual norm", "x centred residual norm"):
            ea = a["real_ppl_breakdown"][0] * units[ra["label"]][unit]
            eb = b["real_ppl_breakdown"][0] * units[rb["label"]][unit]
            verdict = ("-" if not (math.isfinite(ea) and math.isfinite(eb)) else
                       f"{b['label']} breaks down at a smaller push" if eb < ea else
                       f"{a['label']} breaks down at a smaller push" if ea < eb else "same grid step")
            out.append(Finding(
                NAME, f"[breakdown] breakdown point {b['label']} / {a['label']} in units {unit}",
                eb / ea if ea and math.isfinite(ea) and math.isfinite(eb) else math.nan, None, None,
                f"{a['n_texts']} texts per model", "-", verdict + " (grid ratio; CIs in the "
                "per-model rows)", headline=unit == "x median residual norm"))
    return out


def breakdown_main(args, models) -> dict:
    """`--breakdown`: behaviour score and perplexity over a strength grid, per model."""
    ctx = context(NAME, args)
    out = ctx.out / "breakdown"
    out.mkdir(parents=True, exist_ok=True)
    ctx = replace(ctx, out=out)
    if args.quick:
        st = dict(depth=1.0, strengths=[0.5, 1.0], n_prompts=2, n_texts=2, max_words=12,
                  max_new_tokens=3, n_random_ppl=1, saved_only=False)
    else:
        st = dict(depth=args.breakdown_depth, strengths=sorted(abs(a) for a in
                                                             args.breakdown_strengths),
                  n_prompts=args.breakdown_prompts, n_texts=args.n_texts,
                  max_words=args.max_words, max_new_tokens=16, n_random_ppl=2)
    st["saved_only"] = bool(args.breakdown_saved)
    beh = sentiment_data()
    prompts = heldout_prompts(beh, st["n_prompts"])
    texts = load_heldout(st["n_texts"], max_words=st["max_words"])
    names = [args.model, args.base_model]
    if args.quick and args.base_model == "gemma-3-270m" and args.model == "tiny-random":
        names = ["tiny-random", "tiny-random"]
    runs = []
    for i, name in enumerate(names):
        if args.breakdown_only is not None and i != args.breakdown_only:
            continue
        label = f"{name}" if i == 0 or name != names[0] else f"{name}-b"
        if st["saved_only"] and not (out / label / "ppl.csv").exists():
            log(f"{NAME} breakdown: {label}: no saved perplexities; left out of this summary")
            continue
        model = get_model(name, ctx.device, given=None if models is None else models[i])
        runs.append(breakdown_model(model, label, ctx, st, beh, prompts, texts, out))
    if args.breakdown_only is not None:
        return {"runs": runs}
    points = [breakdown_points(r, st, ctx.seed) for r in runs]
    gens = [r["gen"] for r in runs if r["gen"] is not None]
    if gens:
        write_csv(out / "gen_table.csv", pd.concat(gens, ignore_index=True)
                  .drop(columns=["tokens"], errors="ignore"))
    write_csv(out / "ppl_table.csv", pd.concat([r["ppl"] for r in runs], ignore_index=True))
    write_json(out / "breakdown.json", {
        "settings": st, "onset_shift": ONSET_SHIFT,
        "models": [{k: r[k] for k in ("label", "model_id", "layer", "plain_norm", "centred_norm",
                                      "vector_norm")} for r in runs],
        "points": points})
    found = breakdown_findings(points, runs, st)
    settings = {**st, "models": [r["model_id"] for r in runs],
                "layers": {r["label"]: r["layer"] for r in runs},
                "definitions": {
                    "breakdown": "first |strength| in the grid where the mean over held-out prose "
                                 "texts of log2(perplexity steered / unsteered) > 1",
                    "continuation breakdown": "first |strength| where the mean over prompts of "
                                              "log2(perplexity of the steered continuation / the "
                                              "unsteered continuation's, both under the unsteered "
                                              "model) > 1",
                    "onset": f"first |strength| where the mean paired VADER shift <= {ONSET_SHIFT}"},
                "normalisation": "grid in x median residual L2 norm at the layer; the same pushes "
                                 "in centred-norm and raw-vector units are listed per row"}
    notes = [
        "Strength grid pushes towards negative sentiment (negative strengths of the sentiment "
        "vector); |strength| is reported. Both models read raw text (no chat template).",
        "CIs of a breakpoint: percentile bootstrap over texts (perplexity) or prompts (behaviour), "
        "recomputing the first crossing of the grid in each resample; inf = never crossed.",
        "Random: norm-matched Gaussian directions (one in the generation sweep, "
        f"{st['n_random_ppl']} for the prose perplexity).",
        "Confound as above: the two models differ in much more than instruction tuning.",
    ]
    save_findings(ctx, found, settings, notes)
    draw_breakdown(out, ctx.fig_dir)
    print_findings(found)
    return {"runs": runs, "points": points, "findings": found}


def draw_breakdown(out: Path, fig_dir: Path) -> list[GalleryEntry]:
    """Behaviour shift and perplexity vs strength per model, from breakdown.json (no model)."""
    saved = json.loads((Path(out) / "breakdown.json").read_text(encoding="utf-8"))
    entries = []
    def num(x) -> float:  # JSON null = a breakpoint never reached (inf)
        return math.inf if x is None else float(x)

    for unit in ("plain", "centred"):
        curves = []
        for m, pt in zip(saved["models"], saved["points"]):
            f = 1.0 if unit == "plain" else m["plain_norm"] / m["centred_norm"]
            prose = pt["real_prose_log2_ppl_all"][0]
            shifts = pt.get("real_shift_ci") or {}
            keys = list(shifts or prose)  # |strength| as JSON keys
            nan3 = [math.nan] * 3  # no generation sweep: no behaviour curve
            curves.append(BreakdownCurve(
                m["label"], tuple(float(a) * f for a in keys),
                tuple(num(shifts.get(a, nan3)[0]) for a in keys),
                tuple(num(shifts.get(a, nan3)[1]) for a in keys),
                tuple(num(shifts.get(a, nan3)[2]) for a in keys),
                tuple(num(prose.get(a)) for a in keys),
                tuple(num(pt.get("real_cont_log2_ppl", {}).get(a)) for a in keys),
                num(pt["real_ppl_breakdown"][0]) * f))
        name = "median residual norm" if unit == "plain" else "centred residual norm"
        fig = breakdown_curves(curves, xaxis_title=f"|strength| (x {name})",
                               title=f"Behaviour shift and perplexity vs strength (x {name}); "
                               f"n={saved['points'][0].get('n_prompts', 0)} prompts, "
                               f"{saved['points'][0]['n_texts']} texts")
        path = save_html(fig, Path(fig_dir) / f"{NAME}_breakdown_{unit}.html")
        entries.append(GalleryEntry(NAME, path, f"Breakdown point ({name})",
                                    "VADER shift (pushed negative) and log2 perplexity ratios vs "
                                    "strength, SmolLM2-Instruct vs Gemma-3-270M base; dashed: "
                                    "breakdown point.", command(NAME, "--breakdown")))
    return entries




def main(argv=None, models=None) -> dict:
    """Run the analysis; `models` optionally reuses loaded (instruct, base) models."""
    args = build_parser().parse_args(argv)
    if args.breakdown:
        return breakdown_main(args, models)
    ctx = context(NAME, args)
    vec_dir = ctx.out
    if args.norm == "centred":
        ctx = replace(ctx, out=ctx.out / "centred")
        ctx.out.mkdir(parents=True, exist_ok=True)
    st = settings_for(args)
    beh = sentiment_data()
    prompts = heldout_prompts(beh, st["n_prompts"])
    texts = load_heldout(st["n_texts"], max_words=st["max_words"])
    names = [args.model, args.base_model]
    if args.quick and args.base_model == "gemma-3-270m" and args.model == "tiny-random":
        names = ["tiny-random", "tiny-random"]  # smoke test: the pipeline, not the comparison
    results = []
    for i, name in enumerate(names):
        model = get_model(name, ctx.device, given=None if models is None else models[i])
        label = f"{name}" if i == 0 or name != names[0] else f"{name}-b"
        log(f"{NAME}: measuring {label} (raw text)")
        results.append(measure_model(model, label, ctx, st, beh, prompts, texts, chat=False,
                                     vec_dir=vec_dir))
        if i == 0 and not args.no_chat_check and not args.quick and runtime.has_chat_template(model):
            log(f"{NAME}: measuring {label} with its chat template (format check)")
            results.append(measure_model(model, f"{label}+chat", ctx, st, beh, prompts, texts,
                                         chat=True, vec_dir=vec_dir))
    if len(results) == 3:  # keep instruct, base first; the chat check last
        results = [results[0], results[2], results[1]]
    kl_sum, ppl_sum = summarise(results, st, ctx.seed)
    write_csv(ctx.out / "kl_summary.csv", kl_sum)
    write_csv(ctx.out / "ppl_summary.csv", ppl_sum)
    if any("ppl" in r for r in results):
        write_csv(ctx.out / "ppl_table.csv", pd.concat([r["ppl"] for r in results if "ppl" in r]))
    write_json(ctx.out / "models.json", [{k: r[k] for k in ("label", "model_id", "layers", "norms",
                                                            "vector_norms", "plain_over_centred")}
                                         for r in results])
    found = findings(results, kl_sum, ppl_sum, st, ctx.seed)
    settings = {**st, "models": [r["model_id"] for r in results],
                "layers": {r["label"]: r["layers"] for r in results},
                "normalisation": "strength s = s x median residual L2 norm at the layer"
                + (" (centred: distance from the mean residual)" if args.norm == "centred" else "")}
    notes = [
        "Confound: the models differ in family, size (135M vs 270M), tokenizer, vocabulary "
        "(49k vs 262k) and training data, not only in instruction tuning; a difference is "
        "'SmolLM2-Instruct vs Gemma-3-270M base', not 'instruct vs base' in general.",
        "Normalisation: each model's own mean-difference vector, rescaled per layer to the median "
        + ("per-token distance of the residual from its mean (centred; discounts constant "
           "massive-activation dimensions)" if st["norm"] == "centred" else
           "per-token residual L2 norm")
        + " of that model at that layer on the same held-out prompts; the strength is the push as a "
        "fraction of it. Layers matched by relative depth.",
        "Plain / centred median residual norm by layer (how much of the norm is a constant "
        "offset): " + "; ".join(
            f"{r['label']}: " + ", ".join(f"L{la} {v:.2f}" for la, v in
                                          r["plain_over_centred"].items())
            for r in results if not r["label"].endswith("+chat")) + ".",
        "Both models read raw text (no chat template); the '+chat' rows show SmolLM2 with its "
        "chat template, i.e. how much input format alone changes the KL.",
        "Next-token KL also depends on how peaked each model's unsteered prediction is (a "
        "base model after a raw question is less certain), which is part of what is compared.",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(kl_sum.round(4).to_string(index=False))
        if len(ppl_sum):
            print(ppl_sum.round(3).to_string(index=False))
    print_findings(found)
    return {"results": results, "kl_summary": kl_sum, "ppl_summary": ppl_sum, "findings": found}


if __name__ == "__main__":
    main()
