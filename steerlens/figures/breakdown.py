"""Breakdown figures: a behaviour's score shift and the perplexity ratios against steering strength,
one curve per model, with each model's breakdown point marked (base vs instruct fragility).

`breakdown_curves` takes `BreakdownCurve`s (numbers saved by an analysis), never a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots


@dataclass(frozen=True)
class BreakdownCurve:
    """One model's measures over a strength grid.

    Attributes:
        label: the model's name.
        strengths: |strength| per grid point, in the unit of the x-axis.
        shift: mean behaviour-score shift vs unsteered per strength.
        low: lower end of the shift's 95% CI.
        high: upper end.
        prose_log2_ppl: mean log2(perplexity steered / unsteered) of held-out prose.
        continuation_log2_ppl: mean log2 perplexity ratio of the steered continuations.
        breakdown: the breakdown strength in the same unit (inf or NaN: none in the grid).
    """

    label: str
    strengths: tuple[float, ...]
    shift: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    prose_log2_ppl: tuple[float, ...]
    continuation_log2_ppl: tuple[float, ...]
    breakdown: float = math.inf


def breakdown_curves(curves: Sequence[BreakdownCurve], xaxis_title: str = "|strength|",
                     title: str | None = None) -> go.Figure:
    """Two stacked panels on a log x-axis: behaviour shift (with CI) and log2 perplexity ratios.

    Args:
        curves: one `BreakdownCurve` per model.
        xaxis_title: the unit of the strengths.
        title: the figure title.

    Returns:
        A plotly figure; a dashed vertical line marks each model's breakdown point, a dotted
        horizontal line log2 ratio = 1 (perplexity doubled).

    Raises:
        ValueError: if `curves` is empty or a curve's sequences differ in length.
    """
    if not curves:
        raise ValueError("breakdown_curves needs at least one curve.")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("behaviour score shift vs unsteered",
                                        "log2 perplexity ratio (steered / unsteered)"))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
    for i, c in enumerate(curves):
        n = len(c.strengths)
        if any(len(x) != n for x in (c.shift, c.low, c.high, c.prose_log2_ppl,
                                     c.continuation_log2_ppl)):
            raise ValueError(f"Curve {c.label!r}: every sequence needs {n} values (one per strength).")
        col = colors[i % len(colors)]
        fig.add_trace(go.Scatter(
            x=list(c.strengths), y=list(c.shift), mode="lines+markers", name=f"{c.label} shift",
            line=dict(color=col), legendgroup=c.label,
            error_y=dict(type="data", symmetric=False,
                         array=[h - s for h, s in zip(c.high, c.shift)],
                         arrayminus=[s - lo for s, lo in zip(c.shift, c.low)])), row=1, col=1)
        fig.add_trace(go.Scatter(x=list(c.strengths), y=list(c.prose_log2_ppl), mode="lines+markers",
                                 name=f"{c.label} prose", line=dict(color=col), legendgroup=c.label),
                      row=2, col=1)
        fig.add_trace(go.Scatter(x=list(c.strengths), y=list(c.continuation_log2_ppl),
                                 mode="lines+markers", name=f"{c.label} continuation",
                                 line=dict(color=col, dash="dot"), legendgroup=c.label), row=2, col=1)
        if math.isfinite(c.breakdown) and c.breakdown > 0:
            for row in (1, 2):
                fig.add_vline(x=c.breakdown, line=dict(color=col, dash="dash"), row=row, col=1)
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dot"), row=2, col=1)
    fig.update_xaxes(type="log", title_text=xaxis_title, row=2, col=1)
    fig.update_layout(title=title or "Behaviour and perplexity vs strength", height=700, width=850)
    return fig
