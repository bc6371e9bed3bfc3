"""Does a "correct-minus-wrong" direction make the model right more often? Small n vs larger n.

The experiment, in the style of outcome-direction studies on GPT-2:
1. Task: capital cities ("What is the capital of Peru?"), 249 programmatically listed regions
   (countries, US states, Canadian and Australian states/provinces/territories; `_capitals.py`),
   shuffled with a fixed seed into a train split and a held-out split. SmolLM2-135M-Instruct gets
   roughly 40% right (greedy, chat template); an answer is right when it names an accepted capital
   (whole word, region name removed first).
2. Baseline greedy answers for every item.
3. The outcome direction (`methods.outcome_vector`): mean residual (resid_pre at `--layer`, last
   prompt token, i.e. where the answer starts) over train items answered right minus over items
   answered wrong. It is rescaled to the median residual norm at that layer, so strength s adds
   s x (typical residual norm).
4. Held-out items answered again under +s and -s (positive = towards "correct"), and under
   `--n-random` norm-matched random directions (`methods.random_like`) at each s (a random
   direction's sign is itself random, so one set serves both signs).
5. Per condition: transitions (`stats.transitions`), McNemar's exact test (`stats.mcnemar`), a sign
   test on per-item change in correctness (`stats.sign_test`), accuracy with Wilson CIs, and the
   net gain set against the random directions (`stats.compare_to_random`). Everything is
   reported on the first 20 held-out items and on all of them, plus the spread of results over
   disjoint 20-item blocks, because small-n gains in this literature have vanished at larger n.

Generation is run condition by condition with `generate()` (no sweep: the sweep's perplexity pass
would double the cost and is not needed here); each condition is saved as it finishes, so a rerun
resumes.

Saved in results/outcome_direction/: every condition's answers (`generations/`, the resume cache),
`items.json` (the items, split and baseline answers), `direction.json`, `conditions.csv`,
`random_comparison.csv` and `blocks.csv`.

    python -m analyses.outcome_direction [--layer 12] [--strengths 0.1,0.2] [--n-random 5]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.stats import random_control_plot, transition_bars
from steerlens.generate import generate
from steerlens.io import atomic_write_text
from steerlens.methods import outcome_vector, random_like
from steerlens.progress import progress
from steerlens.stats import compare_to_random, mcnemar, proportion_ci, sign_test, transitions

from . import command
from ._capitals import Item, split_items
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

NAME = "outcome_direction"


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--layer", type=int, default=None, help="steered layer (default 40%% depth)")
    add_strengths(p, [0.1, 0.2], "|strengths| as fractions of the median residual norm")
    p.add_argument("--n-random", type=int, default=5)
    p.add_argument("--n-train", type=int, default=49, help="items for the direction")
    p.add_argument("--n-test", type=int, default=200, help="held-out items (max 249 - n_train)")
    p.add_argument("--n-small", type=int, default=20, help="the small-n comparison")
    p.add_argument("--max-new-tokens", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=64)
    return p


def settings_for(args, model) -> dict:
    n = runtime.n_layers(model)
    layer = args.layer if args.layer is not None else int(round(0.4 * (n - 1)))
    if not 0 <= layer < n:
        raise ValueError(f"--layer must be in 0..{n - 1}, got {layer}.")
    if args.quick:
        return dict(layer=layer, strengths=[0.5], n_random=1, n_train=16, n_test=4, n_small=2,
                    max_new_tokens=12, batch_size=32)
    return dict(layer=layer, strengths=args.strengths, n_random=args.n_random, n_train=args.n_train,
                n_test=args.n_test, n_small=args.n_small, max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size)


def answer(model, items: list[Item], steering, strength, st, cache: Path, key: dict,
           show: bool) -> list[str]:
    """Greedy answers (cached as JSON keyed by the settings that determine them)."""
    if cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["answers"]
    out: list[str] = []
    bs = st["batch_size"]
    for i in progress(range(0, len(items), bs), desc=cache.stem, enabled=show):
        chunk = [it.question for it in items[i : i + bs]]
        gen = generate(model, chunk, steering, strength=strength,
                       max_new_tokens=st["max_new_tokens"])
        out.extend(gen.texts)
    atomic_write_text(cache, json.dumps({"key": key, "answers": out}, ensure_ascii=False))
    return out


def chat_texts(model, questions: list[str]) -> list[str]:
    """Each question rendered with the chat template (special tokens kept), as generate() sees it."""
    chat = runtime.is_instruct(model) and runtime.has_chat_template(model)
    return [runtime.decode(model, runtime.prompt_ids(model, q, chat), skip_special=False)
            for q in questions]


def evaluate(before: np.ndarray, after: np.ndarray) -> dict:
    t = transitions(before, after)
    mc = mcnemar(before, after)
    sg = sign_test(after.astype(float), before.astype(float))
    acc_b = proportion_ci(int(before.sum()), before.size)
    acc_a = proportion_ci(int(after.sum()), after.size)
    return {"n": t.n, **t.as_dict(), "net": t.net, "acc_before": acc_b.estimate,
            "acc_after": acc_a.estimate, "acc_after_low": acc_a.low, "acc_after_high": acc_a.high,
            "mcnemar_p": mc.p_value, "sign_p": sg.p_value, "n_pos": sg.n_pos, "n_neg": sg.n_neg}


def saved_outcomes(out: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray], dict]:
    """Reload a finished run: settings, held-out correctness before, and after per condition."""
    st = json.loads((out / "findings.json").read_text(encoding="utf-8"))["settings"]
    rows = [r for r in json.loads((out / "items.json").read_text(encoding="utf-8"))
            if r["split"] == "test"]
    test = [Item(r["region"], tuple(r["answers"]), r["question"]) for r in rows]
    before = np.array([r["baseline_correct"] for r in rows])
    after, strength = {}, {}
    names = [f"outcome {sign}{a:g}" for a in st["strengths"] for sign in "+-"]  # main()'s order
    names += [f"random{k} {a:g}" for a in st["strengths"] for k in range(st["n_random"])]
    for cname in names:
        saved = json.loads((out / "generations" / f"{cname.replace(' ', '_')}.json")
                           .read_text(encoding="utf-8"))
        after[cname] = np.array([it.is_correct(ans) for it, ans in zip(test, saved["answers"])])
        strength[cname] = float(saved["key"]["strength"])
    return st, before, after, strength


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Draw the transition and random-control figures from the saved answers (no model)."""
    st, c_test, after, _ = saved_outcomes(out)
    layer, n_test = st["layer"], len(c_test)
    entries = []
    for n in sorted({min(st["n_small"], n_test), n_test}):
        tabs = {c: transitions(c_test[:n], after[c][:n]) for c in after}
        path = save_html(transition_bars(tabs, title=f"Capital-city answers before vs after "
                                         f"steering at layer {layer}, first {n} held-out items"),
                         fig_dir / f"{NAME}_transitions_n{n}.html")
        entries.append(GalleryEntry(
            NAME, path, f"Answer transitions, first {n} items",
            f"Wrong->right / right->wrong answers per condition (outcome direction at "
            f"+-strength, random directions), n={n} held-out capital-city questions.",
            results_command))
    for a in st["strengths"]:
        names = [f"random{k} {a:g}" for k in range(st["n_random"])]
        cname = f"outcome +{a:g}"
        cr = compare_to_random(after[cname].astype(float) - c_test,
                               [after[c].astype(float) - c_test for c in names])
        path = save_html(random_control_plot(cr, x_title="accuracy gain (after - before)",
                                             title=f"{cname}: accuracy gain vs {len(names)} random "
                                             f"directions of equal norm (n={n_test} held-out items)"),
                         fig_dir / f"{NAME}_random_control_{a:g}.html")
        entries.append(GalleryEntry(
            NAME, path, f"{cname} vs random directions",
            f"Accuracy gain of the outcome direction at +{a:g} x residual norm against "
            f"{len(names)} norm-matched random directions (n={n_test} items).", results_command))
    return entries


