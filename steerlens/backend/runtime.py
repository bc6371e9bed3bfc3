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

from .loading import quiet_backend

COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")

HookFn = Callable[[Tensor, object], Tensor | None]


def hook_name(layer: int, component: str) -> str:
    """TransformerLens hook name for (layer, component); callers validate via `sites.Site`."""
    if component in COMPONENTS:
        return f"blocks.{layer}.hook_{component}"
    raise ValueError(f"Unknown component {component!r}; valid components are {list(COMPONENTS)}")


def key_hook_name(layer: int, rotated: bool) -> str:
    """Hook carrying a layer's attention keys, before or after rotary embedding."""
    return f"blocks.{layer}.attn.{'hook_rot_k' if rotated else 'hook_k'}"


def pattern_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


ATTENTION_PARTS = ("q", "k", "v", "rot_q", "rot_k", "z", "pattern")


def attention_hook_name(layer: int, part: str) -> str:
    """Hook for one attention intermediate: q/k/v [b,p,heads,d_head] (k, v per key/value head),
    rot_q/rot_k (after rotary), z (per-head output before W_O) or pattern [b,heads,q,k]."""
    if part not in ATTENTION_PARTS:
        raise ValueError(f"Unknown attention part {part!r}; valid parts are {list(ATTENTION_PARTS)}.")
    return f"blocks.{layer}.attn.hook_{part}"


def attention_shape(model) -> tuple[int, int, int]:
    """(n query heads, n key/value heads, d_head); n_kv == n_heads without grouped-query attention."""
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return int(cfg.n_heads), int(n_kv), int(cfg.d_head)


def has_hook(model, name: str) -> bool:
    return name in model.hook_dict


def attached_hook_count(model) -> int:
    """How many forward/backward hooks are attached to the model's hook points right now."""
    return sum(len(h._forward_hooks) + len(h._backward_hooks) for h in model.hook_dict.values())


def n_layers(model) -> int:
    return int(model.cfg.n_layers)


def d_model(model) -> int:
    return int(model.cfg.d_model)


def model_id(model) -> str:
    """A stable identifier for vector metadata (the name load_model was given, when known)."""
    return str(getattr(model, "steerlens_name", None) or model.cfg.model_name)


def is_instruct(model) -> bool:
    return bool(getattr(model, "steerlens_instruct", False))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def tokenizer(model):
    if model.tokenizer is None:
        raise ValueError("This model has no tokenizer; steerlens needs one to encode text.")
    return model.tokenizer


def pad_id(model) -> int:
    tok = tokenizer(model)
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return int(tok.eos_token_id if tok.eos_token_id is not None else 0)


def eos_ids(model) -> set[int]:
    """Token ids that end a generation (EOS, plus the chat end-of-turn token if any)."""
    tok = tokenizer(model)
    ids = {int(tok.eos_token_id)} if tok.eos_token_id is not None else set()
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = tok.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids


def has_chat_template(model) -> bool:
    return getattr(tokenizer(model), "chat_template", None) is not None


def prompt_ids(model, prompt: str, chat: bool) -> list[int]:
    """Token ids of a prompt: chat-templated as one user turn, or raw text with BOS."""
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


def text_ids(model, text: str) -> list[int]:
    """Ids of a continuation text, without special tokens."""
    return list(tokenizer(model)(text, add_special_tokens=False).input_ids)


def decode(model, ids: Sequence[int], skip_special: bool = True) -> str:
    return tokenizer(model).decode(list(ids), skip_special_tokens=skip_special)


@dataclass(frozen=True)
class TokenBatch:
    """Left-padded tokens with a mask and each row's content span [start, end) in padded coords."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    span_start: Int[Tensor, " batch"]
    span_end: Int[Tensor, " batch"]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(-1)

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in (self.tokens, self.attention_mask,
                                                   self.span_start, self.span_end)))


def batch_from_ids(
    model, rows: Sequence[tuple[list[int], int]], device=None
) -> TokenBatch:
    """Left-pad rows of (ids, content_start) into a TokenBatch."""
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
    model,
    texts: Sequence[str],
    prompts: Sequence[str | None] | None = None,
    chat: bool = False,
    device=None,
) -> TokenBatch:
    """Tokenize texts (optionally each after its prompt); the span covers the text's tokens.

    With a prompt the row is prompt ids + text ids (tokenized separately, so the span boundary is
    exact); without one the span starts after BOS.
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


