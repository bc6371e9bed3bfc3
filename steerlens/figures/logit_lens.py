"""Logit-lens figures: a steering vector's token table and the residual stream's per-layer guesses."""

from __future__ import annotations

import plotly.graph_objects as go

from ..measures.logit_lens import ResidualLens, TokenScore, VectorLens


def _fmt(scores: tuple[TokenScore, ...]) -> str:
    return ", ".join(f"{s.token!r} ({s.value:+.2f})" for s in scores)


def vector_lens_table(lens: VectorLens, title: str | None = None) -> go.Figure:
    """One table row per layer: the top promoted and suppressed tokens with their logit values.

    Args:
        lens: the output of `vector_lens`.
        title: the figure title.

    Returns:
        A plotly table.
    """
    layers = list(lens.layers)
    cells = [
        [str(layer) for layer in layers],
        [_fmt(lens.promoted[layer]) for layer in layers],
        [_fmt(lens.suppressed[layer]) for layer in layers],
    ]
    fig = go.Figure(
        go.Table(
            columnwidth=[1, 6, 6],
            header={"values": ["layer", f"top {lens.k} promoted", f"top {lens.k} suppressed"],
                    "align": "left"},
            cells={"values": cells, "align": "left"},
        )
    )
    fig.update_layout(
        title=title or f"Logit lens of {lens.method} vector ({lens.component}, norm={lens.norm}, "
                       f"model {lens.model_id})",
        height=120 + 40 * len(layers),
    )
    return fig


def residual_lens_heatmap(lens: ResidualLens, title: str | None = None) -> go.Figure:
    """Layers x rank heatmap of top-token probabilities, each cell labelled with its token.

    With a target token, a second trace marks its probability per layer on a secondary axis.

    Args:
        lens: the output of `residual_lens`.
        title: the figure title.

    Returns:
        A plotly heatmap.
    """
    k = len(lens.top_probs[0])
    x = [f"#{i + 1}" for i in range(k)]
    text = [[repr(t) for t in row] for row in lens.top_tokens]
    fig = go.Figure(
        go.Heatmap(
            z=[list(row) for row in lens.top_probs],
            x=x,
            y=list(lens.labels),
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": "prob"},
            hovertemplate="%{y}<br>rank %{x}: %{text}<br>p=%{z:.3f}<extra></extra>",
            name="top tokens",
        )
    )
    if lens.target_prob is not None:
        fig.add_trace(
            go.Scatter(
                x=list(lens.target_prob),
                y=list(lens.labels),
                xaxis="x2",
                mode="lines+markers",
                name=f"p({lens.target!r})",
                customdata=list(lens.target_rank or ()),
                hovertemplate="%{y}: p=%{x:.3g}, rank %{customdata}<extra></extra>",
                line={"color": "crimson"},
            )
        )
        fig.update_layout(
            xaxis={"domain": [0.0, 0.72]},
            xaxis2={"domain": [0.78, 1.0], "type": "log", "title": f"p({lens.target!r})"},
        )
    pos_token = lens.tokens[lens.read_at]
    fig.update_layout(
        title=title or f"Residual logit lens read at token {lens.read_at} ({pos_token!r})"
                       + (" (steered)" if lens.steered else ""),
        yaxis={"autorange": "reversed", "title": "residual stream"},
        height=200 + 22 * len(lens.labels),
    )
    return fig
