"""Settings that travel together, as frozen, validated config objects.

Decoding settings are one `GenerationConfig` (used by `generate`, `generate_stream`, the
diversity and change measures, sweeps and the arena) and a sweep's grid is one `SweepConfig`.
Each is validated once, in `__post_init__`, with a ValueError that names the bad field and what is
valid, and round-trips through plain dicts (`to_dict` / `from_dict`), which is how a sweep's
settings are written to its results directory and read back by `load_sweep`. Functions that take a
config also take its fields as keyword overrides (`generate(..., max_new_tokens=30)`), resolved by
`resolve_generation` / `SweepConfig.from_settings`, so short calls stay short.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .checks import check_choice

POSITION_MODES: tuple[str, ...] = ("all", "prompt", "generated", "first", "last")
"""Where steering vectors are written (`positions=`); see the glossary."""

READ_AT: tuple[str, ...] = ("last", "first", "mean", "all")
"""Where activations are read during extraction (`read_at=`); see the glossary."""

SWEEP_MEASURES: tuple[str, ...] = ("kl", "generate")
"""What a sweep computes per cell: next-token KL, and optionally a greedy continuation."""


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _unknown(cls: type, data: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - names)
    if extra:
        raise ValueError(f"Unknown {cls.__name__} field(s) {extra}; valid fields are {sorted(names)}.")


def check_position_mode(positions: str) -> str:
    """Return `positions` if it is a valid steering position mode.

    Args:
        positions: where vectors are written, one of `POSITION_MODES`.

    Returns:
        The same string.

    Raises:
        ValueError: if it is not one of `POSITION_MODES`.
    """
    return check_choice(positions, POSITION_MODES, "positions")


class _DictConfig:
    """`replace` and `from_dict` shared by the frozen config dataclasses."""

    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again).

        Args:
            **changes: field names and new values.

        Returns:
            The new config.

        Raises:
            ValueError: for an unknown field or an invalid value.
        """
        _unknown(type(self), changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Rebuild a config from `to_dict()` output (e.g. a results directory's sweep.json).

        Args:
            data: a mapping of field names to values.

        Returns:
            The validated config.

        Raises:
            ValueError: for a non-mapping, unknown fields or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}.")
        _unknown(cls, data)
        return cls(**dict(data))


@dataclass(frozen=True)
class GenerationConfig(_DictConfig):
    """How to decode: length, sampling and caching settings, validated on construction.

    Attributes:
        max_new_tokens: most tokens to generate per prompt (>= 1).
        temperature: 0 is greedy; > 0 samples from softmax(logits / temperature).
        top_k: keep only the k most likely tokens when sampling (None: all).
        top_p: nucleus sampling mass in (0, 1] (None: off).
        seed: seed of the sampling generator, so (seed, settings) reproduces samples.
        use_kv_cache: decode with a KV cache (same tokens as without; faster).
        stop_at_eos: stop a row at EOS or the chat end-of-turn token.

    Example:
        >>> cfg = GenerationConfig(max_new_tokens=20, temperature=0.7, seed=1)
        >>> cfg.replace(temperature=0.0).temperature
        0.0
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    use_kv_cache: bool = True
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}.")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (0.0 <= t < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}.")
        object.__setattr__(self, "temperature", float(t))
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {self.top_k!r}.")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, numbers.Real)
                              or not 0.0 < p <= 1.0):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {p!r}.")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}.")
        for name in ("use_kv_cache", "stop_at_eos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax (temperature 0)."""
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (inverse of `from_dict`).

        Returns:
            A plain dict of the fields.
        """
        return dataclasses.asdict(self)


def resolve_generation(config: GenerationConfig | None, settings: Mapping[str, Any],
                       default: GenerationConfig | None = None) -> GenerationConfig:
    """One GenerationConfig from an optional config plus keyword overrides.

    Args:
        config: a base config, or None for `default` (or the defaults).
        settings: field overrides, e.g. {"max_new_tokens": 30}.
        default: the base when `config` is None.

    Returns:
        The validated config.

    Raises:
        ValueError: if `config` is not a GenerationConfig, or an override is unknown or invalid.
    """
    if config is None:
        config = default if default is not None else GenerationConfig()
    if not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}.")
    return config.replace(**settings) if settings else config


def _as_tuple(values: Any, what: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    out = tuple(values)
    if not out:
        raise ValueError(f"The sweep grid is empty: no {what} were given.")
    return out


@dataclass(frozen=True)
class SweepConfig(_DictConfig):
    """A sweep's grid and settings: what determines every cell's value (except the data).

    Attributes:
        layers: layers to steer at (each vector must have a direction there).
        strengths: strengths to apply (finite, distinct; 0 is the unsteered baseline).
        measures: "kl" (always computed) and optionally "generate" (greedy continuations).
        scorer: a scorer spec for generated text (`measures.get_scorer`), or None.
        generation: decoding settings for "generate" (greedy; max_new_tokens matters).
        n_random: norm-matched random directions per real vector (the random control).
        random_seed: seed of the first random direction.
        positions: where vectors are written (see `POSITION_MODES`).
        chat: chat-template prompts; None = auto (on for instruct models with a template).

    Example:
        >>> cfg = SweepConfig(layers=[4, 8], strengths=[0, 2, 4], n_random=20)
        >>> SweepConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    # Inputs may be any iterable (or one value); they are stored as tuples after validation.
    layers: Iterable[numbers.Real] | numbers.Real
    strengths: Iterable[numbers.Real] | numbers.Real
    measures: Iterable[str] | str = ("kl",)
    scorer: str | None = None
    generation: GenerationConfig | Mapping[str, Any] = field(
        default_factory=lambda: GenerationConfig(max_new_tokens=24))
    n_random: int = 0
    random_seed: int = 0
    positions: str = "all"
    chat: bool | None = None

    def __post_init__(self) -> None:
        layers = _as_tuple(self.layers, "layers")
        if not all(_is_int(x) and x >= 0 for x in layers):
            raise ValueError(f"Layers must be non-negative ints (valid layers are the ints "
                             f"0..n_layers-1), got {list(layers)}.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"Layers must not repeat, got {list(layers)}.")
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))
        strengths = _as_tuple(self.strengths, "strengths")
        if not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in strengths):
            raise ValueError(f"Strengths must be numbers, got {list(strengths)}.")
        fs = tuple(float(s) for s in strengths)
        if not all(math.isfinite(s) for s in fs):
            raise ValueError(f"Strengths must be finite, got {list(fs)}.")
        if len(set(fs)) != len(fs):
            raise ValueError(f"Strengths must not repeat, got {list(fs)}.")
        object.__setattr__(self, "strengths", fs)
        measures = _as_tuple(self.measures, "measures")
        bad = [m for m in measures if m not in SWEEP_MEASURES]
        if bad:
            raise ValueError(f"Unknown measure(s) {bad}; valid measures are {list(SWEEP_MEASURES)}.")
        object.__setattr__(self, "measures", tuple(m for m in SWEEP_MEASURES
                                                   if m in measures or m == "kl"))
        if self.scorer is not None and not isinstance(self.scorer, str):
            raise ValueError("SweepConfig.scorer must be a string label or spec (JSON) or None; "
                             "pass a scorer callable to sweep(scorer=...).")
        if self.scorer is not None and "generate" not in self.measures:
            raise ValueError("A scorer needs generated text: pass measures=('kl', 'generate').")
        if isinstance(self.generation, Mapping):
            object.__setattr__(self, "generation", GenerationConfig.from_dict(self.generation))
        if not isinstance(self.generation, GenerationConfig):
            raise ValueError("SweepConfig.generation must be a GenerationConfig, got "
                             f"{type(self.generation).__name__}.")
        if not self.generation.greedy:
            raise ValueError("Sweeps generate greedily (change = greedy text differs); use "
                             "temperature=0 in SweepConfig.generation.")
        if not _is_int(self.n_random) or self.n_random < 0:
            raise ValueError(f"n_random must be an int >= 0, got {self.n_random!r}.")
        if not _is_int(self.random_seed) or self.random_seed < 0:
            raise ValueError(f"random_seed must be an int >= 0, got {self.random_seed!r}.")
        check_position_mode(self.positions)
        if self.chat is not None and not isinstance(self.chat, bool):
            raise ValueError(f"chat must be True, False or None (auto), got {self.chat!r}.")

    @property
    def generate(self) -> bool:
        """Whether the sweep generates text (measures include "generate")."""
        return "generate" in self.measures

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (inverse of `from_dict`).

        Returns:
            A plain dict; `generation` is nested as its own dict.
        """
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        out["strengths"] = list(self.strengths)
        out["measures"] = list(self.measures)
        out["generation"] = self.generation.to_dict()
        return out

    @classmethod
    def from_settings(cls, config: SweepConfig | None, settings: Mapping[str, Any]) -> SweepConfig:
        """One SweepConfig from an optional config plus keyword overrides.

        `max_new_tokens` is accepted as a shortcut for `generation.max_new_tokens`.

        Args:
            config: a base config, or None (then `layers` and `strengths` must be in `settings`).
            settings: field overrides.

        Returns:
            The validated config.

        Raises:
            ValueError: for a missing axis, an unknown field or an invalid value.
        """
        settings = dict(settings)
        mnt = settings.pop("max_new_tokens", None)
        if config is None:
            missing = [k for k in ("layers", "strengths") if k not in settings]
            if missing:
                raise ValueError(f"sweep() needs {missing}: pass a SweepConfig or layers=... and "
                                 "strengths=....")
            _unknown(cls, settings)
            config = cls(**settings)
        elif not isinstance(config, SweepConfig):
            raise ValueError(f"config must be a SweepConfig, got {type(config).__name__}.")
        elif settings:
            config = config.replace(**settings)
        if mnt is not None:
            config = config.replace(generation=config.generation.replace(max_new_tokens=mnt))
        return config


def to_json(obj: GenerationConfig | SweepConfig) -> str:
    """Canonical JSON of a config (sorted keys), e.g. for hashing or display.

    Args:
        obj: a config object.

    Returns:
        The JSON text.
    """
    return json.dumps(obj.to_dict(), sort_keys=True)
