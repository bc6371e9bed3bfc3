"""Sweep figures: the layer x strength zone map, strength curves against the random band, and
next-token KL by layer at one strength (`kl_by_layer_at_strength`, drawn by
`figures.kl.kl_by_layer`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from ..sweep.result import SweepResult, zones
from .kl import kl_by_layer

ZONE_COLORS = {"unstable": "#d62728", "sweet spot": "#2ca02c", "frozen": "#7f9fbf"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def _real_vector(result: SweepResult, vector: str | None) -> str:
    real = list(dict.fromkeys(result.table.loc[~result.table["is_random"], "vector"]))
    if vector is None:
        return real[0]
    if vector not in real:
        raise ValueError(f"Unknown vector {vector!r}; the sweep's vectors are {real}.")
    return vector


def _check_measure(result: SweepResult, measure: str) -> str:
    if measure not in result.measures:
        raise ValueError(f"Unknown measure {measure!r}; this sweep has {result.measures}.")
    return measure


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def zone_heatmap(
    result: SweepResult,
    vector: str | None = None,
    *,
    title: str | None = None,
    **thresholds,
) -> go.Figure:
    """Layer x strength map coloured by zone (unstable / sweet spot / frozen), each cell annotated
    with its change rate and perplexity ratio (generation sweeps) or mean KL (KL-only sweeps).
    Strength 0 (the baseline) is left out unless it is the only strength.

    Zones and their thresholds are those of `sweep.zones` (keyword arguments are passed on).

    Args:
        result: the sweep result.
        vector: the real vector to draw (default: the only one).
        title: the figure title.
        **thresholds (float): passed to `sweep.zones`.

    Returns:
        A plotly heatmap.
    """
    vector = _real_vector(result, vector)
    z = zones(result, **thresholds)
    z = z[z["vector"] == vector]
    layers = sorted(z["layer"].unique())
    # strength 0 is the unsteered baseline (frozen by definition): not a column worth a colour
    strengths = sorted(s for s in z["strength"].unique() if s != 0) or [0.0]
    code = {name: i for i, name in enumerate(ZONE_COLORS)}
    grid = z.set_index(["layer", "strength"])
    zz, text = [], []
    gen = "change_rate" in z.columns
    for layer in layers:
        zrow, trow = [], []
        for s in strengths:
            r = grid.loc[(layer, s)]
            zrow.append(code[r["zone"]])
            if gen:
                trow.append(f"{r['zone']}<br>change {r['change_rate']:.2f}<br>"
                            f"ppl x{r['perplexity_ratio']:.2f}")
            else:
                trow.append(f"{r['zone']}<br>KL {r['kl_bits']:.3g} bits")
        zz.append(zrow)
        text.append(trow)
    colors = list(ZONE_COLORS.values())
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / len(colors), c], [(i + 1) / len(colors), c]]
    n = int(z["n"].iloc[0]) if len(z) else 0
    fig = go.Figure(go.Heatmap(
        z=zz, x=[f"{s:g}" for s in strengths], y=[str(layer) for layer in layers],
        text=text, texttemplate="%{text}", hovertemplate="layer %{y}, strength %{x}<br>%{text}"
        "<extra></extra>", colorscale=scale, zmin=-0.5, zmax=len(colors) - 0.5,
        colorbar={"tickvals": list(range(len(colors))), "ticktext": list(ZONE_COLORS)},
    ))
    rule = ("unstable: perplexity > 2x unsteered; frozen: change rate < 10%" if gen
            else "unstable: KL > 5 bits; frozen: KL < 0.1 bits")
    if thresholds:
        rule = "thresholds " + ", ".join(f"{k}={v}" for k, v in thresholds.items())
    fig.update_layout(
        title=title or f"Steering zones of {vector!r} (n={n} prompts per cell; {rule})",
        xaxis_title="strength", yaxis_title="layer", xaxis_type="category",
        yaxis_type="category",
    )
    return fig


def strength_curves(
    result: SweepResult,
    measure: str = "kl_bits",
    vector: str | None = None,
    layers: Sequence[int] | None = None,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    title: str | None = None,
) -> go.Figure:
    """Mean measure vs strength, one line per layer with its CI band; when the sweep has random
    controls, a grey band per layer spans the lowest to highest random-vector mean.

    Args:
        result: the sweep result.
        measure: a measure the sweep recorded (e.g. "kl_bits", "score", "perplexity").
        vector: the real vector to draw (default: the only one).
        layers: the layers to draw (default: all).
        ci: confidence level.
        n_boot: bootstrap resamples.
        title: the figure title.

    Returns:
        A plotly line chart.

    Raises:
        ValueError: for an unknown vector, measure or layer.
    """
    vector = _real_vector(result, vector)
    _check_measure(result, measure)
    summ = result.summary(ci=ci, n_boot=n_boot)
    summ = summ[summ["control_for"] == vector]
    all_layers = sorted(summ["layer"].unique())
    layers = all_layers if layers is None else list(layers)
    bad = [layer for layer in layers if layer not in all_layers]
    if bad:
        raise ValueError(f"Layers {bad} are not in this sweep; its layers are {all_layers}.")
    real = summ[summ["vector"] == vector]
    rnd = summ[summ["is_random"]]
    fig = go.Figure()
    for i, layer in enumerate(layers):
        color = _PALETTE[i % len(_PALETTE)]
        if len(rnd):
            band = (rnd[rnd["layer"] == layer].groupby("strength")[f"{measure}_mean"]
                    .agg(["min", "max"]).sort_index())
            k = rnd["vector"].nunique()
            xs = list(band.index)
            fig.add_trace(go.Scatter(
                x=xs + xs[::-1], y=list(band["max"]) + list(band["min"])[::-1], fill="toself",
                fillcolor=_rgba("#7f7f7f", 0.18), line={"width": 0, "color": color},
                name=f"random band L{layer} (k={k})", legendgroup=f"L{layer}", hoverinfo="skip",
            ))
        cur = real[real["layer"] == layer].sort_values("strength")
        xs = cur["strength"].tolist()
        low = cur[f"{measure}_low"].fillna(cur[f"{measure}_mean"]).tolist()
        high = cur[f"{measure}_high"].fillna(cur[f"{measure}_mean"]).tolist()
        fig.add_trace(go.Scatter(
            x=xs + xs[::-1], y=high + low[::-1], fill="toself", fillcolor=_rgba(color, 0.2),
            line={"width": 0}, showlegend=False, legendgroup=f"L{layer}", hoverinfo="skip",
        ))
        fig.add_trace(go.Scatter(
            x=xs, y=cur[f"{measure}_mean"], mode="lines+markers", line={"color": color},
            name=f"layer {layer}", legendgroup=f"L{layer}",
            customdata=cur[[f"{measure}_low", f"{measure}_high", f"{measure}_n"]].to_numpy(),
            hovertemplate="strength %{x}: %{y:.3g} [%{customdata[0]:.3g}, %{customdata[1]:.3g}]"
                          ", n=%{customdata[2]}<extra>layer " + str(layer) + "</extra>",
        ))
    ns = sorted(set(real[f"{measure}_n"]))
    n_text = ns[0] if len(ns) == 1 else ns
    fig.update_layout(
        title=title or f"{measure} vs strength for {vector!r} (mean, {ci:.0%} CI, n={n_text} "
                       f"prompts)" + (", grey: random directions of equal norm" if len(rnd) else ""),
        xaxis_title="strength", yaxis_title=measure,
    )
    return fig


def kl_by_layer_at_strength(
    result: SweepResult,
    strength: float | None = None,
    *,
    vectors: Sequence[str] | None = None,
    ci: float = 0.95,
    log_y: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Mean next-token KL by layer at one strength (log scale), one series per real vector and
    one for all its random controls pooled; drawn by `figures.kl.kl_by_layer`.

    Args:
        result: a sweep that measured "kl".
        strength: the strength to draw (default: the largest in magnitude).
        vectors: the real vectors to draw (default: all).
        ci: confidence level.
        log_y: use a log y axis.
        title: the figure title.

    Returns:
        A plotly line chart with CI error bars.

    Raises:
        ValueError: if the strength is not in the sweep.
    """
    t = result.table
    if strength is None:
        strength = max(set(t["strength"]), key=lambda s: (abs(s), s))
    strength = float(strength)
    if strength not in set(t["strength"]):
        raise ValueError(f"Strength {strength} is not in this sweep; its strengths are "
                         f"{sorted(set(t['strength']))}.")
    real = list(dict.fromkeys(t.loc[~t["is_random"], "vector"]))
    vectors = real if vectors is None else [_real_vector(result, v) for v in vectors]
    sel = t[(t["strength"] == strength) & t["control_for"].isin(vectors)].copy()
    k = sel.loc[sel["is_random"], "vector"].nunique() // max(1, len(vectors))
    sel["series"] = [
        (f"random (k={k}) for {c}" if len(vectors) > 1 else f"random (k={k})") if r else v
        for v, c, r in zip(sel["vector"], sel["control_for"], sel["is_random"])
    ]
    df = pd.DataFrame({"layer": sel["layer"], "bits": sel["kl_bits"], "series": sel["series"]})
    fig = kl_by_layer(df, ci=ci, log_y=log_y)
    if title is None:
        n = int(sel.groupby(["vector", "layer"]).size().min()) if len(sel) else 0
        title = (f"Next-token KL(base || steered) by layer at strength {strength:g} (mean, "
                 f"{ci:.0%} CI; n={n} prompts per vector"
                 + (", random series pool all controls" if k else "") + ")")
    fig.update_layout(title=title)
    return fig
