"""Contrastive vs SAE feature-targeted steering: behaviour, coherence and KL, plus diffusion/overlap.

For each behaviour (sentiment, formality, french by default), at the layer the SAE reads
(blocks.12.hook_resid_pre of SmolLM2-135M-Instruct for the shipped SAE):

1. Steering side. Each behaviour is steered towards one side of its contrast: formality and
   french towards the positive label (formal, French), sentiment towards *negative* sentiment,
   because the unsteered model's answers are already positive (mean VADER about +0.5), which
   leaves little room upwards. The contrast set is oriented so its "positive" side is the target.
2. Conditions, all rescaled to the same norm (`scale_to_residual`: the median residual norm at
   the layer, so strength s adds s x that norm):
   - `contrastive`: CAA mean difference (target minus other side) on the behaviour's train pairs;
   - `act_topK_uniform` / `act_topK_weighted`: the top-K SAE features by mean activation
     difference, target completions vs other-side completions (codes averaged over completion
     tokens), decoder rows summed uniformly or weighted by the activation differences;
   - `out_topK_uniform`: the top-K features by output score, the direct logit effect of each
     decoder row (W_dec @ W_U, through the final norm's weight) on the target tokens minus on the
     avoid tokens (token lists below; for formality and french they are the scorer's own keyword
     lists, so this selection aims straight at what is scored);
   - `single_best`: the single feature with the largest activation difference;
   - `random`: a Gaussian random direction (`methods.random_like`), the control.
3. A `steerlens.sweep` over strengths x held-out prompts (the behaviour's evaluation prompts),
   greedy continuations: behaviour score (the behaviour's scorer, as a paired shift from the same
   prompt's unsteered continuation), continuation perplexity under the unsteered model (reported
   as the geometric-mean ratio steered/unsteered), next-token KL (bits). 95% percentile-bootstrap
   CIs over prompts; each condition is also compared with the random control paired by prompt.
4. Diffusion and overlap: the contrastive vector decomposed three ways (`encoder`: v @ W_enc;
   `raw`: sae.encode(v), threshold 0; the contrast pairs' feature-activation difference at the last
   token), a random vector as control; the top-K overlap of each with the behaviour's domain
   features (target vs other side) and with target-vs-neutral-prose features, against the
   K^2/d_sae expected by chance.

Target / avoid words for the output-score rule (single-token words only; dropped words are listed
in the results): sentiment, negative side: TARGET_WORDS / AVOID_WORDS below; formality: the
keyword scorer's positive / negative lists; french: its positive (French) / negative (English)
lists.

Saved in results/sae_steering/ (`random_sae_control/` for the `--random-sae` run): one resumable
sweep per behaviour (`sweep_<behaviour>/`), `conditions.csv` (per behaviour, vector and strength:
score shift, perplexity ratio and KL with CIs, minus random), `diffusion_overlap.csv`,
`selections.json`, and in `figure_data/` what the figures need besides the sweeps.

    python -m analyses.sae_steering [--sae DIR] [--strengths 0,0.1,0.2,0.3] [--k 20] [--threads 2]
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.sae import condition_curves, diffusion_bar, feature_view, overlap_heatmap
from steerlens.figures.tokens import save_token_view
from steerlens.io import atomic_path
from steerlens.methods import random_like
from steerlens.pairs import ContrastPair, ContrastSet, load_behaviour
from steerlens.sae import check_sae, random_sae
from steerlens.sae.corpus import cached_corpus
from steerlens.sae.decompose import (
    OverlapTable,
    VectorDecomposition,
    behaviour_domain,
    decompose,
    decompose_pairs,
    overlap_table,
)
from steerlens.sae.features import FeatureContexts, FeatureExample, feature_contexts
from steerlens.sae.targeted import (
    feature_vector,
    select_by_output_score,
    single_feature_vector,
    word_token_ids,
)
from steerlens.spectral.evaluate import load_heldout
from steerlens.stats import bootstrap_ci
from steerlens.sweep import load_sweep, sweep

from . import FIGURES, RESULTS, command
from ._common import (
    QUICK_PAIRS,
    GalleryEntry,
    add_strengths,
    cached_vector,
    heldout_prompts,
    log,
    parser,
    residual_norms,
    scale_to_residual,
    start,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, print_findings, save_findings

NAME = "sae_steering"
BEHAVIOURS = ("sentiment", "formality", "french")
SIDE = {"sentiment": -1, "formality": 1, "french": 1, "refusal": 1, "sycophancy": 1,
        "calendar_json": 1}
TARGET_WORDS = {  # sentiment, negative side (the scorer is VADER, which has no word list here)
    "sentiment": ["terrible", "awful", "hate", "sad", "horrible", "miserable", "worst", "bad",
                  "boring", "ugly", "gloomy", "dreadful", "disappointing", "annoying", "painful",
                  "depressing", "lonely", "angry", "tired", "worse"],
}
AVOID_WORDS = {
    "sentiment": ["great", "wonderful", "love", "happy", "beautiful", "amazing", "excellent",
                  "good", "lovely", "fantastic", "perfect", "enjoy", "best", "fun", "nice"],
}
DEFAULT_STRENGTHS = [0.0, 0.1, 0.2, 0.3]


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--behaviours", default=",".join(BEHAVIOURS),
                   help="comma-separated behaviours (default %(default)s)")
    p.add_argument("--sae", default=None, help="a shipped SAE name or a SAELens-format directory "
                   "(default: the shipped SAE for --model)")
    p.add_argument("--random-sae", action="store_true",
                   help="use a randomly initialised SAE of the right shape (pipeline check only)")
    p.add_argument("--k", type=int, default=None,
                   help="features per feature-targeted vector (default 20; 4 with --quick)")
    p.add_argument("--n-prompts", type=int, default=14, help="held-out prompts per behaviour")
    add_strengths(p, DEFAULT_STRENGTHS, "strengths in residual-norm units")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--n-neutral", type=int, default=20, help="held-out prose paragraphs (neutral)")
    p.add_argument("--n-corpus-docs", type=int, default=300,
                   help="documents sampled from the SAE training corpus for the feature-identity "
                   "contexts (0: behaviour texts and prose only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sparsity-saes", default=None,
                   help="comma-separated label=DIR SAEs (e.g. k=32=DIR,...): run only the "
                   "diffusion/overlap analysis on each (sparsity robustness), no sweeps")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples over pairs")
    p.add_argument("--n-random", type=int, default=200, help="random directions for the band")
    return p


def settings_for(args) -> dict:
    if args.quick:
        return dict(behaviours=["sentiment", "french"], k=args.k or 4, n_prompts=2, strengths=[0.0, 0.5],
                    max_new_tokens=3, n_neutral=2, prose_words=20, batch_size=16,
                    n_pairs=QUICK_PAIRS, n_corpus_docs=0)
    return dict(behaviours=[b for b in args.behaviours.split(",") if b], k=args.k or 20,
                n_prompts=args.n_prompts, strengths=args.strengths,
                max_new_tokens=args.max_new_tokens, n_neutral=args.n_neutral, prose_words=120,
                batch_size=args.batch_size, n_pairs=None, n_corpus_docs=args.n_corpus_docs)


# ------------------------------------------------------------------------------ the SAE


def get_sae(args, model):
    """(sae, description): --sae DIR, a random SAE (--random-sae / --quick), or the shipped one."""
    if args.random_sae or (args.quick and args.sae is None):
        layer = runtime.n_layers(model) - 1 if args.quick else min(12, runtime.n_layers(model) - 1)
        d = runtime.d_model(model)
        sae = random_sae(d, 4 * d if args.quick else 8 * d, seed=args.seed,
                         hook_name=runtime.hook_name(layer, "resid_pre"),
                         model_name=runtime.model_id(model))
        return sae, "random-init SAE (pipeline check only; features mean nothing)"
    from steerlens.sae.load import list_shipped_saes, load_sae

    if args.sae is not None:
        return load_sae(args.sae, device=args.device), f"SAE {args.sae!r}"
    mid = runtime.model_id(model).split("/")[-1].lower()
    mine = [n for n in list_shipped_saes() if n.lower().startswith(mid)]
    if not mine:
        raise ValueError(f"No shipped SAE for {mid!r} (shipped: {list_shipped_saes()}); pass "
                         "--sae NAME_OR_DIR or --random-sae.")
    return load_sae(mine[0], device=args.device), f"shipped SAE {mine[0]!r}"


# ------------------------------------------------------------------------------ conditions


def oriented(pairs: ContrastSet, side: int) -> ContrastSet:
    """The contrast set with the steering target as its positive side."""
    if side > 0:
        return pairs
    return ContrastSet(tuple(ContrastPair(p.negative, p.positive, p.prompt) for p in pairs),
                       f"{pairs.name}-flipped")


def target_tokens(model, beh, side: int) -> dict:
    if beh.name in TARGET_WORDS:
        tw, aw = TARGET_WORDS[beh.name], AVOID_WORDS[beh.name]
    elif beh.scorer.get("kind") == "keywords":
        tw, aw = beh.scorer["positive"], beh.scorer["negative"]
        if side < 0:
            tw, aw = aw, tw
    else:
        raise ValueError(f"No target words for behaviour {beh.name!r}; add them to TARGET_WORDS.")
    t, t_drop = word_token_ids(model, tw)
    a, a_drop = word_token_ids(model, aw)
    fallback = not t
    if fallback:  # e.g. a byte-level tokenizer: fall back to each word's first token
        t = {w: runtime.text_ids(model, w)[0] for w in tw}
        a = {w: runtime.text_ids(model, w)[0] for w in aw}
        t_drop, a_drop = [], []
    return {"targets": t, "avoid": a, "dropped_targets": t_drop, "dropped_avoid": a_drop,
            "first_token_fallback": fallback}


def build_conditions(model, sae, beh, st: dict, ctx, prose: list[str]) -> dict:
    """Vectors (all norm-matched), selections, decompositions and domains of one behaviour."""
    site = check_sae(model, sae)
    side = SIDE.get(beh.name, 1)
    k = st["k"]
    train = beh.train if st["n_pairs"] is None else beh.train[: st["n_pairs"]]
    pairs = oriented(train, side)
    raw_cav = cached_vector(model, beh, [site.layer], ctx, show_progress=False) * float(side)
    dom = behaviour_domain(model, sae, pairs, batch_size=16)
    dom_prose = behaviour_domain(model, sae, pairs, neutral=prose, batch_size=16)
    sel_act = dom.selection(k)
    toks = target_tokens(model, beh, side)
    sel_out = select_by_output_score(model, sae, list(toks["targets"].values()), k,
                                     avoid_tokens=list(toks["avoid"].values()) or None)
    raw = {
        "contrastive": raw_cav,
        f"act_top{k}_uniform": feature_vector(model, sae, sel_act),
        f"act_top{k}_weighted": feature_vector(model, sae, sel_act, weights="activation"),
        f"out_top{k}_uniform": feature_vector(model, sae, sel_out),
        "single_best": single_feature_vector(model, sae, sel_act.features[0]),
        "random": random_like(raw_cav, seed=ctx.seed),
    }
    norms = residual_norms(model, heldout_prompts(beh, st["n_prompts"]), [site.layer])
    vectors = {name: scale_to_residual(v.layer(site.layer), norms) for name, v in raw.items()}
    decs = {
        "contrastive (encoder)": decompose(model, sae, raw_cav, encoding="encoder",
                                           label="contrastive"),
        "contrastive (raw, >0)": decompose(model, sae, raw_cav, encoding="raw", threshold=0.0,
                                           relative=False, label="contrastive"),
        "pair feature diff (last token)": decompose_pairs(model, sae, pairs, read_at="last",
                                                          label="pairs"),
        "random (encoder)": decompose(model, sae, raw["random"], encoding="encoder",
                                      label="random"),
        "random (raw, >0)": decompose(model, sae, raw["random"], encoding="raw", threshold=0.0,
                                      relative=False, label="random"),
    }
    cos = {name: float(torch.nn.functional.cosine_similarity(v[site.layer],
                                                             vectors["contrastive"][site.layer],
                                                             dim=0))
           for name, v in vectors.items()}
    return {"layer": site.layer, "side": side, "pairs": pairs, "vectors": vectors, "raw": raw,
            "norm": norms[site.layer], "domain": dom, "domain_prose": dom_prose,
            "sel_act": sel_act, "sel_out": sel_out, "tokens": toks, "decomps": decs,
            "cos_to_contrastive": cos}


# ------------------------------------------------------------------------------ measures


def paired(res, measure: str) -> pd.DataFrame:
    """Per (vector, strength, prompt): steered minus unsteered (score), log ratio (perplexity) or
    the value itself (KL)."""
    t = res.table[["vector", "strength", "prompt_idx", measure]].copy()
    if measure in ("score", "perplexity"):
        base = res.baseline.set_index("prompt_idx")[measure].astype(float)
        b = t["prompt_idx"].map(base).astype(float)
        v = t[measure].astype(float)
        t["effect"] = np.log(v / b) if measure == "perplexity" else v - b
    else:
        t["effect"] = t[measure].astype(float)
    return t


def cell_table(res, beh_name: str, seed: int) -> pd.DataFrame:
    """Per (vector, strength): mean effect with 95% CI for score, perplexity ratio and KL, and
    each condition's score shift minus the random control's (paired by prompt)."""
    rows = []
    eff = {m: paired(res, m) for m in ("score", "perplexity", "kl_bits")}
    for (vec, s), grp in eff["score"].groupby(["vector", "strength"], sort=False):
        row = {"behaviour": beh_name, "vector": vec, "strength": float(s), "n": len(grp)}
        for m, name in (("score", "score_shift"), ("perplexity", "log_ppl_ratio"),
                        ("kl_bits", "kl_bits")):
            e = eff[m]
            vals = e[(e["vector"] == vec) & (e["strength"] == s)].sort_values("prompt_idx")
            vals = vals["effect"].to_numpy(float)
            vals = vals[np.isfinite(vals)]
            if s == 0 or vals.size < 2:
                est = float(np.mean(vals)) if vals.size else math.nan
                row.update({name: est, f"{name}_low": est, f"{name}_high": est})
            else:
                c = bootstrap_ci(vals, n_boot=4000, seed=seed)
                row.update({name: c.estimate, f"{name}_low": c.low, f"{name}_high": c.high})
        for key in ("log_ppl_ratio", "log_ppl_ratio_low", "log_ppl_ratio_high"):
            row[key.replace("log_ppl_ratio", "ppl_ratio")] = math.exp(row[key])
        sc = eff["score"]
        mine = sc[(sc["vector"] == vec) & (sc["strength"] == s)].set_index("prompt_idx")["effect"]
        rnd = sc[(sc["vector"] == "random") & (sc["strength"] == s)].set_index("prompt_idx")[
            "effect"]
        diff = (mine - rnd).dropna().to_numpy(float)
        if vec != "random" and s != 0 and diff.size >= 2:
            c = bootstrap_ci(diff, n_boot=4000, seed=seed)
            row.update(vs_random=c.estimate, vs_random_low=c.low, vs_random_high=c.high)
        else:
            row.update(vs_random=math.nan, vs_random_low=math.nan, vs_random_high=math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _excl(low: float, high: float) -> bool:
    return (low > 0) or (high < 0)


def findings_for(cells: pd.DataFrame, strengths: list[float], report_strength: float,
                 sides: dict[str, int]) -> list[Finding]:
    """Score-shift rows per behaviour and condition at each of `strengths` (headline rows at
    `report_strength`). The wanted direction is the behaviour's steering side (sentiment: down)."""
    out = []
    for strength in strengths:
        sel = cells[cells["strength"] == strength]
        for beh, grp in sel.groupby("behaviour", sort=False):
            side = sides[beh]
            want = "up" if side > 0 else "down"
            rnd = grp[grp["vector"] == "random"]
            rnd_txt = (f"random {fmt(float(rnd['score_shift'].iloc[0]))}" if len(rnd) else "-")
            for _, r in grp.iterrows():
                lo, hi = r["score_shift_low"], r["score_shift_high"]
                moved = _excl(lo, hi)
                if moved:
                    moved_txt = ("score moved the wanted way" if side * r["score_shift"] > 0
                                 else "score moved the WRONG way")
                else:
                    moved_txt = "score shift CI includes 0 (null)"
                if r["vector"] == "random":
                    verdict = f"random control; {moved_txt}"
                else:
                    beat = (_excl(r["vs_random_low"], r["vs_random_high"])
                            and side * r["vs_random"] > 0)
                    verdict = (f"{moved_txt}; minus random {fmt(r['vs_random'])} "
                               f"[{fmt(r['vs_random_low'])}, {fmt(r['vs_random_high'])}] "
                               + ("(beats random)" if beat else "(not distinguishable from "
                                  "random)" if not _excl(r["vs_random_low"], r["vs_random_high"])
                                  else "(worse than random)"))
                verdict += (f"; perplexity x{r['ppl_ratio']:.2f} [{r['ppl_ratio_low']:.2f}, "
                            f"{r['ppl_ratio_high']:.2f}]; KL {r['kl_bits']:.3g} bits "
                            f"[{r['kl_bits_low']:.3g}, {r['kl_bits_high']:.3g}]; cos to "
                            f"contrastive {r['cos_to_contrastive']:.2f}")
                out.append(Finding(
                    NAME, f"{beh} (wanted: score {want}): score shift, {r['vector']} at "
                    f"strength {strength:g} x resid norm", r["score_shift"], lo, hi,
                    str(int(r["n"])), rnd_txt, verdict,
                    headline=(strength == report_strength and r["vector"] != "random"
                              and "weighted" not in r["vector"])))
    return out


