"""Where does steering work? A layer x strength sweep of a sentiment vector with a random control.

Steps (SmolLM2-135M-Instruct by default):
1. A CAA mean-difference sentiment vector (positive minus negative) from the behaviour's *train*
   pairs, at every swept layer (resid_pre, last completion token).
2. `steerlens.sweep.sweep` over layers x strengths on *held-out* prompts (the behaviour's
   evaluation prompts, then its test-pair prompts), greedy continuations: change rate (greedy
   tokens differ from the unsteered ones), behaviour score (VADER compound, as a paired shift from
   the same prompt's unsteered continuation), perplexity of the continuation under the unsteered
   model (coherence), next-token KL. Each real cell is run again with a norm-matched random
   direction (`n_random`).
3. Zones per cell (`sweep.zones`: unstable = perplexity > 2x unsteered, frozen = change rate
   < 10%, otherwise sweet spot), the real effect against the random band (`sweep.compare_random`),
   and the strength expressed as a fraction of the median residual norm at that layer.

Strength scale (`--scale`). "resid" (default): the vector is rescaled per layer to the median
per-token residual norm at that layer (`_common.scale_to_residual`), so strength s adds
s x (typical residual norm) at every layer and layers are compared at equal relative push.
"raw": strengths are multiples of the mean-difference vector itself, as in CAA; its norm grows
with depth (about 5% of the residual norm at layer 8 of SmolLM2, 20% at layer 29), so the same raw
strength is a much larger relative push at late layers. `rel_norm` = |strength| x vector norm /
median residual norm says how large each push was. Figures for the raw scale get a `_raw` suffix.

Change rate (any greedy token differs within `--max-new-tokens`) saturates quickly, so the mean
first-divergence position (`diverge_mean`, unchanged continuations count as the full length) is
reported too: late divergence means a weak effect.

Saved in results/mid_layer_sweep/ (`raw/` for `--scale raw`): the resumable sweep (`sweep/`, every
record and the unsteered baseline), `cells.csv` (one row per real cell: zone, relative strength,
first divergence, score / change / perplexity shifts with CIs and their random controls) and
`summary.csv` (every cell's measure means with CIs, random directions included).

    python -m analyses.mid_layer_sweep [--scale resid|raw] [--n-prompts 12] [--strengths ...]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.sweep import strength_curves, zone_heatmap
from steerlens.stats import proportion_ci
from steerlens.sweep import compare_random, load_sweep, sweep, zones

from . import command
from ._common import (
    GalleryEntry,
    add_list,
    add_strengths,
    cached_vector,
    heldout_prompts,
    log,
    parser,
    residual_norms,
    run_variants,
    scale_to_residual,
    sentiment_data,
    spread_layers,
    start,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, fmt_ci, print_findings, save_findings

NAME = "mid_layer_sweep"
VECTOR = "sentiment"
SCALES = ("resid", "raw")
DEFAULT_STRENGTHS = {"resid": [-0.4, -0.2, -0.1, -0.05, 0.0, 0.2],
                     "raw": [-16.0, -8.0, -4.0, 0.0, 4.0, 8.0]}


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--n-prompts", type=int, default=12, help="held-out prompts (max 26)")
    p.add_argument("--n-layers", type=int, default=8, help="layers spread from 2 to the last")
    add_list(p, "--layers", int, None, "explicit layers, e.g. 2,6,10")
    p.add_argument("--scale", choices=SCALES, default="resid",
                   help="strength unit: median residual norm (resid) or the raw vector (raw)")
    add_strengths(p, None, "comma-separated strengths (default: resid "
                  f"{DEFAULT_STRENGTHS['resid']}, raw {DEFAULT_STRENGTHS['raw']})")
    p.add_argument("--report-strength", type=float, default=None,
                   help="strength for the by-depth rows (default: second-smallest negative)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--n-random", type=int, default=1, help="random directions per real vector")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def settings_for(args, model) -> dict:
    if args.quick:
        last = runtime.n_layers(model) - 1
        return dict(scale=args.scale, n_prompts=2, layers=[last],
                    strengths=[0.0, 0.5 if args.scale == "resid" else 4.0], max_new_tokens=3,
                    n_random=1, batch_size=8)
    layers = args.layers or spread_layers(runtime.n_layers(model), args.n_layers,
                                          first=min(2, runtime.n_layers(model) - 1))
    return dict(scale=args.scale, n_prompts=args.n_prompts, layers=layers,
                strengths=args.strengths or DEFAULT_STRENGTHS[args.scale],
                max_new_tokens=args.max_new_tokens, n_random=args.n_random,
                batch_size=args.batch_size)


def tables(res, vec, norms: dict[int, float], max_new_tokens: int) -> dict[str, pd.DataFrame]:
    """Per-cell summary (`summary`) and the real cells with zones, relative strength and
    real-vs-random comparisons (`cells`)."""
    summ = res.summary()
    z = zones(res)
    cmp = {m: compare_random(res, m) for m in ("score", "changed", "perplexity")}
    cell = z[~z["is_random"]][["layer", "strength", "n", "zone", "change_rate", "perplexity_ratio",
                               "kl_bits"]].copy()
    cell["rel_norm"] = [abs(s) * vec.norms[int(la)] / norms[int(la)]
                        for la, s in zip(cell["layer"], cell["strength"])]
    real = res.table[~res.table["is_random"]].copy()
    real["div"] = real["diverge_at"].astype("Float64").fillna(max_new_tokens).astype(float)
    div = real.groupby(["layer", "strength"])["div"].mean()
    cell["diverge_mean"] = [float(div.loc[(la, s)]) for la, s in zip(cell["layer"],
                                                                      cell["strength"])]
    sc = cmp["score"].set_index(["layer", "strength"])
    ch = cmp["changed"].set_index(["layer", "strength"])
    pp = cmp["perplexity"].set_index(["layer", "strength"])
    rows = []
    for _, r in cell.iterrows():
        key = (r["layer"], r["strength"])
        s, c, p = sc.loc[key], ch.loc[key], pp.loc[key]
        rows.append({
            "score_shift": s["real_mean"], "score_low": s["real_low"], "score_high": s["real_high"],
            "score_random": s["random_mean"], "score_p_random": s["p_value"],
            "change_low": proportion_ci(int(round(r["change_rate"] * r["n"])), int(r["n"])).low,
            "change_high": proportion_ci(int(round(r["change_rate"] * r["n"])), int(r["n"])).high,
            "change_random": c["random_mean"],
            "ppl_shift": p["real_mean"], "ppl_low": p["real_low"], "ppl_high": p["real_high"],
            "ppl_random": p["random_mean"],
        })
    cell = pd.concat([cell.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    # behaviour effect in the direction the strength asks for (+: more positive sentiment)
    cell["effect"] = np.sign(cell["strength"]) * cell["score_shift"]
    return {"summary": summ, "cells": cell}


def findings(cells: pd.DataFrame, n: int, k_random: int, scale: str,
             report_strength: float) -> list[Finding]:
    out = []
    unit = "x resid norm" if scale == "resid" else "x raw vector"
    steered = cells[cells["strength"] != 0].copy()
    ok = steered[steered["zone"] != "unstable"]
    # 1) sweet spot: the coherent cell with the largest behaviour shift in the asked direction
    if len(ok):
        best = ok.loc[ok["effect"].idxmax()]
        lo, hi = sorted((best["score_low"], best["score_high"]))
        excl = (best["score_low"] > 0) or (best["score_high"] < 0)
        rnd = best["score_random"]
        beats = abs(best["score_shift"]) > abs(rnd) if not math.isnan(rnd) else False
        out.append(Finding(
            NAME, f"[{scale}] sweet spot: VADER shift at layer {int(best['layer'])}, strength "
            f"{best['strength']:g} {unit} ({best['rel_norm']:.2f}x resid norm), best of {len(ok)} "
            f"non-unstable cells", best["score_shift"], lo, hi, str(n),
            f"random shift {fmt(rnd)} (k={k_random})",
            ("shift CI excludes 0" if excl else "shift CI includes 0 (null)")
            + ("; larger than random" if beats else "; not larger than random")
            + "; max over cells, so optimistic", headline=True))
    # 2) frozen zone: which layers never reach a 10% change rate below the unstable zone
    frozen_layers = [int(la) for la, g in steered.groupby("layer")
                     if (g["change_rate"] < 0.1).all()]
    frozen_cells = steered[steered["zone"] == "frozen"]
    out.append(Finding(
        NAME, f"[{scale}] frozen cells (change rate < 10%) / steered cells",
        float(len(frozen_cells)),
        float("nan"), float("nan"), f"{len(steered)} cells x {n} prompts",
        "-", f"frozen layers at every strength: {frozen_layers or 'none'}; frozen cells: "
        + (", ".join(f"L{int(a)}@{b:g}" for a, b in zip(frozen_cells['layer'],
                                                      frozen_cells['strength'])) or "none"),
        headline=True))
    # 3) behaviour shift and change rate by depth at one moderate strength
    s_rep = report_strength
    sel = steered[steered["strength"] == s_rep].sort_values("layer")
    if len(sel):
        picks = sorted({int(sel["layer"].iloc[0]), int(sel["layer"].iloc[len(sel) // 2]),
                        int(sel["layer"].iloc[-1]), int(sel.loc[sel["effect"].idxmax(), "layer"])})
        for _, r in sel[sel["layer"].isin(picks)].iterrows():
            k = int(round(r["change_rate"] * n))
            excl = (r["score_low"] > 0) or (r["score_high"] < 0)
            out.append(Finding(
                NAME, f"[{scale}] VADER shift at layer {int(r['layer'])}, strength {s_rep:g} {unit}"
                f" ({r['rel_norm']:.2f}x resid norm)", r["score_shift"], r["score_low"],
                r["score_high"], str(n), f"random shift {fmt(r['score_random'])} (k={k_random})",
                ("CI excludes 0" if excl else "CI includes 0 (null)")
                + f"; change rate {k}/{n} (random {fmt(r['change_random'])}), first divergence "
                f"at token {r['diverge_mean']:.1f}; zone {r['zone']}", headline=scale == "resid"))
    # cells where steering has no detectable behaviour effect (the behavioural "frozen" zone)
    null = steered[(steered["score_low"] <= 0) & (steered["score_high"] >= 0)]
    out.append(Finding(
        NAME, f"[{scale}] cells with no detectable VADER shift (CI includes 0) / steered cells",
        float(len(null)), float("nan"), float("nan"), f"{len(steered)} cells x {n} prompts", "-",
        ", ".join(f"L{int(a)}@{b:g}" for a, b in zip(null["layer"], null["strength"])) or "none",
        headline=scale == "resid"))
    # 4) degeneration at the strongest |strength|
    s_max = max({float(x) for x in steered["strength"]}, key=lambda x: (abs(x), -x))
    sel = steered[steered["strength"] == s_max]
    for _, r in sel.iterrows():
        if r["layer"] != sel.loc[sel["ppl_shift"].idxmax(), "layer"]:
            continue
        out.append(Finding(
            NAME, f"[{scale}] degeneration: perplexity shift (steered - unsteered continuation) "
            f"at layer {int(r['layer'])}, strength {s_max:g} {unit} ({r['rel_norm']:.2f}x resid "
            "norm), worst layer",
            r["ppl_shift"], r["ppl_low"], r["ppl_high"], str(n),
            f"random {fmt(r['ppl_random'])}",
            f"perplexity x{r['perplexity_ratio']:.2f} of unsteered; zone {r['zone']}",
            headline=True))
    zc = steered["zone"].value_counts().to_dict()
    out.append(Finding(NAME, f"[{scale}] zone counts over steered cells (value = sweet spots)",
                       float(zc.get("sweet spot", 0)),
                       float("nan"), float("nan"), f"{len(steered)} cells",
                       "-", ", ".join(f"{k}: {v}" for k, v in zc.items())))
    return out


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Draw the figures of one finished run from its saved results in `out` (no model)."""
    res = load_sweep(out / "sweep")
    scale = json.loads((out / "findings.json").read_text(encoding="utf-8"))["settings"]["scale"]
    n = len(res.baseline)
    tag = "" if scale == "resid" else "_raw"
    unit = "x median residual norm" if scale == "resid" else "x mean-difference vector"
    entries = []
    zfig = zone_heatmap(res, VECTOR)
    zfig.update_layout(xaxis_title=f"strength ({unit})",
                       title=zfig.layout.title.text + f"; strength in {unit}")
    path = save_html(zfig, fig_dir / f"{NAME}_zones{tag}.html")
    entries.append(GalleryEntry(NAME, path, f"Zones, strength in {unit}",
                                f"Sweet-spot / unstable / frozen cell per layer x strength, VADER "
                                f"shift annotated (n={n} held-out prompts per cell).",
                                results_command))
    captions = {"score": "mean paired VADER shift vs strength per layer",
                "changed": "greedy change rate vs strength per layer",
                "perplexity": "continuation perplexity (coherence) vs strength per layer"}
    for m, key in (("score", "score_curves"), ("changed", "change_curves"),
                   ("perplexity", "perplexity_curves")):
        fig = strength_curves(res, m, VECTOR)
        fig.update_layout(xaxis_title=f"strength ({unit})")
        path = save_html(fig, fig_dir / f"{NAME}_{key}{tag}.html")
        entries.append(GalleryEntry(NAME, path, f"{m} curves, strength in {unit}",
                                    f"{captions[m].capitalize()}, with the random-direction "
                                    f"control and 95% CIs (n={n} prompts).", results_command))
    return entries