make_figures = draw  # the gallery hook: one saved run in results_dir


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    args, ctx, model = start(NAME, build_parser(), argv, model)
    st = settings_for(args, model)
    train, rest = split_items(st["n_train"], seed=ctx.seed)
    if st["n_test"] > len(rest):
        raise ValueError(f"--n-test can be at most {len(rest)} with --n-train {st['n_train']}.")
    test = rest[: st["n_test"]]
    layer = st["layer"]
    gdir = ctx.out / "generations"
    base_key = {"model": runtime.model_id(model), "seed": ctx.seed, "n_train": st["n_train"],
                "max_new_tokens": st["max_new_tokens"]}
    log(f"{NAME}: model {runtime.model_id(model)}, layer {layer}, train {len(train)}, "
        f"held-out {len(test)}, strengths {st['strengths']}, {st['n_random']} random directions")
    items = train + test
    base_answers = answer(model, items, None, None, st, gdir / "baseline.json",
                          {**base_key, "items": len(items)}, ctx.progress)
    correct = np.array([it.is_correct(a) for it, a in zip(items, base_answers)])
    c_train, c_test = correct[: len(train)], correct[len(train):]
    log(f"baseline accuracy: train {c_train.mean():.3f} (n={len(train)}), held-out "
        f"{c_test.mean():.3f} (n={len(test)})")
    texts = chat_texts(model, [it.question for it in train])
    vec = outcome_vector(model, texts, c_train.tolist(), [layer], chat=False,
                         show_progress=ctx.progress)
    norms = residual_norms(model, [it.question for it in train], [layer])
    unit = scale_to_residual(vec, norms)
    raw_rel = vec.norms[layer] / norms[layer]
    log(f"outcome vector: {vec.extra['n_right']} right / {vec.extra['n_wrong']} wrong train items; "
        f"norm {vec.norms[layer]:.3g} = {raw_rel:.3f} x median residual norm {norms[layer]:.3g}")
    conditions: dict[str, tuple] = {}
    for a in st["strengths"]:
        conditions[f"outcome +{a:g}"] = (unit, a)
        conditions[f"outcome -{a:g}"] = (unit, -a)
    rnd_for: dict[float, list[str]] = {}
    for a in st["strengths"]:
        for k in range(st["n_random"]):
            conditions[f"random{k} {a:g}"] = (random_like(unit, seed=ctx.seed + k), a)
            rnd_for.setdefault(a, []).append(f"random{k} {a:g}")
    answers: dict[str, list[str]] = {}
    for cname, (v, s) in conditions.items():
        key = {**base_key, "layer": layer, "strength": s, "cond": cname, "items": len(test),
               "vector_norm": v.norms[layer]}
        log(f"condition {cname}")
        answers[cname] = answer(model, test, v.layer(layer), s, st,
                                gdir / f"{cname.replace(' ', '_')}.json", key, ctx.progress)
    after = {c: np.array([it.is_correct(a) for it, a in zip(test, ans)])
             for c, ans in answers.items()}
    changed = {c: float(np.mean([a != b for a, b in zip(ans, base_answers[len(train):])]))
               for c, ans in answers.items()}
    rows = []
    sizes = sorted({min(st["n_small"], len(test)), len(test)})
    for n in sizes:
        for c in conditions:
            r = evaluate(c_test[:n], after[c][:n])
            r.update(condition=c, subset=f"first {n}", change_rate=float(np.mean(
                [a != b for a, b in zip(answers[c][:n], base_answers[len(train):][:n])])))
            rows.append(r)
    table = pd.DataFrame(rows)
    # random-direction comparison of the per-item gain (after - before) at the same |strength|
    cmp_rows = []
    for n in sizes:
        for c in conditions:
            ctrl = [after[r][:n].astype(float) - c_test[:n]
                    for r in rnd_for.get(abs(conditions[c][1]), [])]
            if c.startswith("random") or not ctrl:
                continue
            gain = after[c][:n].astype(float) - c_test[:n]
            alt = "greater" if conditions[c][1] > 0 else "less"
            cr = compare_to_random(gain, ctrl, alternative=alt)
            cmp_rows.append({"condition": c, "subset": f"first {n}", "n": n,
                             "gain": cr.real, "random_gains": list(cr.controls),
                             "p_random": cr.p_value, "beats_all": cr.beats_all, "alternative": alt})
    cmp = pd.DataFrame(cmp_rows)
    # spread over disjoint small blocks
    blocks = []
    nb = st["n_small"]
    for c in conditions:
        if c.startswith("random"):
            continue
        for b0 in range(0, len(test) - nb + 1, nb):
            r = evaluate(c_test[b0 : b0 + nb], after[c][b0 : b0 + nb])
            blocks.append({"condition": c, "block": b0 // nb, "net": r["net"],
                           "mcnemar_p": r["mcnemar_p"]})
    blocks = pd.DataFrame(blocks)
    write_csv(ctx.out / "conditions.csv", table)
    write_csv(ctx.out / "random_comparison.csv", cmp)
    write_csv(ctx.out / "blocks.csv", blocks)
    write_json(ctx.out / "items.json", [
        {"split": "train" if i < len(train) else "test", "region": it.region,
         "question": it.question, "answers": list(it.answers), "baseline": base_answers[i],
         "baseline_correct": bool(correct[i])} for i, it in enumerate(items)])
    write_json(ctx.out / "direction.json", {"layer": layer, "norm": vec.norms[layer],
                                            "median_residual_norm": norms[layer],
                                            "rel_norm": raw_rel, **dict(vec.extra),
                                            "change_rate": changed})
    found = findings(table, cmp, blocks, sizes, st, c_test, changed, rnd_for)
    settings = {**st, "model": runtime.model_id(model), "task": "capital cities",
                "train_accuracy": float(c_train.mean()), "test_accuracy": float(c_test.mean()),
                "n_right_train": vec.extra["n_right"], "n_wrong_train": vec.extra["n_wrong"],
                "direction_rel_norm": raw_rel}
    notes = [
        f"Layer {layer} and strengths {st['strengths']} (x median residual norm) were fixed before "
        "looking at held-out results; the small-n rows are the first items of the same held-out "
        "list, and the block rows split it into disjoint blocks.",
        "Correct = an accepted capital named in the first "
        f"{st['max_new_tokens']} greedy tokens after removing the region's own name (lenient: a "
        "right name anywhere in the answer counts).",
        f"Random controls: {st['n_random']} norm-matched random directions at each strength; "
        "with k controls the smallest attainable p_random is 1/(k+1).",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 170, "display.max_rows", 100):
        print(table[["subset", "condition", "n", "acc_before", "acc_after", "became_correct",
                     "became_wrong", "net", "mcnemar_p", "sign_p", "change_rate"]]
              .round(3).to_string(index=False))
        if len(cmp):
            print(cmp.round(3).to_string(index=False))
    print_findings(found)
    return {"table": table, "random": cmp, "blocks": blocks, "findings": found}


