"""Per-head steering: the exact algebra (attention output moves by v @ W_O[head], other heads' z
untouched), zero and mean ablation, strengths and positions, KV-cache exactness, grouped-query
addressing, save/load and bad input, on the tiny model (4 query / 2 key-value heads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.interventions import load_intervention, save_intervention
from steerlens.interventions.heads import HeadAblation, HeadSteer, check_head, head_mean, kv_head
from steerlens.steer import Injection, steer, steered_forward
from steerlens.vectors import SteeringVector

PROMPTS = ["Hello there, friend", "Hi", "The cat sat"]
LAYER = 1
Z = runtime.attention_hook_name(LAYER, "z")
ATTN_OUT = runtime.hook_name(LAYER, "attn_out")


def _vec(seed=0, d=16):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _run(model, batch, interventions=None):
    """(logits, z at LAYER after the edit, attn_out at LAYER)."""
    got = {}

    def grab(name):
        def f(act, hook):
            got[name] = act.detach().clone()
        return f

    hooks = [(Z, grab("z")), (ATTN_OUT, grab("attn_out"))]
    if interventions is None:
        with runtime.attached(model, hooks):
            logits = runtime.forward(model, batch)
    else:
        with steer(model, interventions) as s, runtime.attached(model, hooks):
            logits = steered_forward(model, batch, s)
    return logits, got["z"], got["attn_out"]


def _w_o(model, layer):
    # tests may read weights directly (the library goes through steerlens.backend)
    return model.blocks[layer].attn.W_O.detach()  # [n_heads, d_head, d_model]


@pytest.mark.parametrize("head", [0, 3])
def test_attention_output_moves_by_v_times_w_o(tiny, head):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    _, z0, out0 = _run(tiny, batch)
    v = _vec(head)
    _, z1, out1 = _run(tiny, batch, HeadSteer(LAYER, head, v, strength=1.5))
    others = [h for h in range(4) if h != head]
    assert torch.equal(z1[:, :, others], z0[:, :, others])  # other heads' z untouched, exactly
    # z + 1.5 v: one float32 multiply-add per entry
    torch.testing.assert_close(z1[:, :, head], z0[:, :, head] + 1.5 * v, rtol=0, atol=1e-6)
    want = 1.5 * v.double().numpy() @ _w_o(tiny, LAYER)[head].double().numpy()  # [d_model]
    delta = (out1 - out0).double().numpy()
    # attn_out is one float32 matmul over 4 x 16 terms on each side (|out| ~ 1): ~1e-6 absolute
    np.testing.assert_allclose(delta, np.broadcast_to(want, delta.shape), atol=1e-5, rtol=0)
    assert np.abs(want).max() > 0.1


def test_zero_and_mean_ablation(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    _, z0, out0 = _run(tiny, batch)
    _, z1, out1 = _run(tiny, batch, HeadAblation(LAYER, 2))
    assert torch.equal(z1[:, :, 2], torch.zeros_like(z1[:, :, 2]))  # lerp at weight 1: exact
    assert torch.equal(z1[:, :, [0, 1, 3]], z0[:, :, [0, 1, 3]])
    want = -np.einsum("bpd,dm->bpm", z0[:, :, 2].double().numpy(),
                      _w_o(tiny, LAYER)[2].double().numpy())
    np.testing.assert_allclose((out1 - out0).double().numpy(), want, atol=1e-5, rtol=0)  # as above

    ref = ["the reference text", "another one here"]
    mean = head_mean(tiny, ref, LAYER, 2, chat=False)
    rb = runtime.encode_prompts(tiny, ref, chat=False)
    _, zr, _ = _run(tiny, rb)
    real = rb.attention_mask.bool()
    # float64 mean over the real tokens, independent of head_mean's chunked sum
    want_mean = zr[:, :, 2][real].double().mean(0)
    torch.testing.assert_close(mean.double(), want_mean, rtol=0, atol=1e-6)
    _, z2, _ = _run(tiny, batch, HeadAblation(LAYER, 2, mean))
    assert torch.equal(z2[:, :, 2], mean.expand_as(z2[:, :, 2]))


def test_strength_per_row_and_positions(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    _, z0, _ = _run(tiny, batch)
    abl = HeadAblation(LAYER, 1, strength=0.25)
    _, z1, _ = _run(tiny, batch, abl)
    # lerp(z, 0, 0.25) = z - 0.25 z: one float32 op per entry
    torch.testing.assert_close(z1[:, :, 1], 0.75 * z0[:, :, 1], rtol=1e-6, atol=1e-7)
    v = _vec(4)
    with steer(tiny, HeadSteer(LAYER, 1, v, positions="last", name="h")) as s, \
            runtime.attached(tiny, [(Z, _Grab())]):
        s.set_strength("h", [0.0, 1.0, 2.0])
        steered_forward(tiny, batch, s)
    z2 = _Grab.last
    assert torch.equal(z2[0], z0[0])  # strength 0
    assert torch.equal(z2[1:, :-1], z0[1:, :-1])  # only the last prompt position
    torch.testing.assert_close(z2[2, -1, 1], z0[2, -1, 1] + 2 * v, rtol=0, atol=1e-6)


class _Grab:
    last: torch.Tensor | None = None

    def __call__(self, act, hook):
        _Grab.last = act.detach().clone()


def test_kv_cached_generation_matches_uncached(tiny):
    v = _vec(7) * 5
    for iv in (HeadSteer(LAYER, 3, v), HeadAblation(0, 1, positions="generated")):
        runs = [generate(tiny, PROMPTS[:2], max_new_tokens=6, steering=iv, use_kv_cache=c,
                         chat=False) for c in (True, False)]
        assert runs[0].tokens == runs[1].tokens


def test_composes_with_additive_steering(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    vec = SteeringVector({LAYER: _vec(9, 64)})
    base, _, _ = _run(tiny, batch, Injection(vec, 1.0))
    both, _, _ = _run(tiny, batch, [Injection(vec, 1.0), HeadSteer(LAYER, 0, _vec(2), strength=0.0)])
    assert torch.equal(base, both)


def test_grouped_query_addressing(tiny):
    assert [kv_head(tiny, h) for h in range(4)] == [0, 0, 1, 1]
    assert check_head(tiny, 1, 3) == (1, 3)


def test_save_load(tiny, tmp_path):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    mean = head_mean(tiny, ["abc"], 0, 1)
    for i, iv in enumerate([HeadSteer(1, 2, _vec(3), strength=0.5, positions="prompt", name="x"),
                            HeadAblation(0, 1), HeadAblation(0, 1, mean, strength=0.75)]):
        save_intervention(iv, tmp_path / str(i))
        back = load_intervention(tmp_path / str(i), tiny)
        assert type(back) is type(iv) and back.common() == iv.common()
        assert (back.layer, back.head) == (iv.layer, iv.head)
        logits = [_run(tiny, batch, x)[0] for x in (iv, back)]
        assert torch.equal(logits[0], logits[1])


def test_bad_input(tiny):
    bad = HeadSteer(1, 4, _vec())
    with pytest.raises(ValueError, match=r"valid heads are 0\.\.3; its 4 query heads share 2"), \
            steer(tiny, bad):
        pass
    with pytest.raises(ValueError, match=r"valid heads are 0\.\.3"):
        head_mean(tiny, ["abc"], 0, 9)
    with pytest.raises(ValueError, match="layer"), steer(tiny, HeadAblation(2, 0)):
        pass
    with pytest.raises(ValueError, match="d_head 16"), steer(tiny, HeadSteer(1, 0, torch.ones(8))):
        pass
    with pytest.raises(ValueError, match="non-finite"):
        HeadSteer(1, 0, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="zero"):
        HeadSteer(1, 0, torch.zeros(16))
    with pytest.raises(ValueError, match="int >= 0"):
        HeadSteer(1, -1, _vec())
    with pytest.raises(ValueError, match="1-D"):
        HeadAblation(1, 0, torch.ones(2, 16))
    assert runtime.attached_hook_count(tiny) == 0


def test_gap_response_figure():
    from steerlens.figures.heads import head_gap_response

    rows = [{"layer": la, "head": h, "kv_head": h // 2, "key_gap": 0.1 * h + la,
             "pattern_gap": 0.2 * h, "kl_bits": 0.01 * (h + 1)} for la in (3, 4) for h in range(4)]
    fig = head_gap_response(rows, model_name="tiny")
    kv, q = fig.data
    assert len(kv.x) == 4 and len(q.x) == 8  # 2 layers x 2 kv heads; 2 layers x 4 query heads
    # a kv point's response is the mean over its query heads (heads 0 and 1 of layer 3)
    assert kv.y[0] == pytest.approx((0.01 + 0.02) / 2)
    with pytest.raises(ValueError, match="at least one row"):
        head_gap_response([])
    with pytest.raises(ValueError, match="lack the columns"):
        head_gap_response([{"layer": 0}])
