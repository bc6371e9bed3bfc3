"""Generation sweeps reuse the unsteered prompt pass below the steered layer (shared prefix).

A sweep's generation units batch the same prompts at several strengths, for several vectors; the
prompt's pass through the blocks below the steered layer is computed once per distinct prompt
batch and layer (`backend.fast.prompt_prefix`) and reused. The texts must be identical to those of
the same sweep on a second copy of the model kept on TransformerLens' own paths (no shared prefix,
no fast cache), on the tiny model and on SmolLM2.
"""

from __future__ import annotations

import pytest
import torch

from steerlens.backend import fast, load_model
from steerlens.sweep import sweep
from steerlens.vectors import SteeringVector, SteeringVectorSet

PROMPTS = ["hi there", "a much longer prompt here, with commas", "x", "the cat"]


def _vectors(d: int, layers: list[int], norm: float) -> SteeringVectorSet:
    g = torch.Generator().manual_seed(3)
    out = {}
    for name in ("a", "b"):
        dirs = {}
        for layer in layers:
            v = torch.randn(d, generator=g)
            dirs[layer] = v / v.norm() * norm
        out[name] = SteeringVector(dirs)
    return SteeringVectorSet(out)


def _texts(res) -> list[tuple]:
    t = res.table
    t = t[t.strength != 0].sort_values(["vector", "layer", "strength", "prompt_idx"])
    return list(zip(t.vector, t.layer, t.strength, t.prompt_idx, t.text))


@pytest.mark.parametrize("which", ["tiny-random",
                                   pytest.param("smollm2-135m-instruct",
                                                marks=pytest.mark.embedded)])
def test_generation_sweep_shares_prefix_with_identical_texts(which):
    ref = load_model(which, device="cpu")
    fast.disable(ref)
    model = load_model(which, device="cpu")
    layers = [1] if which == "tiny-random" else [6, 12]
    vset = _vectors(64 if which == "tiny-random" else 576, layers,
                    4.0 if which == "tiny-random" else 8.0)
    kw = dict(layers=layers, strengths=[-4.0, 0.0, 2.0, 4.0], measures=("generate",),
              max_new_tokens=8, chat=which != "tiny-random", batch_size=8, show_progress=False)
    got = sweep(model, PROMPTS, vset, **kw)
    want = sweep(ref, PROMPTS, vset, **kw)
    assert _texts(got) == _texts(want)
    assert list(got.baseline.text) == list(want.baseline.text)
    stats = fast.prefix_stats(model)
    # 3 non-zero strengths x 4 prompts = 12 rows per (vector, layer): units of 8 and 4 rows that
    # hold the same 4 distinct prompts, so one prefix per layer, reused by the other unit and by
    # the other vector (4 uses per layer)
    assert stats["computed"] == len(layers)
    assert stats["reused"] == 2 * 2 * len(layers) - len(layers)
    assert fast.prefix_stats(ref) == {"computed": 0, "reused": 0}
