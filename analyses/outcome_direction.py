"""Does a "correct-minus-wrong" direction make the model right more often? Small n vs larger n.

The experiment, in the style of outcome-direction studies on GPT-2:
1. Task: capital cities ("What is the capital of Peru?"), 249 programmatically listed regions
   (countries, US states, Canadian and Australian states/provinces/territories; `_capitals.py`),
   shuffled with a fixed seed. SmolLM2-135M-Instruct gets roughly 43% right (greedy, chat
   template); an answer is right when it names an accepted capital (whole word, region name
   removed first).
2. Baseline greedy answers for every item of the pool (`--pool`, default all 249).
3. A correct/wrong-balanced train split, enforced (`balanced_split`): the first `--n-per-class`
   items answered right and as many answered wrong, chosen deliberately rather than taken as the
   natural split; the held-out items are the next `--n-test` of the shuffled rest.
4. The outcome direction (`methods.outcome_vector`): mean residual (resid_pre at `--layer`, last
   prompt token, i.e. where the answer starts) over the right train items minus over the wrong
   ones, rescaled to the median residual norm at that layer, so strength s adds s x (typical
   residual norm).
5. Held-out items answered again at every strength of the full sweep (13 values, -0.3 to +0.3
   step 0.05; positive = towards "correct"), and under norm-matched random directions
   (`methods.random_like`): `--n-random` (default 20) at the |strengths| the verdict rests on
   (`--control-strengths`, default 0.1 and 0.2), `--n-random-other` elsewhere (a random
   direction's sign is itself random, so the controls at |s| serve +s and -s).
6. Per strength: the 2x2 transition matrix before -> after (correct->correct, correct->wrong,
   wrong->correct, wrong->wrong; `transitions.csv`), McNemar's exact test, a sign test, accuracy
   with Wilson CIs, the accuracy gain with a bootstrap CI and its empirical p against the random
   directions ((1 + #random at least as extreme) / (1 + k), `sweep.control.empirical_p`).
   Also reported on the first 20 held-out items and over disjoint 20-item blocks, because
   small-n gains in this literature have vanished at larger n.

Generation is run condition by condition with `generate()` (no sweep: the sweep's perplexity pass
would double the cost and is not needed here); each condition is saved as it finishes, so a rerun
resumes; `--shard I/N` generates a share of the conditions in another process, and `--partial`
reports a cut-short run on the random directions it finished (the k is in every row).

Saved in results/outcome_direction/: every condition's answers (`generations/`, the resume cache),
`items.json` (the items, split and baseline answers), `direction.json`, `conditions.csv`,
`transitions.csv`, `random_comparison.csv` and `blocks.csv`.

    python -m analyses.outcome_direction [--layer 12] [--n-test 100] [--n-random 20]
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.controls import strength_band_curve, transition_matrices
from steerlens.figures.stats import random_control_plot, transition_bars
from steerlens.generate import generate
from steerlens.io import atomic_write_text
from steerlens.methods import outcome_vector, random_like
from steerlens.progress import progress
from steerlens.stats import (
    bootstrap_ci,
    compare_to_random,
    mcnemar,
    proportion_ci,
    sign_test,
    transitions,
)
from steerlens.sweep.control import control_verdict, empirical_p

from . import command
from ._capitals import Item, all_items
from ._common import (
    GalleryEntry,
    add_list,
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


STRENGTHS = [round(-0.3 + 0.05 * i, 2) for i in range(13)]  # -0.3 .. +0.3 step 0.05


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--layer", type=int, default=None, help="steered layer (default 40%% depth)")
    add_strengths(p, STRENGTHS, "signed strengths as fractions of the median residual norm "
                  "(0 = the unsteered baseline)")
    add_list(p, "--control-strengths", float, [0.1, 0.2],
             "|strengths| the verdict rests on: --n-random random directions there")
    p.add_argument("--n-random", type=int, default=20,
                   help="random directions at each --control-strengths value")
    p.add_argument("--n-random-other", type=int, default=0,
                   help="random directions at the other |strengths|")
    p.add_argument("--n-per-class", type=int, default=24,
                   help="train items answered right and (as many) answered wrong")
    p.add_argument("--pool", type=int, default=None,
                   help="items answered at baseline to draw the split from (default all 249)")
    p.add_argument("--n-test", type=int, default=100, help="held-out items")
    p.add_argument("--n-small", type=int, default=20, help="the small-n comparison")
    p.add_argument("--max-new-tokens", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard", default=None,
                   help="I/N: only generate (and cache) every N-th condition starting at I, then "
                   "stop, e.g. in a second process; a later full run reuses the answers")
    p.add_argument("--partial", action="store_true",
                   help="generate no missing conditions: report the strengths and random directions "
                   "that are cached (for a run cut short; n and k are in every row)")
    return p


def settings_for(args, model) -> dict:
    n = runtime.n_layers(model)
    layer = args.layer if args.layer is not None else int(round(0.4 * (n - 1)))
    if not 0 <= layer < n:
        raise ValueError(f"--layer must be in 0..{n - 1}, got {layer}.")
    if args.quick:
        return dict(layer=layer, strengths=[-0.5, 0.0, 0.5], control_strengths=[0.5], n_random=1,
                    n_random_other=0, n_per_class=4, pool=24, n_test=4, n_small=2,
                    max_new_tokens=12, batch_size=32)
    return dict(layer=layer, strengths=sorted(args.strengths),
                control_strengths=sorted(abs(x) for x in args.control_strengths),
                n_random=args.n_random, n_random_other=args.n_random_other,
                n_per_class=args.n_per_class, pool=args.pool or len(all_items()),
                n_test=args.n_test, n_small=args.n_small, max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size)


def balanced_split(correct, n_per_class: int, n_test: int) -> tuple[list[int], list[int]]:
    """Indices of a correct/wrong-balanced train split and of the held-out items.

    The train split is chosen deliberately, not drawn: the first `n_per_class` items answered
    right and the first `n_per_class` answered wrong (in the given, already shuffled order), so
    the direction's two means rest on equal numbers whatever the model's accuracy. The held-out
    items are the first `n_test` of the rest, in order (their accuracy is the natural one).

    Args:
        correct (Sequence[bool]): baseline correctness per item, in shuffled order.
        n_per_class: train items per class.
        n_test: held-out items.

    Returns:
        (train indices: the right ones then the wrong ones, held-out indices).

    Raises:
        ValueError: if either class has fewer than `n_per_class` items, or fewer than `n_test`
            items remain.
    """
    c = np.asarray(correct, dtype=bool)
    right, wrong = np.flatnonzero(c), np.flatnonzero(~c)
    if n_per_class < 1 or len(right) < n_per_class or len(wrong) < n_per_class:
        raise ValueError(f"A balanced split needs {n_per_class} right and wrong answers each "
                         f"(n_per_class >= 1); the pool has {len(right)} right and {len(wrong)} "
                         "wrong. Lower --n-per-class or raise --pool.")
    train = [int(i) for i in right[:n_per_class]] + [int(i) for i in wrong[:n_per_class]]
    chosen = set(train)
    rest = [i for i in range(c.size) if i not in chosen]
    if not 1 <= n_test <= len(rest):
        raise ValueError(f"--n-test must be in 1..{len(rest)} with --n-per-class {n_per_class} "
                         f"and a pool of {c.size}, got {n_test}.")
    return train, rest[:n_test]


def transition_rows(before: np.ndarray, after: dict[str, np.ndarray], conds: dict) -> pd.DataFrame:
    """One row per condition: its signed strength, kind (outcome / random) and the 2x2 matrix."""
    rows = []
    for c, a in after.items():
        t = transitions(before, a)
        rows.append({"condition": c, "kind": "random" if c.startswith("random") else "outcome",
                     "strength": conds[c], "n": t.n, "correct_to_correct": t.stayed_correct,
                     "correct_to_wrong": t.became_wrong, "wrong_to_correct": t.became_correct,
                     "wrong_to_wrong": t.stayed_wrong})
    return pd.DataFrame(rows)


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


def condition_strengths(st: dict) -> dict[str, float]:
    """Condition name -> signed strength, in generation order: the outcome direction at every
    non-zero strength, then the random directions at the control |strengths| (n_random each),
    then at the other |strengths| (n_random_other each). A random direction's sign is itself
    random, so the controls at |s| serve both +s and -s."""
    strengths = st["strengths"]
    if "control_strengths" not in st:  # a run saved before the full sweep: +-|s|, k everywhere
        strengths = sorted({x for a in strengths for x in (a, -a)})
    out = {f"outcome {a:+g}": float(a) for a in strengths if a != 0}
    mags = sorted({round(abs(a), 6) for a in strengths if a != 0})
    controls = st.get("control_strengths", mags)
    ctrl = [a for a in mags if any(abs(a - c) < 1e-9 for c in controls)]
    for group, k_max in ((ctrl, st["n_random"]), ([a for a in mags if a not in ctrl],
                                                  st.get("n_random_other", 0))):
        for a in group:  # strength-major: the first control strength reaches k first
            for k in range(k_max):
                out[f"random{k} {a:g}"] = float(a)
    return out


def randoms_at(names, strength: float) -> list[str]:
    """The random-direction conditions at |strength|."""
    return [c for c in names if c.startswith("random") and c.endswith(f" {abs(strength):g}")]


def cache_file(gdir: Path, cname: str) -> Path:
    return gdir / f"{cname.replace(' ', '_')}.json"


def _cached(path: Path, key: dict) -> bool:
    """Whether `path` holds answers generated with exactly these settings."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key") == json.loads(
            json.dumps(key))
    except (OSError, ValueError):
        return False


