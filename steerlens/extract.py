"""Batched activation extraction: many layers, one forward pass per batch.

Texts are tokenized once, sorted by length and left-padded into batches that carry only their own
rows' padding; hooks on every requested site reduce the activation to the requested token position
inside the forward (so memory stays O(batch x d_model) per site, and no logits are computed: the
forward stops after the deepest requested layer); the reduced rows are put back in input order with
one index at the end. Where activations are read (`read_at`) is relative
to each row's content span:
the completion when a prompt is given, otherwise the text after BOS. "last" / "first" take one
token, "mean" averages the span (padding excluded), "all" returns every span token flattened, with
`row_index` saying which text each came from.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .backend import Model, runtime
from .checks import check_batch_size, check_choice
from .config import READ_AT
from .pairs import ContrastSet, as_contrast_set
from .progress import progress
from .sites import Component, Site

ReadAt = str  # one of READ_AT, validated with a ValueError
POSITIONS = READ_AT  # deprecated alias (0.1 name)


@dataclass(frozen=True)
class Activations:
    """Activations per layer at one component, read at one token rule: layer -> [n, d_model]."""

    by_layer: dict[int, Float[Tensor, "n d_model"]]
    component: str
    read_at: str
    row_index: Int[Tensor, " n"]  # which input text each row came from

    @property
    def layers(self) -> list[int]:
        """The extracted layers, ascending."""
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
        """The extracted layers, ascending."""
        return self.positive.layers


def check_read_at(read_at: str) -> str:
    """Return `read_at` if it is a valid extraction rule.

    Args:
        read_at: where activations are read, one of `READ_AT`.

    Returns:
        The same string.

    Raises:
        ValueError: if it is not one of `READ_AT`.
    """
    return check_choice(read_at, READ_AT, "read_at")


def resolve_read_at(read_at: str, position: str | None, where: str) -> str:
    """`read_at`, or the deprecated `position=` keyword when given (with a DeprecationWarning).

    Args:
        read_at: the new keyword's value.
        position: the deprecated keyword's value, or None.
        where: the calling function's name, for the warning.

    Returns:
        The validated rule.

    Raises:
        ValueError: for an unknown rule.
    """
    if position is not None:
        warnings.warn(f"{where}(position=...) is deprecated; use read_at=... (where activations "
                      "are read; `positions` is where vectors are written).", DeprecationWarning,
                      stacklevel=3)
        read_at = position
    return check_read_at(read_at)


def resolve_chat(model: Model, chat: bool | None, has_prompts: bool) -> bool:
    """Chat templating: explicit choice, else on for instruct models with a template and prompts.

    Args:
        model: the model.
        chat: True / False to force, None for auto.
        has_prompts: whether the texts come with prompts (raw texts are never templated by auto).

    Returns:
        Whether to apply the chat template.

    Raises:
        ValueError: if chat=True but the tokenizer has no chat template.
    """
    if chat is None:
        return has_prompts and runtime.is_instruct(model) and runtime.has_chat_template(model)
    if chat and not runtime.has_chat_template(model):
        raise ValueError("chat=True but this model's tokenizer has no chat template.")
    return chat


def _reduce(
    act: Float[Tensor, "batch pos d"], batch: runtime.TokenBatch, read_at: str
) -> Float[Tensor, "n d"]:
    idx = torch.arange(act.shape[0], device=act.device)
    if read_at == "last":
        return act[idx, batch.span_end - 1]
    if read_at == "first":
        return act[idx, batch.span_start]
    pos = torch.arange(act.shape[1], device=act.device)
    in_span = (pos[None] >= batch.span_start[:, None]) & (pos[None] < batch.span_end[:, None])
    if read_at == "mean":  # half-precision activations are averaged in float32
        a = act if act.dtype in (torch.float32, torch.float64) else act.float()
        w = in_span.to(a.dtype)
        return (a * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    return act[in_span]  # "all": flattened in row order


def extract(
    model: Model,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    prompts: Sequence[str | None] | None = None,
    component: Component = "resid_pre",
    read_at: ReadAt = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
    position: ReadAt | None = None,
) -> Activations:
    """Activations of `texts` at `layers` (one forward per batch for all layers).

    Args:
        model: the model.
        texts: the texts (completions when `prompts` are given).
        layers: layers to read.
        prompts: an optional prompt per text (None entries allowed); the span read is the text.
        component: the site read at each layer ("resid_pre", "resid_mid", "resid_post",
            "attn_out", "mlp_out").
        read_at: where activations are read: "last", "first", "mean" (over the span) or "all"
            (every span token, flattened, with `row_index`).
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto (on for instruct models, with prompts).
        show_progress: show a progress bar.
        position: deprecated name of `read_at`.

    Returns:
        `Activations`: layer -> [n, d_model] float32 on CPU.

    Raises:
        ValueError: for no texts or layers, a bad batch size, an unknown `read_at` or component,
            or a layer out of range.
    """
    read_at = resolve_read_at(read_at, position, "extract")
    if not texts:
        raise ValueError("extract() needs at least one text.")
    use_chat = resolve_chat(model, chat, prompts is not None and any(p is not None for p in prompts))

    def encode_all() -> runtime.TokenBatch:
        return runtime.encode(model, list(texts), None if prompts is None else list(prompts),
                              chat=use_chat, device="cpu")

    return _extract(model, len(texts), encode_all, layers, component, read_at, batch_size,
                    show_progress, "extract")


def extract_prompts(
    model: Model,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    component: Component = "resid_pre",
    read_at: ReadAt = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
) -> Activations:
    """Activations of prompts as generation sees them (chat template and generation prompt on).

    The rows are encoded exactly as `generate()` encodes its prompts, so `read_at="last"` is the
    position that predicts the first answer token: the reading that refusal-direction and CAST
    work use to contrast two prompt sets (e.g. harmful vs harmless) rather than two completions.

    Args:
        model: the model.
        prompts: the prompts.
        layers: layers to read.
        component: the site read at each layer.
        read_at: "last" (final prompt token), "first", "mean" (over the prompt after BOS) or "all".
        batch_size: most prompts per forward.
        chat: chat-template the prompts; None = auto (on for instruct models with a template).
        show_progress: show a progress bar.

    Returns:
        `Activations`: layer -> [n, d_model] float32 on CPU.

    Raises:
        ValueError: for no prompts or layers, a bad batch size, an unknown `read_at` or
            component, or a layer out of range.

    Example:
        >>> acts = sl.extract.extract_prompts(model, harmful, [12])  # doctest: +SKIP
        >>> direction = acts[12].mean(0) - harmless_acts[12].mean(0)  # doctest: +SKIP
    """
    read_at = check_read_at(read_at)
    if not prompts:
        raise ValueError("extract_prompts() needs at least one prompt.")
    use_chat = resolve_chat(model, chat, True)

    def encode_all() -> runtime.TokenBatch:
        return runtime.encode_prompts(model, list(prompts), chat=use_chat, device="cpu")

    return _extract(model, len(prompts), encode_all, layers, component, read_at, batch_size,
                    show_progress, "extract_prompts")


def _length_sorted_chunks(
    batch: runtime.TokenBatch, batch_size: int
) -> list[tuple[Tensor, runtime.TokenBatch]]:
    """Row chunks of a left-padded batch, longest rows first, each trimmed to its own width.

    Grouping rows of similar length means a chunk carries little padding (the forward costs what
    its widest row costs), and dropping the all-padding leading columns keeps each row's tokens,
    mask and span exactly as they were, only shifted. Returns (original row indices, chunk).
    """
    lengths = batch.lengths.cpu()
    width = int(batch.tokens.shape[1])
    order = torch.argsort(lengths, descending=True, stable=True)
    chunks = []
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        off = width - int(lengths[idx].max())
        sub = runtime.TokenBatch(batch.tokens[idx, off:], batch.attention_mask[idx, off:],
                                 batch.span_start[idx] - off, batch.span_end[idx] - off)
        chunks.append((idx, sub))
    return chunks


def _extract(model: Model, n: int, encode_all, layers: Sequence[int], component: str,
             read_at: str, batch_size: int, show_progress: bool, where: str) -> Activations:
    """The shared loop: one forward per chunk, hooks reducing each site to `read_at`.

    All texts are tokenized once, sorted by length into chunks of `batch_size` rows (see
    `_length_sorted_chunks`), and the reduced rows are put back in input order with one index per
    layer at the end, so the result does not depend on the chunking beyond float32 rounding.
    """
    if not layers:
        raise ValueError(f"{where}() needs at least one layer.")
    check_batch_size(batch_size)
    site_list = [Site(int(layer), component).validate(model) for layer in layers]
    stop = min(max(s.layer for s in site_list) + 1, runtime.n_layers(model))
    device = runtime.model_device(model)
    full = encode_all()
    chunks = _length_sorted_chunks(full, batch_size)
    out: dict[int, list[Tensor]] = {s.layer: [] for s in site_list}
    for _, batch in progress(chunks, desc=where, enabled=show_progress):
        batch = batch.to(device)
        captured: dict[int, Tensor] = {}

        def make_hook(layer: int, batch=batch, captured=captured):
            def hook(act, hook):
                captured[layer] = _reduce(act.detach(), batch, read_at).float().cpu()

            return hook

        hooks = [(s.hook_name(), make_hook(s.layer)) for s in site_list]
        with runtime.attached(model, hooks):
            runtime.forward(model, batch, stop_at_layer=stop, return_type=None)
        for layer, t in captured.items():
            out[layer].append(t)
    # rows come out in chunk order; `gather` puts them back in input order (one index for all layers)
    order = torch.cat([idx for idx, _ in chunks])
    if read_at == "all":
        counts = (full.span_end - full.span_start).cpu()  # tokens per input row
        sorted_counts = counts[order]
        sorted_start = torch.cumsum(sorted_counts, 0) - sorted_counts
        where_sorted = torch.empty_like(order)
        where_sorted[order] = torch.arange(n)
        first = torch.repeat_interleave(sorted_start[where_sorted], counts)
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        gather = first + within
        row_index = torch.repeat_interleave(torch.arange(n), counts)
    else:
        gather = torch.empty_like(order)
        gather[order] = torch.arange(n)
        row_index = torch.arange(n)
    return Activations(
        by_layer={k: torch.cat(v)[gather] for k, v in out.items()},
        component=component,
        read_at=read_at,
        row_index=row_index,
    )


def extract_pairs(
    model: Model,
    pairs: ContrastSet,
    layers: Sequence[int],
    *,
    component: Component = "resid_pre",
    read_at: ReadAt = "last",
    batch_size: int = 16,
    chat: bool | None = None,
    show_progress: bool = True,
    position: ReadAt | None = None,
) -> PairActivations:
    """Positive and negative activations of every pair (both sides batched together).

    Args:
        model: the model.
        pairs: a ContrastSet (or anything `as_contrast_set` accepts).
        layers: layers to read.
        component: the site read at each layer.
        read_at: "last", "first" or "mean" ("all" cannot align the two sides).
        batch_size: most texts per forward.
        chat: chat-template the prompts; None = auto.
        show_progress: show a progress bar.
        position: deprecated name of `read_at`.

    Returns:
        `PairActivations`, row i of each side from pair i.

    Raises:
        ValueError: for read_at="all" or any error `extract` raises.
    """
    pairs = as_contrast_set(pairs)
    read_at = resolve_read_at(read_at, position, "extract_pairs")
    if read_at == "all":
        raise ValueError(
            "read_at='all' gives different token counts per side, so pairs cannot be aligned; "
            "use 'last', 'first' or 'mean' for contrast pairs."
        )
    n = len(pairs)
    texts = pairs.positives + pairs.negatives
    prompts = pairs.prompts * 2
    acts = extract(model, texts, layers, prompts=None if all(p is None for p in prompts) else
                   prompts, component=component, read_at=read_at, batch_size=batch_size,
                   chat=chat, show_progress=show_progress)

    def side(sl: slice) -> Activations:
        return Activations({k: v[sl] for k, v in acts.by_layer.items()}, component, read_at,
                           acts.row_index[sl])

    return PairActivations(side(slice(0, n)), side(slice(n, 2 * n)), n)
