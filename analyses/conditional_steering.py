"""Can a harmful-vs-harmless condition gate refusal steering (CAST) to the prompts that need it?

Conditional activation steering (Lee et al. 2024, "Programming Refusal with Conditional Activation
Steering") on SmolLM2 with the shipped harmful / harmless prompt sets (fixed train/test split):

1. Condition: at each candidate layer, the prompt activation (resid_pre, mean over the prompt's
   positions, chat template on: `Conditional(read_at="mean")`, as in CAST) averaged over harmful
   train prompts minus the same over harmless train prompts. Its cosine similarity with each train
   prompt's activation is the gate score; the threshold maximising F1 on the train split is taken
   (`interventions.conditional.choose_threshold`), and the condition layer is the candidate with
   the best train F1 (no later than the behaviour layer, since the gate must be read before the
   behaviour is written).
2. Behaviour: the refusal direction (mean difference of harmful vs harmless train prompts at the
   last prompt token, as in `analyses.refusal`) at the layer whose addition raised the refusal
   log-odds most in that analysis's train-prompt layer sweep, added at all positions. Its strength is the
   smallest of `--strengths` whose addition makes the answer start with a refusal prefix with mean
   probability >= 0.5 on `--n-sweep` harmless train prompts (else the one with the highest mean
   probability; too large a strength breaks the text and lowers it): train data only.
3. Held-out prompts (n = `--n-test` per class): the gate's precision and recall for "harmful"
   (Wilson CIs), and greedy refusal rates (`measures.refusal.is_refusal`, first
   `--max-new-tokens` tokens) unsteered, with unconditional addition and with conditional
   addition, on harmful (matching) and harmless (non-matching) prompts, each with a Wilson CI and
   McNemar's exact test against unsteered on the same prompts.

Saved in results/conditional/: conditional.json, conditions.csv, layers.csv, generations/,
findings.json.

    python -m analyses.conditional_steering [--n-test 32] [--strengths 1,2,4,8] [--threads 1]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from steerlens.backend import runtime
from steerlens.extract import extract_prompts
from steerlens.figures import save_html
from steerlens.figures.refusal import RateRow, gate_histogram, refusal_rate_bars
from steerlens.interventions.conditional import (
    Conditional,
    choose_threshold,
    condition_similarity,
    gate_counts,
)
from steerlens.measures.refusal import is_refusal, refusal_logodds, refusal_prompts
from steerlens.stats import mcnemar, proportion_ci
from steerlens.steer import Injection
from steerlens.vectors import SteeringVector

from . import RESULTS, command
from ._common import GalleryEntry, add_list, add_strengths, log, parser, start, write_csv, write_json
from .findings import Finding, print_findings, save_findings
from .refusal import SWEEP_PREFIXES, generate_cached, refusal_direction

NAME = "conditional_steering"


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    add_list(p, "--layers", int, None, "candidate condition layers (default every 3rd, up to the "
             "behaviour layer)")
    add_strengths(p, [1.0, 2.0, 4.0, 8.0], "candidate strengths of the refusal addition")
    p.add_argument("--behaviour-layer", type=int, default=None,
                   help="layer of the refusal direction (default: results/refusal/direction)")
    p.add_argument("--n-test", type=int, default=32, help="held-out prompts per class (max 48)")
    p.add_argument("--n-sweep", type=int, default=8, help="harmless train prompts for the strength")
    p.add_argument("--criterion", choices=["f1", "youden"], default="f1")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    return p


def prompt_means(model, prompts, layers, batch_size: int = 32) -> dict[int, np.ndarray]:
    """Per prompt, resid_pre averaged over its prompt positions after BOS (the gate's reading)."""
    acts = extract_prompts(model, list(prompts), list(layers), read_at="mean",
                           batch_size=batch_size, show_progress=False)
    return {la: acts[la].double().numpy() for la in layers}


def cosine(h: np.ndarray, c: np.ndarray) -> np.ndarray:
    return h @ c / (np.linalg.norm(h, axis=1) * np.linalg.norm(c))


def behaviour_vector(model, args, train) -> tuple[SteeringVector, str]:
    """The refusal direction at the layer whose addition raised refusal most on train prompts.

    The layer comes from `--behaviour-layer`, else from the layer sweep saved by
    `analyses.refusal` (results/refusal/refusal.json, train prompts only), else from the same
    sweep of the addition run here; the direction is recomputed on the train split.
    """
    n = runtime.n_layers(model)
    if args.behaviour_layer is not None:
        layer, how = args.behaviour_layer, "--behaviour-layer"
        if not 0 <= layer < n:
            raise ValueError(f"--behaviour-layer must be in 0..{n - 1}, got {layer}.")
        return refusal_direction(model, train, [layer], args.batch_size), how
    saved = RESULTS / "refusal" / "refusal.json"
    if saved.exists():
        res = json.loads(saved.read_text(encoding="utf-8"))
        if res["settings"].get("model") == runtime.model_id(model):
            sw = pd.DataFrame(res["sweep"])
            layer = int(sw.loc[sw["addition_delta"].idxmax(), "layer"])
            return (refusal_direction(model, train, [layer], args.batch_size),
                    "largest addition effect in the saved refusal layer sweep (train prompts)")
    layers = list(range(3, int(0.8 * n) + 1, 3)) or list(range(n))  # small models: every layer
    vec = refusal_direction(model, train, layers, args.batch_size)
    sw_b = list(train.harmless[:8])
    base_b = np.array(refusal_logodds(model, sw_b, prefixes=SWEEP_PREFIXES).logodds)
    gain = {la: float((np.array(refusal_logodds(model, sw_b, Injection(vec.layer(la)),
                                                prefixes=SWEEP_PREFIXES).logodds) - base_b).mean())
            for la in layers}
    layer = max(gain, key=gain.get)
    return vec.layer(layer), "largest addition effect in a layer sweep (8 harmless train prompts)"


def wilson(k: int, n: int) -> dict:
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "low": None, "high": None}
    c = proportion_ci(k, n)
    return {"k": k, "n": n, "rate": c.estimate, "low": c.low, "high": c.high}


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Draw the gate histogram and the refusal-rate bars from conditional.json (no model)."""
    res = json.loads((out / "conditional.json").read_text(encoding="utf-8"))
    g = res["gate"]
    p1 = save_html(gate_histogram(g["test_scores_harmful"], g["test_scores_harmless"],
                                  g["threshold"], title=(
                                      f"Condition similarity at layer {g['layer']} on held-out "
                                      f"prompts (threshold from the train split, {g['criterion']})")),
                   fig_dir / f"{NAME}_gate.html")
    rows = []
    for cls in ("harmful", "harmless"):
        for cond in ("unsteered", "unconditional", "conditional"):
            r = res["rates"][cls][cond]
            rows.append(RateRow(f"{cond} ({cls})", r["rate"], r["low"], r["high"], r["n"],
                                group=f"{cls} prompts"))
    p2 = save_html(refusal_rate_bars(rows, title=(
        f"Refusal rate: refusal direction added (strength {res['strength']:g}) unconditionally vs "
        "only where the harmful condition fires")), fig_dir / f"{NAME}_rates.html")
    n = res["rates"]["harmful"]["unsteered"]["n"]
    return [GalleryEntry(NAME, p1, "CAST gate on held-out prompts",
                         f"Cosine similarity with the harmful-vs-harmless condition, n={n} held-out "
                         "prompts per class, threshold chosen on the train split.", results_command),
            GalleryEntry(NAME, p2, "Conditional vs unconditional refusal steering",
                         f"Greedy refusal rate (Wilson 95% CI), n={n} held-out prompts per class.",
                         results_command)]


make_figures = draw


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    t0 = time.time()
    args, ctx, model = start(NAME, build_parser(), argv, model)
    quick = ctx.quick
    n_test = 4 if quick else args.n_test
    if not 1 <= n_test <= 48:
        raise ValueError(f"--n-test must be in 1..48, got {n_test}.")
    st = {"n_test": n_test, "max_new_tokens": 6 if quick else args.max_new_tokens,
          "batch_size": args.batch_size, "criterion": args.criterion,
          "n_sweep": 2 if quick else args.n_sweep}
    train, test = refusal_prompts("train"), refusal_prompts("test")
    beh, beh_how = behaviour_vector(model, args, train)
    b_layer = beh.layers[0]
    cand = args.layers or list(range(0, b_layer + 1, 3))
    cand = sorted({la for la in cand if 0 <= la <= b_layer}) or [b_layer]
    log(f"{NAME}: behaviour = refusal direction at layer {b_layer} (norm {beh.norms[b_layer]:.3g}); "
        f"condition candidates {cand}")
    # ---- condition layer and threshold: train split only
    acts = prompt_means(model, list(train.prompts), cand, args.batch_size)
    y_train = np.array(train.labels)
    layer_rows, best = [], None
    for la in cand:
        c = acts[la][y_train].mean(0) - acts[la][~y_train].mean(0)
        choice = choose_threshold(cosine(acts[la], c), y_train, criterion=args.criterion)
        layer_rows.append({"layer": la, "train_value": choice.value, "threshold": choice.threshold,
                           "train_precision": choice.precision, "train_recall": choice.recall})
        if best is None or choice.value > best[1].value:
            best = (la, choice, c)
    c_layer, choice, cdir = best
    condition = SteeringVector({c_layer: torch.tensor(cdir, dtype=torch.float32)},
                               component="resid_pre", method="mean_diff", read_at="mean",
                               model_id=runtime.model_id(model), n_pairs=len(train.harmful))
    # the gate's own similarity (float32, batched as in generation) on train and held-out prompts
    harmful, harmless = list(test.harmful[:n_test]), list(test.harmless[:n_test])
    s_h = condition_similarity(model, harmful, condition, batch_size=args.batch_size)
    s_b = condition_similarity(model, harmless, condition, batch_size=args.batch_size)
    tp, fp, fn, tn = gate_counts(np.concatenate([s_h, s_b]),
                                 np.array([True] * len(s_h) + [False] * len(s_b)), choice.threshold)
    gate = {"layer": c_layer, "threshold": choice.threshold, "criterion": args.criterion,
            "train": {"value": choice.value, "tp": choice.tp, "fp": choice.fp, "fn": choice.fn,
                      "tn": choice.tn},
            "test": {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": wilson(tp, tp + fp),
                     "recall": wilson(tp, tp + fn), "false_positive_rate": wilson(fp, fp + tn)},
            "test_scores_harmful": s_h.tolist(), "test_scores_harmless": s_b.tolist()}
    log(f"condition layer {c_layer}, threshold {choice.threshold:.4f} (train {args.criterion} "
        f"{choice.value:.3f}); held-out tp {tp} fp {fp} fn {fn} tn {tn}")
    # ---- behaviour strength: harmless train prompts only
    strengths = [1.0] if quick else sorted(args.strengths)
    sw = list(train.harmless[: st["n_sweep"]])
    p_by = {}
    for s in strengths:
        p_by[s] = float(np.mean(refusal_logodds(model, sw, Injection(beh, s)).p_refusal))
    strength = next((s for s in strengths if p_by[s] >= 0.5), max(strengths, key=p_by.get))
    log(f"P(refusal prefix) on harmless train by strength {p_by}; using {strength:g}")
    # ---- held-out generation
    prompts = harmful + harmless
    gdir = ctx.out / "generations"
    key = {"model": runtime.model_id(model), "max_new_tokens": st["max_new_tokens"],
           "n_test": n_test}
    vkey = {**key, "layer": b_layer, "norm": beh.norms[b_layer], "strength": strength}
    cond_iv = Conditional(Injection(beh, strength), condition, choice.threshold)
    texts = {
        "unsteered": generate_cached(model, prompts, None, st, gdir / "unsteered.json",
                                     {**key, "cond": "unsteered"}, ctx.progress),
        "unconditional": generate_cached(model, prompts, [Injection(beh, strength)], st,
                                         gdir / "unconditional.json",
                                         {**vkey, "cond": "unconditional"}, ctx.progress),
        "conditional": generate_cached(model, prompts, [cond_iv], st, gdir / "conditional.json",
                                       {**vkey, "cond": "conditional", "c_layer": c_layer,
                                        "threshold": choice.threshold}, ctx.progress),
    }
    ref = {c: np.array([is_refusal(t) for t in ts]) for c, ts in texts.items()}
    opened = np.concatenate([s_h, s_b]) > choice.threshold
    rates: dict[str, dict] = {}
    rows = []
    for cls, sl in (("harmful", slice(0, n_test)), ("harmless", slice(n_test, 2 * n_test)),
                    ("gate open", opened), ("gate closed", ~opened)):
        rates[cls] = {}
        for cond, r in ref.items():
            sub = r[sl]
            rr = wilson(int(sub.sum()), int(sub.size))
            if cond != "unsteered" and sub.size:
                mc = mcnemar(ref["unsteered"][sl], sub)
                rr.update(mcnemar_p=mc.p_value, refused_to_complied=mc.b, complied_to_refused=mc.c)
            rates[cls][cond] = rr
            rows.append({"prompts": cls, "condition": cond, **rr})
    table = pd.DataFrame(rows)
    res = {"settings": {**st, "model": runtime.model_id(model), "behaviour_layer": b_layer,
                        "behaviour_norm": beh.norms[b_layer], "behaviour_layer_from": beh_how,
                        "candidate_layers": cand,
                        "strengths": strengths, "p_refusal_by_strength": p_by,
                        "wall_seconds": round(time.time() - t0, 1)},
           "strength": strength, "gate": gate, "layers": layer_rows, "rates": rates,
           "examples": [{"prompt": p, "harmful": i < n_test, "gate": bool(opened[i]),
                         **{c: texts[c][i] for c in texts}} for i, p in enumerate(prompts)]}
    write_json(ctx.out / "conditional.json", res)
    write_csv(ctx.out / "conditions.csv", table)
    write_csv(ctx.out / "layers.csv", pd.DataFrame(layer_rows))
    found = findings(res, n_test)
    notes = [f"Condition layer, threshold ({args.criterion}) and strength chosen on the train split "
             "only; precision/recall and refusal rates are on held-out prompts.",
             "McNemar: exact binomial test on the prompts whose refusal changed vs unsteered."]
    save_findings(ctx, found, res["settings"], notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 170):
        print(table.round(3).to_string(index=False))
    print_findings(found)
    log(f"done in {time.time() - t0:.0f}s")
    return {"result": res, "table": table, "findings": found}


def findings(res: dict, n_test: int) -> list[Finding]:
    g = res["gate"]["test"]
    out = []
    for what in ("precision", "recall"):
        r = g[what]
        if r["n"]:
            out.append(Finding(NAME, f"CAST gate {what} for harmful prompts, held-out (Wilson)",
                               r["rate"], r["low"], r["high"], str(r["n"]), "-",
                               f"layer {res['gate']['layer']}, threshold "
                               f"{res['gate']['threshold']:.3g} from the train split",
                               headline=True))
    for cls in ("harmful", "harmless"):
        for cond in ("unconditional", "conditional"):
            r = res["rates"][cls][cond]
            base = res["rates"][cls]["unsteered"]
            sig = r.get("mcnemar_p", 1.0) < 0.05
            out.append(Finding(
                NAME, f"refusal rate, {cond} refusal addition, held-out {cls} prompts (Wilson)",
                r["rate"], r["low"], r["high"], str(r["n"]), "-",
                f"unsteered {base['rate']:.2f} -> {r['rate']:.2f}; McNemar p="
                f"{r.get('mcnemar_p', float('nan')):.2g}: " + ("significant change" if sig
                                                               else "no significant change"),
                headline=cond == "conditional"))
    return out


if __name__ == "__main__":
    main()
