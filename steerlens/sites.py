"""Activation sites: where in the model a vector is read or written.

A `Site` is a (layer, component) pair, e.g. `Site(12, "resid_pre")`, the residual stream entering
block 12. Sites are typed values, validated against a model before use, and turned into hook names
by one function in the backend, so no code parses hook names out of strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import Model, runtime

# One of COMPONENTS. Typed as str (not Literal) so a wrong value reaches our ValueError, which
# lists the valid values, rather than a type-checker error.
Component = str
COMPONENTS: tuple[str, ...] = runtime.COMPONENTS


@dataclass(frozen=True, order=True)
class Site:
    """A layer and a component of the residual computation.

    Attributes:
        layer: the TransformerLens block index (>= 0).
        component: one of `COMPONENTS`: "resid_pre" (entering the block), "resid_mid",
            "resid_post" (leaving it), "attn_out" or "mlp_out".
    """

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

    def validate(self, model: Model) -> Site:
        """Check the layer exists in `model`; return self for chaining.

        Args:
            model (Model): the model to check against.

        Returns:
            The site itself.

        Raises:
            ValueError: if the layer is out of the model's range.
        """
        check_layer(model, self.layer)
        return self

    def hook_name(self, model: Model | None = None) -> str:
        """The backend hook name (validated against `model` when one is given).

        Args:
            model (Model | None): when given, the layer is checked against it first.

        Returns:
            The TransformerLens hook name, e.g. "blocks.12.hook_resid_pre".

        Raises:
            ValueError: if `model` is given and the layer is out of range.
        """
        if model is not None:
            self.validate(model)
        return runtime.hook_name(self.layer, self.component)

    def __str__(self) -> str:
        return f"{self.component}@{self.layer}"


def check_layer(model: Model, layer: int) -> int:
    """Raise a ValueError naming the valid range if `layer` is not a layer of `model`.

    Args:
        model (Model): the model.
        layer: the layer index to check.

    Returns:
        The layer, unchanged.

    Raises:
        ValueError: if `layer` is not an int in 0..n_layers-1.
    """
    n = runtime.n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"Layer {layer!r} is out of range: this model has layers 0..{n - 1}.")
    return layer


def sites(layers, component: Component = "resid_pre") -> list[Site]:
    """Sites for several layers at one component.

    Args:
        layers (Iterable[int]): the layers.
        component: the component shared by every site.

    Returns:
        One `Site` per layer, in the given order.
    """
    return [Site(int(layer), component) for layer in layers]
