"""Next-token KL divergence between the unsteered and the steered model, in bits.

KL(P || Q) = sum_v P(v) (log2 P(v) - log2 Q(v)). By default P is the *base* (unsteered)
next-token distribution and Q the *steered* one: the expected number of extra bits the steered
model needs to code what the base model would say, i.e. how much steering disturbs the model's
own predictions. `reverse=True` gives KL(steered || base). Logits are converted with a float64
log-softmax, so the value is exact up to float64 rounding and exactly zero at strength 0.

`next_token_kl` reads the distribution after the last prompt token. It runs the unsteered model
once, keeps the residual stream entering the lowest steered layer, and runs only the layers from
there up again with the steering attached, so each prompt costs one forward plus the steered
suffix; only the last position is unembedded. `per_token_kl` gives the KL at every position of
one text (the prediction made after reading each token), for token-level views.
Precision: the log-softmax and the KL sum run in float64 whatever the model's dtype (bf16 and
fp16 logits are upcast exactly), so a half-precision model's KL carries only its own rounding;
see docs/topics/precision.md for the measured bf16/fp16-vs-fp32 tolerances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime
from ..checks import NonFiniteError
from ..steer import PositionMode
from ._common import (
    check_batch_size,
    check_texts,
    chunks,
    final_resid,
    steering_context,
    steering_layers,
    token_strings,
    use_chat,
)

LN2 = math.log(2.0)


def kl_bits(
    p_logits: Float[Tensor, "*batch vocab"], q_logits: Float[Tensor, "*batch vocab"]
) -> Float[Tensor, "*batch"]:
    """KL(softmax(p_logits) || softmax(q_logits)) in bits over the last axis (float64).

    Terms where P is exactly zero contribute 0, and tiny negative rounding is clamped to 0, so
    identical logits give exactly 0. Precision: the logits are upcast to float64 before the
    log-softmax, whatever their dtype (bf16/fp16 logits are used at their exact values), so the
    KL carries only the model's own rounding (docs/topics/precision.md).

    Args:
        p_logits: logits of P (the base model), [..., vocab].
        q_logits: logits of Q (the steered model), same shape.

    Returns:
        KL in bits, one value per leading index, float64.

    Raises:
        ValueError: if the shapes differ or the vocabulary axis is empty.
        NonFiniteError: if either input holds NaN or +inf (never a finite KL for garbage).
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(
            f"p_logits and q_logits must have the same shape, got {tuple(p_logits.shape)} and "
            f"{tuple(q_logits.shape)}."
        )
    if p_logits.ndim == 0 or p_logits.shape[-1] == 0:
        raise ValueError("Logits need a non-empty last (vocabulary) axis.")
    for name, x in (("p_logits", p_logits), ("q_logits", q_logits)):
        # -inf is a legitimate logit (a token with probability 0); NaN and +inf are garbage
        bad = torch.isnan(x) | (x == float("inf"))
        if bool(bad.any()):
            raise NonFiniteError(f"kl_bits: {name} contain {int(bad.sum())} NaN/+inf value(s); "
                                 "the steering strength is probably too large for the model's "
                                 "dtype. No KL is returned for them.")
    logp = p_logits.double().log_softmax(-1)
    terms = q_logits.double().log_softmax(-1).to(logp.device)
    # in place: three [..., vocab] float64 buffers at the peak (logp, P, terms) instead of six;
    # the same IEEE operations as P * (logp - logq), so the same bits
    terms.neg_().add_(logp)
    p = logp.exp()
    terms.mul_(p)
    # 0 * log(0 / q) = 0: drop terms whose P is exactly zero (e.g. -inf logits)
    terms.masked_fill_(p == 0, 0.0)
    return terms.sum(-1).clamp_min(0.0) / LN2


@dataclass(frozen=True)
class KLResult:
    """Next-token KL (bits) per prompt between the base and the steered model."""

    prompts: tuple[str, ...]
    bits: tuple[float, ...]
    strength: float | None
    positions: str
    layers: tuple[int, ...]
    direction: str
    chat: bool

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.bits)

    @property
    def values(self) -> np.ndarray:
        """KL (bits) per prompt as an array."""
        return np.asarray(self.bits, dtype=float)

    @property
    def mean(self) -> float:
        """Mean KL (bits) over prompts."""
        return float(np.mean(self.bits))


def _base_and_steered(model: Model, batch: runtime.TokenBatch, steering, strength, positions,
                      start: int | None) -> tuple[Tensor, Tensor]:
    """Final residuals (pre-norm) of a batch without and with steering.

    With `start` (the lowest steered layer), the steered pass re-runs only blocks start.. on the
    unsteered residual entering block `start`; with None it is a full second forward.
    """
    n_layers = runtime.n_layers(model)
    if start is None:
        base = final_resid(model, batch)
        with steering_context(model, steering, strength, positions) as steerer:
            return base, final_resid(model, batch, steerer)
    captured: dict[str, Tensor] = {}

    def grab(act, hook):
        captured["x"] = act.detach().clone()

    with runtime.attached(model, [(runtime.hook_name(start, "resid_pre"), grab)]):
        base = runtime.forward(model, batch, stop_at_layer=n_layers, return_type=None)
    with steering_context(model, steering, strength, positions) as steerer, steerer.bound(batch):
        steered = runtime.run_from_layer(model, captured["x"], batch.attention_mask, start)
    return base, steered


