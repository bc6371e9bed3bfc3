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

from ..backend import runtime
from ..vectors import SteeringVector
from .decompose import FeatureSelection, domain_features
from .site import check_features, check_k, sae_hook_name, sae_site

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


def feature_vector(model, sae, features, *, weights="uniform", norm=None,
                   label: str | None = None) -> SteeringVector:
    """`sum_i w_i W_dec[f_i]` at the SAE's site, optionally rescaled to `norm`.

    `features`: a FeatureSelection, a list of feature ids or one id. `weights`: "uniform",
    "activation" (the selection's scores) or one number per feature. `norm`: None (keep the
    combination's own norm), a positive number, or a SteeringVector whose norm at the SAE's layer
    is matched.
    """
    site = sae_site(model, sae)
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
                          method=METHOD, position="sae", model_id=runtime.model_id(model),
                          n_pairs=0, extra=extra)


def single_feature_vector(model, sae, feature: int, *, norm=None) -> SteeringVector:
    """One decoder row as a steering vector (optionally rescaled to `norm`)."""
    return feature_vector(model, sae, [feature], norm=norm)


def select_by_activation_diff(model, sae, domain_texts: Sequence[str],
                              neutral_texts: Sequence[str], k: int = 20,
                              **kw) -> FeatureSelection:
    """Top-k features by mean activation difference, domain minus neutral (see
    `decompose.domain_features` for the keyword arguments)."""
    check_k(k, sae)
    return domain_features(model, sae, domain_texts, neutral_texts, **kw).selection(k)


def token_ids(model, tokens: Sequence[int | str]) -> list[int]:
    """Token ids from ids or single-token strings (a ValueError names any that split)."""
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    tokens = list(tokens)
    if not tokens:
        raise ValueError("Need at least one target token (an id or a single-token string).")
    vocab = int(model.W_U.shape[1]) if hasattr(model, "W_U") else int(model.cfg.d_vocab)
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


def word_token_ids(model, words: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Map words to single token ids, trying ' word' then 'word'; also return the words that are
    several tokens either way (dropped)."""
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


def output_scores(model, sae, targets: Sequence[int | str],
                  avoid: Sequence[int | str] | None = None,
                  chunk: int = 512) -> Float[Tensor, " d_sae"]:
    """Per feature: mean direct-logit effect of its decoder row on `targets`, centred by the vocab
    mean (or minus the mean on `avoid` tokens when given)."""
    sae_site(model, sae)
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


def select_by_output_score(model, sae, target_tokens: Sequence[int | str], k: int = 20, *,
                           avoid_tokens: Sequence[int | str] | None = None) -> FeatureSelection:
    """Top-k features by output score towards `target_tokens` (see the module docstring)."""
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
