"""Statistics checked against scipy (binomtest, bootstrap, t-tests, correlation, permutation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as sp

from steerlens.stats import (
    bootstrap_ci,
    cohens_d,
    compare_to_random,
    correlate,
    mcnemar,
    proportion_ci,
    ratio_ci,
    sem,
    sign_test,
    transitions,
)

# Bad input raises ValueError; under pytest's --jaxtyping-packages hook, beartype rejects ill-typed
# arguments first with a TypeError (jaxtyping.TypeCheckError) that also names the valid options.
BAD_INPUT = (ValueError, TypeError)
# Tolerances: everything here is float64 from the same data scipy gets. The same formula as
# scipy's: approx (rel 1e-6) or tighter; our bootstrap vs scipy's (different resamples): Monte
# Carlo error, a few % of the CI width / SE.
RNG = np.random.default_rng(0)
X = RNG.normal(1.0, 2.0, size=60)


def test_bootstrap_ci_agrees_with_scipy_percentile():
    ours = bootstrap_ci(X, n_boot=20_000, seed=1)
    ref = sp.bootstrap((X,), np.mean, n_resamples=20_000, method="percentile",
                       random_state=np.random.default_rng(2))
    width = ours.high - ours.low
    assert ours.estimate == pytest.approx(X.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.03 * width)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.03 * width)
    assert ours.se == pytest.approx(ref.standard_error, rel=0.03)
    # the bootstrap SE of the mean approaches the analytic SEM (times sqrt((n-1)/n))
    assert ours.se == pytest.approx(sem(X) * math.sqrt(59 / 60), rel=0.05)
    assert ours.n == 60 and ours.level == 0.95


def test_bootstrap_ci_non_vectorised_stat_and_reproducible():
    med = bootstrap_ci(X, stat=lambda a: float(np.median(a)), n_boot=500, seed=3)
    vec = bootstrap_ci(X, stat=np.median, n_boot=500, seed=3)
    assert (med.low, med.high) == pytest.approx((vec.low, vec.high))
    assert bootstrap_ci(X, n_boot=500, seed=3) == bootstrap_ci(X, n_boot=500, seed=3)


def test_bootstrap_ci_edge_cases():
    one = bootstrap_ci([2.5])
    assert one.estimate == 2.5 and math.isnan(one.low) and one.n == 1
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([1.0, float("nan")])
    assert bootstrap_ci([1.0, float("nan"), 3.0], nan_policy="omit", n_boot=100).n == 2
    with pytest.raises(ValueError, match="ci must be"):
        bootstrap_ci(X, ci=95.0)


def test_ratio_ci_agrees_with_scipy_paired_bootstrap():
    rng = np.random.default_rng(4)
    den = rng.gamma(2.0, size=40)
    num = 3.0 * den + rng.normal(0, 0.5, size=40)  # correlated pairs: pairing narrows the CI
    ours = ratio_ci(num, den, n_boot=20_000, seed=1)
    ref = sp.bootstrap((num, den), lambda a, b, axis=-1: a.mean(axis) / b.mean(axis),
                       paired=True, vectorized=True, n_resamples=20_000, method="percentile",
                       random_state=np.random.default_rng(2))
    width = ours.high - ours.low
    assert ours.estimate == pytest.approx(num.mean() / den.mean(), rel=1e-12)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.03 * width)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.03 * width)
    assert ours.se == pytest.approx(ref.standard_error, rel=0.03)
    assert ours.n == 40 and ours.low < ours.estimate < ours.high
    # resampling num and den independently would ignore the pairing and widen the interval
    rs = np.random.default_rng(3)
    unpaired = (num[rs.integers(0, 40, (20_000, 40))].mean(1)
                / den[rs.integers(0, 40, (20_000, 40))].mean(1))
    assert width < 0.5 * np.subtract(*np.quantile(unpaired, [0.975, 0.025]))


def test_ratio_ci_bad_input():
    with pytest.raises(BAD_INPUT, match="paired"):
        ratio_ci([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(BAD_INPUT, match="mean\\(den\\) is 0"):
        ratio_ci([1.0, 2.0], [1.0, -1.0])
    with pytest.raises(BAD_INPUT, match="non-finite"):
        ratio_ci([1.0, float("nan")], [1.0, 2.0])
    one = ratio_ci([2.0], [4.0])
    assert one.estimate == 0.5 and math.isnan(one.low)


def test_sem_matches_scipy():
    assert sem(X) == pytest.approx(sp.sem(X))
    assert math.isnan(sem([1.0]))


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (37, 120)])
def test_proportion_ci_matches_scipy_wilson(k, n):
    ours = proportion_ci(k, n)
    ref = sp.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert ours.estimate == k / n and ours.n == n
    assert proportion_ci(np.int64(k), np.int64(n)) == ours  # numpy counts are fine


@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (3, 9), (7, 7), (2, 15), (30, 48)])
def test_mcnemar_exact_matches_binomtest(b, c):
    before = [True] * b + [False] * c + [True] * 5 + [False] * 4
    after = [False] * b + [True] * c + [True] * 5 + [False] * 4
    res = mcnemar(before, after)
    expected = 1.0 if b + c == 0 else sp.binomtest(c, b + c, 0.5).pvalue
    assert res.p_value == pytest.approx(expected, rel=1e-12)
    assert (res.b, res.c, res.n) == (b, c, b + c + 9)
    chi = mcnemar(before, after, method="chi2")
    if b + c:
        stat = (abs(b - c) - 1) ** 2 / (b + c)
        assert chi.statistic == pytest.approx(stat) and chi.p_value == pytest.approx(sp.chi2.sf(stat, 1))
    assert mcnemar(before, after, method="auto").method == ("exact" if b + c < 25 else "chi2")


def test_sign_test_matches_binomtest():
    x = RNG.normal(0.3, 1.0, size=40)
    y = np.where(np.arange(40) % 7 == 0, x, RNG.normal(0.0, 1.0, size=40))  # some exact ties
    res = sign_test(x, y)
    pos, neg = int((x > y).sum()), int((x < y).sum())
    assert (res.n_pos, res.n_neg, res.n_ties, res.n) == (pos, neg, 40 - pos - neg, 40)
    assert res.p_value == pytest.approx(sp.binomtest(pos, pos + neg, 0.5).pvalue, rel=1e-12)


def test_cohens_d_matches_t_statistics():
    a, b = RNG.normal(0.5, 1.0, 30), RNG.normal(0.0, 1.3, 25)
    t_ind = sp.ttest_ind(a, b, equal_var=True).statistic
    assert cohens_d(a, b) == pytest.approx(t_ind * math.sqrt(1 / 30 + 1 / 25))
    c = a + RNG.normal(0.2, 0.5, 30)
    assert cohens_d(c, a, paired=True) == pytest.approx(sp.ttest_rel(c, a).statistic / math.sqrt(30))
    assert cohens_d(a) == pytest.approx(sp.ttest_1samp(a, 0.0).statistic / math.sqrt(30))
    assert math.isnan(cohens_d([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="equal lengths"):
        cohens_d(a, b, paired=True)


def test_transitions_by_hand():
    t = transitions([1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 1])
    assert t.as_dict() == {"became_correct": 2, "became_wrong": 1, "stayed_correct": 2,
                           "stayed_wrong": 1, "n": 6}
    assert t.net == 1 and t.accuracy_before == 0.5 and t.accuracy_after == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="paired"):
        transitions([True], [True, False])
    with pytest.raises(ValueError, match="booleans"):
        transitions([0.5], [1])


def test_compare_to_random():
    controls = [RNG.normal(0.0, 1.0, 20) for _ in range(19)]
    real = RNG.normal(5.0, 1.0, 20)
    res = compare_to_random(real, controls)
    assert res.beats_all and res.p_value == pytest.approx(1 / 20) and res.percentile == 1.0
    assert res.n_controls == 19 and res.n_real == 20
    low = compare_to_random(real, controls, alternative="less")
    assert not low.beats_all and low.p_value == 1.0
    # a tie with a control counts as "at least as extreme"
    tie = compare_to_random([1.0, 3.0], [[2.0], [0.0], [5.0]])
    assert tie.p_value == pytest.approx(3 / 4) and tie.percentile == pytest.approx(1 / 3)
    two = compare_to_random([-4.0], [[1.0], [-2.0], [3.0]], alternative="two-sided")
    assert two.beats_all and two.p_value == pytest.approx(1 / 4)
    with pytest.raises(BAD_INPUT, match="valid|Expected type"):
        compare_to_random(real, controls, alternative="bigger")


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlate_matches_scipy(method):
    x = RNG.normal(size=25)
    y = 0.5 * x + RNG.normal(size=25)
    res = correlate(x, y, method=method, n_boot=2000, n_perm=4000, seed=0)
    fn = sp.pearsonr if method == "pearson" else sp.spearmanr
    assert res.r == pytest.approx(fn(x, y)[0], abs=1e-12)
    ref = sp.permutation_test((x, y), lambda a, b: fn(a, b)[0], permutation_type="pairings",
                              n_resamples=4000, random_state=1)
    assert res.p_perm == pytest.approx(ref.pvalue, abs=0.01)
    assert res.ci_low < res.r < res.ci_high and res.n == 25 and res.method == method


def test_correlate_permutation_p_is_calibrated_under_the_null():
    rng = np.random.default_rng(5)
    ps = np.array([correlate(rng.normal(size=30), rng.normal(size=30), n_boot=10, n_perm=400,
                             seed=i).p_perm for i in range(60)])
    assert (ps < 0.05).mean() <= 0.12  # nominal 0.05
    assert 0.35 < ps.mean() < 0.65  # uniform p-values average 0.5


def test_correlate_edge_cases():
    x = RNG.normal(size=40)
    const = correlate(x, np.ones(40))
    assert math.isnan(const.r) and math.isnan(const.p_perm)
    with pytest.raises(ValueError, match="at least 3"):
        correlate([1, 2], [1, 2])
    with pytest.raises(BAD_INPUT, match="valid methods|Expected type"):
        correlate(x, x, method="kendall")
