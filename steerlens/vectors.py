"""Steering vectors: immutable per-layer directions with provenance, arithmetic and safe I/O.

A `SteeringVector` holds one direction per layer (all at one component, e.g. `resid_pre`) plus the
metadata needed to trust and reuse it: model id, d_model, method, token position, number of pairs,
per-layer norm and library version. Vectors add, scale and negate layer-wise. `vector.layer(l)`
selects a single layer. They are saved as safetensors (one tensor per layer, key `layer.{i}`) plus
a JSON metadata file, and loaded without pickle; loading against a model refuses a mismatched
d_model or a layer the model lacks, and warns (or with `strict=True` refuses) when the vector was
built on another model. The methods that build vectors live in `methods.py`.
A `SteeringVectorSet` is a named collection of vectors (e.g. one per behaviour) for multi-vector work.
Vectors from other libraries come in through `SteeringVector.from_tensors({layer: tensor}, ...)`;
llama.cpp control vectors (GGUF) are written and read by `to_gguf` / `from_gguf`, with the layer
mapping described in `steerlens.interop.gguf` (`direction.N` = `resid_post` N = `resid_pre` N+1).

Saving is crash-safe: the two files of a vector (and `set.json` plus the vector directories of a
set) are replaced together with `io.commit_entries` (new files under temp names, then a commit
record written atomically, then renames), so a reader sees the old version or the new one even if
the saving process is killed. Loading checks the metadata against the tensors: the SHA-256 of the
tensors file recorded at save time, and the per-layer norms (float32 norms recomputed in float64,
relative tolerance 1e-5), so tensors and metadata from different saves never load as one vector.
Metadata files are read with a 1 MB cap and refused unless they are regular files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import operator
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._version import __version__
from .backend import Model, runtime
from .io import commit_entries, read_bounded, resolve_entry, resolve_path
from .sites import COMPONENTS, Site, check_layer

VECTOR_FILE = "vector.safetensors"
META_FILE = "vector.json"
SET_FILE = "set.json"
FORMAT_VERSION = 1
MAX_META_BYTES = 1 << 20  # vector.json / set.json: a few kB in practice
# Recorded norms are float32 norms (torch's cascade summation, relative error ~1e-7 * log2(d),
# under 1e-6 for any d_model) written with full float precision; the check recomputes them in
# float64, so a factor-10 margin over 1e-6 never fails a genuine file, while tensors from another
# save differ by far more (and equal-norm vectors are caught by the SHA-256 of the tensors file).
NORM_RTOL = 1e-5
# temp files of the older two-rename save (".vector.json.XXXX.tmp"), removed by the next save
_LEGACY_TEMP = re.compile(r"^\.(vector\.safetensors|vector\.json|set\.json)\..+\.tmp$")


class VectorFileError(ValueError):
    """A vector file is missing, truncated, corrupt or inconsistent with its metadata."""


class ModelMismatchWarning(UserWarning):
    """A vector (or set) built on one model is loaded for another model of the same width."""


def _legacy_temp(name: str) -> bool:
    return bool(_LEGACY_TEMP.match(name))


def _same_model(a: str, b: str) -> bool:
    """Model ids that name the same model ("HuggingFaceTB/SmolLM2-135M-Instruct" and
    "smollm2-135m-instruct" do: case and a hub organisation are ignored)."""
    return a.rsplit("/", 1)[-1].lower() == b.rsplit("/", 1)[-1].lower()


def check_model_id(built_on: str, model: Model, strict: bool, where: str | Path) -> None:
    """Warn (or with `strict`, raise) when a vector built on `built_on` is used with `model`.

    Args:
        built_on: the vector's recorded model id.
        model (Model): the model it is loaded for.
        strict: raise instead of warning; a vector that records no model id is refused too.
        where: the file or directory, for the message.

    Raises:
        ValueError: with `strict`, if the ids differ or the vector records no model id.
    """
    target = runtime.model_id(model)
    if built_on in ("", "unknown"):
        if strict:
            raise ValueError(f"{where} records no model id, so strict=True cannot confirm it was "
                             f"built on {target!r}.")
        return
    if _same_model(built_on, target):
        return
    msg = (f"{where} was built on model {built_on!r} but is being loaded for model {target!r}; "
           "a direction from another model is meaningless there even when the widths match")
    if strict:
        raise ValueError(msg + ".")
    warnings.warn(msg + " (pass strict=True to make this an error).", ModelMismatchWarning,
                  stacklevel=3)


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Per-layer steering directions at one component, with provenance metadata.

    Immutable: directions are copied to float32 CPU tensors on construction, and every operation
    (`layer`, `normalized`, `*`, `+`, `-`) returns a new vector. Arithmetic is layer-wise; adding
    vectors with different layers fills the missing layers with zeros.

    Attributes:
        directions: layer -> direction of shape [d_model], sorted by layer, read-only.
        component: the site component every direction belongs to (e.g. "resid_pre").
        method: how the vector was built ("mean_diff", "pca", "random", ...).
        read_at: where the activations it came from were read ("last", "first", "mean", "all").
        model_id: the model it was built on.
        n_pairs: number of contrast pairs used (0 when not built from pairs).
        extra: free-form provenance (seeds, settings).
        version: the steerlens version that built it.
    """

    directions: Mapping[int, Float[Tensor, " d_model"]]
    component: str = "resid_pre"
    method: str = "custom"
    read_at: str = "last"
    model_id: str = "unknown"
    n_pairs: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("A SteeringVector needs at least one layer.")
        if self.component not in COMPONENTS:
            raise ValueError(f"Unknown component {self.component!r}; valid: {list(COMPONENTS)}.")
        dirs = {}
        dims = set()
        for layer, t in self.directions.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"Layer keys must be non-negative ints, got {layer!r}.")
            t = torch.as_tensor(t).detach().to(torch.float32).cpu().clone()
            if t.ndim != 1:
                raise ValueError(f"Direction for layer {layer} must be 1-D, got {tuple(t.shape)}.")
            if not torch.isfinite(t).all():
                raise ValueError(f"Direction for layer {layer} has non-finite values.")
            t.requires_grad_(False)
            dims.add(t.shape[0])
            dirs[layer] = t
        if len(dims) != 1:
            raise ValueError(f"All layers must share d_model; got sizes {sorted(dims)}.")
        object.__setattr__(self, "directions", MappingProxyType(dict(sorted(dirs.items()))))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    # ------------------------------------------------------------------ construction from elsewhere
    @classmethod
    def from_tensors(cls, tensors: Mapping[Any, Any], component: str = "resid_pre", *,
                     model: Model | None = None, model_id: str | None = None,
                     method: str = "imported", read_at: str = "last", n_pairs: int = 0,
                     extra: Mapping[str, Any] | None = None) -> SteeringVector:
        """A vector from `{layer: direction}` built by any library (the way in from other tools).

        Each direction may be a torch tensor (any float dtype or device; gradients are dropped),
        a numpy array or a list of numbers, of shape [d_model]; it is copied to float32 CPU. The
        layer keys are steerlens block indices at `component`: translate another library's layer
        convention before calling (e.g. a library that adds its vector to the *output* of decoder
        layer i steers steerlens' `resid_post` of block i, which is `resid_pre` of block i + 1).
        Nothing is normalised or rescaled.

        Args:
            tensors: layer (non-negative int) -> direction of shape [d_model].
            component: the site component the directions are added at (one of
                `sites.COMPONENTS`, e.g. "resid_pre", "resid_post").
            model (Model | None): when given, d_model and the layers are checked against it and
                `model_id` defaults to its id (a different explicit `model_id` warns).
            model_id: the model the directions were built on (default: `model`'s id, else
                "unknown").
            method: provenance tag, e.g. "repeng" or "steering-vectors" (default "imported").
            read_at: where the source activations were read ("last", "mean", ...).
            n_pairs: number of contrast pairs used, if known (0 otherwise).
            extra: free-form JSON-serialisable provenance.

        Returns:
            The new vector.

        Raises:
            TypeError: if `tensors` is not a mapping, or a direction cannot be read as numbers.
            ValueError: if it is empty, a key is not a non-negative int, a direction is not 1-D,
                not finite or of another width than the others, the component is unknown, or
                (with `model`) the width or a layer does not fit the model.

        Example:
            ```python
            import numpy as np
            from steerlens.vectors import SteeringVector

            # e.g. repeng's ControlVector.directions: {decoder layer: np.ndarray[d_model]}
            vec = SteeringVector.from_tensors({10: np.ones(576, dtype=np.float32)},
                                              component="resid_post", method="repeng")
            ```
        """
        if not isinstance(tensors, Mapping):
            raise TypeError(f"from_tensors takes a mapping {{layer: tensor}}, got "
                            f"{type(tensors).__name__}.")
        if not tensors:
            raise ValueError("from_tensors needs at least one layer; got an empty mapping.")
        dirs: dict[int, Tensor] = {}
        for key, value in tensors.items():
            try:  # ints, numpy integers and integer 0-d tensors; not bools, floats or strings
                layer = -1 if isinstance(key, bool) else operator.index(key)
            except TypeError:
                layer = -1
            if layer < 0:
                raise ValueError(f"Layer keys must be non-negative ints (steerlens block indices), "
                                 f"got {key!r} ({type(key).__name__}).")
            if isinstance(value, Tensor):
                t = value.detach()
            else:
                try:
                    t = torch.as_tensor(value)
                except (TypeError, ValueError, RuntimeError) as err:
                    raise TypeError(f"The direction for layer {layer} is a "
                                    f"{type(value).__name__} that cannot be read as numbers "
                                    f"({err}); pass a torch tensor, numpy array or list.") from err
            if t.is_complex():
                raise TypeError(f"The direction for layer {layer} is complex ({t.dtype}); "
                                "directions must be real.")
            if t.ndim != 1:
                raise ValueError(f"The direction for layer {layer} must have shape [d_model], got "
                                 f"{tuple(t.shape)} (squeeze or index a batch dimension first).")
            if layer in dirs:
                raise ValueError(f"Layer {layer} appears twice in the mapping.")
            dirs[layer] = t.to(device="cpu", dtype=torch.float32)
        if model is not None:
            target = runtime.model_id(model)
            if model_id is None:
                model_id = target
            else:
                check_model_id(model_id, model, False, "from_tensors")
        vec = cls(directions=dirs, component=component, method=method, read_at=read_at,
                  model_id=model_id if model_id is not None else "unknown", n_pairs=n_pairs,
                  extra=dict(extra or {}))
        if model is not None:
            vec.check_model(model)
        return vec

    # ------------------------------------------------------------------ basic properties
    @property
    def layers(self) -> list[int]:
        """The layers this vector has a direction for, ascending."""
        return list(self.directions)

    @property
    def d_model(self) -> int:
        """The width of every direction (the model's d_model)."""
        return next(iter(self.directions.values())).shape[0]

    @property
    def norms(self) -> dict[int, float]:
        """L2 norm of the direction at each layer."""
        return {layer: float(t.norm()) for layer, t in self.directions.items()}

    def sites(self) -> list[Site]:
        """The (layer, component) sites this vector writes to.

        Returns:
            One `Site` per layer, in layer order.
        """
        return [Site(layer, self.component) for layer in self.layers]  # type: ignore[arg-type]

    def __getitem__(self, layer: int) -> Tensor:
        if layer not in self.directions:
            raise KeyError(
                f"This vector was not built for layer {layer}; its layers are {self.layers}."
            )
        return self.directions[layer]

    def layer(self, layer: int) -> SteeringVector:
        """The same vector restricted to one layer.

        Args:
            layer: the layer to keep.

        Returns:
            A new single-layer vector with the same metadata.

        Raises:
            ValueError: if the vector has no direction for `layer`.
        """
        return self.select([layer])

    def select(self, layers) -> SteeringVector:
        """The same vector restricted to some of its layers.

        Args:
            layers (Iterable[int]): the layers to keep, each one the vector has.

        Returns:
            A new vector with only those layers and the same metadata.

        Raises:
            ValueError: listing the requested layers the vector was not built for.
        """
        missing = [lay for lay in layers if lay not in self.directions]
        if missing:
            raise ValueError(
                f"This vector was not built for layer(s) {missing}; its layers are {self.layers}."
            )
        return replace(self, directions={lay: self.directions[lay] for lay in layers})

    def normalized(self, norm: float = 1.0) -> SteeringVector:
        """Every layer rescaled to the given L2 norm.

        Args:
            norm: the target L2 norm of each layer's direction.

        Returns:
            A new vector; its method is tagged "|normalized".

        Raises:
            ValueError: if `norm` is not finite, or a layer's direction is zero (it has no
                direction to rescale).
        """
        if not math.isfinite(norm):
            raise ValueError(f"norm must be finite, got {norm}.")
        zero = [lay for lay, t in self.directions.items() if not bool(t.any())]
        if zero:
            raise ValueError(f"Cannot normalise: the direction at layer(s) {zero} is zero "
                             f"(method {self.method!r}), so it has no direction to rescale.")
        return self._map(lambda t: (t.double() * (norm / t.double().norm())).float(),
                         "normalized")

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        """Per-layer cosine similarity with another vector (shared layers).

        Args:
            other: the vector to compare with.

        Returns:
            layer -> cosine similarity, for the layers both vectors have.
        """
        shared = [lay for lay in self.layers if lay in other.directions]
        return {
            lay: float(torch.nn.functional.cosine_similarity(self[lay], other[lay], dim=0))
            for lay in shared
        }

    # ------------------------------------------------------------------ arithmetic
    def _map(self, fn, tag: str) -> SteeringVector:
        return replace(self, directions={k: fn(v) for k, v in self.directions.items()},
                       method=self.method if tag in self.method else f"{self.method}|{tag}")

    def __mul__(self, alpha: float) -> SteeringVector:
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"Scale must be finite, got {alpha}.")
        return replace(self, directions={k: v * alpha for k, v in self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, alpha: float) -> SteeringVector:
        if float(alpha) == 0.0:
            raise ValueError("Cannot divide a steering vector by zero.")
        return self * (1.0 / float(alpha))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.d_model != self.d_model or other.component != self.component:
            raise ValueError(
                f"Cannot add vectors with different d_model/component: "
                f"({self.d_model}, {self.component}) vs ({other.d_model}, {other.component})."
            )
        layers = sorted(set(self.layers) | set(other.layers))
        zero = torch.zeros(self.d_model)
        dirs = {lay: self.directions.get(lay, zero) + other.directions.get(lay, zero)
                for lay in layers}
        method = self.method if self.method == other.method else f"{self.method}+{other.method}"
        return replace(self, directions=dirs, method=method,
                       n_pairs=max(self.n_pairs, other.n_pairs))

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self + (-other)

    def allclose(self, other: SteeringVector, atol: float = 1e-6) -> bool:
        """Whether two vectors have the same layers and element-wise close directions.

        Args:
            other: the vector to compare with.
            atol: absolute tolerance per element.

        Returns:
            True when the layers match and every direction is within `atol`.
        """
        return self.layers == other.layers and all(
            torch.allclose(self[lay], other[lay], atol=atol) for lay in self.layers
        )

    def __repr__(self) -> str:
        norms = ", ".join(f"{k}: {v:.3g}" for k, v in self.norms.items())
        return (f"SteeringVector(method={self.method!r}, {self.component}, layers/norms={{{norms}}}, "
                f"d_model={self.d_model}, model={self.model_id!r}, n_pairs={self.n_pairs})")

    # ------------------------------------------------------------------ checking against a model
    def check_model(self, model: Model) -> SteeringVector:
        """Raise a ValueError if the vector does not fit `model` (d_model, layers).

        Args:
            model (Model): the model the vector is about to be used with.

        Returns:
            The vector itself, for chaining.

        Raises:
            ValueError: if d_model differs or a layer is out of the model's range.
        """
        dm = runtime.d_model(model)
        if dm != self.d_model:
            raise ValueError(
                f"Vector has d_model {self.d_model} (built on {self.model_id!r}) but the model "
                f"{runtime.model_id(model)!r} has d_model {dm}."
            )
        for layer in self.layers:
            check_layer(model, layer)
        return self

    # ------------------------------------------------------------------ I/O
    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written next to the tensors by `save`.

        Returns:
            A JSON-serialisable dict: format and library version, model id, d_model, component,
            layers, sites, method, read_at, n_pairs, per-layer norms and `extra`.
        """
        return {
            "format": FORMAT_VERSION,
            "library": "steerlens",
            "version": self.version,
            "model_id": self.model_id,
            "d_model": self.d_model,
            "component": self.component,
            "layers": self.layers,
            "sites": [str(s) for s in self.sites()],
            "method": self.method,
            "read_at": self.read_at,
            "n_pairs": self.n_pairs,
            "norms": {str(k): v for k, v in self.norms.items()},
            "extra": dict(self.extra),
        }

    def save(self, directory: str | Path) -> Path:
        """Write `vector.safetensors` + `vector.json` into `directory`, together and crash-safely.

        The tensors file holds one float32 tensor per layer (key `layer.{i}`); the JSON file holds
        `metadata()` plus the SHA-256 of the tensors file. No pickle is involved, so loading a
        vector never runs code. Both files are replaced in one commit (`io.commit_entries`): if
        the process dies mid-save, the directory still loads as the previous vector (or, once the
        commit point is passed, as this one), and the next save removes the temp files a killed
        save left. Other files in `directory` are left alone.

        Args:
            directory: the directory to write into (created if missing).

        Returns:
            The directory, as a Path.

        Raises:
            ValueError: if `directory` is a file or lies under one.
            TypeError: if `extra` holds values JSON cannot represent (nothing is written).

        Example:
            ```python
            import torch
            from steerlens.vectors import SteeringVector

            vec = SteeringVector({6: torch.randn(576)}, model_id="smollm2-135m-instruct")
            path = vec.save("vectors/mine")   # writes vector.safetensors + vector.json there
            ```
        """
        from safetensors.torch import save as to_bytes

        tensors = {f"layer.{k}": v.contiguous() for k, v in self.directions.items()}
        blob = to_bytes(tensors, metadata={"steerlens_format": str(FORMAT_VERSION)})
        meta = {**self.metadata(), "tensors_sha256": hashlib.sha256(blob).hexdigest()}
        text = json.dumps(meta, indent=2)
        return commit_entries(directory, {
            VECTOR_FILE: lambda p: p.write_bytes(blob),
            META_FILE: lambda p: p.write_text(text, encoding="utf-8"),
        }, stray=_legacy_temp)

    @classmethod
    def load(cls, directory: str | Path, model: Model | None = None, *,
             strict: bool = False) -> SteeringVector:
        """Load a saved vector (no pickle); with `model`, check it fits that model.

        The metadata must agree with the tensors (layers, d_model, per-layer norms and, for files
        that record it, the tensors file's SHA-256), so files from two different
        saves never load as one vector. A vector built on another model than `model` (by its
        recorded `model_id`) loads with a `ModelMismatchWarning`; `strict=True` makes that an
        error.

        Args:
            directory: the directory `save` wrote (or either file in it).
            model (Model | None): when given, the vector's d_model and layers are checked against it.
            strict: with `model`, refuse a vector whose model id is another model's or missing.

        Returns:
            The loaded vector, metadata included.

        Raises:
            VectorFileError: naming the file, if a file is missing, not a regular file, too large,
                corrupt, truncated or inconsistent with the other.
            ValueError: if `model` is given and the vector does not fit it (or, with `strict`,
                was built on another model).

        Example:
            ```python
            import steerlens as sl
            from steerlens.vectors import SteeringVector

            model = sl.load_model()
            vec = SteeringVector.load("vectors/mine", model=model)   # checks d_model and layers
            print(vec.layers, vec.norms)
            ```
        """
        directory = Path(directory)
        if directory.is_file():
            directory = directory.parent
        for attempt in range(3):
            try:
                vec = cls._load_files(resolve_path(directory))
                break
            except FileNotFoundError as err:  # a concurrent save renamed a file under us: retry
                if attempt == 2:
                    raise VectorFileError(f"{err.filename} does not exist (it disappeared while "
                                          "being read; is another process saving there?).") from err
        if model is not None:
            vec.check_model(model)
            check_model_id(vec.model_id, model, strict, directory)
        return vec

    def to_gguf(self, path: str | Path, *, strength: float = 1.0, model_hint: str | None = None,
                model: Model | None = None) -> Path:
        """Write this vector as a llama.cpp control vector (GGUF, architecture `controlvector`).

        Layer mapping: llama.cpp adds `direction.N` to the output of block N, so a `resid_post`
        vector at layer L is written as `direction.L` and a `resid_pre` vector at layer L as
        `direction.(L-1)` (the same tensor). llama.cpp never steers block 0's output, so
        `resid_post` layer 0 and `resid_pre` layers 0 and 1 are refused, as are `resid_mid`,
        `attn_out` and `mlp_out`. Strength: each stored tensor is `strength * direction`, and
        llama.cpp at scale S (`--control-vector-scaled FILE S`; 1 for `--control-vector`) then
        steers like `steer(model, vector, S * strength)` with `positions="all"`. The file is
        replaced atomically. See `steerlens.interop.gguf`.

        Args:
            path: the .gguf file to write.
            strength: multiplier baked into the stored tensors (default 1: stored unchanged).
            model_hint: `controlvector.model_hint` (default: this vector's model id).
            model (Model | None): when given, check the vector fits it before writing.

        Returns:
            The path written.

        Raises:
            ValueError: if the component or a layer cannot be expressed in llama.cpp (the message
                names the valid ones), `strength` is not finite, or the vector does not fit
                `model`.
            TypeError: if `extra` cannot be written as JSON (nothing is written).

        Example:
            ```python
            vec = sl.build_vector(model, sl.load_behaviour("sentiment"), layers=[12])
            vec.to_gguf("sentiment.gguf")   # llama-cli -m smollm2.gguf --control-vector sentiment.gguf
            ```
        """
        from .interop.gguf import write_control_vector

        if model is not None:
            self.check_model(model)
        return write_control_vector(
            path, self.directions, self.component, strength=strength,
            model_hint=self.model_id if model_hint is None else model_hint,
            metadata=self.metadata())

    @classmethod
    def from_gguf(cls, path: str | Path, model: Model | None = None, *,
                  component: str | None = None, strict: bool = False) -> SteeringVector:
        """Read a llama.cpp control-vector file (written by `to_gguf`, repeng or llama.cpp).

        `direction.N` becomes `resid_post` of layer N (or, with `component="resid_pre"`,
        `resid_pre` of layer N + 1); a file written by `to_gguf` restores its component and
        metadata, and reads back bit-exactly. Tensors are returned as stored (what llama.cpp adds
        at scale 1).

        Args:
            path: the .gguf file.
            model (Model | None): when given, check d_model and layers against it.
            component: "resid_post" or "resid_pre" (default: as recorded, else "resid_post").
            strict: with `model`, refuse a vector recorded as built on another model.

        Returns:
            The vector.

        Raises:
            VectorFileError: if the file is missing, truncated, not a control vector (another
                architecture), has malformed or missing direction tensors, or tensors that
                disagree with its recorded metadata.
            ValueError: if `component` is not expressible or the vector does not fit `model`.
        """
        from .interop.gguf import read_control_vector

        cv = read_control_vector(path, error=VectorFileError)
        comp = component or cv.component or "resid_post"
        dirs = {k: torch.from_numpy(v) for k, v in cv.layers(comp).items()}  # checks comp
        meta = cv.metadata
        if meta:
            extra = dict(meta["extra"]) if isinstance(meta.get("extra"), dict) else {}
            if cv.strength not in (None, 1.0):
                extra["gguf_strength"] = cv.strength
        else:  # another tool's file: keep what it says about itself
            extra = {"source": "gguf", "model_hint": cv.model_hint}

        def text(key: str, default: str) -> str:
            return meta[key] if isinstance(meta.get(key), str) else default

        n_pairs = meta.get("n_pairs", 0)
        try:
            vec = cls(directions=dirs, component=comp, method=text("method", "gguf"),
                      read_at=text("read_at", "last"), model_id=text("model_id", "unknown"),
                      n_pairs=n_pairs if isinstance(n_pairs, int) and n_pairs >= 0 else 0,
                      extra=extra, version=text("version", "unknown"))
        except ValueError as err:
            raise VectorFileError(f"{cv.path}: {err}") from err
        if model is not None:
            dm, n = runtime.d_model(model), runtime.n_layers(model)
            if vec.d_model != dm:
                raise ValueError(
                    f"{cv.path} holds directions of width {vec.d_model} but model "
                    f"{runtime.model_id(model)!r} has d_model {dm}: the control vector was made "
                    f"for another model (model_hint {cv.model_hint!r})."
                )
            beyond = [f"direction.{i}" for i in cv.directions if i >= n]
            if beyond:
                raise ValueError(
                    f"{cv.path} has {beyond} but model {runtime.model_id(model)!r} has {n} "
                    f"blocks, so valid indices are 1..{n - 1} (llama.cpp would silently ignore "
                    "the rest)."
                )
            vec.check_model(model)
            check_model_id(vec.model_id, model, strict, cv.path)
        return vec

    @classmethod
    def _load_files(cls, directory: Path) -> SteeringVector:
        tpath, mpath = resolve_entry(directory, VECTOR_FILE), resolve_entry(directory, META_FILE)
        for p in (tpath, mpath):
            if not p.exists():
                raise VectorFileError(
                    f"{p} does not exist; a saved vector is a directory with {VECTOR_FILE} and "
                    f"{META_FILE}."
                )
        meta = _parse_meta(read_bounded(mpath, MAX_META_BYTES, "vector metadata file",
                                        VectorFileError), mpath)
        blob = read_bounded(tpath, 1 << 36, "vector tensors file", VectorFileError)
        dirs: dict[int, Tensor] = {}
        for key, t in _read_safetensors(tpath, blob).items():
            if not key.startswith("layer.") or not key[6:].isdigit():
                raise VectorFileError(f"{tpath} has an unexpected tensor key {key!r}.")
            dirs[int(key[6:])] = t
        if sorted(dirs) != sorted(meta.get("layers", dirs)):
            raise VectorFileError(
                f"{tpath} holds layers {sorted(dirs)} but {mpath} lists {meta.get('layers')}."
            )
        try:
            vec = cls(
                directions=dirs,
                component=meta.get("component", "resid_pre"),
                method=meta.get("method", "custom"),
                read_at=meta.get("read_at", meta.get("position", "last")),
                model_id=meta.get("model_id", "unknown"),
                n_pairs=meta.get("n_pairs", 0),
                extra=meta.get("extra", {}),
                version=meta.get("version", "unknown"),
            )
        except ValueError as err:
            raise VectorFileError(f"{tpath}: {err}") from err
        if "d_model" in meta and meta["d_model"] != vec.d_model:
            raise VectorFileError(
                f"{mpath} says d_model {meta['d_model']} but the tensors in {tpath} have "
                f"{vec.d_model}."
            )
        recorded = meta.get("tensors_sha256")
        if recorded is not None and hashlib.sha256(blob).hexdigest() != recorded:
            raise VectorFileError(
                f"{tpath} does not match {mpath}: its SHA-256 differs from the one the metadata "
                f"records, so the two files come from different saves. (If you replaced the "
                f"tensors on purpose, delete \"tensors_sha256\" from {META_FILE}.)"
            )
        norms = meta.get("norms", {})
        if "norms" in meta and set(norms) != {str(x) for x in vec.layers}:
            raise VectorFileError(f"{mpath}: 'norms' has layers {sorted(norms)} but the tensors "
                                  f"in {tpath} have layers {vec.layers}.")
        for layer, want in norms.items():
            got = float(vec[int(layer)].double().norm())
            if not math.isclose(want, got, rel_tol=NORM_RTOL, abs_tol=1e-20):
                raise VectorFileError(
                    f"{mpath} records norm {want:.7g} at layer {layer} but the tensors in {tpath} "
                    f"have norm {got:.7g}: the two files come from different saves or one was "
                    "edited."
                )
        return vec


def _parse_meta(raw: bytes, mpath: Path) -> dict[str, Any]:
    """Parse and type-check vector metadata, raising VectorFileError naming `mpath`."""
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise VectorFileError(f"{mpath} is not valid vector metadata JSON ({err}).") from err

    def bad(key: str, want: str) -> VectorFileError:
        return VectorFileError(f"{mpath}: {key!r} must be {want}, got {meta[key]!r}.")

    def count(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    for key in ("component", "method", "read_at", "position", "model_id", "version",
                "tensors_sha256"):
        if key in meta and not isinstance(meta[key], str):
            raise bad(key, "a string")
    for key in ("format", "d_model", "n_pairs"):
        if key in meta and not count(meta[key]):
            raise bad(key, "a non-negative integer")
    if meta.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise VectorFileError(f"{mpath} has format {meta['format']}, newer than the format "
                              f"{FORMAT_VERSION} this steerlens reads; upgrade steerlens.")
    if "layers" in meta and not (isinstance(meta["layers"], list)
                                 and all(count(x) for x in meta["layers"])):
        raise bad("layers", "a list of non-negative integers")
    if "extra" in meta and not isinstance(meta["extra"], dict):
        raise bad("extra", "a JSON object")
    norms = meta.get("norms", {})
    if not (isinstance(norms, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in norms.values())):
        raise bad("norms", "an object mapping each layer to a finite number")
    layers = {str(x) for x in meta.get("layers", [])}
    if "norms" in meta and "layers" in meta and set(norms) != layers:
        raise VectorFileError(f"{mpath}: 'norms' has layers {sorted(norms)} but 'layers' lists "
                              f"{meta['layers']}.")
    return meta


def _read_safetensors(path: Path, blob: bytes) -> dict[str, Tensor]:
    """Parse the bytes of safetensors file `path`, turning every failure into a VectorFileError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise VectorFileError(f"{path} is corrupt or truncated ({err}).") from err
    except Exception as err:  # safetensors raises bare Exceptions on some malformed headers
        raise VectorFileError(f"{path} could not be read as safetensors ({err}).") from err


@dataclass(frozen=True)
class SteeringVectorSet:
    """A named, immutable collection of steering vectors (e.g. one per behaviour or method).

    Pass one to `steer` or `sweep` to address vectors by name (`strengths={"refusal": 0.0, ...}`).

    Attributes:
        vectors: name -> SteeringVector, read-only.
    """

    vectors: Mapping[str, SteeringVector]

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("A SteeringVectorSet needs at least one vector.")
        for name, v in self.vectors.items():
            if not isinstance(v, SteeringVector):
                raise ValueError(f"Entry {name!r} is not a SteeringVector.")
        object.__setattr__(self, "vectors", MappingProxyType(dict(self.vectors)))

    def __getitem__(self, name: str) -> SteeringVector:
        if name not in self.vectors:
            raise KeyError(f"No vector named {name!r}; names are {list(self.vectors)}.")
        return self.vectors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def items(self):
        """The (name, vector) pairs, in insertion order.

        Returns:
            (ItemsView[str, SteeringVector]): A view of the (name, vector) pairs.
        """
        return self.vectors.items()

    def map(self, fn) -> SteeringVectorSet:
        """Apply a function to every vector, keeping the names.

        Args:
            fn (Callable[[SteeringVector], SteeringVector]): maps one vector to another.

        Returns:
            A new set with `fn(vector)` under each name.
        """
        return SteeringVectorSet({k: fn(v) for k, v in self.vectors.items()})

    def save(self, directory: str | Path) -> Path:
        """Save each vector to `directory/NAME/` and the list of names to `directory/set.json`.

        All of it is replaced in one commit (`io.commit_entries`), so a reader sees the old set or
        the new one even if the process dies mid-save; vectors of the old set that the new one
        lacks are removed in the same commit.

        Args:
            directory: the directory to write into (created if missing).

        Returns:
            The directory, as a Path.

        Raises:
            ValueError: if a name cannot be used as a directory name (not a string, empty, with
                "/" or "\\", hidden, or "set.json"), or `directory` is a file.
        """
        directory = Path(directory)
        for name in self.vectors:
            if (not isinstance(name, str) or not name or name == SET_FILE
                    or name.startswith(".") or any(c in name for c in "/\\\x00")):
                raise ValueError(f"Vector name {name!r} cannot be used as a directory name.")
        index = json.dumps({"names": list(self.vectors)})
        writers: dict[str, Any] = {SET_FILE: lambda p: p.write_text(index, encoding="utf-8")}
        for name, vec in self.vectors.items():
            writers[name] = vec.save
        old: list[str] = []
        if (directory / SET_FILE).is_file():
            with contextlib.suppress(ValueError, OSError):
                old = _read_set_names(directory / SET_FILE)
        return commit_entries(directory, writers,
                              remove=[n for n in old if n not in self.vectors], stray=_legacy_temp)

    @classmethod
    def load(cls, directory: str | Path, model: Model | None = None, *,
             strict: bool = False) -> SteeringVectorSet:
        """Load a set written by `SteeringVectorSet.save`.

        Args:
            directory: the directory `save` wrote.
            model (Model | None): when given, every vector is checked against it, with a
                `ModelMismatchWarning` for vectors built on another model.
            strict: with `model`, refuse vectors built on another model (or on an unrecorded one).

        Returns:
            The loaded set, in the saved order.

        Raises:
            VectorFileError: if `set.json` or a vector's files are missing, corrupt or inconsistent.
            ValueError: if `model` is given and a vector does not fit it (or, with `strict`, was
                built on another model).
        """
        directory = resolve_path(Path(directory))
        index = resolve_entry(directory, SET_FILE)
        if not index.exists():
            raise VectorFileError(f"{index} does not exist; is {directory} a saved vector set?")
        names = _read_set_names(index)
        vectors = {n: SteeringVector.load(resolve_entry(directory, n)) for n in names}
        if model is not None:
            by_model: dict[str, list[str]] = {}
            for n, vec in vectors.items():
                vec.check_model(model)
                by_model.setdefault(vec.model_id, []).append(n)
            for built_on, members in by_model.items():
                check_model_id(built_on, model, strict, f"{directory} (vectors {members})")
        return cls(vectors)


def _read_set_names(index: Path) -> list[str]:
    """The vector names listed in a set's `set.json`, validated (VectorFileError naming it)."""
    try:
        names = json.loads(read_bounded(index, MAX_META_BYTES, "vector set index",
                                        VectorFileError).decode("utf-8"))["names"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        if isinstance(err, VectorFileError):
            raise
        raise VectorFileError(f"{index} is corrupt ({type(err).__name__}: {err}).") from err
    if (not isinstance(names, list) or not names or len(set(map(str, names))) != len(names)
            or not all(isinstance(n, str) and n and not n.startswith(".") and n != SET_FILE
                       and not any(c in n for c in "/\\\x00") for n in names)):
        raise VectorFileError(f"{index} is corrupt: 'names' must be a non-empty list of distinct "
                              f"plain names, got {names!r}.")
    return names