def encode_prompts(model, prompts: Sequence[str], chat: bool, device=None) -> TokenBatch:
    """Prompts for generation: the span is the whole prompt (after BOS)."""
    rows = []
    for p in prompts:
        ids = prompt_ids(model, p, chat)
        rows.append((ids, 1 if len(ids) > 1 and ids[0] == tokenizer(model).bos_token_id else 0))
    return batch_from_ids(model, rows, device)


@contextlib.contextmanager
def attached(model, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach forward hooks for the body of the block; always removed afterwards."""
    with quiet_backend(), model.hooks(fwd_hooks=list(hooks), reset_hooks_end=True):
        yield


def forward(
    model,
    batch: TokenBatch,
    *,
    kv_cache=None,
    stop_at_layer: int | None = None,
    return_type: str | None = "logits",
) -> Tensor:
    """One forward pass over a TokenBatch (mask passed through, so left padding is exact)."""
    with quiet_backend(), torch.inference_mode():
        return model(
            batch.tokens,
            attention_mask=batch.attention_mask,
            past_kv_cache=kv_cache,
            stop_at_layer=stop_at_layer,
            return_type=return_type,
        )


def run_from_layer(
    model,
    resid: Float[Tensor, "batch pos d_model"],
    attention_mask: Int[Tensor, "batch pos"],
    start_layer: int,
) -> Float[Tensor, "batch pos d_model"]:
    """Run blocks start_layer..end on a residual stream; return the final residual (pre-norm)."""
    with quiet_backend(), torch.inference_mode():
        return model(
            resid,
            start_at_layer=start_layer,
            stop_at_layer=n_layers(model),
            attention_mask=attention_mask,
        )


def unembed(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Final norm + unembedding of selected residual vectors (logits)."""
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


def direction_logits(
    model,
    directions: Float[Tensor, "... d_model"],
    token_ids: Sequence[int] | None = None,
    centred: bool = False,
) -> Float[Tensor, "... n_tokens"]:
    """Direct logit effect of residual directions: (d * ln_final weight) @ W_U, no bias or norm scale.

    The final norm's per-token 1/rms (or 1/std) factor is positive and shared by all logits, so it
    is left out; its elementwise weight (when not folded into W_U) is applied, and LayerNorm's
    centring. This is the standard "output score" of a feature's decoder direction (direct logit
    attribution). `token_ids` keeps only those vocabulary columns; `centred` subtracts each
    direction's mean effect over the whole vocabulary (softmax ignores a shared shift).
    """
    with torch.inference_mode():
        w_u = model.W_U
        x = directions.to(w_u.dtype)
        if model.cfg.normalization_type in ("LN", "LNPre"):  # LayerNorm centres its input
            x = x - x.mean(-1, keepdim=True)
        w = getattr(model.ln_final, "w", None) if model.cfg.normalization_type else None
        if isinstance(w, torch.Tensor):
            x = x * w
        cols = w_u if token_ids is None else w_u[:, torch.as_tensor(list(token_ids),
                                                                     device=w_u.device).long()]
        out = x @ cols
        if centred:
            out = out - (x @ w_u.mean(1))[..., None]
        return out


def new_kv_cache(model, batch_size: int):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    return TransformerLensKeyValueCache.init_cache(model.cfg, model_device(model), batch_size)


def mlp_out_weight(model, layer: int) -> Tensor:
    """The MLP output matrix W_out [d_mlp, d_model] of a layer (HF `mlp.down_proj`, transposed)."""
    block = model.blocks[layer]
    mlp = getattr(block, "mlp", None)
    w = getattr(mlp, "W_out", None) if mlp is not None else None
    if not isinstance(w, torch.nn.Parameter):
        raise ValueError(f"Layer {layer} of this model has no MLP output matrix (W_out).")
    return w
