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

Every caller that runs a steered forward binds the steerer to the batch's layout with one context
manager, `with steerer.bound(batch, offset):`, and `steered_forward` is the one steered forward
pass. Anything that edits activations is an `Intervention` (steerlens.interventions);
`Injection` is its additive kind, and an `Ablation`, a feature clamp or a head edit can share one
block with injections, applied at each hook in a documented order (ablations first, additions
last). Vectors can be named (a `SteeringVectorSet` or a dict name -> vector), and then
`steer(vset, strengths={"refusal": 0.0, ...})` and `handle.set_strength("refusal", s)` address them
by name; a per-row sequence of strengths steers each batch row with its own strength.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .backend import Model, runtime
from .interventions.base import (
    ORDERS,
    BoundIntervention,
    Intervention,
    PositionContext,
    check_strength,
    position_mask,
    vector_fields,
    vector_from_saved,
    vector_tensors,
)
from .vectors import SteeringVector, SteeringVectorSet

__all__ = ["Injection", "Intervention", "PositionContext", "Steerer", "check_strength", "schedule",
           "steer", "steered_forward"]

PositionMode = str  # one of POSITION_MODES, validated with a ValueError
StrengthValue = float | Sequence[float] | Tensor  # one strength, or one per batch row


@dataclass(frozen=True)
class Injection(Intervention):
    """One vector to add: strength, position mode, an optional schedule window and a name.

    The additive kind of `Intervention` (kind "add", applied last at a hook: order 3).

    Attributes:
        vector: the SteeringVector to add.
        strength: multiplier on the vector (finite).
        positions: where the vector is written, one of `POSITION_MODES`.
        start_step: first generated-token index at which it is active (0: from the prompt on).
        stop_step: generated-token index at which it stops (None: never).
        name: a label for `Steerer.set_strength(name, ...)` (None: address it by index).
    """

    kind: ClassVar[str] = "add"
    order: ClassVar[int] = ORDERS["add"]

    vector: SteeringVector
    strength: float = 1.0
    positions: PositionMode = "all"
    start_step: int = 0
    stop_step: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise ValueError(f"Injection.vector must be a SteeringVector, got {type(self.vector)}.")
        self.check_common()

    def check_model(self, model: Model) -> None:
        """Raise a ValueError if the vector does not fit `model` (d_model, layers).

        Args:
            model (Model): the model.
        """
        self.vector.check_model(model)

    def sites(self, model: Model) -> list[tuple[str, int]]:
        """One (hook name, layer) per layer of the vector, at its component.

        Args:
            model (Model): the model.

        Returns:
            The pairs.
        """
        return [(runtime.hook_name(layer, self.vector.component), layer)
                for layer in self.vector.layers]

    def bind(self, model: Model) -> BoundIntervention:
        """The vector's directions on the model's device and dtype.

        Args:
            model (Model): the model.

        Returns:
            The bound addition.
        """
        dev, dtype = runtime.model_device(model), runtime.model_dtype(model)
        return _BoundAdd({lay: self.vector[lay].to(dev, dtype) for lay in self.vector.layers})

    def max_push(self) -> float:
        """The vector's largest |entry| over its layers.

        Returns:
            That entry.
        """
        return max(float(self.vector[lay].double().abs().max()) for lay in self.vector.layers)

    def to_dict(self) -> dict[str, Any]:
        """The vector's metadata (its directions are in `tensors()`).

        Returns:
            {"vector": vector metadata}.
        """
        return {"vector": vector_fields(self.vector)}

    def tensors(self) -> dict[str, Tensor]:
        """The vector's directions.

        Returns:
            Keys "vector.layer.{i}".
        """
        return vector_tensors(self.vector, "vector")

    @classmethod
    def from_saved(cls, fields: Mapping[str, Any], tensors: Mapping[str, Tensor],
                   common: Mapping[str, Any]) -> Injection:
        """Rebuild from a saved record.

        Args:
            fields: `to_dict()` output.
            tensors: `tensors()` output.
            common: the common fields.

        Returns:
            The injection.
        """
        return cls(vector_from_saved(fields.get("vector", {}), tensors, "vector"), **common)


class _BoundAdd(BoundIntervention):
    def __init__(self, dirs: dict[int, Tensor]) -> None:
        self.dirs = dirs

    def apply(self, act: Tensor, layer: int, hook_name: str, scale: float | Tensor,
              mask: Tensor | None, context: PositionContext) -> Tensor:
        d = self.dirs[layer]
        if d.device != act.device:  # a model split over several GPUs: block `layer` lives elsewhere
            d = d.to(act.device)
        delta = scale[:, None, None].to(act.device) * d if isinstance(scale, Tensor) else d * scale
        return act + delta if mask is None else act + mask[..., None] * delta


