"""How much does the same push disturb the model at each layer? Next-token KL and sampling diversity.

Steps (SmolLM2-135M-Instruct by default):
1. The CAA mean-difference sentiment vector from the behaviour's train pairs at every layer from
   1 up (layer 0's residual is the token embedding, identical for both sides of a pair).
2. Next-token KL(base || steered) in bits after each held-out prompt, at every `--layer-step`-th
   layer and a few fixed strengths, through `steerlens.sweep.sweep` (KL only), for two scalings
   of the same direction, each with `--n-random` norm-matched random directions:
   - "raw": multiples of the mean-difference vector (as in CAA; its norm grows with depth);
   - "resid": fractions (`--strengths`) of the median residual-stream norm at that layer (so every
     layer gets the same *relative* push).
3. The prior claim "KL is orders of magnitude larger in mid layers than late ones" as a ratio:
   mean KL over mid layers (depth fraction in [--mid-lo, --mid-hi]) / mean KL over late layers
   (depth >= --late-lo), paired by prompt, with a percentile-bootstrap CI over prompts, at every
   strength (KL saturates at large pushes, which compresses the ratio).
4. Sampling diversity at a few layers with the residual-scaled vector at `--div-strength`: k samples
   per prompt at temperature T (seeded), unsteered, steered and with a random direction, as the
   fraction of distinct samples and distinct-2 (`measures.sampling_diversity`), paired
   differences from unsteered with bootstrap CIs.

Saved in results/kl_diversity_by_layer/: the two resumable KL sweeps (`kl_sweep_raw/`,
`kl_sweep_resid/`), `kl_by_layer.csv` (mean / median KL per scale, vector, strength and layer),
`kl_ratios.json`, `norms.json`, `diversity.csv` and `diversity_per_prompt.json` (every sample).

    python -m analyses.kl_diversity_by_layer [--raw-strengths 1,4,8] [--strengths 0.05,0.2,0.5]
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.diversity import diversity_bars
from steerlens.figures.kl import kl_by_layer
from steerlens.measures import DiversityResult, sampling_diversity
from steerlens.methods import random_like
from steerlens.stats import bootstrap_ci, ratio_ci
from steerlens.sweep import load_sweep, sweep

from . import command
from ._common import (
    GalleryEntry,
    add_list,
    add_strengths,
    cached_vector,
    deprecated_alias,
    heldout_prompts,
    log,
    parser,
    relative_layers,
    residual_norms,
    scale_to_residual,
    sentiment_data,
    start,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, print_findings, save_findings

NAME = "kl_diversity_by_layer"


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--n-prompts", type=int, default=20, help="held-out prompts for KL (max 26)")
    p.add_argument("--layer-step", type=int, default=2, help="KL at layers 1, 1+step, ...")
    add_list(p, "--raw-strengths", float, [1.0, 4.0, 8.0], "multiples of the mean-difference vector")
    add_strengths(p, [0.05, 0.2, 0.5], "pushes as fractions of the median residual norm")
    p.add_argument("--n-random", type=int, default=2)
    p.add_argument("--mid-lo", type=float, default=1 / 3)
    p.add_argument("--mid-hi", type=float, default=2 / 3)
    p.add_argument("--late-lo", type=float, default=5 / 6)
    p.add_argument("--div-prompts", type=int, default=8)
    add_list(p, "--div-depths", float, [0.1, 0.3, 0.5, 0.7, 0.9],
             "depth fractions of the diversity layers")
    p.add_argument("--div-strength", type=float, default=0.2,
                   help="diversity push, fraction of the median residual norm")
    deprecated_alias(p, "--div-alpha", "--div-strength")
    p.add_argument("--k", type=int, default=6, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    return p


def settings_for(args, model) -> dict:
    n = runtime.n_layers(model)
    if args.quick:
        return dict(n_prompts=3, layers=list(range(1, n)), raw_strengths=[8.0], strengths=[0.5],
                    n_random=1, div_prompts=2, div_layers=[n - 1], div_strength=0.5, k=2,
                    max_new_tokens=3)
    layers = list(range(1, n, args.layer_step))
    if layers[-1] != n - 1:
        layers.append(n - 1)
    return dict(n_prompts=args.n_prompts, layers=layers, raw_strengths=args.raw_strengths,
                strengths=args.strengths, n_random=args.n_random, div_prompts=args.div_prompts,
                div_layers=relative_layers(model, args.div_depths), div_strength=args.div_strength,
                k=args.k, max_new_tokens=args.max_new_tokens)


def depth_groups(n_layers: int, layers, mid_lo, mid_hi, late_lo) -> tuple[list[int], list[int]]:
    frac = {la: la / (n_layers - 1) for la in layers}
    mid = [la for la in layers if mid_lo <= frac[la] <= mid_hi]
    late = [la for la in layers if frac[la] >= late_lo]
    if not mid or not late or set(mid) & set(late):
        raise ValueError(f"Depth groups must be non-empty and disjoint; got mid {mid}, late {late} "
                         f"from layers {list(layers)} (check --mid-lo/--mid-hi/--late-lo).")
    return mid, late


def per_prompt_group_kl(table: pd.DataFrame, vector: str, layers) -> np.ndarray:
    sel = table[(table["vector"] == vector) & table["layer"].isin(layers)]
    return sel.groupby("prompt_idx")["kl_bits"].mean().sort_index().to_numpy(float)


SCALES = {"raw": "x mean-diff vector", "resid": "x median residual norm"}


def kl_part(model, ctx, st, beh, prompts):
    """Two KL sweeps (raw and residual-scaled vector); returns their results and the vectors."""
    n = runtime.n_layers(model)
    full = cached_vector(model, beh, list(range(1, n)), ctx)
    vec = full.select(st["layers"])
    norms = residual_norms(model, prompts, st["layers"])
    vectors = {"raw": vec, "resid": scale_to_residual(vec, norms)}
    strengths = {"raw": st["raw_strengths"], "resid": st["strengths"]}
    results = {}
    for scale, v in vectors.items():
        results[scale] = sweep(model, prompts, {"sentiment": v}, layers=st["layers"],
                               strengths=strengths[scale],
                               measures=("kl",), n_random=st["n_random"], random_seed=ctx.seed,
                               out_dir=ctx.out / f"kl_sweep_{scale}", resume=ctx.resume,
                               show_progress=ctx.progress)
    return results, vectors, norms, strengths


def kl_findings(results, strengths, layers, n_layers, args, n) -> tuple[list[Finding], list[dict]]:
    out, ratios = [], []
    try:
        mid, late = depth_groups(n_layers, layers, args.mid_lo, args.mid_hi, args.late_lo)
    except ValueError as err:  # e.g. a 2-layer test model: no mid/late split
        log(f"no mid/late ratio: {err}")
        mid = late = None
    for scale, res in results.items():
        t = res.table
        rnd = [v for v in t["vector"].unique() if v != "sentiment"]
        for s_ in strengths[scale]:
            ts = t[t["strength"] == s_]
            by_layer = ts[~ts["is_random"]].groupby("layer")["kl_bits"].mean()
            peak = int(by_layer.idxmax())
            vals = ts[(ts["vector"] == "sentiment") & (ts["layer"] == peak)]["kl_bits"]
            c = bootstrap_ci(vals.to_numpy(float), n_boot=4000)
            r_peak = float(ts[ts["is_random"] & (ts["layer"] == peak)]["kl_bits"].mean())
            out.append(Finding(
                NAME, f"[{scale}] KL (bits) at the peak layer L{peak}, strength {s_:g} "
                f"{SCALES[scale]}", c.estimate, c.low, c.high, f"{n} prompts",
                f"random {fmt(r_peak)} (k={len(rnd)})",
                f"last layer L{layers[-1]}: {fmt(by_layer.loc[layers[-1]])} bits"))
            if mid is None:
                continue
            num = per_prompt_group_kl(ts, "sentiment", mid)
            den = per_prompt_group_kl(ts, "sentiment", late)
            c = ratio_ci(num, den, n_boot=4000)
            rr = [per_prompt_group_kl(ts, v, mid).mean() / per_prompt_group_kl(ts, v, late).mean()
                  for v in rnd]
            ratios.append({"scale": scale, "strength": s_, "mid": mid, "late": late,
                           "ratio": c.estimate, "low": c.low, "high": c.high,
                           "mid_mean": float(num.mean()), "late_mean": float(den.mean()),
                           "random_ratios": rr, "n": n})
            if c.low > 10:
                verdict = "mid >> late: at least an order of magnitude (CI above 10)"
            elif c.low > 1:
                verdict = ("mid > late, by less than 10x (CI below 10)" if c.high < 10 else
                           "mid > late; an order of magnitude neither shown nor excluded")
            elif c.high < 1:
                verdict = "reversed: late layers disturbed more than mid layers"
            else:
                verdict = "no reliable difference (CI includes 1)"
            out.append(Finding(
                NAME, f"[{scale}] KL ratio mid (L{mid[0]}-{mid[-1]}) / late "
                f"(L{late[0]}-{late[-1]}), strength {s_:g} {SCALES[scale]} (mid {fmt(num.mean())}"
                f" vs late {fmt(den.mean())} bits)", c.estimate, c.low, c.high, f"{n} prompts",
                "random ratio " + ", ".join(fmt(x) for x in rr), verdict, headline=True))
    return out, ratios


def diversity_part(model, ctx, st, args, scaled, prompts):
    dprompts = prompts[: st["div_prompts"]]
    common = dict(k=st["k"], temperature=args.temperature, max_new_tokens=st["max_new_tokens"],
                  seed=ctx.seed)
    a = st["div_strength"]
    results = {"unsteered": sampling_diversity(model, dprompts, None, **common)}
    rnd = random_like(scaled, seed=ctx.seed)
    for layer in st["div_layers"]:
        log(f"diversity at layer {layer}")
        results[f"L{layer}"] = sampling_diversity(model, dprompts, scaled.layer(layer), a, **common)
        results[f"random L{layer}"] = sampling_diversity(model, dprompts, rnd.layer(layer), a,
                                                         **common)
    rows = []
    base = results["unsteered"]
    for name, r in results.items():
        row = {"condition": name, "n": r.n, "k": r.k}
        for metric in ("distinct_fraction", "distinct_n"):
            vals = np.asarray(getattr(r, metric), float)
            diff = vals - np.asarray(getattr(base, metric), float)
            c = bootstrap_ci(vals, n_boot=4000, seed=ctx.seed, nan_policy="omit")
            d = bootstrap_ci(diff, n_boot=4000, seed=ctx.seed, nan_policy="omit")
            row.update({metric: c.estimate, f"{metric}_low": c.low, f"{metric}_high": c.high,
                        f"{metric}_diff": d.estimate, f"{metric}_diff_low": d.low,
                        f"{metric}_diff_high": d.high})
        rows.append(row)
    write_json(ctx.out / DIVERSITY_FILE, [{"condition": name, **asdict(r)}
                                          for name, r in results.items()])
    return pd.DataFrame(rows)


DIVERSITY_FILE = "diversity_per_prompt.json"  # every DiversityResult, for redrawing the figures


def kl_series(res, strength: float, scale: str) -> dict[str, dict[int, np.ndarray]]:
    """Per-layer per-prompt KL of the vector and (per-prompt mean over) its random directions."""
    t = res.table
    sel = t[t["strength"] == strength]
    return {
        f"{strength:g} {SCALES[scale]}": {int(la): g["kl_bits"].to_numpy(float)
                                         for la, g in sel[~sel["is_random"]].groupby("layer")},
        f"random, {strength:g}": {int(la): g.groupby("prompt_idx")["kl_bits"].mean().to_numpy(float)
                                  for la, g in sel[sel["is_random"]].groupby("layer")},
    }


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Draw the figures of a finished run from its saved results in `out` (no model)."""
    entries = []
    for scale in SCALES:
        if not (out / f"kl_sweep_{scale}" / "sweep.json").exists():
            continue
        res = load_sweep(out / f"kl_sweep_{scale}")
        n, n_random = len(res.config["prompts"]), res.settings.n_random
        series = {}
        for s_ in res.settings.strengths:
            series.update(kl_series(res, float(s_), scale))
        fig = kl_by_layer(series)
        fig.update_layout(title=f"Next-token KL by layer, sentiment vector, strength in "
                                f"{SCALES[scale]} (n={n} prompts, mean and 95% CI; "
                                f"random: {n_random} norm-matched directions, per-prompt mean)")
        path = save_html(fig, fig_dir / f"{NAME}_kl_{scale}.html")
        entries.append(GalleryEntry(
            NAME, path, f"Next-token KL by layer, strength in {SCALES[scale]}",
            f"KL (bits) per layer at each strength vs {n_random} norm-matched random directions "
            f"(n={n} prompts, 95% CI).", results_command))
    if (out / DIVERSITY_FILE).exists():
        saved = json.loads((out / DIVERSITY_FILE).read_text(encoding="utf-8"))
        results = {}
        for d in saved:
            d = dict(d)
            name = d.pop("condition")
            results[name] = DiversityResult(**{k: tuple(tuple(x) if isinstance(x, list) else x
                                                         for x in v) if isinstance(v, list) else v
                                               for k, v in d.items()})
        k = next(iter(results.values())).k
        temp = next(iter(results.values())).temperature
        push = next((r.strength for r in results.values() if r.steered), None)
        n = next(iter(results.values())).n
        for metric, key in (("distinct_fraction", "diversity"), ("distinct_n", "distinct2")):
            fig = diversity_bars(results, metric)
            fig.update_layout(title=f"Sampling diversity ({metric}) by steered layer, push "
                                    f"{push:g} x median residual norm (k={k} samples at "
                                    f"T={temp:g}, n={n} prompts, mean and 95% CI)")
            path = save_html(fig, fig_dir / f"{NAME}_{key}.html")
            entries.append(GalleryEntry(
                NAME, path, f"Sampling diversity ({metric})",
                f"{metric} of k={k} samples at T={temp:g} per steered layer and its random "
                f"direction (n={n} prompts, 95% CI).", results_command))
    return entries


