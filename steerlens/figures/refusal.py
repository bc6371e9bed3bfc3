"""Refusal figures: refusal rate per condition with Wilson intervals and the random-direction band,
the layer sweep that chose the refusal direction, and conditional steering's gate and effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go


@dataclass(frozen=True)
class RateRow:
    """One condition's refusal rate (Wilson interval) and, when it has one, its random band.

    Attributes:
        label: the condition's name on the axis.
        rate: refusals / n.
        low: lower end of the 95% Wilson interval.
        high: upper end.
        n: number of prompts.
        random_rates: the rate under each norm-matched random direction (empty: no controls).
        group: a legend group (e.g. "harmful prompts" / "harmless prompts").
    """

    label: str
    rate: float
    low: float
    high: float
    n: int
    random_rates: tuple[float, ...] = ()
    group: str = ""


def refusal_rate_bars(rows: Sequence[RateRow], title: str | None = None) -> go.Figure:
    """Refusal rate per condition with 95% Wilson error bars; random directions as grey dots.

    Args:
        rows: one `RateRow` per condition, in display order.
        title: the figure title.

    Returns:
        A plotly figure (bars per group, random-direction rates as a strip with their range).

    Raises:
        ValueError: if `rows` is empty.
    """
    if not rows:
        raise ValueError("refusal_rate_bars needs at least one RateRow.")
    fig = go.Figure()
    groups = list(dict.fromkeys(r.group for r in rows))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for gi, g in enumerate(groups):
        sub = [r for r in rows if r.group == g]
        fig.add_trace(go.Bar(
            x=[f"{r.label} (n={r.n})" for r in sub], y=[r.rate for r in sub], name=g or "rate",
            marker_color=colors[gi % len(colors)],
            error_y=dict(type="data", symmetric=False, array=[r.high - r.rate for r in sub],
                         arrayminus=[r.rate - r.low for r in sub])))
    xs, ys = [], []
    for r in rows:
        xs += [f"{r.label} (n={r.n})"] * len(r.random_rates)
        ys += list(r.random_rates)
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="random directions",
                                 marker=dict(color="rgba(90,90,90,0.55)", size=7, symbol="x")))
    fig.update_layout(title=title or "Refusal rate per condition (95% Wilson CI)",
                      yaxis_title="refusal rate", yaxis_range=[0, 1.02], barmode="group")
    return fig


def layer_sweep_plot(layers: Sequence[int], ablation_delta: Sequence[float],
                     addition_delta: Sequence[float], chosen: int | None = None,
                     random_ablation: Sequence[float] | None = None,
                     title: str | None = None) -> go.Figure:
    """Change in refusal log-odds per candidate layer: ablating (harmful) and adding (harmless).

    Args:
        layers: candidate layers.
        ablation_delta: mean change in refusal log-odds on harmful prompts when the layer's
            direction is ablated everywhere.
        addition_delta: mean change on harmless prompts when it is added at its layer.
        chosen: the selected layer (marked with a vertical line), or None.
        random_ablation: optional per-layer change under a random direction (a reference line).
        title: the figure title.

    Returns:
        A plotly line chart.

    Raises:
        ValueError: if the sequences differ in length or are empty.
    """
    if not layers or not len(layers) == len(ablation_delta) == len(addition_delta):
        raise ValueError("layers, ablation_delta and addition_delta must be non-empty and the same "
                         "length.")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(layers), y=list(ablation_delta), mode="lines+markers",
                             name="ablate (harmful prompts)"))
    fig.add_trace(go.Scatter(x=list(layers), y=list(addition_delta), mode="lines+markers",
                             name="add (harmless prompts)"))
    if random_ablation is not None:
        fig.add_trace(go.Scatter(x=list(layers), y=list(random_ablation), mode="lines",
                                 name="random direction", line=dict(dash="dot", color="grey")))
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dash", annotation_text=f"chosen layer {chosen}")
    fig.add_hline(y=0.0, line_color="black", line_width=1)
    fig.update_layout(title=title or "Refusal direction: layer sweep",
                      xaxis_title="layer the direction is read at",
                      yaxis_title="mean change in refusal log-odds")
    return fig


def gate_histogram(matching: Sequence[float], other: Sequence[float], threshold: float,
                   title: str | None = None, labels: tuple[str, str] = ("harmful", "harmless"),
                   ) -> go.Figure:
    """Overlaid histograms of the condition similarity for the two classes, with the threshold.

    Args:
        matching: similarities of prompts the condition should match.
        other: similarities of the other prompts.
        threshold: the gate threshold (vertical line).
        title: the figure title.
        labels: legend names of the two classes.

    Returns:
        A plotly histogram.
    """
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=list(matching), name=labels[0], opacity=0.6, nbinsx=30))
    fig.add_trace(go.Histogram(x=list(other), name=labels[1], opacity=0.6, nbinsx=30))
    fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"threshold {threshold:.3g}")
    fig.update_layout(barmode="overlay", title=title or "Condition similarity by class",
                      xaxis_title="similarity with the condition direction", yaxis_title="prompts")
    return fig
