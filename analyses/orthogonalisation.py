"""Weight orthogonalisation vs directional ablation: are the two the same model, to float rounding?

The refusal-direction recipe (Arditi et al. 2024) either ablates a direction from the residual
stream at every layer and site with hooks, or bakes the same projection into every weight that
writes to the residual stream. This checks that steerlens's two implementations agree: a real
direction (the mean difference of the behaviour's train pairs at the middle layer, resid_pre, last
token) is removed both ways and the logits compared on the behaviour's evaluation prompts (each
run alone, raw text), next to the ablation's own effect on the logits, so that agreement is not
vacuous. Reported: max |Δlogit| per prompt (n prompts), the largest |logit| for scale, and the
residual difference per layer.

Writes results/interventions/orthogonalise_equivalence.json (+ findings.json) and
figures/orthogonalise_equivalence.html.

    python -m analyses.orthogonalisation [--model smollm2-135m-instruct] [--n-prompts 8]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from steerlens.figures import save_html
from steerlens.figures.interventions import orthogonalisation_equivalence_figure
from steerlens.interventions.orthogonalise import (
    EquivalenceResult,
    behaviour_equivalence,
    save_equivalence,
)

from . import command
from ._common import GalleryEntry, parser, start
from .findings import Finding, save_findings

NAME = "orthogonalisation"
RESULT_FILE = "orthogonalise_equivalence.json"
FIGURE = "orthogonalise_equivalence.html"


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0], fresh=False)
    p.add_argument("--behaviour", default="refusal")
    p.add_argument("--layer", type=int, default=None, help="layer of the direction (default: middle)")
    p.add_argument("--n-prompts", type=int, default=8)
    p.add_argument("--n-pairs", type=int, default=16, help="train pairs averaged for the direction")
    return p


def draw(out: Path, fig_dir: Path) -> list[GalleryEntry]:
    """The equivalence figure from the saved JSON (no model)."""
    res = EquivalenceResult.from_dict(json.loads((out / RESULT_FILE).read_text(encoding="utf-8")))
    path = save_html(orthogonalisation_equivalence_figure(res), fig_dir / FIGURE)
    return [GalleryEntry(
        NAME, path, f"{res.model}: orthogonalised weights vs ablation",
        f"max |Δlogit| per prompt between weight orthogonalisation and ablation at every layer and "
        f"residual site, next to the ablation's own effect (n={res.n} prompts).", command(NAME))]


def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
    """Gallery hook: redraw the figure when the results exist."""
    if not (Path(results_dir) / RESULT_FILE).exists():
        return []
    return draw(Path(results_dir), Path(figures_dir))


def findings_from_result(d: dict) -> list[Finding]:
    """Finding rows from a saved result dict."""
    n = f"{d['n_prompts']} prompts"
    rel = d["relative_max_dlogit"]
    verdict = ("equal to float rounding" if rel < 1e-4 else "NOT equivalent")
    return [
        Finding(NAME, f"{d['model']}: max |Δlogit| orthogonalised vs ablated (max |logit| "
                f"{d['max_abs_logit']:.3g})", d["max_abs_dlogit"], None, None, n,
                f"ablation's own effect: min over prompts of max |Δlogit| = "
                f"{d['min_ablation_effect']:.3g}", f"{verdict} ({d['dtype']})", headline=True),
    ]


def main(argv=None, model=None) -> dict:
    """Run the check; `model` reuses an already loaded model (it must match --model)."""
    t0 = time.time()
    args, ctx, model = start(NAME, build_parser(), argv, model)
    n_prompts = 2 if ctx.quick else args.n_prompts
    n_pairs = 4 if ctx.quick else args.n_pairs
    res, vec = behaviour_equivalence(model, args.behaviour, args.layer, n_prompts, n_pairs)
    save_equivalence(res, ctx.out / RESULT_FILE)
    d = res.to_dict()
    save_findings(ctx, findings_from_result(d), {
        "model": d["model"], "behaviour": args.behaviour, "layer": vec.layers[0],
        "n_prompts": n_prompts, "n_pairs": n_pairs}, notes=[d["direction"]])
    draw(ctx.out, ctx.fig_dir)
    print(f"{d['model']}: max |Δlogit| = {d['max_abs_dlogit']:.3g} over n = {d['n_prompts']} "
          f"prompts (max |logit| {d['max_abs_logit']:.3g}; the ablation itself moves logits by "
          f">= {d['min_ablation_effect']:.3g}); direction: {d['direction']}")
    print(f"[{time.time() - t0:.0f}s] wrote {ctx.out / RESULT_FILE} and {ctx.fig_dir / FIGURE}")
    return {"result": res, "direction": vec}


if __name__ == "__main__":
    main()
