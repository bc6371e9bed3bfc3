"""Decomposing steering vectors into SAE features: diffusion, top features, domain overlap.

A steering vector is a *difference* of activations, not an activation, so "encode the vector"
has no single meaning. Three readings are offered, and each result records which was used:

- `encoding="encoder"` (default for a vector): `v @ W_enc`, the exact change in every feature's
  pre-activation when `v` is added to the residual stream (biases cancel in a difference; the
  SAE's input normalisation, if any, is ignored). Signed.
- `encoding="raw"`: `sae.encode(v)` as if `v` were an activation (b_dec subtracted, encoder bias
  added, activation function applied). This is the naive reading; it is biased by `b_enc` and
  `b_dec` and is kept for comparison with work that used it.
- `encoding="decoder"`: cosine of `v` with every decoder row, i.e. how well each feature's
  output direction lines up with the vector.
- `decompose_pairs` (`encoding="pairs"`): mean SAE code of the positive completions minus that
  of the negatives, `mean_i encode(pos_i) - mean_i encode(neg_i)`, at the same token position
  the vector was built from. This is what the vector "means" in feature space and is the most
  meaningful reading: the SAE only ever sees real activations (averaging happens after encoding).

Diffusion is the fraction of the SAE's features whose |value| exceeds a threshold. The default
threshold is relative, 10% of the largest |value|: a feature counts as switched on when its
coefficient is at least a tenth of the dominant one's, which does not depend on the vector's scale
or the encoding's units (a Gaussian random vector under `encoder` gives about 70%, a single
decoder row far less). `relative=False` makes the threshold absolute (e.g. 0.0 with "raw" counts
every feature the encoder fires). The participation ratio `(sum v^2)^2 / sum v^4 / d_sae` is
reported alongside as a threshold-free effective fraction.

Domain features (`domain_features`) rank features by mean activation difference between domain
texts (e.g. a behaviour's positive completions) and neutral texts (its negatives, or held-out
prose): each text's SAE code is averaged over its content tokens, then over texts. `overlap_table`
counts shared features between each vector's top-k and each domain's top-k, next to the k^2/d_sae
shared features two random k-subsets have on average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model
from ..extract import check_read_at, extract
from ..pairs import ContrastSet, as_contrast_set
from ..sites import Site
from ..vectors import SteeringVector
from .load import check_sae
from .site import check_k, d_sae

ENCODINGS: tuple[str, ...] = ("encoder", "raw", "decoder")
SIGNS: tuple[str, ...] = ("positive", "negative", "abs")
DEFAULT_THRESHOLD = 0.1  # relative to the largest |value|; see the module docstring


def _ranked(values: Tensor, k: int, sign: str) -> tuple[int, ...]:
    if sign not in SIGNS:
        raise ValueError(f"Unknown sign {sign!r}; valid: {list(SIGNS)}.")
    v = values.double()
    key = v if sign == "positive" else (-v if sign == "negative" else v.abs())
    order = torch.argsort(key, descending=True, stable=True)[:k]  # ties: lower id first
    return tuple(int(i) for i in order)


@dataclass(frozen=True)
class FeatureSelection:
    """Chosen SAE features with the score that chose them (feature-targeted vectors use these).

    Attributes:
        features: feature ids, best first.
        scores: the score of each feature under `rule`.
        rule: how they were chosen, e.g. "activation_diff", "output_score", "decomposition:pairs".
        hook_name: the SAE's hook.
        d_sae: the SAE's number of features.

    Raises:
        ValueError: if features and scores differ in length or are empty.
    """

    features: tuple[int, ...]
    scores: tuple[float, ...]
    rule: str  # e.g. "activation_diff", "output_score", "decomposition:pairs"
    hook_name: str
    d_sae: int

    def __post_init__(self) -> None:
        if len(self.features) != len(self.scores):
            raise ValueError(f"Got {len(self.features)} features but {len(self.scores)} scores.")
        if not self.features:
            raise ValueError("A FeatureSelection needs at least one feature.")

    def __len__(self) -> int:
        return len(self.features)

    def head(self, k: int) -> FeatureSelection:
        """The first k selected features (they are stored best first).

        Args:
            k: how many to keep, in 1..len(self).

        Returns:
            A new selection with the same rule.

        Raises:
            ValueError: if k is out of range.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self.features):
            raise ValueError(f"k must be in 1..{len(self.features)}, got {k!r}.")
        return FeatureSelection(self.features[:k], self.scores[:k], self.rule, self.hook_name,
                                self.d_sae)


