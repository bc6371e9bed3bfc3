"""A tiny random HookedTransformer with a real byte-level tokenizer, for fast exact unit tests.

Two layers, d_model 64, rotary attention with grouped-query heads (4 query, 2 key/value), a gated
MLP and RMSNorm: the same structural features as the embedded Llama-family model, at a size where
a forward takes milliseconds. The tokenizer is a byte-level BPE with no merges (every byte is a
token) plus BOS/EOS/PAD specials and a small chat template, built in memory so nothing is fetched.
"""

from __future__ import annotations

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant:{% endif %}"
)


def tiny_tokenizer():
    """Byte-level tokenizer: 256 byte tokens + <|bos|>, <|eos|>, <|pad|>.

    Built in memory (nothing is fetched), with a small chat template so chat code paths can be
    tested too.

    Returns:
        (transformers.PreTrainedTokenizerFast): The tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    for s in specials:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", vocab["<|bos|>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    # TransformerLens re-loads tokenizers that do not already add BOS; ours does (see the
    # post-processor), so say so and it is kept as is.
    tok.init_kwargs.update(name_or_path="tiny-random", add_bos_token=True)
    return tok


def tiny_model(device: str = "cpu", seed: int = 0, n_layers: int = 2):
    """A randomly initialised 2-layer HookedTransformer (seeded, so tests are reproducible).

    Args:
        device: where to put the model.
        seed: seed of the weights.
        n_layers: number of blocks.

    Returns:
        (Model): The model in eval mode (d_model 64, 4 query / 2 key-value heads, rotary, gated
            MLP, RMSNorm).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from .loading import move, quiet_backend

    tok = tiny_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=64,
        n_heads=4,
        n_key_value_heads=2,
        d_head=16,
        d_mlp=128,
        n_ctx=256,
        d_vocab=len(tok),
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=16,
        final_rms=True,
        seed=seed,
        device=device,
        model_name="tiny-random",
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=True,
        default_prepend_bos=True,
    )
    with quiet_backend():
        torch.manual_seed(seed)
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        # TL's default init leaves some weights at zero/one; give every parameter signal so the
        # exact-algebra tests exercise real arithmetic.
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".w") or "ln" in name:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
                else:
                    scale = p.shape[-2] ** 0.5 if p.ndim > 1 else 10.0
                    p.copy_(torch.randn(p.shape, generator=gen) / scale)
    return move(model, device).eval()
