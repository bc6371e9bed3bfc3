"""Sweep engine on the embedded SmolLM2: KL vs a plain steered-forward loop with scipy, and a
small generation grid with the shipped sentiment scorer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats

from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.measures import get_scorer
from steerlens.methods import build_vector
from steerlens.steer import steer, steered_forward
from steerlens.sweep import sweep

LAYERS = [2, 11, 24]
STRENGTHS = [-6.0, 0.0, 8.0]


@pytest.fixture(scope="module")
def smol_vec(smol, sentiment):
    return build_vector(smol, sentiment.train[:8], LAYERS, show_progress=False)


@pytest.mark.embedded
def test_kl_matches_plain_loop_on_smollm2(smol, smol_vec, sentiment):
    prompts = list(sentiment.eval_prompts[:2])
    res = sweep(smol, prompts, smol_vec, layers=LAYERS, strengths=STRENGTHS, batch_size=4,
                show_progress=False)
    assert res.settings.chat is True  # chat=None resolved to the template on an instruct model
    t = res.table
    batches = [runtime.encode_prompts(smol, [p], chat=True) for p in prompts]  # unpadded rows
    base = [scipy.special.softmax(runtime.forward(smol, b)[0, -1].double().numpy())
            for b in batches]
    for layer in LAYERS:
        for s in STRENGTHS:
            got = t[(t.layer == layer) & (t.strength == s)].sort_values("prompt_idx").kl_bits
            ref = []
            for p, batch in zip(base, batches):  # one full forward per prompt, full unembed
                with steer(smol, smol_vec.layer(layer), s) as st:
                    steered = steered_forward(smol, batch, st)[0, -1].double().numpy()
                ref.append(scipy.stats.entropy(p, scipy.special.softmax(steered), base=2))
            # padded, prefix-reusing float32 sweep vs one full forward per prompt (30 layers):
            # logits to ~1e-6 relative, KLs of up to a few bits to ~1e-5
            np.testing.assert_allclose(got.to_numpy(), ref, atol=1e-4, rtol=0)
    assert t[t.strength == 8.0].kl_bits.max() > 0.05


@pytest.mark.embedded
def test_generation_grid_on_smollm2(smol, smol_vec, sentiment):
    prompts = list(sentiment.eval_prompts[:2])
    res = sweep(smol, prompts, smol_vec, layers=[11], strengths=[0.0, 8.0], measures=("kl", "generate"),
                scorer=sentiment.scorer, max_new_tokens=6, show_progress=False)
    t = res.table
    ref = generate(smol, prompts, smol_vec.layer(11), strength=8.0, max_new_tokens=6)
    steered = t[t.strength == 8.0].sort_values("prompt_idx")
    assert list(steered.text) == list(ref.texts)
    score = get_scorer(sentiment.scorer)
    assert steered.score.tolist() == pytest.approx([score(x) for x in ref.texts])  # same texts
    assert (t.perplexity > 1).all() and t.error.isna().all()
    assert list(t[t.strength == 0.0].text) == list(res.baseline.text)
