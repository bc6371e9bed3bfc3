"""Fast paths for TransformerLens models: view-friendly weight strides and a preallocated KV cache.

TransformerLens 3.9 copies most weight matrices on every forward: `GatedMLP` and `Unembed` call
`W.T.contiguous()`, attention rearranges `W_Q/W_K/W_V/W_O` into `(head d_head) x d_model` layouts
(about 538 MB of copies per SmolLM2 forward, i.e. per decoding step). `prepare` stores the same
values with strides that make those expressions views, so TransformerLens runs the very same
kernels on the very same memory layout without the copies (bit-identical logits). While decoding,
TransformerLens' cache concatenates the whole key/value history every step, re-applies rotary to
all cached keys and repeats grouped key/value heads for every query head. `new_cache` returns a
cache whose entries hold preallocated buffers of rotated keys and values; attention modules of
supported models (rotary, causal, no exotic options) then rotate only the new positions, write them
in place and multiply grouped queries against the shared key/value heads without repeat copies.
Every hook point fires as before with the same shapes (`hook_rot_k` sees the rotated key
history, as in TransformerLens). The grouped GEMMs, and unembedding only the last position, are
GEMMs of other shapes than TransformerLens' own, so float32 summation order changes: logits agree
to ~1e-6 relative and greedy tokens are identical (tests/test_backend_fast.py). For generation
with steering that starts at block L, the unsteered prompt pass through blocks 0..L-1 is shared
across identical prompt rows and remembered per model (`prompt_prefix`). `plain(model)` switches
the fast decode path off for a block, `disable(model)` for good (reference runs, benchmarks).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .types import Model

_STATE = "_steerlens_fast_state"
_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


@dataclass
class _State:
    decode: bool  # the fast attention path is installed
    off: int = 0  # nesting depth of `plain()` blocks


def _restride(p: torch.nn.Parameter, perm: tuple[int, ...]) -> None:
    """Store `p` so that `p.permute(perm)` is contiguous (same values, same Parameter)."""
    inv = [0] * len(perm)
    for i, d in enumerate(perm):
        inv[d] = i
    p.data = p.data.permute(perm).contiguous().permute(inv)


def _decode_supported(cfg) -> bool:
    """Whether the fast attention path reproduces TransformerLens' attention for this config."""
    return (
        cfg.positional_embedding_type == "rotary"
        and not getattr(cfg, "use_dynamic_ntk_rope", False)
        and not getattr(cfg, "use_logn_attn", False)
        and getattr(cfg, "clip_qkv", None) is None
        and cfg.original_architecture not in _OLMO
        and not cfg.use_split_qkv_input
        and not cfg.use_attn_in
        and not cfg.use_attn_result
        and not getattr(cfg, "load_in_4bit", False)
        and not getattr(cfg, "use_attention_sinks", False)
        and not getattr(cfg, "ungroup_grouped_query_attention", False)
    )


def prepare(model: Model) -> bool:
    """Restride the weights and install the fast attention path (idempotent; called lazily).

    Args:
        model (Model): the model.

    Returns:
        True when the fast decode path is available for this model.
    """
    state = getattr(model, _STATE, None)
    if state is not None:
        return state.decode
    cfg = model.cfg
    from transformer_lens.components import Unembed
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    plain_attn = not (cfg.use_split_qkv_input or cfg.use_attn_in
                      or getattr(cfg, "load_in_4bit", False))
    with torch.no_grad():
        for block in model.blocks:
            mlp = getattr(block, "mlp", None)
            if type(mlp) is GatedMLP:
                for name in ("W_gate", "W_in", "W_out"):
                    _restride(getattr(mlp, name), (1, 0))
            attn = getattr(block, "attn", None)
            if attn is not None and plain_attn:
                for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
                    p = attn._parameters.get(name)
                    if p is not None and p.dim() == 3:
                        _restride(p, (0, 2, 1))
                p = attn._parameters.get("W_O")
                if p is not None and p.dim() == 3:
                    _restride(p, (2, 0, 1))
        if type(getattr(model, "unembed", None)) is Unembed:
            _restride(model.unembed.W_U, (1, 0))
    decode = _decode_supported(cfg)
    if decode:
        for block in model.blocks:
            block.attn.forward = _FastForward(block.attn)
    object.__setattr__(model, _STATE, _State(decode))
    return decode


def active(model: Model) -> bool:
    """Whether the fast decode path is used for this model now (supported, not `plain`/`disable`).

    Args:
        model (Model): the model.

    Returns:
        True when `new_cache` returns a fast cache and `last_logits` is used.
    """
    return prepare(model) and getattr(model, _STATE).off == 0


