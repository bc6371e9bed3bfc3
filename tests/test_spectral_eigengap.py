"""Eigengaps: batched Gram spectra vs numpy.linalg.eigvalsh per head, on unpadded single-prompt runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import load_model
from steerlens.spectral.eigengap import (
    GapTable,
    eigengaps,
    gated_layers,
    gram_gaps,
    gram_top2,
)

PROMPTS = ["The cat sat on the mat.", "Hi", "Rivers shape the land around them over time.",
           "A B C D E F G H I J K L M N O P Q R S T U V W"]


def numpy_top2(k: np.ndarray) -> tuple[float, float]:
    """Reference: the T x T Gram matrix (1/d) K Kᵀ of one head, numpy eigvalsh."""
    ev = np.linalg.eigvalsh(k @ k.T / k.shape[1])
    return ev[-1], max(ev[-2], 0.0)


def single_prompt_parts(model, prompt: str, names: list[str]) -> dict[str, np.ndarray]:
    """Run one prompt alone (no padding) with TransformerLens' own cache."""
    tokens = model.to_tokens(prompt)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: cache[n][0].double().numpy() for n in names}


@pytest.mark.parametrize("width,d", [(7, 16), (40, 16)])  # T < d (T x T side) and T > d (d x d side)
def test_gram_top2_matches_numpy_per_matrix(width, d):
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(3, 4, width, d, generator=gen) * torch.rand(3, 4, 1, 1, generator=gen) * 5
    lengths = torch.randint(2, width + 1, (3, 4), generator=gen)
    mask = torch.arange(width)[None, None, :] >= (width - lengths)[..., None]  # left padding
    x_padded = torch.where(mask[..., None], x, torch.randn_like(x) * 100)  # junk in the pads
    lam1, lam2 = gram_top2(x_padded, mask)
    gap = gram_gaps(x_padded, mask)
    for i in range(3):
        for j in range(4):
            rows = x[i, j, width - int(lengths[i, j]):].double().numpy()
            l1, l2 = numpy_top2(rows)
            # both in float64 on the same float32 inputs (closed form / LAPACK): rounding only
            assert lam1[i, j].item() == pytest.approx(l1, rel=1e-10)
            assert lam2[i, j].item() == pytest.approx(l2, rel=1e-9, abs=1e-12)
            assert gap[i, j].item() == pytest.approx((l1 - l2) / l1, abs=1e-10)


def test_gram_top2_rejects_fewer_than_two_rows():
    x = torch.randn(2, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :4] = False
    with pytest.raises(ValueError, match="at least 2 rows"):
        gram_top2(x, mask)


def test_eigengaps_match_numpy_on_unpadded_single_prompts(tiny):
    res = eigengaps(tiny, PROMPTS, chat=False)
    assert res.keys.gaps.shape == (len(PROMPTS), 2, 2)  # per key/value head under GQA (4q / 2kv)
    assert res.patterns.gaps.shape == (len(PROMPTS), 2, 4)  # patterns are per query head
    for p, prompt in enumerate(PROMPTS):
        names = [f"blocks.{layer}.attn.{h}" for layer in (0, 1)
                 for h in ("hook_k", "hook_rot_k", "hook_pattern")]
        parts = single_prompt_parts(tiny, prompt, names)
        assert res.n_tokens[p] == parts[names[0]].shape[0]
        for li in (0, 1):
            for table, hook in ((res.keys, "hook_k"), (res.rotated_keys, "hook_rot_k")):
                keys = parts[f"blocks.{li}.attn.{hook}"]  # [pos, kv_head, d]
                for h in range(keys.shape[1]):
                    l1, l2 = numpy_top2(keys[:, h])
                    # batched, padded float32 keys vs one prompt alone (~1e-6 relative)
                    assert table.gaps[p, li, h] == pytest.approx((l1 - l2) / l1, abs=1e-5)
                    assert table.lambda1[p, li, h] == pytest.approx(l1, rel=1e-4)
            pattern = parts[f"blocks.{li}.attn.hook_pattern"]  # [head, q, k]
            for h in range(pattern.shape[0]):
                sv = np.linalg.svd(pattern[h], compute_uv=False) ** 2
                assert res.patterns.gaps[p, li, h] == pytest.approx((sv[0] - sv[1]) / sv[0], abs=1e-5)


