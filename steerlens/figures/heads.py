"""Figures for per-head analyses: head eigengap against the response to a same-norm perturbation.

`head_gap_response` draws two panels from saved per-head rows (no model is run): key/value heads
(key-Gram gap, response averaged over the query heads that share the key/value head) and query
heads (attention-pattern gap), each point a head coloured by layer, the response on a log axis,
with the Spearman correlation, its CI and the random-head (shuffled) band in the panel titles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _label(c: Mapping[str, Any] | None) -> str:
    if not c:
        return ""
    rc = c.get("random_head_control", {})
    return (f"Spearman r={c['spearman_r']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}], "
            f"p={c['p_perm']:.3f}; shuffled band [{rc.get('band_low', float('nan')):+.2f}, "
            f"{rc.get('band_high', float('nan')):+.2f}] (n={c['n']})")


def head_gap_response(rows: Sequence[Mapping[str, Any]],
                      correlations: Mapping[str, Mapping[str, Any]] | None = None,
                      model_name: str = "", response: str = "kl_bits") -> go.Figure:
    """Gap vs response per head: key/value heads (key gap) and query heads (pattern gap).

    Args:
        rows: one mapping per query head with layer, head, kv_head, key_gap, pattern_gap and the
            response column.
        correlations: the analysis's correlation dicts (keys "kv_keygap_vs_kl" and
            "q_patterngap_vs_kl" are shown in the titles), or None.
        model_name: the model's name, for the title.
        response: the response column to plot.

    Returns:
        A plotly figure with two panels.

    Raises:
        ValueError: if `rows` is empty or lacks a needed column.
    """
    if not rows:
        raise ValueError("head_gap_response needs at least one row.")
    need = {"layer", "head", "kv_head", "key_gap", "pattern_gap", response}
    missing = need - set(rows[0])
    if missing:
        raise ValueError(f"Rows lack the columns {sorted(missing)}; they need {sorted(need)}.")
    corr = correlations or {}
    kv: dict[tuple[int, int], list] = {}
    for r in rows:
        kv.setdefault((int(r["layer"]), int(r["kv_head"])), []).append(r)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "key/value heads: key-Gram gap<br><sub>" + _label(corr.get("kv_keygap_vs_kl")) + "</sub>",
        "query heads: attention-pattern gap<br><sub>" + _label(corr.get("q_patterngap_vs_kl"))
        + "</sub>"))
    layers = sorted({int(r["layer"]) for r in rows})
    kv_x = [float(v[0]["key_gap"]) for v in kv.values()]
    kv_y = [float(np.mean([x[response] for x in v])) for v in kv.values()]
    kv_c = [k[0] for k in kv]
    kv_t = [f"L{k[0]} kv{k[1]}" for k in kv]
    q_x = [float(r["pattern_gap"]) for r in rows]
    q_y = [float(r[response]) for r in rows]
    q_c = [int(r["layer"]) for r in rows]
    q_t = [f"L{r['layer']} h{r['head']}" for r in rows]
    marker = {"colorscale": "Viridis", "cmin": min(layers), "cmax": max(layers), "size": 8}
    fig.add_trace(go.Scatter(x=kv_x, y=kv_y, text=kv_t, mode="markers", name="kv heads",
                             marker={**marker, "color": kv_c,
                                     "colorbar": {"title": "layer"}}), row=1, col=1)
    fig.add_trace(go.Scatter(x=q_x, y=q_y, text=q_t, mode="markers", name="query heads",
                             marker={**marker, "color": q_c, "symbol": "diamond"}), row=1, col=2)
    fig.update_yaxes(type="log", title_text=f"{response} (mean over prompts, seeds)", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="eigengap Δ (mean over prompts)")
    fig.update_layout(title=f"Per-head eigengap vs response to a same-norm edit of z, {model_name}",
                      template="plotly_white", showlegend=False)
    return fig
