"""Do the six shipped behaviours' vectors have the same geometry in SmolLM2 and Gemma 3 270M?

For each model (SmolLM2-135M-Instruct, 30 layers, d_model 576; Gemma 3 270M base, 18 layers,
d_model 640) and each of the six shipped behaviours (`steerlens/data/behaviours/*`: calendar_json,
formality, french, refusal, sentiment, sycophancy) a mean-difference (CAA) vector is built from the
behaviour's 36 train pairs, read at the last token of each completion at `resid_pre`, on raw text
(no chat template: Gemma base has none, so both models read the same strings). Layers are matched
by relative depth: fraction f maps to layer round(f x (n_layers - 1)) of each model; the depths are
0.25, 0.4, 0.6 and 0.75, and the headline depth 0.4 was fixed before running.

At each depth, the 6 x 6 matrix of cosine similarities between the behaviours' vectors; the
15 upper-triangle entries (behaviour pairs, in sorted-name order) of the two models are compared
by Spearman's rho, with

- a permutation p that relabels the behaviours of the second model: rows and columns are permuted
  jointly (all 6! = 720 relabelings, exact), which keeps each matrix's structure and breaks only
  the correspondence of names; p = #(|rho_perm| >= |rho|) / 720 (the identity included);
- a percentile bootstrap CI over the 15 pairs (`stats.correlate`; the pairs share behaviours, so
  they are not independent and this interval is optimistic; the label permutation is the test);
- a random baseline: the same matrices for norm-matched Gaussian random vectors (drawn as
  `methods.random_like` draws them, one per behaviour, model and draw), giving the band of
  cosines between unrelated vectors and the band of rho between two unrelated matrices.

A within-model reference gives the scale: SmolLM2's raw-text matrix against its chat-templated one
(the same model and pairs, only the input format changes).

Saved in results/cross_architecture/: `cosines.json` (labels, layers, every matrix, random bands),
`pairs.csv` (each pair's cosine per model and depth), `rho.csv` (rho, CI, p per depth), the
vectors (`<model>/vector_<behaviour>_raw`), findings.json.

    python -m analyses.cross_architecture [--other-model gemma-3-270m] [--depths 0.25,0.4,0.6,0.75]
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.geometry import cosine_heatmaps, pair_scatter
from steerlens.pairs import list_behaviours, load_behaviour
from steerlens.stats import correlate

from . import command
from ._common import (
    GalleryEntry,
    add_list,
    cached_vector,
    context,
    get_model,
    log,
    parser,
    relative_layers,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, print_findings, save_findings

NAME = "cross_architecture"
HEADLINE_DEPTH = 0.4


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--other-model", default="gemma-3-270m", help="the second model")
    add_list(p, "--depths", float, [0.25, HEADLINE_DEPTH, 0.6, 0.75], "relative depths (0..1)")
    p.add_argument("--n-random", type=int, default=200, help="random-vector draws for the baseline")
    p.add_argument("--n-boot", type=int, default=4000)
    p.add_argument("--no-chat-check", action="store_true",
                   help="skip the within-model reference (first model, chat vs raw)")
    return p


# ------------------------------------------------------------------------------ the statistics


def cosine_matrix(vectors: list[np.ndarray]) -> np.ndarray:
    """Cosine similarity between every two vectors (rows of the result in the given order)."""
    m = np.stack([np.asarray(v, np.float64) for v in vectors])
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    return m @ m.T


def upper(mat: np.ndarray) -> np.ndarray:
    """The strictly-upper-triangle entries, row by row ((0,1), (0,2), ..., (k-2,k-1))."""
    i, j = np.triu_indices(mat.shape[0], k=1)
    return np.asarray(mat)[i, j]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson on average ranks)."""
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def label_permutation_p(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Exact two-sided permutation p of Spearman(upper(a), upper(b)) over relabelings of b.

    Every permutation of b's behaviour labels (rows and columns jointly) is tried, the identity
    included; p = #(|rho_perm| >= |rho| - 1e-12) / k!. Returns (p, number of permutations).
    """
    k = a.shape[0]
    if a.shape != (k, k) or b.shape != (k, k) or k < 3:
        raise ValueError(f"Need two square matrices of the same size k >= 3, got {a.shape} and "
                         f"{b.shape}.")
    xa = upper(a)
    rho = spearman(xa, upper(b))
    perms = list(itertools.permutations(range(k)))
    rhos = np.array([spearman(xa, upper(b[np.ix_(p, p)])) for p in perms])
    return float((np.abs(rhos) >= abs(rho) - 1e-12).sum() / len(perms)), len(perms)


def random_bands(vecs_a: list[np.ndarray], vecs_b: list[np.ndarray], n: int,
                 seed: int) -> dict:
    """Cosines and rho for norm-matched random vectors: the chance level of both measures.

    Each draw replaces every behaviour vector of each model by a Gaussian vector of the same norm
    (independent across behaviours, models and draws). Returns the 2.5/97.5% quantiles of the
    random pairwise cosines (per model) and of rho between the two random matrices.
    """
    rng = np.random.default_rng(seed)
    cos_a, cos_b, rhos = [], [], []
    for _ in range(n):
        ra = [rng.standard_normal(v.size) * np.linalg.norm(v) for v in vecs_a]
        rb = [rng.standard_normal(v.size) * np.linalg.norm(v) for v in vecs_b]
        ua, ub = upper(cosine_matrix(ra)), upper(cosine_matrix(rb))
        cos_a.extend(ua)
        cos_b.extend(ub)
        rhos.append(spearman(ua, ub))
    q = [2.5, 97.5]
    return {"cos_a": [float(x) for x in np.percentile(cos_a, q)],
            "cos_b": [float(x) for x in np.percentile(cos_b, q)],
            "abs_cos_a_mean": float(np.mean(np.abs(cos_a))),
            "abs_cos_b_mean": float(np.mean(np.abs(cos_b))),
            "rho": [float(x) for x in np.percentile(rhos, q)], "n": n}


# ------------------------------------------------------------------------------ the run


def _vectors(model, label: str, behaviours, layers, ctx, chat: bool) -> dict:
    """behaviour -> SteeringVector at `layers` (cached in <out>/<label>/)."""
    out = {}
    for beh in behaviours:
        out[beh.name] = cached_vector(model, beh, layers, ctx, cache_dir=ctx.out / label, chat=chat,
                                      show_progress=False)
    return out


def _matrices(vecs: dict, names: list[str], layers: list[int]) -> dict[int, np.ndarray]:
    return {la: cosine_matrix([vecs[n][la].double().numpy() for n in names]) for la in layers}


def main(argv=None, model=None, models=None) -> dict:
    """Run the analysis; `models` optionally reuses two loaded models (first, other)."""
    args = build_parser().parse_args(argv)
    ctx = context(NAME, args)
    depths = [1.0] if args.quick else args.depths
    n_random, n_boot = (20, 200) if args.quick else (args.n_random, args.n_boot)
    names_ = [args.model, args.other_model]
    if args.quick and args.model == "tiny-random" and args.other_model == "gemma-3-270m":
        names_ = ["tiny-random", "tiny-random"]  # smoke test: the pipeline, not the comparison
    given = models if models is not None else (model, None)
    behaviours = [load_behaviour(n) for n in sorted(list_behaviours())]
    labels = [b.name for b in behaviours]
    runs = []
    loaded = []
    for i, name in enumerate(names_):
        m = get_model(name, ctx.device, given=given[i] if i < len(given) else None)
        loaded.append(m)
        layers = [relative_layers(m, [d])[0] for d in depths]  # one per depth, repeats kept
        label = name if i == 0 or name != names_[0] else f"{name}-b"
        log(f"{NAME}: {label}: vectors of {len(labels)} behaviours at layers {layers}")
        vecs = _vectors(m, label, behaviours, sorted(set(layers)), ctx, chat=False)
        runs.append({"label": label, "model_id": runtime.model_id(m), "layers": layers,
                     "n_layers": runtime.n_layers(m), "d_model": runtime.d_model(m),
                     "mats": _matrices(vecs, labels, sorted(set(layers))), "vecs": vecs})
    ref = None
    a, b = runs
    if not args.no_chat_check and not args.quick and runtime.has_chat_template(loaded[0]):
        log(f"{NAME}: {a['label']}: chat-templated vectors (within-model reference)")
        vecs = _vectors(loaded[0], f"{a['label']}+chat", behaviours, sorted(set(a["layers"])), ctx,
                        chat=True)
        ref = {"label": f"{a['label']}+chat", "mats": _matrices(vecs, labels, sorted(set(a["layers"])))}
    pair_names = [f"{labels[i]}/{labels[j]}" for i, j in zip(*np.triu_indices(len(labels), k=1))]
    rows, pair_rows, saved = [], [], {"labels": labels, "pairs": pair_names, "depths": depths,
                                      "models": [], "by_depth": []}
    for r in runs:
        saved["models"].append({k: r[k] for k in ("label", "model_id", "layers", "n_layers",
                                                  "d_model")})
    for k, d in enumerate(depths):
        la, lb = a["layers"][k], b["layers"][k]
        ma, mb = a["mats"][la], b["mats"][lb]
        ua, ub = upper(ma), upper(mb)
        c = correlate(ua, ub, method="spearman", n_boot=n_boot, n_perm=2000, seed=ctx.seed)
        p_label, n_perm = label_permutation_p(ma, mb)
        band = random_bands([a["vecs"][n][la].double().numpy() for n in labels],
                            [b["vecs"][n][lb].double().numpy() for n in labels], n_random,
                            ctx.seed + k)
        row = {"depth": d, "layer_a": la, "layer_b": lb, "rho": c.r, "low": c.ci_low, "high": c.ci_high,
               "p_label_perm": p_label, "n_label_perms": n_perm, "p_pair_perm": c.p_perm,
               "rho_random_low": band["rho"][0], "rho_random_high": band["rho"][1],
               "mean_cos_a": float(ua.mean()), "mean_cos_b": float(ub.mean()),
               "mean_abs_cos_a": float(np.abs(ua).mean()), "mean_abs_cos_b": float(np.abs(ub).mean()),
               "random_abs_cos_a": band["abs_cos_a_mean"], "random_abs_cos_b": band["abs_cos_b_mean"],
               "n_pairs": len(ua)}
        entry = {"depth": d, "layers": [la, lb], a["label"]: ma.tolist(), b["label"]: mb.tolist(),
                 "random": band, "stats": row}
        if ref is not None:
            mr = ref["mats"][la]
            cr = correlate(ua, upper(mr), method="spearman", n_boot=n_boot, n_perm=2000,
                           seed=ctx.seed)
            row.update({"rho_chat_ref": cr.r, "rho_chat_ref_low": cr.ci_low,
                        "rho_chat_ref_high": cr.ci_high})
            entry[ref["label"]] = mr.tolist()
        rows.append(row)
        saved["by_depth"].append(entry)
        for pn, x, y in zip(pair_names, ua, ub):
            pair_rows.append({"depth": d, "pair": pn, a["label"]: x, b["label"]: y})
    rho = pd.DataFrame(rows)
    write_csv(ctx.out / "rho.csv", rho)
    write_csv(ctx.out / "pairs.csv", pd.DataFrame(pair_rows))
    write_json(ctx.out / "cosines.json", saved)
    found = findings(rho, a["label"], b["label"], depths, ref is not None)
    settings = {"models": [r["model_id"] for r in runs], "depths": depths,
                "layers": {r["label"]: r["layers"] for r in runs}, "behaviours": labels,
                "vector": "mean_diff on each behaviour's train pairs, resid_pre, last completion "
                          "token, raw text (no chat template)",
                "headline_depth": HEADLINE_DEPTH, "n_random": n_random, "n_boot": n_boot}
    notes = [
        "Label permutation: the second model's behaviour labels are permuted (rows and columns "
        "jointly), all 720 relabelings; the bootstrap over the 15 pairs treats pairs as independent, "
        "which they are not (each behaviour is in 5 pairs), so its CI is optimistic.",
        "Random band: Gaussian vectors with each behaviour vector's norm, independent per behaviour, "
        f"model and draw ({n_random} draws); cosines between such vectors are ~N(0, 1/d_model).",
        "Mean-difference vectors can share a common component (e.g. a massive-activation "
        "dimension, or what any completion vs another completion changes), which raises all "
        "cosines of a model together; rho compares the ranking of pairs, which such a shared "
        "offset does not fix.",
        "The models differ in family, size, tokenizer and training (and instruct vs base), so "
        "agreement is about these two models.",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 180):
        print(rho.round(3).to_string(index=False))
    print_findings(found)
    return {"rho": rho, "saved": saved, "findings": found}


def findings(rho: pd.DataFrame, la: str, lb: str, depths, has_ref: bool) -> list[Finding]:
    out = []
    for _, r in rho.iterrows():
        head = math.isclose(r["depth"], HEADLINE_DEPTH) or len(depths) == 1
        # the headline depth was fixed in advance; the others are exploratory, so their p is
        # Bonferroni-adjusted over the depths run
        p = r["p_label_perm"] if head else min(1.0, r["p_label_perm"] * len(depths))
        supported = p < 0.05 and r["low"] > 0
        verdict = ("supported: the behaviours' pairwise geometry is shared" if supported
                   else "null: no shared ranking detected" if p >= 0.05
                   else "not supported (p < 0.05 but bootstrap CI includes 0)")
        ptext = (f"label-permutation p = {r['p_label_perm']:.3g} (720 relabelings; pre-set depth)"
                 if head else f"label-permutation p = {r['p_label_perm']:.3g}, Bonferroni over "
                 f"{len(depths)} depths {p:.3g} (exploratory depth)")
        out.append(Finding(
            NAME, f"Spearman rho, {la} vs {lb} pairwise behaviour cosines at depth {r['depth']:g} "
            f"(L{int(r['layer_a'])} vs L{int(r['layer_b'])})", r["rho"], r["low"], r["high"],
            f"{int(r['n_pairs'])} pairs (6 behaviours)",
            f"random-vector rho {fmt(r['rho_random_low'])}..{fmt(r['rho_random_high'])}",
            f"{verdict}; {ptext}", headline=head or supported))
        for side, lab in (("a", la), ("b", lb)):
            out.append(Finding(
                NAME, f"{lab}: mean |cos| between behaviour vectors at depth {r['depth']:g}",
                r[f"mean_abs_cos_{side}"], None, None, f"{int(r['n_pairs'])} pairs",
                f"random mean |cos| {fmt(r[f'random_abs_cos_{side}'])}",
                f"mean signed cos {fmt(r[f'mean_cos_{side}'])}"))
        if has_ref and "rho_chat_ref" in r and np.isfinite(r["rho_chat_ref"]):
            out.append(Finding(
                NAME, f"reference: {la} raw vs chat-templated vectors, Spearman rho at depth "
                f"{r['depth']:g}", r["rho_chat_ref"], r["rho_chat_ref_low"], r["rho_chat_ref_high"],
                f"{int(r['n_pairs'])} pairs", "-", "within-model ceiling for the cross-model rho"))
    return out


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Heatmaps and pair scatters of a finished run, from cosines.json (no model)."""
    saved = json.loads((Path(out) / "cosines.json").read_text(encoding="utf-8"))
    labels = saved["labels"]
    ma, mb = (m["label"] for m in saved["models"][:2])
    entries = []
    for e in saved["by_depth"]:
        d, st = e["depth"], e["stats"]
        mats = {f"{k} (L{lay})": e[k] for k, lay in zip((ma, mb), e["layers"])}
        fig = cosine_heatmaps(mats, labels, title=f"Behaviour-vector cosines at depth {d:g}")
        path = save_html(fig, Path(fig_dir) / f"{NAME}_heatmaps_depth{d:g}.html")
        entries.append(GalleryEntry(NAME, path, f"Behaviour geometry at depth {d:g}",
                                    f"6x6 cosines of the shipped behaviours' vectors, {ma} vs {mb}.",
                                    results_command))
        x, y = upper(np.asarray(e[ma])), upper(np.asarray(e[mb]))
        band = e["random"]["cos_a"]
        fig = pair_scatter(x.tolist(), y.tolist(), saved["pairs"], ma, mb,
                           random_band=(float(band[0]), float(band[1])),
                           title=f"Pairwise cosines at depth {d:g}: rho {st['rho']:.2f} "
                           f"[{st['low']:.2f}, {st['high']:.2f}], label-permutation p "
                           f"{st['p_label_perm']:.3g} (n={st['n_pairs']} pairs)")
        path = save_html(fig, Path(fig_dir) / f"{NAME}_pairs_depth{d:g}.html")
        entries.append(GalleryEntry(NAME, path, f"Pair cosines across models, depth {d:g}",
                                    f"Each behaviour pair's cosine in {ma} vs {mb}; grey: random "
                                    "vectors' 95% band.", results_command))
    return entries


def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
    """The gallery hook: redraw from results_dir/cosines.json if the run exists."""
    if not (Path(results_dir) / "cosines.json").exists():
        return []
    return draw(Path(results_dir), Path(figures_dir))


if __name__ == "__main__":
    main()
