"""Eigengap weakest-link scoring: how stable is each attention head, and each layer?

The claim tested here reads attention as kernel ridge regression over the keys, so the spectrum of
a head's key Gram matrix K_h = (1/d_head) K Kᵀ (K: the T x d_head keys of one prompt) measures how
well-conditioned that regression is. The relative eigengap Δ = (λ1 - λ2) / λ1 of K_h is the
head's score, and a layer is scored by its weakest link, the minimum Δ over its heads (the mean
and median are reported beside it). Layers at or below a threshold (0.77 by default) are flagged.

Computation. Keys are taken per key/value head (grouped-query models share one key matrix among
several query heads, so that is the unit that has a Gram matrix), before and after the rotary
embedding. Padding is excluded exactly: all prompts share one left-padded batch, and the key rows
of padding positions are set to zero, which only adds zero eigenvalues to the Gram matrix. Since
the nonzero eigenvalues of K Kᵀ equal those of Kᵀ K, the d_head x d_head side is used whenever the
prompts are longer than d_head. Every (prompt, layer, head) matrix goes into one batched
`eigvalsh` call in float64 (the top two of every matrix at once, no Python loop over matrices);
for short prompts (T <= 64) the eigen step costs a fraction of one forward pass over the same
prompts, and the whole call (a capture forward that stops after the deepest layer and computes no
logits, plus the eigen step) stays near one forward (`benchmarks/bench_eigengap.py` prints both
ratios). The same gaps of post-softmax attention patterns A (via A Aᵀ, whose
eigenvalues are A's squared singular values) give the contrast the claim rests on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..backend import Model, runtime
from ..extract import resolve_chat
from ._capture import capture_attention, encode_checked, resolve_layers

DEFAULT_THRESHOLD = 0.77
GapKind = str  # "keys" | "rotated_keys" | "pattern"; validated with a ValueError
LayerStat = str  # "min" | "mean" | "median"; validated with a ValueError
LAYER_STATS: tuple[str, ...] = ("min", "mean", "median")


def check_threshold(threshold: float) -> float:
    """Validate an eigengap threshold.

    Args:
        threshold: the threshold, a number in [0, 1].

    Returns:
        The threshold as a float.

    Raises:
        ValueError: if it is not a finite number in [0, 1].
    """
    t = float(threshold)
    if not math.isfinite(t) or not 0.0 <= t <= 1.0:
        raise ValueError(f"Eigengap threshold must be a number in [0, 1], got {threshold!r}.")
    return t


def gram_top2(
    x: Float[Tensor, "*batch pos d"],
    mask: Bool[Tensor, "*batch pos"] | None = None,
    scale: float | None = None,
) -> tuple[Float[Tensor, " *batch"], Float[Tensor, " *batch"]]:
    """The two largest eigenvalues of scale * X Xᵀ over the unmasked rows of every matrix.

    One batched float64 `eigvalsh` call; the d x d side (Xᵀ X) is used when pos > d, which has the
    same nonzero eigenvalues. Masked rows are zeroed, which only adds zero eigenvalues. Float64:
    the products of float32 inputs are exact in float64 and the Gram sums and eigenvalues then
    carry ~1e-16 relative error, so λ2 (often < 0.1 λ1) keeps its digits; float32 would bound the
    gaps' error only to ~1e-6 and saves about 20% of a step that costs a fraction of a forward.

    Args:
        x: rows of every matrix, [..., pos, d].
        mask: True for the rows to keep, [..., pos]; None keeps every row.
        scale: factor on the Gram matrix (default 1/d).

    Returns:
        (λ1, λ2) per matrix, each of shape [...]; λ2 is clamped at 0.

    Raises:
        ValueError: if x is not [..., pos, d], the mask shape does not match, or a matrix has
            fewer than 2 unmasked rows.
    """
    if x.ndim < 2:
        raise ValueError(f"Expected [..., pos, d] rows, got shape {tuple(x.shape)}.")
    x = x.to(torch.float64)
    if mask is not None:
        if mask.shape != x.shape[:-1]:
            raise ValueError(
                f"Mask shape {tuple(mask.shape)} does not match rows {tuple(x.shape[:-1])}.")
        counts = mask.sum(-1)
        if not bool(mask.all()):  # no padding: nothing to zero
            x = x * mask[..., None].to(x.dtype)
    else:
        counts = torch.full(x.shape[:-2], x.shape[-2])
    if x.shape[-2] < 2 or bool((counts < 2).any()):
        raise ValueError("Every matrix needs at least 2 rows (tokens): λ2 is undefined otherwise.")
    pos, d = x.shape[-2], x.shape[-1]
    s = (1.0 / d) if scale is None else float(scale)
    gram = x.mT @ x if pos > d else x @ x.mT
    ev = torch.linalg.eigvalsh(gram * s)
    return ev[..., -1], ev[..., -2].clamp_min(0.0)


def relative_gap(lam1: Tensor, lam2: Tensor) -> Tensor:
    """Δ = (λ1 - λ2) / λ1, NaN where λ1 is 0.

    Args:
        lam1: the largest eigenvalues.
        lam2: the second largest, same shape.

    Returns:
        The relative gaps, same shape, in [0, 1] where defined.
    """
    return torch.where(lam1 > 0, (lam1 - lam2) / lam1.clamp_min(1e-300), torch.nan)


def gram_gaps(
    x: Float[Tensor, "*batch pos d"], mask: Bool[Tensor, "*batch pos"] | None = None
) -> Float[Tensor, " *batch"]:
    """Relative eigengap of each (1/d) X Xᵀ, batched.

    Args:
        x: rows of every matrix, [..., pos, d].
        mask: True for the rows to keep, [..., pos]; None keeps every row.

    Returns:
        Δ per matrix, shape [...].

    Raises:
        ValueError: as `gram_top2`.
    """
    return relative_gap(*gram_top2(x, mask))


@dataclass(frozen=True)
class GapTable:
    """Eigengaps of one kind of matrix for every prompt, layer and head.

    Layer statistics take the min/mean/median over heads within each prompt, then average over
    prompts (`per_prompt` gives the prompt-level values, e.g. for bootstrap CIs).

    Attributes:
        kind: "keys", "rotated_keys" or "pattern".
        layers: the layers, in the order of the gaps' layer axis.
        gaps: relative gaps, [prompt, layer, head].
        lambda1: largest eigenvalues, same shape.
        lambda2: second largest eigenvalues, same shape.
        threshold: layers whose weakest-link gap is at or below this are flagged.
    """

    kind: str
    layers: tuple[int, ...]
    gaps: np.ndarray  # [prompt, layer, head]
    lambda1: np.ndarray
    lambda2: np.ndarray
    threshold: float = DEFAULT_THRESHOLD

    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return int(self.gaps.shape[0])

    @property
    def n_heads(self) -> int:
        """Number of heads per layer (key/value heads for key gaps)."""
        return int(self.gaps.shape[2])

    def per_prompt(self, stat: LayerStat = "min") -> np.ndarray:
        """[prompt, layer] statistic over heads.

        Args:
            stat: "min" (the weakest link), "mean" or "median".

        Returns:
            An array [prompt, layer].

        Raises:
            ValueError: for an unknown statistic.
        """
        if stat not in LAYER_STATS:
            raise ValueError(f"Unknown layer statistic {stat!r}; valid ones are {list(LAYER_STATS)}.")
        fn = {"min": np.min, "mean": np.mean, "median": np.median}[stat]
        return fn(self.gaps, axis=2)

    def layer(self, stat: LayerStat = "min") -> np.ndarray:
        """[layer] statistic over heads, averaged over prompts.

        Args:
            stat: "min" (the weakest link), "mean" or "median".

        Returns:
            An array [layer].

        Raises:
            ValueError: for an unknown statistic.
        """
        return self.per_prompt(stat).mean(axis=0)

    @property
    def min_gap(self) -> np.ndarray:
        """Weakest-link (min over heads) gap per layer, averaged over prompts."""
        return self.layer("min")

    @property
    def mean_gap(self) -> np.ndarray:
        """Mean gap over heads per layer, averaged over prompts."""
        return self.layer("mean")

    @property
    def median_gap(self) -> np.ndarray:
        """Median gap over heads per layer, averaged over prompts."""
        return self.layer("median")

    @property
    def head_gap(self) -> np.ndarray:
        """[layer, head] gap averaged over prompts."""
        return self.gaps.mean(axis=0)

    def flagged(self, threshold: float | None = None) -> tuple[int, ...]:
        """Layers whose weakest-link gap is at or below the threshold.

        Args:
            threshold: the threshold in [0, 1]; None uses the table's.

        Returns:
            The flagged layers, in layer order.

        Raises:
            ValueError: if `threshold` is not in [0, 1].
        """
        t = self.threshold if threshold is None else check_threshold(threshold)
        return tuple(layer for layer, g in zip(self.layers, self.min_gap) if g <= t)

    def rows(self) -> list[dict]:
        """One dict per layer with its min, mean and median gap and whether it is flagged.

        Returns:
            The rows, in layer order.
        """
        flagged = set(self.flagged())
        return [
            {"layer": layer, "min_gap": float(mn), "mean_gap": float(me), "median_gap": float(md),
             "flagged": layer in flagged}
            for layer, mn, me, md in zip(self.layers, self.min_gap, self.mean_gap, self.median_gap)
        ]

    def to_dict(self) -> dict:
        """The table's summary as a JSON-ready dict (per-layer rows and the head-level gaps).

        Returns:
            A dict with kind, threshold, n_prompts, n_heads, the per-layer rows and `head_gap`.
        """
        return {"kind": self.kind, "threshold": self.threshold, "n_prompts": self.n_prompts,
                "n_heads": self.n_heads, "layers": self.rows(),
                "head_gap": self.head_gap.tolist()}


@dataclass(frozen=True)
class EigengapResult:
    """Key gaps before/after rotary and pattern gaps for one model and prompt set.

    Attributes:
        model: the model's id.
        n_tokens: the number of (non-padding) tokens of each prompt.
        threshold: the flagging threshold.
        keys: gaps of the key Gram matrices before the rotary embedding.
        rotated_keys: the same after the rotary embedding (None for models without rotary).
        patterns: gaps of the post-softmax attention patterns (None when not computed).
    """

    model: str
    n_tokens: tuple[int, ...]
    threshold: float
    keys: GapTable
    rotated_keys: GapTable | None
    patterns: GapTable | None

    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return len(self.n_tokens)

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers analysed."""
        return self.keys.layers

    def table(self, kind: GapKind = "keys") -> GapTable:
        """One kind of gap table.

        Args:
            kind: "keys", "rotated_keys" or "pattern".

        Returns:
            The `GapTable` of that kind.

        Raises:
            ValueError: for an unknown kind or one this result does not have.
        """
        tables = {"keys": self.keys, "rotated_keys": self.rotated_keys, "pattern": self.patterns}
        if kind not in tables:
            raise ValueError(f"Unknown gap kind {kind!r}; valid kinds are {list(tables)}.")
        if tables[kind] is None:
            have = [k for k, v in tables.items() if v is not None]
            raise ValueError(f"This result has no {kind!r} gaps; it has {have}.")
        return tables[kind]

    def to_dict(self) -> dict:
        """The result as a JSON-ready dict (one entry per gap table).

        Returns:
            A dict with model, n_prompts, n_tokens, threshold and each table's `to_dict()` (or None).
        """
        return {
            "model": self.model, "n_prompts": self.n_prompts, "n_tokens": list(self.n_tokens),
            "threshold": self.threshold,
            **{k: (t.to_dict() if t is not None else None) for k, t in (
                ("keys", self.keys), ("rotated_keys", self.rotated_keys),
                ("patterns", self.patterns))},
        }


