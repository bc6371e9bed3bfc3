"""KL in bits vs scipy.stats.entropy, and the batched/prefix-reusing KL vs a hand hook loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from steerlens.backend import runtime
from steerlens.measures import kl_bits, next_token_kl, per_token_kl
from steerlens.steer import Injection, steer
from steerlens.vectors import SteeringVector

PROMPTS = ["hi there", "a much longer prompt here", "x"]
# Batched (padded, prefix-reusing) float32 KL vs a one-prompt float64-softmax loop. The logits of
# the two paths agree to ~1e-6 relative; a KL between close distributions is a difference of
# near-equal terms, which amplifies that to ~1e-5 relative, hence rtol 1e-4; atol 1e-7 bits for
# KLs near 0.
KL_TOL = dict(rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(3)
    return SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)},
                          model_id="tiny-random")


def test_kl_bits_matches_scipy():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(6, 50, generator=g) * 3, torch.randn(6, 50, generator=g) * 3
    ours = kl_bits(p, q).numpy()
    pp, qq = p.double().softmax(-1).numpy(), q.double().softmax(-1).numpy()
    ref = [scipy.stats.entropy(pp[i], qq[i], base=2) for i in range(6)]
    # kl_bits works in float64 on the same float32 logits scipy gets: float64 rounding only
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert kl_bits(p[:2], p[:2]).abs().max() == 0.0  # identical inputs: every term is exactly 0
    assert kl_bits(p.reshape(2, 3, 50), q.reshape(2, 3, 50)).shape == (2, 3)


def test_kl_bits_zero_probability_terms():
    p = torch.tensor([0.0, 0.0, -math.inf])
    q = torch.tensor([1.0, 0.0, 0.0])
    pp, qq = p.double().softmax(-1).numpy(), q.double().softmax(-1).numpy()
    # 0 * log 0 terms handled as scipy does; float64 on both sides
    assert float(kl_bits(p, q)) == pytest.approx(scipy.stats.entropy(pp, qq, base=2), rel=1e-12)


def test_kl_bits_shape_mismatch():
    with pytest.raises((ValueError, TypeError), match="same shape|vocab"):
        kl_bits(torch.zeros(3, 4), torch.zeros(3, 5))


def _hand_kl(model, prompt, hooks, pos=-1, reverse=False):
    """Independent loop: one prompt, no padding, raw TL hooks, scipy entropy."""
    toks = torch.tensor([runtime.prompt_ids(model, prompt, chat=False)])
    with torch.no_grad():
        base = model(toks)[0].double().softmax(-1)
        with model.hooks(fwd_hooks=hooks):
            steered = model(toks)[0].double().softmax(-1)
    p, q = base.numpy(), steered.numpy()
    if reverse:
        p, q = q, p
    if pos is None:
        return np.array([scipy.stats.entropy(p[i], q[i], base=2) for i in range(len(p))])
    return scipy.stats.entropy(p[pos], q[pos], base=2)


def _adder(direction, strength, only_pos=None):
    def hook(act, hook):
        if only_pos is None:
            return act + strength * direction
        act = act.clone()
        act[:, only_pos] += strength * direction
        return act

    return hook


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_next_token_kl_matches_hand_loop(tiny, vec, reuse_prefix):
    res = next_token_kl(tiny, PROMPTS, vec, 1.5, chat=False, batch_size=2, reuse_prefix=reuse_prefix)
    hooks = [(f"blocks.{lay}.hook_resid_pre", _adder(vec[lay], 1.5)) for lay in vec.layers]
    ref = [_hand_kl(tiny, p, hooks) for p in PROMPTS]
    assert res.n == 3 and res.layers == (0, 1) and res.direction == "KL(base || steered)"
    np.testing.assert_allclose(res.bits, ref, **KL_TOL)
    assert min(res.bits) > 0


def test_next_token_kl_reverse_and_single_upper_layer(tiny, vec):
    single = vec.select([1])
    res = next_token_kl(tiny, PROMPTS, single, -2.0, chat=False, reverse=True)
    hooks = [("blocks.1.hook_resid_pre", _adder(single[1], -2.0))]
    ref = [_hand_kl(tiny, p, hooks, reverse=True) for p in PROMPTS]
    np.testing.assert_allclose(res.bits, ref, **KL_TOL)
    assert res.direction == "KL(steered || base)"


def test_next_token_kl_last_position_mode(tiny, vec):
    single = vec.select([0])
    res = next_token_kl(tiny, PROMPTS, single, 3.0, positions="last", chat=False)
    ref = [_hand_kl(tiny, p, [("blocks.0.hook_resid_pre", _adder(single[0], 3.0, -1))])
           for p in PROMPTS]
    np.testing.assert_allclose(res.bits, ref, **KL_TOL)


def test_next_token_kl_zero_strength_and_injections(tiny, vec):
    zero = next_token_kl(tiny, PROMPTS, vec, 0.0, chat=False)
    assert max(zero.bits) < 1e-9  # 0 * v adds exact zeros: same logits, KL 0 up to rounding
    a = next_token_kl(tiny, PROMPTS, [Injection(vec.select([0]), 1.0), Injection(vec.select([1]), 2.0)],
                      chat=False)
    hooks = [("blocks.0.hook_resid_pre", _adder(vec[0], 1.0)),
             ("blocks.1.hook_resid_pre", _adder(vec[1], 2.0))]
    np.testing.assert_allclose(a.bits, [_hand_kl(tiny, p, hooks) for p in PROMPTS], **KL_TOL)


def test_next_token_kl_bad_input(tiny, vec):
    with pytest.raises(ValueError, match="steering vector"):
        next_token_kl(tiny, PROMPTS, None)
    with pytest.raises(ValueError, match="at least one"):
        next_token_kl(tiny, [], vec, 1.0)
    with pytest.raises(ValueError, match="batch_size"):
        next_token_kl(tiny, PROMPTS, vec, 1.0, batch_size=0)
    with steer(tiny, vec, 1.0) as s, pytest.raises(ValueError, match="active Steerer"):
        next_token_kl(tiny, PROMPTS, s)
    assert not any(h.fwd_hooks for h in tiny.hook_dict.values())  # hooks all removed


def test_per_token_kl_matches_hand_loop(tiny, vec):
    res = per_token_kl(tiny, "hello world", vec, 1.0)
    hooks = [(f"blocks.{lay}.hook_resid_pre", _adder(vec[lay], 1.0)) for lay in vec.layers]
    ref = _hand_kl(tiny, "hello world", hooks, pos=None)
    assert res.n == len(res.tokens) == len("hello world") + 1  # bytes + BOS
    assert res.tokens[0] == "<|bos|>" and "".join(res.tokens[1:]) == "hello world"
    np.testing.assert_allclose(res.bits, ref, **KL_TOL)


def test_per_token_kl_with_prompt_covers_whole_row(tiny, vec):
    res = per_token_kl(tiny, "world", vec, 1.0, prompt="hello", chat=True)
    ids = runtime.prompt_ids(tiny, "hello", chat=True) + runtime.text_ids(tiny, "world")
    assert list(res.ids) == ids


@pytest.mark.embedded
def test_next_token_kl_smol_grows_with_strength(smol):
    """A real sentiment direction: KL grows with strength (mean over prompts)."""
    from steerlens.methods import build_vector
    from steerlens.pairs import load_behaviour

    beh = load_behaviour("sentiment")
    v = build_vector(smol, beh.train[:4], [10], show_progress=False)
    prompts = list(beh.eval_prompts[:3])
    means = [next_token_kl(smol, prompts, v, s).mean for s in (1.0, 4.0)]
    assert 0 < means[0] < means[1]
