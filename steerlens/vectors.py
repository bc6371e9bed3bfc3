"""Steering vectors: immutable per-layer directions with provenance, arithmetic and safe I/O.

A `SteeringVector` holds one direction per layer (all at one component, e.g. `resid_pre`) plus the
metadata needed to trust and reuse it: model id, d_model, method, token position, number of pairs,
per-layer norm and library version. Vectors add, scale and negate layer-wise. `vector.layer(l)`
selects a single layer. They are saved as safetensors (one tensor per layer, key `layer.{i}`) plus
a JSON metadata file, and loaded without pickle; loading against a model refuses a mismatched
d_model or a layer the model lacks. The methods that build vectors live in `methods.py`.
A `SteeringVectorSet` is a named collection of vectors (e.g. one per behaviour) for multi-vector work.
"""

from __future__ import annotations

import json
import math
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
from .io import atomic_path, atomic_write_text
from .sites import COMPONENTS, Site, check_layer

VECTOR_FILE = "vector.safetensors"
META_FILE = "vector.json"
FORMAT_VERSION = 1


class VectorFileError(ValueError):
    """A vector file is missing, truncated, corrupt or inconsistent with its metadata."""


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
            ValueError: if `norm` is not finite.
        """
        if not math.isfinite(norm):
            raise ValueError(f"norm must be finite, got {norm}.")
        return self._map(lambda t: t * (norm / t.norm().clamp_min(1e-12)), "normalized")

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
        """Write `vector.safetensors` + `vector.json` into `directory` (each atomically).

        The tensors file holds one float32 tensor per layer (key `layer.{i}`); the JSON file holds
        `metadata()`. No pickle is involved, so loading a vector never runs code.

        Args:
            directory: the directory to write into (created if missing).

        Returns:
            The directory, as a Path.

        Example:
            ```python
            import torch
            from steerlens.vectors import SteeringVector

            vec = SteeringVector({6: torch.randn(576)}, model_id="smollm2-135m-instruct")
            path = vec.save("vectors/mine")   # writes vector.safetensors + vector.json there
            ```
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{k}": v.contiguous() for k, v in self.directions.items()}
        with atomic_path(directory / VECTOR_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"steerlens_format": str(FORMAT_VERSION)})
        atomic_write_text(directory / META_FILE, json.dumps(self.metadata(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: Model | None = None) -> SteeringVector:
        """Load a saved vector (no pickle); with `model`, check it fits that model.

        Args:
            directory: the directory `save` wrote (or either file in it).
            model (Model | None): when given, the vector's d_model and layers are checked against it.

        Returns:
            The loaded vector, metadata included.

        Raises:
            VectorFileError: if a file is missing, corrupt, truncated or inconsistent with the metadata.
            ValueError: if `model` is given and the vector does not fit it.

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
        tpath, mpath = directory / VECTOR_FILE, directory / META_FILE
        for p in (tpath, mpath):
            if not p.exists():
                raise VectorFileError(
                    f"{p} does not exist; a saved vector is a directory with {VECTOR_FILE} and "
                    f"{META_FILE}."
                )
        try:
            meta = json.loads(mpath.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("metadata is not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            raise VectorFileError(f"{mpath} is not valid vector metadata JSON ({err}).") from err
        tensors = _read_safetensors(tpath)
        dirs: dict[int, Tensor] = {}
        for key, t in tensors.items():
            if not key.startswith("layer.") or not key[6:].isdigit():
                raise VectorFileError(f"{tpath} has an unexpected tensor key {key!r}.")
            dirs[int(key[6:])] = t
        if sorted(dirs) != sorted(int(x) for x in meta.get("layers", dirs)):
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
                n_pairs=int(meta.get("n_pairs", 0)),
                extra=meta.get("extra", {}),
                version=meta.get("version", "unknown"),
            )
        except ValueError as err:
            raise VectorFileError(f"{tpath}: {err}") from err
        if "d_model" in meta and int(meta["d_model"]) != vec.d_model:
            raise VectorFileError(
                f"{mpath} says d_model {meta['d_model']} but the tensors have {vec.d_model}."
            )
        if model is not None:
            vec.check_model(model)
        return vec


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """Read a safetensors file, turning every failure into a VectorFileError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
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

        Args:
            directory: the directory to write into (created if missing).

        Returns:
            The directory, as a Path.

        Raises:
            ValueError: if a name cannot be used as a directory name (empty, with "/", or hidden).
        """
        directory = Path(directory)
        for name, vec in self.vectors.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"Vector name {name!r} cannot be used as a directory name.")
            vec.save(directory / name)
        atomic_write_text(directory / "set.json", json.dumps({"names": list(self.vectors)}))
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: Model | None = None) -> SteeringVectorSet:
        """Load a set written by `SteeringVectorSet.save`.

        Args:
            directory: the directory `save` wrote.
            model (Model | None): when given, every vector is checked against it.

        Returns:
            The loaded set, in the saved order.

        Raises:
            VectorFileError: if `set.json` or a vector's files are missing or corrupt.
        """
        directory = Path(directory)
        index = directory / "set.json"
        if not index.exists():
            raise VectorFileError(f"{index} does not exist; is {directory} a saved vector set?")
        try:
            names = json.loads(index.read_text())["names"]
        except (ValueError, KeyError, TypeError) as err:
            raise VectorFileError(f"{index} is corrupt ({err}).") from err
        return cls({n: SteeringVector.load(directory / n, model) for n in names})
