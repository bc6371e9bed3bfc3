"""Interventions: every way `steer()` can edit a running model's activations, under one protocol.

Each kind is a frozen description (`Intervention` subclass) with the same strength, position and
schedule semantics as additive steering: `Injection` adds a vector, `Ablation` projects a direction
out (optionally replacing it by a target value), `FeatureClamp` sets SAE features, `HeadSteer`
edits one attention head's output, `Conditional` gates another intervention on a condition
direction (CAST). `orthogonalised(model, direction)` bakes an ablation into the weights instead.
At one hook they apply in the order reads (-1), ablations (0), clamps (1), head edits (2),
additions (3), ties in list order. All save and load with `save_intervention` /
`load_intervention`. Kinds are imported lazily, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import (
    ORDERS,
    BoundIntervention,
    Intervention,
    InterventionFileError,
    PositionContext,
    load_intervention,
    position_mask,
    registered_kinds,
    save_intervention,
)

_LAZY: dict[str, str] = {
    "Injection": "steerlens.steer",
    "Ablation": "steerlens.interventions.ablation",
    "ablation_target": "steerlens.interventions.ablation",
    "orthogonalised": "steerlens.interventions.orthogonalise",
    "orthogonalisation_equivalence": "steerlens.interventions.orthogonalise",
    "FeatureClamp": "steerlens.interventions.clamp",
    "HeadSteer": "steerlens.interventions.heads",
    "HeadAblation": "steerlens.interventions.heads",
    "head_mean": "steerlens.interventions.heads",
    "Conditional": "steerlens.interventions.conditional",
    "choose_threshold": "steerlens.interventions.conditional",
    "condition_similarity": "steerlens.interventions.conditional",
    "ThresholdChoice": "steerlens.interventions.conditional",
}

__all__ = [
    "ORDERS",
    "BoundIntervention",
    "Intervention",
    "InterventionFileError",
    "PositionContext",
    "load_intervention",
    "position_mask",
    "registered_kinds",
    "save_intervention",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import a kind's module on first access (`steerlens.interventions.Ablation`).

    Args:
        name: the attribute.

    Returns:
        The attribute from its module.

    Raises:
        AttributeError: for a name this package does not provide (or whose module is missing).
    """
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as err:
            raise AttributeError(f"steerlens.interventions.{name} is not available: {err}") from err
        return getattr(module, name)
    raise AttributeError(f"module 'steerlens.interventions' has no attribute {name!r}")
