"""Shared plumbing for the measures: argument checks, steering contexts and span log-probs.

`steering_context` turns the `steering` argument every measure accepts (anything `steer()` takes,
or None) into a context manager. `span_logprobs` scores the content span of each row of a
`TokenBatch` (the continuation when a prompt was given): the log-probability of every span token
given everything before it, unembedding only the positions that predict span tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..backend import runtime
from ..extract import resolve_chat
from ..steer import PositionMode, Steerer, steer


def check_texts(texts, what: str = "prompts") -> list[str]:
    """A non-empty list of strings (a single string becomes a one-item list)."""
    if isinstance(texts, str):
        texts = [texts]
    items = list(texts)
    if not items:
        raise ValueError(f"Need at least one of {what}; got an empty sequence.")
    bad = [t for t in items if not isinstance(t, str)]
    if bad:
        raise ValueError(f"All {what} must be strings; got {type(bad[0]).__name__}.")
    return items


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    return batch_size


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def use_chat(model, chat: bool | None) -> bool:
    """Chat templating for prompts: explicit choice, else on for instruct models with a template."""
    return resolve_chat(model, chat, True)


def check_steering(steering) -> None:
    if isinstance(steering, Steerer):
        raise ValueError(
            "Pass the steering vector(s) themselves (a SteeringVector, Injection or list), not an "
            "active Steerer: this measure needs unsteered passes too, so it attaches steering only "
            "where it is wanted."
        )


@contextlib.contextmanager
def steering_context(
    model, steering, strength: float | None, positions: PositionMode
) -> Iterator[Steerer | None]:
    """`steer(...)` for a steering spec, or a no-op yielding None when `steering` is None."""
    check_steering(steering)
    if steering is None:
        yield None
        return
    with steer(model, steering, strength, positions) as steerer:
        yield steerer


def steering_layers(steerer: Steerer) -> list[int]:
    return sorted({layer for inj in steerer.injections for layer in inj.vector.layers})


def final_resid(model, batch: runtime.TokenBatch, steerer: Steerer | None = None) -> Tensor:
    """Final residual stream (before the final norm) of a batch, steered when `steerer` is given."""
    if steerer is not None:
        steerer.context.bind(batch)
    try:
        return runtime.forward(model, batch, stop_at_layer=runtime.n_layers(model), return_type=None)
    finally:
        if steerer is not None:
            steerer.context.bind(None)


def span_logprobs(
    model, batch: runtime.TokenBatch, steerer: Steerer | None = None
) -> list[Tensor]:
    """Per row, the float64 log-probabilities of the span tokens [span_start, span_end).

    A span token at position t is predicted by the logits at t - 1; a token with no real token
    before it (the first token of a row without BOS) cannot be scored and is skipped.
    """
    resid = final_resid(model, batch, steerer)
    first_real = (batch.attention_mask == 0).sum(-1)  # left padding: index of the first real token
    out = []
    for i in range(batch.tokens.shape[0]):
        start = max(int(batch.span_start[i]), int(first_real[i]) + 1)
        end = int(batch.span_end[i])
        if end <= start:
            out.append(torch.zeros(0, dtype=torch.float64))
            continue
        logits = runtime.unembed(model, resid[i, start - 1 : end - 1]).double()
        targets = batch.tokens[i, start:end]
        lp = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
        out.append(lp.cpu())
    return out


def token_strings(model, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (special tokens kept), for tables and token views."""
    return [runtime.decode(model, [int(i)], skip_special=False) for i in ids]
