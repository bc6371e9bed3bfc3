"""Do two steering vectors compose? Summed, two-in-one-block and switched mid-generation, both scored.

Two shipped behaviours, A = formality and B = sentiment (`steerlens/data/behaviours/`), each a
mean-difference vector from its 36 train pairs at one layer of SmolLM2-135M-Instruct (L12, 0.4 of
the depth; chat template on, as the library does for instruct models), rescaled to the median
residual norm at that layer (`measures.residual_scale`), so a strength s adds s x (typical
residual norm). The layer, strengths and signs (`--strength-a`, `--strength-b`) were set before
the run so that each vector alone should move its own score: sentiment -0.2 at L12 moved VADER by
-0.55 in results/sae_steering, and a 12-prompt pilot at L12 showed formality -0.3 turning replies
casual; the defaults push A towards *casual* and B towards *negative* sentiment, since the
unsteered assistant is already formal-leaning and positive.

Conditions, each generating greedily from the same held-out prompts (the held-out prompts of both
behaviours, chat-templated):

- unsteered;
- A alone (`Injection(A, sA)`), B alone (`Injection(B, sB)`);
- summed: one vector sA*A + sB*B at strength 1;
- two in one block: `steer(model, [Injection(A, sA), Injection(B, sB)])`;
- switch A->B: A from the prompt up to generated token `--switch-step`, B from there on
  (`Injection.start_step/stop_step`), and switch B->A the other way round;
- random: `--n-random` Gaussian directions with the summed vector's norm (`methods.random_like`).

Every output is scored on both behaviours with the library's scorers (`measures.get_scorer`:
formality = the shipped keyword scorer, (formal - casual hits) / words; sentiment = VADER
compound), on the whole continuation and on its two segments, before and after the switch step
(the segments of every condition, so a switched segment is compared with the same segment of the
vector alone). Reported per condition and behaviour: the mean score shift vs unsteered (paired
over prompts, percentile bootstrap CI), the shift vs each vector alone (paired), the retention
ratio shift(composed) / shift(alone) (`stats.ratio_ci`), the random directions' shifts (band), and
the perplexity of the continuation under the unsteered model (`measures.generation_perplexity`,
log2 ratio vs unsteered). Exact algebra: summed and two-in-block add the same vector at the same
layer and positions, so their logits must agree up to float32 summation order; the run records the
largest logit difference on the prompts and the share of prompts with identical greedy tokens.

Verdicts: composition retains an effect when the summed vector's shift of that behaviour has a CI
excluding 0 in the pushed direction and beyond the random band; switching gives the second
behaviour when the after-switch segment's shift of B (A->B) has such a CI.

Saved in results/composition/: `scores.csv` (every output's scores and texts), `summary.csv`,
`algebra.json`, `generations/` (resume cache), the vectors, findings.json.

    python -m analyses.composition [--layer 12] [--strength-a -0.3] [--strength-b -0.2] [--threads 1]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.composition import ShiftRow, segment_shift_bars, shift_bars
from steerlens.generate import generate
from steerlens.io import atomic_write_text
from steerlens.measures import generation_perplexity, get_scorer, residual_norms, scale_to_residual
from steerlens.methods import random_like
from steerlens.pairs import load_behaviour
from steerlens.stats import bootstrap_ci, ratio_ci
from steerlens.steer import Injection, steer, steered_forward

from . import command
from ._common import (
    GalleryEntry,
    cached_vector,
    heldout_prompts,
    log,
    parser,
    start,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, print_findings, save_findings

NAME = "composition"
SEGMENTS = ("full", "before", "after")


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--behaviour-a", default="formality")
    p.add_argument("--behaviour-b", default="sentiment")
    p.add_argument("--layer", type=int, default=None,
                   help="layer (default: 0.4 of the depth, L12 of SmolLM2)")
    p.add_argument("--strength-a", type=float, default=-0.3,
                   help="strength of A as a fraction of the median residual norm")
    p.add_argument("--strength-b", type=float, default=-0.2,
                   help="strength of B as a fraction of the median residual norm")
    p.add_argument("--n-prompts", type=int, default=14,
                   help="held-out prompts per behaviour (the 14 eval prompts by default)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--switch-step", type=int, default=16,
                   help="generated-token index where the schedule switches vectors")
    p.add_argument("--n-random", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=4000)
    return p


def settings_for(args, n_layers: int) -> dict:
    layer = args.layer if args.layer is not None else int(round(0.4 * (n_layers - 1)))
    if args.quick:  # the last layer (on a 2-layer model, layer 0 reads the embedding only)
        layer = n_layers - 1 if args.layer is None else min(args.layer, n_layers - 1)
        return dict(a=args.behaviour_a, b=args.behaviour_b, layer=layer,
                    strength_a=args.strength_a, strength_b=args.strength_b, n_prompts=2,
                    max_new_tokens=6, switch_step=3, n_random=1, n_boot=200)
    if not 1 <= args.switch_step < args.max_new_tokens:
        raise ValueError(f"--switch-step must be in 1..{args.max_new_tokens - 1} (inside the "
                         f"generation), got {args.switch_step}.")
    return dict(a=args.behaviour_a, b=args.behaviour_b, layer=layer, strength_a=args.strength_a,
                strength_b=args.strength_b, n_prompts=args.n_prompts,
                max_new_tokens=args.max_new_tokens, switch_step=args.switch_step,
                n_random=args.n_random, n_boot=args.n_boot)


def conditions(va, vb, sa: float, sb: float, k: int, n_random: int, seed: int) -> dict:
    """Condition name -> steering for `generate` (None: unsteered).

    `va`, `vb` are single-layer vectors at the same layer, already on the residual-norm scale.
    """
    summed = va * sa + vb * sb
    out = {
        "unsteered": None,
        "A alone": [Injection(va, sa)],
        "B alone": [Injection(vb, sb)],
        "summed": [Injection(summed, 1.0)],
        "two in block": [Injection(va, sa), Injection(vb, sb)],
        "switch A->B": [Injection(va, sa, stop_step=k), Injection(vb, sb, start_step=k)],
        "switch B->A": [Injection(vb, sb, stop_step=k), Injection(va, sa, start_step=k)],
    }
    for r in range(n_random):
        out[f"random {r}"] = [Injection(random_like(summed, seed=seed + r), 1.0)]
    return out


def algebra_check(model, prompts: list[str], va, vb, sa: float, sb: float) -> dict:
    """Logits of summed vs two-in-block steering on the prompts (one forward each)."""
    batch = runtime.encode_prompts(model, prompts, chat=runtime.has_chat_template(model))
    outs = []
    for inj in ([Injection(va * sa + vb * sb, 1.0)], [Injection(va, sa), Injection(vb, sb)]):
        with steer(model, inj) as s, torch.no_grad():
            outs.append(steered_forward(model, batch, s).double())
    with torch.no_grad():
        base = steered_forward(model, batch, None).double()
    diff = (outs[0] - outs[1]).abs()
    return {"max_abs_logit_diff": float(diff.max()),
            "max_abs_logit": float(outs[0].abs().max()),
            "max_abs_steering_effect": float((outs[0] - base).abs().max()),
            "n_prompts": len(prompts)}


def _segment_text(model, tokens, k: int) -> dict[str, str]:
    return {"full": runtime.decode(model, list(tokens)),
            "before": runtime.decode(model, list(tokens[:k])),
            "after": runtime.decode(model, list(tokens[k:]))}


def _generate_all(model, prompts, conds: dict, st: dict, out: Path, resume: bool) -> dict:
    """condition -> (token tuples, log2 perplexity under the unsteered model); cached per condition."""
    cache = out / "generations"
    cache.mkdir(parents=True, exist_ok=True)
    key = {k: st[k] for k in ("a", "b", "layer", "strength_a", "strength_b", "max_new_tokens",
                              "switch_step")} | {"prompts": prompts, "model": runtime.model_id(model)}
    res = {}
    for name, steering in conds.items():
        path = cache / (name.replace(" ", "_").replace(">", "") + ".json")
        if resume and path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") == json.loads(json.dumps(key)):
                res[name] = (saved["tokens"], saved["log2_ppl"])
                continue
        log(f"{NAME}: generating '{name}' ({len(prompts)} prompts)")
        gen = generate(model, prompts, steering, max_new_tokens=st["max_new_tokens"])
        ppl = generation_perplexity(model, gen)
        lp = [math.log2(p) if p and math.isfinite(p) and p > 0 else float("nan")
              for p in ppl.perplexity]
        atomic_write_text(path, json.dumps({
            "key": key, "tokens": [list(t) for t in gen.tokens],
            "log2_ppl": [None if not math.isfinite(x) else x for x in lp]}))
        res[name] = ([list(t) for t in gen.tokens], lp)
    return res


def score_table(model, prompts, gens: dict, k: int, scorers: dict) -> pd.DataFrame:
    """One row per (condition, prompt, segment): both behaviours' scores and the text."""
    rows = []
    for cond, (tokens, lp) in gens.items():
        for i, toks in enumerate(tokens):
            texts = _segment_text(model, toks, k)
            for seg in SEGMENTS:
                t = texts[seg]
                n_tok = len(toks) if seg == "full" else (min(len(toks), k) if seg == "before"
                                                         else max(0, len(toks) - k))
                row = {"condition": cond, "prompt_idx": i, "segment": seg, "n_tokens": n_tok,
                       "log2_ppl": lp[i] if lp[i] is not None else float("nan"), "text": t}
                for b, fn in scorers.items():
                    row[b] = fn(t) if n_tok > 0 else float("nan")
                rows.append(row)
    return pd.DataFrame(rows)


