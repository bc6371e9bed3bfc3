"""Conditional steering (CAST): apply an intervention only to prompts a condition direction matches.

Conditional activation steering (Lee et al. 2024, "Programming Refusal with Conditional
Activation Steering") steers a row only when its prompt "is about" something: at a condition layer
the prompt's activation h is compared with a condition direction c, and the behaviour
intervention is switched on for the rows whose similarity passes a threshold. Here
`Conditional(inner, condition, threshold)` wraps any other intervention `inner` (an `Injection`,
an `Ablation`, ...):

- h is read at the condition vector's single site (its layer and component) during the prompt
  pass, before any other edit at that hook (gate reads run first, order -1): with
  `read_at="mean"` (default, as in CAST) the mean over the prompt's content positions (left
  padding excluded), with `read_at="last"` the last prompt token;
- the similarity is `cos(h, c)` (`similarity="cosine"`, default) or the scalar projection
  `h . c / |c|` (`similarity="projection"`); the gate of a row is `sim > threshold`
  (`comparison="greater"`) or `sim < threshold` (`comparison="less"`);
- `inner` then runs at its own sites and positions with its strength times the gate, per row
  (a [batch] strength: 0 for rows the condition does not match). The Conditional's own
  `strength` multiplies the inner one and may be set per row like any other; the Conditional's own
  `positions` / schedule further restrict where the inner edit is written (default: everywhere
  the inner writes). The gated edit runs at the condition kind's place in the hook order (first).

The gate is computed once per prompt batch, on the forward that covers the prompt (offset 0), and
persists across KV-cached decoding steps; a full (uncached) re-run of the same batch reuses it, so
cached and uncached generation give the same tokens. A forward over a new batch recomputes it.
Because it is read on the prompt pass, the inner intervention may not write to a prompt position
at a site that comes before the condition site (it would change the activation the gate reads):
that is refused with a ValueError unless the inner writes to generated positions only
(`positions="generated"` or `start_step >= 1`). `condition_similarity` computes the same
similarity without steering (for choosing and checking thresholds), and `choose_threshold`
picks a threshold on a labelled train split, maximising F1 (default) or Youden's J = TPR - FPR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..backend import Model, runtime
from ..checks import check_batch_size, check_choice, check_texts
from ..extract import resolve_chat
from ..vectors import SteeringVector
from .base import (
    ORDERS,
    BoundIntervention,
    Intervention,
    PositionContext,
    intervention_from_record,
    intervention_record,
    position_mask,
    unit_directions,
    vector_fields,
    vector_from_saved,
    vector_tensors,
)

GATE_READ_AT: tuple[str, ...] = ("mean", "last")
SIMILARITIES: tuple[str, ...] = ("cosine", "projection")
COMPARISONS: tuple[str, ...] = ("greater", "less")
CRITERIA: tuple[str, ...] = ("f1", "youden")

# Order of hooks inside one block, as the forward pass meets them (rank of a hook-name suffix).
_BLOCK_ORDER: tuple[tuple[str, int], ...] = (
    ("hook_resid_pre", 0), ("ln1.", 1), ("attn.", 2), ("hook_attn_in", 1), ("hook_q_input", 1),
    ("hook_k_input", 1), ("hook_v_input", 1), ("hook_attn_out", 3), ("hook_resid_mid", 4),
    ("ln2.", 5), ("hook_mlp_in", 5), ("mlp.", 6), ("hook_mlp_out", 7), ("hook_resid_post", 8),
)


def hook_rank(hook_name: str, layer: int) -> tuple[int, int]:
    """Where a hook sits in the forward pass: (layer, rank inside the block).

    Args:
        hook_name: a hook name from `steerlens.backend.runtime` (e.g. "blocks.3.hook_resid_mid").
        layer: its layer.

    Returns:
        (layer, rank); a suffix this table does not know ranks first in its block (-1), which
        makes the before-the-condition check conservative.
    """
    rest = hook_name.split(f"blocks.{layer}.", 1)[-1]
    for suffix, rank in _BLOCK_ORDER:
        if rest.startswith(suffix):
            return layer, rank
    return layer, -1


def _writes_prompt(iv: Intervention) -> bool:
    return iv.positions != "generated" and iv.start_step == 0


def _inner_writes(iv: Intervention, model: Model) -> list[tuple[str, int]]:
    """The sites where `iv` may write to a prompt position (a nested Conditional: its inner's)."""
    if not _writes_prompt(iv):
        return []
    if isinstance(iv, Conditional):
        return _inner_writes(iv.inner, model)
    return list(iv.sites(model))


@dataclass(frozen=True)
class Conditional(Intervention):
    """Apply `inner` only to rows whose prompt matches a condition direction (CAST).

    Attributes:
        inner: the intervention to gate (any kind).
        condition: a single-layer SteeringVector; its layer and component are where the gate reads.
        threshold: the similarity threshold (see `comparison`).
        read_at: "mean" (mean over the prompt's content positions) or "last" (last prompt token).
        similarity: "cosine" (cos(h, c)) or "projection" (h . c / |c|).
        comparison: "greater" (gate open when sim > threshold) or "less" (sim < threshold).
        strength: multiplier on the inner intervention's strength (may be set per row).
        positions: restricts where the inner edit is written (default "all": wherever the inner
            writes).
        start_step: schedule window start, as for every intervention.
        stop_step: schedule window stop (None: never).
        name: a label for `Steerer.set_strength`.
    """

    kind: ClassVar[str] = "conditional"
    order: ClassVar[int] = ORDERS["read"]

    inner: Intervention
    condition: SteeringVector
    threshold: float
    read_at: str = "mean"
    similarity: str = "cosine"
    comparison: str = "greater"
    strength: float = 1.0
    positions: str = "all"
    start_step: int = 0
    stop_step: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Intervention):
            raise ValueError(f"Conditional.inner must be an Intervention (Injection, Ablation, ...), "
                             f"got {type(self.inner).__name__}.")
        if not isinstance(self.condition, SteeringVector):
            raise ValueError(f"Conditional.condition must be a SteeringVector, got "
                             f"{type(self.condition).__name__}.")
        if len(self.condition.layers) != 1:
            raise ValueError(f"Conditional.condition must have exactly one layer (the condition "
                             f"layer), got layers {self.condition.layers}; use vector.layer(i).")
        unit_directions(self.condition, "Conditional.condition")  # refuses a zero direction
        thr = self.threshold
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not np.isfinite(thr):
            raise ValueError(f"Conditional.threshold must be a finite number, got {thr!r}.")
        check_choice(self.read_at, GATE_READ_AT, "Conditional.read_at")
        check_choice(self.similarity, SIMILARITIES, "Conditional.similarity")
        check_choice(self.comparison, COMPARISONS, "Conditional.comparison")
        self.check_common()

    @property
    def layer(self) -> int:
        """The condition layer."""
        return self.condition.layers[0]

    def condition_site(self) -> tuple[str, int]:
        """The (hook name, layer) where the gate reads.

        Returns:
            The pair.
        """
        return runtime.hook_name(self.layer, self.condition.component), self.layer

    def check_model(self, model: Model) -> None:
        """Check the condition and inner against `model`, and that the gate is read in time.

        Args:
            model (Model): the model.

        Raises:
            ValueError: if the condition or inner does not fit the model, or the inner writes to
                a prompt position at a site before the condition site.
        """
        self.condition.check_model(model)
        self.inner.check_model(model)
        cname, clayer = self.condition_site()
        cond = hook_rank(cname, clayer)
        if not _writes_prompt(self):
            return
        early = sorted({name for name, layer in _inner_writes(self.inner, model)
                        if hook_rank(name, layer) < cond})
        if early:
            raise ValueError(
                f"Conditional: the inner {type(self.inner).__name__} writes to prompt positions at "
                f"{early[:4]}{' ...' if len(early) > 4 else ''}, before the condition site "
                f"{cname!r}, so the gate would read an activation the inner edit already changed. "
                "Move the condition to an earlier site (or the inner to later ones), or let the "
                "inner write to generated positions only (positions='generated' or start_step>=1)."
            )

    def sites(self, model: Model) -> list[tuple[str, int]]:
        """The condition site followed by the inner intervention's sites (deduplicated).

        Args:
            model (Model): the model.

        Returns:
            The (hook name, layer) pairs.
        """
        out = [self.condition_site()]
        for s in self.inner.sites(model):
            if s not in out:
                out.append(s)
        return out

    def bind(self, model: Model) -> BoundIntervention:
        """Bind the inner intervention and the condition direction to `model`.

        Args:
            model (Model): the model.

        Returns:
            The bound conditional (holding the per-batch gate).
        """
        dev = runtime.model_device(model)
        return _BoundConditional(self, self.inner.bind(model),
                                 self.condition[self.layer].to(dev, torch.float32),
                                 set(self.inner.sites(model)))

    def max_push(self) -> float:
        """The inner intervention's largest push times its strength.

        Returns:
            A non-negative float.
        """
        return float(self.inner.max_push()) * abs(float(self.inner.strength))

    def to_dict(self) -> dict[str, Any]:
        """The gate settings, the condition's metadata and the inner intervention's record.

        Returns:
            A JSON-ready dict.
        """
        record, _ = intervention_record(self.inner)
        return {"threshold": float(self.threshold), "read_at": self.read_at,
                "similarity": self.similarity, "comparison": self.comparison,
                "condition": vector_fields(self.condition), "inner": record}

    def tensors(self) -> dict[str, Tensor]:
        """The condition direction ("condition.layer.{i}") and the inner's tensors ("inner.*").

        Returns:
            key -> tensor.
        """
        _, inner = intervention_record(self.inner)
        return {**vector_tensors(self.condition, "condition"),
                **{f"inner.{k}": v for k, v in inner.items()}}

    @classmethod
    def from_saved(cls, fields: Mapping[str, Any], tensors: Mapping[str, Tensor],
                   common: Mapping[str, Any]) -> Conditional:
        """Rebuild from a saved record (the inner one is rebuilt by its own kind).

        Args:
            fields: `to_dict()` output.
            tensors: `tensors()` output.
            common: the common fields.

        Returns:
            The conditional.

        Raises:
            KeyError: if the record lacks the inner intervention or the threshold.
        """
        if "inner" not in fields or "threshold" not in fields:
            raise KeyError("a conditional record needs 'inner' and 'threshold'")
        inner_t = {k[len("inner."):]: v for k, v in tensors.items() if k.startswith("inner.")}
        inner = intervention_from_record(fields["inner"], inner_t)
        cond = vector_from_saved(fields.get("condition", {}), tensors, "condition")
        return cls(inner, cond, float(fields["threshold"]), read_at=fields.get("read_at", "mean"),
                   similarity=fields.get("similarity", "cosine"),
                   comparison=fields.get("comparison", "greater"), **common)


