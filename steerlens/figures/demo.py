"""Figure for the demo: a generations table plus mean VADER sentiment by strength."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def demo_figure(result) -> go.Figure:
    """Table of baseline/steered/random continuations and a bar chart of mean sentiment.

    Args:
        result (DemoResult): the output of `steerlens.demo.run_demo_result`.

    Returns:
        A plotly figure: mean VADER score by condition and strength (±1 SE) above the
        continuations table.
    """
    rows = sorted(result.rows, key=lambda r: (r.prompt, r.condition != "baseline", r.strength))
    fig = make_subplots(rows=2, cols=1, row_heights=[0.3, 0.7], vertical_spacing=0.06,
                        specs=[[{"type": "xy"}], [{"type": "table"}]],
                        subplot_titles=("Mean VADER compound score (error bars: ±1 SE)",
                                        "Continuations"))
    groups: dict[tuple[str, float], list[float]] = {}
    for r in result.rows:
        groups.setdefault((r.condition, r.strength), []).append(r.sentiment)
    keys = sorted(groups, key=lambda k: (k[0] == "random", k[1]))
    means = [sum(groups[k]) / len(groups[k]) for k in keys]
    ses = []
    for k, m in zip(keys, means):
        v = groups[k]
        var = sum((x - m) ** 2 for x in v) / max(len(v) - 1, 1)
        ses.append((var / len(v)) ** 0.5)
    labels = [f"{c} {s:+g} (n={len(groups[(c, s)])})" for c, s in keys]
    colors = ["#888" if c == "random" else "#2a7" if s > 0 else "#c33" if s < 0 else "#36c"
              for c, s in keys]
    fig.add_trace(go.Bar(x=labels, y=means, marker_color=colors,
                         error_y=dict(type="data", array=ses)), row=1, col=1)
    fig.add_trace(go.Table(
        header=dict(values=["prompt", "condition", "strength", "VADER", "continuation"]),
        columnwidth=[2, 1, 1, 1, 6],
        cells=dict(values=[[r.prompt for r in rows], [r.condition for r in rows],
                           [f"{r.strength:+g}" for r in rows], [f"{r.sentiment:+.2f}" for r in rows],
                           [r.text for r in rows]], align="left"),
    ), row=2, col=1)
    fig.update_layout(height=1400, showlegend=False,
                      title=f"steerlens demo: sentiment vector on {result.model}, layer "
                            f"{result.layer} (|v| = {result.vector_norm:.2f}, "
                            f"{result.n_pairs} pairs, {result.max_new_tokens} new tokens)")
    return fig
