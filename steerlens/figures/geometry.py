"""Geometry figures: cosine-similarity matrices between behaviour vectors, side by side per model,
and the scatter of one model's pairwise cosines against another's with the random-vector band.

Both take plain arrays saved by an analysis (no model): a square matrix per model over the same
ordered behaviour labels, and the upper-triangle entries of two such matrices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def cosine_heatmaps(matrices: Mapping[str, Sequence[Sequence[float]]], labels: Sequence[str],
                    title: str | None = None) -> go.Figure:
    """One cosine-similarity heatmap per model, side by side, on a shared -1..1 colour scale.

    Args:
        matrices: model label -> square matrix (len(labels) x len(labels)) of cosines.
        labels: the behaviour names, in the matrices' row/column order.
        title: the figure title.

    Returns:
        A plotly figure with one annotated heatmap per model.

    Raises:
        ValueError: if `matrices` is empty or a matrix is not len(labels) square.
    """
    if not matrices:
        raise ValueError("cosine_heatmaps needs at least one matrix.")
    k = len(labels)
    for name, m in matrices.items():
        if np.asarray(m, float).shape != (k, k):
            raise ValueError(f"Matrix {name!r} has shape {np.asarray(m).shape}; expected ({k}, {k}) "
                             "to match the labels.")
    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.12)
    for i, name in enumerate(names):
        m = np.asarray(matrices[name], float)
        fig.add_trace(go.Heatmap(
            z=m, x=list(labels), y=list(labels), zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
            text=[[f"{v:.2f}" for v in row] for row in m], texttemplate="%{text}",
            showscale=i == len(names) - 1, colorbar=dict(title="cos")), row=1, col=i + 1)
        fig.update_yaxes(autorange="reversed", row=1, col=i + 1)
    fig.update_layout(title=title or "Cosine similarity between behaviour vectors",
                      height=420, width=460 * len(names))
    return fig


def pair_scatter(x: Sequence[float], y: Sequence[float], pair_labels: Sequence[str],
                 x_name: str, y_name: str, random_band: tuple[float, float] | None = None,
                 title: str | None = None) -> go.Figure:
    """Each behaviour pair's cosine in one model (x) against another (y), with the random band.

    Args:
        x: the pairs' cosines in the first model.
        y: the same pairs' cosines in the second model.
        pair_labels: one label per pair ("formality/sentiment").
        x_name: the first model's name (x-axis).
        y_name: the second model's name (y-axis).
        random_band: (low, high) of cosines between norm-matched random vectors, drawn as a shaded
            square around 0; None draws none.
        title: the figure title.

    Returns:
        A plotly scatter with the identity line.

    Raises:
        ValueError: if x, y and pair_labels differ in length or are empty.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not (x.size == y.size == len(pair_labels)) or x.size == 0:
        raise ValueError(f"x, y and pair_labels must have the same non-zero length, got {x.size}, "
                         f"{y.size} and {len(pair_labels)}.")
    fig = go.Figure()
    if random_band is not None:
        lo, hi = random_band
        fig.add_shape(type="rect", x0=lo, x1=hi, y0=lo, y1=hi, fillcolor="lightgrey", opacity=0.5,
                      line_width=0, layer="below")
    lim = [min(-0.1, float(min(x.min(), y.min())) - 0.05), max(0.1, float(max(x.max(), y.max())) + 0.05)]
    fig.add_trace(go.Scatter(x=lim, y=lim, mode="lines", line=dict(dash="dot", color="grey"),
                             name="y = x"))
    fig.add_trace(go.Scatter(x=x, y=y, mode="markers+text", text=list(pair_labels),
                             textposition="top center", textfont=dict(size=9), name="behaviour pair"))
    fig.update_layout(title=title or f"Pairwise cosines: {x_name} vs {y_name}",
                      xaxis_title=f"cosine in {x_name}", yaxis_title=f"cosine in {y_name}",
                      height=520, width=620)
    return fig
