"""Steered (and unsteered) text generation with an exact KV cache.

Prompts are left-padded into one batch. With the KV cache, the prompt runs once and each step feeds
one token; without it, the whole sequence is re-run every step. Steering hooks see absolute
positions either way (see `steer.py`), so greedy decoding gives the same tokens with and without
the cache, including for position-specific and scheduled steering. Decoding settings are one
`GenerationConfig` (or its fields as keyword overrides). Sampling uses a seeded generator, so a
(seed, settings) pair reproduces its samples. `generate_stream` runs the same decoding loop and
yields after every step (for live displays); closing it early removes its hooks. Decoding uses
the backend's fast cache (preallocated, rotated once) and unembeds only the last position; a
steered prefill reuses the unsteered prompt pass below the steered layer, shared by identical
prompt rows and across calls (see `backend.fast`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .backend import Model, runtime, streams
from .checks import check_finite_tensor, check_texts
from .config import GenerationConfig, resolve_generation
from .extract import resolve_chat
from .steer import PositionMode, Steerer, steer, steered_forward


@dataclass(frozen=True)
class Generation:
    """Continuations of a batch of prompts (text and token ids, prompt excluded)."""

    prompts: tuple[str, ...]
    texts: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    steered: bool
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


def _sample(logits: Tensor, config: GenerationConfig, gen: torch.Generator | None) -> Tensor:
    if config.greedy:
        return logits.argmax(-1)
    top_k, top_p = config.top_k, config.top_p
    logits = logits.double() / config.temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, idx = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1).float()
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def _prepare(model: Model, prompts, config: GenerationConfig, chat: bool | None, steering,
             strength: float | None) -> tuple[list[str], bool, runtime.TokenBatch]:
    """Checked arguments, the chat decision and the encoded batch (fits the context or raises)."""
    if steering is None and strength is not None:
        raise ValueError("strength was given but steering is None; pass the vector to steer with.")
    prompts = check_texts(prompts, "prompts")
    use_chat = resolve_chat(model, chat, True)
    batch = runtime.encode_prompts(model, prompts, chat=use_chat)
    ctx = runtime.n_ctx(model)
    if batch.tokens.shape[1] + config.max_new_tokens > ctx:
        raise ValueError(
            f"Prompt ({batch.tokens.shape[1]} tokens) + max_new_tokens ({config.max_new_tokens}) "
            f"exceeds the model's context length {ctx}."
        )
    return prompts, use_chat, batch


def _steerer(stack: contextlib.ExitStack, model: Model, steering, strength: float | None,
             positions: PositionMode) -> Steerer | None:
    if steering is None or isinstance(steering, Steerer):
        return steering
    return stack.enter_context(steer(model, steering, strength, positions))


def _warn_foreign_hooks(model: Model) -> None:
    """Warn when an unsteered generate() would still run through hooks someone else attached."""
    streams.close_abandoned(model)
    n = runtime.attached_hook_count(model)
    if n:
        warnings.warn(
            f"generate() was called without steering, but {n} hook(s) are attached to the model "
            "(an enclosing steer() block, or hooks added outside steerlens), so the output is "
            "not the unsteered model's. Pass the active Steerer as `steering` (which also binds "
            "its position modes), or generate outside the block.", RuntimeWarning, stacklevel=3)


def generate(
    model: Model,
    prompts: str | Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    chat: bool | None = None,
    config: GenerationConfig | None = None,
    **settings: Any,
) -> Generation:
    """Generate continuations, optionally steered, batched and KV-cached.

    Args:
        model: the model.
        prompts: one prompt or a list (left-padded into one batch).
        steering (SteeringVector | SteeringVectorSet | Injection | Steerer | list | None): anything
            `steer()` accepts (a vector, Injections, a list, a named set), an
            active `Steerer` from an enclosing `with steer(...)` block, or None.
        strength: strength for a vector given without one.
        positions: where the vectors are written ("all", "prompt", "generated", "first", "last").
        chat: chat-template the prompts; None = auto (on for instruct models with a template).
        config: decoding settings (default `GenerationConfig()`).
        **settings: `GenerationConfig` field overrides, e.g. `max_new_tokens=30, seed=1`.

    Returns:
        A `Generation` with the continuations (prompt excluded) and the settings used.

    Raises:
        ValueError: for empty or non-string prompts, invalid settings, a prompt that does not fit
            the context with `max_new_tokens`, or invalid steering.
        NonFiniteError: when the logits become NaN or infinite (e.g. a strength too large for the
            model's dtype) instead of returning garbage tokens.

    Example:
        >>> gen = sl.generate(model, ["Tell me about your weekend."], vec.layer(10), 4.0,
        ...                   max_new_tokens=30)  # doctest: +SKIP
        >>> gen.texts[0]  # doctest: +SKIP
    """
    config = resolve_generation(config, settings)
    prompts, use_chat, batch = _prepare(model, prompts, config, chat, steering, strength)
    if steering is None:
        _warn_foreign_hooks(model)
    with contextlib.ExitStack() as stack:
        steerer = _steerer(stack, model, steering, strength, positions)
        tokens = _decode_loop(model, batch, steerer, config)
    texts = tuple(runtime.decode(model, t) for t in tokens)
    return Generation(tuple(prompts), texts, tuple(tuple(t) for t in tokens),
                      steerer is not None, {**config.to_dict(), "chat": use_chat})


def _decode_steps(model: Model, batch: runtime.TokenBatch, steerer: Steerer | None,
                  config: GenerationConfig) -> Iterator[tuple[Tensor, Tensor]]:
    """The decoding loop as a generator: per step, (next token per row, rows active at this step).

    Stops when every row has emitted a stop token (with `stop_at_eos`) or after `max_new_tokens`
    steps. Each forward binds the steerer through `steered_forward`, so nothing stays bound.
    """
    n = batch.tokens.shape[0]
    dev = batch.tokens.device
    gen = None if config.greedy else torch.Generator().manual_seed(config.seed)
    stop_ids = torch.tensor(sorted(runtime.eos_ids(model)), device=dev)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    width = batch.tokens.shape[1] + config.max_new_tokens
    cache = runtime.new_kv_cache(model, n, width) if config.use_kv_cache else None
    tokens, mask = batch.tokens, batch.attention_mask
    feed = batch
    shared = (None if steerer is None
              else runtime.shared_prefix_layer(model, steerer.hook_names, cache))
    for step in range(config.max_new_tokens):
        offset = 0 if cache is None or step == 0 else tokens.shape[1] - 1
        if step == 0 and shared is not None:  # unsteered prompt pass below the steering, shared
            with steerer.bound(batch, 0):
                logits = runtime.prefill_shared(model, batch, cache, shared)[:, -1]
        else:
            logits = steered_forward(model, batch, steerer, feed=feed, offset=offset,
                                     kv_cache=cache, last_only=True)[:, -1]
        check_finite_tensor(logits, f"next-token logits at decoding step {step}")
        nxt = _sample(logits, config, gen)
        yield nxt, ~done
        if config.stop_at_eos and len(stop_ids):
            done = done | torch.isin(nxt, stop_ids)
        if bool(done.all()):
            break
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
        if cache is None:
            feed = runtime.TokenBatch(tokens, mask, batch.span_start, batch.span_end)
        else:
            feed = runtime.TokenBatch(nxt[:, None], torch.ones_like(nxt)[:, None],
                                      batch.span_start, batch.span_end)


def _decode_loop(model: Model, batch: runtime.TokenBatch, steerer: Steerer | None,
                 config: GenerationConfig) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(batch.tokens.shape[0])]
    for nxt, active in _decode_steps(model, batch, steerer, config):
        for i in range(len(out)):
            if active[i]:
                out[i].append(int(nxt[i]))
    stop = set(runtime.eos_ids(model))
    return [[t for t in row if not (config.stop_at_eos and t in stop)] for row in out]


@dataclass(frozen=True)
class StreamStep:
    """One decoding step of `generate_stream`, for every row of the batch.

    `new_ids[i]` is the token row i produced at this step (None once the row has finished);
    `texts[i]` is row i's whole continuation so far (stop tokens excluded) and `deltas[i]` what
    this step added to it (text is held back while it ends in an incomplete UTF-8 sequence);
    `finished[i]` says whether row i has stopped (stop token emitted, or the last step).
    """

    step: int
    new_ids: tuple[int | None, ...]
    texts: tuple[str, ...]
    deltas: tuple[str, ...]
    finished: tuple[bool, ...]
    token_ids: tuple[tuple[int, ...], ...]


class TokenStream(Iterator[StreamStep]):
    """The iterator `generate_stream` returns: decoding steps, with guaranteed hook removal.

    Its steering hooks are attached when the first step runs and removed when it ends, raises,
    is closed (`close()`, or a `with` block), or is dropped. If it is left unfinished and another
    steerlens call uses the model, that call closes it first with a RuntimeWarning, so an abandoned
    stream can never steer later work.
    """

    def __init__(self, model: Model, steps: Iterator[StreamStep]) -> None:
        self._model = model
        self._steps = steps
        self.started = False
        self.finished = False
        streams.register(model, self)

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> StreamStep:
        if self.finished:
            raise StopIteration
        self.started = True
        try:
            with streams.running(self):
                return next(self._steps)
        except BaseException:
            self._finish()
            raise

    def close(self) -> None:
        """Stop decoding and remove this stream's hooks now (idempotent)."""
        self._steps.close()
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        streams.unregister(self._model, self)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._steps.close()


def generate_stream(
    model: Model,
    prompts: str | Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    chat: bool | None = None,
    config: GenerationConfig | None = None,
    **settings: Any,
) -> TokenStream:
    """`generate()` one step at a time: yields a `StreamStep` after every decoding step.

    Same arguments and the same tokens as `generate()` (it runs the same decoding loop). The
    arguments are checked at the call. Steering hooks that this function attaches are removed
    when the stream ends, raises, is closed (`close()` or `with generate_stream(...) as s:`) or
    dropped, and, with a RuntimeWarning, when another steerlens call uses the model first.

    Args:
        model: the model.
        prompts: one prompt or a list.
        steering (SteeringVector | SteeringVectorSet | Injection | Steerer | list | None): as for
            `generate()`.
        strength: as for `generate()`.
        positions: as for `generate()`.
        chat: as for `generate()`.
        config: decoding settings (default `GenerationConfig()`).
        **settings: `GenerationConfig` field overrides.

    Returns:
        A `TokenStream` yielding one `StreamStep` per decoding step.

    Raises:
        ValueError: as for `generate()`.
    """
    config = resolve_generation(config, settings)
    prompts, _, batch = _prepare(model, prompts, config, chat, steering, strength)
    return TokenStream(model, _stream_steps(model, prompts, batch, steering, strength, positions,
                                            config))


def _stream_steps(model: Model, prompts: list[str], batch: runtime.TokenBatch, steering,
                  strength: float | None, positions: PositionMode,
                  config: GenerationConfig) -> Iterator[StreamStep]:
    stop = set(runtime.eos_ids(model)) if config.stop_at_eos else set()
    n = len(prompts)
    ids: list[list[int]] = [[] for _ in range(n)]
    shown = [""] * n
    with contextlib.ExitStack() as stack:
        steerer = _steerer(stack, model, steering, strength, positions)
        steps = _decode_steps(model, batch, steerer, config)
        stack.callback(steps.close)
        for k, (nxt, active) in enumerate(steps):
            new: list[int | None] = []
            finished: list[bool] = []
            deltas: list[str] = []
            last = k + 1 == config.max_new_tokens
            for i in range(n):
                if not active[i]:
                    new.append(None)
                    finished.append(True)
                    deltas.append("")
                    continue
                tok = int(nxt[i])
                new.append(tok)
                if tok not in stop:
                    ids[i].append(tok)
                ended = tok in stop or last
                finished.append(ended)
                text = runtime.decode(model, ids[i])
                if not ended and text.endswith("\ufffd"):
                    text = text.rstrip("\ufffd")
                if text.startswith(shown[i]):
                    deltas.append(text[len(shown[i]):])
                    shown[i] = text
                else:  # decoding re-segmented earlier text: report the whole new text
                    deltas.append(text)
                    shown[i] = text
            yield StreamStep(k, tuple(new), tuple(shown), tuple(deltas), tuple(finished),
                             tuple(tuple(r) for r in ids))
