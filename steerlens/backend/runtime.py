"""The runtime adapter: hook names, tokenization, hooked forwards and KV caches.

Everything steerlens does to a running model goes through these few functions, so moving from
TransformerLens' `HookedTransformer` to `TransformerBridge` (TL 4) means changing this package only.
Text is tokenized with the model's own Hugging Face tokenizer, left-padded, and each row records
the span of its "content" tokens (the completion when a prompt is given), which is what position
modes like first/last/mean refer to. Hooks are attached only inside `attached()`, a context manager
that removes them on every exit path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .fast import FastCacheEntry, hooked_below, last_logits, lowest_block, new_cache, prefill_from_prefix
from .fast import active as fast_active
from .fast import prepare as prepare_fast
from .loading import quiet_backend
from .streams import close_abandoned
from .types import Model

COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")

HookFn = Callable[[Tensor, object], Tensor | None]


def hook_name(layer: int, component: str) -> str:
    """TransformerLens hook name for (layer, component); callers validate via `sites.Site`.

    Args:
        layer: the block index (not range-checked here).
        component: one of `COMPONENTS`.

    Returns:
        The hook name, e.g. "blocks.12.hook_resid_pre".

    Raises:
        ValueError: for an unknown component.
    """
    if component in COMPONENTS:
        return f"blocks.{layer}.hook_{component}"
    raise ValueError(f"Unknown component {component!r}; valid components are {list(COMPONENTS)}")


def key_hook_name(layer: int, rotated: bool) -> str:
    """Hook carrying a layer's attention keys, before or after rotary embedding.

    Args:
        layer: the block index.
        rotated: the keys after the rotary embedding ("hook_rot_k") instead of before ("hook_k").

    Returns:
        The hook name.
    """
    return f"blocks.{layer}.attn.{'hook_rot_k' if rotated else 'hook_k'}"


ATTENTION_PARTS = ("q", "k", "v", "rot_q", "rot_k", "z", "pattern")


def attention_hook_name(layer: int, part: str) -> str:
    """Hook for one attention intermediate: q/k/v [b,p,heads,d_head] (k, v per key/value head),
    rot_q/rot_k (after rotary), z (per-head output before W_O) or pattern [b,heads,q,k].

    Args:
        layer: the block index.
        part: one of `ATTENTION_PARTS`.

    Returns:
        The hook name.

    Raises:
        ValueError: for an unknown part.
    """
    if part not in ATTENTION_PARTS:
        raise ValueError(f"Unknown attention part {part!r}; valid parts are {list(ATTENTION_PARTS)}.")
    return f"blocks.{layer}.attn.hook_{part}"


def attention_shape(model: Model) -> tuple[int, int, int]:
    """(n query heads, n key/value heads, d_head); n_kv == n_heads without grouped-query attention.

    Args:
        model (Model): the model.

    Returns:
        The three sizes.
    """
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return int(cfg.n_heads), int(n_kv), int(cfg.d_head)


def has_hook(model: Model, name: str) -> bool:
    """Whether the model has a hook point of that name.

    Args:
        model (Model): the model.
        name: a hook name.

    Returns:
        True if `name` is one of the model's hook points.
    """
    return name in model.hook_dict


def attached_hook_count(model: Model) -> int:
    """How many forward/backward hooks are attached to the model's hook points right now.

    Zero between steerlens calls: every steerlens context manager removes its hooks on exit.

    Args:
        model (Model): the model.

    Returns:
        The number of attached hooks.
    """
    return sum(len(h._forward_hooks) + len(h._backward_hooks) for h in model.hook_dict.values())


def n_layers(model: Model) -> int:
    """Number of transformer blocks.

    Args:
        model: the model.

    Returns:
        The number of blocks (steerlens layers are 0..n_layers-1).
    """
    return int(model.cfg.n_layers)


def d_model(model: Model) -> int:
    """Width of the residual stream.

    Args:
        model: the model.

    Returns:
        d_model.
    """
    return int(model.cfg.d_model)


def n_ctx(model: Model) -> int:
    """Context length: the most tokens one sequence may hold.

    Args:
        model: the model.

    Returns:
        n_ctx.
    """
    return int(model.cfg.n_ctx)


def d_vocab(model: Model) -> int:
    """Vocabulary size (number of output logits).

    Args:
        model: the model.

    Returns:
        d_vocab.
    """
    return int(model.cfg.d_vocab)


def model_dtype(model: Model) -> torch.dtype:
    """The dtype of the model's weights.

    Args:
        model: the model.

    Returns:
        The dtype of its first parameter.
    """
    return next(model.parameters()).dtype


def model_id(model: Model) -> str:
    """A stable identifier for vector metadata (the name load_model was given, when known).

    Args:
        model (Model): the model.

    Returns:
        The steerlens name, or TransformerLens' model name.
    """
    return str(getattr(model, "steerlens_name", None) or model.cfg.model_name)


def is_instruct(model: Model) -> bool:
    """Whether the model is an instruct (chat) model, as recorded by `load_model`.

    Args:
        model (Model): the model.

    Returns:
        True for instruct models (where `chat=None` applies the chat template).
    """
    return bool(getattr(model, "steerlens_instruct", False))


def model_device(model: Model) -> torch.device:
    """The device the model's weights are on.

    Args:
        model (Model): the model.

    Returns:
        The device of its first parameter.
    """
    return next(model.parameters()).device


def tokenizer(model: Model):
    """The model's Hugging Face tokenizer.

    Args:
        model (Model): the model.

    Returns:
        (transformers.PreTrainedTokenizerBase): The tokenizer.

    Raises:
        ValueError: if the model has none.
    """
    if model.tokenizer is None:
        raise ValueError("This model has no tokenizer; steerlens needs one to encode text.")
    return model.tokenizer


def pad_id(model: Model) -> int:
    """The token id used for left padding (pad, else EOS, else 0).

    Args:
        model (Model): the model.

    Returns:
        The padding token id.
    """
    tok = tokenizer(model)
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return int(tok.eos_token_id if tok.eos_token_id is not None else 0)


def eos_ids(model: Model) -> set[int]:
    """Token ids that end a generation (EOS, plus the chat end-of-turn token if any).

    Args:
        model (Model): the model.

    Returns:
        The set of stop token ids.
    """
    tok = tokenizer(model)
    ids = {int(tok.eos_token_id)} if tok.eos_token_id is not None else set()
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = tok.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


def has_chat_template(model: Model) -> bool:
    """Whether the model's tokenizer has a chat template.

    Args:
        model (Model): the model.

    Returns:
        True when `apply_chat_template` can be used.
    """
    return getattr(tokenizer(model), "chat_template", None) is not None


def prompt_ids(model: Model, prompt: str, chat: bool) -> list[int]:
    """Token ids of a prompt: chat-templated as one user turn, or raw text with BOS.

    Args:
        model (Model): the model.
        prompt: the prompt text.
        chat: wrap it in the chat template (with the generation prompt).

    Returns:
        The token ids.
    """
    tok = tokenizer(model)
    if chat:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tok(text, add_special_tokens=False).input_ids)
    ids = list(tok(prompt, add_special_tokens=False).input_ids)
    bos = tok.bos_token_id
    if bos is not None and model.cfg.default_prepend_bos and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def text_ids(model: Model, text: str) -> list[int]:
    """Ids of a continuation text, without special tokens.

    Args:
        model (Model): the model.
        text: the text.

    Returns:
        The token ids.
    """
    return list(tokenizer(model)(text, add_special_tokens=False).input_ids)


def decode(model: Model, ids: Sequence[int], skip_special: bool = True) -> str:
    """Token ids back to text.

    Args:
        model (Model): the model.
        ids: the token ids.
        skip_special: drop special tokens (BOS, EOS, chat markers).

    Returns:
        The decoded text.
    """
    return tokenizer(model).decode(list(ids), skip_special_tokens=skip_special)


@dataclass(frozen=True)
class TokenBatch:
    """Left-padded tokens with a mask and each row's content span [start, end) in padded coords.

    Attributes:
        tokens: token ids, [batch, pos].
        attention_mask: 1 for real tokens, 0 for padding.
        span_start: where each row's content starts (the completion, or the text after BOS).
        span_end: where each row's content ends (exclusive).
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    span_start: Int[Tensor, " batch"]
    span_end: Int[Tensor, " batch"]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Number of real (unpadded) tokens per row."""
        return self.attention_mask.sum(-1)

    def to(self, device) -> TokenBatch:
        """The same batch on another device.

        Args:
            device (str | torch.device): the target device.

        Returns:
            A new TokenBatch.
        """
        return TokenBatch(*(t.to(device) for t in (self.tokens, self.attention_mask,
                                                   self.span_start, self.span_end)))


def batch_from_ids(
    model: Model, rows: Sequence[tuple[list[int], int]], device=None
) -> TokenBatch:
    """Left-pad rows of (ids, content_start) into a TokenBatch.

    Args:
        model (Model): the model (padding id, context length, device).
        rows: (token ids, index where the content starts) per row.
        device (str | torch.device | None): where to put the batch (None: the model's device).

    Returns:
        The TokenBatch.

    Raises:
        ValueError: for zero rows or a row longer than the context.
    """
    if not rows:
        raise ValueError("Cannot build a batch from zero texts.")
    width = max(len(ids) for ids, _ in rows)
    if width > model.cfg.n_ctx:
        raise ValueError(
            f"A sequence has {width} tokens but the model's context length is {model.cfg.n_ctx}."
        )
    pad = pad_id(model)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    start = torch.zeros(len(rows), dtype=torch.long)
    for i, (ids, content_start) in enumerate(rows):
        off = width - len(ids)
        tokens[i, off:] = torch.tensor(ids, dtype=torch.long)
        mask[i, off:] = 1
        start[i] = off + min(content_start, len(ids) - 1)
    end = torch.full((len(rows),), width, dtype=torch.long)
    dev = device if device is not None else model_device(model)
    return TokenBatch(tokens, mask, start, end).to(dev)


def encode(
    model: Model,
    texts: Sequence[str],
    prompts: Sequence[str | None] | None = None,
    chat: bool = False,
    device=None,
) -> TokenBatch:
    """Tokenize texts (optionally each after its prompt); the span covers the text's tokens.

    With a prompt the row is prompt ids + text ids (tokenized separately, so the span boundary is
    exact); without one the span starts after BOS.

    Args:
        model (Model): the model.
        texts: the texts.
        prompts: an optional prompt per text.
        chat: chat-template the prompts.
        device (str | torch.device | None): where to put the batch (None: the model's device).

    Returns:
        The TokenBatch.

    Raises:
        ValueError: if texts and prompts differ in number, a text after a prompt tokenizes to
            nothing, or a row exceeds the context.
    """
    prompts = list(prompts) if prompts is not None else [None] * len(texts)
    if len(prompts) != len(texts):
        raise ValueError(f"Got {len(texts)} texts but {len(prompts)} prompts.")
    rows = []
    for text, prompt in zip(texts, prompts):
        if prompt is None:
            ids = prompt_ids(model, text, chat=False)
            head = 1 if ids and ids[0] == tokenizer(model).bos_token_id else 0
            rows.append((ids, head if len(ids) > head else 0))
        else:
            head = prompt_ids(model, prompt, chat)
            sep = "" if chat or prompt.endswith((" ", "\n")) or text.startswith(" ") else " "
            body = text_ids(model, sep + text)
            if not body:
                raise ValueError(f"Text {text!r} tokenizes to nothing.")
            rows.append((head + body, len(head)))
    return batch_from_ids(model, rows, device)


def encode_prompts(model: Model, prompts: Sequence[str], chat: bool, device=None) -> TokenBatch:
    """Prompts for generation: the span is the whole prompt (after BOS).

    Args:
        model (Model): the model.
        prompts: the prompts.
        chat: chat-template them.
        device (str | torch.device | None): where to put the batch (None: the model's device).

    Returns:
        The TokenBatch.
    """
    rows = []
    for p in prompts:
        ids = prompt_ids(model, p, chat)
        rows.append((ids, 1 if len(ids) > 1 and ids[0] == tokenizer(model).bos_token_id else 0))
    return batch_from_ids(model, rows, device)


@contextlib.contextmanager
def attached(model: Model, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach forward hooks for the body of the block; always removed afterwards.

    Args:
        model (Model): the model.
        hooks: (hook name, hook function) pairs.

    Yields:
        Nothing; the hooks are active inside the block.
    """
    close_abandoned(model)
    with quiet_backend(), model.hooks(fwd_hooks=list(hooks), reset_hooks_end=True):
        yield


def forward(
    model: Model,
    batch: TokenBatch,
    *,
    kv_cache=None,
    stop_at_layer: int | None = None,
    return_type: str | None = "logits",
    last_only: bool = False,
) -> Tensor:
    """One forward pass over a TokenBatch (mask passed through, so left padding is exact).

    Args:
        model (Model): the model.
        batch: the tokens.
        kv_cache (TransformerLensKeyValueCache | None): a cache to read and extend while decoding.
        stop_at_layer: return the residual stream entering this block instead of logits.
        return_type: "logits" or None (with `stop_at_layer`).
        last_only: unembed only the last position (logits [batch, 1, d_vocab]); every block and
            its hooks still run over all positions, only the final norm and unembedding shrink.

    Returns:
        Logits [batch, pos, d_vocab] ([batch, 1, d_vocab] with `last_only`), or the residual
        stream [batch, pos, d_model].
    """
    close_abandoned(model)
    prepare_fast(model)
    with quiet_backend(), torch.inference_mode():
        if last_only and stop_at_layer is None and return_type == "logits" and fast_active(model):
            resid = model(batch.tokens, attention_mask=batch.attention_mask,
                          past_kv_cache=kv_cache, stop_at_layer=n_layers(model))
            return last_logits(model, resid)
        out = model(
            batch.tokens,
            attention_mask=batch.attention_mask,
            past_kv_cache=kv_cache,
            stop_at_layer=stop_at_layer,
            return_type=return_type,
        )
        return out[:, -1:] if last_only and stop_at_layer is None and return_type == "logits" \
            else out


def shared_prefix_layer(model: Model, hook_names: Sequence[str], kv_cache) -> int | None:
    """The block from which a steered prefill must run, when the part below it can be shared.

    Steering whose hooks all sit in blocks >= L leaves the prompt's pass through blocks 0..L-1
    unsteered, so that part (residual and KV cache) is the same for every strength and vector at
    layers >= L. Shared only on the fast decode path, with L >= 1 and no other hook below L.

    Args:
        model (Model): the model.
        hook_names: the hook points the steering attaches to.
        kv_cache (TransformerLensKeyValueCache | None): the cache the prefill will fill.

    Returns:
        L, or None when the prefix cannot be shared.
    """
    if kv_cache is None or not kv_cache.entries or \
            not isinstance(kv_cache.entries[0], FastCacheEntry) or kv_cache.entries[0].length:
        return None
    layer = lowest_block(hook_names)
    if layer is None or layer < 1 or hooked_below(model, layer):
        return None
    return layer


def prefill_shared(model: Model, batch: TokenBatch, kv_cache, layer: int
                   ) -> Float[Tensor, "batch 1 d_vocab"]:
    """Prefill `kv_cache` for decoding, reusing the unsteered prompt pass below `layer`.

    The pass through blocks 0..layer-1 runs once per distinct prompt row and is remembered per
    model (a few batches, keyed by tokens, layer and weight versions); blocks layer.. run over
    every row with the attached hooks. Use `shared_prefix_layer` to get `layer`.

    Args:
        model (Model): the model.
        batch: the prompt batch.
        kv_cache (TransformerLensKeyValueCache): an empty fast cache.
        layer: from `shared_prefix_layer`.

    Returns:
        Logits of the last prompt position, [batch, 1, d_vocab].
    """
    close_abandoned(model)
    with quiet_backend(), torch.inference_mode():
        return prefill_from_prefix(model, batch.tokens, batch.attention_mask, kv_cache, layer)


def run_from_layer(
    model: Model,
    resid: Float[Tensor, "batch pos d_model"],
    attention_mask: Int[Tensor, "batch pos"],
    start_layer: int,
) -> Float[Tensor, "batch pos d_model"]:
    """Run blocks start_layer..end on a residual stream; return the final residual (pre-norm).

    Args:
        model (Model): the model.
        resid: the residual stream entering `start_layer`.
        attention_mask: the batch's attention mask.
        start_layer: the first block to run.

    Returns:
        The residual stream after the last block, before the final norm.
    """
    return run_blocks(model, resid, attention_mask, start_layer, n_layers(model))


def run_blocks(
    model: Model,
    resid: Float[Tensor, "batch pos d_model"],
    attention_mask: Int[Tensor, "batch pos"],
    start_layer: int,
    stop_layer: int,
) -> Float[Tensor, "batch pos d_model"]:
    """Run blocks start_layer..stop_layer-1 on a residual stream (no final norm, no logits).

    Args:
        model (Model): the model.
        resid: the residual stream entering `start_layer`.
        attention_mask: the batch's attention mask.
        start_layer: the first block to run.
        stop_layer: the block whose incoming residual is returned (> start_layer).

    Returns:
        The residual stream entering `stop_layer`.

    Raises:
        ValueError: unless 0 <= start_layer < stop_layer <= n_layers.
    """
    if not 0 <= start_layer < stop_layer <= n_layers(model):
        raise ValueError(f"run_blocks needs 0 <= start_layer < stop_layer <= {n_layers(model)}; "
                         f"got start_layer={start_layer}, stop_layer={stop_layer}.")
    prepare_fast(model)
    with quiet_backend(), torch.inference_mode():
        return model(resid, start_at_layer=start_layer, stop_at_layer=stop_layer,
                     attention_mask=attention_mask)


def unembed(model: Model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Final norm + unembedding of selected residual vectors (logits).

    Args:
        model (Model): the model.
        resid: residual vectors, [..., d_model].

    Returns:
        Logits, [..., d_vocab] (soft-capped when the model caps its logits).
    """
    with torch.inference_mode():
        x = resid
        if model.cfg.normalization_type is not None:
            shape = x.shape
            x = model.ln_final(x.reshape(-1, 1, shape[-1])).reshape(shape)
        logits = x @ model.W_U + model.b_U
        cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
        if cap is not None and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits


LENS_NORMS: tuple[str, ...] = ("scale", "none", "full")


def direction_logits(
    model: Model,
    directions: Float[Tensor, "... d_model"],
    token_ids: Sequence[int] | None = None,
    centred: bool = False,
    *,
    norm: str = "scale",
) -> Float[Tensor, "... n_tokens"]:
    """Logit effect of residual directions through the unembedding (no bias).

    `norm="scale"` (default) is direct logit attribution: `(d * ln_final weight) @ W_U`, with
    LayerNorm's centring; the final norm's per-token 1/rms factor is positive and shared by all
    logits, so it is left out (when the norm weight is folded into W_U this is `d @ W_U`).
    `norm="none"` is `d @ W_U`; `norm="full"` applies the whole final norm to `d` as if it were a
    residual (scale-free, so layers compare). `token_ids` keeps only those vocabulary columns;
    `centred` subtracts each direction's mean effect over the vocabulary (softmax ignores a shift).

    Args:
        model: the model.
        directions: one or more d_model vectors.
        token_ids: vocabulary columns to keep (None: all).
        centred: subtract the mean over the whole vocabulary.
        norm: "scale", "none" or "full".

    Returns:
        Logit effects [..., n_tokens] in float32 (float64 for a float64 model).

    Raises:
        ValueError: for an unknown `norm` or a direction of the wrong width.
    """
    if norm not in LENS_NORMS:
        raise ValueError(f"Unknown norm {norm!r}; valid choices are {list(LENS_NORMS)}.")
    if directions.shape[-1] != d_model(model):
        raise ValueError(f"Direction has size {directions.shape[-1]} but the model's d_model is "
                         f"{d_model(model)}.")
    with torch.inference_mode():
        # computed in float32 (float64 for a float64 model) whatever the model's dtype: a
        # steering vector is a float32 object, and its lens in bf16 would keep 8 mantissa bits
        w_u = model.W_U
        cdt = torch.promote_types(w_u.dtype, torch.float32)
        if norm == "full":
            full = unembed(model, directions.to(w_u.device, w_u.dtype)).to(cdt) - model.b_U.to(cdt)
            cols = full if token_ids is None else full[..., _ids(token_ids, w_u.device)]
            return cols - full.mean(-1, keepdim=True) if centred else cols
        x = directions.to(w_u.device, cdt)
        w_u = w_u.to(cdt)
        if norm == "scale":
            if model.cfg.normalization_type in ("LN", "LNPre"):  # LayerNorm centres its input
                x = x - x.mean(-1, keepdim=True)
            w = getattr(model.ln_final, "w", None) if model.cfg.normalization_type else None
            if isinstance(w, torch.Tensor):
                x = x * w.to(x.device, cdt)
        cols = w_u if token_ids is None else w_u[:, _ids(token_ids, w_u.device)]
        out = x @ cols
        if centred:
            out = out - (x @ w_u.mean(1))[..., None]
        return out


def _ids(token_ids: Sequence[int], device) -> Tensor:
    return torch.as_tensor(list(token_ids), device=device).long()


def new_kv_cache(model: Model, batch_size: int, capacity: int | None = None):
    """A fresh key-value cache for decoding (preallocated and rotated once where supported).

    On models `fast.prepare` supports (rotary, causal attention: SmolLM2, Gemma 3, the tiny
    model) the entries are `fast.FastCacheEntry` buffers; otherwise, or inside `fast.plain`,
    TransformerLens' own cache.

    Args:
        model (Model): the model.
        batch_size: rows the cache holds.
        capacity: positions to preallocate (prompt width + new tokens); None: grown as needed.

    Returns:
        (TransformerLensKeyValueCache): An empty cache on the model's device.
    """
    return new_cache(model, batch_size, capacity)


def mlp_out_weight(model: Model, layer: int) -> Tensor:
    """The MLP output matrix W_out [d_mlp, d_model] of a layer (HF `mlp.down_proj`, transposed).

    Args:
        model (Model): the model.
        layer: the block index.

    Returns:
        The weight parameter itself (edits change the model).

    Raises:
        ValueError: if the layer has no MLP output matrix.
    """
    block = model.blocks[layer]
    mlp = getattr(block, "mlp", None)
    w = getattr(mlp, "W_out", None) if mlp is not None else None
    if not isinstance(w, torch.nn.Parameter):
        raise ValueError(f"Layer {layer} of this model has no MLP output matrix (W_out).")
    return w