def disable(model: Model) -> None:
    """Keep this model on TransformerLens' own paths for good (weights untouched; references).

    Must be called before any steerlens forward on the model; a model already prepared keeps its
    strides, and only its decode path is switched off.

    Args:
        model (Model): the model.
    """
    state = getattr(model, _STATE, None)
    if state is None:
        object.__setattr__(model, _STATE, _State(False))
    else:
        state.off += 1


@contextlib.contextmanager
def plain(model: Model) -> Iterator[None]:
    """TransformerLens' own decode path (its cache, full last-layer logits) inside the block.

    Weights keep their view-friendly strides (those give bit-identical results).

    Args:
        model (Model): the model.

    Yields:
        Nothing.
    """
    prepare(model)
    state = getattr(model, _STATE)
    state.off += 1
    try:
        yield
    finally:
        state.off -= 1


class FastCacheEntry:
    """One layer's rotated keys and values in preallocated [batch, kv_heads, capacity, d_head] buffers.

    `past_keys` is the [batch, pos, kv_heads, d_head] view TransformerLens reads the cache length
    and shape from; `append` writes new positions in place (growing the buffers by doubling when
    the capacity hint was too small) and returns views of the whole history.
    """

    frozen = False

    def __init__(self, batch: int, n_kv: int, d_head: int, capacity: int, device, dtype) -> None:
        self.k = torch.empty(batch, n_kv, capacity, d_head, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0

    @property
    def past_keys(self) -> Tensor:
        """Keys so far, [batch, pos, kv_heads, d_head] (a view)."""
        return self.k[:, :, : self.length].transpose(1, 2)

    @property
    def past_values(self) -> Tensor:
        """Values so far, [batch, pos, kv_heads, d_head] (a view)."""
        return self.v[:, :, : self.length].transpose(1, 2)

    def append(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Write [batch, new, kv_heads, d_head] keys/values after the history.

        Args:
            k_new: rotated keys of the new positions.
            v_new: values of the new positions.

        Returns:
            Views [batch, kv_heads, pos, d_head] of all keys and values so far.
        """
        n = k_new.shape[1]
        need = self.length + n
        if need > self.k.shape[2]:
            cap = max(need, 2 * self.k.shape[2])
            for name in ("k", "v"):
                old = getattr(self, name)
                new = old.new_empty(old.shape[0], old.shape[1], cap, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                setattr(self, name, new)
        self.k[:, :, self.length:need] = k_new.transpose(1, 2)
        self.v[:, :, self.length:need] = v_new.transpose(1, 2)
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need]


def new_cache(model: Model, batch_size: int, capacity: int | None = None):
    """A KV cache for decoding: the fast one when `active(model)`, else TransformerLens' own.

    Args:
        model (Model): the model.
        batch_size: rows the cache holds.
        capacity: positions to preallocate (prompt + new tokens); grown when exceeded.

    Returns:
        (TransformerLensKeyValueCache): The cache (entries are `FastCacheEntry` on the fast path).
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    dev = next(model.parameters()).device
    if not active(model):
        return TransformerLensKeyValueCache.init_cache(model.cfg, dev, batch_size)
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    dtype = next(model.parameters()).dtype
    entries = []
    for block in model.blocks:
        p = next(block.parameters())
        entries.append(FastCacheEntry(batch_size, int(n_kv), int(cfg.d_head), int(capacity or 64),
                                      p.device, p.dtype if p.is_floating_point() else dtype))
    mask = torch.empty((batch_size, 0), device=dev, dtype=torch.int)
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask)


class _FastForward:
    """An attention module's `forward` on the fast path (a picklable, deep-copyable callable)."""

    def __init__(self, attn) -> None:
        self.attn = attn

    def __call__(self, *args, **kwargs):
        return _attention_forward(self.attn, *args, **kwargs)


def _attention_forward(self, query_input, key_input, value_input, past_kv_cache_entry=None,
                       additive_attention_mask=None, attention_mask=None, position_bias=None):
    """TransformerLens attention with a `FastCacheEntry`; any other call goes to the class forward.

    The same hook points fire in the same order with the same shapes as TransformerLens'
    `AbstractAttention.forward`; scores and z use grouped matmuls over the shared key/value heads.
    """
    if not isinstance(past_kv_cache_entry, FastCacheEntry):
        return type(self).forward(self, query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias)
    from transformer_lens.utilities.activation_functions import apply_softcap

    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)
    offset = past_kv_cache_entry.length
    q = self.hook_rot_q(self.apply_rotary(q, offset, attention_mask))
    k_rot = self.apply_rotary(k, offset, attention_mask)
    if k_rot.device != v.device:
        k_rot = k_rot.to(v.device)
    keys, values = past_kv_cache_entry.append(k_rot, v)  # [b, kv, L, d]
    if self.hook_rot_k._forward_hooks:  # a hook sees (and may replace) the rotated history
        keys = self.hook_rot_k(keys.transpose(1, 2).clone()).transpose(1, 2)
    b, n_q, n_heads, d_head = q.shape
    n_kv, length = keys.shape[1], keys.shape[2]
    group = n_heads // n_kv
    q_ = q.permute(0, 2, 1, 3)  # [b, heads, q, d]
    if group > 1:
        q_ = q_.reshape(b, n_kv, group * n_q, d_head)
    scores = (q_ @ keys.transpose(-1, -2)).view(b, n_heads, n_q, length) / self.attn_scale
    scores = apply_softcap(scores, self.cfg.attn_scores_soft_cap)
    if (self._attention_dir_override or self.cfg.attention_dir) == "causal":
        scores = self.apply_causal_mask(scores, offset, attention_mask)
    if additive_attention_mask is not None:
        scores = scores + additive_attention_mask
    scores = self.hook_attn_scores(scores)
    pattern = F.softmax(scores, dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
    pattern = self.hook_pattern(pattern)
    pattern = pattern.to(device=values.device, dtype=values.dtype)
    pat = pattern.reshape(b, n_kv, group * n_q, length) if group > 1 else pattern
    z = (pat @ values).view(b, n_heads, n_q, d_head).permute(0, 2, 1, 3)
    z = self.hook_z(z)
    w = self.W_O.permute(2, 0, 1).reshape(self.W_O.shape[2], n_heads * d_head)
    b_o = self.b_O
    if w.device != z.device:
        w, b_o = w.to(z.device), b_o.to(z.device)
    if z.dtype != w.dtype:
        z = z.to(w.dtype)
    return F.linear(z.reshape(b, n_q, n_heads * d_head), w, b_o)


def last_logits(model: Model, resid: Float[Tensor, "batch pos d_model"]
                ) -> Float[Tensor, "batch 1 d_vocab"]:
    """Final norm + unembedding of the last position only, with TransformerLens' own modules.

    Args:
        model (Model): the model.
        resid: the residual stream after the last block.

    Returns:
        Logits of the last position, [batch, 1, d_vocab].
    """
    from transformer_lens.utilities.activation_functions import apply_softcap

    x = resid[:, -1:]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    return apply_softcap(model.unembed(x), model.cfg.output_logits_soft_cap)


# ------------------------------------------------------------------ shared prompt prefix

_PREFIX = "_steerlens_prefix_cache"
_PREFIX_STATS = "_steerlens_prefix_stats"


def _prefix_budget() -> int:
    """Bytes the per-model prefix LRU may hold (`STEERLENS_PREFIX_CACHE_MB`, default 256)."""
    raw = os.environ.get("STEERLENS_PREFIX_CACHE_MB", "").strip()
    return int(float(raw) * 2**20) if raw else 256 * 2**20


def prefix_stats(model: Model) -> dict[str, int]:
    """How many shared prompt prefixes this model computed and reused (for tests and reports).

    Args:
        model (Model): the model.

    Returns:
        {"computed": n, "reused": m}.
    """
    return dict(model.__dict__.get(_PREFIX_STATS, {"computed": 0, "reused": 0}))


def lowest_block(hook_names) -> int | None:
    """The lowest block index among hook names ("blocks.{i}...."); None if any is outside blocks.

    Args:
        hook_names (Iterable[str]): hook point names.

    Returns:
        The smallest block index, or None.
    """
    layers = []
    for name in hook_names:
        parts = name.split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            return None
        layers.append(int(parts[1]))
    return min(layers) if layers else None


def hooked_below(model: Model, layer: int) -> bool:
    """Whether any hook is attached to a hook point that runs before block `layer`'s input.

    Args:
        model (Model): the model.
        layer: the block index.

    Returns:
        True if a hook on the embedding or on blocks 0..layer-1 would fire in a prefix pass.
    """
    for name, hp in model.hook_dict.items():
        if not (hp._forward_hooks or hp._backward_hooks):
            continue
        block = lowest_block([name])
        if block is None or block < layer:
            return True
    return False


def _weights_version(model: Model, layer: int) -> tuple[tuple[int, int], ...]:
    """In-place edits (no_grad `copy_`, `mul_`...) bump a parameter's version and a replaced
    tensor has a new address: either change to the embedding or a lower block voids a prefix
    (edits through `.data` are invisible to versions, so steerlens never makes them)."""
    mods = [model.embed, *model.blocks[:layer]]
    return tuple((p._version, p.data_ptr()) for m in mods for p in m.parameters())


def prompt_prefix(model: Model, tokens: Tensor, attention_mask: Tensor, layer: int
                  ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Unsteered pass of blocks 0..layer-1 over prompts: residual entering `layer` and their KV.

    Kept per model in an LRU keyed by the exact tokens, mask, layer and weight versions (at most
    `STEERLENS_PREFIX_CACHE_MB`, default 256 MB), so generation batches that repeat the same
    prompts (sweeps over strengths and vectors, the arena's baseline + strengths) compute it once.

    Args:
        model (Model): the model (fast decode path active).
        tokens: left-padded prompt tokens [rows, pos].
        attention_mask: their mask.
        layer: the first block that is steered.

    Returns:
        (residual [rows, pos, d_model], per block below `layer`: (keys, values)
        [rows, kv_heads, pos, d_head]).
    """
    key = (layer, tuple(tokens.shape), tokens.cpu().numpy().tobytes(),
           attention_mask.cpu().numpy().tobytes(), _weights_version(model, layer), str(tokens.device))
    store = model.__dict__.setdefault(_PREFIX, {})
    stats = model.__dict__.setdefault(_PREFIX_STATS, {"computed": 0, "reused": 0})
    hit = store.pop(key, None)
    if hit is None:
        cache = new_cache(model, tokens.shape[0], tokens.shape[1])
        with torch.inference_mode():
            resid = model(tokens, attention_mask=attention_mask, past_kv_cache=cache,
                          stop_at_layer=layer)
        kv = [(e.k[:, :, : e.length], e.v[:, :, : e.length]) for e in cache.entries[:layer]]
        hit = (resid, kv)
        stats["computed"] += 1
    else:
        stats["reused"] += 1
    store[key] = hit  # most recent last
    budget = _prefix_budget()
    while len(store) > 1 and sum(_nbytes(v) for v in store.values()) > budget:
        store.pop(next(iter(store)))  # least recently used first
    return hit


def _nbytes(entry: tuple[Tensor, list[tuple[Tensor, Tensor]]]) -> int:
    resid, kv = entry
    return resid.nbytes + sum(k.nbytes + v.nbytes for k, v in kv)


def prefill_from_prefix(model: Model, tokens: Tensor, attention_mask: Tensor, cache, layer: int
                        ) -> Float[Tensor, "batch 1 d_vocab"]:
    """Prefill a fast cache for generation, reusing the shared unsteered prefix below `layer`.

    Identical prompt rows (the same prompt at several strengths) share one prefix row; blocks
    `layer`.. run over every row with whatever hooks are attached (the steering), filling the rest
    of the cache. Same results as a full prefill up to float32 summation order (the prefix GEMMs
    see fewer rows).

    Args:
        model (Model): the model (fast decode path active, no hooks below `layer`).
        tokens: left-padded prompt tokens [batch, pos].
        attention_mask: their mask.
        cache (TransformerLensKeyValueCache): an empty fast cache (from `new_cache`).
        layer: the first block that is steered (>= 1).

    Returns:
        Logits of the last prompt position, [batch, 1, d_vocab].
    """
    both = torch.cat([tokens, attention_mask.to(tokens.dtype)], 1)
    uniq, inverse = torch.unique(both, dim=0, return_inverse=True)
    width = tokens.shape[1]
    resid, kv = prompt_prefix(model, uniq[:, :width].contiguous(),
                              uniq[:, width:].to(attention_mask.dtype).contiguous(), layer)
    for entry, (k, v) in zip(cache.entries[:layer], kv):
        entry.append(k.index_select(0, inverse).transpose(1, 2), v.index_select(0, inverse)
                     .transpose(1, 2))
    mask = cache.append_attention_mask(attention_mask)
    with torch.inference_mode():
        out = model(resid.index_select(0, inverse), start_at_layer=layer,
                    stop_at_layer=model.cfg.n_layers, attention_mask=mask, past_kv_cache=cache)
    return last_logits(model, out)
