"""Directional ablation: remove (or pin) the component of activations along a direction.

At each site, `x <- x - s * ((x . r) - t) r`, with r the unit direction, s the strength and t the
target (0 by default): at strength 1 the component along r is removed (t = 0), or replaced by t
(e.g. the mean projection of a reference set, such as harmless prompts, from `ablation_target`).
Strength 0 is the identity, 0 < s < 1 removes part of it, and a per-row strength ablates each row
by its own amount. As in refusal-direction work (Arditi et al. 2024, "Refusal in language models is
mediated by a single direction"), the default is every layer and every residual site (resid_pre,
resid_mid, resid_post), which is what `orthogonalised` reproduces in the weights; any layers and
any components (including attn_out / mlp_out) can be chosen. A direction given for one layer is
used at every ablated layer; a direction with several layers uses each layer's own direction (and
ablates only those layers by default). Positions and schedules follow additive steering, so KV
cached and uncached generation agree; in one `steer()` block an ablation runs before additions at
the same hook (kind order 0 vs 3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime
from ..extract import Activations
from ..sites import COMPONENTS, check_layer
from ..vectors import SteeringVector
from .base import (
    ORDERS,
    BoundIntervention,
    Intervention,
    PositionContext,
    unit_directions,
    vector_fields,
    vector_from_saved,
    vector_tensors,
    weight,
)

RESIDUAL_SITES: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")


def _as_vector(direction: SteeringVector | Tensor) -> SteeringVector:
    if isinstance(direction, SteeringVector):
        return direction
    if isinstance(direction, Tensor):
        if direction.ndim != 1:
            raise ValueError(f"An ablation direction tensor must be 1-D [d_model], got shape "
                             f"{tuple(direction.shape)}.")
        if not torch.isfinite(direction).all():
            raise ValueError("The ablation direction has non-finite values (inf or NaN).")
        return SteeringVector({0: direction}, method="custom", extra={"broadcast": True})
    raise ValueError(f"Ablation.direction must be a SteeringVector or a 1-D tensor, got "
                     f"{type(direction).__name__}.")


def _check_target(target: object) -> float | dict[int, float] | None:
    if target is None:
        return None
    if isinstance(target, Mapping):
        out = {}
        for k, v in target.items():
            if isinstance(k, bool) or not isinstance(k, int):
                raise ValueError(f"Per-layer targets must be keyed by int layers, got {k!r}.")
            out[k] = _finite(v)
        return dict(sorted(out.items()))
    return _finite(target)


def _finite(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"An ablation target must be a finite number (or a dict layer -> number), "
                         f"got {v!r}.")
    return float(v)


@dataclass(frozen=True, eq=False)
class Ablation(Intervention):
    """Project a direction out of activations (optionally pinning its component to a target).

    Attributes:
        direction: a SteeringVector (one layer: used at every ablated layer; several layers: each
            layer its own direction) or a 1-D tensor [d_model] (used at every layer). Only its
            direction matters; it is normalised to unit length.
        target: None (remove the component), a number t (set the component to t), or a dict
            layer -> t; see `ablation_target`.
        layers: the layers to ablate (None: every layer of the model for a one-layer direction,
            else the direction's layers).
        components: the sites within each layer (default the three residual sites).
        strength: multiplier on the removal (1 full, 0 none; per-row strengths allowed).
        positions: where it applies, one of `POSITION_MODES`.
        start_step: first generated-token index at which it is active.
        stop_step: generated-token index at which it stops (None: never).
        name: a label for `Steerer.set_strength(name, ...)`.
    """

    kind: ClassVar[str] = "ablate"
    order: ClassVar[int] = ORDERS["ablate"]

    direction: SteeringVector | Tensor
    target: float | Mapping[int, float] | None = None
    layers: Sequence[int] | int | None = None
    components: Sequence[str] | str = RESIDUAL_SITES
    strength: float = 1.0
    positions: str = "all"
    start_step: int = 0
    stop_step: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        vec = _as_vector(self.direction)
        unit_directions(vec, "The ablation direction")  # refuses a zero direction
        object.__setattr__(self, "direction", vec)
        object.__setattr__(self, "target", _check_target(self.target))
        comps = (self.components,) if isinstance(self.components, str) else tuple(self.components)
        bad = [c for c in comps if c not in COMPONENTS]
        if not comps or bad:
            raise ValueError(f"Unknown ablation component(s) {bad or comps!r}; valid components are "
                             f"{list(COMPONENTS)}.")
        if len(set(comps)) != len(comps):
            raise ValueError(f"Ablation components repeat: {list(comps)}.")
        object.__setattr__(self, "components", comps)
        if self.layers is not None:
            layers = [self.layers] if isinstance(self.layers, int) else list(self.layers)
            for layer in layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise ValueError(f"Ablation layers must be ints >= 0, got {layer!r}.")
            if not layers or len(set(layers)) != len(layers):
                raise ValueError(f"Ablation layers must be non-empty and distinct, got {layers}.")
            if not self.broadcast:
                missing = [la for la in layers if la not in self.direction.layers]
                if missing:
                    raise ValueError(f"The direction has no entry for layers {missing}; its layers "
                                     f"are {self.direction.layers} (give a one-layer direction "
                                     "to use it at every layer).")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        self.check_common()

    @property
    def broadcast(self) -> bool:
        """Whether one direction is used at every ablated layer (a one-layer direction)."""
        return len(self.direction.layers) == 1

    def ablated_layers(self, model: Model) -> list[int]:
        """The layers this ablation edits on `model`.

        Args:
            model (Model): the model.

        Returns:
            The layers, ascending.
        """
        if self.layers is not None:
            return list(self.layers)
        if self.broadcast:
            return list(range(runtime.n_layers(model)))
        return list(self.direction.layers)

    def unit(self, layer: int) -> Float[Tensor, " d_model"]:
        """The unit direction used at `layer` (float64).

        Args:
            layer: the layer.

        Returns:
            r / |r|.
        """
        src = self.direction.layers[0] if self.broadcast else layer
        return unit_directions(self.direction.select([src]), "The ablation direction")[src]

    def target_at(self, layer: int) -> float:
        """The target component at `layer` (0.0 when there is none).

        Args:
            layer: the layer.

        Returns:
            The target.
        """
        if self.target is None:
            return 0.0
        if isinstance(self.target, Mapping):
            return float(self.target.get(layer, 0.0))
        return float(self.target)

    def check_model(self, model: Model) -> None:
        """Refuse a direction of the wrong width or layers/targets the model lacks.

        Args:
            model (Model): the model.

        Raises:
            ValueError: naming what is wrong and the valid range.
        """
        dm = runtime.d_model(model)
        if self.direction.d_model != dm:
            raise ValueError(f"The ablation direction has d_model {self.direction.d_model} but the "
                             f"model {runtime.model_id(model)!r} has d_model {dm}.")
        for layer in self.ablated_layers(model):
            check_layer(model, layer)
        if isinstance(self.target, Mapping):
            extra = sorted(set(self.target) - set(self.ablated_layers(model)))
            if extra:
                raise ValueError(f"Targets given for layers {extra} that are not ablated; ablated "
                                 f"layers are {self.ablated_layers(model)}.")

    def sites(self, model: Model) -> list[tuple[str, int]]:
        """Every (hook, layer) for the ablated layers x components, in forward order.

        Args:
            model (Model): the model.

        With the default components, a site the architecture lacks (resid_mid in models that run
        attention and MLP in parallel) is left out; chosen components are all required.

        Returns:
            The pairs.
        """
        pairs = [(runtime.hook_name(layer, comp), layer) for layer in self.ablated_layers(model)
                 for comp in self.components]
        if self.components == RESIDUAL_SITES:
            pairs = [(name, layer) for name, layer in pairs if runtime.has_hook(model, name)]
        return pairs

    def bind(self, model: Model) -> BoundIntervention:
        """Unit directions and targets on the model's device and dtype.

        Args:
            model (Model): the model.

        Returns:
            The bound ablation.
        """
        dev, dtype = runtime.model_device(model), runtime.model_dtype(model)
        layers = self.ablated_layers(model)
        units = {la: self.unit(la).to(dev, dtype) for la in layers}
        targets = {la: self.target_at(la) for la in layers}
        return _BoundAblation(units, targets)

    def max_push(self) -> float:
        """|target| times the largest |entry| of the unit direction (0 without a target).

        Returns:
            The push at strength 1 beyond the removal itself.
        """
        if self.target is None:
            return 0.0
        t = (max(abs(v) for v in self.target.values()) if isinstance(self.target, Mapping)
             else abs(self.target))
        if not t:
            return 0.0
        return t * max(float(unit_directions(self.direction, "d")[la].abs().max())
                       for la in self.direction.layers)

    def to_dict(self) -> dict[str, Any]:
        """Target, layers, components and the direction's metadata.

        Returns:
            A JSON-ready dict.
        """
        target = ({str(k): v for k, v in self.target.items()} if isinstance(self.target, Mapping)
                  else self.target)
        return {"target": target, "target_per_layer": isinstance(self.target, Mapping),
                "layers": None if self.layers is None else list(self.layers),
                "components": list(self.components), "direction": vector_fields(self.direction)}

    def tensors(self) -> dict[str, Tensor]:
        """The direction's tensors.

        Returns:
            Keys "direction.layer.{i}".
        """
        return vector_tensors(self.direction, "direction")

    @classmethod
    def from_saved(cls, fields: Mapping[str, Any], tensors: Mapping[str, Tensor],
                   common: Mapping[str, Any]) -> Ablation:
        """Rebuild from a saved record.

        Args:
            fields: `to_dict()` output.
            tensors: `tensors()` output.
            common: the common fields.

        Returns:
            The ablation.
        """
        target = fields.get("target")
        if fields.get("target_per_layer") and isinstance(target, Mapping):
            target = {int(k): v for k, v in target.items()}
        return cls(vector_from_saved(fields.get("direction", {}), tensors, "direction"),
                   target=target, layers=fields.get("layers"),
                   components=tuple(fields.get("components", RESIDUAL_SITES)), **common)


class _BoundAblation(BoundIntervention):
    def __init__(self, units: dict[int, Tensor], targets: dict[int, float]) -> None:
        self.units = units
        self.targets = targets

    def apply(self, act: Tensor, layer: int, hook_name: str, scale: float | Tensor,
              mask: Tensor | None, context: PositionContext) -> Tensor:
        r = self.units[layer]
        coef = act @ r  # [batch, pos]
        t = self.targets[layer]
        if t:
            coef = coef - t
        return act - (weight(act, scale, mask) * coef[..., None]) * r


def ablation_target(
    direction: SteeringVector | Tensor,
    activations: Activations | Mapping[int, Tensor] | Tensor,
) -> float | dict[int, float]:
    """The mean projection of reference activations on the unit direction (an ablation target).

    E.g. the harmless prompts' mean component along the refusal direction: ablating with this
    target sets every activation's component to what it is, on average, on harmless inputs.

    Args:
        direction: the ablation direction (a SteeringVector with one or several layers, or a
            1-D tensor used at every layer).
        activations: reference activations: a tensor [n, d_model] (one target), or per layer
            (an `Activations` or a dict layer -> [n, d_model]).

    Returns:
        A float for a tensor, else a dict layer -> float (usable as `Ablation(target=...)`).

    Raises:
        ValueError: for a zero or non-finite direction, empty or non-finite activations, a
            width mismatch, or a layer the direction has no entry for.
    """
    vec = _as_vector(direction)
    units = unit_directions(vec, "The ablation direction")
    broadcast = len(vec.layers) == 1

    def mean_proj(acts: Tensor, layer: int | None) -> float:
        acts = torch.as_tensor(acts)
        if acts.ndim != 2 or acts.shape[0] == 0 or acts.shape[1] != vec.d_model:
            raise ValueError(f"Reference activations must be [n >= 1, {vec.d_model}], got shape "
                             f"{tuple(acts.shape)}.")
        if not torch.isfinite(acts).all():
            raise ValueError("Reference activations have non-finite values.")
        key = vec.layers[0] if broadcast or layer is None else layer
        if key not in units:
            raise ValueError(f"The direction has no entry for layer {layer}; its layers are "
                             f"{vec.layers}.")
        return float((acts.double() @ units[key]).mean())

    if isinstance(activations, Tensor):
        return mean_proj(activations, None)
    by_layer = activations.by_layer if isinstance(activations, Activations) else activations
    return {int(layer): mean_proj(acts, int(layer)) for layer, acts in sorted(by_layer.items())}