def schedule(
    steps: Sequence[tuple[int, SteeringVector | None]],
    strength: float = 1.0,
    positions: PositionMode = "all",
) -> list[Injection]:
    """Sequential switching between vectors as generation proceeds.

    `[(0, vec_a), (10, vec_b), (20, None)]` uses vec_a for the first 10 generated tokens (and the
    prompt), vec_b for the next 10, then nothing. Defined on positions, so it is cache-exact.

    Args:
        steps: (first generated-token index, vector or None) pairs, strictly increasing.
        strength: strength of every scheduled vector.
        positions: where the vectors are written.

    Returns:
        Injections to pass to `steer()` or `generate()`.

    Raises:
        ValueError: for an empty schedule or steps that are not strictly increasing and >= 0.

    Example:
        >>> with steer(model, schedule([(0, formal), (10, None)]), ...) ...  # doctest: +SKIP
    """
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


class Steerer:
    """Handle returned by `steer()`: live (named) strengths and the position context.

    Holds the interventions in the order given (`injections`, also `interventions`), each bound
    to the model. At each hook the bound interventions that touch it run in (kind `order`, index)
    order: gate reads, then ablations, clamps, head edits and finally additions; interventions of
    one order keep the order they were listed in.
    """

    def __init__(self, model: Model, injections: Sequence[Intervention]) -> None:
        if not injections:
            raise ValueError("steer() needs at least one vector or Intervention.")
        for inj in injections:
            if not isinstance(inj, Intervention):
                raise ValueError(f"Expected an Intervention, got {type(inj).__name__}.")
            inj.check_model(model)
        names = [inj.name for inj in injections if inj.name is not None]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Injection names must be unique; repeated: {dup}.")
        self.model = model
        self.injections = tuple(injections)
        self.strengths = torch.tensor([float(i.strength) for i in injections], dtype=torch.float64)
        self.context = PositionContext()
        self._row_strengths: dict[int, Tensor] = {}
        self._bound = [inj.bind(model) for inj in injections]
        self._sites = [list(inj.sites(model)) for inj in injections]
        for inj, sites in zip(injections, self._sites):
            missing = sorted({name for name, _ in sites if not runtime.has_hook(model, name)})
            if missing:
                raise ValueError(f"{type(inj).__name__} needs hook(s) {missing[:3]} that this model "
                                 "does not have; check its layers and components.")
        self._dtype = runtime.model_dtype(model)
        self._d_model = runtime.d_model(model)
        self._amax = [float(inj.max_push()) for inj in injections]
        for i, inj in enumerate(injections):
            self._check_in_dtype(i, float(inj.strength))

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The interventions, in the order given (the same tuple as `injections`)."""
        return self.injections

    @property
    def names(self) -> list[str | None]:
        """Each injection's name (None where unnamed), in order."""
        return [inj.name for inj in self.injections]

    @property
    def layers(self) -> list[int]:
        """Sorted layers any injection writes to."""
        return sorted({layer for sites in self._sites for _, layer in sites})

    @property
    def hook_names(self) -> list[str]:
        """Sorted names of the hook points the interventions attach to."""
        return sorted({name for sites in self._sites for name, _ in sites})

    def index(self, key: int | str) -> int:
        """The position of an injection given its index or name.

        Args:
            key: an index in range, or an injection name.

        Returns:
            The index.

        Raises:
            ValueError: for an index out of range or an unknown name (the message lists names).
        """
        if isinstance(key, str):
            if key not in self.names:
                valid = [n for n in self.names if n is not None]
                raise ValueError(f"No injection named {key!r}; valid names are {valid}.")
            return self.names.index(key)
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(self.injections):
            raise ValueError(f"Injection index {key!r} out of range 0..{len(self.injections) - 1}.")
        return key

    def _check_in_dtype(self, index: int, strength: float) -> None:
        """Refuse a strength whose push the model cannot represent or normalise.

        Two limits: the steered entry itself must fit the model's dtype, and the final/block
        norms square and sum the residual (in float32 at least, as TransformerLens upcasts half
        precision there), so |entry| must stay below sqrt(max / d_model) or the norm's scale
        overflows and the output is garbage while still looking finite.
        """
        dtype = self._dtype
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        limit = min(float(torch.finfo(dtype).max),
                    math.sqrt(float(torch.finfo(wide).max) / self._d_model))
        push = abs(strength) * self._amax[index]
        if not push < limit:
            raise ValueError(
                f"Strength {strength:g} times the vector's largest entry ({self._amax[index]:.3g}) "
                f"is {push:.3g}, beyond the largest value a "
                f"{str(dtype).removeprefix('torch.')} model can carry and normalise here "
                f"({limit:.4g}): the steered activations would overflow to inf/NaN. Use a "
                "strength of a few times the residual norm at most."
            )

    def set_strength(self, key: int | str, strength: StrengthValue) -> None:
        """Change an injection's strength; takes effect at the next forward.

        A 1-D sequence gives one strength per batch row, which is how sweeps and the arena run
        several strengths in one forward (the batch must then have exactly that many rows).

        Args:
            key: the injection's index or name.
            strength: one finite strength, or one per batch row.

        Raises:
            ValueError: for an unknown key, a non-finite strength, one too large for the model's
                dtype, or an empty per-row sequence.
        """
        index = self.index(key)
        if isinstance(strength, (int, float)) and not isinstance(strength, bool):
            value = check_strength(strength)
            self._check_in_dtype(index, value)
            self.strengths[index] = value
            self._row_strengths.pop(index, None)
            return
        try:
            rows = torch.as_tensor(strength, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"A strength must be a number or a sequence of numbers, got "
                             f"{strength!r}.") from err
        if rows.numel() == 0 or not torch.isfinite(rows).all():
            raise ValueError("Per-row strengths must be a non-empty sequence of finite numbers.")
        self._check_in_dtype(index, float(rows.abs().max()))
        self.strengths[index] = 1.0
        self._row_strengths[index] = rows

    @contextlib.contextmanager
    def bound(self, batch: runtime.TokenBatch | None, offset: int = 0) -> Iterator[Steerer]:
        """Bind position modes to a batch's layout for the body of the block.

        Every steered forward runs inside this (see `steered_forward`); the binding is cleared on
        every exit path, so a later forward never sees a stale layout.

        Args:
            batch: the prompt batch (its width is the prompt boundary; its spans give "first").
            offset: absolute position of the first token fed (the KV-cache length when decoding).

        Yields:
            This steerer.
        """
        self.context.bind(batch, offset)
        if offset == 0:
            for bound in self._bound:
                bound.reset()
        try:
            yield self
        finally:
            self.context.bind(None)

    def hooks(self) -> list[tuple[str, object]]:
        """(hook name, hook function) pairs to attach, one per hook any intervention touches.

        Returns:
            The pairs, for `runtime.attached`; each hook applies its interventions in
            (order, index) order.
        """
        by_name: dict[str, list[tuple[int, int, int]]] = {}
        for i, inj in enumerate(self.injections):
            for name, layer in self._sites[i]:
                by_name.setdefault(name, []).append((inj.order, i, layer))
        return [(name, self._make_hook(name, sorted(entries)))
                for name, entries in by_name.items()]

    def scale(self, index: int, act: Tensor) -> float | Tensor:
        """The live strength of an intervention for a forward over `act`.

        Args:
            index: the intervention's index.
            act: the activation being edited ([batch, ...]).

        Returns:
            A float, or a [batch] tensor in act's dtype and device when per-row strengths are set.

        Raises:
            ValueError: if per-row strengths are set for another number of rows.
        """
        rows = self._row_strengths.get(index)
        if rows is None:
            return float(self.strengths[index])
        if rows.shape[0] != act.shape[0]:
            raise ValueError(
                f"{rows.shape[0]} per-row strengths set but the batch has {act.shape[0]} rows."
            )
        return rows.to(act.device, act.dtype)

    def _make_hook(self, name: str, entries: list[tuple[int, int, int]]):
        def hook(act: Tensor, hook) -> Tensor:
            for _, i, layer in entries:
                bound = self._bound[i]
                if bound.skip_at_zero and float(self.strengths[i]) == 0.0:
                    continue
                scale = self.scale(i, act)
                mask = position_mask(self.injections[i], self.context, act.shape[0],
                                     act.shape[1], act.device)
                if mask is not None:
                    mask = mask.to(act.dtype)
                act = bound.apply(act, layer, name, scale, mask, self.context)
            return act

        return hook


