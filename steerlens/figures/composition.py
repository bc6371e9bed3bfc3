"""Composition figures: each behaviour's score shift per steering condition (vectors alone, summed,
two in one block, switched, random), and the shifts before vs after a schedule's switch step.

They take `ShiftRow`s (a shift vs unsteered with its interval), never a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go


@dataclass(frozen=True)
class ShiftRow:
    """One condition's mean score shift vs unsteered on one behaviour, with its 95% CI.

    Attributes:
        condition: the steering condition ("summed", "switch A->B", "random 0", ...).
        behaviour: the behaviour scored.
        shift: mean paired score difference vs unsteered.
        low: lower end of the 95% interval.
        high: upper end.
        n: number of prompts.
        segment: which part of the continuation was scored ("full", "before", "after").
    """

    condition: str
    behaviour: str
    shift: float
    low: float
    high: float
    n: int
    segment: str = "full"


def _bars(fig: go.Figure, rows: Sequence[ShiftRow], x_of, name: str, color: str | None,
          legendgroup: str) -> None:
    fig.add_trace(go.Bar(
        x=[x_of(r) for r in rows], y=[r.shift for r in rows], name=name, marker_color=color,
        legendgroup=legendgroup,
        error_y=dict(type="data", symmetric=False, array=[r.high - r.shift for r in rows],
                     arrayminus=[r.shift - r.low for r in rows]),
        hovertext=[f"n={r.n}" for r in rows]))


def shift_bars(rows: Sequence[ShiftRow], title: str | None = None) -> go.Figure:
    """Grouped bars: per condition, each behaviour's shift vs unsteered with its 95% CI.

    Args:
        rows: one `ShiftRow` per (condition, behaviour), in display order.
        title: the figure title.

    Returns:
        A plotly figure (one subplot row; one bar colour per behaviour).

    Raises:
        ValueError: if `rows` is empty.
    """
    if not rows:
        raise ValueError("shift_bars needs at least one ShiftRow.")
    return _grouped(rows, lambda r: r.condition, title or "Score shift vs unsteered", 480, 900)


def segment_shift_bars(rows: Sequence[ShiftRow], title: str | None = None) -> go.Figure:
    """Per condition and segment (before / after the switch), each behaviour's shift with its CI.

    Args:
        rows: `ShiftRow`s whose `segment` is "before" or "after".
        title: the figure title.

    Returns:
        A plotly figure with x = "condition | segment", one bar colour per behaviour.

    Raises:
        ValueError: if `rows` is empty.
    """
    if not rows:
        raise ValueError("segment_shift_bars needs at least one ShiftRow.")
    return _grouped(rows, lambda r: f"{r.condition} | {r.segment}",
                    title or "Score shift before and after the switch", 500, 1100)


def _grouped(rows: Sequence[ShiftRow], x, title: str, height: int, width: int) -> go.Figure:
    """One bar colour per behaviour, grouped at the x label `x(row)`."""
    fig = go.Figure()
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for i, b in enumerate(dict.fromkeys(r.behaviour for r in rows)):
        _bars(fig, [r for r in rows if r.behaviour == b], x, b, colors[i % len(colors)], b)
    fig.update_layout(barmode="group", title=title,
                      yaxis_title="score shift (steered - unsteered)", height=height, width=width)
    return fig
