"""Shared plumbing for the analyses: the flag skeleton, model loading, output paths and tables.

- Flags: `parser` has the flags every analysis shares (`--model`, `--device`, `--threads`,
  `--out`, `--fig-dir`, `--seed`, `--no-progress`, and `--quick` / `--fresh` where the analysis
  supports them); `add_strengths` adds the list of steering strengths (`--strengths 0.1,0.2`; the
  old `--alphas` still parses and prints a deprecation note), `add_list` any other list of
  numbers (comma- or space-separated).
- Running: `start` parses the flags, applies `--threads`, loads the model and returns a `Context`
  (output directories, seed, quick/resume); tables go under `results/<name>/`, figures under
  `figures/`, finding rows through `analyses.findings.save_findings`.
- Vectors: `cached_vector` builds the CAA vector once per results directory; two library helpers
  put strengths on a comparable scale across layers and models: `residual_norms` (median
  per-token norm of the residual stream entering a layer) and `scale_to_residual` (rescale a
  vector so that strength 1.0 adds that many residual norms).
- Gallery hooks: `GalleryEntry` (one figure card), `run_variants` and `each_run` (a
  `make_figures` for analyses with several saved runs).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from steerlens.backend import DEFAULT_MODEL, load_model, runtime
from steerlens.io import atomic_write_text
from steerlens.measures.residual_scale import residual_norms, scale_to_residual  # noqa: F401
from steerlens.methods import build_vector
from steerlens.pairs import Behaviour, load_behaviour
from steerlens.vectors import SteeringVector, VectorFileError

from . import FIGURES, RESULTS, command, get

QUICK_PAIRS = 8  # train pairs used for the vector in --quick (smoke-test) runs


# ------------------------------------------------------------------------------ flags


def _number_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind.__name__} values, e.g. 1,2,3 or 1 2 3; got {text!r}") from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


class _List(argparse.Action):
    """A list of numbers given as "0.1,0.2", "0.1 0.2" or "-0.4 -0.2" (one flat list)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [x for part in values for x in part])


class _Deprecated(_List):
    """A renamed flag: stores into the new flag's destination and says so on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        if self.nargs is None:  # a single value
            setattr(namespace, self.dest, values)
        else:
            super().__call__(parser, namespace, values, option_string)


def add_list(p: argparse.ArgumentParser, flag: str, kind: Callable[[str], Any] = float,
             default: Sequence | None = None, help: str = "", nargs: str = "+") -> None:
    """A flag taking a list of numbers, comma- or space-separated (`--strengths 0.1,0.2`,
    `--strengths -0.4 -0.2`; a comma list starting with a minus needs `=`: `--strengths=-0.4,0.2`).
    `nargs="*"` also accepts an empty list."""
    p.add_argument(flag, type=_number_list(kind), nargs=nargs, action=_List,
                   default=None if default is None else list(default),
                   help=help + ("" if default is None else " (default %(default)s)"))


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept `old` as a hidden, deprecated spelling of the already added flag `new`."""
    action = next(a for a in p._actions if new in a.option_strings)
    p.add_argument(old, dest=action.dest, type=action.type, nargs=action.nargs, action=_Deprecated,
                   new=new, help=argparse.SUPPRESS)


def parser(name: str, description: str, *, quick: bool = True, fresh: bool = True,
           per_model: bool = False) -> argparse.ArgumentParser:
    """An ArgumentParser with the flags every analysis shares.

    `quick=False` / `fresh=False` leave out `--quick` (tiny smoke-test settings) / `--fresh`
    (ignore cached results) for analyses that have no such mode; `per_model` says in the help
    that results go to one subdirectory per model (see `start`).
    """
    p = argparse.ArgumentParser(prog=command(name), description=description)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is much faster on a machine shared with other jobs)")
    p.add_argument("--out", default=None,
                   help=f"results directory (default {get(name).results_dir(Path('results'))}/"
                   + ("<model>/)" if per_model else ")"))
    p.add_argument("--fig-dir", default=None, help="figures directory (default figures/)")
    p.add_argument("--seed", type=int, default=0, help="seed for random controls and sampling")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if quick:
        p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    if fresh:
        p.add_argument("--fresh", action="store_true", help="ignore cached results in --out")
    return p


def add_strengths(p: argparse.ArgumentParser, default: Sequence[float] | None,
                  help: str) -> None:
    """`--strengths 0.1,0.2` (`--alphas`, its old name, still parses with a deprecation note)."""
    add_list(p, "--strengths", float, default, help)
    deprecated_alias(p, "--alphas", "--strengths")