make_figures = draw  # the gallery hook: one saved run in results_dir


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    args, ctx, model = start(NAME, build_parser(), argv, model)
    st = settings_for(args, model)
    beh = sentiment_data()
    prompts = heldout_prompts(beh, st["n_prompts"])
    n_layers = runtime.n_layers(model)
    log(f"{NAME}: model {runtime.model_id(model)}, KL at layers {st['layers']}, "
        f"n={len(prompts)} prompts, n_random={st['n_random']}")
    results, vectors, norms, strengths = kl_part(model, ctx, st, beh, prompts)
    tables = []
    for scale, res in results.items():
        t = res.table.copy()
        t["scale"] = scale
        tables.append(t)
    kl_table = pd.concat(tables)
    by_layer = (kl_table.groupby(["scale", "vector", "strength", "layer"])["kl_bits"]
                .agg(["mean", "median", "count"]).reset_index())
    write_csv(ctx.out / "kl_by_layer.csv", by_layer)
    raw = vectors["raw"]
    write_json(ctx.out / "norms.json", {"vector": raw.norms, "residual_median": norms,
                                        "raw_rel_norm_per_unit": {la: raw.norms[la] / norms[la]
                                                                  for la in raw.layers}})
    found, ratios = kl_findings(results, strengths, st["layers"], n_layers, args, len(prompts))
    write_json(ctx.out / "kl_ratios.json", ratios)
    log("KL done; sampling diversity")
    div_vec = cached_vector(model, beh, list(range(1, n_layers)), ctx)
    full = scale_to_residual(div_vec.select(st["div_layers"]),
                             residual_norms(model, prompts, st["div_layers"]))
    div = diversity_part(model, ctx, st, args, full, prompts)
    write_csv(ctx.out / "diversity.csv", div)
    base = div[div["condition"] == "unsteered"].iloc[0]
    for _, r in div.iterrows():
        if r["condition"] == "unsteered" or r["condition"].startswith("random"):
            continue
        rr = div[div["condition"] == f"random {r['condition']}"].iloc[0]
        excl = r["distinct_n_diff_low"] > 0 or r["distinct_n_diff_high"] < 0
        found.append(Finding(
            NAME, f"distinct-2 of k={int(r['k'])} samples (T={args.temperature:g}), steered at "
            f"{r['condition']} by {st['div_strength']:g} x resid norm, minus unsteered "
            f"({fmt(base['distinct_n'])})", r["distinct_n_diff"], r["distinct_n_diff_low"],
            r["distinct_n_diff_high"], f"{int(r['n'])} prompts",
            f"random direction {fmt(rr['distinct_n_diff'])}",
            ("diversity changed (CI excludes 0)" if excl else "no detectable change (null)")
            + ("; the random direction's change lies inside this CI (not specific to the vector)"
               if r["distinct_n_diff_low"] <= rr["distinct_n_diff"] <= r["distinct_n_diff_high"]
               else "; outside the random direction's value")
            + f"; distinct samples {fmt(r['distinct_fraction'])} of 1",
            headline=r["condition"] == f"L{st['div_layers'][len(st['div_layers']) // 2]}"))
    settings = {**{k: v for k, v in st.items() if k != "layers"}, "model": runtime.model_id(model),
                "temperature": args.temperature, "kl_layers": st["layers"],
                "depth_groups": {"mid": [args.mid_lo, args.mid_hi], "late": args.late_lo}}
    notes = [
        "KL is next-token KL(base || steered) in bits after the chat-templated prompt, steering "
        "at all positions of one layer; ratios are mean over mid layers / mean over late "
        "layers, paired by prompt, bootstrap over prompts.",
        "'raw' applies multiples of the mean-difference vector, whose norm grows with depth "
        "(about 5% of the residual norm at layer 8, 21% at layer 29); 'resid' applies fractions "
        "of each layer's median residual norm. The mid/late contrast depends on which is held "
        "fixed, and KL saturates at large pushes.",
        "Diversity: k samples per prompt at temperature T with a fixed seed; the random row is one "
        "norm-matched random direction per layer; distinct-2 = distinct bigrams / bigrams over "
        "the k samples.",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        real = by_layer[by_layer["vector"] == "sentiment"]
        print(real.pivot_table(index="layer", columns=["scale", "strength"], values="mean")
              .round(3).to_string())
        print(div.round(3).to_string(index=False))
    print_findings(found)
    return {"results": results, "ratios": ratios, "diversity": div, "findings": found}


if __name__ == "__main__":
    main()
