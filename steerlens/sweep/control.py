"""The built-in random-direction control: is the real vector's effect more than "any push"?

Adding any vector of a given norm perturbs a model, so an effect only means something next to the
same effect for random directions of the same norm. With `n_random=k`, each real vector gets k
Gaussian random directions matched to its per-layer norms (`methods.random_like`, seeds
random_seed .. random_seed + k - 1). They run through exactly the same grid and appear in the
table as vector "random:<seed>" (or "random:<seed>@<name>" when several real vectors are swept),
with `control_for` naming the real vector. `compare_random` then sets the real vector's per-prompt
effect at each (layer, strength) against the controls' (`stats.compare_to_random`) and reports the
random band: the lowest and highest control mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
