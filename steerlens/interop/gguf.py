"""llama.cpp control vectors: write and read steering vectors as GGUF `controlvector` files.

llama.cpp (`--control-vector`, `--control-vector-scaled FILE S`, and the C API
`llama_apply_adapter_cvec` / `llama_set_adapter_cvec`) steers with a GGUF file whose
`general.architecture` is `controlvector`, with metadata `controlvector.model_hint` (informative:
llama.cpp does not read it) and `controlvector.layer_count` (the number of direction tensors), and
one 1-D float32 tensor `direction.N` of length n_embd per steered layer. The layer-index
convention, read from llama.cpp's source (`common_control_vector_load_one` in common/common.cpp,
`llama_adapter_cvec` in src/llama-adapter.cpp, `build_cvec` in the model graphs): `direction.N`
is added, at every token position, to the OUTPUT of block N (0-based), after the block's
feed-forward residual add, i.e. to the stream entering block N + 1. In TransformerLens terms
that is `resid_post` of block N, which is the same tensor as `resid_pre` of block N + 1.
`direction.0` is refused by llama.cpp's loader and block 0's output can never be steered, so
`resid_post` layers 1..n_layers-1 and `resid_pre` layers 2..n_layers-1 are expressible; a
`resid_pre` vector at layer L is written as `direction.(L-1)`. Vectors at `resid_mid`,
`attn_out` or `mlp_out` (inside a block) cannot be expressed and are refused. Strength: llama.cpp
adds `S * tensor` for a user scale S (1 for `--control-vector`); `to_gguf(strength=s)` stores
`s * direction`, so llama.cpp at scale S steers like steerlens at strength `S * s` with
`positions="all"` (the default, `s = 1`, stores the vector unchanged). The file also records the
steerlens provenance (`steerlens.component`, `steerlens.strength`, `steerlens.metadata` as JSON)
so `from_gguf` restores the vector bit-exactly; files from repeng (same layout, `model_hint` =
the HF model type, repeng's layer i = output of decoder layer i) or llama.cpp's
cvector-generator read as `resid_post` vectors. Files are written atomically (temp + rename).
`SteeringVector.to_gguf` / `SteeringVector.from_gguf` are the entry points; this module is the
format layer beneath them and works on plain `{layer: array}` data. The mapping is checked in real
llama.cpp by `analyses/llama_cpp_agreement.py` (and tests/test_llama_cpp.py): with it, llama.cpp's
steered next-token distributions match steerlens's as closely as their unsteered ones do, and
the same file applied one block off does not.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from ..io import atomic_path

ARCHITECTURE = "controlvector"
KEY_ARCH = "general.architecture"
KEY_HINT = f"{ARCHITECTURE}.model_hint"
KEY_COUNT = f"{ARCHITECTURE}.layer_count"
KEY_COMPONENT = "steerlens.component"
KEY_STRENGTH = "steerlens.strength"
KEY_META = "steerlens.metadata"
# Components llama.cpp can express: what is added to the output of block N (= resid_post N =
# resid_pre N + 1), and the offset from a steerlens layer to the file's direction index.
GGUF_OFFSET = {"resid_post": 0, "resid_pre": -1}
# Recorded norms are float32 norms; the check recomputes them in float64 (as vectors.NORM_RTOL).
NORM_RTOL = 1e-5
MAX_FILE_BYTES = 1 << 30  # 1 GiB; a 128-layer, 16384-wide vector is 8 MiB
_NAME = re.compile(r"^direction\.(\d+)$")


def gguf_index(layer: int, component: str) -> int:
    """The llama.cpp `direction.N` index for a steerlens (layer, component).

    Args:
        layer: the steerlens block index.
        component: "resid_post" (N = layer) or "resid_pre" (N = layer - 1).

    Returns:
        N, at least 1.

    Raises:
        ValueError: naming the valid components, for a component llama.cpp cannot express, or
            naming the valid layers, for a layer whose index would be 0 or less (llama.cpp never
            steers block 0's output nor the embeddings).
    """
    if component not in GGUF_OFFSET:
        raise ValueError(
            f"llama.cpp control vectors cannot express component {component!r}: they add to the "
            f"output of a whole block only, which is steerlens 'resid_post' of block N (= "
            f"'resid_pre' of block N + 1). Valid components: {list(GGUF_OFFSET)}."
        )
    index = layer + GGUF_OFFSET[component]
    if index < 1:
        first = 1 - GGUF_OFFSET[component]
        raise ValueError(
            f"llama.cpp control vectors cannot steer {component} of layer {layer}: it would be "
            f"direction.{index}, and llama.cpp rejects direction.0 (block 0's output is never "
            f"steered). Valid layers for {component}: {first} and above."
        )
    return index


def write_control_vector(path: str | Path, directions: Mapping[int, Any], component: str, *,
                         strength: float = 1.0, model_hint: str = "",
                         metadata: Mapping[str, Any] | None = None) -> Path:
    """Write per-layer directions as a llama.cpp control-vector GGUF file, atomically.

    `SteeringVector.to_gguf` is the usual way in; this is the format layer beneath it.

    Args:
        path: the file to write (replaced atomically; its directory is created).
        directions: steerlens layer -> direction of shape [d_model] (tensor or array).
        component: "resid_post" or "resid_pre": where steerlens adds the directions.
        strength: baked into the file: each tensor is `strength * direction` (float32), so
            llama.cpp at scale S steers like steerlens at strength `S * strength`.
        model_hint: `controlvector.model_hint` (llama.cpp does not read it; repeng writes the HF
            model type, steerlens the model id).
        metadata: steerlens provenance, stored as JSON under `steerlens.metadata`.

    Returns:
        The path written.

    Raises:
        ValueError: if the component or a layer cannot be expressed in llama.cpp (the message
            names the valid ones), `strength` is not finite, or there are no directions.
        TypeError: if `metadata` cannot be written as JSON (nothing is written).
    """
    import gguf

    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength}.")
    if not directions:
        raise ValueError("A control vector needs at least one direction.")
    arrays = {gguf_index(layer, component): _scaled(d, strength)
              for layer, d in directions.items()}
    meta = json.dumps(dict(metadata or {}))
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        try:
            writer.add_string(KEY_HINT, str(model_hint))
            writer.add_uint32(KEY_COUNT, len(arrays))
            writer.add_string(KEY_COMPONENT, component)
            writer.add_float64(KEY_STRENGTH, strength)
            writer.add_string(KEY_META, meta)
            for index, data in sorted(arrays.items()):
                writer.add_tensor(f"direction.{index}", data)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def _scaled(direction: Any, strength: float) -> np.ndarray:
    """A float32 C-contiguous copy of `direction` times `strength` (one float32 multiply)."""
    if hasattr(direction, "detach"):
        direction = direction.detach().cpu().numpy()
    arr = np.array(direction, dtype=np.float32).reshape(-1)
    return arr if strength == 1.0 else arr * np.float32(strength)


@dataclass(frozen=True)
class ControlVectorFile:
    """The contents of a control-vector GGUF file, in llama.cpp's own numbering.

    Attributes:
        path: the file read.
        directions: N -> float32 array of shape [n_embd], for each `direction.N` (N >= 1).
        model_hint: `controlvector.model_hint` ("" when absent).
        layer_count: `controlvector.layer_count` (None when absent).
        component: the steerlens component recorded by `to_gguf` (None for other tools' files).
        strength: the strength baked in by `to_gguf` (None for other tools' files).
        metadata: the steerlens metadata recorded by `to_gguf` ({} for other tools' files).
    """

    path: Path
    directions: dict[int, np.ndarray]
    model_hint: str
    layer_count: int | None
    component: str | None
    strength: float | None
    metadata: dict[str, Any]

    def layers(self, component: str = "resid_post") -> dict[int, np.ndarray]:
        """The directions keyed by steerlens layer at `component`.

        Args:
            component: "resid_post" (layer N for direction.N) or "resid_pre" (layer N + 1).

        Returns:
            steerlens layer -> float32 array [n_embd].

        Raises:
            ValueError: naming the valid components, for any other component.
        """
        if component not in GGUF_OFFSET:
            gguf_index(1, component)  # raises the message naming the valid components
        return {n - GGUF_OFFSET[component]: d for n, d in self.directions.items()}

    @property
    def n_embd(self) -> int:
        """The width of every direction (llama.cpp's n_embd, steerlens' d_model)."""
        return next(iter(self.directions.values())).shape[0]


def _field(reader, key: str, path: Path, error: type[Exception]):
    field = reader.get_field(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception as err:  # gguf raises bare errors on malformed fields
        raise error(f"{path}: metadata field {key!r} is malformed ({err}).") from err


def read_control_vector(path: str | Path, error: type[Exception] = ValueError) -> ControlVectorFile:
    """Read and validate a control-vector GGUF file as llama.cpp's loader would.

    Every check llama.cpp's `common_control_vector_load_one` makes is made here with a message
    (architecture, tensor names `direction.N` with N >= 1, float32, 1-D, one width), plus: the
    file must be complete (a truncated file is refused even where a memory map would still
    read), and `controlvector.layer_count`, when present, must equal the number of directions.

    Args:
        path: the .gguf file.
        error: the exception class raised for a bad file (`SteeringVector.from_gguf` passes
            `VectorFileError`).

    Returns:
        The parsed file.

    Raises:
        error: naming the file and what is wrong: missing, not a regular file, too
            large, not GGUF, truncated, another architecture, no or malformed direction tensors,
            or a layer count that does not match.
    """
    import gguf

    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise error(f"{path} does not exist.") from err
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file; a control vector is a .gguf file.")
    if st.st_size > MAX_FILE_BYTES:
        raise error(f"{path} is {st.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit "
                      "for a control vector; is it a model file?")
    try:
        reader = gguf.GGUFReader(path)
        tensors = list(reader.tensors)
        alignment = int(getattr(reader, "alignment", 32))
    except Exception as err:  # gguf raises ValueError/IndexError/struct.error on bad bytes
        raise error(f"{path} is not a readable GGUF file: it is truncated or corrupt "
                      f"({type(err).__name__}: {err}).") from err
    arch = _field(reader, KEY_ARCH, path, error)
    if arch != ARCHITECTURE:
        raise error(
            f"{path} has general.architecture {arch!r}, not {ARCHITECTURE!r}: it is not a "
            "llama.cpp control vector (a model GGUF is loaded with sl.load_model, not from_gguf)."
        )
    if not tensors:
        raise error(f"{path} holds no direction tensors (expected direction.N, N >= 1).")
    end = max(int(t.data_offset) + -(-int(t.n_bytes) // alignment) * alignment for t in tensors)
    if st.st_size < end:
        raise error(f"{path} is truncated: its tensors need {end:,} bytes but the file has "
                      f"{st.st_size:,}.")
    directions: dict[int, np.ndarray] = {}
    for t in tensors:
        m = _NAME.match(t.name)
        if m is None or int(m.group(1)) == 0:
            raise error(f"{path} has a tensor named {t.name!r}; llama.cpp accepts only "
                          "direction.N with N >= 1 (direction.0 is refused: block 0's output is "
                          "never steered).")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise error(f"{path}: {t.name} has type {t.tensor_type.name}; llama.cpp accepts "
                          "only F32 direction tensors.")
        if len(t.shape) != 1:
            raise error(f"{path}: {t.name} has shape {list(t.shape)}; direction tensors must "
                          "be 1-D [n_embd].")
        directions[int(m.group(1))] = np.array(t.data, dtype=np.float32).reshape(-1)
    widths = {n: d.shape[0] for n, d in directions.items()}
    if len(set(widths.values())) != 1:
        raise error(f"{path}: direction tensors have different widths {widths}; llama.cpp "
                      "requires one n_embd.")
    count = _field(reader, KEY_COUNT, path, error)
    if count is not None and (not isinstance(count, int) or count != len(directions)):
        raise error(
            f"{path} records controlvector.layer_count {count!r} but holds {len(directions)} "
            f"direction tensors ({sorted(directions)}): layers are missing or the count is "
            "corrupt."
        )
    component = _field(reader, KEY_COMPONENT, path, error)
    if component is not None and component not in GGUF_OFFSET:
        raise error(f"{path}: {KEY_COMPONENT} is {component!r}; valid: {list(GGUF_OFFSET)}.")
    strength = _field(reader, KEY_STRENGTH, path, error)
    if strength is not None and not (isinstance(strength, (int, float))
                                     and math.isfinite(strength)):
        raise error(f"{path}: {KEY_STRENGTH} must be a finite number, got {strength!r}.")
    raw = _field(reader, KEY_META, path, error)
    meta: dict[str, Any] = {}
    if raw is not None:
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (TypeError, ValueError) as err:
            raise error(f"{path}: {KEY_META} is not valid JSON metadata ({err}).") from err
    hint = _field(reader, KEY_HINT, path, error)
    cv = ControlVectorFile(
        path=path, directions=dict(sorted(directions.items())),
        model_hint=hint if isinstance(hint, str) else "", layer_count=count,
        component=component, strength=None if strength is None else float(strength),
        metadata=meta,
    )
    _check_recorded(cv, error)
    return cv


def _check_recorded(cv: ControlVectorFile, error: type[Exception]) -> None:
    """Refuse a file whose tensors disagree with the steerlens metadata written beside them.

    GGUF has no checksum, so the per-layer norms `to_gguf` records (of the unscaled directions)
    are the integrity check: each stored tensor's float64 norm divided by the baked strength must
    match within `NORM_RTOL`, and the recorded layers must be the file's layers.
    """
    meta = cv.metadata
    if not meta:
        return
    component = cv.component or "resid_post"
    layers = sorted(cv.layers(component))
    if meta.get("layers", layers) != layers:
        raise error(f"{cv.path} records {component} layers {meta.get('layers')} but holds "
                    f"directions for layers {layers}: tensors are missing or extra.")
    norms = meta.get("norms")
    strength = cv.strength if cv.strength is not None else 1.0
    if not isinstance(norms, dict) or strength == 0.0:
        return
    for layer, d in cv.layers(component).items():
        want = norms.get(str(layer))
        if not isinstance(want, (int, float)) or isinstance(want, bool):
            raise error(f"{cv.path} records no norm for {component} layer {layer}; the "
                        "metadata does not belong to these tensors.")
        got = float(np.linalg.norm(d.astype(np.float64))) / abs(strength)
        if not math.isclose(want, got, rel_tol=NORM_RTOL, abs_tol=1e-20):
            raise error(
                f"{cv.path}: direction.{gguf_index(layer, component)} has norm {got:.7g} (after "
                f"dividing by the baked strength {strength}) but the metadata records "
                f"{want:.7g}; the tensor data was edited or corrupted."
            )


def control_vector_buffer(directions: Mapping[int, Any], component: str, n_layers: int,
                          strength: float = 1.0) -> Float[np.ndarray, " n"]:
    """The flat float32 buffer llama.cpp's `llama_apply_adapter_cvec` takes for some directions.

    This is what `common_control_vector_load` builds from a file: direction N at offset
    `(N - 1) * n_embd` (there is no slot for block 0), zeros for unsteered blocks, every entry
    scaled by `strength`. Pass it with `len = buffer.size`, `n_embd`, `il_start = 1` and
    `il_end = n_layers` (llama.cpp's defaults).

    Args:
        directions: steerlens layer -> direction of shape [d_model] (e.g. `vector.directions`).
        component: "resid_post" or "resid_pre".
        n_layers: the model's number of blocks.
        strength: multiplier applied to every direction (one float32 multiply, as llama.cpp).

    Returns:
        A float32 array of length `(n_layers - 1) * d_model`.

    Raises:
        ValueError: if the component or a layer cannot be expressed, a direction lies beyond
            the model's last block, the widths differ, or `strength` is not finite.
    """
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength}.")
    arrays = {gguf_index(layer, component): _scaled(d, 1.0) for layer, d in directions.items()}
    widths = {a.shape[0] for a in arrays.values()}
    if len(widths) != 1:
        raise ValueError(f"All directions must share one width; got {sorted(widths)}.")
    d = widths.pop()
    buf = np.zeros((n_layers - 1) * d, dtype=np.float32)
    for n, arr in arrays.items():
        if n >= n_layers:
            raise ValueError(f"{component} direction.{n} lies beyond the model's {n_layers} "
                             f"blocks (valid indices 1..{n_layers - 1}).")
        buf[(n - 1) * d:n * d] += arr * np.float32(strength)
    return buf
