"""The Intervention protocol: one description type for everything `steer()` can do to activations.

An intervention is a frozen dataclass describing an edit of activations at some hook sites (add a
vector, project a direction out, clamp SAE features, edit a head, gate another intervention). Each
kind subclasses `Intervention`, declares its own fields followed by the five common ones
(`strength`, `positions`, `start_step`, `stop_step`, `name`, in that order, with the same
defaults), and implements `check_model`, `sites`, `bind` and `max_push`. `bind(model)` returns a
`BoundIntervention` holding the device/dtype tensors; its `apply(act, layer, hook_name, scale,
mask, context)` returns the edited activation. The `Steerer` in `steerlens.steer` groups the
bound interventions by hook name and applies them at each hook in the documented order, the kind's
`order` class variable (gate reads -1, ablations 0, clamps 1, head edits 2, additions 3), ties in
the order the user listed them. Strength and position semantics are shared by every kind: the
`scale` passed to `apply` is the live strength (one float, or a [batch] tensor for per-row
strengths), and `mask` is the [batch, pos] 0/1 mask of the positions this forward may edit (None:
all), computed by `position_mask` from the position mode and the schedule window exactly as for
additive steering, so every kind is KV-cache exact. Interventions save and load with
`save_intervention` / `load_intervention` (a safetensors file of tensors plus a JSON file of
fields, written together crash-safely, no pickle); each kind registers itself by its `kind` name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._version import __version__
from ..backend import Model, runtime
from ..config import check_position_mode
from ..io import commit_entries, read_bounded, resolve_entry, resolve_path
from ..vectors import SteeringVector

COMMON_FIELDS: tuple[str, ...] = ("strength", "positions", "start_step", "stop_step", "name")
ORDERS: dict[str, int] = {"read": -1, "ablate": 0, "clamp": 1, "head": 2, "add": 3}
INTERVENTION_FILE = "intervention.safetensors"
INTERVENTION_META = "intervention.json"
INTERVENTION_FORMAT = 1
MAX_META_BYTES = 1 << 20
# kind -> module that defines it, so `load_intervention` can import a kind on first use
KIND_MODULES: dict[str, str] = {
    "add": "steerlens.steer",
    "ablate": "steerlens.interventions.ablation",
    "clamp": "steerlens.interventions.clamp",
    "head_add": "steerlens.interventions.heads",
    "head_ablate": "steerlens.interventions.heads",
    "conditional": "steerlens.interventions.conditional",
}
_REGISTRY: dict[str, type[Intervention]] = {}


class InterventionFileError(ValueError):
    """A saved intervention is missing, corrupt, of an unknown kind or inconsistent."""


def check_strength(strength: float) -> float:
    """Return `strength` as a float if it is finite.

    Args:
        strength: a steering strength.

    Returns:
        The strength as a Python float.

    Raises:
        ValueError: if it is not a finite number.
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ValueError(f"Steering strength must be a finite number, got {strength!r}.")
    s = float(strength)
    if not math.isfinite(s):
        raise ValueError(f"Steering strength must be a finite number, got {strength!r}.")
    return s


class PositionContext:
    """What the hooks need to place positions: the forward's offset and the prompt layout.

    Bound by `Steerer.bound`; with nothing bound, the whole current input counts as prompt,
    "first" is position 0 and "last" is the final position of the input.
    """

    def __init__(self) -> None:
        self.offset = 0
        self.prompt_width: int | None = None
        self.first: Tensor | None = None

    def bind(self, batch: runtime.TokenBatch | None, offset: int = 0) -> None:
        """Set (or with None, clear) the layout; prefer `Steerer.bound`, which also clears it.

        Args:
            batch: the prompt batch being run, or None to unbind.
            offset: absolute position of the forward's first token (KV-cached decoding).
        """
        if batch is None:
            self.prompt_width, self.first = None, None
        else:
            self.prompt_width = int(batch.tokens.shape[1])
            self.first = batch.span_start
        self.offset = offset


