"""Steered (and unsteered) text generation with an exact KV cache.

Prompts are left-padded into one batch. With the KV cache, the prompt runs once and each step
feeds one token; without it, the whole sequence is re-run every step. Steering hooks see absolute
positions either way (see `steer.py`), so greedy decoding gives the same tokens with and without
the cache, including for position-specific and scheduled steering. Sampling uses a seeded
generator, so a (seed, settings) pair reproduces its samples. `generate_stream` runs the same
decoding loop and yields after every step (for live displays); closing it early removes its hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .backend import runtime
from .extract import resolve_chat
from .steer import PositionMode, Steerer, steer


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


def _sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
            gen: torch.Generator | None) -> Tensor:
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.double() / temperature
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


def check_generation_args(max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    if not (temperature >= 0.0) or temperature == float("inf"):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")


def _prepare(model, prompts, max_new_tokens: int, temperature: float, top_k, top_p,
             chat: bool | None) -> tuple[list[str], bool, runtime.TokenBatch]:
    """Checked prompts, the chat decision and the encoded batch (fits the context or raises)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("generate() needs at least one prompt.")
    check_generation_args(max_new_tokens, temperature, top_k, top_p)
    use_chat = resolve_chat(model, chat, True)
    batch = runtime.encode_prompts(model, prompts, chat=use_chat)
    if batch.tokens.shape[1] + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"Prompt ({batch.tokens.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
            f"the model's context length {model.cfg.n_ctx}."
        )
    return prompts, use_chat, batch


def generate(
    model,
    prompts: str | Sequence[str],
    steering=None,
    *,
    strength: float | None = None,
    positions: PositionMode = "all",
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    chat: bool | None = None,
    use_kv_cache: bool = True,
    stop_at_eos: bool = True,
) -> Generation:
    """Generate continuations, optionally steered.

    `steering` is anything `steer()` accepts (a vector with `strength`, Injections, a list), or an
    active `Steerer` from an enclosing `with steer(...)` block.
    """
    prompts, use_chat, batch = _prepare(model, prompts, max_new_tokens, temperature, top_k, top_p,
                                        chat)
    with contextlib.ExitStack() as stack:
        steerer: Steerer | None
        if steering is None or isinstance(steering, Steerer):
            steerer = steering
        else:
            steerer = stack.enter_context(steer(model, steering, strength, positions))
        tokens = _decode_loop(model, batch, steerer, max_new_tokens, temperature, top_k, top_p,
                              seed, use_kv_cache, stop_at_eos)
    texts = tuple(runtime.decode(model, t) for t in tokens)
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, chat=use_chat, use_kv_cache=use_kv_cache)
    return Generation(tuple(prompts), texts, tuple(tuple(t) for t in tokens),
                      steerer is not None, settings)


def _decode_steps(model, batch: runtime.TokenBatch, steerer: Steerer | None, max_new: int,
                  temperature: float, top_k, top_p, seed: int, use_kv_cache: bool,
                  stop_at_eos: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """The decoding loop as a generator: per step, (next token per row, rows active at this step).

    Stops when every row has emitted a stop token (with `stop_at_eos`) or after `max_new` steps.
    The steerer's position context is unbound on every exit, early close included.
    """
    n = batch.tokens.shape[0]
    dev = batch.tokens.device
    gen = torch.Generator().manual_seed(int(seed)) if temperature > 0 else None
    stop_ids = torch.tensor(sorted(runtime.eos_ids(model)), device=dev)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    cache = runtime.new_kv_cache(model, n) if use_kv_cache else None
    tokens, mask = batch.tokens, batch.attention_mask
    feed = batch
    try:
        for step in range(max_new):
            if steerer is not None:
                steerer.context.bind(batch, offset=0 if cache is None or step == 0 else
                                     tokens.shape[1] - 1)
            logits = runtime.forward(model, feed, kv_cache=cache)[:, -1]
            nxt = _sample(logits, temperature, top_k, top_p, gen)
            yield nxt, ~done
            if stop_at_eos and len(stop_ids):
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
    finally:
        if steerer is not None:
            steerer.context.bind(None)


def _decode_loop(model, batch: runtime.TokenBatch, steerer: Steerer | None, max_new: int,
                 temperature: float, top_k, top_p, seed: int, use_kv_cache: bool,
                 stop_at_eos: bool) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(batch.tokens.shape[0])]
    for nxt, active in _decode_steps(model, batch, steerer, max_new, temperature, top_k, top_p,
                                     seed, use_kv_cache, stop_at_eos):
        for i in range(len(out)):
            if active[i]:
                out[i].append(int(nxt[i]))
    stop = set(runtime.eos_ids(model))
    return [[t for t in row if not (stop_at_eos and t in stop)] for row in out]


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


def generate_stream(
    model,
    prompts: str | Sequence[str],
    steering=None,
    *,
    strength: float | None = None,
    positions: PositionMode = "all",
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    chat: bool | None = None,
    use_kv_cache: bool = True,
    stop_at_eos: bool = True,
) -> Iterator[StreamStep]:
    """`generate()` one step at a time: yields a `StreamStep` after every decoding step.

    Same arguments and the same tokens as `generate()` (it runs the same decoding loop). The
    arguments are checked when the first step is requested. Steering hooks that this function
    attaches are removed when the stream ends, raises, or is closed early by its consumer
    (`close()`, or leaving a `for` loop over a generator that is then garbage-collected).
    """
    prompts, use_chat, batch = _prepare(model, prompts, max_new_tokens, temperature, top_k, top_p,
                                        chat)
    stop = set(runtime.eos_ids(model)) if stop_at_eos else set()
    n = len(prompts)
    ids: list[list[int]] = [[] for _ in range(n)]
    shown = [""] * n
    with contextlib.ExitStack() as stack:
        steerer: Steerer | None
        if steering is None or isinstance(steering, Steerer):
            steerer = steering
        else:
            steerer = stack.enter_context(steer(model, steering, strength, positions))
        steps = _decode_steps(model, batch, steerer, max_new_tokens, temperature, top_k, top_p,
                              seed, use_kv_cache, stop_at_eos)
        stack.callback(steps.close)
        for k, (nxt, active) in enumerate(steps):
            new: list[int | None] = []
            finished: list[bool] = []
            deltas: list[str] = []
            last = k + 1 == max_new_tokens
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
