"""Vectors from other steering libraries: steering-vectors and repeng, layer conventions included.

Both libraries steer a Hugging Face model with forward hooks that add a vector to a module's
*output*, and both key their vectors by decoder-layer index:

- steering-vectors (`steering_vectors.SteeringVector`, read from its 0.12.2 source): a
  `layer_activations` dict {layer: tensor} and a `layer_type`; `patch_activations` hooks the
  `layer`-th module matching the layer type ("decoder_block" = `model.layers[layer]`,
  "self_attn", "mlp", "input_layernorm", "post_attention_layernorm") and adds
  `multiplier * tensor` to its output at every position (from `min_token_index` on). The output of
  decoder block i is steerlens' `resid_post` of block i (= `resid_pre` of block i + 1); the
  output of its attention / MLP module is `attn_out` / `mlp_out` of block i. Layer-norm outputs
  have no steerlens site and are refused.
- repeng (`repeng.ControlVector`, read from its 0.4.0 source): a `directions` dict
  {layer: np.ndarray}; `ControlModel` wraps `model.layers[layer]` and adds
  `coefficient * direction` to the block's output (non-padding positions), so direction i is
  `resid_post` of block i. Keys may be negative (repeng trains on `range(-1, -n_layers, -1)` by
  default) and count from the end like Python indices: key -k is block n_layers - k, so a model
  (or `n_layers`) is needed to convert them. (repeng reads key -1 from Hugging Face's last hidden
  state, which is after the final norm, but it is applied at the last block's output; the
  conversion follows where it is applied.)

The multiplier / coefficient is steerlens' `strength`: `with sl.steer(model, vec, strength=m)`
adds exactly what `sv.apply(hf_model, multiplier=m)` or `ControlModel.set_control(cv * m)` adds.
The converters read the objects' attributes only (duck-typed; neither library needs to be
installed, and nothing is unpickled on our side) and build the vector with
`SteeringVector.from_tensors`. `to_layer_activations` goes the other way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from ..backend import Model, runtime
from ..vectors import SteeringVector

STEERING_VECTORS_SITES: dict[str, str] = {
    "decoder_block": "resid_post",
    "self_attn": "attn_out",
    "mlp": "mlp_out",
}
"""steering-vectors `layer_type` -> the steerlens component its hook adds to."""


def _block(key: Any, n_layers: int | None, source: str) -> int:
    if isinstance(key, bool):
        raise ValueError(f"{source} layer keys must be ints, got {key!r}.")
    try:
        k = int(key)
    except (TypeError, ValueError):
        raise ValueError(f"{source} layer keys must be ints, got {key!r}.") from None
    if k != key:
        raise ValueError(f"{source} layer keys must be ints, got {key!r}.")
    if k >= 0:
        if n_layers is not None and k >= n_layers:
            raise ValueError(f"{source} layer {k} does not exist in a model with {n_layers} "
                             f"layers (valid: 0..{n_layers - 1}, or -{n_layers}..-1).")
        return k
    if n_layers is None:
        raise ValueError(f"{source} layer key {k} counts from the end; pass model= (or "
                         "n_layers=) so it can be turned into a block index.")
    if k < -n_layers:
        raise ValueError(f"{source} layer {k} does not exist in a model with {n_layers} layers "
                         f"(valid: 0..{n_layers - 1}, or -{n_layers}..-1).")
    return n_layers + k


def _depth(model: Model | None, n_layers: int | None) -> int | None:
    if model is not None:
        depth = runtime.n_layers(model)
        if n_layers is not None and n_layers != depth:
            raise ValueError(f"n_layers={n_layers} but the model has {depth} layers.")
        return depth
    return n_layers


def from_steering_vectors(sv: Any, *, model: Model | None = None, n_layers: int | None = None,
                          model_id: str | None = None) -> SteeringVector:
    """Convert a steering-vectors `SteeringVector` (its `layer_activations` and `layer_type`).

    Args:
        sv: the steering-vectors object (anything with `layer_activations`, a dict {layer:
            tensor}, and optionally `layer_type`, default "decoder_block").
        model (Model | None): the steerlens model it is for (checks width and layers; sets the
            model id; resolves negative layer keys).
        n_layers: the model's depth, to resolve negative keys without a model.
        model_id: the model it was built on, when no model is given.

    Returns:
        A steerlens `SteeringVector` at the matching component (see `STEERING_VECTORS_SITES`),
        one direction per layer, values unchanged (method "steering-vectors").

    Raises:
        ValueError: for a layer type steerlens cannot steer (layer norms), a negative key
            without a model, a layer outside the model, or anything `from_tensors` refuses.
        TypeError: if `sv` has no `layer_activations` mapping.
    """
    acts = getattr(sv, "layer_activations", None)
    if not isinstance(acts, Mapping):
        raise TypeError("Expected a steering-vectors SteeringVector (with a layer_activations "
                        f"dict); got {type(sv).__name__}.")
    layer_type = getattr(sv, "layer_type", "decoder_block")
    if layer_type not in STEERING_VECTORS_SITES:
        raise ValueError(f"steering-vectors layer_type {layer_type!r} has no steerlens site; "
                         f"convertible types are {sorted(STEERING_VECTORS_SITES)}.")
    depth = _depth(model, n_layers)
    tensors = {}
    for key, value in acts.items():
        block = _block(key, depth, "steering-vectors")
        if block in tensors:
            raise ValueError(f"steering-vectors layers {key} and another key both name block "
                             f"{block}.")
        tensors[block] = value
    return SteeringVector.from_tensors(
        tensors, STEERING_VECTORS_SITES[layer_type], model=model, model_id=model_id,
        method="steering-vectors",
        extra={"source": "steering-vectors", "layer_type": layer_type,
               "source_layers": sorted(int(k) for k in acts)})


def from_repeng(cv: Any, *, model: Model | None = None, n_layers: int | None = None,
                model_id: str | None = None) -> SteeringVector:
    """Convert a repeng `ControlVector` (its `directions`, added to decoder-block outputs).

    Args:
        cv: the repeng object (anything with `directions`, a dict {layer: array}, and optionally
            `model_type`).
        model (Model | None): the steerlens model (checks; model id; resolves negative keys).
        n_layers: the model's depth, to resolve negative keys without a model.
        model_id: the model it was built on, when no model is given.

    Returns:
        A steerlens `SteeringVector` at `resid_post`, one direction per block (method "repeng").

    Raises:
        ValueError: for a negative key without a model, a layer outside the model, two keys
            naming one block, or anything `from_tensors` refuses.
        TypeError: if `cv` has no `directions` mapping.
    """
    dirs = getattr(cv, "directions", None)
    if not isinstance(dirs, Mapping):
        raise TypeError(f"Expected a repeng ControlVector (with a directions dict); got "
                        f"{type(cv).__name__}.")
    depth = _depth(model, n_layers)
    tensors = {}
    for key, value in dirs.items():
        block = _block(key, depth, "repeng")
        if block in tensors:
            raise ValueError(f"repeng layers {key} and another key both name block {block}.")
        tensors[block] = np.asarray(value) if not isinstance(value, Tensor) else value
    return SteeringVector.from_tensors(
        tensors, "resid_post", model=model, model_id=model_id, method="repeng",
        extra={"source": "repeng", "model_type": str(getattr(cv, "model_type", "")),
               "source_layers": sorted(int(k) for k in dirs)})


def to_layer_activations(vector: SteeringVector) -> dict[int, Tensor]:
    """The vector as {decoder layer: tensor} for libraries that add to decoder-block outputs.

    That is steering-vectors' `layer_activations` (layer_type "decoder_block") and repeng's
    `directions` (as numpy: `{k: v.numpy() ...}`): `resid_post` of block i becomes key i, and
    `resid_pre` of block i becomes key i - 1.

    Args:
        vector: a steerlens vector at `resid_pre` or `resid_post`.

    Returns:
        {decoder layer: float32 tensor}.

    Raises:
        ValueError: for another component, or `resid_pre` of block 0 (the embeddings, which is
            no decoder block's output).
    """
    if vector.component == "resid_post":
        return {layer: vector[layer].clone() for layer in vector.layers}
    if vector.component != "resid_pre":
        raise ValueError(f"Only resid_pre / resid_post vectors map onto decoder-block outputs; this "
                         f"one is at {vector.component!r}.")
    if 0 in vector.layers:
        raise ValueError("resid_pre of block 0 is the embedding output, not a decoder block's "
                         "output; libraries that hook decoder blocks cannot express it.")
    return {layer - 1: vector[layer].clone() for layer in vector.layers}
