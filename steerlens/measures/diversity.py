"""Sampling diversity: how varied a model's sampled continuations of the same prompt are.

For each prompt, k continuations are sampled at temperature T (one batch of the prompt repeated k
times, so the k samples cost one batched generation). Two numbers per prompt:

- `distinct_fraction`: distinct continuation texts / k, in [1/k, 1]. Steering that collapses
  the output distribution drives it towards 1/k.
- `distinct_n`: distinct n-grams / total n-grams pooled over the k samples ("distinct-n", Li et
  al. 2016), over generated token ids; NaN when the samples hold no n-gram.

Sampling is seeded: the same (seed, batch_size, prompts, settings) reproduce the same samples.
Prompts are batched `batch_size // k` at a time, and batch b uses seed `seed + b`.
Precision: sampling draws from a float64 softmax of the logits (`generate`), whatever the
model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Model
from ..config import GenerationConfig, resolve_generation
from ..generate import generate
from ..steer import PositionMode
from ._common import check_batch_size, check_steering, check_texts, chunks, use_chat

DIVERSITY_DEFAULT = GenerationConfig(max_new_tokens=24, temperature=1.0)
"""Default sampling settings of `sampling_diversity`."""


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
        """`distinct_fraction` per prompt as an array (the value figures and CIs use)."""
        return np.asarray(self.distinct_fraction, dtype=float)


def distinct_fraction(samples: Sequence[str]) -> float:
    """Distinct items / items.

    Args:
        samples: the sampled texts of one prompt.

    Returns:
        The fraction of distinct samples, in [1/k, 1].

    Raises:
        ValueError: if there are no samples.
    """
    if not samples:
        raise ValueError("distinct_fraction needs at least one sample.")
    return len(set(samples)) / len(samples)


def distinct_ngrams(sequences: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams / total n-grams pooled over sequences; NaN if there are none.

    Args:
        sequences: token id sequences (e.g. the k samples of one prompt).
        n: the n-gram length.

    Returns:
        The distinct-n ratio, or NaN when no sequence is n tokens long.

    Raises:
        ValueError: if n is not a positive int.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def sampling_diversity(
    model: Model,
    prompts: str | Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    k: int = 8,
    ngram: int = 2,
    positions: PositionMode = "all",
    chat: bool | None = None,
    config: GenerationConfig | None = None,
    batch_size: int = 32,
    **settings: Any,
) -> DiversityResult:
    """Sample k continuations per prompt (optionally steered) and measure how many differ.

    Args:
        model: the model.
        prompts: one prompt or a list.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts, or None for the unsteered model.
        strength: strength for a vector given without one.
        k: samples per prompt (>= 2).
        ngram: n of the distinct-n measure (over token ids).
        positions: where the vectors are written.
        chat: chat-template the prompts; None = auto.
        config: sampling settings (default: temperature 1.0, 24 new tokens); must sample.
        batch_size: most sampled rows per batch.
        **settings: `GenerationConfig` field overrides (e.g. `temperature=0.3`).

    Returns:
        A `DiversityResult`: distinct fraction and distinct-n per prompt.

    Raises:
        ValueError: for k < 2, greedy settings (temperature 0), or invalid arguments.
    """
    config = resolve_generation(config, settings, DIVERSITY_DEFAULT)
    prompts = check_texts(prompts)
    check_steering(steering)
    check_batch_size(batch_size)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2 (samples per prompt), got {k!r}.")
    if config.greedy:
        raise ValueError(
            "temperature must be > 0 for sampling diversity, got 0 (at 0 every sample is the "
            "greedy continuation)."
        )
    chat_on = use_chat(model, chat)
    per_batch = max(1, batch_size // k)
    samples: list[tuple[str, ...]] = []
    tokens: list[tuple[tuple[int, ...], ...]] = []
    for b, sl in enumerate(chunks(len(prompts), per_batch)):
        rows = [p for p in prompts[sl] for _ in range(k)]
        gen = generate(model, rows, steering, strength, positions=positions, chat=chat_on,
                       config=config.replace(seed=config.seed + b))
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
        temperature=config.temperature,
        strength=None if strength is None else float(strength),
        steered=steering is not None,
    )
