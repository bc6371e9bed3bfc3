"""Direction-finding methods recover a planted direction; controls match norms."""

from __future__ import annotations

import pytest
import torch

from steerlens.methods import (
    build_vector,
    get_method,
    mean_diff,
    outcome,
    outcome_vector,
    pca,
    probe,
    random_like,
)
from steerlens.vectors import SteeringVector


def _planted(n=200, d=32, scale=3.0, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    base = torch.randn(n, d, generator=g) * 2
    pos = base + scale * u + noise * torch.randn(n, d, generator=g)
    neg = base + noise * torch.randn(n, d, generator=g)
    return pos, neg, u


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("fn", [mean_diff, pca, probe])
def test_recovers_planted_direction(fn):
    pos, neg, u = _planted()
    v = fn(pos, neg)
    assert _cos(v, u) > 0.9
    assert float(v @ u) > 0  # signed towards positive
    # norm comparable to the true offset of 3
    assert 1.5 < float(v.norm()) < 4.5


def test_mean_diff_is_exact():
    pos, neg, _ = _planted(n=5)
    # float64 mean (then float32) vs a float32 mean of 5 rows of O(3): float32 rounding, ~1e-7
    torch.testing.assert_close(mean_diff(pos, neg), (pos - neg).mean(0), rtol=1e-6, atol=1e-6)


def test_random_direction_fails_to_recover():
    pos, neg, u = _planted()
    r = random_like(SteeringVector({0: mean_diff(pos, neg)}), seed=3)
    assert abs(_cos(r[0], u)) < 0.5  # the control is not secretly the answer


def test_outcome_direction():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(16, generator=g)
    acts = torch.randn(40, 16, generator=g)
    correct = torch.arange(40) % 2 == 0
    acts[correct] += 2 * u
    v = outcome(acts, correct)
    # difference of float32 means of 20 rows each, summed in another order: ~1e-7
    torch.testing.assert_close(v, acts[correct].mean(0) - acts[~correct].mean(0), rtol=1e-6,
                               atol=1e-6)
    assert _cos(v, u) > 0.9
    with pytest.raises(ValueError, match="both right and wrong"):
        outcome(acts, torch.ones(40, dtype=torch.bool))
    with pytest.raises(ValueError, match="one bool per row"):
        outcome(acts, [True, False])


def test_random_like_matches_norms():
    v = SteeringVector({0: torch.ones(64) * 2, 1: torch.ones(64) * 0.5})
    r = random_like(v, seed=7)
    assert r.method == "random" and r.layers == [0, 1]
    for lay in (0, 1):
        # scaled in float64, stored in float32: norms agree to float32 rounding
        assert r.norms[lay] == pytest.approx(v.norms[lay], rel=1e-5)
    assert r.allclose(random_like(v, seed=7), atol=0)  # same seed: bit-identical
    assert not r.allclose(random_like(v, seed=8))


def test_bad_method_and_shapes(tiny, sentiment):
    with pytest.raises(ValueError, match=r"valid pair methods are \['mean_diff', 'pca', 'probe'\]"):
        get_method("svm")
    # TypeError: under the test suite's jaxtyping hook the shape annotation catches it first
    with pytest.raises((ValueError, TypeError), match="equal shapes|parameter .neg."):
        mean_diff(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        probe(torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="valid pair methods"):
        build_vector(tiny, sentiment.train, [1], method="nope", show_progress=False)


@pytest.mark.parametrize("method", ["mean_diff", "pca", "probe"])
def test_build_vector_all_methods(tiny, sentiment, method):
    v = build_vector(tiny, sentiment.train[:12], [1], method=method, read_at="mean",
                     show_progress=False)
    assert v.method == method and v.n_pairs == 12 and v.read_at == "mean"
    assert v.norms[1] > 0


def test_flipped_pairs_give_the_negated_vector(tiny, sentiment):
    pairs = sentiment.train[:6]
    # every completion ends in the same token, and layer 0 of the tiny model is embeddings only
    with pytest.warns(UserWarning, match=r"At layer\(s\) \[0\] .*coincide"):
        v = build_vector(tiny, pairs, [0, 1], show_progress=False)
    with pytest.warns(UserWarning, match=r"At layer\(s\) \[0\] .*coincide"):
        f = build_vector(tiny, pairs.flipped(), [0, 1], show_progress=False)
    assert f.extra["pairs"] == "sentiment/train/flipped"
    for layer in (0, 1):
        # mean(neg - pos) = -mean(pos - neg); the texts sit in other batch rows, so the float32
        # activations may differ by rounding (~1e-6 relative on O(1) entries)
        torch.testing.assert_close(f[layer], -v[layer], rtol=1e-5, atol=1e-5)


def test_outcome_vector_end_to_end(tiny):
    texts = ["2+2=4", "2+2=5", "3+3=6", "3+3=7"]
    v = outcome_vector(tiny, texts, [True, False, True, False], [0, 1], show_progress=False)
    assert v.method == "outcome" and v.extra["n_right"] == 2 and v.n_pairs == 4
    with pytest.raises(ValueError, match="one row per text"):
        outcome_vector(tiny, texts, [True, False, True, False], [1], read_at="all")
    with pytest.raises(ValueError, match="4 texts but 2 labels"):
        outcome_vector(tiny, texts, [True, False], [1])