def _named(vectors) -> Mapping[str, Any] | None:
    if isinstance(vectors, SteeringVectorSet):
        return dict(vectors.items())
    if isinstance(vectors, Mapping):
        return dict(vectors)
    return None


def _as_injections(vectors, strength: float | None,
                   positions: PositionMode) -> list[Intervention]:
    default = 1.0 if strength is None else strength
    named = _named(vectors)
    if named is not None:
        out = []
        for name, vec in named.items():
            if isinstance(name, str) and isinstance(vec, Intervention):
                out.append(replace(vec, name=name))
                continue
            if not isinstance(name, str) or not isinstance(vec, SteeringVector):
                raise ValueError("A dict of vectors must map names (str) to SteeringVectors (or "
                                 f"Interventions); got {type(name).__name__} -> "
                                 f"{type(vec).__name__}.")
            out.append(Injection(vec, default, positions, name=name))
        return out
    if isinstance(vectors, SteeringVector):
        return [Injection(vectors, default, positions)]
    if isinstance(vectors, Intervention):
        return [vectors]
    if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Sequence):
        raise ValueError(
            "steer() takes a SteeringVector, an Intervention (Injection, Ablation, ...), a "
            "SteeringVectorSet or dict name -> vector, or a list of vectors, Interventions or "
            f"(vector, strength) pairs; got {type(vectors).__name__}."
        )
    out = []
    for item in vectors:
        if isinstance(item, Intervention):
            out.append(item)
        elif isinstance(item, SteeringVector):
            out.append(Injection(item, default, positions))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], SteeringVector):
            out.append(Injection(item[0], item[1], positions))
        else:
            raise ValueError(
                "steer() takes a SteeringVector, an Intervention (Injection, Ablation, ...), or a "
                f"list of those or of (vector, strength) tuples; got {type(item).__name__}."
            )
    return out


