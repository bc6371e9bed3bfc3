"""Small SAELens SAEs for the SAE tests (d_in 64, d_sae 256 on the tiny model's layer 1)."""

from __future__ import annotations

from steerlens.sae import random_sae

HOOK = "blocks.1.hook_resid_pre"


def make_sae(d_in: int = 64, d_sae: int = 256, hook: str | None = HOOK, seed: int = 0,
             biases: bool = True):
    """`steerlens.sae.random_sae` with unit-norm decoder rows, an encoder perturbed away from the
    decoder's transpose, and random biases unless `biases=False`."""
    return random_sae(d_in, d_sae, hook_name=hook, seed=seed, init="unit", encoder_noise=0.1,
                      bias_scale=0.1 if biases else 0.0)


def np_encode(sae, x):
    """Independent numpy forward of a standard SAE encoder: relu((x - b_dec) W_enc + b_enc)."""
    import numpy as np

    w = sae.W_enc.detach().double().numpy()
    be = sae.b_enc.detach().double().numpy()
    bd = sae.b_dec.detach().double().numpy()
    return np.maximum((np.asarray(x, dtype=float) - bd) @ w + be, 0.0)
