"""Perplexity: how plausible text is to a model, the usual check that steering keeps coherence.

Perplexity is exp of the mean negative log-likelihood (natural log) per scored token. For a
steered continuation it is computed under the *unsteered* model given the prompt, so it asks
"would the original model find this a plausible answer?" rather than letting the steered model
grade itself. `continuation_perplexity` re-tokenizes texts exactly as `runtime.encode` does
(prompt ids + continuation ids, prompt masked out); `generation_perplexity` scores the exact token
ids a `Generation` produced. `text_perplexity` scores plain (e.g. held-out) text after BOS, and may
be steered, to measure how much a vector degrades language modelling. Only positions that predict
scored tokens are unembedded.
Precision: log-probabilities come from a float64 log-softmax of the (upcast) logits and the mean
NLL is a float64 sum, whatever the model's dtype (docs/topics/precision.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..backend import Model, runtime
from ..generate import Generation
from ..steer import PositionMode
from ._common import (
    check_batch_size,
    check_texts,
    chunks,
    span_logprobs,
    steering_context,
    use_chat,
)


@dataclass(frozen=True)
class PerplexityResult:
    """Per-item perplexity, mean NLL (nats/token) and token count; NaN where nothing was scored."""

    perplexity: tuple[float, ...]
    nll: tuple[float, ...]
    n_tokens: tuple[int, ...]
    steered: bool

    @property
    def n(self) -> int:
        """Items with at least one scored token."""
        return int(sum(1 for t in self.n_tokens if t > 0))

    @property
    def values(self) -> np.ndarray:
        """Perplexity per item as an array (NaN where nothing was scored)."""
        return np.asarray(self.perplexity, dtype=float)

    @property
    def pooled_perplexity(self) -> float:
        """exp of the token-weighted mean NLL over all items (the corpus perplexity)."""
        total = sum(self.n_tokens)
        if total == 0:
            return float("nan")
        nll = sum(n * x for n, x in zip(self.n_tokens, self.nll) if n > 0)
        return math.exp(nll / total)


def _result(logprobs: list[torch.Tensor], steered: bool) -> PerplexityResult:
    nll = [float(-lp.mean()) if lp.numel() else float("nan") for lp in logprobs]
    return PerplexityResult(
        perplexity=tuple(math.exp(x) if math.isfinite(x) else float("nan") for x in nll),
        nll=tuple(nll),
        n_tokens=tuple(int(lp.numel()) for lp in logprobs),
        steered=steered,
    )


def continuation_logprobs(
    model: Model,
    prompts: Sequence[str],
    continuations: Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    chat: bool | None = None,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Per item, the log-probabilities (float64, nats) of each continuation token given its prompt.

    Prompt and continuation are tokenized exactly as `runtime.encode` does; empty continuations
    give an empty tensor.

    Args:
        model: the model.
        prompts: one prompt per continuation.
        continuations: the texts to score.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts, or None for the unsteered model.
        strength: strength for a vector given without one.
        positions: where the vectors are written.
        chat: chat-template the prompts; None = auto.
        batch_size: most items per forward.

    Returns:
        One float64 tensor of token log-probabilities per item.

    Raises:
        ValueError: if prompts and continuations differ in number, or for invalid arguments.
    """
    prompts = check_texts(prompts)
    continuations = check_texts(continuations, "continuations")
    if len(prompts) != len(continuations):
        raise ValueError(f"Got {len(prompts)} prompts but {len(continuations)} continuations.")
    check_batch_size(batch_size)
    chat_on = use_chat(model, chat)
    out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * len(prompts)
    keep = [i for i, c in enumerate(continuations) if c]
    with steering_context(model, steering, strength, positions) as steerer:
        for sl in chunks(len(keep), batch_size):
            idx = keep[sl]
            batch = runtime.encode(model, [continuations[i] for i in idx],
                                   [prompts[i] for i in idx], chat=chat_on)
            for i, lp in zip(idx, span_logprobs(model, batch, steerer)):
                out[i] = lp
    return out


def continuation_perplexity(
    model: Model,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    chat: bool | None = None,
    batch_size: int = 16,
) -> PerplexityResult:
    """Perplexity of each continuation under the unsteered model given its prompt.

    Args:
        model: the model.
        prompts: one prompt per continuation.
        continuations: the texts to score (e.g. steered continuations).
        chat: chat-template the prompts; None = auto.
        batch_size: most items per forward.

    Returns:
        A `PerplexityResult`, one value per continuation.
    """
    lps = continuation_logprobs(model, prompts, continuations, chat=chat, batch_size=batch_size)
    return _result(lps, steered=False)


def generation_perplexity(model: Model, generation: Generation, *,
                          batch_size: int = 16) -> PerplexityResult:
    """Perplexity of a Generation's exact continuation tokens under the unsteered model.

    Args:
        model: the model.
        generation: the output of `generate` (steered or not); its chat setting is reused.
        batch_size: most items per forward.

    Returns:
        A `PerplexityResult`, one value per prompt.

    Raises:
        ValueError: if `generation` is not a `Generation`, or for a bad batch size.
    """
    if not isinstance(generation, Generation):
        raise ValueError(f"generation must be a Generation, got {type(generation).__name__}.")
    check_batch_size(batch_size)
    chat_on = bool(generation.settings.get("chat", False))
    out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * len(generation)
    keep = [i for i, t in enumerate(generation.tokens) if t]
    for sl in chunks(len(keep), batch_size):
        idx = keep[sl]
        rows = []
        for i in idx:
            head = runtime.prompt_ids(model, generation.prompts[i], chat_on)
            rows.append((head + list(generation.tokens[i]), len(head)))
        batch = runtime.batch_from_ids(model, rows)
        for i, lp in zip(idx, span_logprobs(model, batch)):
            out[i] = lp
    return _result(out, steered=False)


def text_perplexity(
    model: Model,
    texts: str | Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    batch_size: int = 16,
) -> PerplexityResult:
    """Perplexity of plain texts (every token after BOS), optionally under steering.

    Args:
        model: the model.
        texts: one text or a list.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts, or None for the unsteered model.
        strength: strength for a vector given without one.
        positions: where the vectors are written.
        batch_size: most texts per forward.

    Returns:
        A `PerplexityResult`, one value per text.
    """
    texts = check_texts(texts, "texts")
    check_batch_size(batch_size)
    out: list[torch.Tensor] = []
    with steering_context(model, steering, strength, positions) as steerer:
        for sl in chunks(len(texts), batch_size):
            batch = runtime.encode(model, texts[sl])
            out.extend(span_logprobs(model, batch, steerer))
    return _result(out, steered=steering is not None)