def test_layer_statistics_flags_and_gating():
    gen = np.random.default_rng(0)
    gaps = gen.uniform(0.5, 1.0, size=(5, 4, 3))
    t = GapTable("keys", (0, 3, 5, 7), gaps, gaps, gaps, threshold=0.77)
    # float64 reductions of the same gaps, maybe in another order: rounding only
    np.testing.assert_allclose(t.min_gap, gaps.min(2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(t.mean_gap, gaps.mean((0, 2)), rtol=1e-12)
    np.testing.assert_allclose(t.median_gap, np.median(gaps, 2).mean(0), rtol=1e-12)
    flagged = tuple(layer for layer, g in zip(t.layers, gaps.min(2).mean(0)) if g <= 0.77)
    assert t.flagged() == flagged
    scores = dict(zip(t.layers, t.min_gap))
    stated = gated_layers(t)  # the claim as stated: flagged layers, smallest gap first
    assert stated == tuple(sorted(flagged, key=scores.get))
    ranked = gated_layers(t, reading="inverse")
    assert set(ranked) == set(t.layers) - set(flagged)
    assert [scores[layer] for layer in ranked] == sorted((scores[x] for x in ranked), reverse=True)
    assert gated_layers(t, threshold=0.0, reading="inverse") == tuple(
        np.array(t.layers)[np.argsort(-t.min_gap)])
    assert t.flagged(1.0) == t.layers
    by_mean = gated_layers(t, threshold=0.0, by="mean", reading="inverse")
    assert by_mean == tuple(np.array(t.layers)[np.argsort(-t.mean_gap)])
    assert gated_layers(t, threshold=1.0, by="mean") == tuple(
        np.array(t.layers)[np.argsort(t.mean_gap)])
    with pytest.raises(ValueError, match="valid ones"):
        t.layer("max")


def test_eigengaps_bad_input(tiny):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        eigengaps(tiny, ["fine prompt", ""], chat=False)  # "" is BOS only: one token
    with pytest.raises(ValueError, match="out of range"):
        eigengaps(tiny, PROMPTS, layers=[0, 2], chat=False)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
            eigengaps(tiny, PROMPTS, chat=False, threshold=bad)
    with pytest.raises(ValueError, match="non-empty list"):
        eigengaps(tiny, "a single string", chat=False)
    res = eigengaps(tiny, PROMPTS[:2], layers=[1], chat=False, patterns=False)
    with pytest.raises(ValueError, match="has no 'pattern' gaps"):
        res.table("pattern")


def test_expanded_gqa_keys_give_the_same_per_kv_head_gaps():
    model = load_model("tiny-random", device="cpu", seed=3)
    grouped = eigengaps(model, PROMPTS, chat=False, patterns=False)
    model.cfg.ungroup_grouped_query_attention = True  # the backend now hands over 4 key heads
    expanded = eigengaps(model, PROMPTS, chat=False, patterns=False)
    # the same keys copied per query head, run as a wider float32 batch: ~1e-7 on gaps in [0, 1]
    np.testing.assert_allclose(expanded.keys.gaps, grouped.keys.gaps, atol=1e-6)
    np.testing.assert_allclose(expanded.rotated_keys.gaps, grouped.rotated_keys.gaps, atol=1e-6)


@pytest.mark.embedded
def test_eigengaps_on_smollm2_match_numpy(smol):
    prompts = ["Tell me about the ocean.", "How do I cook rice? Please explain step by step."]
    res = eigengaps(smol, prompts, layers=[0, 14, 29], chat=True)
    assert res.keys.gaps.shape == (2, 3, 3)  # 3 key/value heads
    assert res.patterns.gaps.shape == (2, 3, 9)
    for p, prompt in enumerate(prompts):
        text = smol.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([smol.tokenizer(text, add_special_tokens=False).input_ids])
        _, cache = smol.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_rot_k"))
        assert res.n_tokens[p] == ids.shape[1]
        for li, layer in enumerate((0, 14, 29)):
            keys = cache[f"blocks.{layer}.attn.hook_rot_k"][0].double().numpy()
            for h in range(3):
                l1, l2 = numpy_top2(keys[:, h])
                # batched float32 forward through up to 30 layers vs one prompt alone
                assert res.rotated_keys.gaps[p, li, h] == pytest.approx((l1 - l2) / l1, abs=1e-4)