def _reduce_prompt(act: Tensor, context: PositionContext, read_at: str) -> Tensor:
    """[batch, d] prompt activation: mean over content positions or the last prompt token."""
    n, length = act.shape[0], act.shape[1]
    width = context.prompt_width if context.prompt_width is not None else length
    x = act[:, :width].float()
    if read_at == "last":
        return x[:, width - 1]
    pos = torch.arange(width, device=act.device)
    if context.first is not None:
        start = context.first.to(act.device)
    else:
        start = torch.zeros(n, dtype=torch.long, device=act.device)
    w = (pos[None] >= start[:, None]).float()
    return (x * w[..., None]).sum(1) / w.sum(1, keepdim=True)


def similarity_of(h: Float[Tensor, "batch d"], direction: Float[Tensor, " d"],
                  kind: str) -> Float[Tensor, " batch"]:
    """Similarity of each row of `h` with `direction`: cosine, or scalar projection h . c / |c|.

    Args:
        h: prompt activations.
        direction: the condition direction.
        kind: "cosine" or "projection".

    Returns:
        One similarity per row (float32; cosine of a zero row is 0).

    Raises:
        ValueError: for an unknown kind.
    """
    check_choice(kind, SIMILARITIES, "similarity")
    c = direction.to(h.device, torch.float32)
    dot = h.float() @ c
    if kind == "projection":
        return dot / c.norm()
    return dot / (h.float().norm(dim=-1) * c.norm()).clamp_min(1e-30)