def _vals(t: pd.DataFrame, cond: str, seg: str, col: str) -> np.ndarray:
    g = t[(t.condition == cond) & (t.segment == seg)].sort_values("prompt_idx")
    return g[col].to_numpy(float)


def summarise(t: pd.DataFrame, behaviours: dict, n_boot: int, seed: int) -> pd.DataFrame:
    """Per (condition, segment, behaviour): shift vs unsteered and vs each alone, with CIs."""
    rows = []
    conds = list(dict.fromkeys(t.condition))
    alone = {"A": "A alone", "B": "B alone"}
    for seg in SEGMENTS:
        for key, b in behaviours.items():
            base = _vals(t, "unsteered", seg, b)
            rnd = [c for c in conds if c.startswith("random")]
            rshift = []
            for c in rnd:
                d = _vals(t, c, seg, b) - base
                rshift.append(float(np.nanmean(d)) if np.isfinite(d).any() else float("nan"))
            for c in conds:
                if c == "unsteered":
                    continue
                d = _vals(t, c, seg, b) - base
                ok = np.isfinite(d)
                row = {"condition": c, "segment": seg, "behaviour": b, "key": key,
                       "n": int(ok.sum()), "mean_score": float(np.nanmean(_vals(t, c, seg, b))),
                       "unsteered_score": float(np.nanmean(base))}
                ci = bootstrap_ci(d[ok], n_boot=n_boot, seed=seed) if ok.sum() >= 2 else None
                row.update({"shift": ci.estimate if ci else float("nan"),
                            "low": ci.low if ci else float("nan"),
                            "high": ci.high if ci else float("nan"),
                            "random_min": float(np.nanmin(rshift)) if rshift else float("nan"),
                            "random_max": float(np.nanmax(rshift)) if rshift else float("nan")})
                for other, ac in alone.items():
                    if c == ac:
                        continue
                    da = _vals(t, c, seg, b) - _vals(t, ac, seg, b)
                    okk = np.isfinite(da)
                    cc = bootstrap_ci(da[okk], n_boot=n_boot, seed=seed) if okk.sum() >= 2 else None
                    row[f"vs_{other}_alone"] = cc.estimate if cc else float("nan")
                    row[f"vs_{other}_alone_low"] = cc.low if cc else float("nan")
                    row[f"vs_{other}_alone_high"] = cc.high if cc else float("nan")
                # retention: shift(c) / shift(this behaviour's vector alone), paired ratio of means
                da = _vals(t, alone[key], seg, b) - base
                okr = np.isfinite(d) & np.isfinite(da)
                try:
                    rc = ratio_ci(d[okr], da[okr], n_boot=n_boot, seed=seed)
                    row.update({"retention": rc.estimate, "retention_low": rc.low,
                                "retention_high": rc.high})
                except ValueError:
                    row.update({"retention": float("nan"), "retention_low": float("nan"),
                                "retention_high": float("nan")})
                rows.append(row)
    # fluency: log2 perplexity ratio (continuation under the unsteered model) vs unsteered
    out = pd.DataFrame(rows)
    flu = {}
    base_lp = _vals(t, "unsteered", "full", "log2_ppl")
    for c in conds:
        d = _vals(t, c, "full", "log2_ppl") - base_lp
        ok = np.isfinite(d)
        if c != "unsteered" and ok.sum() >= 2:
            flu[c] = bootstrap_ci(d[ok], n_boot=n_boot, seed=seed)
    out["log2_ppl_ratio"] = out.condition.map(lambda c: flu[c].estimate if c in flu else np.nan)
    out["log2_ppl_low"] = out.condition.map(lambda c: flu[c].low if c in flu else np.nan)
    out["log2_ppl_high"] = out.condition.map(lambda c: flu[c].high if c in flu else np.nan)
    return out