def saved_outcomes(out: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray], dict]:
    """Reload a finished run: settings, held-out correctness before, after per condition (the
    conditions whose answers are saved) and each condition's signed strength."""
    st = json.loads((out / "findings.json").read_text(encoding="utf-8"))["settings"]
    rows = [r for r in json.loads((out / "items.json").read_text(encoding="utf-8"))
            if r["split"] == "test"]
    test = [Item(r["region"], tuple(r["answers"]), r["question"]) for r in rows]
    before = np.array([r["baseline_correct"] for r in rows])
    after, strength = {}, {}
    for cname, s in condition_strengths(st).items():
        path = cache_file(out / "generations", cname)
        if not path.exists():
            continue
        saved = json.loads(path.read_text(encoding="utf-8"))
        after[cname] = np.array([it.is_correct(ans) for it, ans in zip(test, saved["answers"])])
        strength[cname] = s
    return st, before, after, strength


def gain_table(before: np.ndarray, after: dict[str, np.ndarray], strength: dict[str, float],
               seed: int = 0) -> pd.DataFrame:
    """Per outcome condition: the accuracy gain (mean of after - before per item) with a bootstrap
    CI over items, the random band at |strength| and the empirical p against it (alternative
    "greater" for +s, "less" for -s: the direction should push accuracy the way its sign says)."""
    rows = []
    for c, a in after.items():
        if c.startswith("random"):
            continue
        s = strength[c]
        gain = a.astype(float) - before
        ci = bootstrap_ci(gain, n_boot=4000, seed=seed)
        ctrl = [float(np.mean(after[r].astype(float) - before))
                for r in randoms_at(after, s)]
        row = {"condition": c, "strength": s, "n": int(gain.size), "gain": ci.estimate,
               "gain_low": ci.low, "gain_high": ci.high, "k_random": len(ctrl),
               "random_gains": ctrl, "random_low": np.nan, "random_high": np.nan,
               "random_mean": np.nan, "p_random": np.nan,
               "alternative": "greater" if s > 0 else "less"}
        if ctrl:
            e = empirical_p(ci.estimate, ctrl, row["alternative"])
            row.update(random_low=e.band_low, random_high=e.band_high,
                       random_mean=float(np.mean(ctrl)), p_random=e.p_value)
        rows.append(row)
    return pd.DataFrame(rows)


