"""Figures for harness evaluations: steered accuracy against strength, with intervals.

Computation lives in the analysis (`analyses/harness_accuracy.py`); this module only draws the
saved rows: one line per direction (e.g. the outcome direction and a random direction of the same
norm), accuracy with its Wilson interval as error bars, the unsteered accuracy as a dashed line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go


def accuracy_vs_strength(
    rows: Sequence[Mapping[str, float | str | int]],
    baseline: Mapping[str, float | str | int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Accuracy against strength, one line per direction, Wilson intervals as error bars.

    Args:
        rows: dicts with "direction", "strength", "accuracy", "low", "high" and "n".
        baseline: the unsteered {"accuracy", "low", "high", "n"}, drawn as a dashed line with a band.
        title: the figure title.

    Returns:
        A plotly figure.

    Raises:
        ValueError: for no rows or rows missing a field.
    """
    if not rows:
        raise ValueError("accuracy_vs_strength needs at least one row.")
    need = {"direction", "strength", "accuracy", "low", "high", "n"}
    missing = need - set(rows[0])
    if missing:
        raise ValueError(f"Rows need the fields {sorted(need)}; missing {sorted(missing)}.")
    fig = go.Figure()
    for name in dict.fromkeys(str(r["direction"]) for r in rows):
        sel = sorted((r for r in rows if r["direction"] == name), key=lambda r: float(r["strength"]))
        acc = [float(r["accuracy"]) for r in sel]
        fig.add_trace(go.Scatter(
            x=[float(r["strength"]) for r in sel], y=acc, mode="lines+markers", name=name,
            error_y=dict(type="data", symmetric=False,
                         array=[float(r["high"]) - a for r, a in zip(sel, acc)],
                         arrayminus=[a - float(r["low"]) for r, a in zip(sel, acc)]),
            text=[f"n={r['n']}" for r in sel]))
    if baseline is not None:
        fig.add_hline(y=float(baseline["accuracy"]), line_dash="dash",
                      annotation_text=f"unsteered (n={baseline['n']})")
        fig.add_hrect(y0=float(baseline["low"]), y1=float(baseline["high"]), opacity=0.12,
                      line_width=0, fillcolor="gray")
    fig.update_layout(title=title, xaxis_title="strength (x median residual norm)",
                      yaxis_title="accuracy (Wilson 95% CI)", template="plotly_white")
    return fig