def _select(values: Tensor, k: int, sign: str, rule: str, hook: str) -> FeatureSelection:
    ids = _ranked(values, k, sign)
    return FeatureSelection(ids, tuple(float(values[i]) for i in ids), rule, hook,
                            int(values.numel()))


@dataclass(frozen=True, eq=False)
class VectorDecomposition:
    """One steering vector in SAE feature space (see the module docstring for the encodings).

    Attributes:
        values: one value per feature, [d_sae].
        encoding: "encoder", "raw", "decoder" or "pairs".
        threshold: absolute threshold actually applied to |values|.
        relative_threshold: the relative setting it came from (None when absolute).
        hook_name: the SAE's hook.
        label: a name for tables and figures.
    """

    values: Float[Tensor, " d_sae"]
    encoding: str
    threshold: float  # absolute threshold actually applied to |values|
    relative_threshold: float | None  # the relative setting it came from, if any
    hook_name: str
    label: str = "vector"

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(self.values.numel())

    @property
    def active(self) -> Tensor:
        """Boolean mask of features with |value| above the threshold."""
        return self.values.abs() > self.threshold

    @property
    def n_active(self) -> int:
        """Number of features above the threshold."""
        return int(self.active.sum())

    @property
    def diffusion(self) -> float:
        """Fraction of all features with |value| above the threshold."""
        return self.n_active / self.d_sae

    @property
    def participation(self) -> float:
        """Participation ratio (sum v^2)^2 / sum v^4 as a fraction of d_sae (threshold-free)."""
        v2 = self.values.double().pow(2)
        den = float(v2.pow(2).sum())
        return 0.0 if den == 0.0 else float(v2.sum() ** 2 / den) / self.d_sae

    def top(self, k: int = 20, sign: str = "positive") -> tuple[int, ...]:
        """Ids of the k features with the largest values (`sign`: positive, negative or abs).

        Args:
            k: how many, in 1..d_sae.
            sign: "positive" (largest values), "negative" (most negative) or "abs".

        Returns:
            Feature ids, best first (ties: lower id first).

        Raises:
            ValueError: if k is out of range or sign is unknown.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.d_sae:
            raise ValueError(f"k must be an int in 1..{self.d_sae} (the SAE's d_sae), got {k!r}.")
        return _ranked(self.values, k, sign)

    def selection(self, k: int = 20, sign: str = "positive") -> FeatureSelection:
        """The top k features as a `FeatureSelection` (rule "decomposition:ENCODING").

        Args:
            k: how many, in 1..d_sae.
            sign: "positive", "negative" or "abs".

        Returns:
            The selection, with each feature's value as its score.

        Raises:
            ValueError: if k is out of range or sign is unknown.
        """
        self.top(k, sign)
        return _select(self.values, k, sign, f"decomposition:{self.encoding}", self.hook_name)


def _threshold(values: Tensor, threshold: float, relative: bool) -> float:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0 \
            or threshold != threshold:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}.")
    if relative:
        if threshold >= 1:
            raise ValueError(f"A relative threshold is a fraction of the largest |value| and "
                             f"must be in [0, 1), got {threshold}.")
        return float(threshold) * float(values.abs().max())
    return float(threshold)


def _direction(vector, site: Site) -> Tensor:
    if isinstance(vector, SteeringVector):
        if vector.component != site.component:
            raise ValueError(f"The vector is at component {vector.component!r} but the SAE reads "
                             f"{site.component!r}.")
        if site.layer not in vector.directions:
            raise ValueError(f"The SAE reads layer {site.layer} but the vector has layers "
                             f"{vector.layers}; build it at layer {site.layer}.")
        return vector[site.layer]
    t = torch.as_tensor(vector)
    if t.ndim != 1:
        raise ValueError(f"Expected a SteeringVector or a 1-D direction, got shape {tuple(t.shape)}.")
    return t


def encode_direction(sae, direction: Float[Tensor, " d_in"],
                     encoding: str = "encoder") -> Float[Tensor, " d_sae"]:
    """A direction in feature space under one of ENCODINGS (see the module docstring).

    Args:
        sae (sae_lens.SAE): the SAE.
        direction: a residual-stream direction, [d_in].
        encoding: "encoder" (`v @ W_enc`), "raw" (`sae.encode(v)`) or "decoder" (cosine with
            every decoder row).

    Returns:
        One value per feature, [d_sae], float32 on the CPU.

    Raises:
        ValueError: for an unknown encoding or a direction whose width is not d_in.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"Unknown encoding {encoding!r}; valid encodings are {list(ENCODINGS)} "
                         "(use decompose_pairs for the contrast-pair feature difference).")
    d_in = int(sae.cfg.d_in)
    if direction.shape != (d_in,):
        raise ValueError(f"Direction has shape {tuple(direction.shape)} but the SAE's d_in is {d_in}.")
    w_enc = sae.W_enc
    v = direction.to(device=w_enc.device, dtype=w_enc.dtype)
    with torch.inference_mode():
        if encoding == "encoder":
            out = v @ w_enc
        elif encoding == "raw":
            out = sae.encode(v[None])[0]
        else:
            w_dec = sae.W_dec
            out = (w_dec @ v) / (w_dec.norm(dim=-1) * v.norm()).clamp_min(1e-12)
    return out.detach().float().cpu()


