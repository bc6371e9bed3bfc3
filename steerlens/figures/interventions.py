"""Intervention figures: orthogonalised weights vs activation ablation (the equivalence check).

Left: per prompt, max |delta logit| between the orthogonalised model and ablation at every layer
and residual site, next to the ablation's own effect on the logits (max |ablated - unedited|), on
a log axis, so that float-rounding agreement is visibly orders of magnitude below the effect.
Right: per layer, the largest |delta resid_post| over the prompts.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..interventions.orthogonalise import EquivalenceResult


def orthogonalisation_equivalence_figure(result: EquivalenceResult,
                                         title: str | None = None) -> go.Figure:
    """Max |delta logit| per prompt and max |delta residual| per layer, on log axes.

    Args:
        result: from `orthogonalisation_equivalence`.
        title: the figure title (default: model, n and the overall maximum).

    Returns:
        A plotly figure with two panels.
    """
    n = result.n
    prompts = list(range(n))
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"per prompt (n={n})", "per layer: max over prompts of max |Δ resid_post|"))
    fig.add_trace(go.Scatter(x=prompts, y=result.max_dlogit, mode="markers",
                             name="max |Δlogit| orthogonalised − ablated",
                             hovertext=list(result.prompts)), row=1, col=1)
    fig.add_trace(go.Scatter(x=prompts, y=result.ablation_effect, mode="markers",
                             marker_symbol="x", name="max |logit ablated − unedited| (effect)",
                             hovertext=list(result.prompts)), row=1, col=1)
    layers = list(range(result.max_dresid.shape[1]))
    fig.add_trace(go.Scatter(x=layers, y=result.max_dresid.max(0), mode="lines+markers",
                             name="max |Δ resid_post|"), row=1, col=2)
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_xaxes(title_text="prompt", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    worst = float(np.max(result.max_dlogit))
    fig.update_layout(title=title or (
        f"{result.model} ({result.dtype}): weight orthogonalisation vs ablation at every layer "
        f"and residual site; max |Δlogit| = {worst:.2g} (max |logit| "
        f"{float(np.max(result.logit_scale)):.3g}, n={n} prompts)"), template="plotly_white")
    return fig
