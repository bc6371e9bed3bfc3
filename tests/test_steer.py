"""Injection: exact algebra at the chosen positions only, hook hygiene, multi-vector, schedules."""

from __future__ import annotations

import pytest
import torch

from steerlens.backend import runtime
from steerlens.steer import Injection, schedule, steer, steered_forward
from steerlens.vectors import SteeringVector

PROMPTS = ["Hello there, friend", "Hi"]


def _vec(tiny, layers=(1,), seed=0, component="resid_pre"):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({lay: torch.randn(tiny.cfg.d_model, generator=g) for lay in layers},
                          component=component, model_id="tiny-random")


def _capture(tiny, batch, name, steerer=None):
    """Activation at hook `name` after any steering hooks (caching hook registered last)."""
    store = {}

    def grab(act, hook):
        store["x"] = act.detach().clone()

    with runtime.attached(tiny, [(name, grab)]):
        if steerer is None:
            runtime.forward(tiny, batch)
        else:
            steered_forward(tiny, batch, steerer)
    return store["x"]


@pytest.mark.parametrize("component", ["resid_pre", "resid_post", "mlp_out", "attn_out"])
def test_exact_algebra_all_positions(tiny, component):
    v = _vec(tiny, component=component)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    name = runtime.hook_name(1, component)
    base = _capture(tiny, batch, name)
    with steer(tiny, v, 2.5) as s:
        steered = _capture(tiny, batch, name, s)
    # exact algebra but for float32 rounding of the add (values O(10): an ulp is ~1e-6, and the
    # hook may associate strength * v differently); "exact" below means the same 1e-5
    torch.testing.assert_close(steered, base + 2.5 * v[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["prompt", "generated", "first", "last"])
def test_exact_algebra_position_modes(tiny, mode):
    v = _vec(tiny)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    name = runtime.hook_name(1, "resid_pre")
    base = _capture(tiny, batch, name)
    with steer(tiny, v, -1.5, positions=mode) as s:
        steered = _capture(tiny, batch, name, s)
    T = batch.tokens.shape[1]
    expect = torch.zeros(2, T, dtype=torch.bool)
    if mode == "prompt":
        expect[:] = True
    elif mode == "last":
        expect[:, T - 1] = True
    elif mode == "first":
        expect[0, batch.span_start[0]] = True
        expect[1, batch.span_start[1]] = True
    diff = steered - base
    torch.testing.assert_close(diff[expect], (-1.5 * v[1]).expand(int(expect.sum()), -1),
                               atol=1e-5, rtol=0)
    assert diff[~expect].abs().max() == 0 if (~expect).any() else True  # untouched: bit-exact


def test_downstream_is_unchanged_below_site(tiny):
    v = _vec(tiny, layers=(1,))
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    name = runtime.hook_name(0, "resid_post")
    base = _capture(tiny, batch, name)
    with steer(tiny, v, 5.0) as s:  # the same ops below the site: bit-exact
        assert torch.equal(_capture(tiny, batch, name, s), base)


def test_hooks_removed_even_on_error(tiny):
    v = _vec(tiny)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    before = runtime.forward(tiny, batch)
    with pytest.raises(RuntimeError, match="boom"), steer(tiny, v, 3.0):
        assert sum(len(h._forward_hooks) for h in tiny.hook_dict.values()) == 1
        raise RuntimeError("boom")
    assert all(len(h._forward_hooks) == 0 for h in tiny.hook_dict.values())
    # hooks gone: the same forward again, bit-exact
    torch.testing.assert_close(runtime.forward(tiny, batch), before, atol=0, rtol=0)


def test_multi_vector_sums_and_live_strength(tiny):
    a, b = _vec(tiny, seed=1), _vec(tiny, seed=2)
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    name = runtime.hook_name(1, "resid_pre")
    base = _capture(tiny, batch, name)
    with steer(tiny, [(a, 1.0), (b, -2.0)]) as s:  # sums in another order: float32 ulps (1e-5)
        got = _capture(tiny, batch, name, s)
        torch.testing.assert_close(got, base + a[1] - 2.0 * b[1], atol=1e-5, rtol=0)
        s.set_strength(1, 0.5)
        got = _capture(tiny, batch, name, s)
        torch.testing.assert_close(got, base + a[1] + 0.5 * b[1], atol=1e-5, rtol=0)
        s.set_strength(0, [1.0, 3.0])  # one strength per batch row
        got = _capture(tiny, batch, name, s)
        torch.testing.assert_close(got[1], base[1] + 3.0 * a[1] + 0.5 * b[1], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="out of range"):
            s.set_strength(2, 1.0)
        with pytest.raises(ValueError, match="finite"):
            s.set_strength(0, float("inf"))


def test_multi_layer_vector(tiny):
    v = _vec(tiny, layers=(0, 1))
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    name = runtime.hook_name(0, "resid_pre")
    base = _capture(tiny, batch, name)
    with steer(tiny, v, 1.0) as s:
        torch.testing.assert_close(_capture(tiny, batch, name, s), base + v[0], atol=1e-5, rtol=0)


def test_schedule_windows():
    v = SteeringVector({0: torch.ones(4)})
    inj = schedule([(0, v), (3, -v), (5, None)], strength=2.0)
    assert [(i.start_step, i.stop_step) for i in inj] == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="strictly increasing"):
        schedule([(3, v), (1, v)])
    with pytest.raises(ValueError, match="empty"):
        Injection(v, 1.0, "all", 4, 4)