def draw(out: Path, fig_dir: Path, results_command: str = command(NAME)) -> list[GalleryEntry]:
    """Draw the transition, strength-curve and random-control figures from the saved answers."""
    st, c_test, after, strength = saved_outcomes(out)
    layer, n_test = st["layer"], len(c_test)
    entries = []
    real = [c for c in after if not c.startswith("random")]
    for n in sorted({min(st["n_small"], n_test), n_test}) if real else ():
        tabs = {c: transitions(c_test[:n], after[c][:n]) for c in real}
        path = save_html(transition_bars(tabs, title=f"Capital-city answers before vs after "
                                         f"steering at layer {layer}, first {n} held-out items"),
                         fig_dir / f"{NAME}_transitions_n{n}.html")
        entries.append(GalleryEntry(
            NAME, path, f"Answer transitions, first {n} items",
            f"Wrong->right / right->wrong answers under the outcome direction at each strength, "
            f"n={n} held-out capital-city questions.", results_command))
    mats = {"0 (unsteered)": transitions(c_test, c_test)}
    mats.update({f"{strength[c]:+g}": transitions(c_test, after[c]) for c in
                 sorted(real, key=lambda c: strength[c])})
    mats = dict(sorted(mats.items(), key=lambda kv: float(kv[0].split()[0])))
    path = save_html(transition_matrices(
        mats, title=f"Before -> after transition matrices per strength (x median residual norm), "
        f"outcome direction at layer {layer}, n={n_test} held-out items"),
        fig_dir / f"{NAME}_transition_matrices.html")
    entries.append(GalleryEntry(
        NAME, path, "Transition matrices per strength",
        f"Correct/wrong before (rows) vs after (columns) at each of {len(mats)} strengths "
        f"(n={n_test} held-out items).", results_command))
    g = gain_table(c_test, after, strength)
    if len(g):
        band = {float(s): [float(np.mean(after[r].astype(float) - c_test))
                           for r in randoms_at(after, s)] for s in g["strength"]}
        path = save_html(strength_band_curve(
            g["strength"].tolist(), g["gain"].tolist(), g["gain_low"].tolist(),
            g["gain_high"].tolist(), band, y_title="accuracy gain (after - before)",
            x_title="strength (x median residual norm)",
            title=f"Accuracy gain vs strength, outcome direction at layer {layer} (95% CI, "
                  f"n={n_test}) against norm-matched random directions (band = min..max)"),
            fig_dir / f"{NAME}_strength_curve.html")
        entries.append(GalleryEntry(
            NAME, path, "Accuracy gain vs strength with the random band",
            f"Gain of the outcome direction at {len(g)} strengths with 95% CIs, and each "
            f"random direction's gain at the same |strength| (n={n_test} items).",
            results_command))
    for a in st.get("control_strengths", st["strengths"]):
        names = randoms_at(after, a)
        cname = f"outcome {a:+g}"
        if cname not in after or not names:
            continue
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
    pool = all_items()
    random.Random(ctx.seed).shuffle(pool)
    pool = pool[: st["pool"]]
    layer = st["layer"]
    gdir = ctx.out / "generations"
    base_key = {"model": runtime.model_id(model), "seed": ctx.seed,
                "max_new_tokens": st["max_new_tokens"]}
    log(f"{NAME}: model {runtime.model_id(model)}, layer {layer}, pool {len(pool)}, balanced "
        f"train {st['n_per_class']}+{st['n_per_class']}, held-out {st['n_test']}, strengths "
        f"{st['strengths']}, {st['n_random']} random directions at |s| in "
        f"{st['control_strengths']}, {st['n_random_other']} elsewhere")
    base_answers = answer(model, pool, None, None, st, gdir / "baseline.json",
                          {**base_key, "items": len(pool)}, ctx.progress)
    correct_pool = np.array([it.is_correct(a) for it, a in zip(pool, base_answers)])
    tr_idx, te_idx = balanced_split(correct_pool, st["n_per_class"], st["n_test"])
    train, test = [pool[i] for i in tr_idx], [pool[i] for i in te_idx]
    c_train, c_test = correct_pool[tr_idx], correct_pool[te_idx]
    base_test = [base_answers[i] for i in te_idx]
    log(f"baseline accuracy: pool {correct_pool.mean():.3f} (n={len(pool)}), train "
        f"{c_train.mean():.3f} (n={len(train)}, balanced), held-out {c_test.mean():.3f} "
        f"(n={len(test)})")
    texts = chat_texts(model, [it.question for it in train])
    vec = outcome_vector(model, texts, c_train.tolist(), [layer], chat=False,
                         show_progress=ctx.progress)
    norms = residual_norms(model, [it.question for it in train], [layer])
    unit = scale_to_residual(vec, norms)
    raw_rel = vec.norms[layer] / norms[layer]
    log(f"outcome vector: {vec.extra['n_right']} right / {vec.extra['n_wrong']} wrong train items; "
        f"norm {vec.norms[layer]:.3g} = {raw_rel:.3f} x median residual norm {norms[layer]:.3g}")
    strength = condition_strengths(st)
    shard = None
    if args.shard:
        try:
            shard = tuple(int(x) for x in args.shard.split("/"))
            if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
                raise ValueError
        except ValueError:
            raise ValueError(f"--shard must be I/N with 0 <= I < N, e.g. 1/2; got "
                             f"{args.shard!r}.") from None
    answers: dict[str, list[str]] = {}
    for i, (cname, s) in enumerate(strength.items()):
        if cname.startswith("random"):
            v, s_used = random_like(unit, seed=ctx.seed + int(cname[6:].split()[0])), s
        else:
            v, s_used = unit, s
        key = {**base_key, "layer": layer, "strength": s_used, "cond": cname,
               "n_per_class": st["n_per_class"], "items": len(test),
               "vector_norm": v.norms[layer]}
        if args.partial and not _cached(cache_file(gdir, cname), key):
            continue  # a cut-short run: report the conditions that were generated
        if shard is not None and i % shard[1] != shard[0]:
            continue
        log(f"condition {i + 1}/{len(strength)}: {cname}")
        answers[cname] = answer(model, test, v.layer(layer), s_used, st, cache_file(gdir, cname),
                                key, ctx.progress)
    strength = {c: s for c, s in strength.items() if c in answers}
    if shard is not None:
        log(f"shard {args.shard} done: {len(answers)} conditions")
        return {"answers": answers}
    after = {c: np.array([it.is_correct(a) for it, a in zip(test, ans)])
             for c, ans in answers.items()}
    changed = {c: float(np.mean([a != b for a, b in zip(ans, base_test)]))
               for c, ans in answers.items()}
    rows = []
    sizes = sorted({min(st["n_small"], len(test)), len(test)})
    for n in sizes:
        for c in strength:
            r = evaluate(c_test[:n], after[c][:n])
            r.update(condition=c, strength=strength[c], subset=f"first {n}", change_rate=float(
                np.mean([a != b for a, b in zip(answers[c][:n], base_test[:n])])))
            rows.append(r)
    table = pd.DataFrame(rows)
    trans = transition_rows(c_test, {"unsteered": c_test, **after},
                            {"unsteered": 0.0, **strength})
    gains = {n: gain_table(c_test[:n], {c: a[:n] for c, a in after.items()}, strength, ctx.seed)
             for n in sizes}
    cmp = pd.concat([g.assign(subset=f"first {n}") for n, g in gains.items()], ignore_index=True)
    blocks = []
    nb = st["n_small"]
    for c in strength:
        if c.startswith("random"):
            continue
        for b0 in range(0, len(test) - nb + 1, nb):
            r = evaluate(c_test[b0 : b0 + nb], after[c][b0 : b0 + nb])
            blocks.append({"condition": c, "block": b0 // nb, "net": r["net"],
                           "mcnemar_p": r["mcnemar_p"]})
    blocks = pd.DataFrame(blocks)
    write_csv(ctx.out / "conditions.csv", table)
    write_csv(ctx.out / "transitions.csv", trans)
    write_csv(ctx.out / "random_comparison.csv", cmp)
    write_csv(ctx.out / "blocks.csv", blocks)
    split = {i: "train" for i in tr_idx} | {i: "test" for i in te_idx}
    write_json(ctx.out / "items.json", [
        {"split": split.get(i, "unused"), "region": it.region, "question": it.question,
         "answers": list(it.answers), "baseline": base_answers[i],
         "baseline_correct": bool(correct_pool[i])}
        for i in tr_idx + te_idx + [j for j in range(len(pool)) if j not in split]
        for it in [pool[i]]])
    write_json(ctx.out / "direction.json", {"layer": layer, "norm": vec.norms[layer],
                                            "median_residual_norm": norms[layer],
                                            "rel_norm": raw_rel, **dict(vec.extra),
                                            "change_rate": changed})
    found = findings(table, gains, blocks, sizes, st, c_test, changed, trans)
    settings = {**st, "model": runtime.model_id(model), "task": "capital cities",
                "pool_accuracy": float(correct_pool.mean()),
                "train_accuracy": float(c_train.mean()), "test_accuracy": float(c_test.mean()),
                "n_right_train": vec.extra["n_right"], "n_wrong_train": vec.extra["n_wrong"],
                "direction_rel_norm": raw_rel}
    notes = [
        f"Layer {layer}, the {len(st['strengths'])} strengths {st['strengths']} (x median residual "
        f"norm) and the control strengths {st['control_strengths']} were fixed before looking at "
        "held-out results; the small-n rows are the first items of the same held-out list, and "
        "the block rows split it into disjoint blocks.",
        f"Train split balanced by construction (enforced): the first {st['n_per_class']} items "
        f"of the shuffled pool answered right and the first {st['n_per_class']} answered wrong "
        "at baseline; the held-out items are the next ones in the shuffled order (natural "
        "accuracy).",
        "Correct = an accepted capital named in the first "
        f"{st['max_new_tokens']} greedy tokens after removing the region's own name (lenient: a "
        "right name anywhere in the answer counts).",
        f"Random controls: {st['n_random']} norm-matched random directions at |strength| in "
        f"{st['control_strengths']} (the verdict rows; smallest attainable p = "
        f"{1 / (1 + st['n_random']):.3g}), {st['n_random_other']} at the other strengths "
        "(descriptive band only). Empirical p = (1 + #random at least as extreme) / (1 + k), "
        "alternative 'greater' for +s and 'less' for -s. Transition matrices for every strength "
        "are in transitions.csv.",
    ]
    save_findings(ctx, found, settings, notes)
    draw(ctx.out, ctx.fig_dir)
    with pd.option_context("display.width", 170, "display.max_rows", 200):
        print(trans[trans["kind"] == "outcome"].to_string(index=False))
        if len(gains[len(test)]):
            print(gains[len(test)].drop(columns=["random_gains"]).round(3).to_string(index=False))
    print_findings(found)
    return {"table": table, "random": cmp, "transitions": trans, "blocks": blocks,
            "findings": found, "train_idx": tr_idx, "test_idx": te_idx}


