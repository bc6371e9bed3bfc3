"""Statistics for steering results: intervals, paired tests, effect sizes and random controls.

Every number steerlens reports should carry its n and an interval, and every effect should be set
against random directions of the same norm. This module holds the pieces:

- `bootstrap_ci`: percentile bootstrap interval (Efron & Tibshirani 1993) for any statistic, with
  the bootstrap standard error; `proportion_ci` is the Wilson score interval for a rate;
  `ratio_ci` the interval of a ratio of means over paired units (e.g. mid / late layer KL).
- `mcnemar` / `sign_test`: paired tests for "did steering change accuracy / scores", using the
  exact two-sided binomial test on the discordant pairs (McNemar's chi-square with continuity
  correction is available for large counts).
- `cohens_d`: standardised mean difference, independent (pooled SD) or paired (d_z = mean
  difference / SD of differences).
- `transitions`: the 2x2 table of correct/wrong before vs after steering.
- `compare_to_random`: where a real vector's effect falls among random-direction controls, with an
  empirical p-value (1 + #controls at least as extreme) / (1 + #controls).
- `correlate`: Pearson or Spearman r with a bootstrap CI and a two-sided permutation p-value.

Randomness is always seeded; results are frozen dataclasses that state their n. Precision: every
statistic runs in numpy float64; torch tensors of any dtype (bf16 included, which numpy lacks)
and device are accepted and converted to float64 first.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _sp

Stat = Callable[..., float]


# ------------------------------------------------------------------------------------ helpers


def _host(values):
    """A torch tensor (any dtype, bf16 included, any device) as a float64 numpy array; anything
    else unchanged. numpy has no bfloat16, and every statistic here runs in float64."""
    if hasattr(values, "detach") and hasattr(values, "is_floating_point"):
        t = values.detach().cpu()
        return (t.double() if t.is_floating_point() else t).numpy()
    return values


def _as_1d(values, name: str = "values", nan_policy: str = "raise") -> np.ndarray:
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}.")
    try:
        arr = np.asarray(_host(values), dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of numbers ({err}).") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        if nan_policy == "omit":
            return arr[~bad]
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (NaN/inf); drop them first or "
            f"pass nan_policy='omit'."
        )
    return arr


def _as_bools(values, name: str) -> np.ndarray:
    arr = np.asarray(_host(values))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional sequence of booleans.")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1), got values {np.unique(arr)[:5]}.")
        arr = arr.astype(bool)
    return arr


def _check_level(ci: float) -> float:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {ci!r}.")
    return float(ci)


def _check_count(value: int | np.integer, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p-value for k successes in n trials at p = 1/2.

    Args:
        k: number of successes.
        n: number of trials (0 gives p = 1).

    Returns:
        The two-sided p-value, capped at 1.
    """
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


# ------------------------------------------------------------------------------ intervals


@dataclass(frozen=True)
class CI:
    """A point estimate with a confidence interval, its standard error and n."""

    estimate: float
    low: float
    high: float
    n: int
    se: float
    level: float = 0.95
    method: str = "percentile bootstrap"

    def __str__(self) -> str:
        return (f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}] "
                f"({self.level:.0%} CI, n={self.n})")


