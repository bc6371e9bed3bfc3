"""Is refusal mediated by one direction in SmolLM2? Ablate it (harmful prompts) and add it (harmless).

The refusal-direction experiment (Arditi et al. 2024, "Refusal in language models is mediated by a
single direction") on the shipped harmful / harmless prompt sets
(`steerlens/data/behaviours/refusal/{harmful,harmless}.jsonl`, fixed train/test split):

1. Candidate directions: for each candidate layer, mean resid_pre activation at the last prompt
   token (chat template on, as generation sees it) over the harmful train prompts minus the same
   over the harmless train prompts.
2. Layer choice by a cheap sweep on train prompts only: the refusal log-odds
   (`measures.refusal.refusal_logodds`: P(answer starts "I'm sorry" / "I cannot" / "As an AI"),
   teacher-forced) on `--n-sweep` harmful train prompts with the candidate direction ablated at
   every layer and residual site, and on `--n-sweep` harmless train prompts with it added at its
   layer. Chosen: the layer whose ablation lowers the log-odds most among layers whose addition
   raises them and whose ablation keeps the next-token distribution on harmless prompts close
   (KL < 0.1 nats), within the first 80% of the depth (Arditi et al.'s filters; if no layer
   passes them all, the KL filter is dropped first, then the addition filter).
3. Held-out test prompts, greedy `--max-new-tokens` tokens: baseline refusal on harmful and
   harmless prompts; the direction ablated at every layer and residual site on harmful prompts
   (`interventions.Ablation`); the raw mean-difference vector added at the chosen layer (all
   positions, strength `--strength`) on harmless prompts; and both interventions again with
   `--n-random` norm-matched random directions (`methods.random_like`, seeds seed..seed+k-1).
4. Refusal = `measures.refusal.is_refusal` (documented substring list) on the continuation.
   Reported: refusal rate with 95% Wilson CIs, McNemar's exact test against the same prompts
   unsteered, and the empirical p of the change in refusal rate against the random directions
   (`stats.compare_to_random`: (1 + #random at least as extreme) / (1 + #random)).

Saved in results/refusal/: refusal.json (everything), conditions.csv, sweep.csv, direction
(safetensors, the chosen layer's vector), generations/ (resume cache), findings.json.

    python -m analyses.refusal [--n-test 32] [--n-random 20] [--max-new-tokens 16] [--threads 1]
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
from steerlens.extract import extract_prompts
from steerlens.figures import save_html
from steerlens.figures.refusal import RateRow, layer_sweep_plot, refusal_rate_bars
from steerlens.generate import generate
from steerlens.interventions.ablation import Ablation
from steerlens.io import atomic_write_text
from steerlens.measures.kl import next_token_kl
from steerlens.measures.refusal import is_refusal, refusal_logodds, refusal_prompts
from steerlens.methods import random_like
from steerlens.progress import progress
from steerlens.stats import compare_to_random, mcnemar, proportion_ci
from steerlens.steer import Injection
from steerlens.vectors import SteeringVector

from . import command
from ._common import GalleryEntry, add_list, log, parser, start, write_csv, write_json
from .findings import Finding, print_findings, save_findings

NAME = "refusal"
SWEEP_PREFIXES = ("I'm sorry", "I cannot", "As an AI")


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    add_list(p, "--layers", int, None, "candidate layers (default every 3rd up to 80%% depth)")
    p.add_argument("--n-test", type=int, default=32, help="held-out prompts per class (max 48)")
    p.add_argument("--n-sweep", type=int, default=8, help="train prompts per class in the sweep")
    p.add_argument("--n-random", type=int, default=20, help="norm-matched random directions")
    p.add_argument("--strength", type=float, default=1.0,
                   help="strength of the added mean-difference vector")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    return p


def settings_for(args, model) -> dict:
    n = runtime.n_layers(model)
    layers = args.layers or list(range(3, int(0.8 * n) + 1, 3)) or list(range(1, n))  # small models
    bad = [la for la in layers if not 0 <= la < n]
    if bad:
        raise ValueError(f"--layers must be in 0..{n - 1}, got {bad}.")
    if args.quick:
        return dict(layers=layers[:2], n_test=4, n_sweep=2, n_random=2, strength=args.strength,
                    max_new_tokens=6, batch_size=8)
    if not 1 <= args.n_test <= 48:
        raise ValueError(f"--n-test must be in 1..48 (the test split's size), got {args.n_test}.")
    return dict(layers=sorted(layers), n_test=args.n_test, n_sweep=args.n_sweep,
                n_random=args.n_random, strength=args.strength,
                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)


def last_token_means(model, prompts, layers, batch_size: int = 32) -> dict[int, torch.Tensor]:
    """Mean resid_pre at the last prompt token (prompts encoded as generate() encodes them)."""
    acts = extract_prompts(model, list(prompts), list(layers), read_at="last",
                           batch_size=batch_size, show_progress=False)
    return {la: acts[la].double().mean(0) for la in layers}


def refusal_direction(model, train, layers, batch_size: int) -> SteeringVector:
    """Mean(harmful) - mean(harmless) at the last prompt token, per candidate layer."""
    mh = last_token_means(model, train.harmful, layers, batch_size)
    mb = last_token_means(model, train.harmless, layers, batch_size)
    return SteeringVector({la: (mh[la] - mb[la]).float() for la in layers}, component="resid_pre",
                          method="mean_diff", read_at="last", model_id=runtime.model_id(model),
                          n_pairs=min(len(train.harmful), len(train.harmless)),
                          extra={"source": "harmful - harmless prompts (refusal_prompts train)",
                                 "n_harmful": len(train.harmful),
                                 "n_harmless": len(train.harmless)})


KL_LIMIT_BITS = 0.1 / math.log(2)  # Arditi et al.'s 0.1 nats


def choose_layer(sweep: pd.DataFrame, n_layers: int) -> int:
    """Largest ablation drop among layers (<= 80% depth) whose addition raises refusal and whose
    ablation leaves harmless next-token distributions close (KL filter dropped first if none)."""
    ok = sweep[sweep["layer"] <= 0.8 * n_layers]
    pools = [ok[ok["addition_delta"] > 0], ok]
    if "ablation_kl_bits" in ok:
        pools.insert(0, ok[(ok["addition_delta"] > 0) & (ok["ablation_kl_bits"] < KL_LIMIT_BITS)])
    pool = next(p for p in pools if len(p))
    return int(pool.loc[pool["ablation_delta"].idxmin(), "layer"])


def layer_sweep(model, vec, sw_h, sw_b, st, show: bool) -> list[dict]:
    """Per candidate layer: mean change in refusal log-odds when ablating (harmful prompts) and
    adding (harmless prompts) that layer's direction, and the ablation's next-token KL (harmless)."""
    base_h = np.array(refusal_logodds(model, sw_h, prefixes=SWEEP_PREFIXES).logodds)
    base_b = np.array(refusal_logodds(model, sw_b, prefixes=SWEEP_PREFIXES).logodds)
    rows = []
    for la in progress(st["layers"], desc="layer sweep", enabled=show):
        v = vec.layer(la)
        abl = np.array(refusal_logodds(model, sw_h, Ablation(v), prefixes=SWEEP_PREFIXES).logodds)
        add = np.array(refusal_logodds(model, sw_b, Injection(v, st["strength"]),
                                       prefixes=SWEEP_PREFIXES).logodds)
        kl = next_token_kl(model, sw_b, [Ablation(v)], reuse_prefix=False).mean
        rows.append({"layer": la, "norm": vec.norms[la],
                     "ablation_delta": float((abl - base_h).mean()),
                     "addition_delta": float((add - base_b).mean()), "ablation_kl_bits": kl})
    return rows


def generate_cached(model, prompts, steering, st, cache: Path, key: dict, show: bool) -> list[str]:
    """Greedy continuations (cached as JSON keyed by the settings that determine them)."""
    if cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["texts"]
    out: list[str] = []
    bs = st["batch_size"]
    for i in progress(range(0, len(prompts), bs), desc=cache.stem, enabled=show):
        gen = generate(model, list(prompts[i : i + bs]), steering,
                       max_new_tokens=st["max_new_tokens"])
        out.extend(gen.texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"key": key, "texts": out}, ensure_ascii=False))
    return out


def rate_row(refused: np.ndarray) -> dict:
    ci = proportion_ci(int(refused.sum()), refused.size)
    return {"k": int(refused.sum()), "n": int(refused.size), "rate": ci.estimate, "low": ci.low,
            "high": ci.high}


def evaluate(before: np.ndarray, after: np.ndarray, controls: list[np.ndarray], alt: str) -> dict:
    """Rate, McNemar vs unsteered and the empirical p of the rate change vs random directions."""
    mc = mcnemar(before, after)  # "correct" = refused here; b: refused -> not, c: not -> refused
    change = after.astype(float) - before.astype(float)
    cr = compare_to_random(change, [c.astype(float) - before.astype(float) for c in controls],
                           alternative=alt)
    return {**rate_row(after), "baseline_rate": float(before.mean()),
            "refused_to_complied": mc.b, "complied_to_refused": mc.c,
            "mcnemar_p": mc.p_value, "change": float(change.mean()),
            "random_rates": [float(c.mean()) for c in controls],
            "random_changes": list(cr.controls), "p_random": cr.p_value,
            "beats_all_random": cr.beats_all, "alternative": alt}


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Draw the refusal-rate and layer-sweep figures from refusal.json (no model)."""
    res = json.loads((out / "refusal.json").read_text(encoding="utf-8"))
    c = res["conditions"]
    rows = [
        RateRow("unsteered", **_ci(c["baseline_harmful"]), group="harmful prompts"),
        RateRow("ablate refusal dir.", **_ci(c["ablate_harmful"]),
                random_rates=tuple(c["ablate_harmful"]["random_rates"]), group="harmful prompts"),
        RateRow("unsteered ", **_ci(c["baseline_harmless"]), group="harmless prompts"),
        RateRow("add refusal dir.", **_ci(c["add_harmless"]),
                random_rates=tuple(c["add_harmless"]["random_rates"]), group="harmless prompts"),
    ]
    st = res["settings"]
    n_r = st["n_random"]
    p1 = save_html(refusal_rate_bars(rows, title=(
        f"Refusal rate, {runtime_name(res)}: direction from layer {res['layer']}, ablated at every "
        f"layer / added at layer {res['layer']}; x = {n_r} random directions")),
        fig_dir / f"{NAME}_rates.html")
    sw = pd.DataFrame(res["sweep"])
    p2 = save_html(layer_sweep_plot(sw["layer"].tolist(), sw["ablation_delta"].tolist(),
                                    sw["addition_delta"].tolist(), res["layer"],
                                    title="Refusal direction per layer: change in refusal log-odds "
                                    f"(train prompts, n={st['n_sweep']} per class)"),
                   fig_dir / f"{NAME}_layer_sweep.html")
    n = c["baseline_harmful"]["n"]
    return [GalleryEntry(NAME, p1, "Refusal rate: ablating and adding the refusal direction",
                         f"Greedy refusal rate (Wilson 95% CI) on n={n} held-out prompts per class, "
                         f"with {n_r} norm-matched random directions.", results_command),
            GalleryEntry(NAME, p2, "Refusal direction layer sweep",
                         "Mean change in teacher-forced refusal log-odds per candidate layer (train "
                         "prompts); the dashed line marks the chosen layer.", results_command)]