class _BoundConditional(BoundIntervention):
    skip_at_zero = False  # the gate must be read even while the strength is 0

    def __init__(self, spec: Conditional, inner: BoundIntervention, direction: Tensor,
                 inner_sites: set[tuple[str, int]]) -> None:
        self.spec = spec
        self.inner = inner
        self.direction = direction
        self.inner_sites = inner_sites
        self.cond_name, self.cond_layer = spec.condition_site()
        self.gate: Tensor | None = None  # [batch] bool
        self.similarity: Tensor | None = None  # [batch] float32
        self._key: tuple | None = None
        self._stale = True

    def reset(self) -> None:
        self._stale = True
        self.inner.reset()

    def _refresh(self, act: Tensor, context: PositionContext) -> None:
        """First hook of a bound forward from position 0: keep the same batch's gate, else drop it."""
        if not self._stale:
            return
        self._stale = False
        if unbound(context):
            self.gate, self.similarity, self._key = None, None, None
            return
        key = (context.first, context.prompt_width, act.shape[0])
        old = self._key
        if old is None or key[0] is not old[0] or key[1:] != old[1:]:
            self.gate, self.similarity, self._key = None, None, key

    def apply(self, act: Tensor, layer: int, hook_name: str, scale: float | Tensor,
              mask: Tensor | None, context: PositionContext) -> Tensor:
        if context.offset == 0:
            self._refresh(act, context)
        at_condition = hook_name == self.cond_name and layer == self.cond_layer
        if at_condition and (self.gate is None or (context.offset == 0 and unbound(context))):
            if context.offset != 0:
                raise ValueError("Conditional: a decoding step ran without a prompt pass over this "
                                 "batch, so there is no gate; run the prompt first (generate() "
                                 "does), or bind the steerer with Steerer.bound(batch).")
            h = _reduce_prompt(act, context, self.spec.read_at)
            sim = similarity_of(h, self.direction, self.spec.similarity)
            thr = float(self.spec.threshold)
            self.similarity = sim.detach()
            self.gate = sim > thr if self.spec.comparison == "greater" else sim < thr
        if (hook_name, layer) not in self.inner_sites:
            return act
        inner_mask = position_mask(self.spec.inner, context, act.shape[0], act.shape[1], act.device)
        if inner_mask is not None:
            inner_mask = inner_mask.to(act.dtype)
            mask = inner_mask if mask is None else mask * inner_mask
        if self.gate is None:
            if mask is not None and not bool(mask.any()):
                return act  # nothing to write yet (e.g. generated positions during the prompt)
            raise ValueError(f"Conditional: the inner intervention writes at {hook_name!r} before "
                             f"the gate is read at {self.cond_name!r} in this forward.")
        if self.gate.shape[0] != act.shape[0]:
            raise ValueError(f"Conditional: the gate was computed for {self.gate.shape[0]} rows but "
                             f"this forward has {act.shape[0]}; run the prompt pass of this batch.")
        rows = self.gate.to(act.device, act.dtype) * float(self.spec.inner.strength)
        rows = rows * (scale if isinstance(scale, Tensor) else float(scale))
        return self.inner.apply(act, layer, hook_name, rows, mask, context)


