"""Per-head steering: edit one attention head's output before the output projection W_O.

An attention layer writes `attn_out = sum_h z_h @ W_O[h] + b_O`, where z_h [pos, d_head] is head
h's attention-weighted values (TransformerLens' `hook_z`, one slot per query head). Editing z_h
therefore changes the block's attention output by exactly the edit times W_O[h], and nothing else
in that layer: `HeadSteer(layer, head, vector)` adds a d_head vector to z_h (the attention output
moves by `strength * vector @ W_O[head]`), `HeadAblation(layer, head)` removes the head (z_h <- 0)
and `HeadAblation(layer, head, mean=m)` replaces it by a reference mean m (mean ablation; `head_mean`
computes m over a reference batch). Strength interpolates: the ablated z_h is
`z_h + s (target - z_h)` (`torch.lerp`, exact at 0 and 1), per-row strengths allowed, and position
modes and schedules mean what they mean for additive steering. Heads are addressed as
(layer, query head) in 0..n_heads-1; under grouped-query attention (SmolLM2: 9 query heads sharing
3 key/value heads) query head h reads key/value head h // (n_heads / n_kv_heads), but hook_z is
per query head, so each query head is edited on its own. At one hook, head edits run after
ablations and clamps and before additions (kind order 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime
from ..checks import check_batch_size, check_texts
from ..extract import resolve_chat
from ..sites import check_layer
from .base import ORDERS, BoundIntervention, Intervention, PositionContext, weight


def _check_index(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}.")
    return int(value)


def _as_vector(v: object, what: str, allow_zero: bool) -> Tensor:
    if not isinstance(v, Tensor):
        try:
            v = torch.as_tensor(v, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{what} must be a 1-D tensor [d_head], got {type(v).__name__}.") from err
    if v.ndim != 1 or v.numel() == 0:
        raise ValueError(f"{what} must be a 1-D tensor [d_head], got shape {tuple(v.shape)}.")
    v = v.detach().float().cpu()
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{what} has non-finite values (inf or NaN).")
    if not allow_zero and not float(v.abs().max()) > 0:
        raise ValueError(f"{what} is zero; adding it would change nothing.")
    return v


def check_head(model: Model, layer: int, head: int) -> tuple[int, int]:
    """Validate a (layer, query head) address on `model`.

    Args:
        model (Model): the model.
        layer: the block index.
        head: the query-head index.

    Returns:
        (layer, head).

    Raises:
        ValueError: naming the valid layer or head range (and the grouped-query layout).
    """
    layer = check_layer(model, layer)
    n_heads, n_kv, _ = runtime.attention_shape(model)
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
        gqa = (f"; its {n_heads} query heads share {n_kv} key/value heads, and heads are "
               "addressed by query head (hook_z is per query head)") if n_kv != n_heads else ""
        raise ValueError(f"Head {head!r} is out of range for layer {layer} of "
                         f"{runtime.model_id(model)}: valid heads are 0..{n_heads - 1}{gqa}.")
    return layer, head


def kv_head(model: Model, head: int) -> int:
    """The key/value head a query head reads under grouped-query attention.

    Args:
        model (Model): the model.
        head: the query-head index.

    Returns:
        head // (n_heads / n_kv_heads) (the head itself without grouped-query attention).
    """
    n_heads, n_kv, _ = runtime.attention_shape(model)
    return head // (n_heads // n_kv)


class _HeadEdit(Intervention):
    """Shared address checks and sites of the per-head kinds."""

    order: ClassVar[int] = ORDERS["head"]

    def _check_address(self) -> None:
        object.__setattr__(self, "layer", _check_index(self.layer, f"{type(self).__name__}.layer"))
        object.__setattr__(self, "head", _check_index(self.head, f"{type(self).__name__}.head"))

    def _check_width(self, model: Model, v: Tensor | None, what: str) -> None:
        check_head(model, self.layer, self.head)
        d_head = runtime.attention_shape(model)[2]
        if v is not None and v.numel() != d_head:
            raise ValueError(f"{what} has {v.numel()} entries but the model's heads have d_head "
                             f"{d_head}.")

    def sites(self, model: Model) -> list[tuple[str, int]]:
        """The layer's per-head output hook (hook_z).

        Args:
            model (Model): the model.

        Returns:
            [(hook name, layer)].
        """
        return [(runtime.attention_hook_name(self.layer, "z"), self.layer)]


@dataclass(frozen=True, eq=False)
class HeadSteer(_HeadEdit):
    """Add a d_head vector to one attention head's output z (before W_O).

    Attributes:
        layer: the block index.
        head: the query-head index, 0..n_heads-1.
        vector: the vector added to z at that head, [d_head] (finite, nonzero).
        strength: multiplier on the vector (per-row allowed).
        positions: where it applies, one of `POSITION_MODES`.
        start_step: first generated-token index at which it is active.
        stop_step: generated-token index at which it stops (None: never).
        name: a label for `Steerer.set_strength(name, ...)`.
    """

    kind: ClassVar[str] = "head_add"

    layer: int
    head: int
    vector: Any
    strength: float = 1.0
    positions: str = "all"
    start_step: int = 0
    stop_step: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self._check_address()
        object.__setattr__(self, "vector", _as_vector(self.vector, "HeadSteer.vector", False))
        self.check_common()

    def check_model(self, model: Model) -> None:
        """Refuse a layer or head the model lacks, or a vector that is not d_head wide.

        Args:
            model (Model): the model.

        Raises:
            ValueError: naming the valid range.
        """
        self._check_width(model, self.vector, "HeadSteer.vector")

    def bind(self, model: Model) -> BoundIntervention:
        """The vector on the model's device and dtype.

        Args:
            model (Model): the model.

        Returns:
            The bound edit.
        """
        self.check_model(model)
        v = self.vector.to(runtime.model_device(model), runtime.model_dtype(model))
        return _BoundHead(self.head, v, None)

    def max_push(self) -> float:
        """The vector's largest |entry| (written into z, before W_O).

        Returns:
            max |vector|.
        """
        return float(self.vector.abs().max())

    def to_dict(self) -> dict[str, Any]:
        """Own fields for saving (the vector goes in `tensors`).

        Returns:
            layer and head.
        """
        return {"layer": self.layer, "head": self.head}

    def tensors(self) -> dict[str, Tensor]:
        """The vector.

        Returns:
            {"vector": [d_head]}.
        """
        return {"vector": self.vector.contiguous()}

    @classmethod
    def from_saved(cls, fields: Mapping[str, Any], tensors: Mapping[str, Tensor],
                   common: Mapping[str, Any]) -> HeadSteer:
        """Rebuild from `to_dict` and `tensors`.

        Args:
            fields: layer and head.
            tensors: the vector.
            common: the common fields.

        Returns:
            The intervention.
        """
        return cls(int(fields["layer"]), int(fields["head"]), tensors["vector"], **common)


@dataclass(frozen=True, eq=False)
class HeadAblation(_HeadEdit):
    """Ablate one attention head: zero its output z, or replace it by a reference mean.

    Attributes:
        layer: the block index.
        head: the query-head index, 0..n_heads-1.
        mean: None (zero ablation) or the replacement [d_head] (mean ablation; see `head_mean`).
        strength: interpolation from the head's own output (0) to the replacement (1).
        positions: where it applies, one of `POSITION_MODES`.
        start_step: first generated-token index at which it is active.
        stop_step: generated-token index at which it stops (None: never).
        name: a label for `Steerer.set_strength(name, ...)`.
    """

    kind: ClassVar[str] = "head_ablate"

    layer: int
    head: int
    mean: Any = None
    strength: float = 1.0
    positions: str = "all"
    start_step: int = 0
    stop_step: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self._check_address()
        if self.mean is not None:
            object.__setattr__(self, "mean", _as_vector(self.mean, "HeadAblation.mean", True))
        self.check_common()

    @property
    def mode(self) -> str:
        """"zero" or "mean"."""
        return "zero" if self.mean is None else "mean"

    def check_model(self, model: Model) -> None:
        """Refuse a layer or head the model lacks, or a mean that is not d_head wide.

        Args:
            model (Model): the model.

        Raises:
            ValueError: naming the valid range.
        """
        self._check_width(model, self.mean, "HeadAblation.mean")

    def bind(self, model: Model) -> BoundIntervention:
        """The replacement on the model's device and dtype.

        Args:
            model (Model): the model.

        Returns:
            The bound edit.
        """
        self.check_model(model)
        d_head = runtime.attention_shape(model)[2]
        dev, dt = runtime.model_device(model), runtime.model_dtype(model)
        target = (torch.zeros(d_head) if self.mean is None else self.mean).to(dev, dt)
        return _BoundHead(self.head, None, target)

    def max_push(self) -> float:
        """The replacement's largest |entry| (0 for zero ablation).

        Returns:
            max |mean| or 0.0.
        """
        return 0.0 if self.mean is None else float(self.mean.abs().max())

    def to_dict(self) -> dict[str, Any]:
        """Own fields for saving (the mean goes in `tensors`).

        Returns:
            layer, head and the mode.
        """
        return {"layer": self.layer, "head": self.head, "mode": self.mode}

    def tensors(self) -> dict[str, Tensor]:
        """The mean, if any.

        Returns:
            {"mean": [d_head]} or {}.
        """
        return {} if self.mean is None else {"mean": self.mean.contiguous()}

    @classmethod
    def from_saved(cls, fields: Mapping[str, Any], tensors: Mapping[str, Tensor],
                   common: Mapping[str, Any]) -> HeadAblation:
        """Rebuild from `to_dict` and `tensors`.

        Args:
            fields: layer, head and mode.
            tensors: the mean (mean mode).
            common: the common fields.

        Returns:
            The intervention.

        Raises:
            ValueError: if a mean-mode file has no mean tensor.
        """
        if fields.get("mode") == "mean" and "mean" not in tensors:
            raise ValueError("A mean-ablation file has no 'mean' tensor.")
        return cls(int(fields["layer"]), int(fields["head"]), tensors.get("mean"), **common)


class _BoundHead(BoundIntervention):
    def __init__(self, head: int, vector: Tensor | None, target: Tensor | None) -> None:
        self.head, self.vector, self.target = head, vector, target

    def apply(self, act: Tensor, layer: int, hook_name: str, scale: float | Tensor,
              mask: Tensor | None, context: PositionContext) -> Tensor:
        z = act[:, :, self.head]  # [batch, pos, d_head]
        w = weight(z, scale, mask)
        if self.vector is not None:
            new = z + w * self.vector
        else:
            new = torch.lerp(z, self.target.expand_as(z), w)
        out = act.clone()
        out[:, :, self.head] = new
        return out


def head_mean(model: Model, prompts: Sequence[str], layer: int, head: int, *,
              chat: bool | None = None, batch_size: int = 16) -> Float[Tensor, " d_head"]:
    """The head's mean output z over every real (non-padding) token of a reference batch.

    Args:
        model (Model): the model.
        prompts: the reference prompts.
        layer: the block index.
        head: the query-head index.
        chat: chat-template the prompts; None = auto (on for instruct models with a template).
        batch_size: most prompts per forward.

    Returns:
        The mean z of that head, [d_head] (float32, CPU), for `HeadAblation(..., mean=...)`.

    Raises:
        ValueError: for an empty prompt list, a bad batch size or a layer/head out of range.
    """
    prompts = check_texts(prompts)
    check_head(model, layer, head)
    check_batch_size(batch_size)
    chat_on = resolve_chat(model, chat, has_prompts=True)
    total = torch.zeros(runtime.attention_shape(model)[2], dtype=torch.float64)
    count = 0
    for start in range(0, len(prompts), batch_size):
        batch = runtime.encode_prompts(model, prompts[start:start + batch_size], chat=chat_on)
        got: dict[str, Tensor] = {}

        def grab(act: Tensor, hook: object, store: dict[str, Tensor] = got) -> None:
            store["z"] = act[:, :, head].detach().double().cpu()

        with runtime.attached(model, [(runtime.attention_hook_name(layer, "z"), grab)]):
            runtime.forward(model, batch, stop_at_layer=layer + 1, return_type=None)
        real = batch.attention_mask.bool().cpu()
        total += got["z"][real].sum(0)
        count += int(real.sum())
    mean = total / max(count, 1)
    if not math.isfinite(float(mean.abs().max())):
        raise ValueError("The head's mean output is not finite.")
    return mean.float()
