"""Diversity figures: distinct-sample fractions per prompt or per condition, with n."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from ..measures.diversity import DiversityResult
from ..stats import bootstrap_ci

METRICS = ("distinct_fraction", "distinct_n")


def diversity_bars(
    results: DiversityResult | Mapping[str, DiversityResult],
    metric: str = "distinct_fraction",
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    title: str | None = None,
) -> go.Figure:
    """Bars of a diversity metric.

    One DiversityResult: one bar per prompt. A mapping name -> result: one bar per condition
    (mean over prompts, bootstrap CI over prompts), labelled with n prompts and k samples. A dashed
    line marks 1/k, the floor of `distinct_fraction` (all k samples identical).

    Args:
        results: one result, or condition name -> result.
        metric: "distinct_fraction" or "distinct_n".
        ci: confidence level of the per-condition CIs.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        title: the figure title (default: one naming the metric and n).

    Returns:
        A plotly bar chart.

    Raises:
        ValueError: for an unknown metric or an empty mapping.
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; valid metrics are {list(METRICS)}.")
    if isinstance(results, DiversityResult):
        vals = getattr(results, metric)
        fig = go.Figure(go.Bar(x=[f"{i}: {p[:40]}" for i, p in enumerate(results.prompts)],
                               y=list(vals), name=metric,
                               text=[f"k={results.k}"] * results.n, textposition="outside"))
        ks = {results.k}
        n_label = f"n={results.n} prompts"
    else:
        if not results:
            raise ValueError("diversity_bars needs at least one result.")
        names = list(results)
        cis = [bootstrap_ci(getattr(results[nm], metric), n_boot=n_boot, ci=ci, seed=seed,
                            nan_policy="omit") for nm in names]
        est = np.array([c.estimate for c in cis])
        fig = go.Figure(
            go.Bar(
                x=names,
                y=est,
                name=metric,
                error_y={"type": "data", "symmetric": False,
                         "array": np.nan_to_num(np.array([c.high for c in cis]) - est),
                         "arrayminus": np.nan_to_num(est - np.array([c.low for c in cis]))},
                text=[f"n={c.n}, k={results[nm].k}" for c, nm in zip(cis, names)],
                textposition="outside",
            )
        )
        ks = {r.k for r in results.values()}
        n_label = f"mean over prompts, {ci:.0%} bootstrap CI"
    if metric == "distinct_fraction" and len(ks) == 1:
        fig.add_hline(y=1.0 / ks.pop(), line_dash="dash", annotation_text="1/k (no diversity)")
    fig.update_layout(
        title=title or f"Sampling diversity: {metric} ({n_label})",
        yaxis_title=metric,
        yaxis_range=[0, 1.1],
    )
    return fig
