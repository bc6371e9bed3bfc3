"""Batched activation extraction: many layers, one forward pass per batch.

Texts are left-padded into batches; hooks on every requested site reduce the activation to the
requested token position inside the forward (so memory stays O(batch x d_model) per site), and the
forward stops after the deepest requested layer. Positions are relative to each row's content span:
the completion when a prompt is given, otherwise the text after BOS. "last" / "first" take one
token, "mean" averages the span (padding excluded), "all" returns every span token flattened, with
`row_index` saying which text each came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .backend import runtime
from .pairs import ContrastSet, as_contrast_set
from .progress import progress
from .sites import Component, Site

Position = str  # one of POSITIONS, validated with a ValueError
POSITIONS: tuple[str, ...] = ("last", "first", "mean", "all")


@dataclass(frozen=True)
class Activations:
    """Activations per layer at one component and position: layer -> [n, d_model]."""

    by_layer: dict[int, Float[Tensor, "n d_model"]]
    component: str
    position: str
    row_index: Int[Tensor, " n"]  # which input text each row came from

    @property
    def layers(self) -> list[int]:
        return sorted(self.by_layer)

    def __getitem__(self, layer: int) -> Float[Tensor, "n d_model"]:
        if layer not in self.by_layer:
            raise KeyError(f"Layer {layer} was not extracted; available layers are {self.layers}.")
        return self.by_layer[layer]


@dataclass(frozen=True)
class PairActivations:
    """Positive and negative activations of a contrast set, row-aligned per pair."""

    positive: Activations
    negative: Activations
    n_pairs: int

    @property
    def layers(self) -> list[int]:
        return self.positive.layers


def check_position(position: str) -> str:
    if position not in POSITIONS:
        raise ValueError(f"Unknown position {position!r}; valid positions are {list(POSITIONS)}.")
    return position


def resolve_chat(model, chat: bool | None, has_prompts: bool) -> bool:
    """Chat templating: explicit choice, else on for instruct models with a template and prompts."""
    if chat is None:
        return has_prompts and runtime.is_instruct(model) and runtime.has_chat_template(model)
    if chat and not runtime.has_chat_template(model):
        raise ValueError("chat=True but this model's tokenizer has no chat template.")
    return chat


def _reduce(
    act: Float[Tensor, "batch pos d"], batch: runtime.TokenBatch, position: str
) -> Float[Tensor, "n d"]:
    idx = torch.arange(act.shape[0], device=act.device)
    if position == "last":
        return act[idx, batch.span_end - 1]
    if position == "first":
        return act[idx, batch.span_start]
    pos = torch.arange(act.shape[1], device=act.device)
    in_span = (pos[None] >= batch.span_start[:, None]) & (pos[None] < batch.span_end[:, None])
    if position == "mean":
        w = in_span.to(act.dtype)
        return (act * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    return act[in_span]  # "all": flattened in row order


def extract(
    model,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    prompts: Sequence[str | None] | None = None,
    component: Component = "resid_pre",
    position: Position = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
) -> Activations:
    """Activations of `texts` at `layers` (one forward per batch for all layers)."""
    check_position(position)
    if not texts:
        raise ValueError("extract() needs at least one text.")
    if not layers:
        raise ValueError("extract() needs at least one layer.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    site_list = [Site(int(layer), component).validate(model) for layer in layers]
    use_chat = resolve_chat(model, chat, prompts is not None and any(p is not None for p in prompts))
    stop = min(max(s.layer for s in site_list) + 1, runtime.n_layers(model))
    out: dict[int, list[Tensor]] = {s.layer: [] for s in site_list}
    rows: list[Tensor] = []
    chunks = range(0, len(texts), batch_size)
    for start in progress(chunks, desc="extract", enabled=show_progress):
        sub = list(texts[start : start + batch_size])
        sub_prompts = None if prompts is None else list(prompts[start : start + batch_size])
        batch = runtime.encode(model, sub, sub_prompts, chat=use_chat)
        captured: dict[int, Tensor] = {}

        def make_hook(layer: int, batch=batch, captured=captured):
            def hook(act, hook):
                captured[layer] = _reduce(act.detach(), batch, position).float().cpu()

            return hook

        hooks = [(s.hook_name(), make_hook(s.layer)) for s in site_list]
        with runtime.attached(model, hooks):
            runtime.forward(model, batch, stop_at_layer=stop, return_type=None)
        for layer, t in captured.items():
            out[layer].append(t)
        if position == "all":
            counts = (batch.span_end - batch.span_start).cpu()
            rows.append(torch.repeat_interleave(torch.arange(len(sub)) + start, counts))
        else:
            rows.append(torch.arange(len(sub)) + start)
    return Activations(
        by_layer={k: torch.cat(v) for k, v in out.items()},
        component=component,
        position=position,
        row_index=torch.cat(rows),
    )


def extract_pairs(
    model,
    pairs: ContrastSet,
    layers: Sequence[int],
    *,
    component: Component = "resid_pre",
    position: Position = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
) -> PairActivations:
    """Positive and negative activations of every pair (both sides batched together)."""
    pairs = as_contrast_set(pairs)
    if position == "all":
        raise ValueError(
            "position='all' gives different token counts per side, so pairs cannot be aligned; "
            "use 'last', 'first' or 'mean' for contrast pairs."
        )
    n = len(pairs)
    texts = pairs.positives + pairs.negatives
    prompts = pairs.prompts * 2
    acts = extract(model, texts, layers, prompts=None if all(p is None for p in prompts) else
                   prompts, component=component, position=position, batch_size=batch_size,
                   chat=chat, show_progress=show_progress)

    def side(sl: slice) -> Activations:
        return Activations({k: v[sl] for k, v in acts.by_layer.items()}, component, position,
                           acts.row_index[sl])

    return PairActivations(side(slice(0, n)), side(slice(n, 2 * n)), n)
