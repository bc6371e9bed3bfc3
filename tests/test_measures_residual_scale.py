"""residual_norms / scale_to_residual against a hand-written run_with_cache computation."""

import pytest
import torch

from steerlens.backend import runtime
from steerlens.measures import residual_norms, scale_to_residual
from steerlens.vectors import SteeringVector

TEXTS = ["The cat sat on the mat.", "A completely different sentence, somewhat longer."]


def _hand_norms(model, layer, centred):
    rows = []
    for t in TEXTS:
        toks = model.to_tokens(t)  # BOS prepended
        _, cache = model.run_with_cache(toks, names_filter=runtime.hook_name(layer, "resid_pre"))
        rows.append(cache[runtime.hook_name(layer, "resid_pre")][0, 1:].double())
    x = torch.cat(rows)
    if centred:
        x = x - x.mean(0)
    return float(x.norm(dim=-1).median())


@pytest.mark.parametrize("centred", [False, True])
def test_residual_norms_match_hand_computation(tiny, centred):
    got = residual_norms(tiny, TEXTS, [0, 1], centred=centred)
    for layer in (0, 1):  # batched, padded float32 activations vs one text at a time (~1e-6)
        assert got[layer] == pytest.approx(_hand_norms(tiny, layer, centred), rel=1e-5)


def test_scale_to_residual_sets_each_layer_norm(tiny):
    vec = SteeringVector({0: torch.randn(64), 1: torch.randn(64)}, component="resid_pre")
    scaled = scale_to_residual(vec, {0: 3.0, 1: 7.5})
    # float32 rescale of a 64-vector, then a float32 norm / cosine: a few ulps (~1e-7 relative)
    assert scaled.norms[0] == pytest.approx(3.0, rel=1e-5)
    assert scaled.norms[1] == pytest.approx(7.5, rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(scaled.directions[1], vec.directions[1], dim=0)
    assert float(cos) == pytest.approx(1.0, rel=1e-5)


def test_bad_input(tiny):
    vec = SteeringVector({0: torch.randn(64)}, component="resid_pre")
    with pytest.raises(ValueError, match="No residual norm for layer"):
        scale_to_residual(vec, {1: 2.0})
    with pytest.raises(ValueError, match="zero"):
        scale_to_residual(SteeringVector({0: torch.zeros(64)}, component="resid_pre"), {0: 1.0})
    with pytest.raises(ValueError, match="at least one"):
        residual_norms(tiny, [], [0])
