"""Weight orthogonalisation: bake a directional ablation into the weights.

Every parameter that writes into the residual stream (token and learned position embeddings,
each attention block's W_O and b_O, each MLP's W_out and b_out; all have d_model as their last
axis) is replaced by W - (W r) r^T for the unit direction r, so no component can write along r
and the residual stream never carries it (Arditi et al. 2024). For a pre-norm model this is the
same model as `Ablation(direction)` at every layer and every residual site: the logits agree to
float rounding, which `orthogonalisation_equivalence` measures (max |delta logit| per prompt, and
the residual difference per layer, next to the ablation's own effect so that agreement is not
vacuous). The edit runs through `steerlens.backend.weights`, so the weights are restored
bit-exactly on every exit path and it refuses to start while another weight edit (such as
`spectral_steering`) is active on the model, and vice versa.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime, weights
from ..io import atomic_write_text
from ..steer import steer, steered_forward
from ..vectors import SteeringVector
from .ablation import Ablation, _as_vector
from .base import unit_directions


@dataclass(frozen=True)
class Orthogonalisation:
    """What `orthogonalised` edited.

    Attributes:
        model: the model's id.
        keys: the parameters edited (all residual writers).
        max_write: the largest |W r| over the edited parameters before the edit (how much they
            wrote along r; the edit sets it to ~0).
    """

    model: str
    keys: tuple[str, ...]
    max_write: float


def _single_direction(direction: SteeringVector | Tensor, layer: int | None) -> Tensor:
    vec = _as_vector(direction)
    if layer is not None:
        if layer not in vec.layers:
            raise ValueError(f"The direction has no entry for layer {layer}; its layers are "
                             f"{vec.layers}.")
        vec = vec.select([layer])
    elif len(vec.layers) != 1:
        raise ValueError(f"Orthogonalisation removes one direction from the whole residual "
                         f"stream, but this vector has directions for layers {vec.layers}; pass "
                         "`layer=` to choose one (or a one-layer vector).")
    return unit_directions(vec, "The orthogonalisation direction")[vec.layers[0]]


def orthogonalised_weights(
    model: Model, direction: SteeringVector | Tensor, layer: int | None = None
) -> tuple[dict[str, Tensor], float]:
    """The residual writers with the direction projected out, without touching the model.

    Args:
        model (Model): the model.
        direction: a one-layer SteeringVector or a 1-D tensor [d_model] (or a multi-layer vector
            with `layer`).
        layer: which layer's direction to use for a multi-layer vector.

    Returns:
        (parameter name -> new value in the parameter's dtype, max |W r| before the edit).

    Raises:
        ValueError: for a zero, non-finite or wrong-width direction, a multi-layer vector without
            `layer`, or an architecture `weights.residual_writer_keys` refuses.
    """
    r = _single_direction(direction, layer)
    dm = runtime.d_model(model)
    if r.shape[0] != dm:
        raise ValueError(f"The direction has d_model {r.shape[0]} but the model has d_model {dm}.")
    out, max_write = {}, 0.0
    for key in weights.residual_writer_keys(model):
        w = weights.read(model, key)
        r_dev = r.to(w.device)
        w64 = w.to(torch.float64)
        along = w64 @ r_dev  # [..., ]
        max_write = max(max_write, float(along.abs().max()))
        out[key] = (w64 - along[..., None] * r_dev).to(w.dtype)
    return out, max_write


@contextlib.contextmanager
def orthogonalised(
    model: Model, direction: SteeringVector | Tensor, layer: int | None = None
) -> Iterator[Orthogonalisation]:
    """Project `direction` out of every residual-writing weight inside the block.

    Args:
        model (Model): the model; restored bit-exactly on every exit path.
        direction: a one-layer SteeringVector or a 1-D tensor [d_model] (or a multi-layer vector
            with `layer`).
        layer: which layer's direction to use for a multi-layer vector.

    Yields:
        An `Orthogonalisation` naming what was edited.

    Raises:
        ValueError: as `orthogonalised_weights`, or when the model's weights are already being
            edited (e.g. inside `spectral_steering`), before anything is touched.

    Example:
        >>> with orthogonalised(model, refusal.layer(12)):  # doctest: +SKIP
        ...     out = sl.generate(model, prompts)
    """
    active = weights.being_edited(model)
    if active is not None:  # fail before the (possibly large) projection is computed
        raise ValueError(f"Cannot orthogonalise: this model's weights are already being edited "
                         f"by {active!r}; weight edits cannot be nested.")
    values, max_write = orthogonalised_weights(model, direction, layer)
    with weights.edited(model, values, "orthogonalised"):
        yield Orthogonalisation(runtime.model_id(model), tuple(values), max_write)


@dataclass(frozen=True)
class EquivalenceResult:
    """Orthogonalised weights vs activation ablation at every layer and residual site.

    Attributes:
        model: the model's id.
        prompts: the prompts compared.
        max_dlogit: per prompt, max |logit_orth - logit_ablate| over positions and vocabulary.
        max_dresid: [prompt, layer] max |resid_post_orth - resid_post_ablate|.
        logit_scale: per prompt, max |logit| of the ablated model (for scale).
        ablation_effect: per prompt, max |logit_ablate - logit_unedited| (how much the
            ablation changes the model: agreement is only informative when this is large).
        dtype: the model's dtype.
        direction: how the direction was made (free text; empty when not recorded).
    """

    model: str
    prompts: tuple[str, ...]
    max_dlogit: np.ndarray
    max_dresid: np.ndarray
    logit_scale: np.ndarray
    ablation_effect: np.ndarray
    dtype: str
    direction: str = ""

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.prompts)

    def to_dict(self) -> dict:
        """The result as a JSON-ready dict.

        Returns:
            The per-prompt arrays and their maxima, with n.
        """
        return {"model": self.model, "n_prompts": self.n, "dtype": self.dtype,
                "direction": self.direction,
                "max_abs_dlogit": float(self.max_dlogit.max()),
                "max_abs_logit": float(self.logit_scale.max()),
                "relative_max_dlogit": float(self.max_dlogit.max() / self.logit_scale.max()),
                "min_ablation_effect": float(self.ablation_effect.min()),
                "per_prompt": {"max_abs_dlogit": self.max_dlogit.tolist(),
                               "max_abs_logit": self.logit_scale.tolist(),
                               "ablation_effect": self.ablation_effect.tolist()},
                "max_abs_dresid_by_layer": self.max_dresid.max(0).tolist(),
                "max_abs_dresid": self.max_dresid.tolist(),
                "prompts": list(self.prompts)}

    @classmethod
    def from_dict(cls, d: dict) -> EquivalenceResult:
        """Rebuild a result from `to_dict()` output (e.g. a saved JSON file).

        Args:
            d: the dict.

        Returns:
            The result.
        """
        per = d["per_prompt"]
        return cls(d["model"], tuple(d["prompts"]), np.asarray(per["max_abs_dlogit"], float),
                   np.asarray(d["max_abs_dresid"], float).reshape(len(d["prompts"]), -1),
                   np.asarray(per["max_abs_logit"], float),
                   np.asarray(per["ablation_effect"], float), d["dtype"], d.get("direction", ""))


def orthogonalisation_equivalence(
    model: Model,
    direction: SteeringVector | Float[Tensor, " d_model"],
    prompts: Sequence[str],
    layer: int | None = None,
) -> EquivalenceResult:
    """Compare the orthogonalised model with `Ablation(direction)` at every layer and site.

    Each prompt runs alone (no padding), three times: unedited, ablated by hooks at every
    resid_pre/resid_mid/resid_post, and with orthogonalised weights.

    Args:
        model (Model): the model (restored afterwards).
        direction: the direction (as for `orthogonalised`).
        prompts: the prompts (raw text, BOS prepended).
        layer: which layer's direction to use for a multi-layer vector.

    Returns:
        The `EquivalenceResult`.

    Raises:
        ValueError: for no prompts, or as `orthogonalised`.
    """
    if not prompts:
        raise ValueError("orthogonalisation_equivalence needs at least one prompt.")
    r = _single_direction(direction, layer)
    ablation = Ablation(r.float())
    n_layers = runtime.n_layers(model)
    posts = [runtime.hook_name(la, "resid_post") for la in range(n_layers)]
    dlogit, dresid, scale, effect = [], [], [], []
    for prompt in prompts:
        batch = runtime.encode_prompts(model, [prompt], chat=False)
        base = runtime.forward(model, batch).double()
        with steer(model, ablation) as s:
            abl, abl_resid = _run_capture(model, batch, posts, s)
        with orthogonalised(model, r):
            orth, orth_resid = _run_capture(model, batch, posts, None)
        dlogit.append(float((orth - abl).abs().max()))
        scale.append(float(abl.abs().max()))
        effect.append(float((abl - base).abs().max()))
        dresid.append([float((orth_resid[k] - abl_resid[k]).abs().max()) for k in posts])
    return EquivalenceResult(runtime.model_id(model), tuple(prompts), np.array(dlogit),
                             np.array(dresid), np.array(scale), np.array(effect),
                             str(runtime.model_dtype(model)).removeprefix("torch."))


def _run_capture(model: Model, batch: runtime.TokenBatch, names: list[str],
                 steerer) -> tuple[Tensor, dict[str, Tensor]]:
    seen: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(act: Tensor, hook) -> None:
            seen[name] = act.detach().double().clone()
        return hook

    with runtime.attached(model, [(n, keep(n)) for n in names]):
        logits = steered_forward(model, batch, steerer)
    return logits.double(), seen


def save_equivalence(result: EquivalenceResult, path: str | Path) -> Path:
    """Write `result.to_dict()` as JSON, atomically.

    Args:
        result: the equivalence result.
        path: the JSON file (parents created).

    Returns:
        The path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2))
    return path