class BoundIntervention:
    """An intervention bound to one model: its tensors on the model's device and dtype.

    Subclasses implement `apply`; `reset` clears per-batch state (the default has none).
    `skip_at_zero` tells the steerer it may skip `apply` when the live strength is exactly 0
    (true for every pure edit; a kind that must observe activations even at strength 0, such as a
    gate that reads the prompt, sets it False).
    """

    skip_at_zero: bool = True

    def apply(self, act: Tensor, layer: int, hook_name: str, scale: float | Tensor,
              mask: Tensor | None, context: PositionContext) -> Tensor:
        """The edited activation at one hook (must not modify `act` in place).

        Args:
            act: the activation at the hook, [batch, pos, ...].
            layer: the layer of the hook (as listed by the intervention's `sites`).
            hook_name: the hook's name (as listed by `sites`), for kinds with several sites.
            scale: the live strength: a float, or a [batch] tensor (act's dtype and device) when
                per-row strengths are set.
            mask: None (edit every position) or a [batch, pos] 0/1 tensor in act's dtype.
            context: the bound `PositionContext` (offset, prompt width, first positions).

        Returns:
            The new activation, same shape and dtype as `act`.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Forget per-batch state; called on every forward that starts at position 0."""


class Intervention:
    """Base of every intervention description (subclasses are frozen dataclasses).

    A subclass declares its own fields, then the common fields in this order and with these
    defaults: `strength: float = 1.0`, `positions: str = "all"`, `start_step: int = 0`,
    `stop_step: int | None = None`, `name: str | None = None`; sets the class variables `kind`
    (its registry name) and `order` (see `ORDERS`); calls `self.check_common()` in
    `__post_init__`; and implements `check_model`, `sites`, `bind`, `max_push`, and for saving
    `to_dict` (JSON-ready own fields; the common ones are added by `save_intervention`),
    `tensors` and `from_saved`.

    Attributes:
        kind: the registry name ("add", "ablate", "clamp", ...).
        order: application order at one hook (lower first).
    """

    kind: ClassVar[str] = ""
    order: ClassVar[int] = 3

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            _REGISTRY[kind] = cls

    # ---------------------------------------------------------------- common fields
    def check_common(self) -> None:
        """Validate the common fields (strength, positions, schedule window, name).

        Raises:
            ValueError: for a non-finite strength, an unknown position mode, an empty or negative
                schedule window, or a name that is not a non-empty string.
        """
        check_strength(self.strength)
        check_position_mode(self.positions)
        what = type(self).__name__
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"{what}.name must be a non-empty string or None, got {self.name!r}.")
        for key in ("start_step", "stop_step"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{what}.{key} must be an int, got {v!r}.")
        if self.start_step < 0 or (self.stop_step is not None and self.stop_step <= self.start_step):
            raise ValueError(
                f"Schedule window [{self.start_step}, {self.stop_step}) is empty or negative; "
                "start_step must be >= 0 and stop_step None or > start_step."
            )

    @property
    def scheduled(self) -> bool:
        """Whether a schedule window restricts when this intervention is active."""
        return self.start_step > 0 or self.stop_step is not None

    def common(self) -> dict[str, Any]:
        """The five common fields as a dict.

        Returns:
            strength, positions, start_step, stop_step and name.
        """
        return {k: getattr(self, k) for k in COMMON_FIELDS}

    # ---------------------------------------------------------------- the protocol
    def check_model(self, model: Model) -> None:
        """Raise a ValueError if this intervention does not fit `model`.

        Args:
            model (Model): the model it is about to run on.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def sites(self, model: Model) -> list[tuple[str, int]]:
        """The (hook name, layer) pairs this intervention edits or reads.

        Args:
            model (Model): the model.

        Returns:
            The pairs (hook names from `steerlens.backend.runtime`).

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def bind(self, model: Model) -> BoundIntervention:
        """Precompute the tensors for `model` (device, dtype).

        Args:
            model (Model): the model.

        Returns:
            The `BoundIntervention`.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def max_push(self) -> float:
        """The largest |entry| this intervention can write into an activation at strength 1.

        Used to refuse strengths that would overflow the model's dtype; 0.0 for pure projections.

        Returns:
            A non-negative float.
        """
        return 0.0

    def site_layers(self, model: Model) -> list[int]:
        """The sorted layers this intervention touches (from `sites`).

        Args:
            model (Model): the model.

        Returns:
            The layers.
        """
        return sorted({layer for _, layer in self.sites(model)})

    # ---------------------------------------------------------------- saving
    def to_dict(self) -> dict[str, Any]:
        """The kind's own fields as JSON-ready values (tensors go in `tensors()`).

        Returns:
            A dict (the common fields are saved separately).
        """
        return {}

    def tensors(self) -> dict[str, Tensor]:
        """The kind's tensors, by key (keys are free-form strings).

        Returns:
            A dict key -> tensor (CPU).
        """
        return {}

    @classmethod
    def from_saved(cls, fields: Mapping[str, Any], tensors: Mapping[str, Tensor],
                   common: Mapping[str, Any]) -> Intervention:
        """Rebuild an instance from `to_dict()`, `tensors()` and the common fields.

        Args:
            fields: what `to_dict` returned.
            tensors: what `tensors` returned.
            common: the common fields.

        Returns:
            The intervention.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError


def registered_kinds() -> dict[str, type[Intervention]]:
    """The intervention kinds defined so far (importing a kind's module registers it).

    Returns:
        kind name -> class.
    """
    return dict(_REGISTRY)


def kind_class(kind: str) -> type[Intervention]:
    """The class registered for `kind`, importing its module if needed.

    Args:
        kind: a kind name ("add", "ablate", ...).

    Returns:
        The class.

    Raises:
        ValueError: for a kind no module defines (the message lists the known kinds).
    """
    if kind not in _REGISTRY and kind in KIND_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(KIND_MODULES[kind])
    if kind not in _REGISTRY:
        raise ValueError(f"Unknown intervention kind {kind!r}; known kinds are "
                         f"{sorted(set(_REGISTRY) | set(KIND_MODULES))}.")
    return _REGISTRY[kind]


# ------------------------------------------------------------------------ position semantics
def position_mask(iv: Intervention, ctx: PositionContext, batch: int, length: int,
                  device: torch.device | str) -> Tensor | None:
    """[batch, length] float 0/1 mask of the positions `iv` edits in this forward; None means all.

    Positions are absolute (`ctx.offset` + index), so KV-cached decoding and a full forward over
    the same tokens give the same mask at every position.

    Args:
        iv: the intervention (its `positions`, `start_step`, `stop_step`).
        ctx: the bound position context.
        batch: rows in this forward.
        length: positions in this forward.
        device: where to build the mask.

    Returns:
        The float32 mask, or None when every position is edited.
    """
    if iv.positions == "all" and not iv.scheduled:
        return None
    pos = ctx.offset + torch.arange(length, device=device)
    width = ctx.prompt_width if ctx.prompt_width is not None else ctx.offset + length
    mode = iv.positions
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
        return ((pos[None] == first[:, None]) & schedule_window(iv, pos, width)[None]).float()
    m = m & schedule_window(iv, pos, width)
    return m[None].expand(batch, length).float()


def schedule_window(iv: Intervention, pos: Tensor, width: int) -> Tensor:
    """Boolean [length]: positions whose generated-token index lies in [start_step, stop_step).

    Args:
        iv: the intervention.
        pos: absolute positions.
        width: the prompt width (prompt positions have generated-token index 0).

    Returns:
        The boolean mask.
    """
    step = (pos - width + 1).clamp_min(0)
    ok = step >= iv.start_step
    if iv.stop_step is not None:
        ok = ok & (step < iv.stop_step)
    return ok


def weight(act: Tensor, scale: float | Tensor, mask: Tensor | None) -> float | Tensor:
    """Strength times position mask, shaped to broadcast against `act` ([batch, pos, ...]).

    Args:
        act: the activation being edited.
        scale: a float, or a [batch] tensor of per-row strengths.
        mask: None or a [batch, pos] 0/1 tensor.

    Returns:
        A float (no per-row strengths and no mask) or a tensor [batch, pos or 1, 1, ...].
    """
    tail = (1,) * (act.ndim - 2)
    w: float | Tensor = scale
    if isinstance(scale, Tensor):
        w = scale.reshape(-1, 1, *tail)
    if mask is not None:
        w = mask.reshape(*mask.shape, *tail) * w
    return w


# ------------------------------------------------------------------------ vectors inside interventions
def unit_directions(vector: SteeringVector, what: str) -> dict[int, Tensor]:
    """Each layer's direction divided by its norm (float64), refusing zero directions.

    Args:
        vector: the vector.
        what: how to name it in errors (e.g. "Ablation.direction").

    Returns:
        layer -> unit direction (float64, CPU).

    Raises:
        ValueError: if a layer's direction has zero (or subnormal) norm.
    """
    out = {}
    for layer in vector.layers:
        d = vector[layer].double()
        n = float(d.norm())
        if not n > 1e-30:
            raise ValueError(f"{what} is zero at layer {layer}; a direction needs a nonzero norm.")
        out[layer] = d / n
    return out


def vector_fields(vector: SteeringVector) -> dict[str, Any]:
    """A vector's metadata for an intervention's JSON (its tensors go in `vector_tensors`).

    Args:
        vector: the vector.

    Returns:
        component, method, read_at, model_id, n_pairs, extra and version.
    """
    return {"component": vector.component, "method": vector.method, "read_at": vector.read_at,
            "model_id": vector.model_id, "n_pairs": vector.n_pairs, "extra": dict(vector.extra),
            "version": vector.version}


def vector_tensors(vector: SteeringVector, prefix: str) -> dict[str, Tensor]:
    """A vector's directions as tensors keyed `{prefix}.layer.{i}`.

    Args:
        vector: the vector.
        prefix: key prefix (e.g. "vector", "inner.vector").

    Returns:
        key -> float32 tensor.
    """
    return {f"{prefix}.layer.{k}": v.contiguous() for k, v in vector.directions.items()}


def vector_from_saved(meta: Mapping[str, Any], tensors: Mapping[str, Tensor],
                      prefix: str) -> SteeringVector:
    """Rebuild a vector saved with `vector_fields` / `vector_tensors`.

    Args:
        meta: what `vector_fields` returned.
        tensors: all tensors of the file.
        prefix: the prefix used when saving.

    Returns:
        The vector.

    Raises:
        InterventionFileError: if no tensor carries the prefix or a key is malformed.
    """
    head = f"{prefix}.layer."
    dirs = {}
    for key, t in tensors.items():
        if key.startswith(head):
            tail = key[len(head):]
            if not tail.isdigit():
                raise InterventionFileError(f"Unexpected tensor key {key!r}.")
            dirs[int(tail)] = t
    if not dirs:
        raise InterventionFileError(f"No tensors with prefix {prefix!r} in the intervention file.")
    try:
        return SteeringVector(dirs, component=meta.get("component", "resid_pre"),
                              method=meta.get("method", "custom"),
                              read_at=meta.get("read_at", "last"),
                              model_id=meta.get("model_id", "unknown"),
                              n_pairs=meta.get("n_pairs", 0), extra=meta.get("extra", {}),
                              version=meta.get("version", "unknown"))
    except ValueError as err:
        raise InterventionFileError(f"Saved vector {prefix!r}: {err}") from err


# ------------------------------------------------------------------------ save / load
def intervention_record(iv: Intervention) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON record and tensors that `save_intervention` writes (also used for nesting).

    Args:
        iv: the intervention.

    Returns:
        ({"kind", "common", "fields"}, tensors).

    Raises:
        ValueError: if `iv` is not an Intervention of a registered kind.
    """
    if not isinstance(iv, Intervention) or not iv.kind:
        raise ValueError(f"Expected an Intervention of a registered kind, got {type(iv).__name__}.")
    return {"kind": iv.kind, "common": iv.common(), "fields": iv.to_dict()}, iv.tensors()


def intervention_from_record(record: Mapping[str, Any],
                             tensors: Mapping[str, Tensor]) -> Intervention:
    """Rebuild an intervention from `intervention_record` output.

    Args:
        record: {"kind", "common", "fields"}.
        tensors: its tensors.

    Returns:
        The intervention.

    Raises:
        InterventionFileError: for a malformed record or one its class rejects.
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("kind"), str):
        raise InterventionFileError("An intervention record needs a string 'kind'.")
    try:
        cls = kind_class(record["kind"])
    except ValueError as err:
        raise InterventionFileError(str(err)) from err
    common = record.get("common", {})
    own = record.get("fields", {})
    if not isinstance(common, Mapping) or not isinstance(own, Mapping):
        raise InterventionFileError("An intervention record's 'common' and 'fields' must be objects.")
    unknown = set(common) - set(COMMON_FIELDS)
    if unknown:
        raise InterventionFileError(f"Unknown common fields {sorted(unknown)}; valid are "
                                    f"{list(COMMON_FIELDS)}.")
    try:
        return cls.from_saved(own, tensors, common)
    except (ValueError, KeyError, TypeError) as err:
        raise InterventionFileError(f"Cannot rebuild a {record['kind']!r} intervention: {err}") from err


