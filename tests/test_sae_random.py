"""`steerlens.sae.random_sae`: seeded random-init SAEs, checked against SAELens's own init."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from steerlens.sae import check_sae, random_sae
from steerlens.sites import Site

HOOK = "blocks.1.hook_resid_pre"
PARAMS = ("W_enc", "W_dec", "b_enc", "b_dec")


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in PARAMS)


def test_saelens_init_equals_saelens_under_the_seed_and_keeps_global_rng():
    torch.manual_seed(3)
    ref = StandardSAE(StandardSAEConfig(d_in=64, d_sae=256,
                                        metadata=SAEMetadata(hook_name=HOOK, model_name="m")))
    state = torch.get_rng_state()
    sae = random_sae(64, 256, hook_name=HOOK, model_name="m", seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global random state is untouched
    assert _same(sae, ref)
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.metadata.model_name == "m"
    assert _same(sae, random_sae(64, 256, seed=3)) and not _same(sae, random_sae(64, 256, seed=4))


def test_unit_init_noise_and_biases():
    sae = random_sae(32, 96, seed=1, init="unit")
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(96), rtol=0, atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert not sae.b_enc.any() and not sae.b_dec.any()
    noisy = random_sae(32, 96, seed=1, init="unit", encoder_noise=0.1, bias_scale=0.1)
    assert torch.equal(noisy.W_dec, sae.W_dec)
    assert 0.05 < (noisy.W_enc - sae.W_enc).std() < 0.15
    assert 0.05 < noisy.b_enc.std() < 0.15 and noisy.b_dec.abs().sum() > 0


def test_random_sae_fits_the_tiny_model(tiny):
    assert check_sae(tiny, random_sae(64, 128, hook_name=HOOK)) == Site(1, "resid_pre")


@pytest.mark.parametrize("kwargs", [dict(d_in=0, d_sae=8), dict(d_in=8, d_sae=8, init="xavier"),
                                    dict(d_in=8, d_sae=8, bias_scale=-1.0)])
def test_bad_arguments(kwargs):
    with pytest.raises((ValueError, TypeError)):
        random_sae(**kwargs)
