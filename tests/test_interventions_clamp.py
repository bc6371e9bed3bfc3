"""SAE feature clamping: the clamp-nothing identity (bit-exact, tiny model and SmolLM2 with the
shipped SAE), the edit against an independent numpy encoder/decoder, strength interpolation,
position modes, the general (encode/decode) path, save/load and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sae_helpers import make_sae, np_encode

from steerlens.backend import runtime
from steerlens.interventions import load_intervention, save_intervention
from steerlens.interventions.base import InterventionFileError, PositionContext
from steerlens.interventions.clamp import FeatureClamp, clamp_delta, fast_encodable
from steerlens.sae import random_sae
from steerlens.sae.train import save_sae
from steerlens.steer import steer, steered_forward

PROMPTS = ["hello there, friend", "a b"]


@pytest.fixture(scope="module")
def sae():
    return make_sae(seed=3)


def _resid(model, batch, hook, interventions=None):
    got = {}

    def grab(act, hook):
        got["x"] = act.detach().clone()

    if interventions is None:
        with runtime.attached(model, [(hook, grab)]):
            logits = runtime.forward(model, batch)
    else:
        with steer(model, interventions) as s, runtime.attached(model, [(hook, grab)]):
            logits = steered_forward(model, batch, s)
    return logits, got["x"]


def _post_hook(layer: int) -> str:
    # the SAE's site; a hook attached inside `steer()` runs after the clamp, so it sees the edit
    return runtime.hook_name(layer, "resid_pre")


def test_clamp_nothing_is_bit_identical_tiny(tiny, sae):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    base = runtime.forward(tiny, batch)
    nothing = [FeatureClamp(sae, [], value=5.0), FeatureClamp(sae, [3, 40], scale=1.0),
               FeatureClamp(sae, [3], value=2.0, positions="last", start_step=1)]
    for clamp in nothing:
        with steer(tiny, clamp) as s:
            assert torch.equal(steered_forward(tiny, batch, s), base), clamp


def test_clamp_to_current_value_is_bit_identical(tiny, sae):
    # one row, clamp at the last position to exactly the activation the SAE finds there
    batch = runtime.encode_prompts(tiny, PROMPTS[:1], chat=False)
    base, x = _resid(tiny, batch, _post_hook(1))
    clamp = FeatureClamp(sae, [3, 40, 200], value=0.0)
    f_last = clamp.bind(tiny).encode(x[0, -1])
    same = FeatureClamp(sae, [3, 40, 200], value=[float(v) for v in f_last], positions="last")
    with steer(tiny, same) as s:
        assert torch.equal(steered_forward(tiny, batch, s), base)


def test_clamp_edit_matches_numpy(tiny, sae):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    feats, value = [3, 40, 200], [4.0, 0.0, -1.5]
    _, x = _resid(tiny, batch, _post_hook(1))
    clamp = FeatureClamp(sae, feats, value=value, strength=0.7)
    # the edited activation, caught by a hook attached after the steering hook at the same site
    with steer(tiny, clamp) as s, runtime.attached(tiny, [(_post_hook(1), _Grab())]):
        steered_forward(tiny, batch, s)
    got = _Grab.last
    xn = x.double().numpy()
    f = np_encode(sae, xn)[..., feats]
    w = sae.W_dec.detach().double().numpy()[feats]
    want = xn + 0.7 * (np.array(value) - f) @ w
    # float32 model activations (|x| ~ 1-10) through a float32 encode of 64 terms: ~1e-5 absolute
    np.testing.assert_allclose(got.double().numpy(), want, atol=2e-5, rtol=1e-5)
    assert not np.allclose(want, xn)  # the clamp really moved the activation


class _Grab:
    last: torch.Tensor | None = None

    def __call__(self, act, hook):
        _Grab.last = act.detach().clone()


def test_scale_mode_and_strength_interpolation(tiny, sae):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    _, x = _resid(tiny, batch, _post_hook(1))
    feats = [3, 40]
    xn = x.double().numpy()
    f = np_encode(sae, xn)[..., feats]
    w = sae.W_dec.detach().double().numpy()[feats]
    for scale, strength in [(0.0, 1.0), (3.0, 0.5), (2.0, 2.0)]:
        clamp = FeatureClamp(sae, feats, scale=scale, strength=strength)
        with steer(tiny, clamp) as s, runtime.attached(tiny, [(_post_hook(1), _Grab())]):
            steered_forward(tiny, batch, s)
        want = xn + strength * (scale * f - f) @ w
        # as test_clamp_edit_matches_numpy
        np.testing.assert_allclose(_Grab.last.double().numpy(), want, atol=2e-5, rtol=1e-5)


def test_per_row_strength_and_last_position(tiny, sae):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    _, x = _resid(tiny, batch, _post_hook(1))
    clamp = FeatureClamp(sae, [7], value=6.0, positions="last", name="c")
    with steer(tiny, clamp) as s, runtime.attached(tiny, [(_post_hook(1), _Grab())]):
        s.set_strength("c", [0.0, 1.0])
        steered_forward(tiny, batch, s)
    got = _Grab.last
    assert torch.equal(got[0], x[0])  # strength 0 row untouched
    assert torch.equal(got[1, :-1], x[1, :-1])  # only the last prompt position edited
    assert not torch.equal(got[1, -1], x[1, -1])


def test_clamp_delta_zero_when_target_equals_current():
    f = torch.tensor([[1.5, 0.0], [2.0, 3.0]])
    w = torch.randn(2, 5)
    assert torch.equal(clamp_delta(f, w, None, 1.0), torch.zeros(2, 5))
    d = clamp_delta(f, w, torch.tensor([1.5, 0.0]), None)
    assert torch.equal(d[0], torch.zeros(5))
    # float32 matmul of 2 terms vs float64 reference: rounding only
    np.testing.assert_allclose(d[1].numpy(), (np.array([-0.5, -3.0]) @ w.double().numpy()),
                               rtol=1e-6, atol=1e-6)


def test_general_path_matches_fast_path(tiny):
    sae = make_sae(seed=5)
    assert fast_encodable(sae)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    clamp = FeatureClamp(sae, [1, 9], value=[3.0, 0.5])
    outs = []
    for fast in (True, False):
        bound = clamp.bind(tiny)
        bound.fast = fast
        _, x = _resid(tiny, batch, _post_hook(1))
        outs.append(bound.apply(x, 1, _post_hook(1), 1.0, None, PositionContext()))
    # decode(f') - decode(f) (two 256-term float32 matmuls) vs the 2-row edit: ~1e-6 relative
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip(tiny, sae, tmp_path):
    src = save_sae(make_sae(seed=3), tmp_path / "sae")
    clamp = FeatureClamp(sae, [3, 40], value=[2.0, -1.0], source=str(src), positions="prompt",
                         strength=0.5, name="clamp")
    save_intervention(clamp, tmp_path / "iv")
    back = load_intervention(tmp_path / "iv", tiny)
    assert isinstance(back, FeatureClamp)
    assert back.features == (3, 40) and back.value == (2.0, -1.0) and back.scale is None
    assert back.common() == clamp.common() and back.source == str(src)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    logits = []
    for c in (clamp, back):
        with steer(tiny, c) as s:
            logits.append(steered_forward(tiny, batch, s))
    assert torch.equal(logits[0], logits[1])
    scalar = FeatureClamp(sae, [3], scale=0.0, source=str(src))
    save_intervention(scalar, tmp_path / "iv2")
    assert load_intervention(tmp_path / "iv2").scale == 0.0


def test_load_refuses_a_different_sae(tiny, tmp_path):
    src = save_sae(make_sae(seed=3), tmp_path / "sae")
    save_intervention(FeatureClamp(make_sae(seed=3), [3], value=1.0, source=str(src)),
                      tmp_path / "iv")
    save_sae(make_sae(seed=4), tmp_path / "sae")  # the directory now holds another SAE
    with pytest.raises(InterventionFileError, match="not the one this clamp was saved with"):
        load_intervention(tmp_path / "iv")


def test_save_needs_a_source(sae, tmp_path):
    with pytest.raises(ValueError, match="source="):
        save_intervention(FeatureClamp(sae, [1], value=1.0), tmp_path / "iv")


def test_bad_input(tiny, sae):
    with pytest.raises(ValueError, match=r"valid ids are 0\.\.255"):
        FeatureClamp(sae, [256], value=1.0)
    with pytest.raises(ValueError, match=r"valid ids are 0\.\.255"):
        FeatureClamp(sae, [-1], value=1.0)
    with pytest.raises(ValueError, match="repeated"):
        FeatureClamp(sae, [1, 1], value=1.0)
    for bad in (float("nan"), float("inf"), [1.0, float("nan")]):
        with pytest.raises(ValueError, match="finite"):
            FeatureClamp(sae, [1, 2], value=bad)
    with pytest.raises(ValueError, match="finite"):
        FeatureClamp(sae, [1], scale=float("inf"))
    with pytest.raises(ValueError, match="exactly one of"):
        FeatureClamp(sae, [1])
    with pytest.raises(ValueError, match="exactly one of"):
        FeatureClamp(sae, [1], value=1.0, scale=2.0)
    with pytest.raises(ValueError, match="one per feature"):
        FeatureClamp(sae, [1, 2], value=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="SAELens SAE"):
        FeatureClamp(object(), [1], value=1.0)
    narrow = FeatureClamp(random_sae(32, 64, hook_name="blocks.1.hook_resid_pre"), [1], value=1.0)
    nosite = FeatureClamp(random_sae(64, 64, hook_name="blocks.7.hook_resid_pre"), [1], value=1.0)
    other = FeatureClamp(random_sae(64, 64, hook_name="blocks.1.hook_resid_pre",
                                    model_name="gpt2-small"), [1], value=1.0)
    for bad, msg in ((narrow, "d_in is 32"), (nosite, "does not exist in the model"),
                     (other, "trained on 'gpt2-small'")):
        with pytest.raises(ValueError, match=msg), steer(tiny, bad):
            pass
    assert runtime.attached_hook_count(tiny) == 0


def test_hooks_removed_when_the_block_raises(tiny, sae):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    clamp = FeatureClamp(sae, [3], value=9.0)
    with pytest.raises(RuntimeError, match="boom"), steer(tiny, clamp) as s:
        steered_forward(tiny, batch, s)
        raise RuntimeError("boom")
    assert runtime.attached_hook_count(tiny) == 0


@pytest.mark.embedded
def test_shipped_sae_clamp_nothing_identity_and_effect(smol):
    from steerlens.sae import list_shipped_saes, load_sae

    name = next(n for n in list_shipped_saes() if n.startswith("smollm2-135m-instruct"))
    sae = load_sae(name)
    batch = runtime.encode_prompts(smol, ["The weather today is", "I think that"], chat=False)
    base = runtime.forward(smol, batch)
    for clamp in (FeatureClamp(sae, [], value=1.0, source=name),
                  FeatureClamp(sae, [3055, 1817], scale=1.0, source=name)):
        with steer(smol, clamp) as s:
            assert torch.equal(steered_forward(smol, batch, s), base)
    with steer(smol, FeatureClamp(sae, [3055], value=30.0)) as s:
        moved = steered_forward(smol, batch, s)
    assert float((moved - base).abs().max()) > 0.1
    with pytest.raises(ValueError, match=r"valid ids are 0\.\.4607"):
        FeatureClamp(sae, [4608], value=1.0)


def test_kv_cached_generation_matches_uncached(tiny, sae):
    from steerlens.generate import generate

    for clamp in (FeatureClamp(sae, [3, 40], value=8.0),
                  FeatureClamp(sae, [7], scale=0.0, positions="generated")):
        runs = [generate(tiny, PROMPTS, steering=clamp, max_new_tokens=6, use_kv_cache=c,
                         chat=False) for c in (True, False)]
        assert runs[0].tokens == runs[1].tokens