def _layers(model: Model, steering, strength, positions) -> tuple[int, ...]:
    if steering is None:
        raise ValueError("This measure needs a steering vector (or Injections) to compare against.")
    with steering_context(model, steering, strength, positions) as steerer:
        return tuple(steering_layers(steerer))


def next_token_kl(
    model: Model,
    prompts: str | Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    chat: bool | None = None,
    reverse: bool = False,
    batch_size: int = 16,
    reuse_prefix: bool = True,
) -> KLResult:
    """KL (bits) between base and steered next-token distributions after each prompt.

    The steered pass reuses the unsteered residual below the lowest steered layer and unembeds
    only the last position, so it costs a fraction of a second forward.

    Args:
        model: the model.
        prompts: one prompt or a list.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts (a SteeringVector, Injections, a list, a named set).
        strength: strength for a vector given without one.
        positions: where the vectors are written.
        chat: chat-template the prompts; None = auto (on for instruct models with a template).
        reverse: report KL(steered || base) instead of KL(base || steered).
        batch_size: most prompts per forward.
        reuse_prefix: False runs two full forwards instead (same numbers, slower; for checks).

    Returns:
        A `KLResult` with one KL value (bits) per prompt.

    Raises:
        ValueError: for empty prompts, a bad batch size, or missing/invalid steering.

    Example:
        >>> r = sl.next_token_kl(model, prompts, vec.layer(10), 4.0)  # doctest: +SKIP
        >>> r.mean, r.n  # doctest: +SKIP
    """
    prompts = check_texts(prompts)
    check_batch_size(batch_size)
    layers = _layers(model, steering, strength, positions)
    chat_on = use_chat(model, chat)
    out: list[float] = []
    for sl in chunks(len(prompts), batch_size):
        batch = runtime.encode_prompts(model, prompts[sl], chat=chat_on)
        base, steered = _base_and_steered(model, batch, steering, strength, positions,
                                          layers[0] if reuse_prefix else None)
        p, q = runtime.unembed(model, base[:, -1]), runtime.unembed(model, steered[:, -1])
        bits = kl_bits(q, p) if reverse else kl_bits(p, q)
        out.extend(float(b) for b in bits.cpu())
    return KLResult(
        prompts=tuple(prompts),
        bits=tuple(out),
        strength=None if strength is None else float(strength),
        positions=positions,
        layers=layers,
        direction="KL(steered || base)" if reverse else "KL(base || steered)",
        chat=chat_on,
    )


@dataclass(frozen=True)
class TokenKL:
    """KL (bits) at every position of one text: `bits[t]` compares the predictions made after
    reading `tokens[t]` (i.e. for token t + 1)."""

    text: str
    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    bits: tuple[float, ...]
    strength: float | None
    positions: str
    layers: tuple[int, ...]
    direction: str

    @property
    def n(self) -> int:
        """Number of positions."""
        return len(self.bits)

    @property
    def values(self) -> np.ndarray:
        """KL (bits) per position as an array."""
        return np.asarray(self.bits, dtype=float)


def per_token_kl(
    model: Model,
    text: str,
    steering=None,
    strength: float | None = None,
    *,
    prompt: str | None = None,
    positions: PositionMode = "all",
    chat: bool | None = None,
    reverse: bool = False,
) -> TokenKL:
    """KL (bits) between base and steered next-token predictions at every token of `text`.

    With `prompt`, the row is the prompt (chat-templated when `chat` resolves to True) followed
    by `text`, and every position of the row is reported. Without a prompt `chat` is unused.

    Args:
        model: the model.
        text: the text to score.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts.
        strength: strength for a vector given without one.
        prompt: an optional prompt before `text`.
        positions: where the vectors are written.
        chat: chat-template the prompt; None = auto.
        reverse: report KL(steered || base) instead of KL(base || steered).

    Returns:
        A `TokenKL` with one KL value (bits) per position.

    Raises:
        ValueError: for an empty text or missing/invalid steering.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}.")
    layers = _layers(model, steering, strength, positions)
    if prompt is None:
        batch = runtime.encode(model, [text])
    else:
        batch = runtime.encode(model, [text], [prompt], chat=use_chat(model, chat))
    base, steered = _base_and_steered(model, batch, steering, strength, positions, layers[0])
    p, q = runtime.unembed(model, base[0]), runtime.unembed(model, steered[0])
    bits = kl_bits(q, p) if reverse else kl_bits(p, q)
    ids = batch.tokens[0].tolist()
    return TokenKL(
        text=text,
        tokens=tuple(token_strings(model, ids)),
        ids=tuple(int(i) for i in ids),
        bits=tuple(float(b) for b in bits.cpu()),
        strength=None if strength is None else float(strength),
        positions=positions,
        layers=layers,
        direction="KL(steered || base)" if reverse else "KL(base || steered)",
    )