def _apply_stat(stat: Stat, samples: np.ndarray) -> np.ndarray:
    """stat over the rows of samples [n_boot, n], vectorised when `stat` takes `axis`."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(stat(row)) for row in samples])


def bootstrap_ci(
    values,
    stat: Stat = np.mean,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    nan_policy: Literal["raise", "omit"] = "raise",
) -> CI:
    """Percentile bootstrap CI of `stat(values)`; `se` is the SD of the bootstrap statistics.

    Resamples `values` with replacement `n_boot` times (seeded), so the same call always gives the
    same interval. With n < 2 the interval is undefined and low/high/se are NaN.

    Args:
        values (Sequence[float]): one number per unit (prompt, item); one-dimensional.
        stat: the statistic; called as `stat(samples, axis=1)` when it accepts `axis` (vectorised),
            otherwise once per resample.
        n_boot: number of bootstrap resamples.
        ci: confidence level in (0, 1).
        seed: seed of the resampling generator.
        nan_policy: "raise" on non-finite values, or "omit" to drop them first.

    Returns:
        A `CI` with the estimate `stat(values)`, the interval, n and the bootstrap SE.

    Raises:
        ValueError: if `values` is empty, not one-dimensional or holds non-finite values (with
            nan_policy="raise"), or if `n_boot` or `ci` is invalid.

    Example:
        ```python
        from steerlens.stats import bootstrap_ci

        shifts = [0.4, -0.1, 0.7, 0.2, 0.5, 0.3]   # steered - unsteered score, per prompt
        ci = bootstrap_ci(shifts)
        print(ci)              # 0.3333 [0.1333, 0.5333] (95% CI, n=6)
        ci.low > 0             # True: the shift's CI excludes 0
        ```
    """
    arr = _as_1d(values, nan_policy=nan_policy)
    _check_count(n_boot, "n_boot")
    level = _check_level(ci)
    n = arr.size
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    estimate = float(stat(arr))
    if n < 2:
        return CI(estimate, math.nan, math.nan, n, math.nan, level)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # bound memory at ~16 MB of indices per block
    for start in range(0, n_boot, step):
        m = min(step, n_boot - start)
        boots[start : start + m] = _apply_stat(stat, arr[rng.integers(0, n, size=(m, n))])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    return CI(estimate, float(low), float(high), n, float(boots.std(ddof=1)), level)


def ratio_ci(num, den, n_boot: int = 10_000, ci: float = 0.95, seed: int = 0) -> CI:
    """Ratio of means mean(num) / mean(den) over paired units, with a percentile bootstrap CI.

    The pairs (num[i], den[i]) are resampled together (e.g. one prompt's KL in mid layers and in
    late layers), so the interval keeps their correlation; this is `bootstrap_ci` over the pair
    indices with the same seeded resampling.

    Args:
        num (Sequence[float]): numerator values, one per unit; one-dimensional.
        den (Sequence[float]): denominator values for the same units, in the same order.
        n_boot: number of bootstrap resamples.
        ci: confidence level in (0, 1).
        seed: seed of the resampling generator.

    Returns:
        A `CI` with the estimate mean(num) / mean(den), the percentile interval of the resampled
        ratios, n = the number of pairs and the bootstrap SE.

    Raises:
        ValueError: if `num` and `den` differ in length, are empty, not one-dimensional or hold
            non-finite values, if mean(den) is 0, or if `n_boot` or `ci` is invalid.

    Example:
        ```python
        from steerlens.stats import ratio_ci

        mid = [0.9, 1.4, 0.7, 1.1]    # per prompt: mean KL over mid layers
        late = [0.3, 0.5, 0.2, 0.4]   # the same prompts, late layers
        ratio_ci(mid, late).estimate  # 2.93 = mean(mid) / mean(late)
        ```
    """
    a = _as_1d(num, "num")
    b = _as_1d(den, "den")
    if a.size != b.size:
        raise ValueError(f"num and den must be paired (same length), got {a.size} and {b.size}.")
    if a.size and b.mean() == 0:
        raise ValueError("mean(den) is 0, so the ratio of means is undefined.")

    def stat(ix, axis=None):
        i = ix.astype(int)
        if axis is None:
            return float(a[i].mean() / b[i].mean())
        return a[i].mean(axis) / b[i].mean(axis)

    return bootstrap_ci(np.arange(a.size, dtype=float), stat=stat, n_boot=n_boot, ci=ci, seed=seed)


def sem(values, nan_policy: Literal["raise", "omit"] = "raise") -> float:
    """Standard error of the mean, SD (ddof=1) / sqrt(n); NaN for n < 2.

    Args:
        values (Sequence[float]): the sample, one-dimensional.
        nan_policy: "raise" on non-finite values, or "omit" to drop them first.

    Returns:
        The standard error (NaN when fewer than 2 values remain).

    Raises:
        ValueError: if `values` is not one-dimensional or holds non-finite values with
            nan_policy="raise".
    """
    arr = _as_1d(values, nan_policy=nan_policy)
    if arr.size < 2:
        return math.nan
    return float(arr.std(ddof=1) / math.sqrt(arr.size))


def proportion_ci(successes: int | np.integer, n: int | np.integer, ci: float = 0.95) -> CI:
    """Wilson score interval for a proportion (good coverage even at 0/n or n/n).

    Args:
        successes: number of successes, an int in 0..n.
        n: number of trials (>= 1).
        ci: confidence level in (0, 1).

    Returns:
        A `CI` with the observed proportion, the Wilson interval and the binomial SE.

    Raises:
        ValueError: if `n` < 1, `successes` is outside 0..n, or `ci` is outside (0, 1).
    """
    n = _check_count(n, "n")
    if (isinstance(successes, bool) or not isinstance(successes, numbers.Integral)
            or not 0 <= successes <= n):
        raise ValueError(f"successes must be an int in 0..{n}, got {successes!r}.")
    successes = int(successes)
    level = _check_level(ci)
    z = float(_sp.norm.ppf(0.5 + level / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return CI(p, max(0.0, centre - half), min(1.0, centre + half), n,
              math.sqrt(p * (1 - p) / n), level, "Wilson score")


# ------------------------------------------------------------------------------ paired tests


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired binary outcomes.

    `b`: pairs correct before and wrong after; `c`: wrong before and correct after.
    """

    b: int
    c: int
    n: int
    statistic: float
    p_value: float
    method: str

    @property
    def n_discordant(self) -> int:
        """Number of discordant pairs, b + c (the only pairs the test uses)."""
        return self.b + self.c


