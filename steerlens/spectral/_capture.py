"""Capturing attention intermediates (keys, queries, values, patterns, head outputs) per layer.

All prompts are encoded into one left-padded batch, run in row chunks with hooks on the requested
parts of every requested layer, and the forward stops after the deepest layer. The results are
stacked as [prompt, layer, ...] tensors that share one padding layout, with a mask marking real
tokens. Under grouped-query attention the key/value tensors are kept per key/value head; if the
backend hands them over already expanded to one copy per query head, the copies are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from ..backend import Model, runtime
from ..sites import check_layer

KV_PARTS = ("k", "v", "rot_k")


@dataclass(frozen=True)
class AttentionCapture:
    """Stacked attention intermediates: part -> [prompt, layer, ...] plus the real-token mask.

    Shapes: q/rot_q/z [prompt, layer, pos, n_heads, d_head]; k/rot_k/v [prompt, layer, pos,
    n_kv_heads, d_head]; pattern [prompt, layer, n_heads, query_pos, key_pos].
    """

    layers: tuple[int, ...]
    mask: Bool[Tensor, "prompt pos"]
    parts: dict[str, Tensor]

    @property
    def n_tokens(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.mask.sum(-1).tolist())


def resolve_layers(model: Model, layers: Sequence[int] | None) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(runtime.n_layers(model)))
    out = tuple(check_layer(model, layer) for layer in layers)
    if not out:
        raise ValueError("layers is empty; pass at least one layer (or None for all layers).")
    if len(set(out)) != len(out):
        raise ValueError(f"layers contains duplicates: {list(out)}.")
    return out


def encode_checked(model: Model, prompts: Sequence[str], chat: bool,
                   min_tokens: int = 2) -> runtime.TokenBatch:
    """Encode prompts as one left-padded batch; every prompt must have >= min_tokens tokens."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings.")
    batch = runtime.encode_prompts(model, list(prompts), chat=chat, device="cpu")
    lengths = batch.lengths.tolist()
    short = [i for i, n in enumerate(lengths) if n < min_tokens]
    if short:
        i = short[0]
        raise ValueError(
            f"Prompt {i} ({prompts[i]!r}) has {lengths[i]} token(s); eigengaps need at least "
            f"{min_tokens} tokens per prompt (the second eigenvalue is undefined otherwise)."
        )
    return batch


def capture_attention(
    model: Model,
    batch: runtime.TokenBatch,
    layers: Sequence[int],
    parts: Sequence[str],
    batch_size: int = 8,
) -> AttentionCapture:
    """Run `batch` in chunks of `batch_size` rows and stack the requested attention parts."""
    n_heads, n_kv, _ = runtime.attention_shape(model)
    parts = tuple(dict.fromkeys(parts))
    for part in parts:
        name = runtime.attention_hook_name(layers[0], part)
        if not runtime.has_hook(model, name):
            raise ValueError(f"This model has no {part!r} hook ({name}); it has no rotary embedding "
                             "if the part is rot_q/rot_k.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = runtime.model_device(model)
    chunks: dict[tuple[str, int], list[Tensor]] = {(p, layer): [] for p in parts for layer in layers}

    def make_hook(part: str, layer: int):
        def hook(x: Tensor, hook) -> None:
            if part in KV_PARTS and x.shape[-2] != n_kv:
                if x.shape[-2] != n_heads:
                    raise RuntimeError(f"Unexpected {part} head count {x.shape[-2]}.")
                x = x[..., :: n_heads // n_kv, :]  # expanded GQA: keep one copy per kv head
            chunks[(part, layer)].append(x.detach().clone())

        return hook

    hooks = [(runtime.attention_hook_name(layer, p), make_hook(p, layer))
             for p in parts for layer in layers]
    stop = max(layers) + 1
    with runtime.attached(model, hooks):
        for lo in range(0, batch.tokens.shape[0], batch_size):
            sub = runtime.TokenBatch(*(t[lo:lo + batch_size].to(device) for t in (
                batch.tokens, batch.attention_mask, batch.span_start, batch.span_end)))
            runtime.forward(model, sub, stop_at_layer=stop, return_type=None)
    stacked = {p: torch.stack([torch.cat(chunks[(p, layer)]) for layer in layers], dim=1)
               for p in parts}
    return AttentionCapture(tuple(layers), batch.attention_mask.bool().to(device), stacked)