def _table(kind: str, layers, lam1: Tensor, lam2: Tensor, threshold: float) -> GapTable:
    gap = relative_gap(lam1, lam2)
    return GapTable(kind, tuple(layers), gap.cpu().numpy(), lam1.cpu().numpy(),
                    lam2.cpu().numpy(), threshold)


def eigengaps(
    model: Model,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    chat: bool | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    patterns: bool = True,
    batch_size: int = 8,
) -> EigengapResult:
    """Key-Gram (and pattern) eigengaps for every prompt, layer and head.

    `chat=None` applies the chat template for instruct models that have one. Keys are compared
    before (`keys`) and after (`rotated_keys`, rotary models only) the rotary embedding. All
    prompts run in left-padded batches; padding rows are excluded exactly.

    Args:
        model (Model): the model.
        prompts: the prompts, each at least 2 tokens long.
        layers: the layers to analyse (None: every layer).
        chat: chat-template the prompts; None = auto.
        threshold: layers whose weakest-link gap is at or below this are flagged.
        patterns: also compute the post-softmax pattern gaps.
        batch_size: most prompts per forward.

    Returns:
        An `EigengapResult` with one `GapTable` per kind of matrix.

    Raises:
        ValueError: for a bad threshold, layer, empty prompt list, or a prompt shorter than 2
            tokens.

    Example:
        ```python
        import steerlens as sl

        model = sl.load_model()
        gaps = sl.eigengaps(model, ["The capital of France is", "Write a poem about the sea."])
        keys = gaps.table("keys")
        print(keys.min_gap)       # weakest-link gap per layer, averaged over the prompts
        print(keys.flagged())     # layers at or below the 0.77 threshold
        ```
    """
    threshold = check_threshold(threshold)
    layers = resolve_layers(model, layers)
    chat = resolve_chat(model, chat, has_prompts=True)
    batch = encode_checked(model, prompts, chat)
    return gaps_of_batch(model, batch, layers, threshold=threshold, patterns=patterns,
                         batch_size=batch_size)


