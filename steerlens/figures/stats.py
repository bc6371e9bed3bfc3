"""Statistics figures: accuracy transitions, interval forests and random-direction controls."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from ..stats import CI, RandomControlResult, TransitionTable

_KINDS = (
    ("stayed_correct", "stayed correct", "#2ca02c"),
    ("became_correct", "became correct", "#98df8a"),
    ("became_wrong", "became wrong", "#ff9896"),
    ("stayed_wrong", "stayed wrong", "#d62728"),
)


def transition_bars(
    tables: TransitionTable | Mapping[str, TransitionTable], title: str | None = None
) -> go.Figure:
    """Stacked bars of the four transition counts, one bar per condition (labelled with n).

    Args:
        tables: one table, or condition name -> table.
        title: the figure title.

    Returns:
        A plotly stacked bar chart.

    Raises:
        ValueError: if the mapping is empty.
    """
    if isinstance(tables, TransitionTable):
        tables = {"steered": tables}
    if not tables:
        raise ValueError("transition_bars needs at least one TransitionTable.")
    names = list(tables)
    x = [f"{nm} (n={tables[nm].n})" for nm in names]
    fig = go.Figure()
    for attr, label, color in _KINDS:
        fig.add_trace(go.Bar(x=x, y=[getattr(tables[nm], attr) for nm in names], name=label,
                             marker_color=color))
    fig.update_layout(barmode="stack", title=title or "Correctness before vs after steering",
                      yaxis_title="items")
    return fig


def transition_sankey(
    table: TransitionTable, before: str = "base", after: str = "steered", title: str | None = None
) -> go.Figure:
    """Sankey of correct/wrong before -> after (one trace, four links).

    Args:
        table: the transition table.
        before: the label of the first condition.
        after: the label of the second condition.
        title: the figure title (default: one with n, net change and accuracies).

    Returns:
        A plotly Sankey diagram.
    """
    labels = [f"{before}: correct", f"{before}: wrong", f"{after}: correct", f"{after}: wrong"]
    links = [(0, 2, table.stayed_correct), (0, 3, table.became_wrong),
             (1, 2, table.became_correct), (1, 3, table.stayed_wrong)]
    fig = go.Figure(
        go.Sankey(
            node={"label": labels, "color": ["#2ca02c", "#d62728", "#2ca02c", "#d62728"]},
            link={"source": [s for s, _, _ in links], "target": [t for _, t, _ in links],
                  "value": [v for _, _, v in links],
                  "label": ["stayed correct", "became wrong", "became correct", "stayed wrong"]},
        )
    )
    fig.update_layout(
        title=title or f"Transitions (n={table.n}): net {table.net:+d}, accuracy "
                       f"{table.accuracy_before:.2f} -> {table.accuracy_after:.2f}"
    )
    return fig


def ci_forest(cis: Mapping[str, CI], title: str | None = None, x_title: str = "estimate") -> go.Figure:
    """Point estimates with CI bars, one row per named CI (labels carry n).

    Args:
        cis: row label -> CI.
        title: the figure title.
        x_title: the x axis title.

    Returns:
        A plotly forest plot.

    Raises:
        ValueError: if `cis` is empty.
    """
    if not cis:
        raise ValueError("ci_forest needs at least one CI.")
    names = list(cis)
    est = [cis[nm].estimate for nm in names]
    fig = go.Figure(
        go.Scatter(
            x=est,
            y=[f"{nm} (n={cis[nm].n})" for nm in names],
            mode="markers",
            error_x={"type": "data", "symmetric": False,
                     "array": [cis[nm].high - cis[nm].estimate for nm in names],
                     "arrayminus": [cis[nm].estimate - cis[nm].low for nm in names]},
            name="estimate",
        )
    )
    level = {c.level for c in cis.values()}
    fig.update_layout(title=title or f"Estimates with {', '.join(f'{x:.0%}' for x in level)} CIs",
                      xaxis_title=x_title, yaxis={"autorange": "reversed"})
    return fig


def random_control_plot(result: RandomControlResult, title: str | None = None,
                        x_title: str = "effect") -> go.Figure:
    """Histogram of random-direction control effects with the real effect marked.

    Args:
        result: the output of `compare_to_random`.
        title: the figure title (default: one with the empirical p-value).
        x_title: the x axis title.

    Returns:
        A plotly histogram.
    """
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=list(result.controls), name=f"random (k={result.n_controls})",
                               marker_color="#999999"))
    fig.add_trace(go.Scatter(x=[result.real, result.real], y=[0, max(1, result.n_controls // 3)],
                             mode="lines", name=f"real (n={result.n_real})",
                             line={"color": "crimson", "width": 3}))
    fig.update_layout(
        title=title or f"Real vs {result.n_controls} random controls: p={result.p_value:.3g} "
                       f"({result.alternative}), beats all: {result.beats_all}",
        xaxis_title=x_title,
        yaxis_title="controls",
        bargap=0.05,
    )
    return fig
