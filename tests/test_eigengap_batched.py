"""Batched top-2 eigenvalues for short prompts (T <= d_head) against numpy.linalg.eigvalsh per matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.spectral._capture import capture_attention
from steerlens.spectral.eigengap import eigengaps, gaps_of_batch, gram_top2


def numpy_top2(rows: np.ndarray, scale: float) -> tuple[float, float]:
    """Reference: eigvalsh of the T x T Gram matrix of one matrix's real rows, in numpy."""
    ev = np.linalg.eigvalsh(scale * rows @ rows.T)
    return ev[-1], max(ev[-2], 0.0)


def planted(n: int, width: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Matrices X = U diag(s) Vᵀ with chosen singular values: well separated, nearly tied top two,
    and a flat spectrum (the hard cases for a top-2 method)."""
    out = []
    k = min(width, d)
    for i in range(n):
        u, _ = torch.linalg.qr(torch.randn(width, k, generator=gen, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
        s = torch.linspace(1.0, 0.01, k, dtype=torch.float64)
        if i % 3 == 1:
            s[1] = s[0] * (1 - 1e-6)  # λ1 and λ2 tied to 2e-6 relative
        elif i % 3 == 2:
            s = torch.full((k,), 0.5, dtype=torch.float64) + 1e-3 * torch.rand(k, generator=gen)
        out.append((u * s) @ v.T)
    return torch.stack(out).float()  # keys arrive as float32


@pytest.mark.parametrize("width", [2, 16, 64, 65])  # T x T side up to T = d = 64, then the d x d side
def test_short_prompt_top2_match_numpy_on_planted_spectra(width):
    gen = torch.Generator().manual_seed(width)
    d = 64
    x = planted(9, width, d, gen).reshape(3, 3, width, d)
    lengths = torch.randint(2, width + 1, (3, 3), generator=gen)
    lengths[0, 0] = width
    mask = torch.arange(width)[None, None, :] >= (width - lengths)[..., None]  # left padding
    junk = torch.where(mask[..., None], x, torch.randn(x.shape, generator=gen) * 50)
    lam1, lam2 = gram_top2(junk, mask)
    for i in range(3):
        for j in range(3):
            rows = x[i, j, width - int(lengths[i, j]):].double().numpy()
            l1, l2 = numpy_top2(rows, 1 / d)
            # both sides float64 on the same float32 inputs; symmetric eigenvalues are perfectly
            # conditioned (Weyl), so rounding (~1e-16 x λ1 per step) bounds the difference even
            # for the nearly tied pair: 1e-12 x λ1 leaves a margin of several hundred
            assert abs(lam1[i, j].item() - l1) <= 1e-12 * l1
            assert abs(lam2[i, j].item() - l2) <= 1e-12 * l1


def test_all_true_mask_is_the_unmasked_computation():
    x = torch.randn(4, 5, 30, 64)
    a = gram_top2(x, torch.ones(4, 5, 30, dtype=torch.bool))
    b = gram_top2(x, None)
    # the no-padding fast path skips the multiply by ones: bit-identical, not merely close
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_gaps_of_batch_is_eigengaps_on_the_encoded_batch(tiny):
    prompts = ["The cat sat on the mat.", "Hi there", "Rivers shape the land."]
    res = eigengaps(tiny, prompts, chat=False)
    batch = runtime.encode_prompts(tiny, prompts, chat=False, device="cpu")
    again = gaps_of_batch(tiny, batch, [0, 1])
    # the same computation on the same batch: identical arrays
    for kind in ("keys", "rotated_keys", "pattern"):
        if kind == "rotated_keys" and res.rotated_keys is None:
            continue
        np.testing.assert_array_equal(res.table(kind).gaps, again.table(kind).gaps)
    with pytest.raises(ValueError, match="threshold"):
        gaps_of_batch(tiny, batch, [0], threshold=2.0)


@pytest.mark.embedded
@pytest.mark.parametrize("width", [16, 64])
def test_smollm2_short_prompt_gaps_match_numpy_on_the_same_keys(smol, width):
    """Every layer and kv head of 3 held-out prompts of T tokens: batched vs numpy per matrix."""
    ids = runtime.text_ids(smol, "Rivers carve valleys over thousands of years, carrying silt "
                                 "down to the sea where deltas grow and wetlands form. " * 20)
    bos = runtime.tokenizer(smol).bos_token_id
    rows = [([bos] + ids[i * (width - 1):(i + 1) * (width - 1)], 0) for i in range(3)]
    batch = runtime.batch_from_ids(smol, rows, device="cpu")
    assert batch.lengths.tolist() == [width] * 3  # no padding: every row is a full T x d matrix
    layers = list(range(runtime.n_layers(smol)))
    res = gaps_of_batch(smol, batch, layers, patterns=True)
    cap = capture_attention(smol, batch, layers, ["rot_k", "pattern"])
    keys = cap.parts["rot_k"].double().numpy()  # [prompt, layer, pos, kv head, d]
    pats = cap.parts["pattern"].double().numpy()  # [prompt, layer, head, q, k]
    d = keys.shape[-1]
    for p in range(3):
        for li in layers:
            for h in range(keys.shape[3]):
                l1, l2 = numpy_top2(keys[p, li, :, h], 1 / d)
                # same float32 keys, float64 on both sides: rounding only
                assert res.rotated_keys.lambda1[p, li, h] == pytest.approx(l1, rel=1e-10)
                assert res.rotated_keys.gaps[p, li, h] == pytest.approx((l1 - l2) / l1, abs=1e-10)
            for h in range(pats.shape[2]):
                l1, l2 = numpy_top2(pats[p, li, h], 1.0)
                assert res.patterns.gaps[p, li, h] == pytest.approx((l1 - l2) / l1, abs=1e-10)
