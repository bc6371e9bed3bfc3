"""Strengths in residual-norm units: how big a push is relative to the stream it is added to.

A raw strength means different things at different layers and in different models, because the
residual stream's norm grows with depth and differs between families. `residual_norms` measures
the median per-token L2 norm of the residual entering each layer on some reference texts (the
median ignores the few attention-sink positions whose norm is many times the rest);
`centred=True` measures each token's distance from the mean residual instead, which leaves out
constant "massive activation" dimensions. `scale_to_residual` rescales every layer of a vector to
that norm, so strength alpha then adds alpha x (typical residual norm) at every layer: a scale
comparable across layers and models. Which of the two norms is "right" is a modelling choice, and
conclusions can depend on it (see the base-vs-instruct finding in the README).
Precision: norms and medians are computed in float64 from the float32 activations that
`extract` returns, whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..backend import Model
from ..extract import extract
from ..vectors import SteeringVector


def residual_norms(model: Model, texts: Sequence[str], layers: Sequence[int],
                   show_progress: bool = False, centred: bool = False) -> dict[int, float]:
    """Median L2 norm of the residual stream entering each layer (`resid_pre`), over every token
    of the raw texts after BOS; with `centred=True`, the median distance from the mean residual.

    The median ignores the few attention-sink positions whose norm is many times the rest.

    Args:
        model: the model.
        texts: reference texts (raw, never chat-templated).
        layers: the layers to measure.
        show_progress: show a progress bar.
        centred: measure each token's distance from the mean residual instead.

    Returns:
        layer -> median norm; multiply by a strength in residual-norm units to get a raw strength.

    Raises:
        ValueError: if there are no texts, or as `extract`.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("residual_norms needs at least one reference text.")
    acts = extract(model, texts, list(layers), read_at="all", show_progress=show_progress,
                   chat=False)
    out = {}
    for layer in acts.layers:
        x = acts[layer].double()
        if centred:
            x = x - x.mean(0)
        out[layer] = float(x.norm(dim=-1).median())
    return out


def scale_to_residual(vector: SteeringVector, norms: Mapping[int, float]) -> SteeringVector:
    """The vector with each layer's direction rescaled to norm `norms[layer]` (see module doc).

    With the result, strength s adds s x (typical residual norm) at every layer: a scale comparable
    across layers and models.

    Args:
        vector: the vector to rescale.
        norms: layer -> target norm, e.g. from `residual_norms`.

    Returns:
        A new vector (method tagged "|residual-scaled", the norms recorded in `extra`).

    Raises:
        ValueError: if a layer has no norm or the vector is zero there.
    """
    missing = [layer for layer in vector.layers if layer not in norms]
    if missing:
        raise ValueError(f"No residual norm for layer(s) {missing}; norms cover {sorted(norms)}.")
    dirs = {}
    for layer, d in vector.directions.items():
        n = float(d.norm())
        if n == 0.0:
            raise ValueError(f"Layer {layer} of the vector is zero; it cannot be rescaled.")
        dirs[layer] = d * (float(norms[layer]) / n)
    extra = dict(vector.extra)
    extra["scaled_to_residual_norm"] = {str(k): float(norms[k]) for k in vector.layers}
    return replace(vector, directions=dirs, method=f"{vector.method}|residual-scaled", extra=extra)
