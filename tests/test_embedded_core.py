"""Integration on the embedded models: HF parity, chat templates, real steering."""

from __future__ import annotations

import pytest
import torch

from steerlens.backend import EMBEDDED, loading, runtime
from steerlens.generate import generate
from steerlens.methods import build_vector, random_like


def _hf_parity(model, name):
    gguf = loading.fetch_gguf(EMBEDDED[name])
    hf, _ = loading._dequantized_hf(gguf)
    batch = runtime.encode_prompts(model, ["The capital of France is", "Steering vectors are"],
                                   chat=False)
    with torch.no_grad():
        ref = hf(input_ids=batch.tokens, attention_mask=batch.attention_mask).logits
    ours = runtime.forward(model, batch)
    mask = batch.attention_mask.bool()
    ref, ours = ref[mask], ours[mask]
    ref = ref - ref.mean(-1, keepdim=True)
    ours = ours - ours.mean(-1, keepdim=True)
    # two float32 implementations (HF vs TransformerLens: other op order, TL folds the norms and
    # centres the unembedding), logits of O(10) through 18-30 layers: measured ~6e-5; bound 1e-3
    return float((ref - ours).abs().max())


@pytest.mark.embedded
def test_smollm2_matches_huggingface(smol):
    assert smol.cfg.n_layers == 30 and smol.cfg.d_model == 576 and smol.cfg.n_key_value_heads == 3
    assert _hf_parity(smol, "smollm2-135m-instruct") < 1e-3


@pytest.mark.gemma
def test_gemma_matches_huggingface(gemma):
    assert gemma.cfg.n_layers == 18 and gemma.cfg.d_model == 640
    assert _hf_parity(gemma, "gemma-3-270m") < 1e-3


@pytest.mark.embedded
def test_chat_template_and_greedy_answer(smol):
    batch = runtime.encode_prompts(smol, ["What is the capital of France?"], chat=True)
    text = runtime.decode(smol, batch.tokens[0].tolist(), skip_special=False)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    out = generate(smol, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in out.texts[0]


@pytest.mark.embedded
def test_sentiment_vector_steers_and_random_does_not(smol, sentiment):
    """Held-out prompts: +sentiment raises VADER, -sentiment lowers it; a random vector of the
    same norm moves it less. n = 6 prompts x 24 tokens (a smoke test, not a finding)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    vec = build_vector(smol, sentiment.train, [10], show_progress=False)
    prompts = list(sentiment.eval_prompts[:6])

    def score(v, s):
        g = generate(smol, prompts, v, strength=s, max_new_tokens=24)
        return sum(vader.polarity_scores(t)["compound"] for t in g.texts) / len(prompts)

    pos, neg = score(vec, 4.0), score(vec, -4.0)
    rnd = score(random_like(vec, seed=0), 4.0)
    assert pos - neg > 0.5
    assert abs(rnd - pos) > 0.2 or abs(rnd - neg) > 0.2
