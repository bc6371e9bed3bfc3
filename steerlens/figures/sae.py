"""SAE figures: feature contexts (circuitsvis), vector decompositions, diffusion, domain overlap,
and steering-condition curves for comparing contrastive and feature-targeted vectors, and the
sparsity trade-off (explained variance vs L0) of SAE training settings.

`feature_view` renders `FeatureContexts` with circuitsvis' `topk_samples` (one tab per feature,
its strongest contexts with every token coloured by the feature's activation); save it offline
with `figures.tokens.save_token_view`. The rest are plotly figures taking steerlens results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..sae.decompose import OverlapTable, VectorDecomposition
from ..sae.features import FeatureContexts
from ..sae.train import SAEMetrics
from ..sweep.result import SweepResult
from .tokens import _safe

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def feature_view(contexts: FeatureContexts, labels: Sequence[str] | None = None):
    """circuitsvis top-k samples: per feature, its strongest contexts coloured by activation.

    Args:
        contexts: the output of `feature_contexts`.
        labels: one label per requested feature (default: "feature N").

    Returns:
        (circuitsvis.utils.render.RenderedHTML): A circuitsvis render object; save it offline with
            `figures.tokens.save_token_view`.

    Raises:
        ValueError: if no feature fired on the texts, or the labels do not match the features.
    """
    from circuitsvis.topk_samples import topk_samples

    feats = [i for i, ex in enumerate(contexts.examples) if ex]
    if not feats:
        raise ValueError("None of the features fired on these texts; nothing to show.")
    tokens = [[[[_safe(t) for t in ex.tokens] for ex in contexts.examples[i]] for i in feats]]
    acts = [[[list(ex.values) for ex in contexts.examples[i]] for i in feats]]
    if labels is not None and len(labels) != len(contexts.features):
        raise ValueError(f"Got {len(labels)} labels for {len(contexts.features)} features.")
    names = [labels[i] if labels is not None else f"feature {contexts.features[i]}" for i in feats]
    return topk_samples(tokens=tokens, activations=acts, zeroth_dimension_name="SAE",
                        first_dimension_name="Feature",
                        zeroth_dimension_labels=[contexts.hook_name],
                        first_dimension_labels=names)


def decomposition_bar(decomp: VectorDecomposition, k: int = 20,
                      title: str | None = None) -> go.Figure:
    """The k most positive and k most negative feature values of a decomposed vector.

    Args:
        decomp: the output of `decompose` or `decompose_pairs`.
        k: features per side.
        title: the figure title (default: one with the diffusion).

    Returns:
        A plotly bar chart (blue positive, red negative).
    """
    pos = decomp.top(k, "positive")
    neg = [i for i in decomp.top(k, "negative") if float(decomp.values[i]) < 0]
    ids = list(pos) + [i for i in reversed(neg) if i not in pos]
    vals = [float(decomp.values[i]) for i in ids]
    fig = go.Figure(go.Bar(x=[str(i) for i in ids], y=vals,
                           marker_color=["#1f77b4" if v >= 0 else "#d62728" for v in vals],
                           hovertemplate="feature %{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(
        title=title or f"{decomp.label}: top features ({decomp.encoding} encoding; "
        f"{decomp.n_active}/{decomp.d_sae} = {decomp.diffusion:.1%} active at |value| > "
        f"{decomp.threshold:.3g})",
        xaxis_title="SAE feature", yaxis_title="value", xaxis_type="category")
    return fig


def diffusion_bar(decomps: Mapping[str, VectorDecomposition], title: str | None = None) -> go.Figure:
    """Diffusion (fraction of features above threshold) and participation ratio per vector.

    Args:
        decomps: vector name -> decomposition (include a random direction as the control).
        title: the figure title.

    Returns:
        A plotly grouped bar chart.

    Raises:
        ValueError: if `decomps` is empty.
    """
    if not decomps:
        raise ValueError("diffusion_bar needs at least one decomposition.")
    names = list(decomps)
    fig = go.Figure([
        go.Bar(name="diffusion (|value| > threshold)", x=names,
               y=[decomps[n].diffusion for n in names],
               text=[f"{decomps[n].diffusion:.1%}" for n in names], textposition="outside"),
        go.Bar(name="participation ratio / d_sae", x=names,
               y=[decomps[n].participation for n in names],
               text=[f"{decomps[n].participation:.1%}" for n in names], textposition="outside"),
    ])
    rel = {decomps[n].relative_threshold for n in names}
    thr = (f"threshold {rel.pop():g} x max |value|" if len(rel) == 1 and None not in rel
           else "thresholds per vector")
    enc = sorted({decomps[n].encoding for n in names})
    fig.update_layout(barmode="group", yaxis_title="fraction of SAE features",
                      yaxis_tickformat=".0%",
                      title=title or f"How diffuse are the vectors in SAE feature space? "
                      f"({', '.join(enc)} encoding; {thr}; d_sae={decomps[names[0]].d_sae})")
    return fig


def overlap_heatmap(table: OverlapTable, title: str | None = None) -> go.Figure:
    """Shared top-k features, vectors (rows) x domains (columns), vs the random expectation.

    Args:
        table: the output of `overlap_table`.
        title: the figure title (default: one with the random expectation).

    Returns:
        A plotly heatmap.
    """
    fig = go.Figure(go.Heatmap(
        z=[list(r) for r in table.counts], x=list(table.domains), y=list(table.vectors),
        text=[[str(c) for c in r] for r in table.counts], texttemplate="%{text}",
        colorscale="Blues", zmin=0, zmax=table.k,
        hovertemplate="%{y} vs %{x}: %{z} shared<extra></extra>"))
    fig.update_layout(
        title=title or f"Top-{table.k} feature overlap (random expectation "
        f"{table.expected_random:.2f} of {table.k}; d_sae={table.d_sae})",
        xaxis_title="domain features", yaxis_title="vector")
    return fig


def condition_curves(results: Mapping[str, SweepResult], measure: str = "score",
                     vectors: Sequence[str] | None = None, *, ci: float = 0.95,
                     title: str | None = None) -> go.Figure:
    """One panel per sweep (e.g. per behaviour): mean `measure` vs strength for each vector, with
    CI error bars; vectors named in `vectors` only (default: every real vector).

    Random controls, when the sweeps have them, are drawn as a grey band from the lowest to the
    highest random mean.

    Args:
        results: panel name -> sweep result.
        measure: the measure to plot (a column of the sweeps' summaries).
        vectors: the vectors to draw (default: every real vector).
        ci: confidence level.
        title: the figure title.

    Returns:
        A plotly figure with one panel per sweep.

    Raises:
        ValueError: if `results` is empty or a sweep lacks the measure.
    """
    if not results:
        raise ValueError("condition_curves needs at least one sweep result.")
    names = list(results)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
    seen: dict[str, str] = {}
    legend: set[str] = set()
    for col, name in enumerate(names, start=1):
        res = results[name]
        if measure not in res.measures:
            raise ValueError(f"Unknown measure {measure!r}; sweep {name!r} has {res.measures}.")
        summ = res.summary(ci=ci)
        real = list(dict.fromkeys(summ.loc[~summ["is_random"], "vector"]))
        show = real if vectors is None else [v for v in vectors if v in real]
        rnd = summ[summ["is_random"]]
        if len(rnd):
            band = rnd.groupby("strength")[f"{measure}_mean"].agg(["min", "max"]).sort_index()
            fig.add_trace(go.Scatter(
                x=list(band.index) + list(band.index[::-1]),
                y=list(band["max"]) + list(band["min"][::-1]), fill="toself",
                fillcolor="rgba(127,127,127,0.2)", line={"width": 0}, hoverinfo="skip",
                name="random controls", legendgroup="random", showlegend=col == 1), row=1, col=col)
        for v in show:
            color = seen.setdefault(v, _PALETTE[len(seen) % len(_PALETTE)])
            s = summ[summ["vector"] == v].sort_values("strength")
            mean = s[f"{measure}_mean"]
            fig.add_trace(go.Scatter(
                x=s["strength"], y=mean, mode="lines+markers", name=v, legendgroup=v,
                showlegend=v not in legend,
                line={"color": color},
                error_y={"type": "data", "symmetric": False,
                         "array": s[f"{measure}_high"] - mean,
                         "arrayminus": mean - s[f"{measure}_low"]}), row=1, col=col)
            legend.add(v)
    n = {int(x) for res in results.values() for x in res.summary(ci=ci)["n"]}
    fig.update_layout(title=title or f"{measure} vs strength ({int(ci * 100)}% bootstrap CIs; "
                      f"n={'/'.join(map(str, sorted(n)))} prompts per point)")
    fig.update_xaxes(title_text="strength")
    fig.update_yaxes(title_text=measure, col=1)
    return fig


__all__ = ["condition_curves", "decomposition_bar", "diffusion_bar", "feature_view",
           "overlap_heatmap"]


def sparsity_tradeoff(runs: Mapping[str, SAEMetrics],
                      out_of_distribution: Mapping[str, SAEMetrics] | None = None,
                      title: str | None = None,
                      domains: Mapping[str, Mapping[str, SAEMetrics]] | None = None,
                      target: tuple[float, float] | None = None) -> go.Figure:
    """The sparsity trade-off of SAE training settings: explained variance vs L0, one point per
    setting (e.g. per L1 coefficient), with MSE and dead fraction on hover; a second series for
    the same SAEs on out-of-distribution text when given.

    Args:
        runs: setting label -> held-out metrics.
        out_of_distribution: setting label -> metrics on other text.
        title: the figure title.
        domains: more series, series name -> (setting label -> metrics), e.g. one per held-out
            text domain (docs, prose, chat).
        target: (minimum explained variance, maximum L0) drawn as dashed lines.

    Returns:
        A plotly scatter/line chart.

    Raises:
        ValueError: if `runs` is empty.
    """
    if not runs:
        raise ValueError("sparsity_tradeoff needs at least one training run.")
    series = [("held-out activations (same corpus)", runs)]
    if out_of_distribution:
        series.append(("out-of-distribution text", out_of_distribution))
    series += [(name, ms) for name, ms in (domains or {}).items() if ms]
    fig = go.Figure()
    if target is not None:
        fig.add_hline(y=target[0], line_dash="dash", line_color="grey",
                      annotation_text=f"target EV >= {target[0]:g}")
        fig.add_vline(x=target[1], line_dash="dash", line_color="grey",
                      annotation_text=f"L0 <= {target[1]:g}")
    for i, (name, ms) in enumerate(series):
        labels = sorted(ms, key=lambda k: ms[k].l0)  # a line along the trade-off
        fig.add_trace(go.Scatter(
            x=[ms[k].l0 for k in labels], y=[ms[k].explained_variance for k in labels],
            mode="lines+markers+text", name=name, text=labels, textposition="top center",
            marker=dict(size=10, color=_PALETTE[i % len(_PALETTE)]),
            line=dict(color=_PALETTE[i % len(_PALETTE)]),
            customdata=[[ms[k].mse, ms[k].dead_fraction, ms[k].n_tokens] for k in labels],
            hovertemplate="%{text}: L0 %{x:.1f}, EV %{y:.3f}<br>MSE %{customdata[0]:.3g}, dead "
                          "%{customdata[1]:.1%}, n=%{customdata[2]} tokens<extra></extra>"))
    n = min(m.n_tokens for m in runs.values())
    fig.update_layout(
        title=title or f"SAE sparsity trade-off: explained variance vs L0 (n={n} held-out tokens)",
        xaxis_title="L0 (mean active features per token)", yaxis_title="explained variance",
        yaxis_range=[0, 1])
    return fig
