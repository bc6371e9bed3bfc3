"""Change rate: how often steering changes what the model says at all.

For each prompt the greedy (temperature 0) continuation is generated without and with steering;
the item "changed" if the token sequences differ. The rate is the fraction of changed items, with
n the number of prompts. A vector that changes nothing cannot steer anything, and one that
changes everything at a small strength is probably breaking the model, so the rate is a cheap
first screen before behaviour scoring. The first position at which the two continuations differ
is kept too: late divergence means the steering acts weakly.
Precision: greedy choices are argmaxes of the model's own logits (in its dtype); in bf16 near
ties can flip, which docs/topics/precision.md quantifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Model
from ..config import GenerationConfig, resolve_generation
from ..generate import Generation, generate
from ..steer import PositionMode
from ._common import check_steering, check_texts, use_chat

CHANGE_DEFAULT = GenerationConfig(max_new_tokens=24)
"""Default (greedy) settings of `change_rate`."""


@dataclass(frozen=True)
class ChangeResult:
    """Per prompt: baseline and steered greedy texts, whether they differ and where."""

    prompts: tuple[str, ...]
    baseline: tuple[str, ...]
    steered: tuple[str, ...]
    changed: tuple[bool, ...]
    first_divergence: tuple[int | None, ...]
    strength: float | None
    max_new_tokens: int

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.changed)

    @property
    def rate(self) -> float:
        """Fraction of prompts whose greedy continuation changed."""
        return float(np.mean(self.changed))

    @property
    def n_changed(self) -> int:
        """Number of prompts whose greedy continuation changed."""
        return int(sum(self.changed))


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (length difference counts); None if identical.

    Args:
        a: one token sequence.
        b: the other.

    Returns:
        The first index where they differ (the shorter length if one is a prefix of the other), or
        None when they are identical.
    """
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def change_rate(
    model: Model,
    prompts: str | Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    chat: bool | None = None,
    config: GenerationConfig | None = None,
    baseline: Generation | None = None,
    **settings: Any,
) -> ChangeResult:
    """How often greedy output changes under steering, and where it first diverges.

    Args:
        model: the model.
        prompts: one prompt or a list.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts (required).
        strength: strength for a vector given without one.
        positions: where the vectors are written.
        chat: chat-template the prompts; None = auto.
        config: greedy decoding settings (default: 24 new tokens).
        baseline: an unsteered greedy `Generation` of the same prompts and settings to reuse.
        **settings: `GenerationConfig` field overrides (e.g. `max_new_tokens=16`).

    Returns:
        A `ChangeResult` with both texts, whether each changed and the first divergent token.

    Raises:
        ValueError: without steering, for sampling settings, or a baseline that does not match.
    """
    config = resolve_generation(config, settings, CHANGE_DEFAULT)
    prompts = check_texts(prompts)
    check_steering(steering)
    if steering is None:
        raise ValueError("change_rate needs a steering vector (or Injections) to compare against.")
    if not config.greedy:
        raise ValueError("change_rate compares greedy continuations; use temperature=0.")
    chat_on = use_chat(model, chat)
    max_new_tokens = config.max_new_tokens
    if baseline is None:
        baseline = generate(model, prompts, chat=chat_on, config=config)
    else:
        s = baseline.settings
        if (baseline.steered or list(baseline.prompts) != prompts or s.get("temperature") != 0.0
                or s.get("max_new_tokens") != max_new_tokens or s.get("chat") != chat_on):
            raise ValueError(
                "baseline must be an unsteered greedy Generation of the same prompts with the same "
                f"max_new_tokens ({max_new_tokens}) and chat ({chat_on}); got settings {dict(s)}, "
                f"steered={baseline.steered}."
            )
    steered = generate(model, prompts, steering, strength, positions=positions, chat=chat_on,
                       config=config)
    div = tuple(first_divergence(a, b) for a, b in zip(baseline.tokens, steered.tokens))
    return ChangeResult(
        prompts=tuple(prompts),
        baseline=baseline.texts,
        steered=steered.texts,
        changed=tuple(d is not None for d in div),
        first_divergence=div,
        strength=None if strength is None else float(strength),
        max_new_tokens=max_new_tokens,
    )
