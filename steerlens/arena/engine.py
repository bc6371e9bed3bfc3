"""The steering arena's engine: request checking and one steered generation, as a stream of events.

A request names a vector (a shipped behaviour, or contrast pairs typed one per line as
`positive ||| negative` or `prompt ||| positive ||| negative`), a layer, up to `MAX_STRENGTHS`
strengths and a prompt. `parse_request` checks everything that can be checked without the model
(it only tokenizes the prompt) and raises `ArenaInputError` with a message saying what is valid.

`Arena.run` then does the work with the library's own API, holding one lock for the whole run so
that one request's hooks are never on the shared model while another request runs: the vector
comes from `methods.build_vector` (mean difference of contrast activations; behaviour vectors are
built once per (behaviour, layer) and cached, custom ones per request), its logit lens from
`measures.logit_lens.vector_lens`, and the baseline and every strength are decoded in ONE batch by
`generate.generate_stream` under a single `steer()` whose per-row strengths are
[0, s1, s2, ...] (row 0, strength exactly 0, is the unsteered baseline). With `ablate` on, one more
row shows directional ablation next to addition: the vector's direction projected out of every
layer and residual site (`interventions.Ablation`, as refusal-direction work does), in the same
batch and the same `steer()` block, its rows selected by per-row strengths (addition 0 and
ablation 1 on the ablated row, ablation 0 elsewhere). Afterwards each steered continuation gets its
per-token KL(base || steered) in bits from `measures.kl.per_token_kl`.

Strength multiplies the raw vector (the mean difference, whose norm the page shows), and
|strength| is capped at `MAX_STRENGTH`. Every event is a JSON-ready dict; closing the event
generator early (a client that went away) removes the hooks and releases the lock. A request that
waits for the lock polls a `cancelled` callback (the server's "has the client gone?") and is dropped
without touching the model when it returns True.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..backend import Model, runtime
from ..config import GenerationConfig
from ..extract import resolve_chat
from ..generate import generate_stream
from ..interventions.ablation import Ablation
from ..measures.kl import per_token_kl
from ..measures.logit_lens import vector_lens
from ..methods import build_vector
from ..pairs import ContrastPair, ContrastSet, list_behaviours, load_behaviour
from ..steer import Injection, steer
from ..vectors import SteeringVector

MAX_STRENGTH = 100.0
MAX_STRENGTHS = 4
MAX_NEW_TOKENS = 128
MAX_PAIRS = 64
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**31 - 1
PAIR_SEPARATOR = "|||"
LENS_K = 12
QUEUE_POLL_S = 0.1
CUSTOM = "custom"


class ArenaInputError(ValueError):
    """A request the arena refuses; the message says what was wrong and what is valid."""


@dataclass(frozen=True)
class ArenaRequest:
    """A checked arena request.

    Attributes:
        prompt: the prompt text.
        layer: the layer to steer.
        strengths: up to `MAX_STRENGTHS` strengths, each decoded as one batch row.
        behaviour: a shipped behaviour's name, or None for custom pairs.
        pairs: the custom contrast pairs (None for a behaviour).
        generation: the decoding settings.
        chat: whether the prompt is chat-templated.
        prompt_tokens: the prompt's length in tokens.
        ablate: add a row with the vector's direction ablated at every layer and residual site.
    """

    prompt: str
    layer: int
    strengths: tuple[float, ...]
    behaviour: str | None
    pairs: ContrastSet | None
    generation: GenerationConfig
    chat: bool
    prompt_tokens: int
    ablate: bool = False

    @property
    def source(self) -> str:
        """The vector's source: the behaviour's name, or "custom"."""
        return self.behaviour if self.behaviour is not None else CUSTOM


def parse_pairs(text: str) -> ContrastSet:
    """Pairs typed one per line: `positive ||| negative` or `prompt ||| positive ||| negative`.

    Args:
        text: the pairs, one per line; blank lines are skipped.

    Returns:
        The pairs as a `ContrastSet` named "custom".

    Raises:
        ArenaInputError: naming the bad line, for no pairs, or for more than `MAX_PAIRS`.
    """
    if not isinstance(text, str):
        raise ArenaInputError("Custom pairs must be text, one pair per line.")
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(PAIR_SEPARATOR)]
        if len(parts) not in (2, 3) or not all(parts):
            raise ArenaInputError(
                f"Pair line {n} is not 'positive {PAIR_SEPARATOR} negative' or 'prompt "
                f"{PAIR_SEPARATOR} positive {PAIR_SEPARATOR} negative' with non-empty parts: "
                f"{line[:80]!r}."
            )
        prompt = parts[0] if len(parts) == 3 else None
        pairs.append(ContrastPair(parts[-2], parts[-1], prompt))
    if not pairs:
        raise ArenaInputError(
            f"No contrast pairs given. Type at least one pair per line as 'positive "
            f"{PAIR_SEPARATOR} negative', or pick a behaviour."
        )
    if len(pairs) > MAX_PAIRS:
        raise ArenaInputError(f"Too many pairs ({len(pairs)}); the arena takes at most {MAX_PAIRS}.")
    return ContrastSet(tuple(pairs), "custom")


def _number(payload: Mapping[str, Any], key: str, default, kind: type, label: str):
    raw = payload.get(key, default)
    if isinstance(raw, bool):
        raise ArenaInputError(f"{label} must be a number, got {raw!r}.")
    if isinstance(raw, str):
        raw = raw.strip()
        if raw == "" and default is not None:
            raw = default
    try:
        value = kind(raw) if kind is float else int(str(raw))
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ArenaInputError(f"{label} must be {what}, got {raw!r}.") from None
    if kind is float and not math.isfinite(value):
        raise ArenaInputError(f"{label} must be a finite number, got {raw!r}.")
    return value


def _strengths(raw) -> tuple[float, ...]:
    items = raw.replace(";", ",").split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise ArenaInputError(f"Strengths must be comma-separated numbers, got {raw!r}.")
    items = [x for x in items if not (isinstance(x, str) and not x.strip())]
    if not items:
        raise ArenaInputError(
            f"Give at least one strength (comma-separated, up to {MAX_STRENGTHS}, each in "
            f"[-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}])."
        )
    if len(items) > MAX_STRENGTHS:
        raise ArenaInputError(f"At most {MAX_STRENGTHS} strengths at once, got {len(items)}.")
    out = []
    for x in items:
        s = _number({"s": x}, "s", None, float, "Each strength")
        if abs(s) > MAX_STRENGTH:
            raise ArenaInputError(
                f"Strength {s:g} is too large: |strength| must be at most {MAX_STRENGTH:g} (it "
                f"multiplies the raw vector; valid range [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}])."
            )
        out.append(s)
    return tuple(out)


class Arena:
    """One shared model and the state the arena keeps across requests (read-only vectors).

    One lock serialises model use, so concurrent requests queue instead of seeing each other's
    hooks; behaviour vectors are built once per (behaviour, layer) and cached.

    Args:
        model: the model every request runs on.
        model_name: the name shown in the page (default: the model's id).
    """

    def __init__(self, model: Model, model_name: str | None = None) -> None:
        self.model = model
        self.model_name = model_name or runtime.model_id(model)
        self.lock = threading.Lock()
        self._tok_lock = threading.Lock()
        self._vectors: dict[tuple[str, int], SteeringVector] = {}
        self.behaviours = tuple(list_behaviours())
        self.n_aborted = 0
        self.n_dropped = 0
        self.n_runs = 0
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------ options and checking
    def options(self) -> dict[str, Any]:
        """What the page needs to build its form: layers, behaviours and limits.

        Returns:
            A JSON-ready dict (model, n_layers, default_layer, n_ctx, behaviours and their
            descriptions, the custom-pairs separator, the limits and the default chat setting).
        """
        n = runtime.n_layers(self.model)
        descriptions = {b: load_behaviour(b).description for b in self.behaviours}
        return {
            "model": self.model_name, "n_layers": n, "default_layer": max(0, n // 3),
            "n_ctx": runtime.n_ctx(self.model), "behaviours": list(self.behaviours),
            "descriptions": descriptions, "custom": CUSTOM, "separator": PAIR_SEPARATOR,
            "max_strength": MAX_STRENGTH, "max_strengths": MAX_STRENGTHS,
            "max_new_tokens": MAX_NEW_TOKENS, "max_temperature": MAX_TEMPERATURE,
            "max_pairs": MAX_PAIRS,
            "chat_default": resolve_chat(self.model, None, True),
        }

    def status(self) -> dict[str, Any]:
        """Whether a run holds the model, how many hooks are on it now, and run counters.

        Returns:
            A JSON-ready dict with busy, hooks_attached, runs, aborted (stopped midway: the client
            left) and dropped (abandoned while queued, the model never ran).
        """
        return {"busy": self.lock.locked(), "hooks_attached": runtime.attached_hook_count(self.model),
                "runs": self.n_runs, "aborted": self.n_aborted, "dropped": self.n_dropped}

    def parse_request(self, payload: Any) -> ArenaRequest:
        """Check a request (a JSON object) without running the model; raises ArenaInputError.

        Args:
            payload (Any): the decoded JSON body.

        Returns:
            The checked `ArenaRequest`.

        Raises:
            ArenaInputError: for anything invalid (layer out of range, bad or too many strengths,
                unknown behaviour, bad pairs, sampling settings out of range, empty prompt, or a prompt
                that does not fit the context); the message says what is valid.
        """
        if not isinstance(payload, Mapping):
            raise ArenaInputError("The request must be a JSON object.")
        n_layers = runtime.n_layers(self.model)
        layer = _number(payload, "layer", None, int, "Layer")
        if not 0 <= layer < n_layers:
            raise ArenaInputError(
                f"Layer {layer} is out of range: this model has {n_layers} layers, valid layers "
                f"are 0..{n_layers - 1}."
            )
        strengths = _strengths(payload.get("strengths", ""))
        behaviour = payload.get("behaviour", self.behaviours[0])
        pairs = None
        if behaviour == CUSTOM:
            raw_pairs = payload.get("pairs", "")
            if not isinstance(raw_pairs, str):
                raise ArenaInputError("Custom pairs must be text, one pair per line.")
            pairs = parse_pairs(raw_pairs)
            behaviour = None
        elif behaviour not in self.behaviours:
            raise ArenaInputError(
                f"Unknown behaviour {behaviour!r}. Valid behaviours are {list(self.behaviours)}, "
                f"or {CUSTOM!r} with your own pairs."
            )
        max_new = _number(payload, "max_new_tokens", 32, int, "Max new tokens")
        if not 1 <= max_new <= MAX_NEW_TOKENS:
            raise ArenaInputError(f"Max new tokens must be in 1..{MAX_NEW_TOKENS}, got {max_new}.")
        temperature = _number(payload, "temperature", 0.0, float, "Temperature")
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise ArenaInputError(
                f"Temperature must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {temperature:g}."
            )
        seed = _number(payload, "seed", 0, int, "Seed")
        if not 0 <= seed <= MAX_SEED:
            raise ArenaInputError(f"Seed must be in 0..{MAX_SEED}, got {seed}.")
        chat_raw = payload.get("chat", None)
        if chat_raw is not None and not isinstance(chat_raw, bool):
            raise ArenaInputError(f"chat must be true, false or absent, got {chat_raw!r}.")
        chat = resolve_chat(self.model, chat_raw, True)
        ablate = payload.get("ablate", False)
        if not isinstance(ablate, bool):
            raise ArenaInputError(f"ablate must be true or false, got {ablate!r}.")
        prompt = payload.get("prompt", "")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ArenaInputError("Type a prompt: it is empty.")
        with self._tok_lock:
            n_prompt = len(runtime.prompt_ids(self.model, prompt, chat))
        n_ctx = runtime.n_ctx(self.model)
        if n_prompt + max_new > n_ctx:
            raise ArenaInputError(
                f"The prompt is {n_prompt} tokens; with {max_new} new tokens that is over the "
                f"model's context length of {n_ctx} tokens. Shorten the prompt to at most "
                f"{max(0, n_ctx - max_new)} tokens or ask for fewer new tokens."
            )
        generation = GenerationConfig(max_new_tokens=max_new, temperature=temperature, seed=seed)
        return ArenaRequest(prompt, layer, strengths, behaviour, pairs, generation, chat, n_prompt,
                            ablate)

    # ------------------------------------------------------------------ running
    def _vector(self, req: ArenaRequest) -> SteeringVector:
        """The request's vector at its layer (caller holds the lock)."""
        if req.behaviour is None:
            return build_vector(self.model, req.pairs, [req.layer], show_progress=False)
        key = (req.behaviour, req.layer)
        if key not in self._vectors:  # extraction stops at the layer, so one layer is cheapest
            self._vectors[key] = build_vector(self.model, load_behaviour(req.behaviour).train,
                                              [req.layer], show_progress=False)
        return self._vectors[key]

    def run(self, req: ArenaRequest, *, cancelled: Callable[[], bool] | None = None,
            poll_s: float = QUEUE_POLL_S) -> Iterator[dict[str, Any]]:
        """Events of one run: queued?, vector, lens, step..., kl..., done.

        The baseline and every strength decode in one batch under one `steer()` with per-row strengths.
        Closing the generator early (a client that went away) removes the hooks and frees the model.
        While another run holds the model this one waits, calling `cancelled` every `poll_s`
        seconds (and once before and once after taking the lock); when it returns True the
        request is dropped: the generator ends without running the model (counted in `n_dropped`).

        Args:
            req: a request checked by `parse_request`.
            cancelled: returns True once the request's client has gone (None: never).
            poll_s: how often a queued request calls `cancelled`, in seconds.

        Yields:
            JSON-ready event dicts, each with a "type".
        """
        gone = cancelled if cancelled is not None else (lambda: False)
        if gone():
            self._dropped()
            return
        if not self.lock.acquire(blocking=False):
            try:
                yield {"type": "queued", "message": "Waiting for another generation to finish..."}
            except GeneratorExit:  # closed while queued: the client went away
                self._dropped()
                raise
            while not self.lock.acquire(timeout=poll_s):
                if gone():
                    self._dropped()
                    return
        try:
            if gone():  # the client left just as the model came free
                self._dropped()
                return
            yield from self._run_locked(req)
        except GeneratorExit:
            self.n_aborted += 1
            raise
        finally:
            self.lock.release()

    def _dropped(self) -> None:
        with self._count_lock:
            self.n_dropped += 1

    def _run_locked(self, req: ArenaRequest) -> Iterator[dict[str, Any]]:
        t0 = time.perf_counter()
        self.n_runs += 1
        model = self.model
        vec = self._vector(req)
        layer = req.layer
        yield {"type": "vector", "source": req.source, "layer": layer, "norm": vec.norms[layer],
               "n_pairs": vec.n_pairs, "method": vec.method, "component": vec.component}
        lens = vector_lens(model, vec, k=LENS_K)
        yield {"type": "lens", "layer": layer,
               "promoted": [{"token": t.token, "value": t.value} for t in lens.promoted[layer]],
               "suppressed": [{"token": t.token, "value": t.value} for t in lens.suppressed[layer]]}
        rows = (0.0, *req.strengths)
        kinds = ["baseline"] + ["add"] * len(req.strengths)
        interventions: list = [Injection(vec, 1.0, name="add")]
        if req.ablate:
            rows, kinds = (*rows, 0.0), [*kinds, "ablate"]
            interventions.append(Ablation(vec, name="ablate"))
        yield {"type": "start", "strengths": list(rows), "kinds": kinds,
               "prompt_tokens": req.prompt_tokens, "chat": req.chat}
        texts = [""] * len(rows)
        with steer(model, interventions) as steerer:
            steerer.set_strength("add", rows)
            if req.ablate:
                steerer.set_strength("ablate", [float(k == "ablate") for k in kinds])
            for step in generate_stream(model, [req.prompt] * len(rows), steerer, chat=req.chat,
                                        config=req.generation):
                texts = list(step.texts)
                yield {"type": "step", "step": step.step, "texts": texts,
                       "deltas": list(step.deltas), "finished": list(step.finished)}
        head = len(runtime.prompt_ids(model, req.prompt, req.chat))
        for row, (strength, text, kind) in enumerate(zip(rows, texts, kinds)):
            if row == 0:
                continue
            if not text.strip():
                yield {"type": "kl", "row": row, "strength": strength, "kind": kind, "tokens": [],
                       "bits": [], "mean": None, "max": None}
                continue
            steering = Ablation(vec) if kind == "ablate" else Injection(vec, strength)
            tk = per_token_kl(model, text, steering, prompt=req.prompt, chat=req.chat)
            # the KL shown on continuation token t is that of the prediction that produced it
            bits = list(tk.bits[head - 1 : len(tk.bits) - 1])
            yield {"type": "kl", "row": row, "strength": strength, "kind": kind,
                   "tokens": list(tk.tokens[head:]),
                   "bits": bits, "mean": sum(bits) / len(bits), "max": max(bits),
                   "direction": tk.direction}
        yield {"type": "done", "texts": texts, "elapsed_s": round(time.perf_counter() - t0, 3),
               "n_rows": len(rows)}
