"""Testing the eigengap prediction: do per-layer gaps track the measured steering effect?

Given a layer table of eigengaps and a per-layer steering effect (e.g. `sweep.layer_effect`, the
mean change in a behaviour score at one strength), this correlates the weakest-link (min) gap and
the mean gap with the effect across layers, Pearson and Spearman, each with a bootstrap CI and a
permutation p-value (`stats.correlate`). It also compares the layer the gaps put first (the top of
the eigengap-gated ranking) with the layer whose measured effect is largest. Layers are the unit of
analysis, so n is the number of layers both tables share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..stats import CorrelationResult, correlate
from .eigengap import EigengapResult, GapKind, GapTable, gated_layers


@dataclass(frozen=True)
class GapPrediction:
    """Correlations between layer gaps and steering effect, and predicted vs best layer.

    Attributes:
        kind: the gap table used ("keys", "rotated_keys" or "pattern").
        layers: the layers both the gaps and the effect cover (the unit of analysis).
        min_gap: weakest-link gap per layer.
        mean_gap: mean gap per layer.
        effect: the measured effect per layer.
        effect_label: what the effect is, for tables and figures.
        min_pearson: Pearson r of min gap vs effect, with CI and permutation p.
        min_spearman: Spearman r of min gap vs effect.
        mean_pearson: Pearson r of mean gap vs effect.
        mean_spearman: Spearman r of mean gap vs effect.
        ranking: eigengap-gated candidate layers, best first.
        threshold: the gating threshold.
    """

    kind: str
    layers: tuple[int, ...]
    min_gap: np.ndarray
    mean_gap: np.ndarray
    effect: np.ndarray
    effect_label: str
    min_pearson: CorrelationResult
    min_spearman: CorrelationResult
    mean_pearson: CorrelationResult
    mean_spearman: CorrelationResult
    ranking: tuple[int, ...]  # eigengap-gated candidate layers, best first
    threshold: float

    @property
    def n(self) -> int:
        """Number of layers in the analysis."""
        return len(self.layers)

    @property
    def predicted_layer(self) -> int | None:
        """The layer the gaps put first (None when every layer is gated out)."""
        return self.ranking[0] if self.ranking else None

    @property
    def best_layer(self) -> int:
        """The layer with the largest measured effect."""
        return int(self.layers[int(np.nanargmax(self.effect))])

    @property
    def rank_of_best(self) -> int | None:
        """1-based position of the measured best layer in the gated ranking (None if gated out)."""
        return self.ranking.index(self.best_layer) + 1 if self.best_layer in self.ranking else None

    def to_dict(self) -> dict:
        """The prediction as a JSON-ready dict (correlations, layers, ranking).

        Returns:
            A dict with the four correlations, the predicted and best layers, the ranking and one row
            per layer.
        """
        def corr(c: CorrelationResult) -> dict:
            return {"r": c.r, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_perm": c.p_perm,
                    "n": c.n, "method": c.method}

        return {
            "kind": self.kind, "effect": self.effect_label, "n_layers": self.n,
            "threshold": self.threshold,
            "min_gap_pearson": corr(self.min_pearson), "min_gap_spearman": corr(self.min_spearman),
            "mean_gap_pearson": corr(self.mean_pearson),
            "mean_gap_spearman": corr(self.mean_spearman),
            "predicted_layer": self.predicted_layer, "best_layer": self.best_layer,
            "rank_of_best_layer": self.rank_of_best, "ranking": list(self.ranking),
            "layers": [{"layer": layer, "min_gap": float(a), "mean_gap": float(b),
                        "effect": float(e)}
                       for layer, a, b, e in zip(self.layers, self.min_gap, self.mean_gap,
                                                 self.effect)],
        }


def _effect_map(effect) -> dict[int, float]:
    """Layer -> effect from a mapping or a `layer_effect` DataFrame (one real vector)."""
    if isinstance(effect, Mapping):
        return {int(k): float(v) for k, v in effect.items()}
    cols = getattr(effect, "columns", None)
    if cols is None or "layer" not in cols or "effect" not in cols:
        raise ValueError("effect must be a {layer: effect} mapping or a DataFrame with 'layer' and "
                         "'effect' columns (e.g. sweep.layer_effect(...)).")
    df = effect
    if "is_random" in cols:
        df = df[~df["is_random"].astype(bool)]
    if "vector" in cols and df["vector"].nunique() > 1:
        raise ValueError(f"effect holds several vectors {sorted(df['vector'].unique())}; select one.")
    if df["layer"].duplicated().any():
        raise ValueError("effect has more than one row per layer; select one vector and strength.")
    return {int(r.layer): float(r.effect) for r in df.itertuples()}


def predict_steering(
    gaps: GapTable | EigengapResult,
    effect,
    *,
    kind: GapKind | None = None,
    effect_label: str = "effect",
    threshold: float | None = None,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> GapPrediction:
    """Correlate per-layer min and mean gaps with a per-layer steering effect.

    Layers are the unit of analysis, so n is the number of layers both inputs share, and
    neighbouring layers are not independent: read the CIs with that in mind.

    Args:
        gaps: a `GapTable`, or an `EigengapResult` (then `kind` picks the table).
        effect (Mapping[int, float] | pandas.DataFrame): {layer: value}, or a
            `sweep.layer_effect` DataFrame for one vector and strength.
        kind: the gap table of an `EigengapResult` (default: rotated keys when present).
        effect_label: what the effect is, for tables and figures.
        threshold: the gating threshold for the ranking; None uses the table's.
        n_boot: bootstrap resamples for each correlation's CI.
        n_perm: permutations for each correlation's p-value.
        seed: seed for resampling and permutations.

    Returns:
        A `GapPrediction`.

    Raises:
        ValueError: if `kind` does not match a `GapTable`, `effect` has the wrong shape or several
            vectors, or fewer than 3 layers have both a gap and a finite effect.
    """
    if isinstance(gaps, EigengapResult):
        if kind is None:
            kind = "rotated_keys" if gaps.rotated_keys is not None else "keys"
        gaps = gaps.table(kind)
    elif kind is not None and kind != gaps.kind:
        raise ValueError(f"kind={kind!r} but the GapTable holds {gaps.kind!r} gaps.")
    eff = _effect_map(effect)
    layers = tuple(layer for layer in gaps.layers if layer in eff and np.isfinite(eff[layer]))
    if len(layers) < 3:
        raise ValueError(f"Need at least 3 layers with both a gap and a finite effect; gap layers "
                         f"{list(gaps.layers)}, effect layers {sorted(eff)}.")
    idx = [gaps.layers.index(layer) for layer in layers]
    mn, me = gaps.min_gap[idx], gaps.mean_gap[idx]
    y = np.array([eff[layer] for layer in layers])
    kw = {"n_boot": n_boot, "n_perm": n_perm, "seed": seed}
    sub = GapTable(gaps.kind, layers, gaps.gaps[:, idx], gaps.lambda1[:, idx],
                   gaps.lambda2[:, idx], gaps.threshold)
    return GapPrediction(
        kind=gaps.kind, layers=layers, min_gap=mn, mean_gap=me, effect=y,
        effect_label=effect_label,
        min_pearson=correlate(mn, y, "pearson", **kw), min_spearman=correlate(mn, y, "spearman", **kw),
        mean_pearson=correlate(me, y, "pearson", **kw),
        mean_spearman=correlate(me, y, "spearman", **kw),
        ranking=gated_layers(sub, threshold), threshold=sub.threshold if threshold is None
        else float(threshold),
    )
