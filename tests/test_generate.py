"""Generation: KV-cache equivalence for every position mode and schedules; batching; sampling."""

from __future__ import annotations

import pytest
import torch

from steerlens.generate import generate
from steerlens.steer import schedule, steer
from steerlens.vectors import SteeringVector

PROMPTS = ["Once upon a time", "The weather today is", "Hi"]


def _vec(model, layer, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(model.cfg.d_model, generator=g)
    return SteeringVector({layer: d / d.norm() * scale})


@pytest.mark.parametrize("mode", ["all", "prompt", "generated", "first", "last"])
def test_kv_cache_equivalence_tiny(tiny, mode):
    v = _vec(tiny, 1, scale=8.0)
    kw = dict(max_new_tokens=10, chat=False)
    with_cache = generate(tiny, PROMPTS, v, strength=1.0, positions=mode, use_kv_cache=True, **kw)
    without = generate(tiny, PROMPTS, v, strength=1.0, positions=mode, use_kv_cache=False, **kw)
    assert with_cache.tokens == without.tokens
    base = generate(tiny, PROMPTS, **kw)
    if mode != "generated":  # these modes steer the prompt, so the first token can change
        assert with_cache.tokens != base.tokens


def test_position_modes_differ_from_naive_last(tiny):
    """'last' steers only the final prompt token; steering every fed token is different."""
    v = _vec(tiny, 1, scale=8.0)
    last = generate(tiny, PROMPTS, v, strength=1.0, positions="last", max_new_tokens=10,
                    chat=False)
    every = generate(tiny, PROMPTS, v, strength=1.0, positions="all", max_new_tokens=10,
                     chat=False)
    assert last.tokens != every.tokens


def test_schedule_cache_equivalence(tiny):
    a, b = _vec(tiny, 1, 0, 8.0), _vec(tiny, 1, 1, 8.0)
    sch = schedule([(0, a), (3, b), (6, None)])
    one = generate(tiny, PROMPTS, sch, max_new_tokens=10, chat=False)
    two = generate(tiny, PROMPTS, sch, max_new_tokens=10, chat=False, use_kv_cache=False)
    assert one.tokens == two.tokens
    only_a = generate(tiny, PROMPTS, a, strength=1.0, max_new_tokens=10, chat=False)
    # tokens 1..3 come from positions with generated-index 0..2, where only `a` is active
    assert [t[:3] for t in one.tokens] == [t[:3] for t in only_a.tokens]
    assert one.tokens != only_a.tokens  # after the switch, `b` takes over


def test_batched_equals_single(tiny):
    v = _vec(tiny, 1)
    batched = generate(tiny, PROMPTS, v, strength=1.0, max_new_tokens=8, chat=False)
    for i, p in enumerate(PROMPTS):
        single = generate(tiny, p, v, strength=1.0, max_new_tokens=8, chat=False)
        assert single.tokens[0] == batched.tokens[i]


def test_sampling_is_seeded(tiny):
    kw = dict(max_new_tokens=8, temperature=1.0, chat=False)
    a = generate(tiny, PROMPTS, seed=3, **kw)
    b = generate(tiny, PROMPTS, seed=3, **kw)
    c = generate(tiny, PROMPTS, seed=4, **kw)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    top = generate(tiny, PROMPTS, seed=3, top_k=1, **kw)
    assert top.tokens == generate(tiny, PROMPTS, max_new_tokens=8, chat=False).tokens


def test_generate_inside_steer_block(tiny):
    v = _vec(tiny, 1)
    with steer(tiny, v, 1.0, positions="last") as s:
        inside = generate(tiny, PROMPTS, s, max_new_tokens=6, chat=False)
        assert inside.steered
    direct = generate(tiny, PROMPTS, v, strength=1.0, positions="last", max_new_tokens=6,
                      chat=False)
    assert inside.tokens == direct.tokens


def test_generate_bad_input(tiny):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny, "x", max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny, "x", temperature=-1.0)
    with pytest.raises(ValueError, match="at least one of prompts"):
        generate(tiny, [])
    with pytest.raises(ValueError, match="context length"):
        generate(tiny, "x" * 250, max_new_tokens=20, chat=False)
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny, "x", temperature=1.0, top_p=0.0)


@pytest.mark.embedded
@pytest.mark.parametrize("mode", ["all", "last", "generated"])
def test_kv_cache_equivalence_embedded(smol, mode):
    v = _vec(smol, 10, scale=12.0)
    prompts = ["Tell me about your weekend.", "Write a haiku about rain."]
    a = generate(smol, prompts, v, strength=1.0, positions=mode, max_new_tokens=12)
    b = generate(smol, prompts, v, strength=1.0, positions=mode, max_new_tokens=12,
                 use_kv_cache=False)
    assert a.tokens == b.tokens
