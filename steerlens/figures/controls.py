"""Random-control figures: effects against many norm-matched random directions.

A steering effect means something only next to the same effect for random directions of equal
norm, and with k random directions the empirical p-value (1 + #random at least as extreme) /
(1 + k) can only fall below 0.05 once k >= 20. These figures show that comparison directly:
`real_vs_random` puts each real value on top of its cloud of random values (with p),
`strength_band_curve` draws an effect against strength with its CI and the random band (lowest
to highest random value, every random value as a dot), `transition_matrices` shows one 2x2
before -> after correctness matrix per strength, and `grouped_ci_bars` compares conditions
(e.g. steered, random, unsteered) across settings such as the sampling temperature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..stats import TransitionTable

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def real_vs_random(
    real: Mapping[str, float],
    random: Mapping[str, Sequence[float]],
    p_values: Mapping[str, float] | None = None,
    *,
    y_title: str = "effect",
    title: str | None = None,
) -> go.Figure:
    """Each cell's real value (red diamond) over its random directions' values (grey dots).

    Args:
        real: cell label -> the real vector's value.
        random: cell label -> one value per random direction (same labels as `real`).
        p_values: cell label -> empirical p, shown in the hover text and the x tick label.
        y_title: the y-axis title.
        title: the figure title.

    Returns:
        A plotly strip chart.

    Raises:
        ValueError: if `real` is empty or a label has no random values.
    """
    if not real:
        raise ValueError("real_vs_random needs at least one cell.")
    missing = [k for k in real if not len(random.get(k, ()))]
    if missing:
        raise ValueError(f"Cells {missing} have no random values; every cell of `real` needs "
                         "its random directions in `random`.")
    p_values = p_values or {}
    labels = list(real)
    ticks = [f"{k}<br>p={p_values[k]:.2g}" if k in p_values else k for k in labels]
    fig = go.Figure()
    xs, ys = [], []
    for lab, tick in zip(labels, ticks):
        vals = [float(v) for v in random[lab] if v is not None and math.isfinite(float(v))]
        xs += [tick] * len(vals)
        ys += vals
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="random directions",
                             marker={"color": "rgba(127,127,127,0.55)", "size": 7}))
    fig.add_trace(go.Scatter(x=ticks, y=[float(real[k]) for k in labels], mode="markers",
                             name="real vector", marker={"color": "#d62728", "size": 13,
                                                         "symbol": "diamond"}))
    ks = sorted({len(random[k]) for k in labels})
    fig.update_layout(title=title or f"Real vector vs k={ks[0] if len(ks) == 1 else ks} random "
                      "directions of equal norm", yaxis_title=y_title, xaxis_title="cell")
    return fig


def strength_band_curve(
    strengths: Sequence[float],
    values: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    random: Mapping[float, Sequence[float]],
    *,
    x_title: str = "strength",
    y_title: str = "effect",
    title: str | None = None,
) -> go.Figure:
    """An effect vs strength with its CI, against the random directions at each strength.

    `random` maps a strength to the random directions' values there; the grey band spans their
    lowest to highest value and each value is drawn as a dot (so the number of controls per
    strength is visible). A key given as |s| also serves -s (a random direction's sign is itself
    random).

    Args:
        strengths: the strengths (x).
        values: the real effect at each strength.
        low: lower CI bounds.
        high: upper CI bounds.
        random: strength -> random directions' values.
        x_title: the x-axis title.
        y_title: the y-axis title.
        title: the figure title.

    Returns:
        A plotly line chart.

    Raises:
        ValueError: if the sequences differ in length or are empty.
    """
    n = len(strengths)
    if n == 0 or not len(values) == len(low) == len(high) == n:
        raise ValueError(f"strengths, values, low and high must be non-empty and equally long; "
                         f"got {n}, {len(values)}, {len(low)}, {len(high)}.")
    order = sorted(range(n), key=lambda i: strengths[i])
    xs = [float(strengths[i]) for i in order]
    ys = [float(values[i]) for i in order]
    lo = [float(low[i]) if math.isfinite(low[i]) else ys[j] for j, i in enumerate(order)]
    hi = [float(high[i]) if math.isfinite(high[i]) else ys[j] for j, i in enumerate(order)]

    def controls(s: float) -> list[float]:
        for key, vals in random.items():
            if abs(float(key) - s) < 1e-9 or abs(float(key) - abs(s)) < 1e-9:
                return [float(v) for v in vals]
        return []

    fig = go.Figure()
    bx, bmin, bmax, dx, dy = [], [], [], [], []
    for s in xs:
        c = controls(s)
        if c:
            bx.append(s)
            bmin.append(min(c))
            bmax.append(max(c))
            dx += [s] * len(c)
            dy += c
    if bx:
        fig.add_trace(go.Scatter(x=bx + bx[::-1], y=bmax + bmin[::-1], fill="toself",
                                 fillcolor="rgba(127,127,127,0.2)", line={"width": 0},
                                 name="random band (min..max)", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=dx, y=dy, mode="markers", name="random directions",
                                 marker={"color": "rgba(127,127,127,0.6)", "size": 5}))
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself",
                             fillcolor="rgba(31,119,180,0.2)", line={"width": 0},
                             showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name="real vector (95% CI)",
                             line={"color": _PALETTE[0]}))
    fig.add_hline(y=0, line={"dash": "dot", "color": "black", "width": 1})
    fig.update_layout(title=title or "Effect vs strength against random directions",
                      xaxis_title=x_title, yaxis_title=y_title)
    return fig


def transition_matrices(
    tables: Mapping[str, TransitionTable], *, columns: int = 5, title: str | None = None
) -> go.Figure:
    """One 2x2 heatmap per condition: rows = before (correct, wrong), columns = after.

    Args:
        tables: condition label (e.g. the strength) -> its transition table.
        columns: panels per row.
        title: the figure title.

    Returns:
        A plotly figure of annotated heatmaps sharing one colour scale (items).

    Raises:
        ValueError: if `tables` is empty or `columns` < 1.
    """
    if not tables:
        raise ValueError("transition_matrices needs at least one TransitionTable.")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}.")
    labels = list(tables)
    cols = min(columns, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = make_subplots(rows=rows, cols=cols,
                        subplot_titles=[f"{lab} (n={tables[lab].n})" for lab in labels],
                        horizontal_spacing=0.04, vertical_spacing=0.12)
    zmax = max(max(t.stayed_correct, t.became_wrong, t.became_correct, t.stayed_wrong)
               for t in tables.values())
    for i, lab in enumerate(labels):
        t = tables[lab]
        z = [[t.stayed_correct, t.became_wrong], [t.became_correct, t.stayed_wrong]]
        fig.add_trace(go.Heatmap(
            z=z, x=["after: correct", "after: wrong"], y=["before: correct", "before: wrong"],
            zmin=0, zmax=zmax, colorscale="Blues", showscale=i == 0, text=z,
            texttemplate="%{text}", hovertemplate="%{y} -> %{x}: %{z}<extra>" + lab + "</extra>"),
            row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or "Before -> after transition matrices",
                      height=260 * rows + 80)
    return fig


def grouped_ci_bars(
    groups: Mapping[str, Mapping[str, tuple[float, float, float]]],
    *,
    y_title: str = "value",
    title: str | None = None,
) -> go.Figure:
    """Grouped bars with CIs: one group per x label, one colour per series.

    Args:
        groups: series name -> (x label -> (estimate, low, high)).
        y_title: the y-axis title.
        title: the figure title.

    Returns:
        A plotly grouped bar chart with asymmetric error bars.

    Raises:
        ValueError: if `groups` is empty.
    """
    if not groups:
        raise ValueError("grouped_ci_bars needs at least one series.")
    fig = go.Figure()
    for i, (name, cells) in enumerate(groups.items()):
        xs = list(cells)
        est = [cells[x][0] for x in xs]
        fig.add_trace(go.Bar(
            x=xs, y=est, name=name, marker_color=_PALETTE[i % len(_PALETTE)],
            error_y={"type": "data", "symmetric": False,
                     "array": [max(cells[x][2] - cells[x][0], 0.0) for x in xs],
                     "arrayminus": [max(cells[x][0] - cells[x][1], 0.0) for x in xs]}))
    fig.update_layout(barmode="group", title=title, yaxis_title=y_title)
    return fig
