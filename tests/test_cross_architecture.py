"""analyses.cross_architecture: Spearman's rho against scipy, the exact label-permutation p against a
brute-force scipy loop, the cosine matrix and upper-triangle order against explicit loops, the
random-vector band against the known 1/sqrt(d) spread, and a --quick run on the tiny model whose
saved cosines are recomputed from the saved vectors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from analyses import cross_architecture as ca
from steerlens.vectors import SteeringVector


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, size=15).astype(float)  # many ties
        y = x + rng.normal(0, 2, size=15)
        # both average ranks in float64: agree to rounding
        assert ca.spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(ca.spearman(np.ones(5), np.arange(5.0)))


def test_cosine_matrix_and_upper_order():
    rng = np.random.default_rng(1)
    vs = [rng.normal(size=7) for _ in range(4)]
    m = ca.cosine_matrix(vs)
    for i, j in itertools.product(range(4), range(4)):
        want = float(vs[i] @ vs[j] / np.linalg.norm(vs[i]) / np.linalg.norm(vs[j]))
        assert m[i, j] == pytest.approx(want, abs=1e-12)
    assert list(ca.upper(m)) == [m[i, j] for i in range(4) for j in range(i + 1, 4)]


def _brute_p(a: np.ndarray, b: np.ndarray) -> float:
    """Independent: scipy's spearmanr over every joint row/column relabeling of b."""
    k = a.shape[0]
    iu = [(i, j) for i in range(k) for j in range(i + 1, k)]
    xa = [a[i, j] for i, j in iu]
    rho = sps.spearmanr(xa, [b[i, j] for i, j in iu]).statistic
    count = total = 0
    for p in itertools.permutations(range(k)):
        r = sps.spearmanr(xa, [b[p[i], p[j]] for i, j in iu]).statistic
        count += abs(r) >= abs(rho) - 1e-12
        total += 1
    return count / total


@pytest.mark.parametrize("k", [4, 6])
def test_label_permutation_p_matches_a_brute_force_scipy_loop(k):
    rng = np.random.default_rng(k)
    for noise in (0.05, 1.0):
        va = [rng.normal(size=20) for _ in range(k)]
        vb = [v + noise * rng.normal(size=20) for v in va]
        a, b = ca.cosine_matrix(va), ca.cosine_matrix(vb)
        p, n = ca.label_permutation_p(a, b)
        assert n == math.factorial(k)
        assert p == pytest.approx(_brute_p(a, b), abs=1e-12)
    # matched geometry: the true labelling is (nearly) the most extreme one
    va = [rng.normal(size=50) for _ in range(6)]
    a = ca.cosine_matrix(va)
    b = ca.cosine_matrix([v + 0.01 * rng.normal(size=50) for v in va])
    assert ca.label_permutation_p(a, b)[0] < 0.05
    with pytest.raises(ValueError, match="square matrices of the same size"):
        ca.label_permutation_p(a, b[:5, :5])


def test_random_band_matches_the_gaussian_spread():
    d, k = 400, 6
    rng = np.random.default_rng(2)
    vecs = [rng.normal(size=d) * s for s in range(1, k + 1)]
    band = ca.random_bands(vecs, vecs, n=300, seed=0)
    # cosines of independent Gaussian vectors: mean 0, sd 1/sqrt(d); 4500 draws put the empirical
    # 2.5/97.5% quantiles within ~10% of +-1.96/sqrt(d)
    half = 1.96 / math.sqrt(d)
    assert band["cos_a"][0] == pytest.approx(-half, rel=0.15)
    assert band["cos_a"][1] == pytest.approx(half, rel=0.15)
    assert band["abs_cos_a_mean"] == pytest.approx(math.sqrt(2 / math.pi) / math.sqrt(d), rel=0.1)
    # rho between two unrelated random matrices: centred near 0, wide for 15 pairs
    assert band["rho"][0] < -0.3 and band["rho"][1] > 0.3


def test_quick_run_on_tiny(tiny, tmp_path):
    d = tmp_path / "ca"
    out = ca.main(["--model", "tiny-random", "--quick", "--out", str(d), "--fig-dir",
                   str(tmp_path / "fig"), "--no-progress"], models=(tiny, tiny))
    saved = json.loads((d / "cosines.json").read_text())
    labels = saved["labels"]
    assert labels == sorted(labels) and len(labels) == 6
    e = saved["by_depth"][0]
    layer = e["layers"][0]
    vecs = [SteeringVector.load(d / "tiny-random" / f"vector_{n}_raw", tiny)[layer].double().numpy()
            for n in labels]
    want = np.array([[u @ v / np.linalg.norm(u) / np.linalg.norm(v) for v in vecs] for u in vecs])
    # float64 cosines of the same float32 vectors, saved through JSON: rounding only
    np.testing.assert_allclose(np.asarray(e["tiny-random"]), want, atol=1e-12)
    r = out["rho"].iloc[0]
    # the same model twice: identical matrices, rho = 1 and only label-preserving permutations
    # reach it
    assert r["rho"] == pytest.approx(1.0)
    assert r["p_label_perm"] == pytest.approx(_brute_p(want, want), abs=1e-12)
    assert r["rho"] == pytest.approx(sps.spearmanr(ca.upper(want), ca.upper(want)).statistic)
    assert (d / "findings.json").exists() and ca.make_figures(d, tmp_path / "fig2")
