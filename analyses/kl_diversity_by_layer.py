"""How much does the same push disturb the model at each layer? Next-token KL and sampling diversity.

Steps (SmolLM2-135M-Instruct by default):
1. The CAA mean-difference sentiment vector from the behaviour's train pairs at every layer from
   1 up (layer 0's residual is the token embedding, identical for both sides of a pair).
2. Next-token KL(base || steered) in bits after each held-out prompt, at every layer and one fixed
   strength, through `steerlens.sweep.sweep` (KL only), for two scalings of the same vector:
   - "raw": `--raw-strength` x the mean-difference vector (as in CAA; its norm grows with depth);
   - "resid": `--alpha` x the median residual-stream norm at that layer, along the same direction
     (so every layer gets the same *relative* push).
   Each with `--n-random` norm-matched random directions.
3. The prior claim "KL is orders of magnitude larger in mid layers than late ones" as a ratio:
   mean KL over mid layers (depth fraction in [--mid-lo, --mid-hi]) / mean KL over late layers
   (depth >= --late-lo), per prompt paired, with a percentile-bootstrap CI over prompts.
4. Sampling diversity: k samples per prompt at temperature T (seeded), steered with the raw vector
   at a few layers, unsteered, and with a random direction, as the fraction of distinct samples and
   distinct-2 (`measures.sampling_diversity`).

    python analyses/kl_diversity_by_layer.py [--raw-strength 8] [--alpha 0.5] [--k 6]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    Finding,
    cached_vector,
    context,
    fmt,
    get_model,
    heldout_prompts,
    log,
    parser,
    print_findings,
    relative_layers,
    residual_norms,
    save_findings,
    scale_to_residual,
    sentiment_data,
    write_csv,
    write_json,
)

from steerlens.backend import runtime  # noqa: E402
from steerlens.figures import save_html  # noqa: E402
from steerlens.figures.diversity import diversity_bars  # noqa: E402
from steerlens.figures.sweep import kl_by_layer  # noqa: E402
from steerlens.measures import sampling_diversity  # noqa: E402
from steerlens.methods import random_like  # noqa: E402
from steerlens.stats import CI, bootstrap_ci  # noqa: E402
from steerlens.sweep import sweep  # noqa: E402

NAME = "kl_diversity_by_layer"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--n-prompts", type=int, default=26, help="held-out prompts for KL (max 26)")
    p.add_argument("--raw-strength", type=float, default=8.0,
                   help="multiple of the mean-difference vector (default %(default)s)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="push as a fraction of the median residual norm (default %(default)s)")
    p.add_argument("--n-random", type=int, default=3)
    p.add_argument("--mid-lo", type=float, default=1 / 3)
    p.add_argument("--mid-hi", type=float, default=2 / 3)
    p.add_argument("--late-lo", type=float, default=5 / 6)
    p.add_argument("--div-prompts", type=int, default=8)
    p.add_argument("--div-depths", type=_floats, default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="depth fractions of the diversity layers")
    p.add_argument("--k", type=int, default=6, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    return p


def settings_for(args, model) -> dict:
    n = runtime.n_layers(model)
    if args.quick:
        return dict(n_prompts=3, layers=list(range(1, n)), n_random=1, div_prompts=2,
                    div_layers=[n - 1], k=2, max_new_tokens=3)
    return dict(n_prompts=args.n_prompts, layers=list(range(1, n)), n_random=args.n_random,
                div_prompts=args.div_prompts, div_layers=relative_layers(model, args.div_depths),
                k=args.k, max_new_tokens=args.max_new_tokens)


def depth_groups(n_layers: int, layers, mid_lo, mid_hi, late_lo) -> tuple[list[int], list[int]]:
    frac = {la: la / (n_layers - 1) for la in layers}
    mid = [la for la in layers if mid_lo <= frac[la] <= mid_hi]
    late = [la for la in layers if frac[la] >= late_lo]
    if not mid or not late or set(mid) & set(late):
        raise ValueError(f"Depth groups must be non-empty and disjoint; got mid {mid}, late {late} "
                         f"from layers {list(layers)} (check --mid-lo/--mid-hi/--late-lo).")
    return mid, late


def ratio_ci(num: np.ndarray, den: np.ndarray, seed: int = 0) -> CI:
    """mean(num) / mean(den) over paired prompts, percentile bootstrap over prompts."""
    idx = np.arange(len(num), dtype=float)

    def stat(ix, axis=None):
        i = ix.astype(int)
        if axis is None:
            return float(num[i].mean() / den[i].mean())
        return num[i].mean(axis) / den[i].mean(axis)

    return bootstrap_ci(idx, stat=stat, n_boot=4000, seed=seed)


def per_prompt_group_kl(table: pd.DataFrame, vector: str, layers) -> np.ndarray:
    sel = table[(table["vector"] == vector) & table["layer"].isin(layers)]
    return sel.groupby("prompt_idx")["kl_bits"].mean().sort_index().to_numpy(float)


def kl_part(model, ctx, st, args, beh, prompts):
    layers = st["layers"]
    vec = cached_vector(model, beh, layers, ctx.out, ctx.progress, ctx.resume)
    norms = residual_norms(model, prompts, layers)
    raw = vec * args.raw_strength
    resid = scale_to_residual(vec, norms) * args.alpha
    vectors = {"raw": raw, "resid": resid}
    res = sweep(model, vectors, layers, [1.0], prompts, measures=("kl",), n_random=st["n_random"],
                random_seed=ctx.seed, out_dir=ctx.out / "kl_sweep", resume=ctx.resume,
                show_progress=ctx.progress)
    labels = {"raw": f"{args.raw_strength:g} x mean-diff vector",
              "resid": f"{args.alpha:g} x median residual norm"}
    for name in vectors:
        fig = kl_by_layer(res, 1.0, vectors=[name])
        fig.update_layout(title=f"Next-token KL by layer, sentiment vector at {labels[name]} "
                                f"(n={len(prompts)} prompts, mean and 95% CI; random: "
                                f"{st['n_random']} norm-matched directions pooled)")
        save_html(fig, ctx.fig(f"kl_{name}"))
    return res, vec, norms, vectors, labels


def kl_findings(res, vectors, labels, layers, n_layers, args, n) -> tuple[list[Finding], dict]:
    t = res.table
    out, ratios = [], {}
    summ = t.groupby(["vector", "layer"])["kl_bits"].mean().unstack(0)
    try:
        mid, late = depth_groups(n_layers, layers, args.mid_lo, args.mid_hi, args.late_lo)
    except ValueError as err:  # e.g. a 2-layer test model: no mid/late split
        log(f"no mid/late ratio: {err}")
        mid = late = None
    for name in vectors:
        rnd = [v for v in t["vector"].unique() if v != name
               and t.loc[t["vector"] == v, "control_for"].iloc[0] == name]
        for label, layer in (("peak", int(summ[name].idxmax())), ("last", layers[-1])):
            vals = t[(t["vector"] == name) & (t["layer"] == layer)]["kl_bits"].to_numpy(float)
            c = bootstrap_ci(vals, n_boot=4000)
            r = float(summ[rnd].loc[layer].mean()) if rnd else float("nan")
            out.append(Finding(
                NAME, f"KL (bits) at the {label} layer L{layer}, {labels[name]}", c.estimate,
                c.low, c.high, f"{n} prompts", f"random mean {fmt(r)} (k={len(rnd)})",
                f"{c.estimate / r:.3g}x random" if rnd and r > 0 else "-"))
        if mid is None:
            continue
        num, den = per_prompt_group_kl(t, name, mid), per_prompt_group_kl(t, name, late)
        c = ratio_ci(num, den)
        rnd_ratios = [per_prompt_group_kl(t, v, mid).mean() / per_prompt_group_kl(t, v, late).mean()
                      for v in rnd]
        ratios[name] = {"mid": mid, "late": late, "ratio": c.estimate, "low": c.low,
                        "high": c.high, "random_ratios": rnd_ratios,
                        "mid_mean": float(num.mean()), "late_mean": float(den.mean())}
        if c.low > 10:
            verdict = "mid >> late: at least an order of magnitude (CI above 10)"
        elif c.low > 1:
            verdict = "mid > late, but by less than 10x (CI below 10)" if c.high < 10 else \
                "mid > late; an order of magnitude not excluded nor shown"
        elif c.high < 1:
            verdict = "reversed: late layers disturbed more than mid layers"
        else:
            verdict = "no reliable difference (CI includes 1)"
        out.append(Finding(
            NAME, f"KL ratio mid (L{mid[0]}-{mid[-1]}) / late (L{late[0]}-{late[-1]}), "
            f"{labels[name]}", c.estimate, c.low, c.high, f"{n} prompts",
            "random-direction ratio " + ", ".join(fmt(r) for r in rnd_ratios), verdict))
    return out, ratios


def diversity_part(model, ctx, st, args, vec, prompts):
    dprompts = prompts[: st["div_prompts"]]
    common = dict(k=st["k"], temperature=args.temperature, max_new_tokens=st["max_new_tokens"],
                  seed=ctx.seed)
    results = {"unsteered": sampling_diversity(model, dprompts, None, **common)}
    rnd = random_like(vec, seed=ctx.seed)
    for layer in st["div_layers"]:
        log(f"diversity at layer {layer}")
        results[f"L{layer}"] = sampling_diversity(model, dprompts, vec.layer(layer),
                                                  args.raw_strength, **common)
        results[f"random L{layer}"] = sampling_diversity(model, dprompts, rnd.layer(layer),
                                                         args.raw_strength, **common)
    rows = []
    base = results["unsteered"]
    for name, r in results.items():
        c = bootstrap_ci(r.distinct_fraction, n_boot=4000, seed=ctx.seed)
        d = np.asarray(r.distinct_fraction) - np.asarray(base.distinct_fraction)
        dc = bootstrap_ci(d, n_boot=4000, seed=ctx.seed)
        c2 = bootstrap_ci(r.distinct_n, n_boot=4000, seed=ctx.seed, nan_policy="omit")
        rows.append({"condition": name, "n": r.n, "k": r.k, "distinct_fraction": c.estimate,
                     "low": c.low, "high": c.high, "diff_vs_unsteered": dc.estimate,
                     "diff_low": dc.low, "diff_high": dc.high, "distinct_2": c2.estimate,
                     "distinct_2_low": c2.low, "distinct_2_high": c2.high})
    samples = [{"condition": name, "prompt": p, "samples": list(s)}
               for name, r in results.items() for p, s in zip(r.prompts, r.samples)]
    fig = diversity_bars(results)
    fig.update_layout(title=f"Sampling diversity by steered layer ({args.raw_strength:g} x vector; "
                            f"k={st['k']} samples at T={args.temperature:g}, n={len(dprompts)} "
                            "prompts, mean and 95% CI; dashed: 1/k)")
    save_html(fig, ctx.fig("diversity"))
    fig2 = diversity_bars(results, "distinct_n")
    save_html(fig2, ctx.fig("distinct2"))
    return pd.DataFrame(rows), samples


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = context(NAME, args)
    model = get_model(args.model, ctx.device, given=model)
    st = settings_for(args, model)
    beh = sentiment_data()
    prompts = heldout_prompts(beh, st["n_prompts"])
    n_layers = runtime.n_layers(model)
    log(f"{NAME}: model {runtime.model_id(model)}, KL at layers {st['layers'][0]}..."
        f"{st['layers'][-1]}, n={len(prompts)} prompts, n_random={st['n_random']}")
    res, vec, norms, vectors, labels = kl_part(model, ctx, st, args, beh, prompts)
    write_csv(ctx.out / "kl_table.csv", res.table)
    by_layer = res.table.groupby(["vector", "layer"])["kl_bits"].agg(["mean", "median", "count"])
    write_csv(ctx.out / "kl_by_layer.csv", by_layer.reset_index())
    write_json(ctx.out / "norms.json", {"vector": vec.norms, "residual_median": norms,
                                        "raw_rel_norm": {la: args.raw_strength * vec.norms[la]
                                                         / norms[la] for la in vec.layers}})
    found, ratios = kl_findings(res, vectors, labels, st["layers"], n_layers, args, len(prompts))
    log("KL done; sampling diversity")
    div, samples = diversity_part(model, ctx, st, args, vec, prompts)
    write_csv(ctx.out / "diversity.csv", div)
    write_json(ctx.out / "diversity_samples.json", samples)
    write_json(ctx.out / "kl_ratios.json", ratios)
    base = div[div["condition"] == "unsteered"].iloc[0]
    for _, r in div.iterrows():
        if r["condition"] == "unsteered" or r["condition"].startswith("random"):
            continue
        rr = div[div["condition"] == f"random {r['condition']}"]
        rnd = fmt(rr["distinct_fraction"].iloc[0]) if len(rr) else "-"
        excl = r["diff_low"] > 0 or r["diff_high"] < 0
        found.append(Finding(
            NAME, f"distinct fraction of k={int(r['k'])} samples, steered at {r['condition']} "
            f"(unsteered {fmt(base['distinct_fraction'])}); diff vs unsteered",
            r["diff_vs_unsteered"], r["diff_low"], r["diff_high"], f"{int(r['n'])} prompts",
            f"random direction {rnd}",
            "diversity changed (CI excludes 0)" if excl else "no detectable change (null)"))
    settings = {**{k: v for k, v in st.items() if k != "layers"}, "model": runtime.model_id(model),
                "raw_strength": args.raw_strength, "alpha": args.alpha,
                "temperature": args.temperature, "kl_layers": f"{st['layers'][0]}..{st['layers'][-1]}"}
    notes = [
        "KL is next-token KL(base || steered) in bits after the chat-templated prompt, steering "
        "at all positions of one layer; ratios are mean over mid layers / mean over late "
        "layers, paired by prompt, bootstrap over prompts.",
        "'raw' applies a fixed multiple of the mean-difference vector, whose norm grows with "
        "depth; 'resid' applies a fixed fraction of each layer's median residual norm. The "
        "mid/late contrast depends on which is held fixed.",
        "Diversity uses the raw scaling at a few layers, k samples per prompt at temperature T "
        "with a fixed seed; the random row is one norm-matched random direction per layer.",
    ]
    save_findings(ctx, found, settings, notes)
    with pd.option_context("display.width", 140, "display.max_rows", 100):
        print(by_layer.reset_index().pivot(index="layer", columns="vector", values="mean")
              .round(4).to_string())
        print(div.round(3).to_string(index=False))
    print_findings(found)
    return {"result": res, "ratios": ratios, "diversity": div, "findings": found}


if __name__ == "__main__":
    main()