def decompose(model: Model, sae, vector, *, encoding: str = "encoder",
              threshold: float = DEFAULT_THRESHOLD, relative: bool = True,
              label: str | None = None) -> VectorDecomposition:
    """Encode a steering vector (its direction at the SAE's layer) and threshold for diffusion.

    Args:
        model (Model): the model the SAE belongs to.
        sae (sae_lens.SAE): the SAE.
        vector (SteeringVector | Tensor): a vector with a direction at the SAE's layer and
            component, or a bare [d_in] direction.
        encoding: "encoder", "raw" or "decoder".
        threshold: the diffusion threshold (relative to the largest |value| by default).
        relative: treat `threshold` as a fraction of the largest |value|, in [0, 1).
        label: a name for tables and figures (default: the vector's method).

    Returns:
        A `VectorDecomposition`.

    Raises:
        ValueError: if the SAE does not fit the model, the vector lacks the SAE's layer or
            component, or the encoding or threshold is invalid.
    """
    site = check_sae(model, sae)
    values = encode_direction(sae, _direction(vector, site), encoding)
    if label is None:
        label = vector.method if isinstance(vector, SteeringVector) else "vector"
    return VectorDecomposition(values, encoding, _threshold(values, threshold, relative),
                               float(threshold) if relative else None, site.hook_name(), label)


def encode_texts(model: Model, sae, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None,
                 read_at: str = "mean", batch_size: int = 16, chat: bool | None = None,
                 show_progress: bool = False) -> Float[Tensor, "n d_sae"]:
    """SAE code of each text at the SAE's site: at one token ("last"/"first") or the mean of
    the codes of its content tokens ("mean"; codes are averaged, not activations).

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        texts: the texts.
        prompts: an optional prompt per text (the code is read over the text after it).
        read_at: "last", "first" or "mean".
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.

    Returns:
        One code per text, [n, d_sae].

    Raises:
        ValueError: for read_at "all" or an unknown value, or an SAE that does not fit the model.
    """
    check_read_at(read_at)
    if read_at == "all":
        raise ValueError("encode_texts gives one row per text; use 'last', 'first' or 'mean'.")
    site = check_sae(model, sae)
    texts = list(texts)
    acts = extract(model, texts, [site.layer], prompts=prompts, component=site.component,
                   read_at="all" if read_at == "mean" else read_at, batch_size=batch_size,
                   chat=chat, show_progress=show_progress)
    x = acts[site.layer]
    dev, dt = sae.W_enc.device, sae.W_enc.dtype
    codes = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], 1024):
            codes.append(sae.encode(x[start : start + 1024].to(dev, dt)).float().cpu())
    code = torch.cat(codes)
    if read_at != "mean":
        return code
    rows = acts.row_index.long()
    out = torch.zeros(len(texts), code.shape[1], dtype=torch.float64)
    out.index_add_(0, rows, code.double())
    counts = torch.bincount(rows, minlength=len(texts)).clamp_min(1)
    return (out / counts[:, None]).float()


