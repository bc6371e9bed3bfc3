"""The grid a sweep runs over, validated up front, and the fingerprint that guards resuming.

A sweep is the product vectors x layers x strengths x prompts. `make_spec` checks every axis
before any model work starts (empty axes, non-finite or repeated strengths, layers a vector was
not built for, unknown measures or position modes) and raises a ValueError that names the bad
value and what is valid. It also adds the random-direction controls (`control.py`) as ordinary
vectors of the grid. `fingerprint` reduces the settings that determine a cell's value (model,
vector contents, grid, measures, generation settings) to a JSON dict; a results directory records
it, and a rerun resumes only when its fingerprint is identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backend import runtime
from ..extract import resolve_chat
from ..generate import check_generation_args
from ..steer import POSITION_MODES
from ..vectors import SteeringVector, SteeringVectorSet
from .control import RANDOM_PREFIX, random_controls

MEASURES: tuple[str, ...] = ("kl", "generate")
FORMAT = 1


@dataclass(frozen=True)
class SweepSpec:
    """A validated grid: named vectors (real ones first, then random controls) and the axes."""

    vectors: Mapping[str, SteeringVector]
    control_for: Mapping[str, str]  # vector name -> the real vector it belongs to (itself if real)
    layers: tuple[int, ...]
    strengths: tuple[float, ...]
    prompts: tuple[str, ...]
    generate: bool
    scorer: str | None
    max_new_tokens: int
    positions: str
    chat: bool
    n_random: int
    random_seed: int

    @property
    def names(self) -> list[str]:
        return list(self.vectors)

    @property
    def n_cells(self) -> int:
        return len(self.vectors) * len(self.layers) * len(self.strengths) * len(self.prompts)

    def is_random(self, name: str) -> bool:
        return self.control_for[name] != name

    def fingerprint(self, model) -> dict[str, Any]:
        """JSON-able settings that determine every cell's value."""
        real = {n: _vector_hash(v) for n, v in self.vectors.items() if not self.is_random(n)}
        return {
            "format": FORMAT,
            "model": runtime.model_id(model),
            "n_layers": runtime.n_layers(model),
            "d_model": runtime.d_model(model),
            "vectors": real,
            "layers": list(self.layers),
            "strengths": list(self.strengths),
            "prompts": list(self.prompts),
            "measures": ["kl", "generate"] if self.generate else ["kl"],
            "scorer": self.scorer,
            "max_new_tokens": self.max_new_tokens if self.generate else None,
            "positions": self.positions,
            "chat": self.chat,
            "n_random": self.n_random,
            "random_seed": self.random_seed,
        }