def findings(table, cmp, blocks, sizes, st, c_test, changed, rnd_for) -> list[Finding]:
    out = []
    for n in sizes:
        acc = proportion_ci(int(c_test[:n].sum()), n)
        out.append(Finding(NAME, f"baseline accuracy, held-out first {n} (Wilson)", acc.estimate,
                           acc.low, acc.high, str(n), "-", "task in the 30-70% range"
                           if 0.3 <= acc.estimate <= 0.7 else "outside 30-70%", headline=True))
        sub = table[table["subset"] == f"first {n}"]
        for _, r in sub.iterrows():
            if r["condition"].startswith("random"):
                continue
            c = cmp[(cmp["condition"] == r["condition"]) & (cmp["subset"] == f"first {n}")]
            rtxt = (f"random gains {', '.join(f'{g:+.3f}' for g in c['random_gains'].iloc[0])}; "
                    f"p_random={c['p_random'].iloc[0]:.2g}") if len(c) else "-"
            sig = r["mcnemar_p"] < 0.05
            verdict = (f"net {int(r['net']):+d} ({int(r['became_correct'])} gained, "
                       f"{int(r['became_wrong'])} lost); McNemar p={r['mcnemar_p']:.2g}, sign p="
                       f"{r['sign_p']:.2g}: "
                       + ((f"significant {'gain' if r['net'] > 0 else 'loss'}") if sig
                          else "null (not significant)"))
            out.append(Finding(NAME, f"accuracy under {r['condition']} x resid norm at layer "
                               f"{st['layer']}, first {n} (Wilson)", r["acc_after"],
                               r["acc_after_low"], r["acc_after_high"], str(n), rtxt, verdict,
                               headline=r["condition"].startswith("outcome +")))
    if len(blocks):
        for c, g in blocks.groupby("condition", sort=False):
            pos = int((g["net"] > 0).sum())
            sig = int((g["mcnemar_p"] < 0.05).sum())
            out.append(Finding(
                NAME, f"{c}: net gain over {len(g)} disjoint blocks of {st['n_small']} "
                f"(value = mean net; range in CI columns)", float(g["net"].mean()),
                float(g["net"].min()), float(g["net"].max()), f"{len(g)} x {st['n_small']}",
                "-", f"{pos}/{len(g)} blocks positive, {sig}/{len(g)} significant at 0.05",
                headline=c == f"outcome +{min(st['strengths']):g}"))
    n = len(c_test)
    for a, names in rnd_for.items():
        rnd_change = [changed[r] for r in names]
        for c in (f"outcome +{a:g}", f"outcome -{a:g}"):
            k = int(round(changed[c] * n))
            ci = proportion_ci(k, n)
            out.append(Finding(NAME, f"answer text changed vs baseline under {c} (Wilson)",
                               ci.estimate, ci.low, ci.high, str(n),
                               f"random {fmt(min(rnd_change))}-{fmt(max(rnd_change))}",
                               "within the random range" if min(rnd_change) <= changed[c]
                               <= max(rnd_change) else "outside the random range"))
    return out


if __name__ == "__main__":
    main()
