"""Spectral weight steering: can reshaping W_out's singular values improve a behaviour for free?

A layer x α grid of single-layer edits (each singular value s of the layer's MLP output matrix
scaled by 1 + α·z(s)), plus the published "hybrid" configuration (layer 15 at α -0.2, layers 16-24
at α +0.3) when the model has enough layers. Each configuration is measured against the unedited
model: held-out perplexity (the shipped prose, paired per text), next-token KL after each prompt,
and the behaviour's score on greedy continuations (paired per prompt), all with bootstrap CIs.
A configuration counts as an improvement when its score-change CI lies above zero and its
perplexity stays within the baseline perplexity's CI; every such configuration is re-run with its
shuffled-factor control (same factors, randomly permuted over the singular values), and so is
the hybrid configuration.

Writes results/spectral_weights/<model>/ (summary.json with every configuration's measurements,
`SpectralSweepResult.table()` rebuilds the table from it; spectrum_shown.json; findings.json;
per-configuration resumable files) and figures/spectral_weights_<model>_*.html.

    python -m analyses.spectral_weights [--model smollm2-135m-instruct] [--layers 3,10,18]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.spectral import alpha_curves, spectrum_before_after
from steerlens.io import atomic_write_text
from steerlens.pairs import load_behaviour
from steerlens.spectral import (
    HYBRID,
    LayerEditReport,
    SpectralConfig,
    SpectralEdit,
    SpectralEditResult,
    SpectralPoint,
    SpectralSweepResult,
    evaluate_configs,
    grid_configs,
    load_heldout,
    plan_edit,
)

from . import command
from ._common import (
    Context,
    GalleryEntry,
    add_list,
    each_run,
    jsonable,
    parser,
    start,
)
from .findings import Finding, save_findings

NAME = "spectral_weights"


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0], quick=False, fresh=False,  # always resumes
               per_model=True)
    p.add_argument("--behaviour", default="sentiment")
    p.add_argument("--n-prompts", type=int, default=10)
    p.add_argument("--n-texts", type=int, default=12, help="held-out paragraphs")
    p.add_argument("--max-words", type=int, default=100, help="words kept per paragraph")
    add_list(p, "--layers", int, None, "layers of the grid (default: 4 spread over the depth)")
    add_list(p, "--alphas", float, [-0.3, -0.1, 0.1, 0.3],
             "spectral edit coefficients α: each singular value s is scaled by 1 + α·z(s)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--n-boot", type=int, default=2000)
    return p


def ci(c) -> str:
    return f"{c.estimate:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"


SPECTRUM_FILE = "spectrum_shown.json"  # singular values before/after the edit shown in the figure


def edit_arrays(edit: SpectralEditResult) -> dict:
    return {"model": edit.model, "config": edit.config.to_dict(), "warnings": list(edit.warnings),
            "layers": [{"layer": r.layer, "alpha": r.alpha, "band": r.band, "k": r.k,
                        "n_clamped": r.n_clamped, "applied": r.applied,
                        "s_before": r.s_before.tolist(), "s_after": r.s_after.tolist()}
                       for r in edit.layers]}


def saved_sweep(d: dict) -> SpectralSweepResult:
    """Rebuild a SpectralSweepResult from its `to_dict()` form in summary.json."""
    return SpectralSweepResult(d["model"], SpectralPoint.from_dict(d["baseline"]),
                               tuple(SpectralPoint.from_dict(p) for p in d["points"]),
                               d["n_texts"], d["n_prompts"], d["scorer"], d["max_new_tokens"])


def draw(out: Path, fig_dir: Path, results_command: str | None = None) -> list[GalleryEntry]:
    """Draw one model's figures from `out` (summary.json, spectrum_shown.json; no model)."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    name = summary["model"]
    cmd = results_command or command(NAME, f"--model {name}")
    res = saved_sweep(summary["result"])
    path = save_html(alpha_curves(res), fig_dir / f"{NAME}_{name}_alpha_curves.html")
    entries = [GalleryEntry(
        NAME, path, f"{name}: spectral edits vs α",
        f"Δ sentiment score, Δ held-out NLL and next-token KL per layer and α "
        f"(n={res.n_texts} texts, {res.n_prompts} prompts, 95% CI).", cmd)]
    if (out / SPECTRUM_FILE).exists():
        d = json.loads((out / SPECTRUM_FILE).read_text(encoding="utf-8"))
        reports = tuple(LayerEditReport(r["layer"], r["alpha"], r["band"], r["k"], r["n_clamped"],
                                        np.asarray(r["s_before"], float),
                                        np.asarray(r["s_after"], float), r["applied"])
                        for r in d["layers"])
        edit = SpectralEditResult(d["model"], SpectralConfig.from_dict(d["config"]), reports,
                                  tuple(d["warnings"]))
        path = save_html(spectrum_before_after(edit),
                         fig_dir / f"{NAME}_{name}_spectrum.html")
        entries.append(GalleryEntry(
            NAME, path, f"{name}: W_out spectrum, {edit.config.name}",
            f"Singular values of the MLP output matrix before and after the "
            f"{edit.config.name!r} edit ({len(reports)} layers).", cmd))
    return entries


