"""KL figures: next-token KL by layer (log scale, bootstrap CI bars) and KL along a sequence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ..measures.kl import KLResult, TokenKL
from ..stats import bootstrap_ci

Values = Sequence[float] | np.ndarray | KLResult


def _series(data) -> dict[str, dict[int, np.ndarray]]:
    """Normalise the accepted inputs to {series name: {layer: per-prompt bits}}."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        missing = {"layer", "bits"} - set(data.columns)
        if missing:
            raise ValueError(f"DataFrame needs columns 'layer' and 'bits' (and optionally "
                             f"'series'); missing {sorted(missing)}.")
        groups = data.groupby("series") if "series" in data.columns else [("KL", data)]
        return {str(name): {int(layer): g2["bits"].to_numpy(float)
                            for layer, g2 in g.groupby("layer")} for name, g in groups}
    if not isinstance(data, Mapping) or not data:
        raise ValueError("kl_by_layer takes a non-empty mapping layer -> per-prompt bits (or "
                         "KLResult), a mapping series -> such mappings, or a DataFrame.")
    first = next(iter(data.values()))
    if isinstance(first, Mapping):
        return {str(name): {int(k): _values(v) for k, v in m.items()} for name, m in data.items()}
    return {"KL": {int(k): _values(v) for k, v in data.items()}}


def _values(v) -> np.ndarray:
    return v.values if isinstance(v, KLResult) else np.asarray(v, dtype=float)


def kl_by_layer(
    data,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    log_y: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Mean next-token KL (bits) per layer with bootstrap CI error bars, one trace per series.

    `data`: {layer: bits or KLResult}, {series: {layer: ...}} (e.g. real vs random vector), or a
    DataFrame with columns layer, bits[, series]. On the log axis a mean of exactly 0 is not drawn.

    Args:
        data (Mapping | pandas.DataFrame): per-prompt KL values by layer (and series).
        ci: confidence level.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        log_y: use a log y axis.
        title: the figure title (default: one stating the CI level and n).

    Returns:
        A plotly line chart with CI error bars.

    Raises:
        ValueError: if `data` is empty or a DataFrame lacks the "layer" / "bits" columns.
    """
    fig = go.Figure()
    for name, by_layer in _series(data).items():
        layers = sorted(by_layer)
        cis = [bootstrap_ci(by_layer[layer], n_boot=n_boot, ci=ci, seed=seed) for layer in layers]
        est = np.array([c.estimate for c in cis])
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=est,
                mode="lines+markers",
                name=name,
                error_y={"type": "data", "symmetric": False,
                         "array": np.nan_to_num(np.array([c.high for c in cis]) - est),
                         "arrayminus": np.nan_to_num(est - np.array([c.low for c in cis]))},
                customdata=[[c.n, c.low, c.high] for c in cis],
                hovertemplate="layer %{x}: %{y:.3g} bits [%{customdata[1]:.3g}, "
                              "%{customdata[2]:.3g}], n=%{customdata[0]}<extra>" + name + "</extra>",
            )
        )
    ns = sorted({c for by in _series(data).values() for c in (len(v) for v in by.values())})
    fig.update_layout(
        title=title or f"Next-token KL(base || steered) by layer (mean, {ci:.0%} bootstrap CI, "
                       f"n={ns[0] if len(ns) == 1 else ns} prompts)",
        xaxis_title="layer",
        yaxis_title="KL (bits)",
        yaxis_type="log" if log_y else "linear",
    )
    return fig


def kl_per_token(result: TokenKL, title: str | None = None) -> go.Figure:
    """Bar chart of KL (bits) at each token of a text (plotly twin of the circuitsvis view).

    Args:
        result: the output of `per_token_kl`.
        title: the figure title.

    Returns:
        A plotly bar chart, one bar per token.
    """
    labels = [f"{i}:{t!r}" for i, t in enumerate(result.tokens)]
    fig = go.Figure(go.Bar(x=labels, y=list(result.bits), name="KL"))
    fig.update_layout(
        title=title or f"Per-token {result.direction} (bits), strength {result.strength}, "
                       f"layers {list(result.layers)}, n={result.n} tokens",
        xaxis_title="token (prediction made after it)",
        yaxis_title="KL (bits)",
    )
    return fig
