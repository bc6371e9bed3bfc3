"""Change rate: how often steering changes what the model says at all.

For each prompt the greedy (temperature 0) continuation is generated without and with steering;
the item "changed" if the token sequences differ. The rate is the fraction of changed items, with
n the number of prompts. A vector that changes nothing cannot steer anything, and one that
changes everything at a small strength is probably breaking the model, so the rate is a cheap
first screen before behaviour scoring. The first position at which the two continuations differ
is kept too: late divergence means the steering acts weakly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..generate import Generation, generate
from ..steer import PositionMode
from ._common import check_steering, check_texts, use_chat


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
        return len(self.changed)

    @property
    def rate(self) -> float:
        return float(np.mean(self.changed))

    @property
    def n_changed(self) -> int:
        return int(sum(self.changed))


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (length difference counts); None if identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def change_rate(
    model,
    prompts: str | Sequence[str],
    steering,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    max_new_tokens: int = 24,
    chat: bool | None = None,
    baseline: Generation | None = None,
) -> ChangeResult:
    """Greedy steered vs unsteered continuations; `baseline` reuses an unsteered Generation."""
    prompts = check_texts(prompts)
    check_steering(steering)
    if steering is None:
        raise ValueError("change_rate needs a steering vector (or Injections) to compare against.")
    chat_on = use_chat(model, chat)
    if baseline is None:
        baseline = generate(model, prompts, max_new_tokens=max_new_tokens, chat=chat_on)
    else:
        s = baseline.settings
        if (baseline.steered or list(baseline.prompts) != prompts or s.get("temperature") != 0.0
                or s.get("max_new_tokens") != max_new_tokens or s.get("chat") != chat_on):
            raise ValueError(
                "baseline must be an unsteered greedy Generation of the same prompts with the same "
                f"max_new_tokens ({max_new_tokens}) and chat ({chat_on}); got settings {dict(s)}, "
                f"steered={baseline.steered}."
            )
    steered = generate(model, prompts, steering, strength=strength, positions=positions,
                       max_new_tokens=max_new_tokens, chat=chat_on)
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