@dataclass(frozen=True)
class Context:
    """Resolved output locations and run settings for one analysis run."""

    name: str
    out: Path
    fig_dir: Path
    device: str
    progress: bool
    seed: int
    quick: bool
    resume: bool


def context(name: str, args: argparse.Namespace, subdir: str | None = None) -> Context:
    """Apply `--threads`, create the output directories and bundle the run settings.

    Results go to `--out`, else `results/<name>/` (`results/<name>/<subdir>/` with `subdir`,
    e.g. one directory per model).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    default = get(name).results_dir(RESULTS)
    out = Path(args.out) if args.out else default / (subdir or "")
    fig_dir = Path(args.fig_dir) if args.fig_dir else FIGURES
    out.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    return Context(name, out, fig_dir, args.device, not args.no_progress, args.seed,
                   getattr(args, "quick", False), not getattr(args, "fresh", False))


def start(name: str, p: argparse.ArgumentParser, argv: Sequence[str] | None = None, model=None,
          per_model: bool = False) -> tuple[argparse.Namespace, Context, Any]:
    """The start of every analysis's `main`: parse `argv`, apply `--threads`, load `--model` (or
    check the already loaded `model` against it) and resolve the output directories
    (`results/<name>/<model id>/` with `per_model`)."""
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = get_model(args.model, args.device, given=model)
    ctx = context(name, args, subdir=runtime.model_id(model) if per_model else None)
    return args, ctx, model


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


def cached_vector(model, behaviour: Behaviour, layers: Sequence[int], ctx: Context,
                  cache_dir: Path | None = None, chat: bool | None = None,
                  show_progress: bool | None = None) -> SteeringVector:
    """Mean-difference vector on the behaviour's train pairs, saved once in `cache_dir` (default
    `ctx.out`) and reloaded while the layers, model and pairs match (unless `--fresh`).

    `chat=None` chat-templates the pairs' prompts for instruct models (the library default);
    `--quick` runs use only the first `QUICK_PAIRS` train pairs.
    """
    pairs = behaviour.train[:QUICK_PAIRS] if ctx.quick else behaviour.train
    layers = sorted(int(x) for x in layers)
    tag = "" if chat is None else ("_chat" if chat else "_raw")
    path = Path(cache_dir or ctx.out) / f"vector_{behaviour.name}{tag}"
    if ctx.resume and path.exists():
        try:
            vec = SteeringVector.load(path, model)
            if (vec.layers == layers and vec.model_id == runtime.model_id(model)
                    and vec.n_pairs == len(pairs)):
                return vec
        except VectorFileError:
            pass
    progress = ctx.progress if show_progress is None else show_progress
    vec = build_vector(model, pairs, layers, show_progress=progress, chat=chat)
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


def draw_runs(draw: Callable[..., list[GalleryEntry]], figures_dir: Path,
              runs: Sequence[tuple[Path, str | None]], needs: str) -> list[GalleryEntry]:
    """Gallery hook body: `draw(run_dir, figures_dir, command)` for each (run_dir, command) in
    `runs` whose run_dir holds the file `needs` (runs not made are skipped)."""
    return [e for out, cmd in runs if (Path(out) / needs).exists()
            for e in draw(Path(out), Path(figures_dir), cmd)]


def run_variants(name: str, draw: Callable[..., list[GalleryEntry]], needs: str,
                 variants: Mapping[str, Sequence[str]]) -> Callable[[Path, Path], list]:
    """The gallery hook of an analysis whose default run is saved in its results directory and
    whose other runs in subdirectories: `variants` maps each subdirectory to the flags that
    produced it (the cards name the command). Runs without the file `needs` are skipped."""

    def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
        runs = [(Path(results_dir), command(name))] + [
            (Path(results_dir) / sub, command(name, *flags)) for sub, flags in variants.items()]
        return draw_runs(draw, figures_dir, runs, needs)

    return make_figures


def each_run(draw: Callable[..., list[GalleryEntry]]) -> Callable[[Path, Path], list]:
    """The gallery hook of an analysis that saves one run per subdirectory (one per model, each
    with a summary.json): `draw(run_dir, figures_dir, None)` for each, in name order."""

    def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
        runs = [(out, None) for out in sorted(Path(results_dir).iterdir())]
        return draw_runs(draw, figures_dir, runs, needs="summary.json")

    return make_figures