def behaviour_equivalence(
    model: Model,
    behaviour: str = "refusal",
    layer: int | None = None,
    n_prompts: int = 8,
    n_pairs: int = 16,
) -> tuple[EquivalenceResult, SteeringVector]:
    """The equivalence check with a real direction: a behaviour's mean difference at one layer.

    The direction is `mean_diff` of the behaviour's first `n_pairs` training pairs at `layer`
    (resid_pre, last token; default the middle layer); the prompts are its first `n_prompts`
    evaluation prompts (raw text).

    Args:
        model (Model): the model.
        behaviour: a shipped behaviour's name.
        layer: the layer the direction is read at (None: n_layers // 2).
        n_prompts: evaluation prompts compared.
        n_pairs: training pairs averaged.

    Returns:
        (the `EquivalenceResult`, the direction used).

    Raises:
        ValueError: for an unknown behaviour or a layer out of range.
    """
    from ..methods import build_vector
    from ..pairs import load_behaviour

    beh = load_behaviour(behaviour)
    layer = runtime.n_layers(model) // 2 if layer is None else layer
    vec = build_vector(model, beh.train[:n_pairs], [layer], show_progress=False)
    prompts = list(beh.eval_prompts)[:n_prompts]
    res = orthogonalisation_equivalence(model, vec, prompts)
    info = (f"mean_diff of {behaviour!r} train pairs (n={len(beh.train[:n_pairs])}) at layer "
            f"{layer} resid_pre, last token; |r| = {vec.norms[layer]:.4g} before normalising")
    return replace(res, direction=info), vec
