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

Controls that can reject. One random direction per cell gives a band but no test (with k random
directions the empirical p cannot fall below 1/(k+1)). A second sweep (`controls/`) reruns the
cells the verdict rests on (`--control-layers` x `--control-strengths`; default the by-depth
layers at the report strength and the sweet spot) with `--control-n-random` (default 20)
norm-matched random directions, and reports the VADER shift's empirical p
((1 + #random means at least as extreme) / (1 + k), one-sided in the direction the strength asks
for), the random band, and the same for the next-token KL. `--partial` reports a cut-short
control sweep on the random directions it finished.

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
from steerlens.stats import bootstrap_ci, proportion_ci
from steerlens.sweep import compare_random, load_sweep, sweep, zones
from steerlens.sweep.control import (
    complete_controls,
    control_verdict,
    empirical_p,
    saved_records,
)
from steerlens.sweep.result import effect_values

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
CONTROLS = "controls"  # the control sweep (many random directions at the verdict cells)
KL_CONTROLS = "controls_kl_partial"  # an earlier, wider control grid cut short after its KL part
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
    p.add_argument("--n-random", type=int, default=1,
                   help="random directions per real cell of the full grid (descriptive)")
    add_list(p, "--control-layers", int, None,
             "layers of the control sweep (default: the by-depth layers at --report-strength "
             "and the sweet-spot layer)")
    add_list(p, "--control-strengths", float, None,
             "strengths of the control sweep (default: --report-strength and the sweet spot's)")
    p.add_argument("--control-n-random", type=int, default=None,
                   help="random directions per real cell in the control sweep (default 20, 2 with "
                   "--quick; >= 19 for p < 0.05)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--partial", action="store_true",
                   help="finish from a cut-short control sweep: use the random directions whose "
                   "cells are all saved (the k used is in every row)")
    return p


def settings_for(args, model) -> dict:
    if args.quick:
        last = runtime.n_layers(model) - 1
        return dict(scale=args.scale, n_prompts=2, layers=[last],
                    strengths=[0.0, 0.5 if args.scale == "resid" else 4.0], max_new_tokens=3,
                    n_random=1, batch_size=8, control_layers=[last],
                    control_strengths=[0.5 if args.scale == "resid" else 4.0],
                    control_n_random=args.control_n_random or 2)
    layers = args.layers or spread_layers(runtime.n_layers(model), args.n_layers,
                                          first=min(2, runtime.n_layers(model) - 1))
    return dict(scale=args.scale, n_prompts=args.n_prompts, layers=layers,
                strengths=args.strengths or DEFAULT_STRENGTHS[args.scale],
                max_new_tokens=args.max_new_tokens, n_random=args.n_random,
                batch_size=args.batch_size, control_layers=args.control_layers,
                control_strengths=args.control_strengths,
                control_n_random=args.control_n_random or 20)


def default_control_cells(cells: pd.DataFrame, report_strength: float) -> tuple[list, list]:
    """The cells the verdict rests on: the by-depth layers reported at `report_strength` (first,
    middle, last, and the one with the largest effect) and the sweet-spot cell (the coherent
    cell with the largest effect); returns (layers, strengths) of the control grid."""
    steered = cells[cells["strength"] != 0]
    sel = steered[steered["strength"] == report_strength].sort_values("layer")
    layers = set()
    strengths = {float(report_strength)}
    if len(sel):
        layers |= {int(sel["layer"].iloc[0]), int(sel["layer"].iloc[len(sel) // 2]),
                   int(sel["layer"].iloc[-1]), int(sel.loc[sel["effect"].idxmax(), "layer"])}
    ok = steered[steered["zone"] != "unstable"]
    if len(ok):
        best = ok.loc[ok["effect"].idxmax()]
        layers.add(int(best["layer"]))
        strengths.add(float(best["strength"]))
    return sorted(layers), sorted(strengths)


def control_effects(res) -> dict[str, pd.DataFrame]:
    """Per-prompt effects (vector, layer, strength, prompt_idx, effect, is_random) of a finished
    control sweep, for the VADER score, change and perplexity."""
    return {m: effect_values(res, m) for m in ("score", "changed", "perplexity")}


def partial_control_effects(directory: Path, n_prompts: int, n_cells: int) -> dict:
    """The same effects from a cut-short control sweep: the vectors whose generation records are
    all saved (`n_cells` layer x strength cells x `n_prompts` prompts)."""
    gen = saved_records(directory, "gen")
    base = saved_records(directory, "base").set_index("prompt_idx")
    if not len(gen) or len(base) < n_prompts:
        raise ValueError(f"The control sweep in {directory} has no complete generation records "
                         "yet; run it longer or without --partial.")
    gen = complete_controls(gen, n_cells * n_prompts)
    if not (~gen["is_random"]).any():
        raise ValueError(f"The control sweep in {directory} has not finished the real vector's "
                         "cells; run it longer or without --partial.")
    out = {}
    for m in ("score", "changed", "perplexity"):
        vals = gen[m].astype(float)
        if m != "changed":
            vals = vals - gen["prompt_idx"].map(base[m]).astype(float)
        out[m] = gen[["vector", "layer", "strength", "prompt_idx", "is_random"]].assign(
            effect=vals.to_numpy(float))
    return out


def control_table(effects: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per real cell of the control sweep: the VADER shift (bootstrap CI over prompts), its random
    band and empirical p (alternative "greater" for positive strengths, "less" for negative: the
    direction the strength asks for), plus the random bands of change rate and perplexity shift."""
    rows = []
    sc = effects["score"]
    real = sc[~sc["is_random"]]
    for (layer, s_), g in real.groupby(["layer", "strength"]):
        def band(m, layer=layer, s_=s_):
            e = effects[m]
            cell = e[(e["layer"] == layer) & (e["strength"] == s_)]
            means = cell[cell["is_random"]].groupby("vector")["effect"].mean().to_numpy(float)
            return float(cell[~cell["is_random"]]["effect"].mean()), means
        alt = "greater" if s_ > 0 else "less"
        c = bootstrap_ci(g["effect"].dropna().to_numpy(float), n_boot=2000, seed=0)
        _, means = band("score")
        e = empirical_p(c.estimate, means, alt)
        ch, ch_r = band("changed")
        pp, pp_r = band("perplexity")
        rows.append({"layer": int(layer), "strength": float(s_), "n": int(g["effect"].notna().sum()),
                     "score_shift": c.estimate, "score_low": c.low, "score_high": c.high,
                     "k_random": e.k, "random_low": e.band_low, "random_high": e.band_high,
                     "random_mean": float(means.mean()), "p_random": e.p_value,
                     "alternative": alt, "change_real": ch,
                     "change_random_low": float(ch_r.min()),
                     "change_random_high": float(ch_r.max()), "ppl_shift": pp,
                     "ppl_random_low": float(pp_r.min()), "ppl_random_high": float(pp_r.max()),
                     "verdict": control_verdict(c.low, c.high, e.p_value, 1 if s_ > 0 else -1)})
    return pd.DataFrame(rows)


def kl_control_rows(directory: Path, n_prompts: int) -> pd.DataFrame:
    """Next-token KL at each cell of a (possibly cut-short) control sweep: the real vector's mean
    over prompts against every random direction whose KL records at that cell are complete."""
    kl = saved_records(directory, "kl")
    rows = []
    for (layer, s_), g in kl.groupby(["layer", "strength"]):
        per = g.groupby("vector")["kl_bits"].agg(["mean", "size"])
        per = per[per["size"] >= n_prompts]
        real = g[~g["is_random"]]["kl_bits"].to_numpy(float)
        rnd = per.loc[[v for v in per.index if v.startswith("random:")], "mean"].to_numpy(float)
        if real.size < n_prompts or not rnd.size:
            continue
        c = bootstrap_ci(real, n_boot=2000, seed=0)
        e = empirical_p(c.estimate, rnd, "greater")
        rows.append({"layer": int(layer), "strength": float(s_), "n": int(real.size),
                     "kl_bits": c.estimate, "kl_low": c.low, "kl_high": c.high, "k_random": e.k,
                     "random_low": e.band_low, "random_high": e.band_high,
                     "p_random": e.p_value})
    return pd.DataFrame(rows)


def kl_control_findings(klc: pd.DataFrame, scale: str) -> list[Finding]:
    unit = "x resid norm" if scale == "resid" else "x raw vector"
    return [Finding(
        NAME, f"[{scale}] next-token KL (bits) at layer {int(r['layer'])}, strength "
        f"{r['strength']:g} {unit}, against {int(r['k_random'])} norm-matched random directions",
        r["kl_bits"], r["kl_low"], r["kl_high"], str(int(r["n"])),
        f"random {fmt(r['random_low'])}..{fmt(r['random_high'])} (k={int(r['k_random'])}), "
        f"empirical p={r['p_random']:.2g} (greater)",
        ("supported: disturbs the next token more than random directions" if r["p_random"] < 0.05
         else "not supported: inside the random band")
        + ("" if r["k_random"] >= 19 else " (too few random directions for p < 0.05)"))
        for _, r in klc.iterrows()]


def control_findings(ctrl: pd.DataFrame, scale: str, report_strength: float) -> list[Finding]:
    unit = "x resid norm" if scale == "resid" else "x raw vector"
    out = []
    for _, r in ctrl.iterrows():
        out.append(Finding(
            NAME, f"[{scale}] VADER shift at layer {int(r['layer'])}, strength {r['strength']:g} "
            f"{unit}, against {int(r['k_random'])} norm-matched random directions",
            r["score_shift"], r["score_low"], r["score_high"], str(int(r["n"])),
            f"random {fmt(r['random_low'])}..{fmt(r['random_high'])} (k={int(r['k_random'])}), "
            f"empirical p={r['p_random']:.2g} ({r['alternative']})",
            f"{r['verdict']}; change rate {fmt(r['change_real'])} (random "
            f"{fmt(r['change_random_low'])}..{fmt(r['change_random_high'])}), perplexity shift "
            f"{fmt(r['ppl_shift'])} (random {fmt(r['ppl_random_low'])}.."
            f"{fmt(r['ppl_random_high'])})",
            headline=scale == "resid" and r["strength"] == report_strength))
    return out


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
    c_layers, c_strengths = default_control_cells(cells, rep)
    c_layers = st["control_layers"] or c_layers
    c_strengths = st["control_strengths"] or c_strengths
    log(f"control sweep: layers {c_layers} x strengths {c_strengths}, "
        f"{st['control_n_random']} random directions per cell")
    if args.partial:
        effects = partial_control_effects(ctx.out / CONTROLS, len(prompts),
                                          len(c_layers) * len(c_strengths))
    else:
        effects = control_effects(sweep(
            model, prompts, {VECTOR: vec.select(c_layers)}, layers=c_layers,
            strengths=c_strengths, measures=("kl", "generate"), scorer=beh.scorer,
            max_new_tokens=st["max_new_tokens"], n_random=st["control_n_random"],
            random_seed=ctx.seed, batch_size=st["batch_size"], out_dir=ctx.out / CONTROLS,
            resume=ctx.resume, show_progress=ctx.progress))
    if effects["score"]["is_random"].any():
        ctrl = control_table(effects)
        write_csv(ctx.out / "controls.csv", ctrl)
        found = control_findings(ctrl, st["scale"], rep) + found
    else:
        log("control sweep: no random direction finished yet; no VADER control rows")
    for kdir in (ctx.out / CONTROLS, ctx.out / KL_CONTROLS):  # the earlier grid only as a fallback
        if (kdir / "cells.jsonl").exists():
            klc = kl_control_rows(kdir, len(prompts))
            if len(klc):
                write_csv(ctx.out / f"{kdir.name}_kl.csv", klc)
                found += kl_control_findings(klc, st["scale"])
                break
    st = {**st, "control_layers": c_layers, "control_strengths": c_strengths}
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
        f"Control sweep (controls/): the cells the verdict rests on (layers {c_layers} x "
        f"strengths {c_strengths}: the by-depth layers at the report strength and the sweet "
        f"spot) rerun with {st['control_n_random']} norm-matched random directions each; "
        "empirical p = (1 + #random means at least as extreme) / (1 + k), one-sided in the "
        "direction the strength asks for. The rest of the grid has "
        f"{st['n_random']} random direction(s) per cell (descriptive band only).",
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
