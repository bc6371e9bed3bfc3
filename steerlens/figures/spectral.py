"""Figures for the spectral analyses: eigengap layer profiles, gap vs steering effect, KRR R²,
singular-value spectra before/after an edit, and alpha curves with CIs. Each takes a result
dataclass from `steerlens.spectral` and returns a plotly Figure; none runs a model."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..spectral.eigengap import EigengapResult
from ..spectral.evaluate import SpectralSweepResult
from ..spectral.krr import KRRResult
from ..spectral.predict import GapPrediction
from ..spectral.weights import LayerEditReport, SpectralEditResult

_KIND_LABEL = {"keys": "keys (pre-rotary)", "rotated_keys": "keys (post-rotary)",
               "pattern": "attention pattern"}
_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]


def eigengap_profile(result: EigengapResult) -> go.Figure:
    """Per-layer weakest-link (min), mean and median eigengap for keys and patterns.

    Args:
        result: the output of `eigengaps`.

    Returns:
        A plotly figure with the threshold marked.
    """
    fig = go.Figure()
    kinds = [k for k, t in (("keys", result.keys), ("rotated_keys", result.rotated_keys),
                            ("pattern", result.patterns)) if t is not None]
    for i, kind in enumerate(kinds):
        t = result.table(kind)
        colour = _COLOURS[i % len(_COLOURS)]
        for stat, dash in (("min", "solid"), ("mean", "dash"), ("median", "dot")):
            fig.add_trace(go.Scatter(
                x=list(t.layers), y=t.layer(stat), mode="lines+markers",
                name=f"{_KIND_LABEL[kind]}: {stat}", line={"color": colour, "dash": dash},
                legendgroup=kind))
    fig.add_hline(y=result.threshold, line={"color": "black", "dash": "dashdot"},
                  annotation_text=f"threshold {result.threshold:g}")
    fig.update_layout(
        title=f"Eigengap Δ = (λ1-λ2)/λ1 per layer, {result.model} (n={result.n_prompts} prompts)",
        xaxis_title="layer", yaxis_title="eigengap (mean over prompts)", template="plotly_white")
    return fig


def _fmt(c) -> str:
    return f"r={c.r:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}], p={c.p_perm:.3f}"


def gap_vs_effect(pred: GapPrediction) -> go.Figure:
    """Scatter of min gap and mean gap against the per-layer steering effect, one point a layer.

    Args:
        pred: the output of `predict_steering`.

    Returns:
        A two-panel plotly scatter, titled with the correlations.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"min gap: Pearson {_fmt(pred.min_pearson)}<br>Spearman {_fmt(pred.min_spearman)}",
        f"mean gap: Pearson {_fmt(pred.mean_pearson)}<br>Spearman {_fmt(pred.mean_spearman)}"))
    for col, x in ((1, pred.min_gap), (2, pred.mean_gap)):
        fig.add_trace(go.Scatter(
            x=x, y=pred.effect, mode="markers+text", text=[str(layer) for layer in pred.layers],
            textposition="top center", marker={"color": list(pred.layers),
                                               "colorscale": "Viridis", "size": 9},
            showlegend=False, hovertemplate="layer %{text}<br>gap %{x:.3f}<br>effect %{y:.3f}"),
            row=1, col=col)
        fig.update_xaxes(title_text="eigengap" if col == 1 else "mean eigengap", row=1, col=col)
    fig.update_yaxes(title_text=pred.effect_label, row=1, col=1)
    fig.update_layout(
        title=(f"Eigengaps ({pred.kind}) vs steering effect, n={pred.n} layers; predicted layer "
               f"{pred.predicted_layer}, best measured {pred.best_layer}"),
        template="plotly_white", margin={"t": 120})
    return fig


def krr_r2_heatmap(result: KRRResult, clip: float = -1.0) -> go.Figure:
    """Median R² (over prompts and heads) of the KRR reading per layer and λ.

    Args:
        result: the output of `krr_fit`.
        clip: lower limit of the colour scale (R² is unbounded below).

    Returns:
        A plotly heatmap.
    """
    med = np.median(result.r2, axis=(0, 2))  # [layer, lambda]
    fig = go.Figure(go.Heatmap(
        z=np.maximum(med, clip).T, x=list(result.layers), y=[f"{x:g}" for x in result.lambdas],
        colorscale="RdBu", zmid=0, zmin=clip, zmax=1, colorbar={"title": "median R²"},
        customdata=med.T, hovertemplate="layer %{x}, λ %{y}<br>median R² %{customdata:.3f}"))
    frac = float((result.r2.max(-1) > 0).mean())
    fig.update_layout(
        title=(f"KRR Ẑ = K_qk(K_kk+λI)⁻¹V vs actual head output, {result.model}: median R² "
               f"(n={result.n_prompts} prompts; R² > 0 at best λ for {frac:.0%} of prompt-heads)"),
        xaxis_title="layer", yaxis_title=("relative " if result.relative else "") + "λ",
        template="plotly_white")
    return fig