def _vector_hash(vec: SteeringVector) -> str:
    h = hashlib.sha256(vec.component.encode())
    for layer, t in vec.directions.items():
        h.update(str(layer).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def scorer_label(scorer) -> str | None:
    """How a scorer is recorded in the fingerprint (a callable by its qualified name)."""
    if scorer is None:
        return None
    if isinstance(scorer, Mapping):
        return json.dumps(dict(scorer), sort_keys=True)
    if isinstance(scorer, str):
        return scorer
    mod = getattr(scorer, "__module__", "") or ""
    name = getattr(scorer, "__qualname__", None) or type(scorer).__qualname__
    return f"callable:{mod}.{name}"


def _check_vectors(model, vectors) -> dict[str, SteeringVector]:
    if isinstance(vectors, SteeringVector):
        vectors = {"vector": vectors}
    if isinstance(vectors, SteeringVectorSet):
        vectors = dict(vectors.items())
    if not isinstance(vectors, Mapping):
        raise ValueError(
            "vectors must be a SteeringVector, a SteeringVectorSet or a dict name -> "
            "SteeringVector, got "
            f"{type(vectors).__name__}."
        )
    if not vectors:
        raise ValueError("The sweep grid is empty: no vectors were given.")
    out = {}
    for name, vec in vectors.items():
        if not isinstance(name, str) or not name or "\n" in name:
            raise ValueError(f"Vector names must be non-empty one-line strings, got {name!r}.")
        if name.startswith(RANDOM_PREFIX):
            raise ValueError(
                f"Vector name {name!r} starts with {RANDOM_PREFIX!r}, which is reserved for the "
                "random-direction controls; use n_random=... to add those."
            )
        if not isinstance(vec, SteeringVector):
            raise ValueError(f"vectors[{name!r}] must be a SteeringVector, got {type(vec).__name__}.")
        vec.check_model(model)
        out[name] = vec
    return out


def _check_layers(model, layers, vectors: Mapping[str, SteeringVector]) -> tuple[int, ...]:
    if isinstance(layers, numbers.Integral):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("The sweep grid is empty: no layers were given.")
    n = runtime.n_layers(model)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < n:
            raise ValueError(f"Layer {layer!r} is not a layer of this model: valid layers are "
                             f"the ints 0..{n - 1}.")
    layers = [int(layer) for layer in layers]
    if len(set(layers)) != len(layers):
        raise ValueError(f"Layers must not repeat, got {layers}.")
    for name, vec in vectors.items():
        missing = [layer for layer in layers if layer not in vec.directions]
        if missing:
            raise ValueError(
                f"Vector {name!r} was not built for layer(s) {missing}; its layers are "
                f"{vec.layers}. Sweep only those layers or build the vector at these."
            )
    return tuple(layers)


def _check_strengths(strengths) -> tuple[float, ...]:
    if isinstance(strengths, (int, float)):
        strengths = [strengths]
    try:
        vals = [float(s) for s in strengths]
    except (TypeError, ValueError) as err:
        raise ValueError(f"strengths must be a sequence of numbers ({err}).") from err
    if not vals:
        raise ValueError("The sweep grid is empty: no strengths were given.")
    bad = [s for s in vals if not math.isfinite(s)]
    if bad:
        raise ValueError(f"Strengths must be finite numbers; got {bad} in {vals}.")
    if len(set(vals)) != len(vals):
        raise ValueError(f"Strengths must not repeat, got {vals}.")
    return tuple(vals)


def _check_prompts(prompts) -> tuple[str, ...]:
    if isinstance(prompts, str):
        prompts = [prompts]
    items = list(prompts)
    if not items:
        raise ValueError("The sweep grid is empty: no prompts were given.")
    for i, p in enumerate(items):
        if not isinstance(p, str) or not p:
            raise ValueError(f"prompts[{i}] must be a non-empty string, got {p!r}.")
    return tuple(items)


def _check_measures(measures) -> bool:
    if isinstance(measures, str):
        measures = [measures]
    items = list(measures)
    bad = [m for m in items if m not in MEASURES]
    if bad or not items:
        raise ValueError(
            f"Unknown or missing measures {bad or items}; valid measures are {list(MEASURES)} "
            "('kl' is always computed; 'generate' adds text, changed, score and perplexity)."
        )
    return "generate" in items


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def make_spec(
    model,
    vectors,
    layers,
    strengths,
    prompts,
    *,
    measures,
    scorer,
    max_new_tokens: int,
    n_random: int,
    random_seed: int,
    positions: str,
    chat: bool | None,
) -> SweepSpec:
    """Validate every axis and setting; add the random controls."""
    real = _check_vectors(model, vectors)
    layer_t = _check_layers(model, layers, real)
    strength_t = _check_strengths(strengths)
    prompt_t = _check_prompts(prompts)
    gen = _check_measures(measures)
    if positions not in POSITION_MODES:
        raise ValueError(f"Unknown positions {positions!r}; valid modes are {list(POSITION_MODES)}.")
    _check_count(n_random, "n_random", 0)
    _check_count(random_seed, "random_seed", 0)
    if scorer is not None and not gen:
        raise ValueError("A scorer needs generated text: pass measures=('kl', 'generate').")
    if gen:
        check_generation_args(max_new_tokens, 0.0, None, None)
    controls = random_controls(real, layer_t, n_random, random_seed)
    allv = {n: v.select(layer_t) for n, v in real.items()}
    allv.update({n: v for n, (v, _) in controls.items()})
    control_for = {n: n for n in real}
    control_for.update({n: owner for n, (_, owner) in controls.items()})
    return SweepSpec(
        vectors=allv,
        control_for=control_for,
        layers=layer_t,
        strengths=strength_t,
        prompts=prompt_t,
        generate=gen,
        scorer=scorer_label(scorer),
        max_new_tokens=int(max_new_tokens),
        positions=positions,
        chat=resolve_chat(model, chat, True),
        n_random=n_random,
        random_seed=random_seed,
    )