def unbound(context: PositionContext) -> bool:
    """Whether no batch is bound (then every prompt pass recomputes the gate).

    Args:
        context: the position context.

    Returns:
        True when nothing is bound.
    """
    return context.first is None or context.prompt_width is None


# ------------------------------------------------------------------------ the condition, unsteered
def condition_similarity(
    model: Model,
    prompts: Sequence[str],
    condition: SteeringVector,
    *,
    read_at: str = "mean",
    similarity: str = "cosine",
    chat: bool | None = None,
    batch_size: int = 32,
) -> Float[np.ndarray, " n"]:
    """The similarity a `Conditional` gate computes, for each prompt, without steering.

    Same reduction and similarity as the gate (prompts encoded as `generate()` encodes them), so
    `sim > threshold` here is the gate a `Conditional` opens (up to float32 noise from batching).

    Args:
        model: the model.
        prompts: the prompts.
        condition: a single-layer condition vector.
        read_at: "mean" or "last" (as `Conditional.read_at`).
        similarity: "cosine" or "projection".
        chat: chat-template the prompts; None = auto (as `generate()`).
        batch_size: most prompts per forward.

    Returns:
        float64 array [n] of similarities.

    Raises:
        ValueError: for no prompts, a multi-layer or foreign condition, or unknown settings.
    """
    prompts = check_texts(prompts, "prompts")
    check_batch_size(batch_size)
    check_choice(read_at, GATE_READ_AT, "read_at")
    check_choice(similarity, SIMILARITIES, "similarity")
    if len(condition.layers) != 1:
        raise ValueError(f"condition must have exactly one layer, got {condition.layers}.")
    condition.check_model(model)
    layer = condition.layers[0]
    name = runtime.hook_name(layer, condition.component)
    use_chat = resolve_chat(model, chat, True)
    direction = condition[layer]
    out: list[Tensor] = []
    for i in range(0, len(prompts), batch_size):
        batch = runtime.encode_prompts(model, prompts[i : i + batch_size], chat=use_chat)
        ctx = PositionContext()
        ctx.bind(batch)
        got: dict[str, Tensor] = {}

        def hook(act: Tensor, hook, ctx=ctx, got=got) -> None:
            got["sim"] = similarity_of(_reduce_prompt(act, ctx, read_at), direction, similarity)

        with runtime.attached(model, [(name, hook)]):
            runtime.forward(model, batch, stop_at_layer=min(layer + 1, runtime.n_layers(model)),
                            return_type=None)
        out.append(got["sim"].double().cpu())
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class ThresholdChoice:
    """A gate threshold chosen on a labelled split, with its confusion counts there.

    Attributes:
        threshold: the chosen threshold (midway between two adjacent observed scores).
        criterion: "f1" or "youden".
        value: the criterion's value at the threshold.
        comparison: "greater" or "less" (which side of the threshold is "matching").
        tp: matching rows predicted matching.
        fp: non-matching rows predicted matching.
        fn: matching rows predicted non-matching.
        tn: non-matching rows predicted non-matching.
    """

    threshold: float
    criterion: str
    value: float
    comparison: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        """Number of labelled rows."""
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        """tp / (tp + fp) (NaN with no predicted positives)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        """tp / (tp + fn), the true-positive rate."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def false_positive_rate(self) -> float:
        """fp / (fp + tn)."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else float("nan")


def gate_counts(scores: Float[np.ndarray, " n"] | Sequence[float],
                labels: Bool[np.ndarray, " n"] | Sequence[bool], threshold: float,
                comparison: str = "greater") -> tuple[int, int, int, int]:
    """Confusion counts (tp, fp, fn, tn) of the gate `score > threshold` (or `<`) against labels.

    Args:
        scores: one similarity per row.
        labels: True for rows the condition should match.
        threshold: the threshold.
        comparison: "greater" or "less".

    Returns:
        (tp, fp, fn, tn).

    Raises:
        ValueError: for mismatched lengths or an unknown comparison.
    """
    check_choice(comparison, COMPARISONS, "comparison")
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D and the same length, got {s.shape} and "
                         f"{y.shape}.")
    pred = s > threshold if comparison == "greater" else s < threshold
    return (int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum()),
            int((~pred & ~y).sum()))


def choose_threshold(
    scores: Float[np.ndarray, " n"] | Sequence[float],
    labels: Bool[np.ndarray, " n"] | Sequence[bool],
    criterion: str = "f1",
    comparison: str = "greater",
) -> ThresholdChoice:
    """Pick the gate threshold on a labelled (train) split.

    Candidates are the midpoints between adjacent distinct scores, plus one below the smallest and
    one above the largest. "f1" maximises F1 = 2 tp / (2 tp + fp + fn) of the matching class (the
    CAST paper's choice); "youden" maximises Youden's J = TPR - FPR (balanced between classes).
    Ties go to the candidate with the smallest threshold for "greater" (largest for "less"), i.e.
    the most permissive gate.

    Args:
        scores: one similarity per train row (e.g. from `condition_similarity`).
        labels: True for rows the condition should match.
        criterion: "f1" or "youden".
        comparison: "greater" (matching rows score high) or "less".

    Returns:
        A `ThresholdChoice` with the threshold and the train confusion counts.

    Raises:
        ValueError: for mismatched or empty inputs, non-finite scores, labels of only one class, or
            an unknown criterion or comparison.
    """
    check_choice(criterion, CRITERIA, "criterion")
    check_choice(comparison, COMPARISONS, "comparison")
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape or s.size == 0:
        raise ValueError(f"scores and labels must be non-empty, 1-D and the same length, got "
                         f"{s.shape} and {y.shape}.")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values.")
    if y.all() or not y.any():
        raise ValueError("choose_threshold needs both matching (True) and non-matching (False) rows.")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    if comparison == "less":
        cands = cands[::-1]
    best: ThresholdChoice | None = None
    for t in cands:
        tp, fp, fn, tn = gate_counts(s, y, float(t), comparison)
        if criterion == "f1":
            val = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        else:
            val = tp / (tp + fn) - fp / (fp + tn)
        if best is None or val > best.value:
            best = ThresholdChoice(float(t), criterion, float(val), comparison, tp, fp, fn, tn)
    assert best is not None
    return best
