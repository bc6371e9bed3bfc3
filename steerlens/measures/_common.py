"""Shared plumbing for the measures: argument checks, steering contexts and span log-probs.

`check_texts`/`check_batch_size` (from `steerlens.checks`) are re-exported for the measures.
`steering_context` turns the `steering` argument every measure accepts (anything `steer()` takes,
or None) into a context manager. `span_logprobs` scores the content span of each row of a
`TokenBatch` (the continuation when a prompt was given): the log-probability of every span token
given everything before it, unembedding only the positions that predict span tokens.
Precision: `span_logprobs` upcasts the logits to float64 before the log-softmax, whatever the
model's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..backend import Model, runtime
from ..checks import check_batch_size, check_finite_tensor, check_texts
from ..extract import resolve_chat
from ..steer import PositionMode, Steerer, steer, steered_forward


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def use_chat(model: Model, chat: bool | None) -> bool:
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
    model: Model, steering, strength: float | None, positions: PositionMode
) -> Iterator[Steerer | None]:
    """`steer(...)` for a steering spec, or a no-op yielding None when `steering` is None."""
    check_steering(steering)
    if steering is None:
        yield None
        return
    with steer(model, steering, strength, positions) as steerer:
        yield steerer


def steering_layers(steerer: Steerer) -> list[int]:
    return steerer.layers


def final_resid(model: Model, batch: runtime.TokenBatch, steerer: Steerer | None = None) -> Tensor:
    """Final residual stream (before the final norm), steered when `steerer` is given."""
    return steered_forward(model, batch, steerer, stop_at_layer=runtime.n_layers(model),
                           return_type=None)


def span_logprobs(
    model: Model, batch: runtime.TokenBatch, steerer: Steerer | None = None
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
        check_finite_tensor(logits, f"logits of row {i}")
        targets = batch.tokens[i, start:end]
        lp = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
        out.append(lp.cpu())
    return out


def token_strings(model: Model, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (special tokens kept), for tables and token views."""
    return [runtime.decode(model, [int(i)], skip_special=False) for i in ids]


__all__ = ["check_batch_size", "check_texts", "chunks", "check_steering", "final_resid",
           "span_logprobs", "steering_context", "steering_layers", "token_strings", "use_chat"]
