"""Feature-targeted steering vectors: sums of SAE decoder rows, as ordinary SteeringVectors.

A feature-targeted vector is `sum_i w_i * W_dec[f_i]` for chosen features `f_i`, placed at the
site the SAE reads. Features are chosen by one of two rules, each returning a `FeatureSelection`:

- input side, `select_by_activation_diff`: the top-k features by mean activation difference
  between domain texts and neutral texts (`decompose.domain_features`);
- output side, `select_by_output_score`: the top-k features whose decoder direction most raises
  the logits of target tokens, `W_dec @ W_U` (through the final norm's elementwise weight, see
  `runtime.direction_logits`), averaged over the targets and centred by the mean over the whole
  vocabulary (optionally minus the mean over `avoid` tokens). This is the direct logit effect of
  the feature's direction; it ignores the layers between the SAE's site and the unembedding.

Weights are "uniform" (every w_i = 1), "activation" (w_i = the selection's scores, e.g. the
activation differences, so the vector is what the SAE decoder writes for that activation
pattern, minus b_dec) or explicit numbers. `norm` rescales the result to a number or to a
reference vector's norm at that layer, so conditions can be compared at equal norm. The result is
a plain `SteeringVector` (method "sae_features", provenance in `extra`): save/load, `steer()` and
`generate()` work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime
from ..vectors import SteeringVector
from .decompose import FeatureSelection, domain_features
from .load import check_sae
from .site import check_features, check_k, sae_hook_name

WEIGHTINGS: tuple[str, ...] = ("uniform", "activation")
METHOD = "sae_features"


def _target_norm(norm, layer: int) -> float | None:
    if norm is None:
        return None
    if isinstance(norm, SteeringVector):
        if layer not in norm.directions:
            raise ValueError(f"The reference vector has layers {norm.layers}, not the SAE's layer "
                             f"{layer}.")
        value = norm.norms[layer]
    elif isinstance(norm, (int, float)) and not isinstance(norm, bool):
        value = float(norm)
    else:
        raise ValueError(f"norm must be None, a positive number or a SteeringVector, got {norm!r}.")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"The target norm must be positive and finite, got {value}.")
    return value


def _weights(weights, features: list[int], selection: FeatureSelection | None) -> list[float]:
    if isinstance(weights, str):
        if weights not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting {weights!r}; valid: {list(WEIGHTINGS)} or a "
                             "sequence of numbers, one per feature.")
        if weights == "uniform":
            return [1.0] * len(features)
        if selection is None:
            raise ValueError("weights='activation' needs a FeatureSelection (it carries the "
                             "scores to weight by); pass explicit weights with a list of ids.")
        return [float(s) for s in selection.scores]
    out = [float(w) for w in weights]
    if len(out) != len(features):
        raise ValueError(f"Got {len(out)} weights for {len(features)} features.")
    if not all(w == w and abs(w) != float("inf") for w in out):
        raise ValueError("Weights must be finite numbers.")
    return out


def feature_vector(model: Model, sae, features, *, weights="uniform", norm=None,
                   label: str | None = None) -> SteeringVector:
    """`sum_i w_i W_dec[f_i]` at the SAE's site, optionally rescaled to `norm`.

    `features`: a FeatureSelection, a list of feature ids or one id. `weights`: "uniform",
    "activation" (the selection's scores) or one number per feature. `norm`: None (keep the
    combination's own norm), a positive number, or a SteeringVector whose norm at the SAE's layer
    is matched.

    Args:
        model (Model): the model the SAE belongs to.
        sae (sae_lens.SAE): the SAE.
        features (FeatureSelection | Sequence[int] | int): the features to combine.
        weights (str | Sequence[float]): "uniform", "activation" or one number per feature.
        norm (float | SteeringVector | None): the target norm, or a vector whose norm to match.
        label: recorded in the vector's `extra`.

    Returns:
        A `SteeringVector` (method "sae_features") at the SAE's layer and component.

    Raises:
        ValueError: if the selection is for another SAE, an id, weighting or norm is invalid, or
            the weighted sum is zero.
    """
    site = check_sae(model, sae)
    selection = features if isinstance(features, FeatureSelection) else None
    if selection is not None:
        if selection.d_sae != int(sae.cfg.d_sae) or selection.hook_name != sae_hook_name(sae):
            raise ValueError(f"This selection was made for an SAE at {selection.hook_name!r} with "
                             f"{selection.d_sae} features, not this one.")
        ids = check_features(list(selection.features), sae)
    else:
        ids = check_features(features, sae)
    w = _weights(weights, ids, selection)
    target = _target_norm(norm, site.layer)
    w_dec = sae.W_dec.detach()
    with torch.inference_mode():
        rows = w_dec[torch.tensor(ids, device=w_dec.device)].double()
        direction = (torch.tensor(w, dtype=torch.float64, device=rows.device)[:, None] * rows).sum(0)
    size = float(direction.norm())
    if size == 0.0:
        raise ValueError("The weighted sum of these decoder rows is zero; choose other features "
                         "or weights.")
    if target is not None:
        direction = direction * (target / size)
    rule = selection.rule if selection is not None else "explicit"
    extra = {
        "features": ids, "weights": w,
        "weighting": weights if isinstance(weights, str) else "explicit",
        "selection_rule": rule, "sae_hook": site.hook_name(), "d_sae": int(sae.cfg.d_sae),
        "norm": "own" if target is None else target,
    }
    if label:
        extra["label"] = label
    return SteeringVector({site.layer: direction.float().cpu()}, component=site.component,
                          method=METHOD, read_at="sae", model_id=runtime.model_id(model),
                          n_pairs=0, extra=extra)


def single_feature_vector(model: Model, sae, feature: int, *, norm=None) -> SteeringVector:
    """One decoder row as a steering vector (optionally rescaled to `norm`).

    Args:
        model (Model): the model the SAE belongs to.
        sae (sae_lens.SAE): the SAE.
        feature: the feature id.
        norm (float | SteeringVector | None): the target norm, or a vector whose norm to match.

    Returns:
        A single-layer `SteeringVector`.
    """
    return feature_vector(model, sae, [feature], norm=norm)


def select_by_activation_diff(model: Model, sae, domain_texts: Sequence[str],
                              neutral_texts: Sequence[str], k: int = 20,
                              **kw) -> FeatureSelection:
    """Top-k features by mean activation difference, domain minus neutral (see
    `decompose.domain_features` for the keyword arguments).

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        domain_texts: texts of the target behaviour (e.g. positive completions).
        neutral_texts: texts to compare against.
        k: how many features.
        **kw (Any): passed to `domain_features` (prompts, read_at, batch_size, chat, ...).

    Returns:
        A `FeatureSelection` (rule "activation_diff").

    Raises:
        ValueError: if k is out of range, or as `domain_features`.
    """
    check_k(k, sae)
    return domain_features(model, sae, domain_texts, neutral_texts, **kw).selection(k)


def token_ids(model: Model, tokens: Sequence[int | str]) -> list[int]:
    """Token ids from ids or single-token strings (a ValueError names any that split).

    Args:
        model (Model): its tokenizer encodes the strings.
        tokens: token ids or single-token strings (one of either is accepted too).

    Returns:
        The token ids.

    Raises:
        ValueError: if the list is empty, a string is several tokens, or an id is out of range.
    """
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    tokens = list(tokens)
    if not tokens:
        raise ValueError("Need at least one target token (an id or a single-token string).")
    vocab = runtime.d_vocab(model)
    out = []
    for t in tokens:
        if isinstance(t, str):
            ids = runtime.text_ids(model, t)
            if len(ids) != 1:
                pieces = [runtime.decode(model, [i], skip_special=False) for i in ids]
                raise ValueError(f"Token string {t!r} is {len(ids)} tokens {pieces}, not one; give "
                                 "single-token strings (often with a leading space, e.g. ' good') "
                                 "or token ids.")
            out.append(int(ids[0]))
        elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab:
            out.append(int(t))
        else:
            raise ValueError(f"Token {t!r} is neither a string nor an id in 0..{vocab - 1}.")
    return out


def word_token_ids(model: Model, words: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Map words to single token ids, trying ' word' then 'word'; also return the words that are
    several tokens either way (dropped).

    Args:
        model (Model): its tokenizer encodes the words.
        words: the words.

    Returns:
        (word -> token id, the dropped words).
    """
    found, dropped = {}, []
    for word in words:
        for form in (" " + word, word):
            ids = runtime.text_ids(model, form)
            if len(ids) == 1:
                found[word] = int(ids[0])
                break
        else:
            dropped.append(word)
    return found, dropped


def output_scores(model: Model, sae, targets: Sequence[int | str],
                  avoid: Sequence[int | str] | None = None,
                  chunk: int = 512) -> Float[Tensor, " d_sae"]:
    """Per feature: mean direct-logit effect of its decoder row on `targets`, centred by the vocab
    mean (or minus the mean on `avoid` tokens when given).

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        targets: target token ids or single-token strings.
        avoid: tokens whose mean logit effect is subtracted instead of the vocabulary mean.
        chunk: decoder rows per unembedding.

    Returns:
        One score per feature, [d_sae].

    Raises:
        ValueError: if the SAE does not fit the model or a token is invalid.
    """
    check_sae(model, sae)
    tgt = token_ids(model, targets)
    bad = token_ids(model, avoid) if avoid else None
    w_dec = sae.W_dec.detach()
    out = []
    for start in range(0, w_dec.shape[0], chunk):
        rows = w_dec[start : start + chunk]
        score = runtime.direction_logits(model, rows, tgt, centred=bad is None).double().mean(-1)
        if bad is not None:
            score = score - runtime.direction_logits(model, rows, bad).double().mean(-1)
        out.append(score.float().cpu())
    return torch.cat(out)


def select_by_output_score(model: Model, sae, target_tokens: Sequence[int | str], k: int = 20, *,
                           avoid_tokens: Sequence[int | str] | None = None) -> FeatureSelection:
    """Top-k features by output score towards `target_tokens` (see the module docstring).

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        target_tokens: tokens the features should promote.
        k: how many features.
        avoid_tokens: tokens the features should not promote.

    Returns:
        A `FeatureSelection` (rule "output_score").

    Raises:
        ValueError: if k is out of range, or as `output_scores`.
    """
    check_k(k, sae)
    scores = output_scores(model, sae, target_tokens, avoid_tokens)
    ids = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
    return FeatureSelection(tuple(int(i) for i in ids), tuple(float(scores[i]) for i in ids),
                            "output_score", sae_hook_name(sae), int(sae.cfg.d_sae))


__all__ = [
    "METHOD",
    "WEIGHTINGS",
    "feature_vector",
    "output_scores",
    "select_by_activation_diff",
    "select_by_output_score",
    "single_feature_vector",
    "token_ids",
    "word_token_ids",
]
