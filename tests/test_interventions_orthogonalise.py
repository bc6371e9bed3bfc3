"""Weight orthogonalisation: equals ablation at every layer and residual site (tiny model and
SmolLM2), writers really stop writing along r, bit-exact restore on every exit path, one weight
edit at a time (vs spectral steering, both ways), bad input, and the equivalence figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import runtime, weights
from steerlens.figures.interventions import orthogonalisation_equivalence_figure
from steerlens.interventions.ablation import Ablation
from steerlens.interventions.orthogonalise import (
    orthogonalisation_equivalence,
    orthogonalised,
    save_equivalence,
)
from steerlens.spectral.weights import SpectralEdit, spectral_steering
from steerlens.steer import steer, steered_forward
from steerlens.vectors import SteeringVector

PROMPTS = ["Hello there, friend", "The cat sat on the mat.", "a"]


def _dir(seed=0, d=64):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, snap):
    now = model.state_dict()
    assert set(now) == set(snap)
    assert all(torch.equal(now[k], snap[k]) for k in snap)


def test_equivalence_tiny(tiny):
    res = orthogonalisation_equivalence(tiny, _dir(), PROMPTS)
    assert res.n == 3 and res.max_dresid.shape == (3, runtime.n_layers(tiny))
    # two float32 paths through a 2-layer model with logits O(3): rounding ~1e-6, atol 2e-5
    assert float(res.max_dlogit.max()) < 2e-5
    assert float(res.max_dresid.max()) < 2e-5
    # not vacuous: the ablation itself moves logits by orders of magnitude more
    assert float(res.ablation_effect.min()) > 0.1


def test_equivalence_by_hand_with_batched_padding(tiny):
    """Batched, left-padded forward: orthogonalised logits == hook ablation logits."""
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    r = _dir(1)
    with steer(tiny, Ablation(r)) as s:
        ablated = steered_forward(tiny, batch, s)
    with orthogonalised(tiny, SteeringVector({3: r})) as info:
        orth = runtime.forward(tiny, batch)
        assert info.max_write > 0.1
    real = batch.attention_mask.bool()
    # float32 paths, logits O(3): atol 2e-5 (padding positions excluded: masked garbage)
    torch.testing.assert_close(orth[real], ablated[real], atol=2e-5, rtol=0)


def test_writers_stop_writing_along_r_and_restore_bit_exact(tiny):
    r = _dir(2)
    rhat = (r / r.norm()).double()
    snap = _snapshot(tiny)
    keys = weights.residual_writer_keys(tiny)
    assert keys[0] == "embed.W_E" and "blocks.1.mlp.b_out" in keys and "blocks.0.attn.W_O" in keys
    with orthogonalised(tiny, r) as info:
        assert info.keys == tuple(keys)
        for k in keys:
            w = weights.read(tiny, k).double()
            assert float((w @ rhat).abs().max()) < 1e-6  # float32 storage of a projection
            assert not torch.equal(weights.read(tiny, k), snap[k])
        assert weights.being_edited(tiny) == "orthogonalised"
        # parameters that read the residual stream are untouched
        assert torch.equal(weights.read(tiny, "blocks.0.attn.W_Q"), snap["blocks.0.attn.W_Q"])
    _assert_same(tiny, snap)
    assert weights.being_edited(tiny) is None


def test_restored_when_the_block_raises(tiny):
    snap = _snapshot(tiny)
    with pytest.raises(KeyboardInterrupt), orthogonalised(tiny, _dir(3)):
        raise KeyboardInterrupt
    _assert_same(tiny, snap)
    with pytest.raises(RuntimeError), orthogonalised(tiny, _dir(3)), steer(tiny, Ablation(_dir(4))):
        raise RuntimeError("inside both")
    _assert_same(tiny, snap)
    assert weights.being_edited(tiny) is None and runtime.attached_hook_count(tiny) == 0


def test_one_weight_edit_at_a_time(tiny):
    snap = _snapshot(tiny)
    with spectral_steering(tiny, SpectralEdit(0, 0.3)):
        inside = _snapshot(tiny)
        with pytest.raises(ValueError, match="already being edited by 'spectral_steering'"), \
                orthogonalised(tiny, _dir()):
            pass
        _assert_same(tiny, inside)  # the refused edit touched nothing
    _assert_same(tiny, snap)
    with orthogonalised(tiny, _dir()):
        inside = _snapshot(tiny)
        with pytest.raises(ValueError, match="already being edited by 'orthogonalised'"), \
                spectral_steering(tiny, SpectralEdit(1, 0.3)):
            pass
        with pytest.raises(ValueError, match="already being edited"), orthogonalised(tiny, _dir(1)):
            pass
        _assert_same(tiny, inside)
    _assert_same(tiny, snap)
    with orthogonalised(tiny, _dir()):  # usable again after the refusals
        pass


def test_weight_registry_bad_input(tiny):
    with pytest.raises(ValueError, match="no parameter"), weights.edited(tiny, {"nope": torch.ones(1)},
                                                                         "t"):
        pass
    with pytest.raises(ValueError, match="shape"), weights.edited(tiny, {"embed.W_E": torch.ones(1)},
                                                                  "t"):
        pass
    w = weights.read(tiny, "blocks.0.mlp.b_out").clone()
    w[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"), weights.edited(
            tiny, {"blocks.0.mlp.b_out": w}, "t"):
        pass
    assert weights.being_edited(tiny) is None


def test_bad_directions(tiny):
    with pytest.raises(ValueError, match="nonzero norm"), orthogonalised(tiny, torch.zeros(64)):
        pass
    with pytest.raises(ValueError, match="non-finite"), orthogonalised(
            tiny, torch.full((64,), float("inf"))):
        pass
    with pytest.raises(ValueError, match="d_model 64"), orthogonalised(tiny, torch.ones(32)):
        pass
    two = SteeringVector({0: _dir(0), 1: _dir(1)})
    with pytest.raises(ValueError, match="pass `layer=`"), orthogonalised(tiny, two):
        pass
    with pytest.raises(ValueError, match="no entry for layer 5"), orthogonalised(tiny, two, layer=5):
        pass
    with orthogonalised(tiny, two, layer=1):
        pass
    assert weights.being_edited(tiny) is None


def test_figure_and_json(tiny, tmp_path):
    res = orthogonalisation_equivalence(tiny, _dir(5), PROMPTS[:2])
    fig = orthogonalisation_equivalence_figure(res)
    np.testing.assert_array_equal(fig.data[0].y, res.max_dlogit)
    np.testing.assert_array_equal(fig.data[1].y, res.ablation_effect)
    np.testing.assert_array_equal(fig.data[2].y, res.max_dresid.max(0))
    import json

    d = json.loads(save_equivalence(res, tmp_path / "eq.json").read_text())
    assert d["n_prompts"] == 2 and d["max_abs_dlogit"] == float(res.max_dlogit.max())


@pytest.mark.embedded
def test_equivalence_smollm2(smol):
    d = runtime.d_model(smol)
    res = orthogonalisation_equivalence(smol, _dir(0, d), PROMPTS)
    # 30 float32 layers, logits O(20): deep-model tolerance (conftest) 1e-3 absolute
    assert float(res.max_dlogit.max()) < 1e-3
    assert float(res.ablation_effect.min()) > 0.05
