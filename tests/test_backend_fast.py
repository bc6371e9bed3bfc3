"""The backend's fast paths against TransformerLens' own: strides, the fast KV cache, last-only logits.

Each fast path is compared with a second copy of the same model kept on TransformerLens' paths
(`fast.disable`, weights untouched). Restrided weights run the same kernels on the same memory
layout, so logits must be bit-identical (`torch.equal`). The fast decode path multiplies grouped
queries against shared key/value heads (GEMMs of another shape than TransformerLens' per-head
ones after `repeat_interleave`) and unembeds only the last position, which changes float32
summation order: logits then agree to a tolerance relative to their scale (float32 unit roundoff
6e-8 over sums of 64-1536 terms, amplified through the blocks: 1e-6 relative on the 2-layer tiny
model, 1e-5 on 30-layer SmolLM2) and greedy tokens must be identical, steered in every position
mode, with schedules and head interventions, cached and uncached.
"""

from __future__ import annotations

import pytest
import torch

from steerlens.backend import fast, load_model, runtime
from steerlens.generate import generate
from steerlens.interventions.heads import HeadAblation, HeadSteer
from steerlens.steer import Injection, schedule, steer, steered_forward
from steerlens.vectors import SteeringVector

PROMPTS = ["Tell me about your weekend.", "Hi", "What is the capital of France, and why?",
           "Write a haiku about the sea."]
POSITIONS = ("all", "prompt", "generated", "first", "last")


def _pair(name: str):
    """(fast model, reference model on TransformerLens' own paths), same weights."""
    ref = load_model(name, device="cpu")
    fast.disable(ref)
    model = load_model(name, device="cpu")
    return model, ref


@pytest.fixture(scope="module")
def tiny_pair():
    return _pair("tiny-random")


@pytest.fixture(scope="module")
def smol_pair():
    return _pair("smollm2-135m-instruct")


