"""Interop figures: does llama.cpp steer like steerlens with an exported control vector?

`llama_cpp_agreement_figure` draws the result of `analyses/llama_cpp_agreement.py` (the JSON it
saves): left, per-prompt next-token KL(base || steered) in llama.cpp against steerlens at the
headline strength, one colour per layer mapping (the correct one and the two off-by-one ones),
with Pearson r and its bootstrap CI in the legend; middle, the agreement measures per mapping and
strength (top-k promoted-token overlap, mean correlation of the log-probability changes over the
vocabulary) with bootstrap CIs; right, the KL between the two engines' steered distributions as a
multiple of their base disagreement (Q4_1 vs float32); dashed lines are the check's thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

_COLORS = {"correct": "#2ca02c", "off_by_one_late": "#d62728", "off_by_one_early": "#ff7f0e"}
_LABELS = {"correct": "correct (direction.N at block N)",
           "off_by_one_late": "off by one (block N+1)",
           "off_by_one_early": "off by one (block N-1)"}


def llama_cpp_agreement_figure(result: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Per-prompt KL scatter (llama.cpp vs steerlens) and agreement bars per layer mapping.

    Args:
        result: the dict saved by `analyses.llama_cpp_agreement` (keys "settings", "results"
            {mapping: {strength: summary}}, "base_disagreement", "check").
        title: the figure title (default: one naming the model, vector and n).

    Returns:
        A two-panel plotly figure.

    Raises:
        ValueError: if `result` lacks the keys above or the headline strength.
    """
    missing = {"settings", "results", "base_disagreement"} - set(result)
    if missing:
        raise ValueError(f"llama_cpp_agreement_figure needs the analysis JSON; it lacks "
                         f"{sorted(missing)}.")
    s = result["settings"]
    head = str(float(s["headline_strength"]))
    by_map = result["results"]
    if any(head not in by_map[m] for m in by_map):
        raise ValueError(f"The results have no strength {head}; they have "
                         f"{sorted(next(iter(by_map.values())))}.")
    k = s.get("top_k", 10)
    fig = make_subplots(rows=1, cols=3, column_widths=[0.4, 0.35, 0.25], subplot_titles=(
        f"Per-prompt KL(base || steered), strength {head} (n={s['n_prompts']})",
        "Agreement with steerlens (95% CI)",
        "Steered cross-engine KL / base disagreement"))
    lo, hi = float("inf"), 0.0
    for m, by_s in by_map.items():
        r = by_s[head]
        x, y = r["per_prompt"]["kl_steerlens"], r["per_prompt"]["kl_llama"]
        pos = [v for v in list(x) + list(y) if v and v > 0]
        if pos:
            lo, hi = min(lo, min(pos)), max(hi, max(pos))
        pr = r["kl_pearson"]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers", marker={"color": _COLORS.get(m), "size": 8},
            name=f"{_LABELS.get(m, m)}: r = {pr['r']:.3f} [{pr['low']:.3f}, {pr['high']:.3f}]",
            hovertemplate="steerlens %{x:.3g} bits<br>llama.cpp %{y:.3g} bits"), row=1, col=1)
    if hi > 0:
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                                 line={"dash": "dot", "color": "grey"}), row=1, col=1)
    fig.update_xaxes(type="log", title_text="steerlens (fp32) KL, bits", row=1, col=1)
    fig.update_yaxes(type="log", title_text="llama.cpp (Q4_1) KL, bits", row=1, col=1)

    measures = (("topk_overlap", f"top-{k} promoted overlap"), ("delta_r", "delta-logprob r"))
    for m, by_s in by_map.items():
        for key, label in measures:
            xs, ys, lows, highs = [], [], [], []
            for strength, r in by_s.items():
                c = r[key]
                xs.append(f"{label}<br>strength {float(strength):g}")
                ys.append(c["mean"])
                lows.append(c["mean"] - c["low"])
                highs.append(c["high"] - c["mean"])
            fig.add_trace(go.Bar(
                x=xs, y=ys, name=_LABELS.get(m, m), marker_color=_COLORS.get(m),
                legendgroup=m, showlegend=False,
                error_y={"type": "data", "array": highs, "arrayminus": lows}), row=1, col=2)
    for m, by_s in by_map.items():
        xs = [f"strength {float(strength):g}" for strength in by_s]
        ys = [r.get("cross_kl_over_base", float("nan")) for r in by_s.values()]
        fig.add_trace(go.Bar(x=xs, y=ys, name=_LABELS.get(m, m), marker_color=_COLORS.get(m),
                             legendgroup=m, showlegend=False), row=1, col=3)
    fig.update_yaxes(type="log", title_text="ratio", row=1, col=3)
    thresholds = result.get("check", {}).get("thresholds", {})
    if "cross_kl_over_base" in thresholds:
        fig.add_hline(y=thresholds["cross_kl_over_base"], line_dash="dash", line_color="grey",
                      row=1, col=3)
    for key in ("topk_overlap", "delta_r"):
        if key in thresholds:
            fig.add_hline(y=thresholds[key], line_dash="dash", line_color="grey", row=1, col=2)
    fig.update_yaxes(range=[0, 1.05], title_text="agreement", row=1, col=2)
    b = result["base_disagreement"]["kl_steerlens_fp32_vs_llama_q4_1"]
    fig.update_layout(
        barmode="group", height=560, width=1500, legend={"orientation": "h", "y": -0.25},
        title=title or (
            f"{s['model']}: {s['behaviour']} vector at resid_pre {s['layer']} exported as "
            f"direction.{s['layer'] - 1}; base disagreement KL(fp32 || Q4_1) = "
            f"{b['mean']:.3g} bits [{b['low']:.3g}, {b['high']:.3g}]"))
    return fig
