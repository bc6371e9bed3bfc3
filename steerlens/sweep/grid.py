"""The grid a sweep runs over, validated up front, and the fingerprint that guards resuming.

A sweep is the product vectors x layers x strengths x prompts. Its settings are one public
`SweepConfig` (`steerlens.config`); `make_grid` checks them against the model and the data before
any model work starts (layers a vector was not built for, layers out of range, empty prompts) and
raises a ValueError that names the bad value and what is valid. It also adds the random-direction
controls (`control.py`) as ordinary vectors of the grid. `SweepGrid.fingerprint` is what a results
directory records: the config's own `to_dict()` (with `chat` resolved) plus the identity of the
data (model, vector hashes, prompts). A rerun resumes only when its fingerprint is identical, and
`load_sweep` rebuilds the grid from it without the model.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backend import Model, runtime
from ..config import SweepConfig
from ..extract import resolve_chat
from ..vectors import SteeringVector, SteeringVectorSet
from .control import RANDOM_PREFIX, control_names, random_controls

FORMAT = 2


@dataclass(frozen=True)
class SweepGrid:
    """A validated grid: the config (chat resolved), named vectors and prompts.

    `names` lists real vectors first, then random controls; `control_for` maps each name to the
    real vector it belongs to (itself if real). `vectors` is None for a grid reloaded from disk.
    """

    config: SweepConfig
    names: tuple[str, ...]
    control_for: Mapping[str, str]
    prompts: tuple[str, ...]
    vectors: Mapping[str, SteeringVector] | None = None

    @property
    def layers(self) -> tuple[int, ...]:
        """The swept layers."""
        return self.config.layers

    @property
    def strengths(self) -> tuple[float, ...]:
        """The swept strengths."""
        return self.config.strengths

    @property
    def generate(self) -> bool:
        """Whether any measure needs generated continuations."""
        return self.config.generate

    @property
    def positions(self) -> str:
        """Where the vectors are written."""
        return self.config.positions

    @property
    def chat(self) -> bool:
        """Whether prompts are chat-templated (resolved at grid creation)."""
        return bool(self.config.chat)

    @property
    def n_cells(self) -> int:
        """Number of (vector, layer, strength, prompt) cells, controls included."""
        return len(self.names) * len(self.layers) * len(self.strengths) * len(self.prompts)

    def is_random(self, name: str) -> bool:
        """Whether a grid vector is a random control.

        Args:
            name: a name from `names`.

        Returns:
            True for a random control.
        """
        return self.control_for[name] != name

    def fingerprint(self, model: Model) -> dict[str, Any]:
        """JSON-able identity of every cell's value: data identity plus the config's dict.

        Args:
            model: the model the sweep runs on.

        Returns:
            The fingerprint a results directory records.

        Raises:
            ValueError: for a grid reloaded from disk (it has no vectors).
        """
        if self.vectors is None:
            raise ValueError("A grid reloaded from disk has no vectors to fingerprint.")
        real = {n: _vector_hash(self.vectors[n]) for n in self.names if not self.is_random(n)}
        return {
            "format": FORMAT,
            "model": runtime.model_id(model),
            "n_layers": runtime.n_layers(model),
            "d_model": runtime.d_model(model),
            "vectors": real,
            "prompts": list(self.prompts),
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_fingerprint(cls, data: Mapping[str, Any]) -> SweepGrid:
        """Rebuild the grid (without vectors) from a fingerprint, for `load_sweep`.

        Args:
            data: a fingerprint (format 1 or 2).

        Returns:
            The grid, with `vectors` None.

        Raises:
            ValueError: when the fingerprint is malformed.
        """
        data = upgrade_fingerprint(data)
        config = SweepConfig.from_dict(data["config"])
        real = [str(n) for n in data["vectors"]]
        control = control_names(real, config.n_random, config.random_seed)
        return cls(config, tuple(real) + tuple(control), {**{n: n for n in real}, **control},
                   tuple(str(p) for p in data["prompts"]))


def upgrade_fingerprint(data: Mapping[str, Any]) -> dict[str, Any]:
    """A format-2 fingerprint from a format-1 one (steerlens 0.1 sweeps), else `data` unchanged.

    Args:
        data: a fingerprint.

    Returns:
        The format-2 fingerprint.

    Raises:
        ValueError: for an unknown format or missing keys.
    """
    data = dict(data)
    fmt = data.get("format")
    if fmt == FORMAT:
        return data
    if fmt != 1:
        raise ValueError(f"Unknown sweep format {fmt!r}; this steerlens reads formats 1 and {FORMAT}.")
    try:
        mnt = data.get("max_new_tokens")
        config = SweepConfig(
            layers=data["layers"], strengths=data["strengths"], measures=data["measures"],
            scorer=data.get("scorer"), n_random=data["n_random"],
            random_seed=data["random_seed"], positions=data["positions"], chat=data["chat"],
            **({"generation": {"max_new_tokens": mnt}} if mnt is not None else {}))
    except KeyError as err:
        raise ValueError(f"A format-1 sweep fingerprint lacks {err}.") from err
    return {"format": FORMAT, "model": data["model"], "n_layers": data["n_layers"],
            "d_model": data["d_model"], "vectors": data["vectors"], "prompts": data["prompts"],
            "config": config.to_dict()}


def _vector_hash(vec: SteeringVector) -> str:
    h = hashlib.sha256(vec.component.encode())
    for layer, t in vec.directions.items():
        h.update(str(layer).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def scorer_label(scorer) -> str | None:
    """How a scorer is recorded in the fingerprint (a callable by its qualified name).

    Args:
        scorer (str | Mapping | Callable | None): the sweep's scorer.

    Returns:
        A stable string, or None without a scorer.
    """
    if scorer is None:
        return None
    if isinstance(scorer, Mapping):
        return json.dumps(dict(scorer), sort_keys=True)
    if isinstance(scorer, str):
        return scorer
    mod = getattr(scorer, "__module__", "") or ""
    name = getattr(scorer, "__qualname__", None) or type(scorer).__qualname__
    return f"callable:{mod}.{name}"


def _check_vectors(model: Model, vectors) -> dict[str, SteeringVector]:
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


def _check_layers(model: Model, layers, vectors: Mapping[str, SteeringVector]) -> tuple[int, ...]:
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


def make_grid(model: Model, vectors, prompts, config: SweepConfig) -> SweepGrid:
    """Validate vectors, prompts and the config against the model; add the random controls.

    Args:
        model: the model.
        vectors (SteeringVector | SteeringVectorSet | Mapping[str, SteeringVector]): a
            SteeringVector, a SteeringVectorSet or a dict name -> SteeringVector.
        prompts (str | Sequence[str]): one prompt or a list.
        config: the sweep's settings.

    Returns:
        The `SweepGrid` (chat resolved for this model).

    Raises:
        ValueError: for bad vectors, layers the vectors lack or the model lacks, or bad prompts.
    """
    real = _check_vectors(model, vectors)
    layers = _check_layers(model, config.layers, real)
    prompt_t = _check_prompts(prompts)
    config = config.replace(chat=resolve_chat(model, config.chat, True))
    controls = random_controls(real, layers, config.n_random, config.random_seed)
    allv = {n: v.select(list(layers)) for n, v in real.items()}
    allv.update({n: v for n, (v, _) in controls.items()})
    control_for = {n: n for n in real}
    control_for.update({n: owner for n, (_, owner) in controls.items()})
    return SweepGrid(config, tuple(allv), control_for, prompt_t, allv)