# the gallery hook: the residual-norm run, and the raw-scale run in raw/ if present
make_figures = run_variants(NAME, draw, "sweep/sweep.json",
                            {"raw": ("--scale raw", f"--out results/{NAME}/raw")})


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    args, ctx, model = start(NAME, build_parser(), argv, model)
    st = settings_for(args, model)
    beh = sentiment_data()
    prompts = heldout_prompts(beh, st["n_prompts"])
    log(f"{NAME}: model {runtime.model_id(model)}, layers {st['layers']}, strengths "
        f"{st['strengths']}, n={len(prompts)} held-out prompts, n_random={st['n_random']}")
    raw = cached_vector(model, beh, st["layers"], ctx)
    norms = residual_norms(model, prompts, st["layers"])
    vec = scale_to_residual(raw, norms) if st["scale"] == "resid" else raw
    res = sweep(model, prompts, {VECTOR: vec}, layers=st["layers"], strengths=st["strengths"],
                measures=("kl", "generate"), scorer=beh.scorer,
                max_new_tokens=st["max_new_tokens"], n_random=st["n_random"],
                random_seed=ctx.seed, batch_size=st["batch_size"], out_dir=ctx.out / "sweep",
                resume=ctx.resume, show_progress=ctx.progress)
    log(f"sweep done: {res.n_computed} records computed, {res.n_resumed} resumed, passes "
        f"{dict(res.passes)}")
    tabs = tables(res, vec, norms, st["max_new_tokens"])
    for key, df in tabs.items():
        write_csv(ctx.out / f"{key}.csv", df)
    write_json(ctx.out / "vector_norms.json", {"vector": raw.norms, "residual_median": norms})
    cells = tabs["cells"]
    rep = args.report_strength
    if rep is None or rep not in st["strengths"]:
        nz = sorted((x for x in st["strengths"] if x != 0), key=lambda x: (abs(x), x))
        neg = [x for x in nz if x < 0]
        rep = (neg[1] if len(neg) > 1 else neg[0]) if neg else nz[0]
    found = findings(cells, len(prompts), st["n_random"], st["scale"], rep)
    settings = {**st, "model": runtime.model_id(model), "vector": "mean_diff on sentiment/train "
                f"({len(beh.train)} pairs)", "prompts": f"{len(prompts)} held-out prompts",
                "baseline_score_mean": float(res.baseline["score"].mean())}
    notes = [
        f"[{st['scale']}] n={len(prompts)} held-out prompts per cell; {st['n_random']} random "
        "direction(s) per cell; zones from sweep.zones (unstable: continuation perplexity > 2x "
        "unsteered; frozen: change rate < 10%).",
        "Change rate counts any differing token in the greedy continuation, so it saturates at "
        "small pushes; the first-divergence position and the VADER shift carry more information.",
        "The sweet-spot row is the best of many cells (selection inflates it); its random "
        "control is the same cell with a random direction of equal norm.",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    show = cells[["layer", "strength", "rel_norm", "zone", "change_rate", "diverge_mean",
                  "score_shift", "score_random", "ppl_shift", "perplexity_ratio"]]
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        print(show.round(3).to_string(index=False))
    print(f"\nUnsteered mean VADER score {fmt(res.baseline['score'].mean())} (n={len(prompts)}).")
    print_findings(found)
    best = cells[cells["strength"] != 0]
    log("done; sweet-spot candidate cells: "
        + ", ".join(f"L{int(a)}@{b:g}: {fmt_ci(c, d, e)}" for a, b, c, d, e in
                    best[best["zone"] == "sweet spot"][["layer", "strength", "score_shift",
                                                        "score_low", "score_high"]].values[:6]))
    return {"result": res, "cells": cells, "findings": found, "settings": st}


if __name__ == "__main__":
    main()