def diffusion_rows(beh: str, cond: dict, k: int) -> list[dict]:
    rows = []
    dom, dprose = cond["domain"].top(k), cond["domain_prose"].top(k)
    for name, d in cond["decomps"].items():
        top = d.top(k)
        rows.append({"behaviour": beh, "decomposition": name, "encoding": d.encoding,
                     "threshold": d.threshold, "relative_threshold": d.relative_threshold,
                     "n_active": d.n_active, "d_sae": d.d_sae, "diffusion": d.diffusion,
                     "participation": d.participation,
                     f"overlap_top{k}_domain": len(set(top) & set(dom)),
                     f"overlap_top{k}_domain_vs_prose": len(set(top) & set(dprose)),
                     "expected_random_overlap": k * k / d.d_sae, "top_features": list(top)})
    return rows


FIG_DATA = "figure_data"


def save_figure_data(out: Path, conds: dict, table: OverlapTable, fc: FeatureContexts,
                     feature_behaviour: str) -> None:
    """What `draw` needs besides the sweeps: the encoder decompositions (values), the overlap
    table and the feature contexts, as safetensors + JSON (no pickle)."""
    d = out / FIG_DATA
    d.mkdir(parents=True, exist_ok=True)
    tensors, meta = {}, {}
    for b, c in conds.items():
        for n, dec in c["decomps"].items():
            if "encoder" in n:
                key = f"{b}: {n}"
                tensors[key] = dec.values.detach().float().contiguous()
                meta[key] = {"encoding": dec.encoding, "threshold": dec.threshold,
                             "relative_threshold": dec.relative_threshold,
                             "hook_name": dec.hook_name, "label": dec.label}
    with atomic_path(d / "decompositions.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(d / "decompositions.json", meta)
    write_json(d / "overlap.json", asdict(table))
    write_json(d / "feature_contexts.json", {"behaviour": feature_behaviour, **asdict(fc)})


def _load_contexts(data: dict) -> FeatureContexts:
    ex = tuple(tuple(FeatureExample(**{**e, "tokens": tuple(e["tokens"]),
                                       "values": tuple(e["values"])}) for e in row)
               for row in data["examples"])
    tops = tuple(tuple((str(t), float(v)) for t, v in row) for row in data["top_tokens"])
    return FeatureContexts(tuple(data["features"]), ex, tops, tuple(data["max_activation"]),
                           tuple(data["frequency"]), data["n_texts"], data["n_tokens"],
                           data["window"], data["hook_name"])


CONTROL_DIR = "random_sae_control"  # the --random-sae run, inside results/sae_steering/


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME), prefix: str = NAME,
         label: str = "") -> list[GalleryEntry]:
    """Draw every figure of a saved run (sweeps, and decompositions, overlap and contexts when
    `figure_data/` is there) into `<fig_dir>/<prefix>_*.html`, titles starting with `label`;
    no model."""
    out, fig_dir = Path(out), Path(fig_dir)
    settings = json.loads((out / "findings.json").read_text(encoding="utf-8"))["settings"] \
        if (out / "findings.json").exists() else None
    behaviours = (settings or {}).get("behaviours") or sorted(
        p.name.removeprefix("sweep_") for p in out.glob("sweep_*"))
    results = {b: load_sweep(out / f"sweep_{b}") for b in behaviours}
    n = min(len(r.config["prompts"]) for r in results.values())
    entries = []
    labels = {"score": "behaviour score", "perplexity": "continuation perplexity",
              "kl_bits": "next-token KL (bits)"}
    for m, key in (("score", "score"), ("perplexity", "perplexity"), ("kl_bits", "kl")):
        path = save_html(condition_curves(results, m), fig_dir / f"{prefix}_{key}_curves.html")
        entries.append(GalleryEntry(
            NAME, path, f"{label}SAE-targeted vs contrastive: {labels[m]}",
            f"{labels[m].capitalize()} vs strength (x residual norm at the SAE layer) for the "
            f"contrastive, feature-targeted, single-feature and random vectors, n={n} prompts per "
            "point, 95% CIs.", results_command))
    d = out / FIG_DATA
    if not d.is_dir():
        return entries
    ov = json.loads((d / "overlap.json").read_text(encoding="utf-8"))
    table = OverlapTable(tuple(ov["vectors"]), tuple(ov["domains"]),
                         tuple(tuple(r) for r in ov["counts"]), ov["k"], ov["d_sae"])
    path = save_html(overlap_heatmap(table), fig_dir / f"{prefix}_overlap.html")
    entries.append(GalleryEntry(
        NAME, path, f"{label}Top-k feature overlap with domain features",
        f"Shared features between each vector's top-{table.k} and each domain's top-{table.k} "
        f"(chance {table.expected_random:.2f}).", results_command))
    meta = json.loads((d / "decompositions.json").read_text(encoding="utf-8"))
    vals = load_file(str(d / "decompositions.safetensors"))
    decomps = {key: VectorDecomposition(vals[key], m["encoding"], m["threshold"],
                                        m["relative_threshold"], m["hook_name"], m["label"])
               for key, m in meta.items()}
    path = save_html(diffusion_bar(decomps), fig_dir / f"{prefix}_diffusion.html")
    entries.append(GalleryEntry(
        NAME, path, f"{label}Diffusion of steering vectors in SAE features",
        "Fraction of SAE features a vector moves (|v @ W_enc| > 10% of the largest) and its "
        "participation ratio, contrastive vs a random direction, per behaviour.",
        results_command))
    fcd = json.loads((d / "feature_contexts.json").read_text(encoding="utf-8"))
    beh0 = fcd.pop("behaviour")
    path = save_token_view(feature_view(_load_contexts(fcd)),
                           fig_dir / f"{prefix}_features_{beh0}.html",
                           title=f"Top {beh0} activation-difference features: strongest contexts")
    entries.append(GalleryEntry(
        NAME, path, f"{label}Feature identities ({beh0})",
        f"circuitsvis: the strongest contexts of the top {beh0} activation-difference SAE "
        "features in the behaviour's completions, held-out prose and a sample of the SAE's "
        "training corpus.", results_command))
    return entries


