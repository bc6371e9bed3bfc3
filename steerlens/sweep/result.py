"""Sweep results: the tidy table, per-cell summaries with CIs, per-layer effects and zones.

`SweepResult.table` has one row per (vector, layer, strength, prompt) cell. `summary()` averages
over prompts per (vector, layer, strength), with a percentile-bootstrap CI (`stats.bootstrap_ci`)
for each measure and a Wilson interval for the change rate. `effect_values` puts every measure on
an "effect of steering" scale, per prompt: KL and `changed` as they are (both are 0 unsteered),
score and perplexity as the paired difference from the same prompt's unsteered continuation.
`layer_effect` reduces that to one number per (vector, layer) at a chosen strength, which is what
layer-selection analyses consume. `zones` labels each (layer, strength) of a vector as
"unstable", "sweet spot" or "frozen" from documented thresholds (see its docstring).

Failed cells: a cell whose steered logits became non-finite has `failed` true and an `error`
message instead of values. Every summary here (`summary`, `effect_values` and so `layer_effect`
and `compare_random`, `zones`) leaves failed cells out and reports how many it left out
(`n_errors`); `zones` calls a (layer, strength) with any failed cell "unstable".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import SweepConfig
from ..stats import bootstrap_ci, proportion_ci

MEASURE_COLUMNS: tuple[str, ...] = ("kl_bits", "changed", "score", "perplexity")
KEYS = ["vector", "control_for", "is_random", "layer", "strength"]


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def failed_mask(table: pd.DataFrame) -> pd.Series:
    """Which cells failed (non-finite values): the `failed` column, all False without one.

    Args:
        table: a sweep table.

    Returns:
        A boolean Series aligned with the table.
    """
    if "failed" not in table.columns:
        return pd.Series(False, index=table.index)
    return table["failed"].fillna(False).astype(bool)


def build_tables(spec, store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cell table and the per-prompt baseline table from a completed store.

    Args:
        spec (SweepGrid): the grid (names, layers, strengths, prompts, control_for, generate).
        store (CellStore): the store holding every record.

    Returns:
        (cell table, baseline table).
    """
    rows = []
    for name in spec.names:
        for layer in spec.layers:
            for s in spec.strengths:
                for p, prompt in enumerate(spec.prompts):
                    kl = store.get(("kl", name, layer, s, p)) or {}
                    kl_failed = bool(kl.get("failed"))
                    row: dict[str, Any] = {
                        "vector": name, "control_for": spec.control_for[name],
                        "is_random": spec.control_for[name] != name, "layer": layer,
                        "strength": s, "prompt_idx": p, "prompt": prompt,
                        "kl_bits": float("nan") if kl_failed else _nan(kl.get("kl_bits")),
                    }
                    errors = [kl.get("error") if kl_failed else None]
                    failed = kl_failed
                    if spec.generate:
                        g = store.get(("gen", name, layer, s, p)) or {}
                        row.update(text=g.get("text"), changed=g.get("changed"),
                                   diverge_at=g.get("diverge_at"), score=_nan(g.get("score")),
                                   perplexity=_nan(g.get("perplexity")))
                        errors.insert(0 if g.get("failed") else 1, g.get("error"))
                        failed = failed or bool(g.get("failed"))
                    row["error"] = next((e for e in errors if e), None)
                    row["failed"] = failed
                    rows.append(row)
    table = pd.DataFrame(rows)
    table["failed"] = table["failed"].astype(bool)
    if spec.generate:
        # a failed cell has no `changed`: nullable booleans then, plain bool otherwise
        has_na = table["changed"].isna().any()
        table["changed"] = table["changed"].astype("boolean" if has_na else bool)
        table["diverge_at"] = table["diverge_at"].astype("Int64")
    base_rows = []
    if spec.generate:
        for p, prompt in enumerate(spec.prompts):
            b = store.get(("base", p)) or {}
            base_rows.append({"prompt_idx": p, "prompt": prompt, "text": b.get("text"),
                              "score": _nan(b.get("score")),
                              "perplexity": _nan(b.get("perplexity")), "error": b.get("error")})
    baseline = pd.DataFrame(base_rows, columns=["prompt_idx", "prompt", "text", "score",
                                                "perplexity", "error"])
    return table, baseline


