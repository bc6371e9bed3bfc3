"""Clamping an SAE feature vs adding its decoder column at matched strength: which steers sentiment?

AxBench-style steering clamps a feature to a high value at every position; activation addition
adds the feature's decoder column. On SmolLM2-135M-Instruct with the shipped SAE
(blocks.12.hook_resid_pre, 4608 features) and the sentiment behaviour, steered towards negative
sentiment (the unsteered answers are already positive, see `sae_steering`):

1. Feature. The feature with the largest activation difference negative minus positive
   completions on the train pairs (`behaviour_domain`, as `sae_steering`'s `single_best`), unless
   `--feature` is given. Its maximum observed activation m over the train pair texts (every
   token, chat-templated prompt + completion) is measured.
2. Conditions, at each multiplier k in `--multipliers`:
   - `clamp`: `FeatureClamp(sae, [f], value=k m)` at every position (reconstruction error kept);
   - `add`: the decoder column W_dec[f] rescaled so the mean residual change over the held-out
     prompts' positions equals the clamp's, `mean_t |k m - f_t| |W_dec[f]|` (f_t the feature's
     activation at position t; matched on the unsteered prompt positions);
   - `random clamp`: `--n-random` random features (seeded, among features active somewhere on
     the pair texts), each clamped to the value that gives the same mean residual change, the
     control (averaged per prompt).
3. Measures: greedy continuations (`--max-new-tokens`) of the n held-out prompts; VADER compound
   score shift from the same prompt's unsteered continuation (wanted: negative), and the
   continuation's perplexity under the unsteered model (coherence). 95% percentile-bootstrap CIs
   over prompts; clamp minus add and each condition minus the random control, paired by prompt.
   Small n (14 prompts by default): intervals are wide; a CI that includes 0 is reported as null.

Saved in results/sae_clamping/: clamping.json (settings, feature, values, per-prompt scores and
texts, table) and table.csv; figure figures/sae_clamping.html.

    python -m analyses.sae_clamping [--multipliers 0.5,1,2] [--n-prompts 14] [--threads 1]
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from steerlens.backend import runtime
from steerlens.extract import extract
from steerlens.figures import save_html
from steerlens.figures.stats import ci_forest
from steerlens.generate import generate
from steerlens.interventions.clamp import FeatureClamp
from steerlens.measures.perplexity import generation_perplexity
from steerlens.measures.scorers import get_scorer
from steerlens.pairs import ContrastPair, ContrastSet, load_behaviour
from steerlens.sae import check_sae, list_shipped_saes, load_sae, random_sae
from steerlens.sae.decompose import behaviour_domain
from steerlens.stats import CI, bootstrap_ci
from steerlens.steer import Injection
from steerlens.vectors import SteeringVector

from . import command
from ._common import (
    QUICK_PAIRS,
    GalleryEntry,
    add_list,
    heldout_prompts,
    log,
    parser,
    start,
    write_csv,
    write_json,
)
from .findings import Finding, print_findings, save_findings

NAME = "sae_clamping"
BEHAVIOUR = "sentiment"
SIDE = -1  # steer towards negative sentiment


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0], fresh=False)
    add_list(p, "--multipliers", float, [0.5, 1.0, 2.0], "clamp values as multiples of the feature's "
             "maximum observed activation")
    p.add_argument("--feature", type=int, default=None, help="feature id (default: chosen)")
    p.add_argument("--n-prompts", type=int, default=14)
    p.add_argument("--n-random", type=int, default=2, help="random control features")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--sae", default=None, help="shipped SAE name or SAELens directory")
    return p


def get_sae(args, model, quick: bool):
    if quick and args.sae is None:
        d = runtime.d_model(model)
        layer = runtime.n_layers(model) // 2
        return random_sae(d, 4 * d, seed=args.seed, hook_name=runtime.hook_name(layer, "resid_pre"),
                          model_name=runtime.model_id(model)), "random_sae (quick)"
    if args.sae is not None:
        return load_sae(args.sae, device=args.device), args.sae
    mid = runtime.model_id(model).split("/")[-1].lower()
    mine = [n for n in list_shipped_saes() if n.lower().startswith(mid)]
    if not mine:
        raise ValueError(f"No shipped SAE for {mid!r}; pass --sae.")
    return load_sae(mine[0], device=args.device), mine[0]


def oriented(pairs: ContrastSet) -> ContrastSet:
    """Negative sentiment as the positive (target) side."""
    return ContrastSet(tuple(ContrastPair(p.negative, p.positive, p.prompt) for p in pairs),
                       f"{pairs.name}-flipped")


def token_codes(model, sae, texts, prompts) -> torch.Tensor:
    """The SAE code of every token of every text (prompt + completion), [tokens, d_sae]."""
    site = check_sae(model, sae)
    acts = extract(model, texts, [site.layer], prompts=prompts, component=site.component,
                   read_at="all", batch_size=16, show_progress=False)
    with torch.inference_mode():
        return sae.encode(acts[site.layer].to(sae.W_enc.device, sae.W_enc.dtype)).float().cpu()


def prompt_codes(model, sae, prompts, features) -> torch.Tensor:
    """The chosen features' activations at every real position of the held-out prompts (chat
    templated as in generation), [tokens, k]."""
    site = check_sae(model, sae)
    batch = runtime.encode_prompts(model, prompts, chat=runtime.is_instruct(model))
    got = {}

    def grab(act, hook):
        got["x"] = act.detach().clone()

    with runtime.attached(model, [(runtime.hook_name(site.layer, site.component), grab)]):
        runtime.forward(model, batch, stop_at_layer=site.layer + 1, return_type=None)
    x = got["x"][batch.attention_mask.bool()]
    with torch.inference_mode():
        return sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype))[:, features].float().cpu()


def matched_value(f_t: np.ndarray, w_norm: float, target: float) -> float:
    """The clamp value v >= 0 whose mean residual change mean_t |v - f_t| |w| equals `target`."""
    def change(v):
        return float(np.mean(np.abs(v - f_t))) * w_norm

    lo, hi = 0.0, float(f_t.max()) + target / w_norm + 1.0
    if change(lo) >= target:
        return lo
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if change(mid) < target else (lo, mid)
    return (lo + hi) / 2


def ci_row(name: str, k: float, vals: np.ndarray, seed: int) -> dict:
    vals = vals[np.isfinite(vals)]
    c = bootstrap_ci(vals, n_boot=4000, seed=seed)
    return {"condition": name, "multiplier": k, "n": int(vals.size), "estimate": c.estimate,
            "low": c.low, "high": c.high}


def draw(out: Path, fig_dir: Path, cmd: str | None = None) -> list[GalleryEntry]:
    data = json.loads((Path(out) / "clamping.json").read_text(encoding="utf-8"))
    st = data["settings"]
    cis = {f"{r['condition']} x{r['multiplier']:g}": CI(r["estimate"], r["low"], r["high"],
                                                         r["n"], math.nan)
           for r in data["table"] if not r["condition"].startswith("random clamp f")}
    fig = ci_forest(cis, title=f"Clamp feature {st['feature']} vs add its decoder column "
                    f"(matched mean residual change), {st['model']}, {st['behaviour']} "
                    "(wanted: negative)", x_title="VADER score shift vs unsteered (95% CI)")
    path = save_html(fig, Path(fig_dir) / "sae_clamping.html")
    return [GalleryEntry(NAME, path, "SAE feature clamping vs decoder-column addition",
                         f"Score shifts and paired differences, n={st['n_prompts']} prompts, "
                         f"clamp values {st['multipliers']} x max activation.",
                         cmd or command(NAME))]


def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
    out = Path(results_dir)
    return draw(out, figures_dir) if (out / "clamping.json").exists() else []


def main(argv=None, model=None) -> dict:
    args, ctx, model = start(NAME, build_parser(), argv, model)
    t0 = time.perf_counter()
    beh = load_behaviour(BEHAVIOUR)
    sae, sae_name = get_sae(args, model, ctx.quick)
    site = check_sae(model, sae)
    n_prompts = 3 if ctx.quick else args.n_prompts
    max_new = 4 if ctx.quick else args.max_new_tokens
    mults = [4.0] if ctx.quick else list(args.multipliers)
    n_random = 1 if ctx.quick else args.n_random
    pairs = oriented(beh.train[:QUICK_PAIRS] if ctx.quick else beh.train)
    prompts = heldout_prompts(beh, n_prompts)
    scorer = get_scorer(beh.scorer)

    # 1. the feature and its maximum observed activation on the pair texts
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    tprompts = [p.prompt for p in pairs] * 2
    codes = token_codes(model, sae, texts, tprompts)
    if args.feature is None:
        feature = int(behaviour_domain(model, sae, pairs, batch_size=16).selection(1).features[0])
    else:
        feature = args.feature
    m = float(codes[:, feature].max())
    if not m > 0:
        raise ValueError(f"Feature {feature} never fires on the pair texts; choose another.")
    alive = np.flatnonzero(codes.max(0).values.numpy() > 0)
    rng = np.random.default_rng(ctx.seed)
    randoms = [int(r) for r in rng.choice(alive[alive != feature], size=n_random,
                                          replace=False)]
    feats = [feature, *randoms]
    f_t = prompt_codes(model, sae, prompts, feats).numpy()  # [tokens, 1 + n_random]
    w = sae.W_dec.detach().float().cpu()
    w_norm = {f: float(w[f].norm()) for f in feats}
    log(f"feature {feature}: max activation {m:.3g} on {len(texts)} pair texts, |W_dec| "
        f"{w_norm[feature]:.3g}; random controls {randoms}")

    # 2. conditions
    def run(steering):
        g = generate(model, prompts, steering=steering, max_new_tokens=max_new)
        scores = np.array([float(scorer(t)) for t in g.texts])
        ppl = generation_perplexity(model, g).values
        return g, scores, ppl

    base_g, base_s, base_p = run(None)
    per_prompt, conds, texts_out = {}, [], {"unsteered": list(base_g.texts)}
    for k in mults:
        value = k * m
        target = float(np.mean(np.abs(value - f_t[:, 0]))) * w_norm[feature]
        clamp = FeatureClamp(sae, [feature], value=value, source=sae_name)
        add_vec = SteeringVector({site.layer: w[feature] / w_norm[feature] * target},
                                 component=site.component, model_id=runtime.model_id(model))
        rand_vals = {r: matched_value(f_t[:, i + 1], w_norm[r], target)
                     for i, r in enumerate(randoms)}
        runs = {"clamp": clamp, "add": Injection(add_vec, 1.0)}
        for r, v in rand_vals.items():
            runs[f"random clamp f{r}"] = FeatureClamp(sae, [r], value=v, source=sae_name)
        for name, steering in runs.items():
            g, s, p = run(steering)
            per_prompt[(name, k)] = (s - base_s, np.log(p / base_p))
            texts_out[f"{name} x{k:g}"] = list(g.texts)
            log(f"x{k:g} {name}: score shift {np.mean(s - base_s):+.3f} "
                f"({time.perf_counter() - t0:.0f}s)")
        rs = np.mean([per_prompt[(f"random clamp f{r}", k)][0] for r in randoms], axis=0)
        rp = np.mean([per_prompt[(f"random clamp f{r}", k)][1] for r in randoms], axis=0)
        per_prompt[("random clamp (mean)", k)] = (rs, rp)
        conds.append({"multiplier": k, "clamp_value": value, "mean_resid_change": target,
                      "add_norm": target,
                      "random_values": rand_vals})

    # 3. table
    rows = []
    for (name, k), (ds, dlp) in per_prompt.items():
        r = ci_row(name, k, ds, ctx.seed)
        pc = bootstrap_ci(dlp[np.isfinite(dlp)], n_boot=4000, seed=ctx.seed)
        r.update(ppl_ratio=math.exp(pc.estimate), ppl_low=math.exp(pc.low),
                 ppl_high=math.exp(pc.high))
        rows.append({"measure": "score_shift", **r})
    for k in mults:
        for a, b in (("clamp", "add"), ("clamp", "random clamp (mean)"),
                     ("add", "random clamp (mean)")):
            d = per_prompt[(a, k)][0] - per_prompt[(b, k)][0]
            rows.append({"measure": "paired_difference", **ci_row(f"{a} minus {b}", k, d,
                                                                   ctx.seed)})
    table = pd.DataFrame(rows)
    write_csv(ctx.out / "table.csv", table)
    settings = {"model": runtime.model_id(model), "sae": sae_name, "hook": site.hook_name(),
                "behaviour": BEHAVIOUR, "side": "negative", "feature": feature,
                "max_activation": m, "w_dec_norm": w_norm[feature], "random_features": randoms,
                "multipliers": mults, "n_prompts": n_prompts, "max_new_tokens": max_new,
                "greedy": True, "positions": "all", "seconds": time.perf_counter() - t0}
    result = {"settings": settings, "conditions": conds, "table": rows, "prompts": prompts,
              "texts": texts_out, "baseline_scores": base_s.tolist(),
              "per_prompt": {f"{n} x{k:g}": {"score_shift": v[0].tolist(),
                                             "log_ppl_ratio": v[1].tolist()}
                             for (n, k), v in per_prompt.items()}}
    write_json(ctx.out / "clamping.json", result)
    findings = []
    for r in rows:
        lo, hi = r["low"], r["high"]
        null = not (lo > 0 or hi < 0)
        if r["measure"] == "score_shift":
            verdict = ("CI includes 0 (null)" if null else "moved the wanted way (negative)"
                       if r["estimate"] < 0 else "moved the WRONG way")
            verdict += (f"; perplexity x{r['ppl_ratio']:.2f} [{r['ppl_low']:.2f}, "
                        f"{r['ppl_high']:.2f}]")
        else:
            verdict = "CI includes 0 (no difference)" if null else (
                "first steers more negative" if r["estimate"] < 0 else "second steers more negative")
        findings.append(Finding(NAME, f"{r['condition']} x{r['multiplier']:g} max act "
                                f"({r['measure'].replace('_', ' ')}, VADER)", r["estimate"], lo, hi,
                                str(r["n"]), "random clamp (mean) in the table", verdict,
                                headline=r["condition"] in ("clamp minus add",)))
    print_findings(findings)
    save_findings(ctx, findings, settings, [
        "n is small (held-out prompts); every CI is a percentile bootstrap over prompts.",
        "Matched strength: the add condition's norm equals the clamp's mean residual change over "
        "the unsteered prompt positions; during generation the clamp's change varies by position.",
        f"Random controls: {n_random} features active on the pair texts, clamped to the "
        "value giving the same mean residual change."])
    if not ctx.quick:
        draw(ctx.out, ctx.fig_dir)
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return result


if __name__ == "__main__":
    main()