def _vec(model, layer: int, seed: int = 0, norm: float = 4.0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(runtime.d_model(model), generator=g)
    return SteeringVector({layer: d / d.norm() * norm})


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    assert diff <= rel * scale, f"max |diff| {diff:.3g} > {rel:g} x scale {scale:.3g}"


def test_restrided_weights_are_views_with_identical_values(tiny_pair):
    model, ref = tiny_pair
    fast.prepare(model)
    mlp, rmlp = model.blocks[0].mlp, ref.blocks[0].mlp
    attn = model.blocks[0].attn
    assert mlp.W_gate.T.is_contiguous() and not rmlp.W_gate.T.is_contiguous()
    assert attn.W_O.permute(2, 0, 1).is_contiguous()
    assert attn.W_Q.permute(0, 2, 1).is_contiguous()
    assert model.unembed.W_U.T.is_contiguous()
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("which", ["tiny", pytest.param("smol", marks=pytest.mark.embedded)])
def test_restrided_logits_bit_identical(which, request):
    model, ref = request.getfixturevalue(f"{which}_pair")
    fast.prepare(model)
    batch = runtime.encode_prompts(model, PROMPTS, chat=True)
    with torch.inference_mode():
        a = model(batch.tokens, attention_mask=batch.attention_mask)
        b = ref(batch.tokens, attention_mask=batch.attention_mask)
    assert torch.equal(a, b)  # same kernels, same layout: exact


@pytest.mark.parametrize("which,rel", [("tiny", 1e-6),
                                       pytest.param("smol", 1e-5, marks=pytest.mark.embedded)])
def test_fast_cache_step_logits_match_transformerlens_cache(which, rel, request):
    model, ref = request.getfixturevalue(f"{which}_pair")
    batch = runtime.encode_prompts(model, PROMPTS, chat=True)
    c_fast = runtime.new_kv_cache(model, len(PROMPTS), 4)  # too small: must grow
    c_ref = runtime.new_kv_cache(ref, len(PROMPTS))
    assert isinstance(c_fast.entries[0], fast.FastCacheEntry)
    assert not isinstance(c_ref.entries[0], fast.FastCacheEntry)
    a = runtime.forward(model, batch, kv_cache=c_fast, last_only=True)
    b = runtime.forward(ref, batch, kv_cache=c_ref)
    assert a.shape == (len(PROMPTS), 1, runtime.d_vocab(model))
    _close(a[:, -1], b[:, -1], rel)
    nxt = b[:, -1].argmax(-1)
    for _ in range(6):
        feed = runtime.TokenBatch(nxt[:, None], torch.ones_like(nxt)[:, None], batch.span_start,
                                  batch.span_end)
        a = runtime.forward(model, feed, kv_cache=c_fast, last_only=True)
        b = runtime.forward(ref, feed, kv_cache=c_ref)
        _close(a[:, -1], b[:, -1], rel)
        assert torch.equal(a[:, -1].argmax(-1), b[:, -1].argmax(-1))
        nxt = b[:, -1].argmax(-1)
    assert c_fast.entries[0].length == c_ref.entries[0].past_keys.shape[1]


def test_plain_block_uses_transformerlens_cache(tiny_pair):
    model, _ = tiny_pair
    with fast.plain(model):
        assert not fast.active(model)
        cache = runtime.new_kv_cache(model, 2)
        assert not isinstance(cache.entries[0], fast.FastCacheEntry)
    assert fast.active(model)


def test_hooks_inside_attention_see_the_same_values(tiny_pair):
    """hook_rot_k (the whole rotated key history), hook_pattern and hook_z fire as in TL."""
    model, ref = tiny_pair
    batch = runtime.encode_prompts(model, PROMPTS, chat=True)
    names = [runtime.attention_hook_name(1, p) for p in ("rot_k", "pattern", "z", "q", "v")]
    seen: dict[int, dict[str, list]] = {0: {}, 1: {}}

    def recorder(store):
        def hook(act, hook):
            store.setdefault(hook.name, []).append(act.detach().clone())
        return hook

    for i, m in enumerate((model, ref)):
        cache = runtime.new_kv_cache(m, len(PROMPTS))
        with runtime.attached(m, [(n, recorder(seen[i])) for n in names]):
            out = runtime.forward(m, batch, kv_cache=cache)
            nxt = out[:, -1].argmax(-1)
            feed = runtime.TokenBatch(nxt[:, None], torch.ones_like(nxt)[:, None],
                                      batch.span_start, batch.span_end)
            runtime.forward(m, feed, kv_cache=cache)
    for n in names:
        assert len(seen[0][n]) == len(seen[1][n]) == 2
        for a, b in zip(seen[0][n], seen[1][n]):
            assert a.shape == b.shape
            _close(a, b, 1e-6)  # two float32 paths (grouped GEMMs), 2 layers
    assert runtime.attached_hook_count(model) == 0


def test_rot_k_hook_edit_applies_to_one_step_only(tiny_pair):
    """A hook replacing rotated keys changes that forward only, as with TL's cache."""
    model, ref = tiny_pair
    batch = runtime.encode_prompts(model, PROMPTS[:2], chat=True)
    outs = []
    for m in (model, ref):
        cache = runtime.new_kv_cache(m, 2)
        with runtime.attached(m, [(runtime.attention_hook_name(0, "rot_k"),
                                   lambda act, hook: act * 0.5)]):
            first = runtime.forward(m, batch, kv_cache=cache)[:, -1]
        nxt = first.argmax(-1)
        feed = runtime.TokenBatch(nxt[:, None], torch.ones_like(nxt)[:, None],
                                  batch.span_start, batch.span_end)
        outs.append((first, runtime.forward(m, feed, kv_cache=cache)[:, -1]))
    for a, b in zip(outs[0], outs[1]):
        _close(a, b, 1e-6)


def _tokens(model, **kw):
    return generate(model, PROMPTS, chat=True, max_new_tokens=10, **kw).tokens


@pytest.mark.parametrize("which", ["tiny", pytest.param("smol", marks=pytest.mark.embedded)])
def test_generation_identical_unsteered_and_steered_all_modes(which, request):
    model, ref = request.getfixturevalue(f"{which}_pair")
    layer = 1 if which == "tiny" else 10
    assert _tokens(model) == _tokens(ref)
    vec = _vec(model, layer, norm=4.0 if which == "tiny" else 8.0)
    for pos in POSITIONS:
        fast_toks = _tokens(model, steering=vec, strength=1.0, positions=pos)
        assert fast_toks == _tokens(ref, steering=vec, strength=1.0, positions=pos), pos
        assert fast_toks == _tokens(model, steering=vec, strength=1.0, positions=pos,
                                    use_kv_cache=False), pos


def test_generation_identical_with_schedule_and_head_edits(tiny_pair):
    model, ref = tiny_pair
    sched = schedule([(0, _vec(model, 0, 1)), (3, _vec(model, 1, 2)), (6, None)], strength=2.0)
    heads = [HeadSteer(1, 3, torch.ones(16), strength=2.0, positions="generated"),
             HeadAblation(0, 1, positions="prompt"),
             Injection(_vec(model, 1, 3), 1.5, "last")]
    for steering in (sched, heads):
        got = _tokens(model, steering=steering)
        assert got == _tokens(ref, steering=steering)
        assert got == _tokens(model, steering=steering, use_kv_cache=False)


def test_per_row_strengths_and_live_changes_in_fast_decode(tiny_pair):
    model, ref = tiny_pair
    vec = _vec(model, 1)
    outs = []
    for m in (model, ref):
        with steer(m, vec) as s:
            s.set_strength(0, [0.0, 2.0, -2.0, 4.0])
            outs.append(generate(m, PROMPTS, steering=s, chat=True, max_new_tokens=8).tokens)
    assert outs[0] == outs[1]


def test_last_only_matches_full_logits(tiny_pair):
    model, _ = tiny_pair
    batch = runtime.encode_prompts(model, PROMPTS, chat=True)
    full = steered_forward(model, batch)
    last = steered_forward(model, batch, last_only=True)
    assert last.shape[1] == 1
    _close(last[:, 0], full[:, -1], 1e-6)  # unembedding GEMM of another shape (M rows)
    with fast.plain(model):
        assert torch.equal(steered_forward(model, batch, last_only=True), full[:, -1:])


def _prefix_store(model) -> dict:
    return model.__dict__.get(fast._PREFIX, {})


@pytest.mark.parametrize("which", ["tiny", pytest.param("smol", marks=pytest.mark.embedded)])
def test_shared_prefix_generation_identical(which, request):
    """Repeated prompts at several strengths (a sweep unit, the arena) share the prefix pass."""
    model, ref = request.getfixturevalue(f"{which}_pair")
    layer = 1 if which == "tiny" else 10
    vec = _vec(model, layer, norm=4.0 if which == "tiny" else 8.0)
    prompts = PROMPTS[:3] * 3
    strengths = [-2.0] * 3 + [1.0] * 3 + [3.0] * 3
    _prefix_store(model).clear()
    outs = []
    for m in (model, ref):
        for pos in ("all", "prompt", "last"):
            with steer(m, vec, 1.0, pos) as s:
                s.set_strength(0, strengths)
                outs.append(generate(m, prompts, steering=s, chat=True, max_new_tokens=8).tokens)
    assert outs[:3] == outs[3:]
    keys = list(_prefix_store(model))
    assert len(keys) == 1 and keys[0][0] == layer  # one prefix: 3 distinct prompts, reused
    assert keys[0][1][0] == 3


def test_shared_prefix_reused_across_vectors_and_voided_by_weight_edits(tiny_pair):
    model, ref = tiny_pair
    _prefix_store(model).clear()
    for seed in (1, 2):
        vec = _vec(model, 1, seed)
        assert _tokens(model, steering=vec) == _tokens(ref, steering=vec)
    assert len(_prefix_store(model)) == 1
    w = model.blocks[0].mlp.W_out
    old = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(1.5)
            ref.blocks[0].mlp.W_out.mul_(1.5)
        vec = _vec(model, 1, 1)
        assert _tokens(model, steering=vec) == _tokens(ref, steering=vec)
        assert len(_prefix_store(model)) == 2
    finally:
        with torch.no_grad():
            w.copy_(old)
            ref.blocks[0].mlp.W_out.copy_(old)


def test_hook_below_steered_layer_disables_sharing(tiny_pair):
    model, ref = tiny_pair
    vec = _vec(model, 1)
    push = _vec(model, 0, 5)[0]
    toks = []
    for m in (model, ref):
        _prefix_store(m).clear()
        with runtime.attached(m, [(runtime.hook_name(0, "resid_post"),
                                   lambda act, hook: act + push)]):
            toks.append(_tokens(m, steering=vec))
    assert toks[0] == toks[1]
    assert len(_prefix_store(model)) == 0
    assert toks[0] != _tokens(model, steering=vec)  # the foreign hook did change the text


def test_prepared_model_deep_copies_and_pickles(tiny_pair):
    import copy
    import io

    model, _ = tiny_pair
    fast.prepare(model)
    clone = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    want = _tokens(model)
    for m in (clone, loaded):
        assert m.blocks[0].attn.forward.attn is m.blocks[0].attn  # bound to its own module
        assert m.blocks[0].mlp.W_gate.T.is_contiguous()
        assert _tokens(m) == want
