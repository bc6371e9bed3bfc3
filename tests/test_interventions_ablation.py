"""Directional ablation: exact algebra against a float64 hand computation, targets, strengths,
positions and KV-cache exactness, composition with additive steering, saving and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.extract import Activations
from steerlens.generate import generate
from steerlens.interventions import load_intervention, save_intervention
from steerlens.interventions.ablation import RESIDUAL_SITES, Ablation, ablation_target
from steerlens.steer import Injection, steer, steered_forward
from steerlens.vectors import SteeringVector

PROMPTS = ["Hello there, friend", "Hi", "The cat sat"]


def _dir(seed=0, d=64):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _resid_after_block0(tiny, batch, steerer=None):
    """resid_post of block 0 (stop_at_layer=1 returns it after its hooks ran)."""
    return steered_forward(tiny, batch, steerer, stop_at_layer=1, return_type=None)


def _hand(x, r, strength=1.0, target=0.0, mask=None):
    """x - s * ((x . r^) - t) r^ in float64 numpy; s may be per row, mask [b, p]."""
    x = x.double().numpy()
    r = r.double().numpy()
    r = r / np.linalg.norm(r)
    s = np.asarray(strength, dtype=float).reshape(-1, 1, 1) if np.ndim(strength) else strength
    coef = (x @ r - target)[..., None]
    m = 1.0 if mask is None else np.asarray(mask, dtype=float)[..., None]
    return x - m * s * coef * r


def test_exact_algebra_at_one_site(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    r = _dir()
    x = _resid_after_block0(tiny, batch)
    with steer(tiny, Ablation(r, layers=[0], components=["resid_post"])) as s:
        got = _resid_after_block0(tiny, batch, s)
    # one float32 path (dot, multiply, subtract) vs float64: values O(1-10), atol 1e-5
    np.testing.assert_allclose(got.double().numpy(), _hand(x, r), atol=1e-5, rtol=0)
    # the component along r is gone (float32 rounding of a dot over 64 entries)
    rhat = r / r.norm()
    assert float((got @ rhat).abs().max()) < 1e-5
    assert float((x @ rhat).abs().max()) > 0.1  # it was there before


def test_target_and_fractional_per_row_strength(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    r = _dir(1)
    x = _resid_after_block0(tiny, batch)
    abl = Ablation(r, target=0.75, layers=[0], components="resid_post", name="abl")
    with steer(tiny, abl) as s:
        got = _resid_after_block0(tiny, batch, s)
        rhat = r / r.norm()
        torch.testing.assert_close(got @ rhat, torch.full(got.shape[:2], 0.75), atol=1e-5, rtol=0)
        s.set_strength("abl", [0.0, 0.5, 1.0])
        rows = _resid_after_block0(tiny, batch, s)
    np.testing.assert_allclose(rows.double().numpy(), _hand(x, r, [0.0, 0.5, 1.0], 0.75),
                               atol=1e-5, rtol=0)
    assert torch.equal(rows[0], x[0])  # strength 0 row: multiplied by exactly 0


def test_strength_zero_is_identity_and_hooks_removed(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    base = runtime.forward(tiny, batch)
    with steer(tiny, Ablation(_dir(), strength=0.0)) as s:
        assert torch.equal(steered_forward(tiny, batch, s), base)
    with pytest.raises(RuntimeError), steer(tiny, Ablation(_dir())):
        raise RuntimeError("inside")
    assert runtime.attached_hook_count(tiny) == 0


@pytest.mark.parametrize("mode", ["prompt", "last", "first"])
def test_position_modes(tiny, mode):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    r = _dir(2)
    x = _resid_after_block0(tiny, batch)
    with steer(tiny, Ablation(r, layers=0, components=["resid_post"], positions=mode)) as s:
        got = _resid_after_block0(tiny, batch, s)
    width = batch.tokens.shape[1]
    mask = np.zeros((len(PROMPTS), width))
    if mode == "prompt":
        mask[:] = 1
    elif mode == "last":
        mask[:, -1] = 1
    else:
        mask[np.arange(len(PROMPTS)), batch.span_start.numpy()] = 1
    np.testing.assert_allclose(got.double().numpy(), _hand(x, r, mask=mask), atol=1e-5, rtol=0)
    assert torch.equal(got[torch.from_numpy(mask == 0)], x[torch.from_numpy(mask == 0)])


def test_default_sites_every_layer_and_residual_site(tiny):
    abl = Ablation(_dir())
    n = runtime.n_layers(tiny)
    assert abl.sites(tiny) == [(runtime.hook_name(la, c), la) for la in range(n)
                               for c in RESIDUAL_SITES]
    multi = SteeringVector({0: _dir(0), 1: _dir(1)})
    assert Ablation(multi).ablated_layers(tiny) == [0, 1]
    with pytest.raises(ValueError, match="no entry for layers"):
        Ablation(SteeringVector({1: _dir(1)}) + SteeringVector({0: _dir(0)}), layers=[0, 1, 5])


def test_composes_with_injection_ablate_first(tiny):
    """At one hook the ablation runs before the addition, whatever the list order."""
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    r, v = _dir(3), _dir(4)
    x = _resid_after_block0(tiny, batch)
    inj = Injection(SteeringVector({0: v}, component="resid_post"), 2.0)
    abl = Ablation(r, layers=[0], components=["resid_post"])
    for items in ([inj, abl], [abl, inj]):
        with steer(tiny, items) as s:
            got = _resid_after_block0(tiny, batch, s)
        expect = _hand(x, r) + 2.0 * v.double().numpy()
        np.testing.assert_allclose(got.double().numpy(), expect, atol=2e-5, rtol=0)
    # the added vector keeps its component along r (it was not ablated away)
    rhat = r / r.norm()
    torch.testing.assert_close(got @ rhat, torch.full(got.shape[:2], float(2.0 * v @ rhat)),
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("settings", [dict(positions="generated", start_step=2),
                                      dict(positions="all", start_step=1, stop_step=4),
                                      dict(positions="last")])
def test_cached_and_uncached_generation_agree(tiny, settings):
    abl = Ablation(_dir(5), target=0.3, **settings)
    out = [generate(tiny, PROMPTS, abl, max_new_tokens=6, stop_at_eos=False, use_kv_cache=c)
           for c in (True, False)]
    assert out[0].tokens == out[1].tokens
    plain = generate(tiny, PROMPTS, None, max_new_tokens=6, stop_at_eos=False)
    full = generate(tiny, PROMPTS, Ablation(_dir(5), target=0.3), max_new_tokens=6,
                    stop_at_eos=False)
    assert full.tokens != plain.tokens  # the ablation does change this model's output


def test_ablation_target_is_mean_projection():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(10, 64, generator=g) + 3.0
    r = _dir(6)
    rhat = r.double().numpy() / np.linalg.norm(r.double().numpy())
    want = float(np.mean(acts.double().numpy() @ rhat))
    assert ablation_target(r, acts) == pytest.approx(want, rel=1e-12)
    per = ablation_target(SteeringVector({0: r, 1: 2 * r}), {0: acts, 1: acts[:3]})
    want1 = float(np.mean(acts[:3].double().numpy() @ rhat))
    assert per == pytest.approx({0: want, 1: want1}, rel=1e-12)
    act_obj = Activations({0: acts}, "resid_pre", "last", torch.arange(10))
    assert ablation_target(r, act_obj) == pytest.approx({0: want}, rel=1e-12)
    with pytest.raises(ValueError, match=r"\[n >= 1, 64\]"):
        ablation_target(r, torch.zeros(0, 64))
    with pytest.raises(ValueError, match="non-finite"):
        ablation_target(r, torch.full((2, 64), float("nan")))


def test_save_load_round_trip(tiny, tmp_path):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    abl = Ablation(SteeringVector({0: _dir(7), 1: _dir(8)}, model_id="tiny-random"),
                   target={0: 0.5, 1: -0.25}, components=("resid_pre", "mlp_out"),
                   strength=0.8, positions="prompt", start_step=0, stop_step=None, name="refusal")
    save_intervention(abl, tmp_path / "abl")
    back = load_intervention(tmp_path / "abl", model=tiny)
    assert isinstance(back, Ablation)
    assert back.target == {0: 0.5, 1: -0.25} and back.components == ("resid_pre", "mlp_out")
    assert back.common() == abl.common() and back.layers is None
    assert all(torch.equal(back.direction[la], abl.direction[la]) for la in (0, 1))
    with steer(tiny, abl) as s:
        a = steered_forward(tiny, batch, s)
    with steer(tiny, back) as s:
        b = steered_forward(tiny, batch, s)
    assert torch.equal(a, b)  # same description, same computation


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="nonzero norm"):
        Ablation(torch.zeros(64))
    with pytest.raises(ValueError, match="non-finite"):
        Ablation(torch.tensor([1.0, float("inf")] + [0.0] * 62))
    with pytest.raises(ValueError, match="1-D"):
        Ablation(torch.ones(2, 64))
    with pytest.raises(ValueError, match="valid components are"):
        Ablation(_dir(), components=["resid_middle"])
    with pytest.raises(ValueError, match="finite number"):
        Ablation(_dir(), target=float("nan"))
    with pytest.raises(ValueError, match="strength"):
        Ablation(_dir(), strength=float("inf"))
    with pytest.raises(ValueError, match=r"layers 0\.\.1"), steer(tiny, Ablation(_dir(), layers=[5])):
        pass
    with pytest.raises(ValueError, match="d_model 64"), steer(tiny, Ablation(torch.ones(32))):
        pass
    with pytest.raises(ValueError, match="not ablated"), steer(tiny, Ablation(_dir(), layers=[0],
                                                                          target={1: 0.5})):
        pass
    assert runtime.attached_hook_count(tiny) == 0


@pytest.mark.embedded
def test_cached_and_uncached_agree_smollm2(smol):
    d = runtime.d_model(smol)
    abl = Ablation(_dir(9, d), target=2.0, positions="generated", start_step=1)
    prompts = ["Tell me about your weekend.", "How do I bake bread?"]
    out = [generate(smol, prompts, abl, max_new_tokens=5, stop_at_eos=False, use_kv_cache=c)
           for c in (True, False)]
    assert out[0].tokens == out[1].tokens
