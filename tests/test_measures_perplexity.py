"""Perplexity vs a hand-written loop over model logits (one text at a time, no padding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.measures import (
    continuation_perplexity,
    generation_perplexity,
    text_perplexity,
)
from steerlens.vectors import SteeringVector


def _hand_ppl(model, ids, start, hooks=()):
    """exp(mean NLL) of ids[start:] given the preceding ids, computed on full logits.

    Tolerance against it: rel 1e-5 on the tiny model. The batched, padded float32 logits agree
    with this unpadded forward to ~1e-6 absolute (logits O(1)), so the mean NLL does too, and
    perplexity = exp(mean NLL) to ~1e-6 relative."""
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        logits = model(torch.tensor([ids]))[0].double()
    logp = logits.log_softmax(-1)
    nll = [-float(logp[t - 1, ids[t]]) for t in range(start, len(ids))]
    return math.exp(sum(nll) / len(nll)), len(nll)


def test_text_perplexity_matches_hand_loop(tiny):
    texts = ["hello world", "a", "the quick brown fox jumps"]
    res = text_perplexity(tiny, texts, batch_size=2)
    for i, t in enumerate(texts):
        ids = runtime.prompt_ids(tiny, t, chat=False)
        ppl, n = _hand_ppl(tiny, ids, 1)
        assert res.n_tokens[i] == n == len(t)
        assert res.perplexity[i] == pytest.approx(ppl, rel=1e-5)
    pooled = math.exp(sum(n * x for n, x in zip(res.n_tokens, res.nll)) / sum(res.n_tokens))
    assert res.pooled_perplexity == pytest.approx(pooled, rel=1e-12)  # float64, same NLLs
    assert res.n == 3 and not res.steered


def test_steered_text_perplexity_matches_hooked_loop(tiny):
    v = SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(2))})
    res = text_perplexity(tiny, ["hello world"], steering=v, strength=2.0)

    def add(act, hook):
        return act + 2.0 * v[1]

    ids = runtime.prompt_ids(tiny, "hello world", chat=False)
    ppl, _ = _hand_ppl(tiny, ids, 1, [("blocks.1.hook_resid_pre", add)])
    assert res.steered and res.perplexity[0] == pytest.approx(ppl, rel=1e-5)
    # steering moves perplexity by far more than float32 noise
    assert res.perplexity[0] != pytest.approx(text_perplexity(tiny, ["hello world"]).perplexity[0],
                                              rel=1e-3)


@pytest.mark.parametrize("chat", [False, True])
def test_continuation_perplexity_masks_prompt(tiny, chat):
    prompts, conts = ["Say hi.", "Count: 1 2"], [" Hi there!", " 3 4 5"]
    res = continuation_perplexity(tiny, prompts, conts, chat=chat)
    tok = tiny.tokenizer
    for i, (p, c) in enumerate(zip(prompts, conts)):
        if chat:
            head = tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True),
                       add_special_tokens=False).input_ids
        else:
            head = [tok.bos_token_id, *tok(p, add_special_tokens=False).input_ids]
        body = tok(c, add_special_tokens=False).input_ids
        ppl, n = _hand_ppl(tiny, head + body, len(head))
        assert res.n_tokens[i] == n == len(c)
        assert res.perplexity[i] == pytest.approx(ppl, rel=1e-5)


def test_generation_perplexity_scores_exact_tokens(tiny):
    v = SteeringVector({0: torch.randn(64, generator=torch.Generator().manual_seed(5))})
    gen = generate(tiny, ["hi", "hello there"], v, strength=3.0, max_new_tokens=6, chat=True)
    res = generation_perplexity(tiny, gen)
    for i, p in enumerate(gen.prompts):
        head = runtime.prompt_ids(tiny, p, chat=True)
        if not gen.tokens[i]:
            assert math.isnan(res.perplexity[i])
            continue
        ppl, n = _hand_ppl(tiny, head + list(gen.tokens[i]), len(head))
        assert res.n_tokens[i] == n and res.perplexity[i] == pytest.approx(ppl, rel=1e-5)


def test_empty_continuation_is_nan_and_not_counted(tiny):
    res = continuation_perplexity(tiny, ["a", "b"], ["", " x"], chat=False)
    assert math.isnan(res.perplexity[0]) and res.n_tokens[0] == 0
    assert res.n == 1 and np.isfinite(res.perplexity[1])


def test_perplexity_bad_input(tiny):
    with pytest.raises(ValueError, match="2 prompts but 1"):
        continuation_perplexity(tiny, ["a", "b"], ["x"])
    with pytest.raises((ValueError, TypeError), match="Generation"):
        generation_perplexity(tiny, ["text"])
    with pytest.raises((ValueError, TypeError), match="strings|Expected type"):
        text_perplexity(tiny, [1, 2])


@pytest.mark.embedded
def test_smol_perplexity_prefers_real_text(smol):
    text = "The cat sat on the mat and looked out of the window at the birds in the garden."
    words = text[:-1].split()
    shuffled = " ".join(words[i] for i in np.random.default_rng(0).permutation(len(words))) + "."
    res = text_perplexity(smol, [text, shuffled])
    assert res.perplexity[0] < res.perplexity[1] / 5
    ids = runtime.prompt_ids(smol, text, chat=False)
    ppl, _ = _hand_ppl(smol, ids, 1)
    assert res.perplexity[0] == pytest.approx(ppl, rel=1e-3)  # 30 float32 layers, 49k vocab