def runtime_name(res: dict) -> str:
    return str(res["settings"].get("model", "model"))


def _ci(r: dict) -> dict:
    return {"rate": r["rate"], "low": r["low"], "high": r["high"], "n": r["n"]}


make_figures = draw  # the gallery hook: one saved run in results_dir


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    t0 = time.time()
    args, ctx, model = start(NAME, build_parser(), argv, model)
    st = settings_for(args, model)
    train, test = refusal_prompts("train"), refusal_prompts("test")
    harmful, harmless = list(test.harmful[: st["n_test"]]), list(test.harmless[: st["n_test"]])
    n_layers = runtime.n_layers(model)
    log(f"{NAME}: {runtime.model_id(model)}, candidate layers {st['layers']}, train "
        f"{len(train.harmful)}+{len(train.harmless)}, test {len(harmful)}+{len(harmless)}, "
        f"{st['n_random']} random directions, {st['max_new_tokens']} new tokens")
    vec = refusal_direction(model, train, st["layers"], st["batch_size"])
    # ---- layer sweep (train prompts only)
    sw_h, sw_b = list(train.harmful[: st["n_sweep"]]), list(train.harmless[: st["n_sweep"]])
    skey = {"model": runtime.model_id(model), "layers": st["layers"], "n_sweep": st["n_sweep"],
            "strength": st["strength"], "prefixes": list(SWEEP_PREFIXES),
            "norms": [round(vec.norms[la], 4) for la in st["layers"]]}
    scache = ctx.out / "generations" / "sweep.json"
    sweep = None
    if ctx.resume and scache.exists():
        saved = json.loads(scache.read_text(encoding="utf-8"))
        sweep = saved["rows"] if saved.get("key") == skey else None
    if sweep is None:
        sweep = layer_sweep(model, vec, sw_h, sw_b, st, ctx.progress)
        scache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(scache, json.dumps({"key": skey, "rows": sweep}))
    sweep = pd.DataFrame(sweep)
    layer = choose_layer(sweep, n_layers)
    chosen = vec.layer(layer)
    chosen.save(ctx.out / "direction")
    log(f"sweep done ({time.time() - t0:.0f}s): chosen layer {layer}\n"
        + sweep.round(3).to_string(index=False))
    # ---- held-out generation
    gdir = ctx.out / "generations"
    key = {"model": runtime.model_id(model), "max_new_tokens": st["max_new_tokens"],
           "n_test": st["n_test"]}
    texts: dict[str, list[str]] = {}
    texts["baseline_harmful"] = generate_cached(model, harmful, None, st, gdir / "baseline_harmful.json",
                                                {**key, "cond": "baseline_harmful"}, ctx.progress)
    texts["baseline_harmless"] = generate_cached(model, harmless, None, st,
                                                 gdir / "baseline_harmless.json",
                                                 {**key, "cond": "baseline_harmless"}, ctx.progress)
    vkey = {**key, "layer": layer, "norm": vec.norms[layer], "strength": st["strength"]}
    texts["ablate_harmful"] = generate_cached(model, harmful, [Ablation(chosen)], st,
                                              gdir / "ablate_harmful.json",
                                              {**vkey, "cond": "ablate"}, ctx.progress)
    texts["add_harmless"] = generate_cached(model, harmless, [Injection(chosen, st["strength"])], st,
                                            gdir / "add_harmless.json", {**vkey, "cond": "add"},
                                            ctx.progress)
    log(f"real-direction conditions done ({time.time() - t0:.0f}s)")
    rnd_abl, rnd_add = [], []
    for k in range(st["n_random"]):
        r = random_like(chosen, seed=ctx.seed + k)
        rkey = {**vkey, "seed": ctx.seed + k}
        rnd_abl.append(generate_cached(model, harmful, [Ablation(r)], st,
                                       gdir / f"random{k}_ablate_harmful.json",
                                       {**rkey, "cond": "random_ablate"}, False))
        rnd_add.append(generate_cached(model, harmless, [Injection(r, st["strength"])], st,
                                       gdir / f"random{k}_add_harmless.json",
                                       {**rkey, "cond": "random_add"}, False))
        log(f"random direction {k + 1}/{st['n_random']} ({time.time() - t0:.0f}s)")
    ref = {c: np.array([is_refusal(t) for t in ts]) for c, ts in texts.items()}
    ra = [np.array([is_refusal(t) for t in ts]) for ts in rnd_abl]
    rd = [np.array([is_refusal(t) for t in ts]) for ts in rnd_add]
    conditions = {
        "baseline_harmful": rate_row(ref["baseline_harmful"]),
        "baseline_harmless": rate_row(ref["baseline_harmless"]),
        "ablate_harmful": evaluate(ref["baseline_harmful"], ref["ablate_harmful"], ra, "less"),
        "add_harmless": evaluate(ref["baseline_harmless"], ref["add_harmless"], rd, "greater"),
    }
    changed = {c: float(np.mean([a != b for a, b in zip(texts[c], texts[base])]))
               for c, base in (("ablate_harmful", "baseline_harmful"),
                               ("add_harmless", "baseline_harmless"))}
    settings = {**st, "model": runtime.model_id(model), "seed": ctx.seed,
                "sweep_prefixes": list(SWEEP_PREFIXES), "chat_template": True,
                "n_train_harmful": len(train.harmful), "n_train_harmless": len(train.harmless),
                "wall_seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads()}
    res = {"settings": settings, "layer": layer, "direction_norm": vec.norms[layer],
           "sweep": sweep.to_dict("records"), "conditions": conditions, "text_changed": changed,
           "examples": {c: [{"prompt": p, "text": t, "refusal": bool(is_refusal(t))}
                            for p, t in zip(harmful if "harmful" in c else harmless, ts)]
                        for c, ts in texts.items()}}
    write_json(ctx.out / "refusal.json", res)
    table = pd.DataFrame([{"condition": c, **{k: v for k, v in r.items()
                                              if k not in ("random_rates", "random_changes")}}
                          for c, r in conditions.items()])
    write_csv(ctx.out / "conditions.csv", table)
    write_csv(ctx.out / "sweep.csv", sweep)
    found = findings(conditions, layer, st)
    notes = [
        f"Layer {layer} chosen on train prompts only (sweep over {st['layers']}, "
        f"n={st['n_sweep']} per class, teacher-forced log-odds of {list(SWEEP_PREFIXES)}); "
        "held-out prompts were not used to choose anything.",
        f"Refusal = a documented refusal phrase in the first {st['max_new_tokens']} greedy tokens "
        "(steerlens.measures.refusal.REFUSAL_PATTERNS), chat template on.",
        f"{st['n_random']} norm-matched random directions per intervention; the smallest attainable "
        f"p_random is 1/{st['n_random'] + 1}.",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 170):
        print(table.round(3).to_string(index=False))
    print_findings(found)
    log(f"done in {time.time() - t0:.0f}s")
    return {"result": res, "table": table, "findings": found}


def findings(conditions: dict, layer: int, st: dict) -> list[Finding]:
    out = []
    for c, what in (("baseline_harmful", "harmful"), ("baseline_harmless", "harmless")):
        r = conditions[c]
        out.append(Finding(NAME, f"refusal rate, unsteered, held-out {what} prompts (Wilson)",
                           r["rate"], r["low"], r["high"], str(r["n"]), "-",
                           "baseline", headline=what == "harmful"))
    for c, what, direction in (("ablate_harmful", "direction ablated at every layer, harmful",
                                "drop"),
                               ("add_harmless", f"direction added at layer {layer}, harmless",
                                "rise")):
        r = conditions[c]
        rr = r["random_rates"]
        sig = r["mcnemar_p"] < 0.05 and r["p_random"] < 0.05
        verdict = (f"{r['baseline_rate']:.2f} -> {r['rate']:.2f}; McNemar p={r['mcnemar_p']:.2g} "
                   f"({r['refused_to_complied']} refusals lost, {r['complied_to_refused']} gained); "
                   + (f"significant {direction}, beyond the random band" if sig else
                      "null or not beyond the random band"))
        out.append(Finding(NAME, f"refusal rate, {what} prompts (Wilson)", r["rate"], r["low"],
                           r["high"], str(r["n"]),
                           f"{len(rr)} random: rates {min(rr):.2f}–{max(rr):.2f}, "
                           f"p_random={r['p_random']:.2g}", verdict, headline=True))
    return out


if __name__ == "__main__":
    main()
