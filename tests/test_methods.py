"""Direction-finding methods recover a planted direction; controls match norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.extract import extract, extract_pairs
from steerlens.methods import (
    METHODS,
    build_vector,
    get_method,
    mean_centred,
    mean_centred_pairs,
    mean_centred_vector,
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
    with pytest.raises(ValueError, match=r"valid pair methods are \['mean_diff', 'pca', 'probe', "
                                         r"'mean_centred'\]"):
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


BACKGROUND = ["The weather report said rain.", "Trains leave every hour.", "Paris is in France.",
              "Water boils at one hundred degrees.", "He opened the window."]


def test_mean_centred_against_numpy():
    g = torch.Generator().manual_seed(2)
    target, bg = torch.randn(7, 16, generator=g) + 1.0, torch.randn(11, 16, generator=g)
    want = target.double().numpy().mean(0) - bg.double().numpy().mean(0)
    # float64 means cast to float32: one rounding of O(1) values
    np.testing.assert_allclose(mean_centred(target, bg).numpy(), want, rtol=0, atol=1e-6)
    pos, neg, _ = _planted(n=9)
    # no background: mean(pos) - mean(pos and neg) is half the mean difference
    torch.testing.assert_close(mean_centred_pairs(pos, neg), mean_diff(pos, neg) / 2,
                               rtol=0, atol=1e-6)
    assert METHODS["mean_centred"] is mean_centred_pairs
    with pytest.raises((ValueError, TypeError), match="same d|parameter"):
        mean_centred(target, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="at least one"):
        mean_centred(target, torch.zeros(0, 16))


def test_build_vector_mean_centred_with_background(tiny, sentiment):
    pairs = sentiment.train[:6]
    v = build_vector(tiny, pairs, [1], method="mean_centred", background=BACKGROUND,
                     read_at="mean", show_progress=False)
    assert v.method == "mean_centred" and v.extra["n_background"] == 5 and v.n_pairs == 6
    pos = extract_pairs(tiny, pairs, [1], read_at="mean", show_progress=False).positive[1]
    bg = extract(tiny, BACKGROUND, [1], read_at="mean", show_progress=False)[1]
    want = pos.double().numpy().mean(0) - bg.double().numpy().mean(0)
    # the same texts in other batches: float32 rounding of O(1) activations
    np.testing.assert_allclose(v[1].numpy(), want, rtol=0, atol=1e-5)
    no_bg = build_vector(tiny, pairs, [1], method="mean_centred", read_at="mean",
                         show_progress=False)
    md = build_vector(tiny, pairs, [1], method="mean_diff", read_at="mean", show_progress=False)
    torch.testing.assert_close(no_bg[1], md[1] / 2, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="method='mean_centred' only"):
        build_vector(tiny, pairs, [1], background=BACKGROUND, show_progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        build_vector(tiny, pairs, [1], method="mean_centred", background=[], show_progress=False)


def test_mean_centred_vector_unpaired(tiny):
    texts = ["I love this!", "What a wonderful day.", "Great work, thanks."]
    v = mean_centred_vector(tiny, texts, BACKGROUND, [0, 1], show_progress=False)
    assert v.method == "mean_centred" and v.read_at == "mean" and v.n_pairs == 3
    t = extract(tiny, texts, [0, 1], read_at="mean", show_progress=False)
    bg = extract(tiny, BACKGROUND, [0, 1], read_at="mean", show_progress=False)
    for layer in (0, 1):
        want = t[layer].double().numpy().mean(0) - bg[layer].double().numpy().mean(0)
        np.testing.assert_allclose(v[layer].numpy(), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one row per text"):
        mean_centred_vector(tiny, texts, BACKGROUND, [1], read_at="all")
    with pytest.raises(ValueError, match="non-empty"):
        mean_centred_vector(tiny, texts, [], [1])


def test_any_callable_is_a_method(tiny, sentiment):
    pairs = sentiment.train[:6]

    def median_diff(pos, neg):
        return (pos - neg).median(0).values

    v = build_vector(tiny, pairs, [1], method=median_diff, show_progress=False)
    assert v.method == "custom:median_diff"
    acts = extract_pairs(tiny, pairs, [1], show_progress=False)
    diffs = np.sort(acts.positive[1].numpy() - acts.negative[1].numpy(), axis=0)
    want = diffs[(len(pairs) - 1) // 2]  # torch's median of an even count: the lower middle
    # same texts, other batch composition: float32 rounding of O(1) activations
    np.testing.assert_allclose(v[1].numpy(), want, rtol=0, atol=1e-5)
    lam = build_vector(tiny, pairs, [1], method=lambda p, n: p.mean(0) - 2 * n.mean(0),
                       show_progress=False)
    assert lam.method == "custom:<lambda>"
    np.testing.assert_allclose(lam[1].numpy(), acts.positive[1].double().numpy().mean(0)
                               - 2 * acts.negative[1].double().numpy().mean(0), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(64,\)"):
        build_vector(tiny, pairs, [1], method=lambda p, n: p, show_progress=False)
