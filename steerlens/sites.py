"""Activation sites: where in the model a vector is read or written.

A `Site` is a (layer, component) pair, e.g. `Site(12, "resid_pre")`, the residual stream entering
block 12. Sites are typed values, validated against a model before use, and turned into hook names
by one function in the backend, so no code parses hook names out of strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import runtime

# One of COMPONENTS. Typed as str (not Literal) so a wrong value reaches our ValueError, which
# lists the valid values, rather than a type-checker error.
Component = str
COMPONENTS: tuple[str, ...] = runtime.COMPONENTS


@dataclass(frozen=True, order=True)
class Site:
    """A layer and a component of the residual computation."""

    layer: int
    component: Component = "resid_pre"

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise ValueError(f"Site layer must be an int, got {self.layer!r}.")
        if self.layer < 0:
            raise ValueError(f"Site layer must be >= 0, got {self.layer}.")
        if self.component not in COMPONENTS:
            raise ValueError(
                f"Unknown component {self.component!r}; valid components are {list(COMPONENTS)}."
            )

    def validate(self, model) -> Site:
        """Check the layer exists in `model`; return self for chaining."""
        check_layer(model, self.layer)
        return self

    def hook_name(self, model=None) -> str:
        """The backend hook name (validated against `model` when one is given)."""
        if model is not None:
            self.validate(model)
        return runtime.hook_name(self.layer, self.component)

    def __str__(self) -> str:
        return f"{self.component}@{self.layer}"


def check_layer(model, layer: int) -> int:
    """Raise a ValueError naming the valid range if `layer` is not a layer of `model`."""
    n = runtime.n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"Layer {layer!r} is out of range: this model has layers 0..{n - 1}.")
    return layer


def sites(layers, component: Component = "resid_pre") -> list[Site]:
    """Sites for several layers at one component."""
    return [Site(int(layer), component) for layer in layers]
