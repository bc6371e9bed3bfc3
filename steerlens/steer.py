"""Injecting steering vectors into a running model.

`steer(model, vector, strength)` is a context manager that adds `strength * direction` to the
activation at each of the vector's sites while the block runs, and always removes its hooks on
exit, exceptions included. Several `Injection`s can be active at once; their strengths live in a
tensor read at call time, so `handle.set_strength(i, s)` changes them mid-run.

Token positions are absolute, which is what keeps position-specific modes correct while decoding
with a KV cache (where each forward sees one new token): "all" (every position), "prompt" (prompt
positions only), "generated" (positions holding generated tokens), "first" (the first prompt token
after BOS and padding) and "last" (the final prompt token). A schedule is expressed per injection
with `start_step`/`stop_step`: the injection is active at positions whose generated-token index k
lies in [start, stop), where prompt positions have k = 0 and the position holding the k-th
generated token has index k. Defining schedules on positions rather than on decoding steps makes
cached and uncached generation produce the same tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .backend import runtime
from .vectors import SteeringVector

PositionMode = str  # one of POSITION_MODES, validated with a ValueError
POSITION_MODES: tuple[str, ...] = ("all", "prompt", "generated", "first", "last")


@dataclass(frozen=True)
class Injection:
    """One vector to add: strength, position mode and an optional schedule window."""

    vector: SteeringVector
    strength: float = 1.0
    positions: PositionMode = "all"
    start_step: int = 0
    stop_step: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise ValueError(f"Injection.vector must be a SteeringVector, got {type(self.vector)}.")
        check_strength(self.strength)
        if self.positions not in POSITION_MODES:
            raise ValueError(
                f"Unknown positions {self.positions!r}; valid modes are {list(POSITION_MODES)}."
            )
        if self.start_step < 0 or (self.stop_step is not None and self.stop_step <= self.start_step):
            raise ValueError(
                f"Schedule window [{self.start_step}, {self.stop_step}) is empty or negative."
            )

    @property
    def scheduled(self) -> bool:
        return self.start_step > 0 or self.stop_step is not None


def check_strength(strength: float) -> float:
    s = float(strength)
    if not math.isfinite(s):
        raise ValueError(f"Steering strength must be a finite number, got {strength!r}.")
    return s


def schedule(
    steps: Sequence[tuple[int, SteeringVector | None]],
    strength: float = 1.0,
    positions: PositionMode = "all",
) -> list[Injection]:
    """Sequential switching: [(0, vec_a), (10, vec_b), (20, None)] uses vec_a for the first 10
    generated tokens, vec_b for the next 10, then nothing."""
    if not steps:
        raise ValueError("A schedule needs at least one (step, vector) entry.")
    starts = [int(s) for s, _ in steps]
    if starts != sorted(set(starts)) or starts[0] < 0:
        raise ValueError(f"Schedule steps must be strictly increasing and >= 0, got {starts}.")
    out = []
    for i, (start, vec) in enumerate(steps):
        stop = starts[i + 1] if i + 1 < len(steps) else None
        if vec is not None:
            out.append(Injection(vec, strength, positions, start, stop))
    return out


class PositionContext:
    """What the hooks need to place positions: the forward's offset and the prompt layout.

    Set by `forward`/`generate`; with nothing bound, the whole current input counts as prompt,
    "first" is position 0 and "last" is the final position of the input.
    """

    def __init__(self) -> None:
        self.offset = 0
        self.prompt_width: int | None = None
        self.first: Tensor | None = None

    def bind(self, batch: runtime.TokenBatch | None, offset: int = 0) -> None:
        if batch is None:
            self.prompt_width, self.first = None, None
        else:
            self.prompt_width = int(batch.tokens.shape[1])
            self.first = batch.span_start
        self.offset = offset


def _position_mask(inj: Injection, ctx: PositionContext, batch: int, length: int,
                   device) -> Tensor | None:
    """[batch, length] float mask of positions to steer in this forward; None means all."""
    if inj.positions == "all" and not inj.scheduled:
        return None
    pos = ctx.offset + torch.arange(length, device=device)
    width = ctx.prompt_width if ctx.prompt_width is not None else ctx.offset + length
    mode = inj.positions
    if mode == "all":
        m = torch.ones(length, dtype=torch.bool, device=device)
    elif mode == "prompt":
        m = pos < width
    elif mode == "generated":
        m = pos >= width
    elif mode == "last":
        m = pos == width - 1
    else:  # first
        first = ctx.first.to(device) if ctx.first is not None else torch.zeros(batch, device=device,
                                                                               dtype=torch.long)
        return ((pos[None] == first[:, None]) & _window(inj, pos, width)[None]).float()
    m = m & _window(inj, pos, width)
    return m[None].expand(batch, length).float()


def _window(inj: Injection, pos: Tensor, width: int) -> Tensor:
    step = (pos - width + 1).clamp_min(0)
    ok = step >= inj.start_step
    if inj.stop_step is not None:
        ok = ok & (step < inj.stop_step)
    return ok


class Steerer:
    """Handle returned by `steer()`: live strengths and the position context."""

    def __init__(self, model, injections: Sequence[Injection]) -> None:
        if not injections:
            raise ValueError("steer() needs at least one vector or Injection.")
        for inj in injections:
            inj.vector.check_model(model)
        self.model = model
        self.injections = tuple(injections)
        self.strengths = torch.tensor([float(i.strength) for i in injections], dtype=torch.float64)
        self.context = PositionContext()
        dev = runtime.model_device(model)
        dtype = next(model.parameters()).dtype
        self._row_strengths: dict[int, Tensor] = {}
        self._dirs = [{lay: inj.vector[lay].to(dev, dtype) for lay in inj.vector.layers}
                      for inj in injections]

    def set_strength(self, index: int, strength: float | Sequence[float] | Tensor) -> None:
        """Change an injection's strength; takes effect at the next forward.

        A 1-D sequence gives one strength per batch row, which is how sweeps run several
        strengths in one forward (the batch must then have exactly that many rows).
        """
        if not 0 <= index < len(self.injections):
            raise ValueError(f"Injection index {index} out of range 0..{len(self.injections) - 1}.")
        if isinstance(strength, (int, float)):
            self.strengths[index] = check_strength(strength)
            self._row_strengths.pop(index, None)
            return
        rows = torch.as_tensor(strength, dtype=torch.float64).flatten()
        if rows.numel() == 0 or not torch.isfinite(rows).all():
            raise ValueError("Per-row strengths must be a non-empty sequence of finite numbers.")
        self.strengths[index] = 1.0
        self._row_strengths[index] = rows

    def hooks(self) -> list[tuple[str, object]]:
        by_name: dict[str, list[tuple[int, int]]] = {}
        for i, inj in enumerate(self.injections):
            for layer in inj.vector.layers:
                name = runtime.hook_name(layer, inj.vector.component)
                by_name.setdefault(name, []).append((i, layer))
        return [(name, self._make_hook(entries)) for name, entries in by_name.items()]

    def _make_hook(self, entries: list[tuple[int, int]]):
        def hook(act: Tensor, hook) -> Tensor:
            for i, layer in entries:
                s = float(self.strengths[i])
                if s == 0.0:
                    continue
                delta = self._dirs[i][layer] * s
                rows = self._row_strengths.get(i)
                if rows is not None:
                    if rows.shape[0] != act.shape[0]:
                        raise ValueError(
                            f"{rows.shape[0]} per-row strengths set but the batch has "
                            f"{act.shape[0]} rows."
                        )
                    delta = rows.to(act.device, act.dtype)[:, None, None] * delta
                mask = _position_mask(self.injections[i], self.context, act.shape[0],
                                      act.shape[1], act.device)
                act = act + delta if mask is None else act + mask[..., None].to(act.dtype) * delta
            return act

        return hook


def _as_injections(vectors, strength: float | None, positions: PositionMode) -> list[Injection]:
    if isinstance(vectors, SteeringVector):
        return [Injection(vectors, 1.0 if strength is None else strength, positions)]
    if isinstance(vectors, Injection):
        return [vectors]
    items = list(vectors)
    out = []
    for item in items:
        if isinstance(item, Injection):
            out.append(item)
        elif isinstance(item, SteeringVector):
            out.append(Injection(item, 1.0 if strength is None else strength, positions))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], SteeringVector):
            out.append(Injection(item[0], item[1], positions))
        else:
            raise ValueError(
                "steer() takes a SteeringVector, an Injection, or a list of those or of "
                f"(vector, strength) tuples; got {type(item).__name__}."
            )
    return out


@contextlib.contextmanager
def steer(
    model,
    vectors,
    strength: float | None = None,
    positions: PositionMode = "all",
) -> Iterator[Steerer]:
    """Add steering vectors to `model` inside the block; hooks are removed on every exit.

    `vectors`: a SteeringVector (with `strength`), an Injection, or a list of vectors, Injections
    or (vector, strength) pairs.
    """
    steerer = Steerer(model, _as_injections(vectors, strength, positions))
    with runtime.attached(model, steerer.hooks()):
        yield steerer


def steered_forward(model, batch: runtime.TokenBatch, steerer: Steerer | None = None) -> Tensor:
    """Logits for a TokenBatch, with `steerer`'s positions bound to the batch's layout."""
    if steerer is not None:
        steerer.context.bind(batch)
    try:
        return runtime.forward(model, batch)
    finally:
        if steerer is not None:
            steerer.context.bind(None)