def decompose_pairs(model: Model, sae, pairs: ContrastSet, *, read_at: str = "last",
                    threshold: float = DEFAULT_THRESHOLD, relative: bool = True,
                    batch_size: int = 16, chat: bool | None = None, show_progress: bool = False,
                    label: str | None = None) -> VectorDecomposition:
    """Feature-activation difference of a contrast set: mean code(positives) - mean code(negatives).

    Use the `read_at` the vector was built with ("last" is `build_vector`'s default).

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        pairs: the contrast pairs (anything `as_contrast_set` accepts).
        read_at: "last", "first" or "mean".
        threshold: the diffusion threshold.
        relative: treat `threshold` as a fraction of the largest |value|.
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.
        label: a name for tables and figures (default: the set's name).

    Returns:
        A `VectorDecomposition` with encoding "pairs".

    Raises:
        ValueError: for bad pairs, read_at or threshold, or an SAE that does not fit the model.
    """
    pairs = as_contrast_set(pairs)
    site = check_sae(model, sae)
    prompts = pairs.prompts * 2
    codes = encode_texts(model, sae, pairs.positives + pairs.negatives,
                         prompts=None if all(p is None for p in prompts) else prompts,
                         read_at=read_at, batch_size=batch_size, chat=chat,
                         show_progress=show_progress)
    n = len(pairs)
    values = codes[:n].double().mean(0) - codes[n:].double().mean(0)
    values = values.float()
    return VectorDecomposition(values, "pairs", _threshold(values, threshold, relative),
                               float(threshold) if relative else None, site.hook_name(),
                               label or pairs.name)


@dataclass(frozen=True, eq=False)
class DomainFeatures:
    """Features ranked by mean activation difference, domain texts minus neutral texts.

    Attributes:
        scores: domain_mean - neutral_mean, [d_sae].
        domain_mean: mean code on the domain texts.
        neutral_mean: mean code on the neutral texts.
        n_domain: number of domain texts.
        n_neutral: number of neutral texts.
        read_at: how each text's code was read.
        hook_name: the SAE's hook.
        label: a name for tables and figures.
    """

    scores: Float[Tensor, " d_sae"]  # domain_mean - neutral_mean
    domain_mean: Float[Tensor, " d_sae"]
    neutral_mean: Float[Tensor, " d_sae"]
    n_domain: int
    n_neutral: int
    read_at: str
    hook_name: str
    label: str = "domain"

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(self.scores.numel())

    def top(self, k: int = 20) -> tuple[int, ...]:
        """The k features most more active on domain than neutral text.

        Args:
            k: how many, in 1..d_sae.

        Returns:
            Feature ids, best first.

        Raises:
            ValueError: if k is out of range.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.d_sae:
            raise ValueError(f"k must be an int in 1..{self.d_sae} (the SAE's d_sae), got {k!r}.")
        return _ranked(self.scores, k, "positive")

    def selection(self, k: int = 20) -> FeatureSelection:
        """The top k features as a `FeatureSelection` (rule "activation_diff").

        Args:
            k: how many, in 1..d_sae.

        Returns:
            The selection, with each feature's score.

        Raises:
            ValueError: if k is out of range.
        """
        self.top(k)
        return _select(self.scores, k, "positive", "activation_diff", self.hook_name)


def domain_features(model: Model, sae, domain_texts: Sequence[str], neutral_texts: Sequence[str], *,
                    domain_prompts: Sequence[str | None] | None = None,
                    neutral_prompts: Sequence[str | None] | None = None,
                    read_at: str = "mean", batch_size: int = 16, chat: bool | None = None,
                    show_progress: bool = False, label: str = "domain") -> DomainFeatures:
    """Mean SAE code on domain texts minus that on neutral texts (each text's code averaged over
    its content tokens with read_at="mean"; texts weigh equally).

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        domain_texts: texts of the domain (e.g. a behaviour's positive completions).
        neutral_texts: texts to compare against (its negatives, or neutral prose).
        domain_prompts: an optional prompt per domain text.
        neutral_prompts: an optional prompt per neutral text.
        read_at: "last", "first" or "mean".
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.
        label: a name for tables and figures.

    Returns:
        The `DomainFeatures`.

    Raises:
        ValueError: if either text list is empty, or as `encode_texts`.
    """
    if not domain_texts or not neutral_texts:
        raise ValueError("domain_features needs at least one domain text and one neutral text.")
    site = check_sae(model, sae)
    kw = dict(read_at=read_at, batch_size=batch_size, chat=chat, show_progress=show_progress)
    dom = encode_texts(model, sae, domain_texts, prompts=domain_prompts, **kw).double().mean(0)
    neu = encode_texts(model, sae, neutral_texts, prompts=neutral_prompts, **kw).double().mean(0)
    return DomainFeatures((dom - neu).float(), dom.float(), neu.float(), len(domain_texts),
                          len(neutral_texts), read_at, site.hook_name(), label)


def behaviour_domain(model: Model, sae, pairs: ContrastSet, *, neutral: Sequence[str] | None = None,
                     **kw) -> DomainFeatures:
    """Domain features of a behaviour: its positive completions (after their prompts) against its
    negative completions, or against `neutral` texts (e.g. held-out prose) when given.

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.
        pairs: the behaviour's contrast pairs.
        neutral: neutral texts to compare against instead of the negatives.
        **kw (Any): passed to `domain_features` (read_at, batch_size, chat, show_progress).

    Returns:
        The `DomainFeatures`, labelled with the set's name.
    """
    pairs = as_contrast_set(pairs)
    prompts = pairs.prompts
    prompts = None if all(p is None for p in prompts) else prompts
    if neutral is None:
        return domain_features(model, sae, pairs.positives, pairs.negatives, domain_prompts=prompts,
                               neutral_prompts=prompts, label=pairs.name, **kw)
    return domain_features(model, sae, pairs.positives, list(neutral), domain_prompts=prompts,
                           label=pairs.name, **kw)


def overlap(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of feature ids two selections share.

    Args:
        a: feature ids.
        b: feature ids.

    Returns:
        The size of the intersection.
    """
    return len(set(int(x) for x in a) & set(int(x) for x in b))


@dataclass(frozen=True)
class OverlapTable:
    """Shared features between each vector's top-k and each domain's top-k.

    Attributes:
        vectors: vector names (rows).
        domains: domain names (columns).
        counts: shared features, `counts[vector][domain]`.
        k: the top-k size.
        d_sae: the SAE's number of features.
    """

    vectors: tuple[str, ...]
    domains: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]  # [vector][domain]
    k: int
    d_sae: int

    @property
    def expected_random(self) -> float:
        """Mean overlap of two random k-subsets of d_sae features (hypergeometric: k^2/d_sae)."""
        return self.k * self.k / self.d_sae

    def frame(self):
        """The table in long form, one row per (vector, domain).

        Returns:
            (pandas.DataFrame): One row per pair with vector, domain, overlap, k and
                expected_random.
        """
        import pandas as pd

        rows = [{"vector": v, "domain": d, "overlap": self.counts[i][j], "k": self.k,
                 "expected_random": self.expected_random}
                for i, v in enumerate(self.vectors) for j, d in enumerate(self.domains)]
        return pd.DataFrame(rows)