make_figures = each_run(draw)  # the gallery hook: one model per subdirectory of results_dir


def findings_from_run(out: Path) -> list[Finding]:
    """The finding rows of one model's run, from its saved summary.json: the grid's best
    configuration and the hybrid one, each with its shuffled-factor control when it was run."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    name, res = summary["model"], saved_sweep(summary["result"])
    control_note = {}
    if summary.get("controls"):
        for p in saved_sweep(summary["controls"]).points:
            if p.control:
                control_note[p.label.replace(" (shuffled control)", "")] = (
                    f"shuffled factors: Δscore {ci(p.delta_score)}, Δnll {ci(p.delta_nll)}")
    best = max(res.points, key=lambda p: p.delta_score.estimate)
    shown = [best] + [p for p in res.points if p.label == "hybrid" and p is not best]
    rows = []
    for p in shown:
        for measure, c in ((f"Δ {summary['behaviour']} score", p.delta_score),
                           ("Δ held-out NLL (nats/token)", p.delta_nll)):
            rows.append(Finding(
                NAME, f"{name} {p.label}{' (best Δscore of grid)' if p is best else ''}: "
                f"{measure}", c.estimate, c.low, c.high, str(c.n),
                control_note.get(p.label, "none (not an improving config)"),
                ("improves" if res.improves(p) else "no improvement")
                + (f"; {summary['n_improvements']} of {summary['n_configurations']} "
                   "configurations improve" if p is best else ""),
                headline=p is best))
    return rows


def save_run_findings(ctx: Context) -> Path:
    """Write `ctx.out`/findings.json from the run saved there (summary.json)."""
    summary = json.loads((ctx.out / "summary.json").read_text(encoding="utf-8"))
    n_cfg, n_impr = summary["n_configurations"], summary["n_improvements"]
    settings = {k: v for k, v in summary.items()
                if k in ("model", "behaviour", "n_texts", "n_prompts", "layers", "alphas",
                         "max_new_tokens")}
    return save_findings(ctx, findings_from_run(ctx.out), settings, notes=[
        f"{n_impr} of {n_cfg} configurations improve the score with perplexity inside the "
        f"baseline CI (about {0.025 * n_cfg:.1f} expected by chance at a one-sided 2.5% per "
        "configuration, uncorrected)."])


def main(argv=None, model=None) -> dict:
    """Run the analysis; `model` reuses an already loaded model (it must match --model)."""
    t0 = time.time()
    args, ctx, model = start(NAME, build_parser(), argv, model, per_model=True)
    name = runtime.model_id(model)
    out, figs = ctx.out, ctx.fig_dir
    n_layers = runtime.n_layers(model)
    layers = args.layers or [round(n_layers * f) for f in (0.1, 0.35, 0.6, 0.85)]
    behaviour = load_behaviour(args.behaviour)
    prompts = list(behaviour.eval_prompts[: args.n_prompts])
    texts = load_heldout(args.n_texts, max_words=args.max_words)
    chat = runtime.is_instruct(model) and runtime.has_chat_template(model)
    configs = grid_configs(layers, args.alphas)
    if max(HYBRID.layers) < n_layers:
        configs.append(HYBRID)
    print(f"model {name}: {n_layers} layers; grid layers {layers} x alphas {args.alphas}"
          f"{' + hybrid' if HYBRID in configs else ''}; n = {len(texts)} held-out texts, "
          f"{len(prompts)} {behaviour.name} prompts (chat={chat})")
    common = dict(texts=texts, prompts=prompts, scorer=behaviour.scorer,
                  max_new_tokens=args.max_new_tokens, chat=chat, n_boot=args.n_boot,
                  seed=ctx.seed, control_seed=ctx.seed, show_progress=ctx.progress)
    res = evaluate_configs(model, configs, out_dir=out / "grid", **common)
    print(f"[{time.time() - t0:.0f}s] grid measured ({len(res.points)} configurations)")

    improved = [p.config for p in res.improvements]
    controlled = improved + ([HYBRID] if HYBRID in configs and HYBRID not in improved else [])
    controls = None
    if controlled:
        controls = evaluate_configs(model, controlled, controls=True, out_dir=out / "controls",
                                    **common)
        print(f"[{time.time() - t0:.0f}s] shuffled-factor controls for "
              f"{[c.name for c in controlled]}")

    mid = layers[len(layers) // 2]
    shown = HYBRID if HYBRID in configs else SpectralConfig(
        (SpectralEdit(mid, max(args.alphas)),), name=f"L{mid} a={max(args.alphas):+g}")
    edit_report, _ = plan_edit(model, shown)
    atomic_write_text(out / SPECTRUM_FILE, json.dumps(jsonable(edit_arrays(edit_report))))

    n_cfg = len(res.points)
    n_impr = len(res.improvements)
    summary = {
        "model": name, "behaviour": behaviour.name, "n_texts": len(texts),
        "n_prompts": len(prompts), "layers": layers, "alphas": args.alphas,
        "max_new_tokens": args.max_new_tokens, "result": res.to_dict(),
        "controls": controls.to_dict() if controls is not None else None,
        "spectrum_shown": edit_report.to_dict(),
        "n_configurations": n_cfg, "n_improvements": n_impr,
        "expected_false_improvements_at_2.5pct": 0.025 * n_cfg,
        "seconds": time.time() - t0,
    }
    atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2))
    save_run_findings(ctx)
    draw(out, figs)

    b = res.baseline
    print(f"\nBaseline: held-out perplexity {b.perplexity:.2f} (95% CI {b.perplexity_ci[0]:.2f}-"
          f"{b.perplexity_ci[1]:.2f}, n = {b.nll.n} texts); {behaviour.name} score "
          f"{ci(b.score)} (n = {b.score.n} prompts)")
    print(f"{'config':<26}{'clamp':>6}{'ppl':>8}{'Δnll [95% CI]':>28}{'KL bits':>26}"
          f"{'Δscore [95% CI]':>28}  erank Δ")
    for p in res.points:
        flag = "  <- improves" if res.improves(p) else ""
        print(f"{p.label:<26}{p.n_clamped:>6}{p.perplexity:>8.2f}{ci(p.delta_nll):>28}"
              f"{ci(p.kl_bits):>26}{ci(p.delta_score):>28}  {p.effective_rank_change:+.0f}{flag}")
    if controls is not None:
        print("\nShuffled-factor controls (same factors, randomly permuted over singular values):")
        for p in controls.points:
            print(f"{p.label:<40} ppl {p.perplexity:.2f}  Δnll {ci(p.delta_nll)}  KL "
                  f"{ci(p.kl_bits)}  Δscore {ci(p.delta_score)}")
    print(f"\n{n_impr} of {n_cfg} configurations improve the {behaviour.name} score with perplexity "
          f"inside the baseline CI (about {0.025 * n_cfg:.1f} expected by chance at a one-sided "
          f"2.5% per configuration, uncorrected).")
    print(f"[{time.time() - t0:.0f}s] wrote {out} and {figs}/spectral_weights_{name}_*.html")
    return {"result": res, "controls": controls, "summary": summary}


if __name__ == "__main__":
    main()
