"""Logit lens: vector lens algebra and residual lens vs an independent run_with_cache loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.backend.runtime import direction_logits
from steerlens.measures import residual_lens, vector_lens
from steerlens.vectors import SteeringVector

# Bad input raises ValueError; under pytest's --jaxtyping-packages hook, beartype rejects ill-typed
# arguments first with a TypeError (jaxtyping.TypeCheckError) that also names the valid options.
BAD_INPUT = (ValueError, TypeError)


@pytest.fixture(scope="module")
def vec(tiny):
    g = torch.Generator().manual_seed(1)
    return SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)},
                          model_id="tiny-random")


def test_vector_lens_matches_numpy_projection(tiny, vec):
    w = tiny.ln_final.w.detach().numpy().astype(np.float64)
    wu = tiny.W_U.detach().numpy().astype(np.float64)
    for norm, fn in (("scale", lambda v: (v * w) @ wu), ("none", lambda v: v @ wu)):
        lens = vector_lens(tiny, vec, k=5, norm=norm)
        assert lens.layers == (0, 1)
        for layer in lens.layers:
            ref = fn(vec[layer].numpy().astype(np.float64))
            order = np.argsort(-ref)
            assert [s.id for s in lens.promoted[layer]] == order[:5].tolist()
            assert [s.id for s in lens.suppressed[layer]] == order[::-1][:5].tolist()
            # float32 unembedding (64-term dot products) vs float64 numpy: ~1e-6 relative
            np.testing.assert_allclose([s.value for s in lens.promoted[layer]], ref[order[:5]],
                                       rtol=1e-4, atol=1e-4)
            assert [s.token for s in lens.promoted[layer]] == [
                runtime.decode(tiny, [int(i)], skip_special=False) for i in order[:5]]


def test_full_norm_is_rms_normalised_scale(tiny, vec):
    """RMSNorm of a bare direction = scale lens / rms(v): same ranking, norm-free values."""
    v = vec[1]
    full = direction_logits(tiny, v, norm="full").double()
    scale = direction_logits(tiny, v, norm="scale").double()
    rms = torch.sqrt(v.double().pow(2).mean() + tiny.cfg.eps)
    # float32 RMSNorm + unembedding vs the float64 rms; the 3v cases add eps's tiny effect
    torch.testing.assert_close(full, scale / rms, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(direction_logits(tiny, 3 * v, norm="full"),
                               direction_logits(tiny, v, norm="full"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(direction_logits(tiny, 3 * v, norm="scale"),
                               3 * direction_logits(tiny, v, norm="scale"), rtol=1e-4, atol=1e-4)


def test_vector_lens_bad_input(tiny, vec):
    with pytest.raises(BAD_INPUT, match="valid choices|Expected type"):
        vector_lens(tiny, vec, norm="layernorm")
    with pytest.raises(ValueError, match="k must be"):
        vector_lens(tiny, vec, k=0)
    with pytest.raises(ValueError, match="d_model"):
        direction_logits(tiny, torch.randn(10))
    with pytest.raises(BAD_INPUT, match="SteeringVector"):
        vector_lens(tiny, torch.randn(64))


def _hand_lens(model, prompt, pos, hook=None):
    """Independent: run_with_cache on the raw token ids, then ln_final + W_U per layer by hand."""
    ids = runtime.prompt_ids(model, prompt, chat=False)
    toks = torch.tensor([ids])
    hooks = [] if hook is None else [hook]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits, cache = model.run_with_cache(toks)
    L = model.cfg.n_layers
    resid = [cache[f"blocks.{i}.hook_resid_pre"][0, pos] for i in range(L)]
    resid.append(cache[f"blocks.{L - 1}.hook_resid_post"][0, pos])
    with torch.no_grad():
        x = torch.stack(resid).double()
        w = model.ln_final.w.double() if hasattr(model.ln_final, "w") else 1.0
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + model.cfg.eps) * w
        probs = (x @ model.W_U.double() + model.b_U.double()).softmax(-1)
        return probs, logits[0, pos].double().softmax(-1)


def test_residual_lens_matches_hand_loop_and_final_logits(tiny):
    lens = residual_lens(tiny, "The cat sat", chat=False, k=4, target="a")
    probs, final = _hand_lens(tiny, "The cat sat", -1)
    assert lens.n_rows == tiny.cfg.n_layers + 1
    assert lens.labels[-1] == f"resid_post {tiny.cfg.n_layers - 1}"
    top = probs.topk(4, dim=-1)
    assert [list(r) for r in lens.top_ids] == top.indices.tolist()
    # lens: float32 ln_final + unembed of the cached residual; hand: the same in float64
    np.testing.assert_allclose(lens.top_probs, top.values.numpy(), rtol=1e-4, atol=1e-6)
    # the last row of the lens is the model's own output distribution
    np.testing.assert_allclose(lens.top_probs[-1], final.topk(4).values.numpy(), rtol=1e-4, atol=1e-6)
    tid = lens.target_id
    np.testing.assert_allclose(lens.target_prob, probs[:, tid].numpy(), rtol=1e-4, atol=1e-7)
    assert lens.target_rank == tuple(int((p > p[tid]).sum()) for p in probs)


def test_residual_lens_position_and_target_rank_zero(tiny):
    lens = residual_lens(tiny, "The cat sat", chat=False, k=3, read_at=2)
    probs, _ = _hand_lens(tiny, "The cat sat", 2)
    assert lens.read_at == 2
    assert [list(r) for r in lens.top_ids] == probs.topk(3, dim=-1).indices.tolist()
    top_final = lens.top_ids[-1][0]
    again = residual_lens(tiny, "The cat sat", chat=False, k=3, read_at=2, target=top_final)
    assert again.target_rank[-1] == 0


def test_residual_lens_steered_reads_injection(tiny, vec):
    single = vec.select([1])
    lens = residual_lens(tiny, "hello", chat=False, k=5, steering=single, strength=2.0)

    def add(act, hook):
        return act + 2.0 * single[1]

    probs, _ = _hand_lens(tiny, "hello", -1, hook=("blocks.1.hook_resid_pre", add))
    assert lens.steered
    np.testing.assert_allclose(lens.top_probs, probs.topk(5, dim=-1).values.numpy(),
                               rtol=1e-4, atol=1e-6)
    base = residual_lens(tiny, "hello", chat=False, k=5)
    assert base.top_ids[0] == lens.top_ids[0]  # layer 0 is below the injection
    assert base.top_probs[1] != lens.top_probs[1]


def test_residual_lens_bad_input(tiny):
    with pytest.raises(ValueError, match="read_at"):
        residual_lens(tiny, "abc", chat=False, read_at=50)
    with pytest.raises(ValueError, match="exactly one token"):
        residual_lens(tiny, "abc", chat=False, target="xyz")
    with pytest.raises(ValueError, match="non-empty"):
        residual_lens(tiny, "")


@pytest.mark.embedded
def test_residual_lens_smol_final_layer_is_model_output(smol):
    lens = residual_lens(smol, "The capital of France is", chat=False, k=5, target=" Paris")
    batch = runtime.encode_prompts(smol, ["The capital of France is"], chat=False)
    probs = runtime.forward(smol, batch)[0, -1].double().softmax(-1)
    top = probs.topk(5)
    assert list(lens.top_ids[-1]) == top.indices.tolist()
    # 30 float32 layers, the lens's path (cache + ln_final + W_U) vs the model's forward
    np.testing.assert_allclose(lens.top_probs[-1], top.values.numpy(), rtol=1e-3, atol=1e-5)
    assert lens.top_tokens[-1][0] == " Paris" and lens.target_rank[-1] == 0
    # the answer emerges with depth: rank at the embedding is far worse than at the output
    assert lens.target_rank[0] > 100
