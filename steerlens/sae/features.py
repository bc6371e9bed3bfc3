"""Feature identities: the tokens and contexts on which chosen SAE features fire most.

A feature is known by its top activations. `feature_contexts` runs texts through the model
(`extract`, every content token at the SAE's site), encodes each token with the SAE, keeps the
requested features' columns, and returns per feature its k strongest examples: the token, a
window of surrounding tokens with the feature's activation on each, and where it came from.
Examples are taken greedily from the highest activation down, skipping tokens within `window`
of an already chosen example in the same text, so one long text cannot fill the list with
neighbouring tokens. `top_tokens` lists the token strings with the highest maximum activation.
Rendering (circuitsvis) lives in `steerlens.figures.sae`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..backend import Model, runtime
from ..extract import extract, resolve_chat
from .load import check_sae
from .site import check_features


@dataclass(frozen=True)
class FeatureExample:
    """One high-activation token of a feature, with its context window.

    Attributes:
        text_index: which input text it came from.
        token_index: position within the text's content tokens.
        activation: the feature's activation on the token.
        tokens: the window of token strings.
        values: the feature's activation on each window token.
        center: index of the example token within the window.
    """

    text_index: int
    token_index: int  # position within the text's content tokens
    activation: float
    tokens: tuple[str, ...]  # the window of token strings
    values: tuple[float, ...]  # the feature's activation on each window token
    center: int  # index of the example token within the window


@dataclass(frozen=True)
class FeatureContexts:
    """Top-activating examples and tokens for each requested feature.

    Attributes:
        features: the requested feature ids.
        examples: per feature, its strongest examples first.
        top_tokens: per feature, (token string, max activation) pairs, highest first.
        max_activation: per feature, its largest activation over the texts.
        frequency: per feature, the fraction of tokens on which it is > 0.
        n_texts: number of texts read.
        n_tokens: number of content tokens read.
        window: the context half-width.
        hook_name: the SAE's hook.
    """

    features: tuple[int, ...]
    examples: tuple[tuple[FeatureExample, ...], ...]  # per feature, strongest first
    top_tokens: tuple[tuple[tuple[str, float], ...], ...]  # per feature: (token, max activation)
    max_activation: tuple[float, ...]
    frequency: tuple[float, ...]  # fraction of tokens on which the feature is > 0
    n_texts: int
    n_tokens: int
    window: int
    hook_name: str

    def for_feature(self, feature: int) -> tuple[FeatureExample, ...]:
        """The examples of one requested feature.

        Args:
            feature: a feature id from `features`.

        Returns:
            Its examples, strongest first.

        Raises:
            ValueError: if the feature was not requested.
        """
        if feature not in self.features:
            raise ValueError(f"Feature {feature} was not requested; have {list(self.features)}.")
        return self.examples[self.features.index(feature)]


def _pick(values: torch.Tensor, rows: torch.Tensor, local: torch.Tensor, k: int,
          window: int) -> list[int]:
    """Greedy top-k token indices (activation > 0), at most one per window of one text."""
    order = torch.argsort(values, descending=True, stable=True)
    chosen: list[int] = []
    taken: dict[int, list[int]] = {}
    for idx in order.tolist():
        if values[idx] <= 0 or len(chosen) == k:
            break
        r, p = int(rows[idx]), int(local[idx])
        if any(abs(p - q) <= window for q in taken.get(r, [])):
            continue
        taken.setdefault(r, []).append(p)
        chosen.append(idx)
    return chosen


def feature_contexts(model: Model, sae, texts: Sequence[str], features, *, k: int = 8,
                     window: int = 8, n_top_tokens: int = 10,
                     prompts: Sequence[str | None] | None = None, batch_size: int = 16,
                     chat: bool | None = None, show_progress: bool = False) -> FeatureContexts:
    """Top-k activating contexts (±`window` tokens) and top tokens of `features` over `texts`.

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        texts: the texts to search.
        features (int | Sequence[int] | FeatureSelection): the feature ids.
        k: examples per feature.
        window: context tokens on each side; examples closer than this in one text are skipped.
        n_top_tokens: token strings listed per feature.
        prompts: an optional prompt per text (only the text after it is read).
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.

    Returns:
        The `FeatureContexts`.

    Raises:
        ValueError: for bad feature ids, an empty text list, or k, window or n_top_tokens out of
            range.
        RuntimeError: if token and activation counts disagree (an internal error).
    """
    site = check_sae(model, sae)
    ids = check_features(features, sae)
    texts = list(texts)
    if not texts:
        raise ValueError("feature_contexts needs at least one text.")
    for name, val, low in (("k", k, 1), ("window", window, 0), ("n_top_tokens", n_top_tokens, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{name} must be an int >= {low}, got {val!r}.")
    use_chat = resolve_chat(model, chat, prompts is not None and any(p is not None for p in prompts))
    acts = extract(model, texts, [site.layer], prompts=prompts, component=site.component,
                   read_at="all", batch_size=batch_size, chat=use_chat,
                   show_progress=show_progress)
    x, rows = acts[site.layer], acts.row_index.long()
    # token ids of every content token, in the same (row, position) order as extract's "all"
    tok = []
    for start in range(0, len(texts), batch_size):
        sub_p = None if prompts is None else list(prompts[start : start + batch_size])
        batch = runtime.encode(model, texts[start : start + batch_size], sub_p, chat=use_chat)
        for i in range(batch.tokens.shape[0]):
            tok.append(batch.tokens[i, batch.span_start[i] : batch.span_end[i]].cpu())
    token_ids = torch.cat(tok)
    if token_ids.numel() != x.shape[0]:
        raise RuntimeError("Token and activation counts disagree; please report this.")
    local = torch.cat([torch.arange(t.numel()) for t in tok])
    starts = torch.cumsum(torch.tensor([0] + [t.numel() for t in tok]), 0)
    dev, dt = sae.W_enc.device, sae.W_enc.dtype
    cols = torch.tensor(ids)
    vals = []
    with torch.inference_mode():
        for s in range(0, x.shape[0], 1024):
            vals.append(sae.encode(x[s : s + 1024].to(dev, dt)).float().cpu()[:, cols])
    v = torch.cat(vals)  # [n_tokens, n_features]
    strings = {int(i): runtime.decode(model, [int(i)], skip_special=False)
               for i in token_ids.unique().tolist()}
    examples, tops, maxes, freqs = [], [], [], []
    for j in range(len(ids)):
        col = v[:, j]
        picks = _pick(col, rows, local, k, window)
        exs = []
        for idx in picks:
            r, p = int(rows[idx]), int(local[idx])
            lo = int(starts[r]) + max(0, p - window)
            hi = int(starts[r]) + min(tok[r].numel(), p + window + 1)
            exs.append(FeatureExample(
                r, p, float(col[idx]), tuple(strings[int(t)] for t in token_ids[lo:hi]),
                tuple(float(a) for a in col[lo:hi]), idx - lo))
        examples.append(tuple(exs))
        best = torch.full((int(token_ids.max()) + 1,), float("-inf"))
        best.scatter_reduce_(0, token_ids, col, reduce="amax")
        order = torch.argsort(best, descending=True, stable=True)[:n_top_tokens]
        tops.append(tuple((strings[int(t)], float(best[t])) for t in order.tolist()
                          if best[t] > 0))
        maxes.append(float(col.max()))
        freqs.append(float((col > 0).double().mean()))
    return FeatureContexts(tuple(ids), tuple(examples), tuple(tops), tuple(maxes), tuple(freqs),
                           len(texts), int(x.shape[0]), window, site.hook_name())


__all__ = ["FeatureContexts", "FeatureExample", "feature_contexts"]