@dataclass(frozen=True, eq=False)
class SweepResult:
    """A finished sweep: `table` (one row per cell), the unsteered `baseline` per prompt (when
    generating), the settings fingerprint, and what this call computed vs resumed.

    Attributes:
        table: one row per (vector, layer, strength, prompt) cell, random controls included.
        baseline: the unsteered continuation's text, score and perplexity per prompt (empty for
            KL-only sweeps).
        config: the fingerprint the results directory records (`settings` reads it back).
        n_computed: records computed in this call.
        n_resumed: records loaded from `out_dir`.
        passes: model passes run in this call, by kind.
        out_dir: the results directory, if any.
    """

    table: pd.DataFrame
    baseline: pd.DataFrame
    config: Mapping[str, Any]
    n_computed: int  # records computed in this call
    n_resumed: int  # records loaded from out_dir
    passes: Mapping[str, int] = field(default_factory=dict)  # model passes run in this call
    out_dir: str | None = None

    @property
    def n_cells(self) -> int:
        """Number of (vector, layer, strength, prompt) cells in the table."""
        return len(self.table)

    @property
    def n_errors(self) -> int:
        """Number of failed cells (non-finite values; summaries exclude them)."""
        return int(failed_mask(self.table).sum())

    @property
    def settings(self) -> SweepConfig:
        """The sweep's `SweepConfig` (chat resolved), read back from the fingerprint."""
        return SweepConfig.from_dict(self.config["config"])

    @property
    def measures(self) -> list[str]:
        """The measure columns this sweep has ("kl_bits", and with generation "changed",
        "score", "perplexity").
        """
        return [m for m in MEASURE_COLUMNS if m in self.table.columns]

    @property
    def vectors(self) -> list[str]:
        """Vector names in table order: real vectors first, then random controls."""
        return list(dict.fromkeys(self.table["vector"]))

    def summary(self, ci: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Per (vector, layer, strength): n (cells), n_errors (failed cells, left out of every
        measure) and, per measure, mean with CI (`<m>_mean/low/high`) and the number of values
        it is computed from (`<m>_n`).

        The change rate gets a Wilson interval; the other measures a percentile bootstrap over prompts.

        Args:
            ci: confidence level.
            n_boot: bootstrap resamples.
            seed: bootstrap seed.

        Returns:
            (pandas.DataFrame): One row per (vector, layer, strength).
        """
        out = []
        failed = failed_mask(self.table)
        for key, grp in self.table.groupby(KEYS, sort=False):
            row = dict(zip(KEYS, key))
            bad = failed.loc[grp.index]
            row["n"] = len(grp)
            row["n_errors"] = int(bad.sum())
            for m in self.measures:
                row.update(_interval(grp.loc[~bad, m], m, ci, n_boot, seed))
            out.append(row)
        return pd.DataFrame(out)


def _interval(series: pd.Series, measure: str, ci: float, n_boot: int, seed: int) -> dict:
    vals = series.astype(float).dropna().to_numpy(float)
    out = {f"{measure}_n": int(vals.size)}
    if vals.size == 0:
        est = low = high = math.nan
    elif measure == "changed":
        c = proportion_ci(int(vals.sum()), int(vals.size), ci=ci)
        est, low, high = c.estimate, c.low, c.high
    else:
        c = bootstrap_ci(vals, n_boot=n_boot, ci=ci, seed=seed)
        est, low, high = c.estimate, c.low, c.high
    out.update({f"{measure}_mean": est, f"{measure}_low": low, f"{measure}_high": high})
    return out


def _check_measure(result: SweepResult, measure: str) -> str:
    if measure not in result.measures:
        raise ValueError(f"Unknown measure {measure!r}; this sweep has {result.measures}"
                         + ("" if "score" in result.table else
                            " (run with measures=('kl', 'generate') for the generation measures)")
                         + ".")
    return measure


def effect_values(result: SweepResult, measure: str = "kl_bits") -> pd.DataFrame:
    """Per cell, `effect`: the measure relative to the unsteered model on the same prompt.

    kl_bits and changed are already relative (0 when unsteered); score and perplexity are
    differences steered - baseline continuation of the same prompt. A failed cell's effect is
    NaN (its `failed` column is true).

    Args:
        result: the sweep result.
        measure: one of `result.measures`.

    Returns:
        (pandas.DataFrame): The key columns, prompt_idx, `effect` and `failed`, one row per
        cell.

    Raises:
        ValueError: if the sweep did not record `measure`.
    """
    _check_measure(result, measure)
    t = result.table
    eff = t[KEYS + ["prompt_idx"]].copy()
    vals = t[measure].astype(float)
    if measure in ("score", "perplexity"):
        base = result.baseline.set_index("prompt_idx")[measure]
        vals = vals - t["prompt_idx"].map(base).astype(float)
    failed = failed_mask(t)
    eff["effect"] = vals.where(~failed).to_numpy(float)
    eff["failed"] = failed.to_numpy()
    return eff


def _default_strength(strengths) -> float:
    vals = sorted(set(float(s) for s in strengths), key=lambda s: (abs(s), s))
    return vals[-1]


def layer_effect(
    result: SweepResult,
    measure: str = "kl_bits",
    strength: float | None = None,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (vector, layer): the mean effect of steering at one strength, with CI and n.

    `strength` defaults to the largest |strength| in the grid (the positive one on a tie). The
    effect is as in `effect_values` (KL bits, change rate, or score / perplexity change from the
    unsteered continuation). Columns: vector, control_for, is_random, layer, strength, measure,
    effect, low, high, n (values used), n_errors (failed cells left out).

    Args:
        result: the sweep result.
        measure: one of `result.measures`.
        strength: the strength to read (default: the largest in magnitude).
        ci: confidence level.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        (pandas.DataFrame): One row per (vector, layer), what `predict_steering` consumes.

    Raises:
        ValueError: if the strength is not in the sweep or the measure was not recorded.
    """
    eff = effect_values(result, measure)
    if strength is None:
        strength = _default_strength(eff["strength"])
    strength = float(strength)
    if strength not in set(eff["strength"]):
        raise ValueError(f"Strength {strength} is not in this sweep; its strengths are "
                         f"{sorted(set(eff['strength']))}.")
    rows = []
    sel = eff[eff["strength"] == strength]
    for key, grp in sel.groupby(["vector", "control_for", "is_random", "layer"], sort=False):
        vals = grp["effect"].dropna().to_numpy(float)
        row = dict(zip(["vector", "control_for", "is_random", "layer"], key))
        row.update(strength=strength, measure=measure, n=int(vals.size),
                   n_errors=int(grp["failed"].sum()))
        if vals.size:
            c = bootstrap_ci(vals, n_boot=n_boot, ci=ci, seed=seed)
            row.update(effect=c.estimate, low=c.low, high=c.high)
        else:
            row.update(effect=math.nan, low=math.nan, high=math.nan)
        rows.append(row)
    cols = ["vector", "control_for", "is_random", "layer", "strength", "measure", "effect", "low",
            "high", "n", "n_errors"]
    return pd.DataFrame(rows).reindex(columns=cols)


ZONES = ("unstable", "sweet spot", "frozen")


def zones(
    result: SweepResult,
    *,
    frozen_change: float = 0.1,
    unstable_ppl_ratio: float = 2.0,
    frozen_kl: float = 0.1,
    unstable_kl: float = 5.0,
) -> pd.DataFrame:
    """Label each (vector, layer, strength) "unstable", "sweet spot" or "frozen".

    With generation measures (the rule used when the sweep generated text):
    - unstable: the mean perplexity of the steered continuations under the unsteered model is
      more than `unstable_ppl_ratio` (2x) the mean perplexity of the unsteered continuations of
      the same prompts, i.e. coherence has blown up;
    - frozen: the change rate is below `frozen_change` (10%): greedy output barely moves;
    - otherwise: sweet spot.
    KL only: unstable when mean next-token KL exceeds `unstable_kl` bits (5 bits: the steered
    model needs 5 extra bits, a 32x likelihood ratio, to code the base model's next token),
    frozen below `frozen_kl` bits (0.1), sweet spot between. Thresholds are heuristics; pass your
    own. Strength-0 cells are frozen by definition. A (layer, strength) where any cell failed
    (non-finite values: the strength overflows the model's dtype) is unstable; the means are
    over the other cells and `n_errors` counts the failed ones.

    Args:
        result: the sweep result.
        frozen_change: change rate below which a cell is frozen (generation sweeps).
        unstable_ppl_ratio: perplexity ratio above which a cell is unstable (generation sweeps).
        frozen_kl: mean KL (bits) below which a cell is frozen (KL-only sweeps).
        unstable_kl: mean KL (bits) above which a cell is unstable (KL-only sweeps).

    Returns:
        (pandas.DataFrame): One row per (vector, layer, strength) with n, n_errors, the means
        used and `zone`.
    """
    t = result.table
    gen = "changed" in t.columns
    rows = []
    base_ppl = float(np.nanmean(result.baseline["perplexity"])) if gen else math.nan
    failed = failed_mask(t)
    for key, grp in t.groupby(KEYS, sort=False):
        row = dict(zip(KEYS, key))
        bad = failed.loc[grp.index]
        n_errors = int(bad.sum())
        grp = grp.loc[~bad]
        row["n"] = len(grp) + n_errors
        row["n_errors"] = n_errors
        row["kl_bits"] = float(grp["kl_bits"].mean()) if len(grp) else math.nan
        if gen:
            ppl = grp["perplexity"].dropna()
            changed = grp["changed"].astype(float).dropna()
            row["change_rate"] = float(changed.mean()) if len(changed) else math.nan
            row["perplexity"] = float(ppl.mean()) if len(ppl) else math.nan
            row["perplexity_ratio"] = row["perplexity"] / base_ppl
            if n_errors or row["perplexity_ratio"] > unstable_ppl_ratio:
                zone = "unstable"
            elif row["change_rate"] < frozen_change:
                zone = "frozen"
            else:
                zone = "sweet spot"
        else:
            zone = ("unstable" if n_errors or row["kl_bits"] > unstable_kl
                    else "frozen" if row["kl_bits"] < frozen_kl else "sweet spot")
        row["zone"] = zone
        rows.append(row)
    return pd.DataFrame(rows)
