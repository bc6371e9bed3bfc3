"""Sampling diversity: how varied a model's sampled continuations of the same prompt are.

For each prompt, k continuations are sampled at temperature T (one batch of the prompt repeated k
times, so the k samples cost one batched generation). Two numbers per prompt:

- `distinct_fraction`: distinct continuation texts / k, in [1/k, 1]. Steering that collapses
  the output distribution drives it towards 1/k.
- `distinct_n`: distinct n-grams / total n-grams pooled over the k samples ("distinct-n", Li et
  al. 2016), over generated token ids; NaN when the samples hold no n-gram.

Sampling is seeded: the same (seed, batch_size, prompts, settings) reproduce the same samples.
Prompts are batched `batch_size // k` at a time, and batch b uses seed `seed + b`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..generate import generate
from ..steer import PositionMode
from ._common import check_batch_size, check_steering, check_texts, chunks, use_chat


@dataclass(frozen=True)
class DiversityResult:
    """Per prompt: the k samples, the fraction of distinct ones and the distinct-n ratio."""

    prompts: tuple[str, ...]
    samples: tuple[tuple[str, ...], ...]
    distinct_fraction: tuple[float, ...]
    distinct_n: tuple[float, ...]
    k: int
    ngram: int
    temperature: float
    strength: float | None
    steered: bool

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.prompts)

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self.distinct_fraction, dtype=float)


def distinct_fraction(samples: Sequence[str]) -> float:
    """Distinct items / items."""
    if not samples:
        raise ValueError("distinct_fraction needs at least one sample.")
    return len(set(samples)) / len(samples)


def distinct_ngrams(sequences: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams / total n-grams pooled over sequences; NaN if there are none."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def sampling_diversity(
    model,
    prompts: str | Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    k: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    ngram: int = 2,
    positions: PositionMode = "all",
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    chat: bool | None = None,
    batch_size: int = 32,
) -> DiversityResult:
    """Sample k continuations per prompt (optionally steered) and measure how many differ."""
    prompts = check_texts(prompts)
    check_steering(steering)
    check_batch_size(batch_size)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2 (samples per prompt), got {k!r}.")
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 for sampling diversity, got {temperature!r} (at 0 every "
            f"sample is the greedy continuation)."
        )
    chat_on = use_chat(model, chat)
    per_batch = max(1, batch_size // k)
    samples: list[tuple[str, ...]] = []
    tokens: list[tuple[tuple[int, ...], ...]] = []
    for b, sl in enumerate(chunks(len(prompts), per_batch)):
        rows = [p for p in prompts[sl] for _ in range(k)]
        gen = generate(model, rows, steering, strength=strength, positions=positions,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed + b, chat=chat_on)
        for j in range(len(rows) // k):
            samples.append(gen.texts[j * k : (j + 1) * k])
            tokens.append(gen.tokens[j * k : (j + 1) * k])
    return DiversityResult(
        prompts=tuple(prompts),
        samples=tuple(samples),
        distinct_fraction=tuple(distinct_fraction(s) for s in samples),
        distinct_n=tuple(distinct_ngrams(t, ngram) for t in tokens),
        k=k,
        ngram=ngram,
        temperature=float(temperature),
        strength=None if strength is None else float(strength),
        steered=steering is not None,
    )
