"""The built-in random-direction control: is the real vector's effect more than "any push"?

Adding any vector of a given norm perturbs a model, so an effect only means something next to the
same effect for random directions of the same norm. With `n_random=k`, each real vector gets k
Gaussian random directions matched to its per-layer norms (`methods.random_like`, seeds
random_seed .. random_seed + k - 1). They run through exactly the same grid and appear in the
table as vector "random:<seed>" (or "random:<seed>@<name>" when several real vectors are swept),
with `control_for` naming the real vector. `compare_random` then sets the real vector's per-prompt
effect at each (layer, strength) against the controls' (`stats.compare_to_random`) and reports the
random band: the lowest and highest control mean. `empirical_p` does the same for any already
reduced statistic (a ratio of means, an accuracy gain): p = (1 + #controls at least as extreme) /
(1 + k), so at least 20 controls are needed before p can fall below 0.05; `control_verdict` turns
a CI and that p into the findings table's supported / not supported / null.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..methods import random_like
from ..stats import bootstrap_ci, compare_to_random
from ..vectors import SteeringVector

RANDOM_PREFIX = "random:"


def random_label(seed: int, owner: str, n_real: int) -> str:
    """The table name of a random control: "random:<seed>" ("...@<owner>" with several vectors).

    Args:
        seed: the control's seed.
        owner: the real vector it controls.
        n_real: how many real vectors the sweep has.

    Returns:
        The control's name in the sweep table.
    """
    return f"{RANDOM_PREFIX}{seed}" if n_real == 1 else f"{RANDOM_PREFIX}{seed}@{owner}"


def control_names(real: Sequence[str], n_random: int, seed: int) -> dict[str, str]:
    """label -> owner for the random controls of `real` vectors (in the grid's order).

    Args:
        real: the real vectors' names.
        n_random: controls per real vector.
        seed: the first control's seed.

    Returns:
        Control name -> the real vector it controls.
    """
    return {random_label(seed + k, owner, len(real)): owner
            for owner in real for k in range(n_random)}


def random_controls(
    real: Mapping[str, SteeringVector], layers: Sequence[int], n_random: int, seed: int
) -> dict[str, tuple[SteeringVector, str]]:
    """label -> (norm-matched random vector at `layers`, name of the real vector it controls).

    Args:
        real: name -> real vector.
        layers: the swept layers (each control is matched to the real vector's norms there).
        n_random: controls per real vector.
        seed: the first control's seed (seeds seed .. seed + n_random - 1).

    Returns:
        Control name -> (random vector, owner name).
    """
    out = {}
    for owner, vec in real.items():
        base = vec.select(list(layers))
        for k in range(n_random):
            s = seed + k
            out[random_label(s, owner, len(real))] = (random_like(base, s), owner)
    return out


def compare_random(
    result,
    measure: str = "kl_bits",
    *,
    alternative: str = "two-sided",
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (real vector, layer, strength): the real effect with its CI against the random band.

    The effect is the per-prompt value of `measure` relative to the unsteered baseline (see
    `effect_values`). Columns: vector, layer, strength, n, real_mean, real_low, real_high,
    n_random, random_mean, random_low / random_high (lowest / highest control mean), p_value,
    percentile, beats_all (from `stats.compare_to_random`, one control = one random vector),
    n_errors / n_random_errors (failed cells of the real vector / of its controls, left out).
    With k controls the smallest possible p_value is 1/(k+1).

    Args:
        result (SweepResult): a sweep run with `n_random >= 1`.
        measure: the measure to compare (e.g. "kl_bits", "score").
        alternative: "greater", "less" or "two-sided".
        ci: confidence level of the real effect's CI.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        (pandas.DataFrame): One row per real (vector, layer, strength) cell.

    Raises:
        ValueError: for an unknown alternative or a sweep without random controls.
    """
    from .result import effect_values

    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(
            f"Unknown alternative {alternative!r}; valid: ['greater', 'less', 'two-sided']."
        )
    eff = effect_values(result, measure)
    if not eff["is_random"].any():
        raise ValueError("This sweep has no random controls; rerun it with n_random >= 1.")
    rows = []
    real = eff[~eff["is_random"]]
    for (vec, layer, strength), grp in real.groupby(["vector", "layer", "strength"], sort=False):
        ctrl = eff[eff["is_random"] & (eff["control_for"] == vec) & (eff["layer"] == layer)
                   & (eff["strength"] == strength)]
        vals = grp["effect"].dropna().to_numpy(float)
        per_ctrl = [g["effect"].dropna().to_numpy(float) for _, g in ctrl.groupby("vector")]
        per_ctrl = [c for c in per_ctrl if c.size]
        row = {"vector": vec, "layer": layer, "strength": strength, "measure": measure,
               "n": int(vals.size), "n_random": len(per_ctrl),
               "n_errors": int(grp["failed"].sum()), "n_random_errors": int(ctrl["failed"].sum())}
        if vals.size:
            c = bootstrap_ci(vals, n_boot=n_boot, ci=ci, seed=seed)
            row.update(real_mean=c.estimate, real_low=c.low, real_high=c.high)
        means = np.array([c.mean() for c in per_ctrl])
        if means.size:
            row.update(random_mean=float(means.mean()), random_low=float(means.min()),
                       random_high=float(means.max()))
        if vals.size and per_ctrl:
            cmp = compare_to_random(vals, per_ctrl, alternative=alternative)
            row.update(p_value=cmp.p_value, percentile=cmp.percentile, beats_all=cmp.beats_all)
        rows.append(row)
    cols = ["vector", "layer", "strength", "measure", "n", "real_mean", "real_low", "real_high",
            "n_random", "random_mean", "random_low", "random_high", "p_value", "percentile",
            "beats_all", "n_errors", "n_random_errors"]
    return pd.DataFrame(rows).reindex(columns=cols)


@dataclass(frozen=True)
class EmpiricalP:
    """A real statistic against k random-direction controls of the same statistic.

    `p_value` = (1 + n_extreme) / (1 + k), where n_extreme counts the controls at least as extreme
    as the real value in the direction of `alternative` (the +1 correction keeps p above 0 and
    makes it a valid p-value; with k controls the smallest attainable p is 1/(k+1), so k >= 19
    is needed for p < 0.05). `band_low` / `band_high` are the lowest / highest control values
    (the random band).
    """

    real: float
    k: int
    n_extreme: int
    p_value: float
    band_low: float
    band_high: float
    alternative: str

    @property
    def can_reject(self) -> bool:
        """Whether k controls allow p < 0.05 at all (k >= 20)."""
        return 1 / (1 + self.k) < 0.05

    def band(self, digits: int = 3) -> str:
        """The random band and p as text, e.g. "random -0.1..0.2 (k=20), empirical p=0.048".

        Args:
            digits: significant digits of the band's bounds.

        Returns:
            One line of text for a findings row.
        """
        return (f"random {self.band_low:.{digits}g}..{self.band_high:.{digits}g} (k={self.k}), "
                f"empirical p={self.p_value:.2g}")


def empirical_p(
    real: float, controls: Sequence[float] | np.ndarray, alternative: str = "greater"
) -> EmpiricalP:
    """The empirical p-value of one real statistic against the same statistic for k controls.

    p = (1 + #{controls at least as extreme as real}) / (1 + k): "greater" counts controls
    >= real, "less" controls <= real, "two-sided" |control| >= |real|. Unlike `compare_random`
    (which reduces per-prompt effects with the mean), this takes any already reduced statistic
    (a ratio of means, an accuracy gain, a KL at one layer). NaN controls are left out of k.

    Args:
        real: the real vector's statistic.
        controls: the statistic for each random direction.
        alternative: "greater", "less" or "two-sided".

    Returns:
        An `EmpiricalP` with the p-value and the random band.

    Raises:
        ValueError: for an unknown alternative, a non-finite real value or no finite controls.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(
            f"Unknown alternative {alternative!r}; valid: ['greater', 'less', 'two-sided']."
        )
    r = float(real)
    if not np.isfinite(r):
        raise ValueError(f"The real statistic must be finite, got {real!r}.")
    c = np.asarray(list(controls), dtype=float)
    c = c[np.isfinite(c)]
    if c.size == 0:
        raise ValueError("empirical_p needs at least one finite control value; got none.")
    if alternative == "greater":
        n_ext = int((c >= r).sum())
    elif alternative == "less":
        n_ext = int((c <= r).sum())
    else:
        n_ext = int((np.abs(c) >= abs(r)).sum())
    return EmpiricalP(real=r, k=int(c.size), n_extreme=n_ext, p_value=(1 + n_ext) / (1 + c.size),
                      band_low=float(c.min()), band_high=float(c.max()), alternative=alternative)


def control_verdict(low: float, high: float, p_random: float, direction: int = 1,
                    alpha: float = 0.05) -> str:
    """One word for a findings row: "supported", "not supported" or "null".

    "supported": the CI excludes 0 in the expected `direction` (+1 or -1) and the effect beats
    the random directions (p_random < alpha). "null": the CI includes 0. "not supported": the CI
    excludes 0 but on the wrong side, or the effect does not beat random directions of equal norm.

    Args:
        low: the effect's lower CI bound.
        high: the effect's upper CI bound.
        p_random: the empirical p against the random directions (NaN: no controls).
        direction: the sign the claim expects (+1 or -1).
        alpha: the level for the random comparison.

    Returns:
        "supported", "not supported" or "null".

    Raises:
        ValueError: if `direction` is not +1 or -1.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}.")
    lo, hi = sorted((low * direction, high * direction))
    if lo <= 0 <= hi:
        return "null"
    if lo > 0 and np.isfinite(p_random) and p_random < alpha:
        return "supported"
    return "not supported"


def saved_records(directory, part: str) -> pd.DataFrame:
    """The records of one part ("kl", "gen" or "base") a sweep directory holds so far.

    Reads `cells.jsonl` line by line whether or not the sweep finished (`load_sweep` needs a
    finished one), keeping the last record per key, so a cut-short sweep can still be reported
    on the random directions it completed (see `complete_controls`). Unreadable lines (a record
    cut by a kill) are skipped.

    Args:
        directory (str | Path): the sweep's `out_dir`.
        part: "kl", "gen" or "base".

    Returns:
        (pandas.DataFrame): One row per saved record of that part, with `is_random`.

    Raises:
        ValueError: for an unknown part or a directory without cells.jsonl.
    """
    import json
    from pathlib import Path

    if part not in ("kl", "gen", "base"):
        raise ValueError(f"Unknown part {part!r}; valid: ['kl', 'gen', 'base'].")
    path = Path(directory) / "cells.jsonl"
    if not path.exists():
        raise ValueError(f"No cells.jsonl in {directory}; pass a sweep's out_dir.")
    recs: dict = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("part") != part:
                continue
            key = (r.get("vector"), r.get("layer"), r.get("strength"), r.get("prompt_idx"))
            recs[key] = r
    df = pd.DataFrame(list(recs.values()))
    if len(df) and "vector" in df:
        df["is_random"] = df["vector"].astype(str).str.startswith(RANDOM_PREFIX)
    return df


def complete_controls(records: pd.DataFrame, n_cells: int) -> pd.DataFrame:
    """Keep the real vector and the random directions that have all `n_cells` records (cells x
    prompts), so every kept control covers the same cells.

    Args:
        records: `saved_records` output.
        n_cells: records a complete vector has.

    Returns:
        (pandas.DataFrame): The rows of complete vectors only.
    """
    sizes = records.groupby("vector").size()
    keep = [v for v, k in sizes.items() if k >= n_cells]
    return records[records["vector"].isin(keep)]