def mcnemar(
    before, after, method: Literal["exact", "chi2", "auto"] = "exact"
) -> McNemarResult:
    """Paired test of whether accuracy changed between `before` and `after` (booleans per item).

    "exact": two-sided binomial test of c out of b + c at 1/2 (`statistic` = min(b, c)).
    "chi2": (|b - c| - 1)^2 / (b + c) with 1 degree of freedom. "auto": exact when b + c < 25.

    Args:
        before (Sequence[bool]): correct (True) or wrong per item without the intervention.
        after (Sequence[bool]): the same items with the intervention, in the same order.
        method: "exact", "chi2" or "auto".

    Returns:
        A `McNemarResult` with b, c, n, the statistic and the p-value.

    Raises:
        ValueError: if the inputs are not paired boolean sequences or `method` is unknown.
    """
    table = transitions(before, after)
    if method not in ("exact", "chi2", "auto"):
        raise ValueError(f"Unknown method {method!r}; valid methods are ['exact', 'chi2', 'auto'].")
    b, c = table.became_wrong, table.became_correct
    if method == "auto":
        method = "exact" if b + c < 25 else "chi2"
    if method == "exact":
        return McNemarResult(b, c, table.n, float(min(b, c)), binom_two_sided(c, b + c), "exact")
    if b + c == 0:
        return McNemarResult(b, c, table.n, 0.0, 1.0, "chi2")
    chi2 = (abs(b - c) - 1.0) ** 2 / (b + c)
    return McNemarResult(b, c, table.n, chi2, math.erfc(math.sqrt(chi2 / 2.0)), "chi2")


@dataclass(frozen=True)
class SignTestResult:
    """Sign test: how many paired differences are positive vs negative (ties dropped)."""

    n_pos: int
    n_neg: int
    n_ties: int
    p_value: float

    @property
    def n(self) -> int:
        """Number of pairs, ties included."""
        return self.n_pos + self.n_neg + self.n_ties


def sign_test(x, y=None) -> SignTestResult:
    """Exact two-sided sign test of paired differences x - y (or of x itself when y is None).

    Args:
        x (Sequence[float]): values (or the first member of each pair).
        y (Sequence[float] | None): the second member of each pair, or None to test the signs of x.

    Returns:
        A `SignTestResult` with the positive, negative and tied counts and the p-value (ties
        dropped).

    Raises:
        ValueError: if x and y differ in length or hold non-finite values.
    """
    x = _as_1d(x, "x")
    if y is not None:
        y = _as_1d(y, "y")
        if x.shape != y.shape:
            raise ValueError(f"x and y must be paired (same length), got {x.size} and {y.size}.")
        x = x - y
    pos, neg = int((x > 0).sum()), int((x < 0).sum())
    return SignTestResult(pos, neg, int(x.size - pos - neg), binom_two_sided(pos, pos + neg))


