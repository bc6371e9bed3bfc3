"""Testing the eigengap prediction: do per-layer gaps track the measured steering effect?

Given a layer table of eigengaps and a per-layer steering effect (e.g. `sweep.layer_effect`, the
mean change in a behaviour score at one strength), this correlates the weakest-link (min) gap and
the mean gap with the effect across layers, Pearson and Spearman, each with a bootstrap CI and a
permutation p-value (`stats.correlate`), and compares the layer the gaps put first (the top of
the eigengap-gated ranking) with the layer whose measured effect is largest. The claim as stated
says small gaps mark heads susceptible to steering, so it predicts a *negative* correlation of the
min gap with the effect; the inverse reading predicts a positive one. `reading_verdicts` judges
both from the same interval, so no verdict hangs on a sign convention. `gating_test` asks whether
a gate (the layers whose min gap is at or below a quantile of the model's own gaps, or above it
for the inverse reading) picks layers with a larger measured effect than random layer sets of the
same size: precision@k against the top-k measured layers, with its exact hypergeometric p, and the
gated layers' mean effect against every same-size layer set (enumerated, or sampled when there are
too many). `split_gating` chooses the quantile on one half of the prompts and tests it on the
other. Layers are the unit of analysis, so n is the number of layers both tables share, and
neighbouring layers are not independent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from ..stats import CorrelationResult, correlate
from .eigengap import GATING_READINGS, EigengapResult, GapKind, GapTable, gated_layers


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
        ranking: eigengap-gated candidate layers, best first (under `reading`).
        threshold: the gating threshold.
        reading: "stated" (min gap <= threshold steers, smallest first) or "inverse".
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
    reading: str = "stated"

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
            "threshold": self.threshold, "reading": self.reading,
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
    reading: str = "stated",
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
        reading: the gating reading for the ranking (see `gated_layers`); the correlations do not
            depend on it.
        n_boot: bootstrap resamples for each correlation's CI.
        n_perm: permutations for each correlation's p-value.
        seed: seed for resampling and permutations.

    Returns:
        A `GapPrediction`.

    Raises:
        ValueError: if `kind` does not match a `GapTable`, `effect` has the wrong shape or several
            vectors, fewer than 3 layers have both a gap and a finite effect, or `reading` is
            unknown.
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
        ranking=gated_layers(sub, threshold, reading=reading),
        threshold=sub.threshold if threshold is None else float(threshold), reading=reading,
    )


def reading_verdicts(c: CorrelationResult) -> dict[str, str]:
    """Both readings of one gap-vs-effect correlation, judged from the same interval.

    The stated reading (small gaps steer) predicts r < 0, the inverse reading r > 0. A reading is
    "supported" when the CI lies entirely on its side of 0, "contradicted" when it lies entirely
    on the other side, "null" when it spans 0, and "untestable" when r is undefined (NaN).

    Args:
        c: a correlation of a gap statistic with the per-layer effect.

    Returns:
        {"stated": verdict, "inverse": verdict}.
    """
    if not (np.isfinite(c.r) and np.isfinite(c.ci_low) and np.isfinite(c.ci_high)):
        return {"stated": "untestable", "inverse": "untestable"}
    neg, pos = c.ci_high < 0, c.ci_low > 0
    return {"stated": "supported" if neg else "contradicted" if pos else "null",
            "inverse": "supported" if pos else "contradicted" if neg else "null"}


def _check_reading(reading: str) -> None:
    if reading not in GATING_READINGS:
        raise ValueError(f"Unknown gating reading {reading!r}; valid ones are "
                         f"{list(GATING_READINGS)}.")


def quantile_gate(gap: Mapping[int, float], quantile: float, reading: str = "stated"
                  ) -> tuple[float, tuple[int, ...]]:
    """A per-model threshold: a quantile of the model's own per-layer gaps, and the layers it gates.

    "stated": threshold t = the `quantile` of the gaps, gated = layers with gap <= t (the
    smallest gaps). "inverse": t = the 1 - `quantile` quantile, gated = layers with gap > t (the
    largest), as `gated_layers` treats a threshold. numpy's default (linear) quantile.

    Args:
        gap (Mapping[int, float]): {layer: weakest-link gap}.
        quantile: the share of layers the gate aims at, in (0, 1).
        reading: "stated" or "inverse".

    Returns:
        (threshold, gated layers in layer order).

    Raises:
        ValueError: for a quantile outside (0, 1), an unknown reading, or no finite gap.
    """
    _check_reading(reading)
    if not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}.")
    layers = sorted(int(k) for k, v in gap.items() if np.isfinite(v))
    if not layers:
        raise ValueError("gap has no finite value; pass {layer: min gap} for at least one layer.")
    vals = np.array([gap[k] for k in layers], float)
    if reading == "stated":
        t = float(np.quantile(vals, quantile))
        return t, tuple(k for k, v in zip(layers, vals) if v <= t)
    t = float(np.quantile(vals, 1.0 - quantile))
    return t, tuple(k for k, v in zip(layers, vals) if v > t)


@dataclass(frozen=True)
class GatingTest:
    """Does a gate pick more-steerable layers than random layer sets of the same size?

    Attributes:
        reading: "stated" or "inverse".
        threshold: the gap threshold applied.
        quantile: the quantile the threshold came from (None for a fixed threshold).
        layers: the layers with both a gap and a finite effect (the candidates).
        gated: the layers the gate selects.
        top_k: the k = len(gated) layers with the largest measured effect.
        hits: |gated ∩ top_k|.
        precision: hits / k (NaN when nothing is gated).
        expected_precision: k / n, the mean precision of a random k-set.
        p_precision: P(a random k-set has >= hits hits), exact (hypergeometric).
        mean_effect: mean measured effect of the gated layers.
        random_mean: mean effect of a random k-set (= the mean over all candidate layers).
        random_low: 2.5% quantile of the random k-sets' mean effect.
        random_high: 97.5% quantile of the random k-sets' mean effect.
        p_mean_effect: share of random k-sets whose mean effect is >= the gated one's.
        n_sets: random k-sets compared (all of them when `exhaustive`).
        exhaustive: whether every k-set was enumerated.
    """

    reading: str
    threshold: float
    quantile: float | None
    layers: tuple[int, ...]
    gated: tuple[int, ...]
    top_k: tuple[int, ...]
    hits: int
    precision: float
    expected_precision: float
    p_precision: float
    mean_effect: float
    random_mean: float
    random_low: float
    random_high: float
    p_mean_effect: float
    n_sets: int
    exhaustive: bool

    @property
    def k(self) -> int:
        """Number of gated layers."""
        return len(self.gated)

    @property
    def n(self) -> int:
        """Number of candidate layers."""
        return len(self.layers)

    def to_dict(self) -> dict:
        """The test as a JSON-ready dict.

        Returns:
            Every field plus k and n.
        """
        return {"reading": self.reading, "threshold": self.threshold, "quantile": self.quantile,
                "n_layers": self.n, "k": self.k, "layers": list(self.layers),
                "gated": list(self.gated), "top_k": list(self.top_k), "hits": self.hits,
                "precision": self.precision, "expected_precision": self.expected_precision,
                "p_precision": self.p_precision, "mean_effect": self.mean_effect,
                "random_mean": self.random_mean, "random_low": self.random_low,
                "random_high": self.random_high, "p_mean_effect": self.p_mean_effect,
                "n_sets": self.n_sets, "exhaustive": self.exhaustive}


def _hypergeom_sf(hits: int, n: int, k: int) -> float:
    """P(X >= hits) for X = overlap of a random k-subset of n with a fixed k-subset."""
    total = math.comb(n, k)
    return sum(math.comb(k, x) * math.comb(n - k, k - x) for x in range(hits, k + 1)) / total


def gating_test(
    gap: Mapping[int, float],
    effect: Mapping[int, float],
    threshold: float,
    reading: str = "stated",
    *,
    quantile: float | None = None,
    max_sets: int = 20000,
    seed: int = 0,
) -> GatingTest:
    """Compare the layers a gap threshold gates with random layer sets of the same size.

    The gate follows `gated_layers`: "stated" keeps layers with gap <= threshold, "inverse" those
    above it. Precision@k counts gated layers among the k layers with the largest measured effect
    (ties broken by layer order); its p-value is exact. The gated layers' mean effect is compared
    with every k-subset of the candidate layers when there are at most `max_sets`, else with
    `max_sets` sampled ones (then p = (1 + #>=) / (1 + max_sets)).

    Args:
        gap (Mapping[int, float]): {layer: weakest-link gap}.
        effect (Mapping[int, float]): {layer: measured steering effect}, larger = steers more.
        threshold: the gap threshold.
        reading: "stated" or "inverse".
        quantile: the quantile the threshold came from, recorded only.
        max_sets: the most random k-sets to compare with.
        seed: seed for sampled k-sets.

    Returns:
        A `GatingTest` (precision and p NaN when nothing is gated).

    Raises:
        ValueError: for an unknown reading, fewer than 3 layers with both a finite gap and a
            finite effect, or max_sets < 1.
    """
    _check_reading(reading)
    if max_sets < 1:
        raise ValueError(f"max_sets must be a positive integer, got {max_sets!r}.")
    layers = tuple(sorted(int(k) for k in gap if int(k) in effect and np.isfinite(gap[k])
                          and np.isfinite(effect[int(k)])))
    if len(layers) < 3:
        raise ValueError(f"Need at least 3 layers with both a finite gap and a finite effect; gap "
                         f"layers {sorted(gap)}, effect layers {sorted(effect)}.")
    g = np.array([gap[k] for k in layers], float)
    y = np.array([effect[k] for k in layers], float)
    sel = g <= threshold if reading == "stated" else g > threshold
    gated = tuple(k for k, s in zip(layers, sel) if s)
    n, k = len(layers), len(gated)
    top = tuple(sorted(layers[i] for i in np.argsort(-y, kind="stable")[:k]))
    hits = len(set(gated) & set(top))
    nan = math.nan
    if k == 0:
        return GatingTest(reading, float(threshold), quantile, layers, gated, top, 0, nan, 0.0, nan,
                          nan, float(y.mean()), nan, nan, nan, 0, True)
    observed = float(y[sel].mean())
    exhaustive = math.comb(n, k) <= max_sets
    if exhaustive:
        means = np.array([y[list(c)].mean() for c in itertools.combinations(range(n), k)])
        p_mean = float((means >= observed - 1e-12).mean())
    else:
        gen = np.random.default_rng(seed)
        idx = np.argsort(gen.random((max_sets, n)), axis=1)[:, :k]
        means = y[idx].mean(1)
        p_mean = float((1 + (means >= observed - 1e-12).sum()) / (1 + max_sets))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return GatingTest(reading, float(threshold), quantile, layers, gated, top, hits, hits / k,
                      k / n, _hypergeom_sf(hits, n, k), observed, float(y.mean()), float(lo),
                      float(hi), p_mean, int(means.size), exhaustive)


DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def choose_quantile(
    gap: Mapping[int, float],
    effect: Mapping[int, float],
    reading: str = "stated",
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> tuple[float, dict[float, float]]:
    """The quantile whose gate has the largest mean measured effect (ties: the smallest quantile).

    Args:
        gap (Mapping[int, float]): {layer: weakest-link gap} on the selection data.
        effect (Mapping[int, float]): {layer: effect} on the selection data.
        reading: "stated" or "inverse".
        quantiles: the candidate quantiles, each in (0, 1).

    Returns:
        (the chosen quantile, {quantile: mean effect of its gated layers, NaN when none}).

    Raises:
        ValueError: for an empty quantile list, a quantile outside (0, 1), an unknown reading, or
            when no quantile gates a layer that has an effect.
    """
    if not quantiles:
        raise ValueError("quantiles is empty; pass at least one value in (0, 1).")
    scores = {}
    for q in quantiles:
        _, gated = quantile_gate(gap, q, reading)
        vals = [effect[k] for k in gated if k in effect and np.isfinite(effect[k])]
        scores[float(q)] = float(np.mean(vals)) if vals else math.nan
    finite = {q: s for q, s in scores.items() if np.isfinite(s)}
    if not finite:
        raise ValueError(f"No quantile in {list(quantiles)} gates a layer with a finite effect.")
    best = max(finite.values())
    return min(q for q, s in finite.items() if s == best), scores


@dataclass(frozen=True)
class SplitGating:
    """A quantile threshold chosen on one half of the prompts and tested on the other.

    Attributes:
        reading: "stated" or "inverse".
        selection_prompts: prompt indices the quantile was chosen on.
        test_prompts: prompt indices it was tested on.
        quantile: the chosen quantile.
        selection_scores: {quantile: mean effect of its gated layers on the selection half}.
        test: the `GatingTest` on the test half (threshold = the quantile of the selection
            half's gaps, applied to the test half's gaps).
    """

    reading: str
    selection_prompts: tuple[int, ...]
    test_prompts: tuple[int, ...]
    quantile: float
    selection_scores: dict
    test: GatingTest

    def to_dict(self) -> dict:
        """The split as a JSON-ready dict.

        Returns:
            The fields, with the test as its `to_dict()`.
        """
        return {"reading": self.reading, "selection_prompts": list(self.selection_prompts),
                "test_prompts": list(self.test_prompts), "quantile": self.quantile,
                "selection_scores": {f"{q:g}": s for q, s in self.selection_scores.items()},
                "test": self.test.to_dict()}


def split_gating(
    gap: Float[np.ndarray, "prompt layer"],
    effect: Float[np.ndarray, "prompt layer"],
    layers: Sequence[int],
    reading: str = "stated",
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    *,
    max_sets: int = 20000,
    seed: int = 0,
) -> tuple[SplitGating, SplitGating]:
    """Two-fold prompt split: choose the quantile on even-index prompts, test on odd, and back.

    Per half, each layer's gap and effect are means over that half's prompts (NaN effects, i.e.
    failed cells, are skipped). The threshold is the chosen quantile of the selection half's
    gaps, so nothing about the test half's effects enters the choice.

    Args:
        gap: per-prompt weakest-link gap, [prompt, layer] (`GapTable.per_prompt("min")`).
        effect: per-prompt steering effect on the same prompts, [prompt, layer].
        layers: the layer index of each column.
        reading: "stated" or "inverse".
        quantiles: the candidate quantiles.
        max_sets: passed to `gating_test`.
        seed: passed to `gating_test`.

    Returns:
        (even -> odd, odd -> even) `SplitGating`s.

    Raises:
        ValueError: if the arrays differ in shape, the columns do not match `layers`, there are
            fewer than 4 prompts, or a half leaves too few layers (see `gating_test`).
    """
    gap, effect = np.asarray(gap, float), np.asarray(effect, float)
    if gap.ndim != 2 or gap.shape != effect.shape or gap.shape[1] != len(layers):
        raise ValueError(f"gap and effect must both be [prompt, layer] with {len(layers)} layer "
                         f"columns; got {gap.shape} and {effect.shape}.")
    if gap.shape[0] < 4:
        raise ValueError(f"A prompt split needs at least 4 prompts, got {gap.shape[0]}.")
    halves = (tuple(range(0, gap.shape[0], 2)), tuple(range(1, gap.shape[0], 2)))

    def means(rows: tuple[int, ...]) -> tuple[dict[int, float], dict[int, float]]:
        sub = effect[list(rows)]
        count = np.isfinite(sub).sum(0)
        e = np.where(count > 0, np.nansum(sub, 0) / np.maximum(count, 1), np.nan)
        return ({int(k): float(v) for k, v in zip(layers, gap[list(rows)].mean(0))},
                {int(k): float(v) for k, v in zip(layers, e)})

    out = []
    for sel, test in (halves, halves[::-1]):
        g_sel, e_sel = means(sel)
        g_test, e_test = means(test)
        q, scores = choose_quantile(g_sel, e_sel, reading, quantiles)
        t, _ = quantile_gate(g_sel, q, reading)
        out.append(SplitGating(reading, sel, test, q, scores,
                               gating_test(g_test, e_test, t, reading, quantile=q,
                                           max_sets=max_sets, seed=seed)))
    return out[0], out[1]
