"""Shared plumbing for the analysis scripts: flags, model loading, output paths and findings.

Every script takes the same core flags (`--model`, `--device`, `--out`, `--quick`, `--seed`,
`--no-progress`), writes tables under `results/<name>/` and figures under `figures/`, and records
its headline numbers as "finding rows" (analysis, measure, value, 95% CI, n, random control,
verdict) in `results/<name>/findings.json`. `write_findings_md` gathers every script's rows into
`results/FINDINGS_measurement.md`, so the summary table is always regenerated from the numbers a
script actually computed. Two helpers put steering strengths on a comparable scale across layers
and models: `residual_norms` (median per-token norm of the residual stream entering a layer) and
`scale_to_residual` (rescale a vector so that strength 1.0 adds that many residual norms).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python analyses/x.py` from anywhere finds the sibling modules
    sys.path.insert(0, str(ROOT))

from steerlens.backend import DEFAULT_MODEL, load_model, runtime  # noqa: E402
from steerlens.io import atomic_write_text  # noqa: E402
from steerlens.measures.residual_scale import residual_norms, scale_to_residual  # noqa: E402, F401
from steerlens.methods import build_vector  # noqa: E402
from steerlens.pairs import Behaviour, load_behaviour  # noqa: E402
from steerlens.vectors import SteeringVector, VectorFileError  # noqa: E402

RESULTS = ROOT / "results"
FIGURES = ROOT / "figures"
FINDINGS_MD = "FINDINGS_measurement.md"
QUICK_PAIRS = 8  # train pairs used for the vector in --quick (smoke-test) runs


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the flags every analysis shares."""
    p = argparse.ArgumentParser(prog=f"{name}.py", description=description)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--out", default=None, help=f"results directory (default results/{name}/)")
    p.add_argument("--fig-dir", default=None, help="figures directory (default figures/)")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    p.add_argument("--seed", type=int, default=0, help="seed for random controls and sampling")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--fresh", action="store_true", help="ignore cached sweep results in --out")
    return p


@dataclass(frozen=True)
class Context:
    """Resolved output locations and run settings for one script run."""

    name: str
    out: Path
    fig_dir: Path
    device: str
    progress: bool
    seed: int
    quick: bool
    resume: bool

    def fig(self, suffix: str) -> Path:
        return self.fig_dir / f"{self.name}_{suffix}.html"


def context(name: str, args: argparse.Namespace) -> Context:
    out = Path(args.out) if args.out else RESULTS / name
    fig_dir = Path(args.fig_dir) if args.fig_dir else FIGURES
    out.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    return Context(name, out, fig_dir, args.device, not args.no_progress, args.seed, args.quick,
                   not args.fresh)


def get_model(name: str, device: str, given=None, cache: dict | None = None):
    """Load a model once per process, or check and return `given` (an already loaded model)."""
    if given is not None:
        if runtime.model_id(given) != name:
            raise ValueError(f"The model passed in is {runtime.model_id(given)!r} but --model is "
                             f"{name!r}; pass --model {runtime.model_id(given)}.")
        return given
    cache = _MODELS if cache is None else cache
    key = (name, str(device))
    if key not in cache:
        cache[key] = load_model(name, device=device)
    return cache[key]


_MODELS: dict[tuple[str, str], Any] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------ data and vectors


def sentiment_data() -> Behaviour:
    return load_behaviour("sentiment")


def heldout_prompts(behaviour: Behaviour, n: int | None = None) -> list[str]:
    """Prompts never used to build the vector: the evaluation prompts, then the test-pair prompts."""
    prompts = list(behaviour.eval_prompts)
    prompts += [p.prompt for p in behaviour.test if p.prompt and p.prompt not in prompts]
    if n is not None:
        if not 1 <= n <= len(prompts):
            raise ValueError(f"n_prompts must be in 1..{len(prompts)} for {behaviour.name!r}, got {n}.")
        prompts = prompts[:n]
    return prompts


def cached_vector(model, behaviour: Behaviour, layers: Sequence[int], cache_dir: Path,
                  show_progress: bool = False, resume: bool = True,
                  chat: bool | None = None, n_pairs: int | None = None) -> SteeringVector:
    """Mean-difference vector on the behaviour's train pairs, saved once and reloaded.

    `chat=None` chat-templates the pairs' prompts for instruct models (the library default);
    `n_pairs` uses only the first n train pairs (smoke tests).
    """
    pairs = behaviour.train if n_pairs is None else behaviour.train[:n_pairs]
    layers = sorted(int(x) for x in layers)
    tag = "" if chat is None else ("_chat" if chat else "_raw")
    path = cache_dir / f"vector_{behaviour.name}{tag}"
    if resume and path.exists():
        try:
            vec = SteeringVector.load(path, model)
            if (vec.layers == layers and vec.model_id == runtime.model_id(model)
                    and vec.n_pairs == len(pairs)):
                return vec
        except VectorFileError:
            pass
    vec = build_vector(model, pairs, layers, show_progress=show_progress, chat=chat)
    vec.save(path)
    return vec


