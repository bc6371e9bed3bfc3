"""Ways to turn contrast activations into a steering direction.

Each method is a small function of row-aligned positive and negative activations [n, d] that
returns one direction [d]:

- `mean_diff` (CAA, Rimsky et al. 2024): mean(positive - negative).
- `pca`: the first principal direction of the paired differences (uncentred SVD, as in the
  steering-vectors library), signed to agree with the mean difference and scaled to the mean
  difference's projection on it, so its norm is comparable to CAA's.
- `probe`: the weight direction of an L2-regularised logistic regression separating positive from
  negative activations, signed and scaled the same way.
- `mean_centred` (Jorgensen et al. 2023, "Improving activation steering in language models with
  mean-centring"): the mean activation on examples of the behaviour minus the mean activation on
  a background (general) dataset, which removes the bias every activation shares. Pass the
  background texts to `build_vector(..., method="mean_centred", background=texts)` (the positives
  are the behaviour's examples) or use `mean_centred_vector(model, texts, background, ...)` for
  unpaired data. Without a background the pairs' own activations (positives and negatives
  together) are the background, and then mean(pos) - mean(pos ∪ neg) = (mean(pos) - mean(neg))/2:
  exactly half the CAA mean difference, the same direction.
- `outcome`: mean over items the model got right minus mean over items it got wrong (labels, not
  pairs), the "correct-minus-wrong" direction.
- `random_like`: a Gaussian random direction with the same per-layer norm as a given vector, the
  control every claim should beat.

`build_vector` extracts activations for a ContrastSet at several layers in one pass and applies a
method (one of the names above, or any callable of the same shape) per layer, returning a
`SteeringVector` with full provenance. Degenerate contrasts are announced rather than silently
turned into zero vectors: pairs whose positive and negative texts are identical (all of them: an
error naming them; some: a warning naming them); a layer where the two sides' activations
coincide for every pair (to float32 rounding, `COINCIDE_RTOL`; e.g. layer 0 of a rotary model
when every pair ends in the same token and read_at="last") gets an exactly zero direction and a
warning naming it, and an error when that is every layer; a method that returns an all-zero
direction where the activations do differ is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .backend import Model, runtime
from .extract import ReadAt, extract, extract_pairs, resolve_read_at
from .pairs import ContrastSet, as_contrast_set
from .sites import Component
from .vectors import SteeringVector

Method = Callable[[Float[Tensor, "n d"], Float[Tensor, "n d"]], Float[Tensor, " d"]]

# Two float32 forwards of the same text in different batch rows (other padding, other kernels)
# differ by ~1e-6 of the activation norm; a contrast whose every pair differs by less than 1e-5 of
# the largest activation norm carries no direction, only that rounding.
COINCIDE_RTOL = 1e-5


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
    """CAA: the mean of the paired differences.

    Args:
        pos: positive activations, one row per pair.
        neg: negative activations, row-aligned with `pos`.

    Returns:
        mean(pos - neg) over rows (computed in float64), shape [d].

    Raises:
        ValueError: if the shapes differ, are not [n, d], or n is 0.
    """
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
    """First principal direction of the paired differences (uncentred).

    Signed to agree with the mean difference and scaled to the mean difference's projection on it,
    so its norm is comparable to CAA's.

    Args:
        pos: positive activations, one row per pair.
        neg: negative activations, row-aligned with `pos`.

    Returns:
        The direction, shape [d].

    Raises:
        ValueError: if the shapes differ, are not [n, d], or n is 0.
    """
    _check_pair_shapes(pos, neg)
    deltas = pos.double() - neg.double()
    _, _, vh = torch.linalg.svd(deltas, full_matrices=False)
    return _scale_like_mean_diff(vh[0], pos, neg)


def probe(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "n d"], C: float = 1.0
) -> Float[Tensor, " d"]:
    """Logistic-regression direction separating positive from negative activations.

    Fits an L2-regularised logistic regression on standardised activations, maps the weights back to
    the raw activation basis, then signs and scales them like `pca`.

    Args:
        pos: positive activations, one row per pair.
        neg: negative activations, row-aligned with `pos`.
        C: inverse regularisation strength of the logistic regression.

    Returns:
        The direction, shape [d].

    Raises:
        ValueError: if the shapes differ or there are fewer than 2 pairs.
    """
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
    """Mean activation over correct items minus mean over wrong items.

    Args:
        acts: one activation row per item.
        correct: one label per row: True where the model got the item right.

    Returns:
        mean(acts[correct]) - mean(acts[~correct]), shape [d].

    Raises:
        ValueError: if the shapes do not match or there are no right or no wrong items.
    """
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


def mean_centred(
    target: Float[Tensor, "n d"], background: Float[Tensor, "m d"]
) -> Float[Tensor, " d"]:
    """Mean-centring: the behaviour's mean activation minus a background mean activation.

    Args:
        target: activations on examples of the behaviour, one row each.
        background: activations on a background (general) dataset, one row each.

    Returns:
        mean(target) - mean(background) (computed in float64), shape [d].

    Raises:
        ValueError: if either is empty or not [rows, d] with the same d.
    """
    if target.ndim != 2 or background.ndim != 2 or target.shape[1] != background.shape[1]:
        raise ValueError(f"mean_centred needs target [n, d] and background [m, d] with the same d; "
                         f"got {tuple(target.shape)} and {tuple(background.shape)}.")
    if target.shape[0] < 1 or background.shape[0] < 1:
        raise ValueError(f"mean_centred needs at least one target and one background row; got "
                         f"{target.shape[0]} and {background.shape[0]}.")
    return (target.double().mean(0) - background.double().mean(0)).float()


def mean_centred_pairs(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "n d"]
) -> Float[Tensor, " d"]:
    """Mean-centring with the pairs themselves as background: mean(pos) - mean(pos ∪ neg).

    With row-aligned pairs this is (mean(pos) - mean(neg)) / 2, half the CAA mean difference;
    `build_vector(..., method="mean_centred", background=texts)` uses a real background instead.

    Args:
        pos: positive activations, one row per pair.
        neg: negative activations, row-aligned with `pos`.

    Returns:
        The direction, shape [d].

    Raises:
        ValueError: if the shapes differ, are not [n, d], or n is 0.
    """
    _check_pair_shapes(pos, neg)
    return mean_centred(pos, torch.cat([pos, neg]))


METHODS: dict[str, Method] = {"mean_diff": mean_diff, "pca": pca, "probe": probe,
                              "mean_centred": mean_centred_pairs}


def get_method(name: str | Method) -> Method:
    """The method function for a name, or `name` itself when it is a callable.

    Args:
        name: "mean_diff", "pca", "probe", or any callable (pos [n, d], neg [n, d]) -> [d].

    Returns:
        The method function.

    Raises:
        ValueError: for an unknown name.
    """
    if callable(name):
        return name
    if name not in METHODS:
        raise ValueError(
            f"Unknown method {name!r}; valid pair methods are {list(METHODS)} "
            f"(use outcome_vector() for outcome labels and random_like() for controls)."
        )
    return METHODS[name]


def _method_name(method: str | Method) -> str:
    if isinstance(method, str):
        return method
    name = getattr(method, "__name__", None) or type(method).__name__
    return f"custom:{name}"


def _few(indices: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    more = f", ... ({len(indices)} in all)" if len(indices) > limit else ""
    return f"[{shown}{more}]"


def identical_pairs(pairs: ContrastSet) -> list[int]:
    """Indices of the pairs whose positive and negative texts are identical.

    Args:
        pairs: the contrast pairs.

    Returns:
        The indices (0-based), ascending.
    """
    return [i for i, p in enumerate(pairs) if p.positive == p.negative]


def _check_identical(pairs: ContrastSet) -> list[int]:
    same = identical_pairs(pairs)
    if same and len(same) == len(pairs):
        raise ValueError(
            f"Every pair of {pairs.name!r} has identical positive and negative texts (pairs "
            f"{_few(same)}), so every direction would be a zero vector; the two sides must differ "
            "in the behaviour."
        )
    if same:
        warnings.warn(
            f"Pairs {_few(same)} of {pairs.name!r} have identical positive and negative texts; "
            "they carry no contrast and only dilute the direction. Remove them.",
            UserWarning, stacklevel=3,
        )
    return same


def _coincide(pos: Tensor, neg: Tensor) -> bool:
    """Whether positive and negative activations agree for every pair, to float32 rounding."""
    diff = float((pos.double() - neg.double()).norm(dim=1).max())
    scale = float(torch.cat([pos, neg]).double().norm(dim=1).max())
    return diff <= COINCIDE_RTOL * scale


def _degenerate_message(layers: Sequence[int], read_at: str, same: Sequence[int]) -> str:
    why = (f"pairs {_few(list(same))} have identical texts and the others differ only after the "
           f"token(s) read (read_at={read_at!r})" if same else
           f"the texts differ, but not at the token(s) read (read_at={read_at!r})")
    return (f"At layer(s) {list(layers)} the positive and negative activations coincide for every "
            f"pair ({why}), so there is no direction there")


def _apply(fn: Method, pos: Tensor, neg: Tensor, layer: int, name: str) -> Tensor:
    out = fn(pos, neg)
    if not isinstance(out, Tensor) or out.shape != (pos.shape[1],):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"Method {name!r} must return a tensor of shape ({pos.shape[1]},) at "
                         f"layer {layer}; got {got}.")
    if not torch.isfinite(out).all():
        raise ValueError(f"Method {name!r} returned a non-finite direction at layer {layer}.")
    if not bool(out.any()):
        raise ValueError(f"Method {name!r} returned an all-zero direction at layer {layer}.")
    return out.float()


def build_vector(
    model: Model,
    pairs: ContrastSet,
    layers: Sequence[int],
    *,
    method: str | Method = "mean_diff",
    component: Component = "resid_pre",
    read_at: ReadAt = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
    position: ReadAt | None = None,
    background: Sequence[str] | None = None,
) -> SteeringVector:
    """Extract contrast activations at `layers` in one pass and apply `method` per layer.

    Args:
        model: the model.
        pairs: a ContrastSet (or anything `as_contrast_set` accepts).
        layers: layers to build a direction at.
        method: "mean_diff" (CAA), "pca", "probe", "mean_centred", or any callable
            (pos [n, d], neg [n, d]) -> [d] (recorded as "custom:<its name>").
        component: the site read and later steered ("resid_pre" by default).
        read_at: where activations are read: "last", "first" or "mean" over the completion.
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.
        position: deprecated name of `read_at`.
        background: for method "mean_centred" only: background texts (a general dataset, read
            as plain text at the same sites and `read_at`); the direction is mean(positives) -
            mean(background). None: the pairs' own activations are the background (half the
            mean difference).

    Returns:
        A `SteeringVector` with one direction per layer and provenance metadata.

    Raises:
        ValueError: for an unknown method, `background` with a method other than "mean_centred"
            or with no texts, bad pairs or layers, pairs that are all identical,
            activations that coincide at every layer, or a method that returns a wrongly shaped,
            non-finite or all-zero direction.

    Warns:
        UserWarning: naming the pairs whose positive and negative texts are identical, when
            only some are, and the layers where the two sides' activations coincide (their
            directions are exactly zero), when only some do.

    Example:
        >>> pairs = sl.load_behaviour("sentiment").train
        >>> vec = sl.build_vector(model, pairs, layers=[6, 10], method="mean_diff")  # doctest: +SKIP
    """
    fn = get_method(method)
    name = _method_name(method)
    read_at = resolve_read_at(read_at, position, "build_vector")
    if background is not None:
        if method != "mean_centred":
            raise ValueError(f"background texts are used by method='mean_centred' only; got "
                             f"method={name!r}.")
        if isinstance(background, str) or len(background) == 0:
            raise ValueError("background must be a non-empty list of texts.")
    pairs = as_contrast_set(pairs)
    same = _check_identical(pairs)
    acts = extract_pairs(model, pairs, layers, component=component, read_at=read_at,
                         batch_size=batch_size, chat=chat, show_progress=show_progress)
    if background is not None:
        bg = extract(model, list(background), layers, component=component, read_at=read_at,
                     batch_size=batch_size, show_progress=show_progress)
        dirs = {layer: _apply(lambda pos, _neg, b=bg[layer]: mean_centred(pos, b),
                              acts.positive[layer], acts.negative[layer], layer, name)
                for layer in acts.layers}
        return SteeringVector(dirs, component=component, method=name, read_at=read_at,
                              model_id=runtime.model_id(model), n_pairs=len(pairs),
                              extra={"pairs": pairs.name, "n_background": len(background)})
    dirs = {}
    flat = []
    for layer in acts.layers:
        pos, neg = acts.positive[layer], acts.negative[layer]
        if _coincide(pos, neg):  # rounding noise only: an exact zero, announced below
            flat.append(layer)
            dirs[layer] = torch.zeros(pos.shape[1])
        else:
            dirs[layer] = _apply(fn, pos, neg, layer, name)
    if flat and len(flat) == len(dirs):
        raise ValueError(_degenerate_message(flat, read_at, same) + "; every direction would be "
                         "a zero vector.")
    if flat:
        warnings.warn(_degenerate_message(flat, read_at, same) + "; their directions are zero "
                      "(steering there does nothing). Read elsewhere or choose other layers.",
                      UserWarning, stacklevel=2)
    return SteeringVector(dirs, component=component, method=name, read_at=read_at,
                          model_id=runtime.model_id(model), n_pairs=len(pairs),
                          extra={"pairs": pairs.name})


def outcome_vector(
    model: Model,
    texts: Sequence[str],
    correct: Sequence[bool],
    layers: Sequence[int],
    *,
    prompts: Sequence[str | None] | None = None,
    component: Component = "resid_pre",
    read_at: ReadAt = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
    position: ReadAt | None = None,
) -> SteeringVector:
    """Correct-minus-wrong direction from texts labelled by whether the model got them right.

    Args:
        model: the model.
        texts: the texts (e.g. the model's answers).
        correct: one label per text.
        layers: layers to build a direction at.
        prompts: an optional prompt per text.
        component: the site read.
        read_at: "last", "first" or "mean".
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.
        position: deprecated name of `read_at`.

    Returns:
        A `SteeringVector` (method "outcome").

    Raises:
        ValueError: for mismatched labels, read_at="all", or only right / only wrong items.
    """
    if len(texts) != len(correct):
        raise ValueError(f"Got {len(texts)} texts but {len(correct)} labels.")
    read_at = resolve_read_at(read_at, position, "outcome_vector")
    if read_at == "all":
        raise ValueError("outcome_vector needs one row per text; use 'last', 'first' or 'mean'.")
    acts = extract(model, texts, layers, prompts=prompts, component=component,
                   read_at=read_at, batch_size=batch_size, chat=chat,
                   show_progress=show_progress)
    dirs = {layer: outcome(acts[layer], correct) for layer in acts.layers}
    n_right = int(sum(bool(c) for c in correct))
    return SteeringVector(dirs, component=component, method="outcome", read_at=read_at,
                          model_id=runtime.model_id(model), n_pairs=len(texts),
                          extra={"n_right": n_right, "n_wrong": len(texts) - n_right})


def mean_centred_vector(
    model: Model,
    texts: Sequence[str],
    background: Sequence[str],
    layers: Sequence[int],
    *,
    prompts: Sequence[str | None] | None = None,
    component: Component = "resid_pre",
    read_at: ReadAt = "mean",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
) -> SteeringVector:
    """Mean-centred direction from unpaired texts: mean over `texts` minus mean over `background`.

    Jorgensen et al. (2023) average over every token of each text ("mean", the default here).

    Args:
        model: the model.
        texts: examples of the behaviour (completions when `prompts` are given).
        background: a background (general) dataset, read as plain texts.
        layers: layers to build a direction at.
        prompts: an optional prompt per text.
        component: the site read.
        read_at: "last", "first" or "mean" (over each text).
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.

    Returns:
        A `SteeringVector` (method "mean_centred"; `n_pairs` is the number of texts).

    Raises:
        ValueError: for no texts or background, or read_at="all".
    """
    if not texts or not background or isinstance(background, str):
        raise ValueError("mean_centred_vector needs non-empty lists of texts and background texts.")
    read_at = resolve_read_at(read_at, None, "mean_centred_vector")
    if read_at == "all":
        raise ValueError("mean_centred_vector reads one row per text; use 'last', 'first' or "
                         "'mean'.")
    acts = extract(model, texts, layers, prompts=prompts, component=component, read_at=read_at,
                   batch_size=batch_size, chat=chat, show_progress=show_progress)
    bg = extract(model, list(background), layers, component=component, read_at=read_at,
                 batch_size=batch_size, show_progress=show_progress)
    dirs = {layer: _apply(lambda t, b: mean_centred(t, b), acts[layer], bg[layer], layer,
                          "mean_centred") for layer in acts.layers}
    return SteeringVector(dirs, component=component, method="mean_centred", read_at=read_at,
                          model_id=runtime.model_id(model), n_pairs=len(texts),
                          extra={"n_background": len(background)})


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A Gaussian random direction per layer with the same norm as `vector` (a control).

    Every effect should be compared with random directions of the same norm: any large vector
    changes a model's text. The result keeps the vector's component, read_at and provenance and
    records the seed and the method it was matched to.

    Args:
        vector: the vector whose layers and per-layer norms to match.
        seed: seed of the random generator; different seeds give independent controls.

    Returns:
        A `SteeringVector` with method "random".
    """
    gen = torch.Generator().manual_seed(int(seed))
    dirs = {}
    for layer, t in vector.directions.items():
        r = torch.randn(t.shape[0], generator=gen, dtype=torch.float64)
        dirs[layer] = (r / r.norm() * t.double().norm()).float()
    return SteeringVector(dirs, component=vector.component, method="random",
                          read_at=vector.read_at, model_id=vector.model_id,
                          n_pairs=vector.n_pairs, extra={"seed": int(seed),
                                                         "matched_to": vector.method})