def make_figures(results_dir: Path = RESULTS / NAME, figures_dir: Path = FIGURES
                 ) -> list[GalleryEntry]:
    """Gallery hook: redraw the saved run in results_dir and its random-SAE control run."""
    entries = draw(Path(results_dir), Path(figures_dir))
    control = Path(results_dir) / CONTROL_DIR
    if control.is_dir():
        entries += draw(control, Path(figures_dir),
                        command(NAME, "--random-sae", f"--out results/{NAME}/{CONTROL_DIR}"),
                        prefix=f"{NAME}_{CONTROL_DIR}", label="Random-init SAE control: ")
    return entries


def _diffusion(values: torch.Tensor, rel: float = 0.1) -> torch.Tensor:
    """Fraction of features with |value| > rel x the largest |value| (rows of `values`)."""
    a = values.abs()
    return (a > rel * a.max(-1, keepdim=True).values).float().mean(-1)


def _overlap(values: torch.Tensor, dom: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k (largest values) overlap of each row of `values` with the feature set `dom`."""
    top = values.topk(k, dim=-1).indices
    return torch.isin(top, dom).sum(-1).float()


def _band(x: torch.Tensor) -> tuple[float, float]:
    lo, hi = np.percentile(x.numpy(), [2.5, 97.5])
    return float(lo), float(hi)


def sparsity_robustness(model, saes: dict, st: dict, ctx, n_boot: int, n_random: int) -> tuple:
    """Diffusion and domain overlap of each behaviour's contrast in every SAE of `saes`.

    Per SAE and behaviour: the pair feature difference (codes at the last token, target side
    minus other side, averaged over pairs) and the CAA vector read through the encoder (v @
    W_enc); diffusion = fraction of features above 10% of the largest |value|; overlap = top-k
    features shared with the behaviour's domain features (target completions vs other side).
    CIs: percentile bootstrap over contrast pairs (pair difference). Random band: 2.5-97.5%
    of `n_random` Gaussian directions read through the same encoder."""
    from steerlens.sae.decompose import encode_texts

    k = st["k"]
    rows, found = [], []
    gen = torch.Generator().manual_seed(ctx.seed)
    for lab, sae in saes.items():
        site = check_sae(model, sae)
        w_enc = sae.W_enc.detach().float()
        d_sae = int(sae.cfg.d_sae)
        rnd_vals = torch.randn(n_random, w_enc.shape[0], generator=gen) @ w_enc
        rnd_diff = _diffusion(rnd_vals)
        for name in st["behaviours"]:
            beh = load_behaviour(name)
            side = SIDE.get(name, 1)
            train = beh.train if st["n_pairs"] is None else beh.train[: st["n_pairs"]]
            pairs = oriented(train, side)
            cav = cached_vector(model, beh, [site.layer], ctx, show_progress=False) * float(side)
            dom = torch.tensor(behaviour_domain(model, sae, pairs, batch_size=16).top(k))
            prompts = pairs.prompts * 2
            codes = encode_texts(model, sae, pairs.positives + pairs.negatives,
                                 prompts=None if all(q is None for q in prompts) else prompts,
                                 read_at="last", batch_size=16).double()
            n = len(pairs)
            diffs = codes[:n] - codes[n:]
            idx = torch.randint(0, n, (n_boot, n), generator=gen)
            boot = diffs[idx].mean(1).float()
            point = diffs.mean(0).float()[None]
            enc = (cav[site.layer].float() @ w_enc)[None]
            rnd_ov = _overlap(rnd_vals, dom, k)
            for what, vals, bvals in (("pair feature diff (last token)", point, boot),
                                      ("contrastive (encoder)", enc, None)):
                for measure, f, band in (("diffusion", _diffusion, _band(rnd_diff)),
                                         (f"top-{k} domain overlap",
                                          lambda v, d=dom: _overlap(v, d, k), _band(rnd_ov))):
                    est = float(f(vals)[0])
                    lo, hi = _band(f(bvals)) if bvals is not None else (None, None)
                    ref_lo, ref_hi = (lo, hi) if lo is not None else (est, est)
                    if ref_lo > band[1]:
                        verdict = "above the random band"
                    elif ref_hi < band[0]:
                        verdict = "below the random band"
                    else:
                        verdict = "within the random band (null)"
                    rows.append({"sae": lab, "d_sae": d_sae, "l0_setting": lab, "behaviour": name,
                                 "vector": what, "measure": measure, "estimate": est,
                                 "low": lo, "high": hi, "random_low": band[0],
                                 "random_high": band[1], "n_pairs": n,
                                 "chance_overlap": k * k / d_sae, "verdict": verdict})
                    found.append(Finding(
                        NAME, f"sparsity robustness, SAE {lab}: {name} {what} {measure}",
                        est, lo, hi, f"{n} pairs; {n_random} random directions",
                        f"random [{fmt(band[0])}, {fmt(band[1])}]"
                        + (f", chance {k * k / d_sae:.2f}" if "overlap" in measure else ""),
                        verdict, headline=what.startswith("pair") and "overlap" in measure))
    return pd.DataFrame(rows), found


def main_sparsity(args, ctx, model, st) -> dict:
    """--sparsity-saes: diffusion/overlap on several SAEs only (no sweeps)."""
    from steerlens.sae.load import load_sae

    t0 = time.perf_counter()
    saes = {}
    for item in args.sparsity_saes.split(","):
        lab, _, path = item.rpartition("=")
        if not lab or not path:
            raise ValueError(f"--sparsity-saes items are LABEL=DIR, got {item!r}.")
        saes[lab] = load_sae(path, device=args.device)
    frame, found = sparsity_robustness(model, saes, st, ctx, args.n_boot, args.n_random)
    write_csv(ctx.out / "diffusion_by_sparsity.csv", frame)
    settings = {"behaviours": st["behaviours"], "k": st["k"], "saes": list(saes),
                "model": runtime.model_id(model), "n_boot": args.n_boot,
                "n_random": args.n_random, "seconds": round(time.perf_counter() - t0, 1)}
    save_findings(ctx, found, settings, [
        "Diffusion: fraction of SAE features above 10% of the largest |value|. Overlap: top-k "
        "features shared with the behaviour's domain features (target vs other side completions);"
        " chance k^2/d_sae. CIs: 95% percentile bootstrap over contrast pairs (pair difference "
        "only; the CAA vector is one point). Random band: 2.5-97.5% of Gaussian directions read "
        "through the same encoder."])
    print(frame.round(4).to_string(index=False))
    return {"frame": frame, "findings": found}


def main(argv=None, model=None) -> dict:
    t0 = time.perf_counter()
    args, ctx, model = start(NAME, build_parser(), argv, model)
    st = settings_for(args)
    if args.sparsity_saes:
        return main_sparsity(args, ctx, model, st)
    sae, sae_desc = get_sae(args, model)
    site = check_sae(model, sae)
    k = st["k"]
    if not 1 <= k <= int(sae.cfg.d_sae):
        raise ValueError(f"--k must be in 1..{int(sae.cfg.d_sae)} (the SAE's d_sae), got {k}.")
    prose = load_heldout(n=st["n_neutral"], max_words=st["prose_words"])
    log(f"{NAME}: model {runtime.model_id(model)}, {sae_desc}, site {site}, d_sae "
        f"{int(sae.cfg.d_sae)}, behaviours {st['behaviours']}, strengths {st['strengths']}, k={k}")
    results, cells, diff_rows, conds, token_info, sel_info = {}, [], [], {}, {}, {}
    for name in st["behaviours"]:
        beh = load_behaviour(name)
        cond = build_conditions(model, sae, beh, st, ctx, prose)
        conds[name] = cond
        prompts = heldout_prompts(beh, st["n_prompts"])
        log(f"{name}: side {cond['side']:+d}, residual norm {cond['norm']:.2f}, act features "
            f"{list(cond['sel_act'].features)}, output features {list(cond['sel_out'].features)}")
        res = sweep(model, prompts, cond["vectors"], layers=[site.layer], strengths=st["strengths"],
                    measures=("kl", "generate"), scorer=beh.scorer,
                    max_new_tokens=st["max_new_tokens"], n_random=0, random_seed=ctx.seed,
                    batch_size=st["batch_size"], out_dir=ctx.out / f"sweep_{name}",
                    resume=ctx.resume, show_progress=ctx.progress)
        results[name] = res
        tab = cell_table(res, name, ctx.seed)
        tab["cos_to_contrastive"] = tab["vector"].map(cond["cos_to_contrastive"])
        cells.append(tab)
        diff_rows += diffusion_rows(name, cond, k)
        token_info[name] = {"targets": cond["tokens"]["targets"], "avoid": cond["tokens"]["avoid"],
                            "dropped_targets": cond["tokens"]["dropped_targets"],
                            "dropped_avoid": cond["tokens"]["dropped_avoid"]}
        sel_info[name] = {"activation_diff": {"features": list(cond["sel_act"].features),
                                              "scores": list(cond["sel_act"].scores)},
                          "output_score": {"features": list(cond["sel_out"].features),
                                           "scores": list(cond["sel_out"].scores)},
                          "cos_to_contrastive": cond["cos_to_contrastive"],
                          "residual_norm": cond["norm"]}
        log(f"{name}: sweep done ({res.n_computed} computed, {res.n_resumed} resumed)")
    cells = pd.concat(cells, ignore_index=True)
    diff = pd.DataFrame(diff_rows)
    write_csv(ctx.out / "conditions.csv", cells)
    write_csv(ctx.out / "diffusion_overlap.csv", diff)
    write_json(ctx.out / "selections.json", {"tokens": token_info, "selections": sel_info})
    # overlap table: contrastive / pair-diff / random decompositions vs every behaviour's domains
    vec_items, dom_items = {}, {}
    for name, c in conds.items():
        vec_items[f"{name}: contrastive (encoder)"] = c["decomps"]["contrastive (encoder)"]
        vec_items[f"{name}: pair feature diff"] = c["decomps"]["pair feature diff (last token)"]
        vec_items[f"{name}: out-score top{k}"] = c["sel_out"]
        dom_items[f"{name} (vs other side)"] = c["domain"]
        dom_items[f"{name} (vs prose)"] = c["domain_prose"]
    first = next(iter(conds.values()))
    vec_items["random (encoder)"] = first["decomps"]["random (encoder)"]
    table = overlap_table(vec_items, dom_items, k=k)
    # saved for redrawing without the model (the gallery): decompositions, overlap, contexts
    beh0 = st["behaviours"][0]
    c0 = conds[beh0]
    feats = list(c0["sel_act"].features[: min(6, k)])
    ctx_texts = list(c0["pairs"].positives) + list(c0["pairs"].negatives) + prose
    if st["n_corpus_docs"]:  # plus a fixed sample of the SAE's own training corpus
        docs = cached_corpus(runtime.tokenizer(model)).texts()
        ctx_texts += random.Random(ctx.seed).sample(docs, min(st["n_corpus_docs"], len(docs)))
    fc = feature_contexts(model, sae, ctx_texts, feats, k=6, window=6)
    save_figure_data(ctx.out, conds, table, fc, beh0)
    draw(ctx.out, ctx.fig_dir)
    # findings
    nz = [s for s in st["strengths"] if s != 0]
    report = nz[len(nz) // 2] if nz else 0.0
    n = st["n_prompts"]
    shown = sorted({report, max(nz)}) if nz else []
    found = findings_for(cells, shown, report, {b: c["side"] for b, c in conds.items()})
    for _, r in diff.iterrows():
        if r["decomposition"] in ("contrastive (encoder)", "contrastive (raw, >0)",
                                  "pair feature diff (last token)", "random (encoder)"):
            found.append(Finding(
                NAME, f"{r['behaviour']}: diffusion of {r['decomposition']} (fraction of "
                f"{r['d_sae']} features with |value| > {r['threshold']:.3g})", r["diffusion"],
                None, None, f"d_sae={r['d_sae']} features (1 vector)",
                "see the random (encoder) row",
                f"participation ratio {r['participation']:.1%}; top-{k} overlap with domain "
                f"features {r[f'overlap_top{k}_domain']}/{k}, with domain-vs-prose "
                f"{r[f'overlap_top{k}_domain_vs_prose']}/{k} (chance "
                f"{r['expected_random_overlap']:.2f})", headline=False))
    if sae_desc.startswith("random"):
        found = [f if f.measure.startswith("[random") else
                 replace(f, measure=f"[random-init SAE control] {f.measure}", headline=False)
                 for f in found]
    settings = {**{k_: v for k_, v in st.items() if k_ != "n_pairs"},
                "model": runtime.model_id(model), "sae": sae_desc, "site": str(site),
                "d_sae": int(sae.cfg.d_sae), "report_strength": report,
                "prompts": f"{n} held-out eval prompts per behaviour", "seconds":
                round(time.perf_counter() - t0, 1)}
    notes = [
        f"n={n} held-out prompts per cell; CIs are 95% percentile bootstrap over prompts; the "
        "random control is one Gaussian direction of equal norm, paired by prompt.",
        "All vectors are rescaled to the median residual norm at the SAE's layer, so strength "
        "s adds s x that norm; conditions are compared at equal norm.",
        "Sentiment is steered towards negative sentiment (the unsteered answers are already "
        "positive); formality towards formal, french towards French.",
        "Output-score features for formality/french are chosen with the scorer's own keyword "
        "lists, so their score gains are a best case for that rule.",
        "Diffusion thresholds: encoder / pair-diff: 10% of the largest |value|; raw: any feature "
        "the encoder fires (> 0). Overlap chance level = k^2/d_sae.",
    ]
    save_findings(ctx, found, settings, notes)
    with pd.option_context("display.width", 160, "display.max_rows", 300):
        print(cells[["behaviour", "vector", "strength", "n", "score_shift", "score_shift_low",
                     "score_shift_high", "vs_random", "ppl_ratio", "kl_bits"]].round(3)
              .to_string(index=False))
        print(diff.drop(columns=["top_features"]).round(4).to_string(index=False))
        print(table.frame().to_string(index=False))
    print_findings(found)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return {"results": results, "cells": cells, "diffusion": diff, "overlap": table,
            "vectors": {b: c["vectors"] for b, c in conds.items()}, "sae": sae,
            "findings": found, "settings": settings}


if __name__ == "__main__":
    main()