def gaps_of_batch(
    model: Model,
    batch: runtime.TokenBatch,
    layers: Sequence[int],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    patterns: bool = True,
    batch_size: int = 8,
) -> EigengapResult:
    """`eigengaps` on an already encoded, left-padded batch (every row at least 2 tokens).

    One capture forward (stopping after the deepest layer, no logits), then one batched float64
    `eigvalsh` for the key Gram matrices of every prompt, layer, key/value head and kind (before
    and after rotary) and one for the pattern Gram matrices.

    Args:
        model (Model): the model.
        batch: the encoded prompts (e.g. from `runtime.encode_prompts`).
        layers: the layers to analyse.
        threshold: layers whose weakest-link gap is at or below this are flagged.
        patterns: also compute the post-softmax pattern gaps.
        batch_size: most prompts per forward.

    Returns:
        An `EigengapResult`.

    Raises:
        ValueError: for a bad threshold or layer, or a row with fewer than 2 tokens.
    """
    threshold = check_threshold(threshold)
    layers = resolve_layers(model, layers)
    rotary = runtime.has_hook(model, runtime.key_hook_name(layers[0], rotated=True))
    parts = ["k"] + (["rot_k"] if rotary else []) + (["pattern"] if patterns else [])
    cap = capture_attention(model, batch, layers, parts, batch_size)
    mask = cap.mask

    # keys: [prompt, layer, pos, head, d] -> [prompt, layer, head, pos, d]; one eigvalsh for all
    keys = [cap.parts[p].permute(0, 1, 3, 2, 4) for p in parts if p != "pattern"]
    kmask = mask[:, None, None, :].expand(*keys[0].shape[:3], mask.shape[-1])
    lam1, lam2 = gram_top2(torch.stack(keys), kmask.expand(len(keys), *kmask.shape))
    key_tables = [_table(kind, layers, lam1[i], lam2[i], threshold)
                  for i, kind in enumerate(["keys", "rotated_keys"][: len(keys)])]

    pattern_table = None
    if patterns:
        pat = cap.parts["pattern"].to(torch.float64)  # [prompt, layer, head, q, k]
        pat = pat * mask[:, None, None, None, :].to(pat.dtype)
        pmask = mask[:, None, None, :].expand(*pat.shape[:3], mask.shape[-1])
        pattern_table = _table("pattern", layers, *gram_top2(pat, pmask, scale=1.0), threshold)
    return EigengapResult(
        model=runtime.model_id(model), n_tokens=cap.n_tokens, threshold=threshold,
        keys=key_tables[0], rotated_keys=key_tables[1] if rotary else None,
        patterns=pattern_table,
    )


