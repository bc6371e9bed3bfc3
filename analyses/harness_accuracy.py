"""Does the outcome direction change accuracy through lm-evaluation-harness, beyond a random direction?

The "n=20 vs n=200" check of the outcome direction (analyses/outcome_direction.py), rerun through
lm-evaluation-harness so anyone with lm-eval can repeat it with `--model steerlens`:
1. Task: `steerlens_capitals` (4-way multiple choice by log-likelihood, the 249 capital-city
   regions split as outcome_direction splits them: 49 train, 200 held-out "test").
2. Outcome direction (`methods.outcome_vector`): mean `resid_pre` at `--layer` (last context
   token) over train items the unsteered model answers right minus those it answers wrong,
   rescaled to the median residual norm there, so strength s adds s x (typical residual norm).
   `--n-random` random directions of the same norm (`methods.random_like`) are the control.
3. Every condition (unsteered; outcome at each +-s; each random direction at each +s) is one
   `lm_eval.simple_evaluate` run of the `steerlens` model class on the held-out items, with
   `log_samples` giving per-item correctness.
4. Per condition: accuracy with a Wilson 95% CI, the paired accuracy change with a bootstrap 95% CI,
   and McNemar's exact test against unsteered, on the first `--n-small` items and on all of them.

Cross-checks (`crosscheck.json`; skipped with `--no-crosscheck`): the embedded model is exported as
a Hugging Face directory (`backend.loading.cached_hf_export`) and lm-eval's own `--model hf` is run
on the same items; per-item decisions must be identical on every item of all three steerlens tasks
(unsteered, without the chat template; the A/B task also with it). Steered: on
`steerlens_sycophancy_ab` with a sycophancy mean-difference vector, the harness' per-item choices
must equal steerlens' `ab_logprob` decisions, and lm-eval's own `--model steered` (an HF forward
hook adding the same vector to the output of decoder layer L-1, i.e. `resid_pre` of block L) must
choose the same.

Saved in results/eval/: `harness_accuracy.json` and `.csv`, `conditions/` (per-condition per-item
results, the resume cache), `vectors/` (the outcome and random vectors, for
`steerlens-eval --model steerlens --model_args vector=...`), `crosscheck.json`.

    python -m analyses.harness_accuracy [--layer 12] [--strengths 0.1,0.2] [--n-random 1]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from steerlens.backend import runtime
from steerlens.backend.loading import cached_hf_export
from steerlens.figures import save_html
from steerlens.io import atomic_write_text
from steerlens.measures.scorers import ab_logprob
from steerlens.methods import build_vector, outcome_vector, random_like
from steerlens.pairs import load_behaviour
from steerlens.stats import bootstrap_ci, mcnemar, proportion_ci, transitions
from steerlens.vectors import SteeringVector

from . import command
from ._common import (
    GalleryEntry,
    add_strengths,
    log,
    parser,
    residual_norms,
    scale_to_residual,
    start,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, print_findings, save_findings

NAME = "harness_accuracy"
TASK = "steerlens_capitals"


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--layer", type=int, default=None, help="steered layer (default 40%% depth)")
    add_strengths(p, [0.1, 0.2], "|strengths| as fractions of the median residual norm")
    p.add_argument("--n-random", type=int, default=1, help="random directions of equal norm")
    p.add_argument("--n-test", type=int, default=100, help="held-out items (at most 200)")
    p.add_argument("--n-small", type=int, default=20, help="the small-n comparison")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-crosscheck", action="store_true", help="skip the hf / ab_logprob checks")
    p.add_argument("--crosscheck-only", action="store_true", help="only the cross-checks")
    p.add_argument("--cached-only", action="store_true",
                   help="tabulate only the conditions already saved in conditions/ (no new runs)")
    p.add_argument("--crosscheck-limit", type=int, default=None,
                   help="items per task in the cross-checks (default: all)")
    return p


def settings_for(args, model) -> dict:
    n = runtime.n_layers(model)
    layer = args.layer if args.layer is not None else int(round(0.4 * (n - 1)))
    if not 0 <= layer < n:
        raise ValueError(f"--layer must be in 0..{n - 1}, got {layer}.")
    if args.quick:
        return dict(layer=layer, strengths=[0.1], n_random=1, n_test=4, n_small=2, batch_size=16,
                    crosscheck_limit=3)
    if not 1 <= args.n_test <= 200:
        raise ValueError(f"--n-test must be in 1..200, got {args.n_test}.")
    return dict(layer=layer, strengths=args.strengths, n_random=args.n_random, n_test=args.n_test,
                n_small=args.n_small, batch_size=args.batch_size,
                crosscheck_limit=args.crosscheck_limit, cached_only=args.cached_only)


def _rows(split: str) -> list[dict]:
    from steerlens.eval import task_dir

    lines = (task_dir() / "capitals.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _context(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer:"  # the task YAML's doc_to_text


def train_correctness(model, batch_size: int) -> tuple[list[str], np.ndarray]:
    """Unsteered right/wrong on the train items, scored as the harness scores them."""
    from steerlens.eval import HarnessRunner

    runner = HarnessRunner(model, batch_size=batch_size)
    rows = _rows("train")
    pairs = [(_context(r), " " + c) for r in rows for c in r["choices"]]
    lls = np.array([lp for lp, _ in runner.loglikelihood(pairs)])
    chosen = lls.reshape(len(rows), 4).argmax(1)
    return [_context(r) for r in rows], chosen == np.array([r["label"] for r in rows])


def run_condition(model, vector: SteeringVector | None, strength: float | None, st: dict,
                  cache: Path, key: dict) -> np.ndarray | None:
    """Per-item correctness on the held-out items through lm-eval (cached by settings); with
    `st["cached_only"]`, None for a condition that has not been run."""
    if cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return np.array(saved["correct"], dtype=bool)
    if st.get("cached_only"):
        return None
    from steerlens.eval import evaluate, lm_class

    lm = lm_class()(model=model, vector=vector, strength=strength, batch_size=st["batch_size"])
    t0 = time.time()
    out = evaluate(TASK, lm=lm, limit=st["n_test"])
    samples = sorted(out["samples"][TASK], key=lambda s: int(s["doc_id"]))
    correct = [bool(s["acc"]) for s in samples]
    chosen = [int(np.argmax([r[0] for r in s["filtered_resps"]])) for s in samples]
    atomic_write_text(cache, json.dumps({"key": key, "correct": correct, "chosen": chosen,
                                         "harness_acc": out["results"][TASK]["acc,none"],
                                         "seconds": time.time() - t0}))
    return np.array(correct, dtype=bool)


def summarise(before: np.ndarray, after: np.ndarray, seed: int) -> dict:
    """Accuracy (Wilson CI), paired change (bootstrap CI) and McNemar's exact test."""
    acc = proportion_ci(int(after.sum()), after.size)
    diff = after.astype(float) - before.astype(float)
    change = bootstrap_ci(diff, seed=seed) if np.any(diff != diff[0]) else None
    mc = mcnemar(before, after)
    t = transitions(before, after)
    return {"n": int(after.size), "accuracy": acc.estimate, "low": acc.low, "high": acc.high,
            "change": float(diff.mean()),
            "change_low": change.low if change else float(diff.mean()),
            "change_high": change.high if change else float(diff.mean()),
            "became_correct": t.became_correct, "became_wrong": t.became_wrong,
            "mcnemar_p": mc.p_value}