def save_intervention(iv: Intervention, directory: str | Path) -> Path:
    """Write `intervention.safetensors` + `intervention.json` into `directory`, crash-safely.

    Args:
        iv: the intervention.
        directory: the directory (created if missing); other files in it are left alone.

    Returns:
        The directory.

    Raises:
        ValueError: if `iv` is not a registered Intervention or `directory` is not a directory.
    """
    from safetensors.torch import save as to_bytes

    record, tensors = intervention_record(iv)
    # clone: two fields may hold the same tensor (a Conditional whose condition is its inner
    # vector), and safetensors refuses to save tensors that share memory
    blob = to_bytes({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                    metadata={"steerlens_format": str(INTERVENTION_FORMAT)})
    meta = {"format": INTERVENTION_FORMAT, "library": "steerlens", "version": __version__,
            **record, "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    text = json.dumps(meta, indent=2)
    return commit_entries(directory, {
        INTERVENTION_FILE: lambda p: p.write_bytes(blob),
        INTERVENTION_META: lambda p: p.write_text(text, encoding="utf-8"),
    })


def _read_tensors(path: Path, blob: bytes) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InterventionFileError(f"{path} is corrupt or truncated ({err}).") from err
    except Exception as err:  # safetensors raises bare Exceptions on some malformed headers
        raise InterventionFileError(f"{path} could not be read as safetensors ({err}).") from err


def load_intervention(directory: str | Path, model: Model | None = None) -> Intervention:
    """Load an intervention saved by `save_intervention` (no pickle).

    Args:
        directory: the directory (or either file in it).
        model (Model | None): when given, the intervention is checked against it.

    Returns:
        The intervention.

    Raises:
        InterventionFileError: for a missing, oversized, corrupt or inconsistent file or an
            unknown kind.
        ValueError: if `model` is given and the intervention does not fit it.
    """

    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    directory = resolve_path(directory)
    tpath = resolve_entry(directory, INTERVENTION_FILE)
    mpath = resolve_entry(directory, INTERVENTION_META)
    for p in (tpath, mpath):
        if not p.exists():
            raise InterventionFileError(f"{p} does not exist; a saved intervention is a directory "
                                        f"with {INTERVENTION_FILE} and {INTERVENTION_META}.")
    raw = read_bounded(mpath, MAX_META_BYTES, "intervention metadata file", InterventionFileError)
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise InterventionFileError(f"{mpath} is not valid intervention metadata ({err}).") from err
    if meta.get("format") != INTERVENTION_FORMAT:
        raise InterventionFileError(f"{mpath} has format {meta.get('format')!r}; this steerlens "
                                    f"reads format {INTERVENTION_FORMAT}.")
    blob = read_bounded(tpath, 1 << 36, "intervention tensors file", InterventionFileError)
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise InterventionFileError(f"{tpath} does not match {mpath}: the SHA-256 of the tensors "
                                    "differs from the recorded one (files from different saves?).")
    tensors = _read_tensors(tpath, blob)
    iv = intervention_from_record(meta, tensors)
    if model is not None:
        iv.check_model(model)
    return iv