def relative_layers(model, fractions: Sequence[float]) -> list[int]:
    """Layer index nearest to each fraction of depth (0 = first block, 1 = last), deduplicated."""
    n = runtime.n_layers(model)
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"Depth fractions must be in [0, 1], got {f}.")
        layer = int(round(f * (n - 1)))
        if layer not in out:
            out.append(layer)
    return out


def spread_layers(n_layers_model: int, k: int, first: int = 1) -> list[int]:
    """k layers spread evenly from `first` to the last layer."""
    if k < 1:
        raise ValueError(f"Need at least one layer, got {k}.")
    return sorted({int(round(x)) for x in np.linspace(first, n_layers_model - 1, k)})


# ------------------------------------------------------------------------------ output


def jsonable(x):
    """Plain JSON: non-finite floats become null; numpy/torch scalars and arrays become Python."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, torch.Tensor):
        return jsonable(x.tolist())
    return x


def write_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=1, ensure_ascii=False))


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    return atomic_write_text(path, df.to_csv(index=False))


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "nan"
    return f"{x:.{digits}g}"


def fmt_ci(est: float, low: float, high: float, digits: int = 3) -> str:
    return f"{fmt(est, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


@dataclass(frozen=True)
class GalleryEntry:
    """One figure for the gallery (figures/index.html): what it shows and how it was made.

    `results_command` produced the saved results the figure is drawn from; `redraw_command`
    redraws it from those results without running a model.
    """

    analysis: str
    path: Path  # the HTML file written
    title: str
    caption: str  # one line
    results_command: str
    redraw_command: str = "./scripts/figures"


def draw_each_run(results_dir: Path, figures_dir: Path, draw) -> list[GalleryEntry]:
    """Gallery hook for analyses that save one run per subdirectory (one per model, each with a
    summary.json): `draw(run_dir, figures_dir)` for each, in name order."""
    return [e for out in sorted(Path(results_dir).iterdir())
            if (out / "summary.json").exists() for e in draw(out, Path(figures_dir))]


@dataclass(frozen=True)
class Finding:
    """One row of the findings table."""

    analysis: str
    measure: str
    value: float
    low: float | None
    high: float | None
    n: str
    random_control: str
    verdict: str
    headline: bool = False  # also listed in the short headline table

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def save_findings(ctx: Context, findings: Sequence[Finding], settings: Mapping[str, Any],
                  notes: Sequence[str] = ()) -> Path:
    """Write the script's finding rows, settings and caveats, then regenerate the markdown summary.

    Quick (smoke-test) runs write only their own directory, never the shared summary.
    """
    path = write_json(ctx.out / "findings.json",
                      {"analysis": ctx.name, "quick": ctx.quick, "settings": dict(settings),
                       "notes": list(notes), "findings": [f.as_dict() for f in findings]})
    if not ctx.quick and RESULTS.resolve() in ctx.out.resolve().parents:
        write_findings_md(RESULTS)
    return path


def print_findings(findings: Sequence[Finding]) -> None:
    print("\nFindings (95% CIs):")
    for f in findings:
        print(f"- {f.measure}: {fmt_ci(f.value, f.low, f.high)} (n={f.n}); random: "
              f"{f.random_control}; verdict: {f.verdict}")


ORDER = ["mid_layer_sweep", "kl_diversity_by_layer", "base_vs_instruct", "outcome_direction",
         "sae_steering"]


def write_findings_md(results_root: Path) -> Path:
    """Collect every `<analysis>/findings.json` under results_root into one markdown table."""
    rows, notes = [], []
    found = []
    for fpath in sorted(results_root.glob("**/findings.json")):
        data = json.loads(fpath.read_text(encoding="utf-8"))
        if not data.get("quick") and data.get("analysis") in ORDER:
            found.append((ORDER.index(data["analysis"]), len(fpath.parts), str(fpath), data))
    heads = []
    for _, _, fpath, data in sorted(found, key=lambda x: x[:3]):
        rel = Path(fpath).parent.relative_to(results_root)
        notes.append(f"- `{data['analysis']}` (`results/{rel}/`): settings "
                     f"{json.dumps(data.get('settings', {}))}")
        notes.extend(f"  - {note}" for note in data.get("notes", []))
        for f in data["findings"]:
            ci = ("" if f["low"] is None or f["high"] is None
                  else f"[{fmt(f['low'])}, {fmt(f['high'])}]")
            row = (f"| {f['analysis']} | {f['measure']} | {fmt(f['value'])} | {ci} | "
                   f"{f['n']} | {f['random_control']} | {f['verdict']} |")
            rows.append(row)
            if f.get("headline"):
                heads.append(row)
    text = [
        "# Measurement findings (steerlens analyses)",
        "",
        "Generated by the scripts in `analyses/` (each run rewrites this file from every",
        "`results/<analysis>/findings.json`). Intervals are 95% (percentile bootstrap over",
        "prompts/items unless the measure says Wilson). n counts prompts or items.",
        "",
        "## Headline findings",
        "",
        "| analysis | measure | value | 95% CI | n | random control | verdict |",
        "|---|---|---|---|---|---|---|",
        *heads,
        "",
        "## All findings",
        "",
        "| analysis | measure | value | 95% CI | n | random control | verdict |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Settings and caveats",
        "",
        *notes,
        "",
    ]
    return atomic_write_text(results_root / FINDINGS_MD, "\n".join(text))