def findings(table, gains, blocks, sizes, st, c_test, changed, trans) -> list[Finding]:
    out = []
    n_all = len(c_test)
    ctrl = {round(a, 6) for a in st["control_strengths"]}
    out.append(Finding(NAME, "train split: items answered right / wrong at baseline (enforced "
                       "balance)", float(st["n_per_class"]), float("nan"), float("nan"),
                       f"{2 * st['n_per_class']}", "-",
                       f"{st['n_per_class']} right + {st['n_per_class']} wrong, chosen "
                       "deliberately (not the natural split)"))
    for n in sizes:
        acc = proportion_ci(int(c_test[:n].sum()), n)
        out.append(Finding(NAME, f"baseline accuracy, held-out first {n} (Wilson)", acc.estimate,
                           acc.low, acc.high, str(n), "-", "task in the 30-70% range"
                           if 0.3 <= acc.estimate <= 0.7 else "outside 30-70%",
                           headline=n == n_all))
        g = gains[n]
        for _, r in g.iterrows():
            s = r["strength"]
            is_ctrl = round(abs(s), 6) in ctrl
            if n != n_all and not (is_ctrl and s > 0):
                continue  # small-n rows only where the verdict rests
            t = trans[(trans["condition"] == r["condition"])].iloc[0] if n == n_all else None
            tab = table[(table["condition"] == r["condition"]) & (table["subset"] == f"first {n}")]
            mc = float(tab["mcnemar_p"].iloc[0])
            band = (f"random {fmt(r['random_low'])}..{fmt(r['random_high'])} "
                    f"(k={int(r['k_random'])}), empirical p={r['p_random']:.2g}"
                    if r["k_random"] else "no random control")
            word = control_verdict(r["gain_low"], r["gain_high"], r["p_random"],
                                   1 if s > 0 else -1)
            if not is_ctrl:
                word += " (descriptive: too few random directions for p < 0.05)"
            detail = (f"; C->C {t['correct_to_correct']}, C->W {t['correct_to_wrong']}, W->C "
                      f"{t['wrong_to_correct']}, W->W {t['wrong_to_wrong']}" if t is not None
                      else "")
            out.append(Finding(
                NAME, f"accuracy gain under outcome {s:+g} x resid norm at layer {st['layer']}, "
                f"first {n} (after - before, bootstrap CI)", r["gain"], r["gain_low"],
                r["gain_high"], str(n), band,
                f"{word}; McNemar p={mc:.2g}{detail}",
                headline=is_ctrl and s > 0))
    if len(blocks):
        for c, g in blocks.groupby("condition", sort=False):
            s = float(c.split()[1])
            if round(abs(s), 6) not in ctrl:
                continue
            pos = int((g["net"] > 0).sum())
            sig = int((g["mcnemar_p"] < 0.05).sum())
            out.append(Finding(
                NAME, f"{c}: net gain over {len(g)} disjoint blocks of {st['n_small']} "
                f"(value = mean net; range in CI columns)", float(g["net"].mean()),
                float(g["net"].min()), float(g["net"].max()), f"{len(g)} x {st['n_small']}",
                "-", f"{pos}/{len(g)} blocks positive, {sig}/{len(g)} significant at 0.05"))
    for a in st["control_strengths"]:
        names = randoms_at(changed, a)
        if not names:
            continue
        rnd_change = [changed[r] for r in names]
        for c in (f"outcome {a:+g}", f"outcome {-a:+g}"):
            if c not in changed:
                continue
            k = int(round(changed[c] * n_all))
            ci = proportion_ci(k, n_all)
            inside = min(rnd_change) <= changed[c] <= max(rnd_change)
            out.append(Finding(NAME, f"answer text changed vs baseline under {c} (Wilson)",
                               ci.estimate, ci.low, ci.high, str(n_all),
                               f"random {fmt(min(rnd_change))}-{fmt(max(rnd_change))} "
                               f"(k={len(names)})",
                               "within the random range" if inside else
                               "outside the random range"))
    return out


if __name__ == "__main__":
    main()