def test_bad_input(tiny):
    v = _vec(tiny)
    with pytest.raises(ValueError, match="finite"):
        Injection(v, float("nan"))
    with pytest.raises(ValueError, match=r"valid values are \['all', 'prompt', 'generated'"):
        Injection(v, 1.0, "middle")  # type: ignore[arg-type]
    wrong_d = SteeringVector({1: torch.ones(32)})
    with pytest.raises(ValueError, match="d_model 32"), steer(tiny, wrong_d, 1.0):
        pass
    with pytest.raises(ValueError, match=r"layers 0\.\.1"), steer(tiny, _vec(tiny, (4,)), 1.0):
        pass
    with pytest.raises(ValueError, match="takes a SteeringVector"), steer(tiny, ["x"]):
        pass
    assert all(len(h._forward_hooks) == 0 for h in tiny.hook_dict.values())


def test_injection_is_an_intervention_and_mixes_with_others(tiny):
    from steerlens.interventions import Ablation, Intervention

    v = _vec(tiny, layers=(0, 1))
    inj = Injection(v, 2.0, "prompt", 0, None, "x")  # the positional API is unchanged
    assert isinstance(inj, Intervention) and inj.kind == "add" and inj.order == 3
    assert inj.sites(tiny) == [("blocks.0.hook_resid_pre", 0), ("blocks.1.hook_resid_pre", 1)]
    assert inj.max_push() == pytest.approx(float(max(v[0].abs().max(), v[1].abs().max())))
    abl = Ablation(_vec(tiny, seed=3)[1], layers=[1], components=["resid_mid"])
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    with steer(tiny, {"add": inj, "abl": abl}, strengths={"abl": 0.0}) as s:
        assert s.names == ["add", "abl"] and s.layers == [0, 1]
        assert s.interventions is s.injections
        both_off = steered_forward(tiny, batch, s)
    with steer(tiny, inj) as s:
        assert torch.equal(steered_forward(tiny, batch, s), both_off)  # ablation at 0 is a no-op
    with steer(tiny, [v, (v, 0.5), abl]) as s:
        assert s.strengths.tolist() == [1.0, 0.5, 1.0]


def test_missing_hook_is_refused(tiny):
    from dataclasses import dataclass, replace

    from steerlens.interventions import Ablation

    @dataclass(frozen=True, eq=False)
    class Elsewhere(Ablation):
        kind = ""  # not registered

        def sites(self, model):
            return [("blocks.0.hook_nowhere", 0)]

    bad = replace(Elsewhere(torch.ones(64)), layers=[0])
    with pytest.raises(ValueError, match="hook_nowhere"), steer(tiny, bad):
        pass
    assert runtime.attached_hook_count(tiny) == 0
