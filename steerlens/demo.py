"""The `steerlens demo` job: sentiment steering on the embedded model, end to end.

It builds a CAA mean-difference vector from the shipped sentiment pairs (train split), generates
greedy continuations of held-out prompts at several strengths plus a norm-matched random-direction
control, scores each continuation with VADER, and writes a self-contained HTML report. It is the
shortest path through the whole pipeline: pairs -> activations -> vector -> steering -> measure ->
figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .backend import Model, load_model, runtime
from .generate import generate
from .methods import build_vector, random_like
from .pairs import load_behaviour

DEMO_STRENGTHS = (-6.0, -3.0, 0.0, 3.0, 6.0)
REPORT_FILE = "demo.html"


@dataclass(frozen=True)
class DemoRow:
    """One continuation of the demo and its sentiment.

    Attributes:
        prompt: the held-out prompt.
        condition: "baseline", "steered" or "random".
        strength: the strength (0 for the baseline).
        text: the greedy continuation.
        sentiment: its VADER compound score in [-1, 1].
    """
    prompt: str
    condition: str  # "baseline", "steered", "random"
    strength: float
    text: str
    sentiment: float


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo computed, for printing and `figures.demo.demo_figure`.

    Attributes:
        model: the model's id.
        layer: the steered layer.
        vector_norm: the vector's norm at that layer.
        n_pairs: training pairs the vector was built from.
        rows: one row per (condition, strength, prompt).
        max_new_tokens: tokens per continuation.
    """
    model: str
    layer: int
    vector_norm: float
    n_pairs: int
    rows: tuple[DemoRow, ...]
    max_new_tokens: int


def run_demo_result(model: Model, layer: int | None = None, n_prompts: int = 4,
                    strengths=DEMO_STRENGTHS, max_new_tokens: int = 32) -> DemoResult:
    """Compute the demo's generations and scores on an already-loaded model.

    Builds the sentiment CAA vector at `layer`, generates greedy continuations of held-out prompts at
    each strength, plus a norm-matched random direction at the largest |strength|, and scores them
    with VADER.

    Args:
        model: the model.
        layer: the layer to steer (default: a third of the depth, at least layer 1).
        n_prompts: held-out prompts to use.
        strengths (Sequence[float]): the strengths (0 is the unsteered baseline).
        max_new_tokens: tokens per continuation.

    Returns:
        The `DemoResult`.
    """
    from .measures.scorers import get_scorer

    behaviour = load_behaviour("sentiment")
    # a third of the depth, never the embedding layer (resid_pre 0 holds only token embeddings)
    n = runtime.n_layers(model)
    layer = min(max(1, n // 3), n - 1) if layer is None else layer
    vec = build_vector(model, behaviour.train, [layer], show_progress=False)
    score = get_scorer(behaviour.scorer)
    prompts = list(behaviour.eval_prompts[:n_prompts])
    rows: list[DemoRow] = []
    control = random_like(vec, seed=0)
    for s in strengths:
        gen = generate(model, prompts, None if s == 0 else vec, None if s == 0 else s,
                       max_new_tokens=max_new_tokens)
        cond = "baseline" if s == 0 else "steered"
        rows += [DemoRow(p, cond, s, t, float(score(t))) for p, t in zip(prompts, gen.texts)]
    top = max(strengths, key=abs)
    gen = generate(model, prompts, control, abs(top), max_new_tokens=max_new_tokens)
    rows += [DemoRow(p, "random", abs(top), t, float(score(t))) for p, t in zip(prompts, gen.texts)]
    return DemoResult(runtime.model_id(model), layer, vec.norms[layer], vec.n_pairs, tuple(rows),
                      max_new_tokens)


def write_report(result: DemoResult, out_dir: str | Path) -> Path:
    """Write the demo's self-contained HTML report to `out_dir/demo.html` (atomically).

    Args:
        result: what `run_demo_result` computed.
        out_dir: the report directory (created if missing).

    Returns:
        The path of the report.
    """
    from .figures import save_html
    from .figures.demo import demo_figure

    return save_html(demo_figure(result), Path(out_dir) / REPORT_FILE)


def print_summary(result: DemoResult) -> None:
    """Print every continuation with its sentiment, and the mean sentiment per condition.

    Args:
        result: what `run_demo_result` computed.
    """
    print(f"model {result.model}, layer {result.layer}, |v| = {result.vector_norm:.2f}, "
          f"{result.n_pairs} train pairs")
    for row in result.rows:
        text = row.text.replace("\n", " ")[:100]
        print(f"[{row.condition:8s} {row.strength:+5.1f}] {row.sentiment:+.2f} {text}")
    for cond, s in sorted({(r.condition, r.strength) for r in result.rows}, key=lambda x: x[1]):
        vals = [r.sentiment for r in result.rows if r.condition == cond and r.strength == s]
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))
        print(f"mean VADER {cond:8s} {s:+5.1f}: {mean:+.3f} (sd {sd:.3f}, n={len(vals)})")


def run_demo(model_name: str | None = None, device: str | None = None,
             out_dir: Path = Path("figures"), layer: int | None = None) -> Path:
    """Load the model, run the demo, print a summary and write `out_dir/demo.html`.

    The report is written only once every generation has run (`steerlens demo` also checks the
    directory before loading the model and stages it, so a failed run writes nothing).

    Args:
        model_name: the model (default: the embedded SmolLM2-135M-Instruct).
        device: where to run it (default: CUDA when available).
        out_dir: the report directory.
        layer: the layer to steer (default: a third of the depth).

    Returns:
        The path of the report.
    """
    model = load_model(model_name, device=device) if model_name else load_model(device=device)
    result = run_demo_result(model, layer=layer)
    print_summary(result)
    return write_report(result, out_dir)