@contextlib.contextmanager
def steer(
    model: Model,
    vectors,
    strength: float | None = None,
    positions: PositionMode = "all",
    *,
    strengths: Mapping[str, StrengthValue] | None = None,
) -> Iterator[Steerer]:
    """Steer `model` inside the block (add vectors, ablate directions, ...); hooks always removed.

    Any `Intervention` can be passed (an `Injection`, an `Ablation`, a `FeatureClamp`, ...), alone
    or in a list with others; at each hook they apply in a fixed order: ablations first, then
    clamps, head edits and additions last (see `steerlens.interventions`).

    Args:
        model: the model to steer.
        vectors (SteeringVector | Intervention | SteeringVectorSet | Mapping | list): a
            SteeringVector; an Intervention (e.g. an Injection); a SteeringVectorSet or dict
            name -> vector or Intervention (named); or a list of vectors, Interventions or
            (vector, strength) pairs.
        strength: strength for vectors given without one (default 1.0).
        positions: where the vectors are written (for vectors given without an Injection).
        strengths: per-name strengths for named vectors; a value may be one number or one per
            batch row. Names left out use `strength`.

    Yields:
        The `Steerer`, whose `set_strength(index_or_name, value)` changes strengths live.

    Raises:
        ValueError: for an unsupported `vectors`, a vector built for another model, a non-finite
            strength, or a name in `strengths` that is not among the vectors.

    Example:
        >>> with sl.steer(model, vec.layer(10), strength=4.0) as s:  # doctest: +SKIP
        ...     logits = model("Tell me about your weekend.")
        >>> vset = sl.SteeringVectorSet({"formal": f, "happy": h})  # doctest: +SKIP
        >>> with sl.steer(model, vset, strengths={"formal": 2.0, "happy": 0.0}) as s:  # doctest: +SKIP
        ...     s.set_strength("happy", [0.0, 4.0])                  # per batch row
    """
    steerer = Steerer(model, _as_injections(vectors, strength, positions))
    if strengths is not None:
        if not isinstance(strengths, Mapping):
            raise ValueError(f"strengths must be a dict name -> strength, got "
                             f"{type(strengths).__name__}.")
        for name, value in strengths.items():
            steerer.set_strength(name, value)
    with runtime.attached(model, steerer.hooks()):
        yield steerer


def steered_forward(
    model: Model,
    batch: runtime.TokenBatch,
    steerer: Steerer | None = None,
    *,
    feed: runtime.TokenBatch | None = None,
    offset: int = 0,
    kv_cache=None,
    stop_at_layer: int | None = None,
    return_type: str | None = "logits",
    last_only: bool = False,
) -> Tensor:
    """The one steered forward pass: `runtime.forward` with `steerer` bound to the batch.

    Args:
        model: the model (steering hooks already attached by an enclosing `steer()`).
        batch: the prompt batch; its layout defines "prompt", "first" and "last".
        steerer: the active steerer, or None for an unsteered pass.
        feed: the tokens to run when they differ from `batch` (one new token per row while
            decoding with a KV cache); default `batch`.
        offset: absolute position of the first token fed (non-zero when decoding with a cache).
        kv_cache (TransformerLensKeyValueCache | None): a KV cache from `runtime.new_kv_cache`,
            or None.
        stop_at_layer: stop before this block and return its input residual (with
            `return_type=None`).
        return_type: "logits" or None (the residual at `stop_at_layer`).
        last_only: unembed only the last position (what decoding needs); hooks still see every
            position.

    Returns:
        Logits [batch, pos, d_vocab] ([batch, 1, d_vocab] with `last_only`), or the residual
        stream when `return_type` is None.
    """
    feed = batch if feed is None else feed
    binding = contextlib.nullcontext() if steerer is None else steerer.bound(batch, offset)
    with binding:
        return runtime.forward(model, feed, kv_cache=kv_cache, stop_at_layer=stop_at_layer,
                               return_type=return_type, last_only=last_only)