def _top_of(item, k: int) -> tuple[int, ...]:
    if isinstance(item, (VectorDecomposition, DomainFeatures)):
        return item.top(k)
    if isinstance(item, FeatureSelection):
        if len(item) < k:
            raise ValueError(f"A selection of {len(item)} features cannot give a top-{k}.")
        return item.features[:k]
    ids = tuple(int(x) for x in item)
    if len(ids) < k:
        raise ValueError(f"A list of {len(ids)} features cannot give a top-{k}.")
    return ids[:k]


def overlap_table(vectors: Mapping[str, object], domains: Mapping[str, object], k: int = 20,
                  d_sae_: int | None = None) -> OverlapTable:
    """Overlap counts of top-k features: vectors (decompositions, selections or id lists) against
    domains (DomainFeatures, selections or id lists).

    Args:
        vectors: name -> decomposition, selection or feature ids.
        domains: name -> domain features, selection or feature ids.
        k: the top-k size.
        d_sae_: the SAE's number of features, needed when only id lists are given.

    Returns:
        The `OverlapTable`.

    Raises:
        ValueError: if either mapping is empty, the SAE size is unknown or mixed, k is out of
            range, or an item has fewer than k features.
    """
    if not vectors or not domains:
        raise ValueError("overlap_table needs at least one vector and one domain.")
    sizes = {x.d_sae for x in [*vectors.values(), *domains.values()] if hasattr(x, "d_sae")}
    if d_sae_ is not None:
        sizes.add(int(d_sae_))
    if len(sizes) != 1:
        raise ValueError("overlap_table needs one SAE size: pass d_sae_ when only id lists are "
                         f"given, and do not mix SAEs (got sizes {sorted(sizes)}).")
    n = sizes.pop()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in 1..{n} (the SAE's d_sae), got {k!r}.")
    vt = {name: _top_of(v, k) for name, v in vectors.items()}
    dt = {name: _top_of(d, k) for name, d in domains.items()}
    counts = tuple(tuple(overlap(vt[v], dt[d]) for d in dt) for v in vt)
    return OverlapTable(tuple(vt), tuple(dt), counts, k, n)


__all__ = [
    "DEFAULT_THRESHOLD",
    "ENCODINGS",
    "DomainFeatures",
    "FeatureSelection",
    "OverlapTable",
    "VectorDecomposition",
    "behaviour_domain",
    "check_k",
    "d_sae",
    "decompose",
    "decompose_pairs",
    "domain_features",
    "encode_direction",
    "encode_texts",
    "overlap",
    "overlap_table",
]
