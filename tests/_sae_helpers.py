"""Small SAELens SAEs for the SAE tests (d_in 64, d_sae 256 on the tiny model's layer 1)."""

from __future__ import annotations

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

HOOK = "blocks.1.hook_resid_pre"


def make_sae(d_in: int = 64, d_sae: int = 256, hook: str | None = HOOK, seed: int = 0,
             biases: bool = True) -> StandardSAE:
    """A StandardSAE with seeded random weights (and random biases unless `biases=False`)."""
    meta = SAEMetadata(hook_name=hook) if hook is not None else SAEMetadata()
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T + 0.1 * torch.randn(d_in, d_sae, generator=g))
        if biases:
            sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
            sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    return sae


def np_encode(sae, x):
    """Independent numpy forward of a standard SAE encoder: relu((x - b_dec) W_enc + b_enc)."""
    import numpy as np

    w = sae.W_enc.detach().double().numpy()
    be = sae.b_enc.detach().double().numpy()
    bd = sae.b_dec.detach().double().numpy()
    return np.maximum((np.asarray(x, dtype=float) - bd) @ w + be, 0.0)
