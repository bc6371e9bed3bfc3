"""Sampling diversity and change rate on the tiny model (exact checks) and SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch

from steerlens.generate import generate
from steerlens.measures import (
    change_rate,
    distinct_fraction,
    distinct_ngrams,
    first_divergence,
    sampling_diversity,
)
from steerlens.vectors import SteeringVector


@pytest.fixture(scope="module")
def vec():
    return SteeringVector({0: torch.randn(64, generator=torch.Generator().manual_seed(4))})


def test_distinct_helpers_by_hand():
    # ratios of integer counts: exact but for the division's rounding (approx's default rel 1e-6)
    assert distinct_fraction(["a", "a", "b"]) == pytest.approx(2 / 3)
    assert distinct_fraction(["x"] * 5) == pytest.approx(0.2)
    # bigrams (1,2),(2,3),(1,2),(2,4): 3 distinct of 4
    assert distinct_ngrams([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(0.75)
    assert distinct_ngrams([[1, 1, 1]], 1) == pytest.approx(1 / 3)
    assert math.isnan(distinct_ngrams([[1], []], 2))
    with pytest.raises(ValueError, match="positive int"):
        distinct_ngrams([[1]], 0)


def test_sampling_diversity_reproduces_generate_batches(tiny, vec):
    prompts = ["hi", "yo yo", "abc"]
    res = sampling_diversity(tiny, prompts, vec, 1.0, k=4, max_new_tokens=5, seed=7,
                             batch_size=8, chat=True)
    # batch_size 8 // k 4 = 2 prompts per batch: batch 0 = prompts 0-1 (seed 7), batch 1 = 2 (seed 8)
    g0 = generate(tiny, [p for p in prompts[:2] for _ in range(4)], vec, strength=1.0,
                  max_new_tokens=5, temperature=1.0, seed=7, chat=True)
    g1 = generate(tiny, [prompts[2]] * 4, vec, strength=1.0, max_new_tokens=5, temperature=1.0,
                  seed=8, chat=True)
    assert res.samples == (g0.texts[:4], g0.texts[4:], g1.texts)
    assert res.distinct_fraction == tuple(len(set(s)) / 4 for s in res.samples)
    assert res.distinct_n[2] == pytest.approx(distinct_ngrams(g1.tokens, 2))  # count ratio
    assert res.n == 3 and res.k == 4 and res.steered
    again = sampling_diversity(tiny, prompts, vec, 1.0, k=4, max_new_tokens=5, seed=7, batch_size=8,
                               chat=True)
    assert again == res


def test_sampling_diversity_floor_with_top_k_one(tiny):
    """top_k=1 makes sampling greedy: every sample is the same, so distinct fraction is 1/k."""
    res = sampling_diversity(tiny, ["hello", "x"], k=5, top_k=1, max_new_tokens=6)
    assert res.distinct_fraction == (0.2, 0.2)
    assert not res.steered


def test_sampling_diversity_bad_input(tiny, vec):
    with pytest.raises(ValueError, match="k must be"):
        sampling_diversity(tiny, ["a"], k=1)
    with pytest.raises(ValueError, match="temperature"):
        sampling_diversity(tiny, ["a"], temperature=0.0)


def test_first_divergence_by_hand():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_change_rate_zero_strength_changes_nothing(tiny, vec):
    res = change_rate(tiny, ["hi", "yo yo", "abc"], vec, 0.0, max_new_tokens=6)
    assert res.changed == (False, False, False) and res.rate == 0.0 and res.n == 3
    assert res.baseline == res.steered


def test_change_rate_matches_independent_generations(tiny, vec):
    prompts = ["hi", "yo yo", "abc"]
    base = generate(tiny, prompts, max_new_tokens=6)
    res = change_rate(tiny, prompts, vec, 8.0, max_new_tokens=6, baseline=base)
    steered = generate(tiny, prompts, vec, strength=8.0, max_new_tokens=6)
    assert res.steered == steered.texts and res.baseline == base.texts
    expected = [a != b for a, b in zip(base.tokens, steered.tokens)]
    assert list(res.changed) == expected and any(expected)
    assert res.rate == pytest.approx(sum(expected) / 3) and res.n_changed == sum(expected)
    assert res.first_divergence == tuple(first_divergence(a, b)
                                         for a, b in zip(base.tokens, steered.tokens))


def test_change_rate_rejects_mismatched_baseline(tiny, vec):
    base = generate(tiny, ["hi"], max_new_tokens=4)
    with pytest.raises(ValueError, match="baseline"):
        change_rate(tiny, ["hi"], vec, 1.0, max_new_tokens=6, baseline=base)
    with pytest.raises(ValueError, match="steering vector"):
        change_rate(tiny, ["hi"], None)


@pytest.mark.embedded
def test_smol_sampling_is_diverse(smol):
    hot = sampling_diversity(smol, ["Tell me about your morning."], k=4, temperature=1.0,
                             max_new_tokens=6)
    assert hot.distinct_fraction[0] > 0.25 and len(hot.samples[0]) == 4