def cohens_d(x, y=None, paired: bool = False) -> float:
    """Cohen's d.

    - independent (default): (mean x - mean y) / pooled SD, pooled variance
      ((n1-1) s1^2 + (n2-1) s2^2) / (n1 + n2 - 2);
    - `paired=True`: d_z = mean(x - y) / SD(x - y);
    - `y=None`: one-sample d = mean(x) / SD(x).
    SDs use ddof=1.

    Args:
        x (Sequence[float]): the first group (or the paired / one-sample values).
        y (Sequence[float] | None): the second group, or None for a one-sample d.
        paired: treat x and y as pairs (d_z) instead of independent groups.

    Returns:
        The effect size; NaN when the SD is zero.

    Raises:
        ValueError: if a group has fewer than 2 values or paired inputs differ in length.
    """
    x = _as_1d(x, "x")
    if y is None or paired:
        if y is not None:
            y = _as_1d(y, "y")
            if x.shape != y.shape:
                raise ValueError(f"Paired d needs equal lengths, got {x.size} and {y.size}.")
            x = x - y
        if x.size < 2:
            raise ValueError(f"cohens_d needs at least 2 values, got {x.size}.")
        sd = x.std(ddof=1)
        return float(x.mean() / sd) if sd > 0 else math.nan
    y = _as_1d(y, "y")
    if x.size < 2 or y.size < 2:
        raise ValueError(f"Independent cohens_d needs >= 2 values per group, got {x.size}, {y.size}.")
    pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2)
    return float((x.mean() - y.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


# ------------------------------------------------------------------------------ transitions


@dataclass(frozen=True)
class TransitionTable:
    """Paired correct/wrong outcomes before and after an intervention."""

    became_correct: int
    became_wrong: int
    stayed_correct: int
    stayed_wrong: int

    @property
    def n(self) -> int:
        """Number of paired items."""
        return self.became_correct + self.became_wrong + self.stayed_correct + self.stayed_wrong

    @property
    def net(self) -> int:
        """Items gained minus items lost."""
        return self.became_correct - self.became_wrong

    @property
    def accuracy_before(self) -> float:
        """Fraction correct before the intervention."""
        return (self.stayed_correct + self.became_wrong) / self.n

    @property
    def accuracy_after(self) -> float:
        """Fraction correct after the intervention."""
        return (self.stayed_correct + self.became_correct) / self.n

    def as_dict(self) -> dict[str, int]:
        """The four counts and n as a plain dict (for JSON).

        Returns:
            A dict with became_correct, became_wrong, stayed_correct, stayed_wrong and n.
        """
        return {"became_correct": self.became_correct, "became_wrong": self.became_wrong,
                "stayed_correct": self.stayed_correct, "stayed_wrong": self.stayed_wrong,
                "n": self.n}


def transitions(before, after) -> TransitionTable:
    """Count became-correct / became-wrong / stayed-correct / stayed-wrong over paired items.

    Args:
        before (Sequence[bool]): correct (True) or wrong per item without the intervention.
        after (Sequence[bool]): the same items with the intervention, in the same order.

    Returns:
        The `TransitionTable` of the four counts.

    Raises:
        ValueError: if the inputs are empty, differ in length or are not booleans (or 0/1).
    """
    b, a = _as_bools(before, "before"), _as_bools(after, "after")
    if b.shape != a.shape:
        raise ValueError(f"before and after must be paired (same length), got {b.size} and {a.size}.")
    if b.size == 0:
        raise ValueError("transitions needs at least one item.")
    return TransitionTable(
        became_correct=int((~b & a).sum()),
        became_wrong=int((b & ~a).sum()),
        stayed_correct=int((b & a).sum()),
        stayed_wrong=int((~b & ~a).sum()),
    )


# ------------------------------------------------------------------------------ random controls


@dataclass(frozen=True)
class RandomControlResult:
    """A real vector's effect set against the same effect for random-direction controls."""

    real: float
    controls: tuple[float, ...]
    p_value: float
    percentile: float
    beats_all: bool
    alternative: str
    n_real: int
    n_per_control: tuple[int, ...]

    @property
    def n_controls(self) -> int:
        """Number of random-direction controls."""
        return len(self.controls)


def compare_to_random(
    real,
    random_controls: Sequence,
    stat: Stat = np.mean,
    alternative: Literal["greater", "less", "two-sided"] = "greater",
) -> RandomControlResult:
    """Compare `stat(real)` with `stat(control)` for each random control's values.

    p = (1 + #controls at least as extreme as real) / (1 + #controls), the standard empirical
    p-value that never reaches 0. `percentile` is the share of controls strictly below the real
    effect (on |effect| for "two-sided"; above, for "less"). `beats_all` is True when the real effect
    is more extreme than every control. With k controls the smallest possible p is 1/(k+1), so
    19 controls are needed to reach p = 0.05.

    Args:
        real (Sequence[float]): the real vector's per-unit effects (e.g. one shift per prompt).
        random_controls: one sequence of per-unit effects per random direction.
        stat: reduces each sequence to one number (default: the mean).
        alternative: "greater" (real is larger), "less" or "two-sided" (on |effect|).

    Returns:
        A `RandomControlResult` with both statistics, the empirical p-value and the percentile.

    Raises:
        ValueError: if `alternative` is unknown, `real` or a control is empty, or there are no
            controls.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(
            f"Unknown alternative {alternative!r}; valid: ['greater', 'less', 'two-sided']."
        )
    real_arr = _as_1d(real, "real")
    if real_arr.size == 0:
        raise ValueError("real needs at least one value.")
    controls = list(random_controls)
    if not controls:
        raise ValueError("compare_to_random needs at least one random control.")
    ctrl_arrs = [_as_1d(c, f"random_controls[{i}]") for i, c in enumerate(controls)]
    if any(c.size == 0 for c in ctrl_arrs):
        raise ValueError("Every random control needs at least one value.")
    r = float(stat(real_arr))
    cs = np.array([float(stat(c)) for c in ctrl_arrs])
    if alternative == "greater":
        key_r, key_c = r, cs
    elif alternative == "less":
        key_r, key_c = -r, -cs
    else:
        key_r, key_c = abs(r), np.abs(cs)
    extreme = int((key_c >= key_r).sum())
    return RandomControlResult(
        real=r,
        controls=tuple(cs.tolist()),
        p_value=(1 + extreme) / (1 + cs.size),
        percentile=float((key_c < key_r).mean()),
        beats_all=bool((key_r > key_c).all()),
        alternative=alternative,
        n_real=int(real_arr.size),
        n_per_control=tuple(int(c.size) for c in ctrl_arrs),
    )


# ------------------------------------------------------------------------------ correlation


@dataclass(frozen=True)
class CorrelationResult:
    """Correlation coefficient with a bootstrap CI and a two-sided permutation p-value."""

    r: float
    ci_low: float
    ci_high: float
    p_perm: float
    n: int
    method: str


def _rows_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (x, y broadcast); NaN where a row is constant."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    num = (xc * yc).sum(-1)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def correlate(
    x,
    y,
    method: Literal["pearson", "spearman"] = "pearson",
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> CorrelationResult:
    """Pearson or Spearman correlation of paired x, y with uncertainty.

    CI: percentile bootstrap over resampled pairs (Spearman re-ranks each resample; resamples
    where one side is constant are dropped). p: two-sided permutation test,
    (1 + #|r_perm| >= |r|) / (1 + n_perm), permuting y. NaN r (constant input) gives NaN CI/p.

    Args:
        x (Sequence[float]): the first variable, one value per unit (e.g. per layer).
        y (Sequence[float]): the second variable, paired with x.
        method: "pearson" or "spearman".
        n_boot: number of bootstrap resamples for the CI.
        n_perm: number of permutations for the p-value.
        seed: seed for resampling and permutations.
        ci: confidence level in (0, 1).

    Returns:
        A `CorrelationResult` with r, its CI, the permutation p-value, n and the method.

    Raises:
        ValueError: if `method` is unknown, x and y differ in length, there are fewer than 3
            pairs, or a count or level is invalid.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"Unknown method {method!r}; valid methods are ['pearson', 'spearman'].")
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must be paired (same length), got {x.size} and {y.size}.")
    n = x.size
    if n < 3:
        raise ValueError(f"correlate needs at least 3 pairs, got {n}.")
    _check_count(n_boot, "n_boot")
    _check_count(n_perm, "n_perm")
    level = _check_level(ci)

    def rank(a: np.ndarray) -> np.ndarray:
        return _sp.rankdata(a, axis=-1) if method == "spearman" else a

    r = float(_rows_pearson(rank(x), rank(y)))
    if not math.isfinite(r):
        return CorrelationResult(math.nan, math.nan, math.nan, math.nan, n, method)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = _rows_pearson(rank(x[idx]), rank(y[idx]))
    boots = boots[np.isfinite(boots)]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha]) if boots.size else (math.nan, math.nan)
    rx, ry = rank(x), rank(y)
    perms = np.argsort(rng.random((n_perm, n)), axis=1)
    r_perm = _rows_pearson(rx[None, :], ry[perms])
    extreme = int((np.abs(r_perm) >= abs(r) - 1e-12).sum())
    return CorrelationResult(r, float(low), float(high), (1 + extreme) / (1 + n_perm), n, method)