def spectrum_before_after(edit: SpectralEditResult | LayerEditReport) -> go.Figure:
    """Singular values of W_out before and after an edit, by index (log scale).

    Args:
        edit: a whole edit result, or one layer's report.

    Returns:
        A plotly line chart, one before/after pair per layer.
    """
    reports = edit.layers if isinstance(edit, SpectralEditResult) else (edit,)
    fig = go.Figure()
    for i, r in enumerate(reports):
        colour = _COLOURS[i % len(_COLOURS)]
        idx = np.arange(1, len(r.s_before) + 1)
        fig.add_trace(go.Scatter(x=idx, y=r.s_before, name=f"L{r.layer} before",
                                 line={"color": colour, "dash": "dot"}, legendgroup=str(r.layer)))
        fig.add_trace(go.Scatter(
            x=idx, y=r.s_after, legendgroup=str(r.layer), line={"color": colour},
            name=f"L{r.layer} after (α={r.alpha:+g}, {r.band}; clamped {r.n_clamped}; eff. rank "
                 f"{r.effective_rank_before:.0f}→{r.effective_rank_after:.0f})"))
    fig.update_layout(title="W_out singular values before and after the spectral edit",
                      xaxis_title="singular value index (original order)",
                      yaxis_title="singular value", yaxis_type="log", template="plotly_white")
    return fig


_MEASURES = {"delta_score": "Δ behaviour score (edited - base)",
             "delta_nll": "Δ held-out NLL (nats/token)", "kl_bits": "next-token KL (bits)"}


def alpha_curves(result: SpectralSweepResult,
                 measures: tuple[str, ...] = ("delta_score", "delta_nll", "kl_bits")) -> go.Figure:
    """Each measure against α, one line per layer, with 95% CI error bars (controls dashed).

    Args:
        result: the output of `spectral_sweep` or `evaluate_configs`.
        measures: which measures: "delta_score", "delta_nll" and/or "kl_bits".

    Returns:
        A plotly figure with one panel per measure.

    Raises:
        ValueError: for an unknown measure.
    """
    bad = [m for m in measures if m not in _MEASURES]
    if bad:
        raise ValueError(f"Unknown measures {bad}; valid measures are {list(_MEASURES)}.")
    fig = make_subplots(rows=1, cols=len(measures), subplot_titles=[_MEASURES[m] for m in measures])
    single = [p for p in result.points if p.layer is not None]
    layers = sorted({p.layer for p in single})
    for col, m in enumerate(measures, start=1):
        for i, layer in enumerate(layers):
            for control in (False, True):
                pts = sorted((p for p in single if p.layer == layer and p.control == control
                              and getattr(p, m) is not None), key=lambda p: p.alpha)
                if not pts:
                    continue
                est = [getattr(p, m).estimate for p in pts]
                fig.add_trace(go.Scatter(
                    x=[p.alpha for p in pts], y=est, mode="lines+markers",
                    name=f"L{layer}" + (" shuffled control" if control else ""),
                    legendgroup=f"{layer}{control}", showlegend=col == 1,
                    line={"color": _COLOURS[i % len(_COLOURS)], "dash": "dash" if control else
                          "solid"},
                    error_y={"type": "data", "symmetric": False,
                             "array": [getattr(p, m).high - e for p, e in zip(pts, est)],
                             "arrayminus": [e - getattr(p, m).low for p, e in zip(pts, est)]}),
                    row=1, col=col)
        fig.add_hline(y=0, line={"color": "black", "width": 1}, row=1, col=col)
        fig.update_xaxes(title_text="α", row=1, col=col)
    n_score = next((p.delta_score.n for p in result.points if p.delta_score is not None), 0)
    fig.update_layout(
        title=(f"Spectral weight steering on {result.model}: n={result.n_texts} held-out texts, "
               f"{result.n_prompts} prompts ({n_score} scored); 95% bootstrap CIs"),
        template="plotly_white")
    return fig
