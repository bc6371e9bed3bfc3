"""Ways to turn contrast activations into a steering direction.

Each method is a small function of row-aligned positive and negative activations [n, d] that
returns one direction [d]:

- `mean_diff` (CAA, Rimsky et al. 2024): mean(positive - negative).
- `pca`: the first principal direction of the paired differences (uncentred SVD, as in the
  steering-vectors library), signed to agree with the mean difference and scaled to the mean
  difference's projection on it, so its norm is comparable to CAA's.
- `probe`: the weight direction of an L2-regularised logistic regression separating positive from
  negative activations, signed and scaled the same way.
- `outcome`: mean over items the model got right minus mean over items it got wrong (labels, not
  pairs), the "correct-minus-wrong" direction.
- `random_like`: a Gaussian random direction with the same per-layer norm as a given vector, the
  control every claim should beat.

`build_vector` extracts activations for a ContrastSet at several layers in one pass and applies a
method per layer, returning a `SteeringVector` with full provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .backend import runtime
from .extract import Position, extract, extract_pairs
from .pairs import ContrastSet, as_contrast_set
from .sites import Component
from .vectors import SteeringVector

Method = Callable[[Float[Tensor, "n d"], Float[Tensor, "n d"]], Float[Tensor, " d"]]


def _check_pair_shapes(pos: Tensor, neg: Tensor) -> None:
    if pos.ndim != 2 or pos.shape != neg.shape:
        raise ValueError(
            f"Positive and negative activations must both be [n, d] with equal shapes; got "
            f"{tuple(pos.shape)} and {tuple(neg.shape)}."
        )
    if pos.shape[0] < 1:
        raise ValueError("Need at least one pair to build a direction.")


def mean_diff(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "n d"]
) -> Float[Tensor, " d"]:
    """CAA: the mean of the paired differences."""
    _check_pair_shapes(pos, neg)
    return (pos.double() - neg.double()).mean(0).float()


def _scale_like_mean_diff(direction: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Unit `direction`, signed and scaled to the mean difference's projection on it."""
    unit = direction.double() / direction.double().norm().clamp_min(1e-12)
    proj = float((pos.double() - neg.double()).mean(0) @ unit)
    if proj < 0:
        unit, proj = -unit, -proj
    return (unit * proj).float()


def pca(pos: Float[Tensor, "n d"], neg: Float[Tensor, "n d"]) -> Float[Tensor, " d"]:
    """First principal direction of the paired differences (uncentred)."""
    _check_pair_shapes(pos, neg)
    deltas = pos.double() - neg.double()
    _, _, vh = torch.linalg.svd(deltas, full_matrices=False)
    return _scale_like_mean_diff(vh[0], pos, neg)


def probe(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "n d"], C: float = 1.0
) -> Float[Tensor, " d"]:
    """Logistic-regression direction separating positive from negative activations."""
    from sklearn.linear_model import LogisticRegression

    _check_pair_shapes(pos, neg)
    if pos.shape[0] < 2:
        raise ValueError("The probe method needs at least 2 pairs.")
    x = torch.cat([pos, neg]).double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    y = [1] * pos.shape[0] + [0] * neg.shape[0]
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(((x - mu) / sd).numpy(), y)
    w = torch.from_numpy(clf.coef_[0]) / sd  # back to the raw activation basis
    return _scale_like_mean_diff(w, pos, neg)


def outcome(
    acts: Float[Tensor, "n d"], correct: Bool[Tensor, " n"] | Sequence[bool]
) -> Float[Tensor, " d"]:
    """Mean activation over correct items minus mean over wrong items."""
    correct = torch.as_tensor(correct, dtype=torch.bool)
    if acts.ndim != 2 or correct.shape != (acts.shape[0],):
        raise ValueError(
            f"outcome() needs acts [n, d] and one bool per row; got {tuple(acts.shape)} and "
            f"{tuple(correct.shape)}."
        )
    n_right, n_wrong = int(correct.sum()), int((~correct).sum())
    if n_right == 0 or n_wrong == 0:
        raise ValueError(
            f"The outcome direction needs both right and wrong items; got {n_right} right and "
            f"{n_wrong} wrong."
        )
    a = acts.double()
    return (a[correct].mean(0) - a[~correct].mean(0)).float()


METHODS: dict[str, Method] = {"mean_diff": mean_diff, "pca": pca, "probe": probe}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(
            f"Unknown method {name!r}; valid pair methods are {list(METHODS)} "
            f"(use outcome_vector() for outcome labels and random_like() for controls)."
        )
    return METHODS[name]


def build_vector(
    model,
    pairs: ContrastSet,
    layers: Sequence[int],
    *,
    method: str = "mean_diff",
    component: Component = "resid_pre",
    position: Position = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
) -> SteeringVector:
    """Extract contrast activations at `layers` in one pass and apply `method` per layer."""
    fn = get_method(method)
    pairs = as_contrast_set(pairs)
    acts = extract_pairs(model, pairs, layers, component=component, position=position,
                         batch_size=batch_size, chat=chat, show_progress=show_progress)
    dirs = {layer: fn(acts.positive[layer], acts.negative[layer]) for layer in acts.layers}
    return SteeringVector(dirs, component=component, method=method, position=position,
                          model_id=runtime.model_id(model), n_pairs=len(pairs),
                          extra={"pairs": pairs.name})


def outcome_vector(
    model,
    texts: Sequence[str],
    correct: Sequence[bool],
    layers: Sequence[int],
    *,
    prompts: Sequence[str | None] | None = None,
    component: Component = "resid_pre",
    position: Position = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
) -> SteeringVector:
    """Correct-minus-wrong direction from texts labelled by whether the model got them right."""
    if len(texts) != len(correct):
        raise ValueError(f"Got {len(texts)} texts but {len(correct)} labels.")
    if position == "all":
        raise ValueError("outcome_vector needs one row per text; use 'last', 'first' or 'mean'.")
    acts = extract(model, texts, layers, prompts=prompts, component=component,
                   position=position, batch_size=batch_size, chat=chat,
                   show_progress=show_progress)
    dirs = {layer: outcome(acts[layer], correct) for layer in acts.layers}
    n_right = int(sum(bool(c) for c in correct))
    return SteeringVector(dirs, component=component, method="outcome", position=position,
                          model_id=runtime.model_id(model), n_pairs=len(texts),
                          extra={"n_right": n_right, "n_wrong": len(texts) - n_right})


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A Gaussian random direction per layer with the same norm as `vector` (a control)."""
    gen = torch.Generator().manual_seed(int(seed))
    dirs = {}
    for layer, t in vector.directions.items():
        r = torch.randn(t.shape[0], generator=gen, dtype=torch.float64)
        dirs[layer] = (r / r.norm() * t.double().norm()).float()
    return SteeringVector(dirs, component=vector.component, method="random",
                          position=vector.position, model_id=vector.model_id,
                          n_pairs=vector.n_pairs, extra={"seed": int(seed),
                                                         "matched_to": vector.method})
