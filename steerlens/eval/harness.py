"""The three request types of lm-evaluation-harness, answered by a (steered) steerlens model.

lm-evaluation-harness asks a model three things: the log-probability of a continuation given a
context (`loglikelihood`, with whether greedy decoding would produce it), the log-probability of a
whole text in context-length windows (`loglikelihood_rolling`), and a greedy or sampled
continuation cut at stop sequences (`generate_until`). `HarnessRunner` answers them with the
contract of lm-eval's own Hugging Face model (`HFLM`): contexts and continuations are tokenized
together and split at the context's token count (trailing whitespace moved into the
continuation), an empty context is replaced by the prefix token (BOS, else EOS), BOS follows the
tokenizer's own rule unless `add_bos_token` overrides it and is never doubled on a string that
already starts with it, and scoring requests are sorted longest first and batched. It differs in
three places: padding is on the left (steerlens' batch layout; attention masks make it exact),
requests whose scored input is the same token sequence share one forward pass, and generation
runs steerlens' own KV-cached decoding loop (`generate_stream`), stopped as soon as every row has
produced a stop sequence or EOS. Steering is one `steer()` block around the work: by default the
vector is written at every position of what the model reads (context and continuation while
scoring; prompt and generated tokens while generating), as lm-eval's own `steered` model does;
`positions` may restrict it ("first" while scoring; any mode while generating, where "prompt"
means the context).

This module does not import lm-eval: `steerlens.eval.lm` wraps it in the harness' `LM` class.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..backend import Model, runtime
from ..config import GenerationConfig, check_position_mode
from ..generate import generate_stream
from ..steer import Injection, check_strength, steer, steered_forward
from ..vectors import SteeringVector

SCORING_POSITIONS: tuple[str, ...] = ("all", "first")
"""Position modes that mean something while scoring context + continuation in one pass."""

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's default when a task sets no max_gen_toks


def _chunks(n: int, size: int) -> Iterator[range]:
    for i in range(0, n, size):
        yield range(i, min(n, i + size))


class HarnessRunner:
    """Answers lm-eval's loglikelihood / rolling / generate_until requests with steerlens.

    Attributes:
        model: the steerlens model.
        vector: the steering vector (None: unsteered).
        strength: the strength it is applied with.
        positions: where it is written.
        batch_size: most sequences per forward pass.
        add_bos_token: None follows the tokenizer's rule; True/False forces BOS on/off.
        max_gen_toks: new tokens when a request sets no `max_gen_toks`.
        seed: seed of sampled (non-greedy) generation.
    """

    def __init__(
        self,
        model: Model,
        vector: SteeringVector | None = None,
        strength: float | None = None,
        *,
        positions: str = "all",
        batch_size: int = 16,
        add_bos_token: bool | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int = 0,
    ) -> None:
        """Check the settings.

        Args:
            model: the steerlens model.
            vector: the steering vector (None: unsteered).
            strength: its strength (required with a vector; must be finite).
            positions: where the vector is written, one of `POSITION_MODES`.
            batch_size: most sequences per forward pass (>= 1).
            add_bos_token: None follows the tokenizer's rule; True/False forces BOS on/off.
            max_gen_toks: new tokens when a request sets no `max_gen_toks` (>= 1).
            seed: seed of sampled generation.

        Raises:
            ValueError: for a vector without a strength (or a strength without a vector), a
                non-finite strength, a vector that does not fit the model, an unknown position
                mode, or a batch size / max_gen_toks below 1.
        """
        if vector is not None and strength is None:
            raise ValueError("A steering vector needs a strength (e.g. strength=4).")
        if vector is None and strength is not None:
            raise ValueError(f"strength={strength!r} was given without a vector; pass the vector "
                             "directory too, or drop the strength for an unsteered model.")
        self.strength = None if strength is None else check_strength(strength)
        if vector is not None:
            vector.check_model(model)
        check_position_mode(positions)
        for value, what in ((batch_size, "batch_size"), (max_gen_toks, "max_gen_toks")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be an integer >= 1, got {value!r}.")
        self.model = model
        self.vector = vector
        self.positions = positions
        self.batch_size = batch_size
        self.add_bos_token = add_bos_token
        self.max_gen_toks = max_gen_toks
        self.seed = seed
        self.tokenizer = runtime.tokenizer(model)
        # Steering is built once here so that a bad strength fails before any request runs.
        self._injection = (None if vector is None
                           else Injection(vector, self.strength, positions))

    # -------------------------------------------------------------------------- tokenization
    @property
    def eot_token_id(self) -> int:
        """The end-of-text id (the tokenizer's EOS)."""
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is replaced by: BOS, else EOS."""
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        """The model's context length."""
        return runtime.n_ctx(self.model)

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of `text`, with HFLM's BOS rule.

        Args:
            text: the text.
            add_special_tokens: None: the tokenizer's default, or `add_bos_token` when set, and
                never on a string that already starts with the BOS text; True/False: as given.

        Returns:
            The ids.
        """
        if add_special_tokens is None:
            bos_text = self.tokenizer.decode([self.prefix_token_id])
            if self.add_bos_token is not None:
                add_special_tokens = self.add_bos_token
            if bos_text and text.startswith(bos_text):
                add_special_tokens = False
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return list(self.tokenizer.encode(text, **kwargs))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Split one tokenization of context + continuation at the context's token count.

        Trailing whitespace of the context moves into the continuation first (HFLM's rule), and
        an empty context becomes the prefix token.

        Args:
            context: the context.
            continuation: the continuation.

        Returns:
            (context ids, continuation ids).

        Raises:
            ValueError: if the continuation tokenizes to nothing.
        """
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if not cont:
                raise ValueError(f"Continuation {continuation!r} tokenizes to nothing.")
            if cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        cont = whole[len(ctx):]
        if not cont:
            raise ValueError(f"Continuation {continuation!r} after {context[-40:]!r} tokenizes to "
                             "nothing.")
        return ctx, cont

    # ------------------------------------------------------------------------------- steering
    @contextlib.contextmanager
    def _steering(self) -> Iterator[Any]:
        if self._injection is None:
            yield None
            return
        with steer(self.model, self._injection) as steerer:
            yield steerer

    # -------------------------------------------------------------------------------- scoring
    def loglikelihood_tokens(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
    ) -> list[tuple[float, bool]]:
        """Log P(continuation | context) and whether greedy decoding gives the continuation.

        Args:
            requests: (context ids, continuation ids) pairs; both non-empty.

        Returns:
            One (sum of continuation log-probabilities, is_greedy) per request, in order.

        Raises:
            ValueError: for an empty context or continuation, or a continuation longer than the
                model's context.
        """
        if self.positions not in SCORING_POSITIONS:
            raise ValueError(
                f"positions={self.positions!r} has no meaning while scoring a context and its "
                f"continuation in one pass; valid while scoring: {list(SCORING_POSITIONS)} (every "
                "mode works for generate_until)."
            )
        limit = self.max_length
        inputs: dict[tuple[int, ...], list[int]] = {}  # scored input -> request indices
        for i, (ctx, cont) in enumerate(requests):
            if not ctx or not cont:
                raise ValueError("Every loglikelihood request needs a non-empty context and "
                                 "continuation (in tokens).")
            if len(cont) > limit:
                raise ValueError(f"A continuation of {len(cont)} tokens exceeds the model's "
                                 f"context length {limit}.")
            inp = (list(ctx) + list(cont))[-(limit + 1):][:-1]
            inputs.setdefault(tuple(inp), []).append(i)
        order = sorted(inputs, key=lambda k: (-len(k), k))  # longest first, like HFLM
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bos = self.tokenizer.bos_token_id
        with self._steering() as steerer:
            for chunk in _chunks(len(order), self.batch_size):
                seqs = [list(order[j]) for j in chunk]
                rows = [(s, 1 if len(s) > 1 and s[0] == bos else 0) for s in seqs]
                batch = runtime.batch_from_ids(self.model, rows)
                logits = steered_forward(self.model, batch, steerer)
                logp = torch.log_softmax(logits.float(), dim=-1)
                for b, j in enumerate(chunk):
                    for i in inputs[order[j]]:
                        cont = torch.tensor(list(requests[i][1]), device=logp.device)
                        lp = logp[b, logp.shape[1] - len(cont):]
                        picked = lp.gather(-1, cont[:, None]).squeeze(-1)
                        greedy = bool((lp.argmax(-1) == cont).all())
                        out[i] = (float(picked.sum()), greedy)
        return [r for r in out if r is not None]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Log P(continuation | context) for text pairs (tokenized as HFLM does).

        Args:
            pairs: (context, continuation) strings.

        Returns:
            One (log-probability, is_greedy) per pair.
        """
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in pairs])

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Log-probability of whole texts, in disjoint windows of the model's context length.

        Each text is predicted from the prefix token on; every token is scored exactly once and
        each window after the first keeps as much preceding context as fits (lm-eval's
        `get_rolling_token_windows` + `make_disjoint_window`, reimplemented here).

        Args:
            texts: the texts.

        Returns:
            One total log-probability per text.
        """
        windows: list[tuple[int, list[int], list[int]]] = []
        for t, text in enumerate(texts):
            for ctx, cont in rolling_windows(self.tok_encode(text), self.prefix_token_id,
                                             self.max_length):
                windows.append((t, ctx, cont))
        scores = self.loglikelihood_tokens([(c, x) for _, c, x in windows])
        totals = [0.0] * len(texts)
        for (t, _, _), (lp, _) in zip(windows, scores):
            totals[t] += lp
        return totals

    # ----------------------------------------------------------------------------- generating
    def generate_until(self, requests: Sequence[tuple[str, dict]]) -> list[str]:
        """Continuations of contexts, cut at the first stop sequence.

        Requests are grouped by their generation settings, sorted longest first and batched;
        each batch is decoded with the KV cache (`generate_stream`, steered as set up) and
        stopped once every row has produced a stop sequence or EOS. EOS text is always a stop
        sequence (HFLM's rule).

        Args:
            requests: (context, generation kwargs) pairs; kwargs as lm-eval passes them
                (`until`, `max_gen_toks`, `do_sample`, `temperature`, `top_k`, `top_p`).

        Returns:
            One continuation per request, in order.

        Raises:
            ValueError: for an unknown generation kwarg, or a context that does not fit the
                model's context length together with `max_gen_toks`.
        """
        groups: dict[str, list[int]] = {}
        for i, (_, kwargs) in enumerate(requests):
            groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        eos_text = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        for indices in groups.values():
            until, config = self._generation_settings(requests[indices[0]][1], eos_text)
            lengths = {i: len(self.tok_encode(requests[i][0])) for i in indices}
            ordered = sorted(indices, key=lambda i: (-lengths[i], requests[i][0]))
            for chunk in _chunks(len(ordered), self.batch_size):
                rows = [ordered[j] for j in chunk]
                texts = self._generate_batch([requests[i][0] for i in rows], until, config)
                for i, text in zip(rows, texts):
                    out[i] = text
        return [o if o is not None else "" for o in out]

    def _generation_settings(self, kwargs: dict, eos_text: str) -> tuple[list[str],
                                                                          GenerationConfig]:
        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        if eos_text and eos_text not in until:
            until.append(eos_text)
        max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        top_k = kwargs.pop("top_k", None)
        top_p = kwargs.pop("top_p", None)
        kwargs.pop("max_length", None)
        if kwargs:
            raise ValueError(f"Unsupported generation kwargs {sorted(kwargs)}; supported: until, "
                             "max_gen_toks, do_sample, temperature, top_k, top_p.")
        sample = do_sample and temperature > 0.0
        if do_sample and temperature == 0.0:
            temperature, sample = 1.0, True
        config = GenerationConfig(
            max_new_tokens=max_gen,
            temperature=temperature if sample else 0.0,
            top_k=int(top_k) if sample and top_k else None,
            top_p=float(top_p) if sample and top_p is not None and top_p < 1.0 else None,
            seed=self.seed,
        )
        return until, config

    def _generate_batch(self, contexts: list[str], until: list[str],
                        config: GenerationConfig) -> list[str]:
        n = len(contexts)
        texts = [""] * n
        steering = self._injection
        if self.add_bos_token is not None:
            raise ValueError("add_bos_token cannot be forced for generate_until (steerlens' "
                             "generation path applies the tokenizer's BOS rule); leave it unset.")
        with generate_stream(self.model, contexts, steering, None, chat=False,
                             config=config) as stream:
            for step in stream:
                texts = list(step.texts)
                done = [f or any(s in t for s in until if s) for f, t in zip(step.finished, texts)]
                if all(done):
                    break
        return [cut_at_stops(t, until) for t in texts]


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of each stop sequence in turn (lm-eval's rule).

    Args:
        text: a generated continuation.
        until: stop sequences (empty strings are ignored).

    Returns:
        The text cut before the earliest stop sequence.
    """
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def rolling_windows(tokens: Sequence[int], prefix_token: int,
                    max_len: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows that score every token of `tokens` once.

    The first window predicts the first `max_len` tokens from `prefix_token`; each later window
    predicts the next `max_len` tokens (fewer at the end) with as much preceding context as fits,
    which is what lm-eval's `get_rolling_token_windows(context_len=1)` followed by
    `make_disjoint_window` produces.

    Args:
        tokens: the text's token ids.
        prefix_token: the token the first prediction is conditioned on.
        max_len: the model's context length (>= 1).

    Returns:
        (context ids, continuation ids) pairs; empty for an empty text.

    Raises:
        ValueError: for max_len < 1.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    tokens = list(tokens)
    out: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return out
    first = min(max_len, len(tokens))
    out.append(([prefix_token, *tokens[: first - 1]], tokens[:first]))
    done = first
    while done < len(tokens):  # later windows end at `end`, so end - max_len - 1 >= 0
        end = done + min(len(tokens) - done, max_len)
        out.append((tokens[end - max_len - 1: end - 1], tokens[done:end]))
        done = end
    # make disjoint: the context is the window minus the part that overlaps the continuation
    return [(ctx[: len(ctx) - (len(cont) - 1)], cont) for ctx, cont in out]


def check_finite_strength(value: Any) -> float:
    """A strength given as text or number, as a finite float.

    Args:
        value: the strength (a number, or a string such as "4" or "-2.5").

    Returns:
        The float.

    Raises:
        ValueError: if it is not a finite number.
    """
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a finite number, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(s):
        raise ValueError(f"strength must be a finite number, got {value!r}.")
    return s