def _row(s: pd.DataFrame, cond: str, seg: str, key: str) -> pd.Series:
    return s[(s.condition == cond) & (s.segment == seg) & (s.key == key)].iloc[0]


def _moved(r: pd.Series, sign: float) -> bool:
    """CI excludes 0 in the pushed direction and the shift is beyond every random direction's."""
    if not np.isfinite(r["low"]):
        return False
    ci_ok = r["low"] > 0 if sign > 0 else r["high"] < 0
    beyond = (r["shift"] > r["random_max"]) if sign > 0 else (r["shift"] < r["random_min"])
    return bool(ci_ok and (beyond or not np.isfinite(r["random_max"])))


def findings(s: pd.DataFrame, st: dict, alg: dict, agree: float, n_prompts: int) -> list[Finding]:
    out = []
    sign = {"A": math.copysign(1.0, st["strength_a"]), "B": math.copysign(1.0, st["strength_b"])}
    names = {"A": st["a"], "B": st["b"]}
    push = {"A": f"{st['strength_a']:+g}", "B": f"{st['strength_b']:+g}"}

    def rnd(r):
        return f"random {fmt(r['random_min'])}..{fmt(r['random_max'])}"

    def shift_row(cond, seg, key, headline=False, verdict=None):
        r = _row(s, cond, seg, key)
        v = verdict or ("moved in the pushed direction, beyond random" if _moved(r, sign[key])
                        else "null (CI includes 0 or within the random band)")
        extra = ""
        if cond not in ("A alone", "B alone") and np.isfinite(r.get("retention", np.nan)):
            extra = (f"; retention vs {names[key]} alone {fmt(r['retention'])} "
                     f"[{fmt(r['retention_low'])}, {fmt(r['retention_high'])}]")
        other = "B" if key == "A" else "A"
        if f"vs_{key}_alone" in r and np.isfinite(r[f"vs_{key}_alone"]):
            extra += (f"; minus {names[key]} alone {fmt(r[f'vs_{key}_alone'])} "
                      f"[{fmt(r[f'vs_{key}_alone_low'])}, {fmt(r[f'vs_{key}_alone_high'])}]")
        del other
        out.append(Finding(NAME, f"{names[key]} score shift vs unsteered, {cond}, {seg} text "
                           f"(push {names[key]} {push[key]} x resid norm, L{st['layer']})",
                           r["shift"], r["low"], r["high"], f"{int(r['n'])} prompts (paired)",
                           rnd(r), v + extra, headline=headline))
        return r

    for key in ("A", "B"):
        shift_row(f"{key} alone", "full", key)
        shift_row(f"{'B' if key == 'A' else 'A'} alone", "full", key)  # cross-talk
    both = []
    for key in ("A", "B"):
        r = shift_row("summed", "full", key, headline=True)
        both.append(_moved(r, sign[key]))
        shift_row("two in block", "full", key)
    out.append(Finding(
        NAME, "composition (summed vector) retains both effects", float(sum(both)), None, None,
        f"{n_prompts} prompts", "random directions with the summed norm",
        "supported: both behaviours moved beyond random" if all(both) else
        f"not supported: {sum(both)} of 2 behaviours moved" if any(both) else
        "not supported: neither behaviour moved", headline=True))
    # switching: after the switch the second behaviour should show, before it the first
    sw = []
    for cond, first, second in (("switch A->B", "A", "B"), ("switch B->A", "B", "A")):
        r2 = shift_row(cond, "after", second, headline=cond == "switch A->B")
        r1 = shift_row(cond, "before", first)
        shift_row(cond, "after", first)  # carry-over of the first vector through the KV cache
        sw.append(_moved(r2, sign[second]) and _moved(r1, sign[first]))
    out.append(Finding(
        NAME, "switching gives the first behaviour before and the second after the switch",
        float(sum(sw)), None, None, f"{n_prompts} prompts, 2 orders", "-",
        "supported in both orders" if all(sw) else f"supported in {sum(sw)} of 2 orders"
        if any(sw) else "not supported in either order", headline=True))
    rel = alg["max_abs_logit_diff"] / max(alg["max_abs_logit"], 1e-30)
    out.append(Finding(
        NAME, "exact algebra: max |logit(summed) - logit(two in block)| (same layer, positions)",
        alg["max_abs_logit_diff"], None, None, f"{alg['n_prompts']} prompts x all positions",
        f"steering moves logits by up to {fmt(alg['max_abs_steering_effect'])}",
        f"{'identical up to float32 summation order' if rel < 1e-5 else 'DIFFERENT'} "
        f"(relative {rel:.1e}); greedy tokens identical on {agree:.0%} of prompts"))
    for cond in ("A alone", "B alone", "summed", "switch A->B"):
        r = _row(s, cond, "full", "A")
        out.append(Finding(NAME, f"fluency: log2(perplexity of the continuation under the unsteered "
                           f"model / unsteered continuation's), {cond}", r["log2_ppl_ratio"],
                           r["log2_ppl_low"], r["log2_ppl_high"], f"{int(r['n'])} prompts",
                           "-", f"perplexity x{2 ** r['log2_ppl_ratio']:.2f}"))
    return out


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Shift bars per condition and the before/after segment bars (from summary.csv)."""
    s = pd.read_csv(Path(out) / "summary.csv")
    settings = json.loads((Path(out) / "findings.json").read_text(encoding="utf-8"))["settings"]
    names = {"A": settings["a"], "B": settings["b"]}
    rows = [ShiftRow(r.condition, names[r.key], r.shift, r.low, r.high, int(r.n), r.segment)
            for r in s.itertuples() if np.isfinite(r.shift)]
    n = int(s[s.segment == "full"]["n"].max())
    fig = shift_bars([r for r in rows if r.segment == "full"],
                     title=f"Score shift vs unsteered, whole continuation (n={n} prompts, 95% CI; "
                     f"L{settings['layer']})")
    p1 = save_html(fig, Path(fig_dir) / f"{NAME}_shifts.html")
    fig = segment_shift_bars([r for r in rows if r.segment != "full"],
                             title=f"Before / after the switch at token {settings['switch_step']} "
                             f"(n={n} prompts, 95% CI)")
    p2 = save_html(fig, Path(fig_dir) / f"{NAME}_segments.html")
    return [GalleryEntry(NAME, p1, "Composition: both behaviours' shifts per condition",
                         f"{names['A']} and {names['B']} scores under each vector alone, summed, "
                         "two in one block, switched and random.", results_command),
            GalleryEntry(NAME, p2, "Sequential switching: before vs after the switch",
                         "Each behaviour's shift in the segment before and after the switch step.",
                         results_command)]


def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
    """The gallery hook: redraw from results_dir/summary.csv if the run exists."""
    if not (Path(results_dir) / "summary.csv").exists():
        return []
    return draw(Path(results_dir), Path(figures_dir))


def main(argv=None, model=None) -> dict:
    """Run the analysis (optionally on an already loaded `model`)."""
    args, ctx, model = start(NAME, build_parser(), argv, model)
    st = settings_for(args, runtime.n_layers(model))
    ba, bb = load_behaviour(st["a"]), load_behaviour(st["b"])
    prompts = list(dict.fromkeys(heldout_prompts(ba, st["n_prompts"])
                                 + heldout_prompts(bb, st["n_prompts"])))
    layer = st["layer"]
    va = cached_vector(model, ba, [layer], ctx, show_progress=False)
    vb = cached_vector(model, bb, [layer], ctx, show_progress=False)
    norms = residual_norms(model, prompts, [layer])
    va, vb = scale_to_residual(va, norms), scale_to_residual(vb, norms)
    cos = float(torch.nn.functional.cosine_similarity(va[layer], vb[layer], dim=0))
    log(f"{NAME}: L{layer}, median residual norm {norms[layer]:.3g}, cos(A, B) = {cos:.3f}, "
        f"{len(prompts)} prompts")
    conds = conditions(va, vb, st["strength_a"], st["strength_b"], st["switch_step"],
                       st["n_random"], ctx.seed)
    gens = _generate_all(model, prompts, conds, st, ctx.out, ctx.resume)
    scorers = {st["a"]: get_scorer(st["a"]), st["b"]: get_scorer(st["b"])}
    table = score_table(model, prompts, gens, st["switch_step"], scorers)
    write_csv(ctx.out / "scores.csv", table)
    s = summarise(table, {"A": st["a"], "B": st["b"]}, st["n_boot"], ctx.seed)
    write_csv(ctx.out / "summary.csv", s)
    alg = algebra_check(model, prompts, va, vb, st["strength_a"], st["strength_b"])
    same = [a == b for a, b in zip(gens["summed"][0], gens["two in block"][0])]
    alg["greedy_identical"] = float(np.mean(same))
    alg["cos_a_b"] = cos
    write_json(ctx.out / "algebra.json", alg)
    found = findings(s, st, alg, alg["greedy_identical"], len(prompts))
    settings = {**st, "model": runtime.model_id(model), "n_prompts_total": len(prompts),
                "residual_norm": norms[layer], "cos_a_b": cos,
                "vectors": "mean_diff on each behaviour's train pairs (chat template auto), "
                           "rescaled to the median residual norm at the layer",
                "scorers": {st["a"]: "shipped keywords (formal - casual hits) / words",
                            st["b"]: "VADER compound"}}
    notes = [
        "Segments: 'before' = generated tokens [0, switch_step), 'after' = the rest; the "
        "injection windows are defined on the same generated-token index, so the segments are "
        "exactly the tokens produced under each vector of a schedule. The first vector's "
        "edits stay in the KV cache after the switch (prompt and early positions), so the "
        "'after' segment can carry it over; the rows 'switch ..., after text' for the first "
        "behaviour measure that.",
        "An empty segment (a reply shorter than the switch step) is left out of that segment's "
        "paired comparison (n says how many prompts remain).",
        "Random: Gaussian directions with the summed vector's norm at the same layer, scored on "
        "both behaviours; the band is the range of their mean shifts.",
        "Greedy decoding, so the prompts are the only units; n counts prompts.",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(s[["condition", "segment", "behaviour", "n", "shift", "low", "high", "random_min",
                 "random_max", "retention"]].round(3).to_string(index=False))
    print_findings(found)
    return {"table": table, "summary": s, "algebra": alg, "findings": found}


if __name__ == "__main__":
    main()
