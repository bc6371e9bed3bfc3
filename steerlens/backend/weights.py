"""Weight edits: the one place steerlens changes a model's parameters, always reversibly.

`edited(model, new_values, label)` is a context manager that snapshots the named parameters,
writes the new values, marks the model as being edited (by `label`) and, on every exit path
(exceptions included), copies the snapshots back, which restores the weights bit-exactly, and
clears the mark. Only one edit may be active per model at a time: a second `edited` on a model
already being edited (say orthogonalisation inside spectral steering) raises a ValueError naming
both, before anything is touched, since restoring nested edits out of order would corrupt the
weights. Parameters are addressed by their names in the model (`parameter_keys`), and
`residual_writer_keys` lists the weights and biases that write into the residual stream (token
and learned position embeddings, each attention block's W_O and b_O, each MLP's W_out and b_out),
all of which have d_model as their last axis.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from .types import Model

_EDITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def being_edited(model: Model) -> str | None:
    """The label of the weight edit active on `model`, or None.

    Args:
        model (Model): the model.

    Returns:
        The label given to `edited`, or None when its weights are its own.
    """
    return _EDITS.get(model)


def parameter_keys(model: Model) -> list[str]:
    """Names of all parameters of the model, in registration order.

    Args:
        model (Model): the model.

    Returns:
        The names (e.g. "blocks.3.mlp.W_out").
    """
    return [name for name, _ in model.named_parameters()]


def _params(model: Model) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def read(model: Model, key: str) -> Tensor:
    """A detached view of one parameter (do not modify it; use `edited`).

    Args:
        model (Model): the model.
        key: the parameter's name.

    Returns:
        The parameter's data, detached.

    Raises:
        ValueError: for a name the model lacks.
    """
    params = _params(model)
    if key not in params:
        raise ValueError(f"The model has no parameter {key!r}; e.g. {list(params)[:6]}.")
    return params[key].detach()


def mlp_out_key(layer: int) -> str:
    """Name of a layer's MLP output matrix W_out [d_mlp, d_model].

    Args:
        layer: the block index.

    Returns:
        "blocks.{layer}.mlp.W_out".
    """
    return f"blocks.{layer}.mlp.W_out"


def residual_writer_keys(model: Model) -> list[str]:
    """Every parameter that writes into the residual stream, in forward order.

    W_E (and W_pos for learned absolute positions), then per block the attention output W_O
    [n_heads, d_head, d_model] and bias b_O, and the MLP output W_out [d_mlp, d_model] and bias
    b_out. Each has d_model as its last axis, so projecting a direction out of that axis removes
    the direction from everything the parameter writes.

    Args:
        model (Model): the model.

    Returns:
        The parameter names.

    Raises:
        ValueError: for an architecture where these are not the only writers or a writer is
            renormalised before reaching the residual (post-sublayer norms, mixture-of-experts),
            or whose embedding shares storage with the unembedding.
    """
    cfg = model.cfg
    if getattr(cfg, "use_normalization_before_and_after", False):
        raise ValueError("This model normalises each sublayer's output before adding it to the "
                         "residual stream (post-norms, as in Gemma 2/3), so projecting W_O and "
                         "W_out does not remove a direction from the residual; orthogonalisation "
                         "supports pre-norm models (Llama, SmolLM2, GPT-2, ...).")
    if getattr(cfg, "num_experts", None):
        raise ValueError("Orthogonalising mixture-of-experts MLPs is not supported.")
    params = _params(model)
    keys = ["embed.W_E"]
    if "pos_embed.W_pos" in params:
        keys.append("pos_embed.W_pos")
    for layer in range(int(cfg.n_layers)):
        keys += [f"blocks.{layer}.attn.W_O", f"blocks.{layer}.attn.b_O"]
        if not cfg.attn_only:
            keys += [mlp_out_key(layer), f"blocks.{layer}.mlp.b_out"]
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"This model lacks the residual writers {missing[:4]}; orthogonalisation "
                         "needs TransformerLens' standard attention and MLP parameters.")
    return keys


def _check_not_shared(params: Mapping[str, torch.nn.Parameter], keys: list[str]) -> None:
    ptrs = {params[k].untyped_storage().data_ptr(): k for k in keys}
    for name, p in params.items():
        if name not in keys and p.untyped_storage().data_ptr() in ptrs:
            raise ValueError(f"Parameter {ptrs[p.untyped_storage().data_ptr()]!r} shares its "
                             f"storage with {name!r} (tied weights), so editing one would edit "
                             "both; untie them before editing.")


@contextlib.contextmanager
def edited(model: Model, new_values: Mapping[str, Tensor], label: str) -> Iterator[None]:
    """Replace parameters inside the block; restore them bit-exactly on every exit path.

    Args:
        model (Model): the model.
        new_values: parameter name -> new value (same shape; cast to the parameter's dtype).
        label: who is editing (named in the error a concurrent edit gets).

    Yields:
        Nothing; the model carries the new weights inside the block.

    Raises:
        ValueError: if the model is already being edited, a name is unknown, a shape differs,
            a value is non-finite, or an edited parameter is tied to one not being edited.
    """
    active = being_edited(model)
    if active is not None:
        raise ValueError(f"Cannot start {label!r}: this model's weights are already being edited "
                         f"by {active!r}. Weight edits cannot be nested; leave that block first "
                         "(activation interventions such as steer() can be combined with it).")
    params = _params(model)
    for key, value in new_values.items():
        if key not in params:
            raise ValueError(f"The model has no parameter {key!r}; e.g. {list(params)[:6]}.")
        if tuple(value.shape) != tuple(params[key].shape):
            raise ValueError(f"New value for {key!r} has shape {tuple(value.shape)}; the "
                             f"parameter has shape {tuple(params[key].shape)}.")
        if not torch.isfinite(value).all():
            raise ValueError(f"New value for {key!r} has non-finite entries.")
    keys = list(new_values)
    _check_not_shared(params, keys)
    snapshots: dict[str, Tensor] = {}
    _EDITS[model] = label
    try:
        with torch.no_grad():
            for key in keys:
                snapshots[key] = params[key].detach().clone()
                params[key].copy_(new_values[key].to(params[key].device, params[key].dtype))
        yield
    finally:
        try:
            with torch.no_grad():
                for key, old in snapshots.items():
                    params[key].copy_(old)
        finally:
            _EDITS.pop(model, None)