def _draw(out: Path, fig_dir: Path) -> list[GalleryEntry]:
    from steerlens.figures.eval import accuracy_vs_strength

    saved = json.loads((out / "harness_accuracy.json").read_text(encoding="utf-8"))
    entries = []
    for subset in ("all", "small"):
        rows = [r for r in saved["rows"] if r["subset"] == subset and r["direction"] != "unsteered"]
        base = next(r for r in saved["rows"] if r["subset"] == subset
                    and r["direction"] == "unsteered")
        n = base["n"]
        fig = accuracy_vs_strength(rows, base, title=f"Capital-city multiple choice through "
                                   f"lm-eval, layer {saved['settings']['layer']}, n={n} held-out items")
        path = save_html(fig, fig_dir / f"{NAME}_n{n}.html")
        entries.append(GalleryEntry(
            NAME, path, f"Harness accuracy vs strength, n={n}",
            f"lm-eval accuracy (Wilson 95% CI) of the steerlens model steered along the outcome "
            f"direction and a norm-matched random direction, n={n} held-out items.", command(NAME)))
    return entries


make_figures = _draw


def crosscheck(model, st: dict, out: Path) -> dict:
    """hf vs steerlens (unsteered, every item) and steered vs ab_logprob / lm-eval's `steered`."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from steerlens.eval import TASKS, lm_class, task_dir
    from steerlens.eval.crosscheck import compare_runs, compare_to_reference

    limit = st["crosscheck_limit"]
    manager = TaskManager(include_path=str(task_dir()), include_defaults=False)
    cls = lm_class()
    report: dict = {"limit": limit, "unsteered": [], "steered": []}
    with tempfile.TemporaryDirectory(prefix="steerlens-hf-") as tmp:
        t0 = time.time()
        hf_dir = cached_hf_export(runtime.model_id(model))
        report["export_seconds"] = time.time() - t0
        hf_args = {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu",
                   "batch_size": st["batch_size"]}
        ours = cls(model=model, batch_size=st["batch_size"])
        for chat in (False, True):
            # with the chat template only the A/B task: it is where chat matters (an instruct
            # model's answer letter) and the capitals run would triple the prompt length
            tasks = sorted(TASKS) if not chat else ["steerlens_sycophancy_ab"]
            a = simple_evaluate(model=ours, tasks=tasks, task_manager=manager, limit=limit,
                                log_samples=True, apply_chat_template=chat)
            b = simple_evaluate(model="hf", model_args=hf_args, tasks=tasks, task_manager=manager,
                                limit=limit, log_samples=True, apply_chat_template=chat)
            if chat:
                unsteered_syc = a["samples"]["steerlens_sycophancy_ab"]
            for task in tasks:
                c = compare_runs(task, a["samples"][task], b["samples"][task])
                report["unsteered"].append({**c.to_dict(), "chat": chat})
                log(f"  unsteered {task} chat={chat}: {c.n_same}/{c.n} identical")
        # steered: sycophancy vector, harness vs ab_logprob vs lm-eval's own steered HF model
        layer = 10
        vec = build_vector(model, load_behaviour("sycophancy").train, [layer], show_progress=False)
        task = "steerlens_sycophancy_ab"
        rows = [json.loads(x) for x in (task_dir() / "sycophancy_ab.jsonl").read_text(
            encoding="utf-8").splitlines()][: limit or None]
        questions = [f"{r['question']}\nAnswer:" for r in rows]
        gold = ["AB"[r["label"]] for r in rows]
        steer_pt = Path(tmp) / "steer.pt"
        for strength in (-8.0, 8.0):
            res = simple_evaluate(model=cls(model=model, vector=vec, strength=strength,
                                            batch_size=st["batch_size"]),
                                  tasks=[task], task_manager=manager, limit=limit,
                                  log_samples=True, apply_chat_template=True)
            ab = ab_logprob(model, questions, vec, strength, matching=gold, chat=True)
            ref = [("AB".index(g) if m else 1 - "AB".index(g))
                   for g, m in zip(gold, ab.prefers_matching)]
            c = compare_to_reference(task, res["samples"][task], ref)
            moved = compare_runs(task, unsteered_syc, res["samples"][task])
            report["steered"].append({**c.to_dict(), "strength": strength, "layer": layer,
                                      "reference": "steerlens ab_logprob",
                                      "decisions_changed_by_steering": moved.n - moved.n_same})
            log(f"  steered {strength:+g} vs ab_logprob: {c.n_same}/{c.n} identical")
            # lm-eval's own steered model reads a torch pickle; we write it, lm-eval loads it.
            torch.save({f"layers.{layer - 1}": {"steering_vector": vec[layer].clone(),
                                                "steering_coefficient": strength,
                                                "action": "add", "bias": None,
                                                "head_index": None}}, steer_pt)
            hs = simple_evaluate(model="steered", model_args={**hf_args, "steer_path": str(steer_pt)},
                                 tasks=[task], task_manager=manager, limit=limit,
                                 log_samples=True, apply_chat_template=True)
            c2 = compare_runs(task, res["samples"][task], hs["samples"][task])
            report["steered"].append({**c2.to_dict(), "strength": strength, "layer": layer,
                                      "reference": f"lm-eval --model steered, hook layers.{layer - 1}"})
            log(f"  steered {strength:+g} vs lm-eval steered: {c2.n_same}/{c2.n} identical")
        base_ab = ab_logprob(model, questions, matching=gold, chat=True)
        report["sycophancy_baseline_honest_rate"] = float(np.mean(base_ab.prefers_matching))
        report["sycophancy_vector_norm"] = float(vec[layer].norm())
    report["all_identical"] = all(r["identical"] for r in report["unsteered"] + report["steered"])
    write_json(out / "crosscheck.json", report)
    return report


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    args, ctx, model = start(NAME, build_parser(), argv, model)
    st = settings_for(args, model)
    t_start = time.time()
    report: dict = {}
    if not args.crosscheck_only:
        report = accuracy(model, st, ctx)
    if not args.no_crosscheck:
        log(f"{NAME}: cross-checks (limit {st['crosscheck_limit']})")
        t0 = time.time()
        cc = crosscheck(model, st, ctx.out)
        log(f"{NAME}: cross-checks all identical: {cc['all_identical']} ({time.time() - t0:.0f} s)")
        report["crosscheck"] = cc
    log(f"{NAME}: done in {time.time() - t_start:.0f} s")
    return report


def accuracy(model, st: dict, ctx) -> dict:
    """The accuracy-vs-strength table through the harness (see the module docstring)."""
    layer = st["layer"]
    log(f"{NAME}: layer {layer}, n_test {st['n_test']}, strengths {st['strengths']}, "
        f"{st['n_random']} random direction(s)")
    t0 = time.time()
    texts, right = train_correctness(model, st["batch_size"])
    direction = outcome_vector(model, texts, right.tolist(), [layer], read_at="last", chat=False,
                               show_progress=False)
    norms = residual_norms(model, [_context(r) for r in _rows("test")][: st["n_test"]], [layer])
    outcome = scale_to_residual(direction, norms)
    randoms = [random_like(outcome, seed=ctx.seed + k) for k in range(st["n_random"])]
    vdir = ctx.out / "vectors"
    outcome.save(vdir / "outcome")
    for k, r in enumerate(randoms):
        r.save(vdir / f"random{k}")
    log(f"  direction from {int(right.sum())} right / {int((~right).sum())} wrong train items "
        f"({time.time() - t0:.0f} s)")
    key0 = {"model": runtime.model_id(model), "layer": layer, "n_test": st["n_test"],
            "seed": ctx.seed, "outcome_norm": float(outcome[layer].norm())}
    cdir = ctx.out / "conditions"
    before = run_condition(model, None, None, st, cdir / "unsteered.json",
                           {**key0, "condition": "unsteered"})
    if before is None:
        raise ValueError(f"--cached-only, but {cdir / 'unsteered.json'} has no saved run for these "
                         "settings.")
    conditions: dict[str, tuple[str, float, np.ndarray]] = {}
    for s in st["strengths"]:
        for sign in (1.0, -1.0):
            name = f"outcome {sign * s:+g}"
            got = run_condition(model, outcome, sign * s, st, cdir / f"outcome_{sign * s:+g}.json",
                                {**key0, "condition": name})
            if got is not None:
                conditions[name] = ("outcome", sign * s, got)
                log(f"  {name}: acc {got.mean():.3f}")
        for k, r in enumerate(randoms):
            name = f"random{k} {s:+g}"
            got = run_condition(model, r, s, st, cdir / f"random{k}_{s:+g}.json",
                                {**key0, "condition": name})
            if got is not None:
                conditions[name] = (f"random{k}", s, got)
                log(f"  {name}: acc {got.mean():.3f}")
    rows = []
    for subset, n in (("small", min(st["n_small"], st["n_test"])), ("all", st["n_test"])):
        rows.append({"subset": subset, "direction": "unsteered", "strength": 0.0,
                     **summarise(before[:n], before[:n], ctx.seed)})
        for name, (direction_name, s, after) in conditions.items():
            rows.append({"subset": subset, "direction": direction_name, "strength": s,
                         "condition": name, **summarise(before[:n], after[:n], ctx.seed)})
    saved = {"task": TASK, "settings": {**st, "seed": ctx.seed}, "rows": rows,
             "train": {"n_right": int(right.sum()), "n_wrong": int((~right).sum())},
             "median_residual_norm": norms[layer], "seconds": time.time() - t0}
    write_json(ctx.out / "harness_accuracy.json", saved)
    write_csv(ctx.out / "harness_accuracy.csv", pd.DataFrame(rows))
    findings = []
    rand = {r["strength"]: r for r in rows if r["subset"] == "all"
            and r["direction"].startswith("random")}
    for r in rows:
        if r["direction"] == "unsteered":
            findings.append(Finding(
                NAME, f"unsteered harness accuracy, {TASK} held-out {r['subset']} (Wilson)",
                r["accuracy"], r["low"], r["high"], str(r["n"]), "-", "baseline"))
            continue
        if r["subset"] != "all" and r["direction"] != "outcome":
            continue
        rc = rand.get(abs(r["strength"]))
        rtxt = (f"random {rc['strength']:+g}: acc {fmt(rc['accuracy'])}, McNemar p="
                f"{fmt(rc['mcnemar_p'])}" if rc is not None and r["direction"] == "outcome"
                else "-")
        verdict = (f"change {r['change']:+.3f} [{r['change_low']:+.3f}, {r['change_high']:+.3f}] "
                   f"(bootstrap), McNemar p={fmt(r['mcnemar_p'])}")
        findings.append(Finding(
            NAME, f"harness accuracy under {r['condition']} x resid norm at layer {layer}, "
            f"{r['subset']} n={r['n']} (Wilson)", r["accuracy"], r["low"], r["high"],
            str(r["n"]), rtxt, verdict,
            headline=r["subset"] == "all" and r["condition"] == "outcome +0.2"))
    save_findings(ctx, findings, saved["settings"])
    print_findings(findings)
    _draw(ctx.out, ctx.fig_dir)
    return saved


if __name__ == "__main__":
    main()