GATING_READINGS: tuple[str, ...] = ("stated", "inverse")


def gated_layers(
    table: GapTable | EigengapResult,
    threshold: float | None = None,
    by: LayerStat = "min",
    reading: str = "stated",
) -> tuple[int, ...]:
    """Eigengap-gated layer selection: candidate steering layers, most steerable first.

    `reading="stated"` (the default) implements the claim as stated: small gaps mark unstable
    heads that are susceptible to steering, and a layer is as steerable as its weakest (min-gap)
    head, so the candidates are the layers whose weakest-link gap is at or below `threshold`
    (default: the table's), ranked by the `by` statistic smallest first. `reading="inverse"` is
    the opposite reading (large gaps steer best): the layers above the threshold, largest first.
    Ties keep layer order. An `EigengapResult` uses its rotated keys when it has them, else its
    plain keys.

    Args:
        table: a `GapTable`, or an `EigengapResult`.
        threshold: the gating threshold; None uses the table's.
        by: the statistic to rank by: "min", "mean" or "median".
        reading: "stated" (gap <= threshold, smallest first) or "inverse" (gap > threshold,
            largest first).

    Returns:
        The gated layers, most steerable first under `reading` (empty when none passes).

    Raises:
        ValueError: for an unknown `reading` or `by`, or a threshold outside [0, 1].
    """
    if reading not in GATING_READINGS:
        raise ValueError(f"Unknown gating reading {reading!r}; valid ones are "
                         f"{list(GATING_READINGS)}.")
    if isinstance(table, EigengapResult):
        table = table.rotated_keys if table.rotated_keys is not None else table.keys
    flagged = set(table.flagged(threshold))
    score = table.layer(by)
    if reading == "stated":
        order = np.argsort(score, kind="stable")
        return tuple(table.layers[i] for i in order if table.layers[i] in flagged)
    order = np.argsort(-score, kind="stable")
    return tuple(table.layers[i] for i in order if table.layers[i] not in flagged)
