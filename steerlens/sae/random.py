"""Randomly initialised SAEs: controls ("do trained features matter?") and test fixtures.

A random SAE has the shape and metadata of a real one but features that mean nothing. Running an
SAE pipeline on one tells which results come from the training and which from the pipeline
itself: e.g. selecting features by activation difference re-finds the contrastive direction even
with random features, while a single random feature does not steer.

Two initialisations, both with the encoder tied to the decoder's transpose and zero biases, both
drawn under `seed` without touching torch's global random state (the same seed gives the same SAE
in every process):

- `init="saelens"`: SAELens's own `StandardSAE` initialisation (kaiming-uniform decoder rows);
- `init="unit"`: Gaussian decoder rows scaled to unit norm, the convention trained SAEs are
  usually normalised to.

`encoder_noise` and `bias_scale` perturb either (seeded too), for tests that need an encoder not
exactly tied to the decoder and non-zero biases.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["random_sae"]


def random_sae(d_in: int, d_sae: int, *, hook_name: str | None = None,
               model_name: str | None = None, seed: int = 0,
               init: Literal["saelens", "unit"] = "saelens", encoder_noise: float = 0.0,
               bias_scale: float = 0.0):
    """A SAELens `StandardSAE` with seeded random weights.

    Args:
        d_in: width of the activations the SAE reads (the model's d_model for a residual site).
        d_sae: number of features.
        hook_name: the TransformerLens hook the SAE reads, e.g. "blocks.12.hook_resid_pre"
            (stored in the SAE's metadata, where `steerlens.sae.check_sae` looks for it).
        model_name: the model id, stored in the metadata.
        seed: seed of the initialisation; the global torch random state is left as it was.
        init: "saelens" (SAELens's kaiming-uniform decoder) or "unit" (unit-norm Gaussian decoder
            rows); the encoder starts as the decoder's transpose either way.
        encoder_noise: standard deviation of Gaussian noise added to the tied encoder `W_enc`.
        bias_scale: standard deviation of Gaussian encoder and decoder biases (0: zero biases).

    Returns:
        (sae_lens.StandardSAE): The SAE (float32, CPU, eval mode).

    Raises:
        ValueError: if `d_in` or `d_sae` is below 1, a scale is negative or `init` is unknown.
    """
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    if d_in < 1 or d_sae < 1:
        raise ValueError(f"d_in and d_sae must be >= 1, got d_in={d_in}, d_sae={d_sae}.")
    if init not in ("saelens", "unit"):
        raise ValueError(f"init must be 'saelens' or 'unit', got {init!r}.")
    if encoder_noise < 0 or bias_scale < 0:
        raise ValueError(f"encoder_noise and bias_scale must be >= 0, got {encoder_noise} and "
                         f"{bias_scale}.")
    meta = {k: v for k, v in (("hook_name", hook_name), ("model_name", model_name))
            if v is not None}
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(**meta))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = StandardSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if init == "unit":
            w_dec = torch.randn(d_sae, d_in, generator=g)
            sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
        if encoder_noise:
            sae.W_enc.add_(encoder_noise * torch.randn(d_in, d_sae, generator=g))
        if bias_scale:
            sae.b_enc.copy_(bias_scale * torch.randn(d_sae, generator=g))
            sae.b_dec.copy_(bias_scale * torch.randn(d_in, generator=g))
    return sae.eval()
