"""The chat corpus (generated instructions + the model's sampled replies), mixed activation caches,
per-domain held-out splits and the EV / L0 metrics, on the tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from steerlens.sae import chat as chat_mod
from steerlens.sae.activations import MixedCache, cache_activations, iter_batches, open_cache
from steerlens.sae.chat import (
    ChatSampleConfig,
    instructions,
    is_heldout,
    n_distinct_instructions,
    sample_chat,
)
from steerlens.sae.corpus import heldout_split
from steerlens.sae.train import SAETrainConfig, _finalise, build_training_sae, sae_metrics, train_sae
from steerlens.sites import Site

CFG = ChatSampleConfig(max_new_tokens=5, batch_size=3, shard_size=4, sampler="steerlens", seed=3)


# ------------------------------------------------------------------------------ instructions


def test_instructions_are_distinct_prefix_stable_and_split_disjoint():
    assert n_distinct_instructions() > 100_000
    a = instructions(3000, seed=0)
    assert len({i.instruction for i in a}) == 3000
    assert instructions(500, seed=0) == a[:500]
    assert [i.index for i in a[:5]] == [0, 1, 2, 3, 4]
    assert instructions(200, seed=1) != a[:200]
    held = instructions(60, seed=0, split="heldout")
    assert all(is_heldout(i.instruction) for i in held)
    assert not any(is_heldout(i.instruction) for i in a)
    assert not {i.instruction for i in held} & {i.instruction for i in a}
    # diverse: every task type and most topics appear, both system-prompt kinds
    assert {i.task for i in a} == {t for t, _ in chat_mod.TASKS}
    assert len({i.topic for i in a}) > 0.9 * len(chat_mod.TOPICS)
    n_default = sum(i.system is None for i in a)
    assert 0.6 * 3000 < n_default < 0.8 * 3000  # DEFAULT_SYSTEM_SHARE 0.7, 3000 draws
    with pytest.raises(ValueError, match="valid splits"):
        instructions(3, split="test")


def test_render_prompt_uses_the_chat_template(tiny):
    tok = chat_mod.runtime.tokenizer(tiny)
    items = instructions(40)
    plain = next(i for i in items if i.system is None)
    with_sys = next(i for i in items if i.system is not None)
    assert chat_mod.render_prompt(tiny, plain) == tok.apply_chat_template(
        [{"role": "user", "content": plain.instruction}], tokenize=False, add_generation_prompt=True)
    assert chat_mod.render_prompt(tiny, with_sys) == tok.apply_chat_template(
        [{"role": "system", "content": with_sys.system},
         {"role": "user", "content": with_sys.instruction}],
        tokenize=False, add_generation_prompt=True)


def test_sample_config_validation():
    with pytest.raises(ValueError, match="valid samplers"):
        ChatSampleConfig(sampler="vllm")
    with pytest.raises(ValueError, match="temperature"):
        ChatSampleConfig(temperature=0)


def test_hf_sampler_needs_an_embedded_model(tiny, tmp_path):
    with pytest.raises(ValueError, match="sampler='steerlens'"):
        sample_chat(tiny, 2, config=ChatSampleConfig(sampler="hf"), root=tmp_path)


# ------------------------------------------------------------------------------ sampling


def _sample(tiny, root, n=10, split="train"):
    return sample_chat(tiny, n, split=split, config=CFG, root=root, show_progress=False)


def test_sampling_is_deterministic_and_provenance_counts(tiny, tmp_path):
    a = _sample(tiny, tmp_path / "a")
    b = _sample(tiny, tmp_path / "b")
    assert [c.reply for c in a.conversations] == [c.reply for c in b.conversations]
    assert len(a.conversations) == 10
    # different shards sample with different seeds: identical prompts are not required, but the
    # replies are not all the same string
    assert len({c.reply for c in a.conversations}) > 1
    p = json.loads((a.path / "provenance.json").read_text())
    assert p == a.provenance.to_dict()
    assert p["n_conversations"] == 10 and p["n_distinct_instructions"] == 10
    assert p["n_reply_tokens"] == sum(c.reply_tokens for c in a.conversations)
    assert p["n_prompt_tokens"] == sum(c.prompt_tokens for c in a.conversations)
    assert all(1 <= c.reply_tokens <= CFG.max_new_tokens for c in a.conversations)
    assert p["config"]["sampler"] == "steerlens" and "steerlens.generate" in p["sampler_detail"]
    assert p["version"] == chat_mod.CHAT_VERSION and p["n_shards"] == 3
    assert sum(p["tasks"].values()) == 10 and p["wall_seconds"] > 0
    # the prompt token count is the tokenizer's count of the rendered prompt (BOS prepended)
    c0 = a.conversations[0]
    assert c0.prompt_tokens == len(chat_mod.runtime.prompt_ids(tiny, c0.prompt, chat=False))
    assert a.texts()[0].startswith(c0.prompt + c0.reply)
    # 10 conversations with shard_size 4: two full shards on disk, the partial third is not cached
    assert sorted(f.name for f in a.path.glob("shard_*")) == ["shard_00000.jsonl",
                                                              "shard_00001.jsonl"]


def test_sampling_resumes_and_skips_finished_shards(tiny, tmp_path, monkeypatch):
    full = _sample(tiny, tmp_path, n=8)
    (full.path / "shard_00001.jsonl").unlink()
    (full.path / "shard_00000.jsonl").write_text(
        (full.path / "shard_00000.jsonl").read_text())  # untouched content: reused
    calls = []
    real = chat_mod._sample_batch

    def counting(model, hf, prompts, cfg, seed):
        calls.append(len(prompts))
        return real(model, hf, prompts, cfg, seed)

    monkeypatch.setattr(chat_mod, "_sample_batch", counting)
    again = _sample(tiny, tmp_path, n=8)
    assert sum(calls) == 4  # only shard 1 was resampled
    assert [c.reply for c in again.conversations] == [c.reply for c in full.conversations]
    calls.clear()
    more = _sample(tiny, tmp_path, n=12)  # extending n samples only the new shard
    assert sum(calls) == 4 and more.conversations[:8] == again.conversations
    # a corrupt shard is resampled, to the same replies
    (full.path / "shard_00000.jsonl").write_text("{not json")
    calls.clear()
    fixed = _sample(tiny, tmp_path, n=8)
    assert sum(calls) == 4 and fixed.conversations == full.conversations


def test_heldout_split_chat_never_overlaps_training(tiny, tmp_path):
    tr = _sample(tiny, tmp_path, n=8)
    he = _sample(tiny, tmp_path, n=4, split="heldout")
    assert tr.path != he.path
    assert not ({c.item.instruction for c in tr.conversations}
                & {c.item.instruction for c in he.conversations})


# ------------------------------------------------------------------------------ mixing


def test_heldout_split_docs_is_order_free():
    texts = [f"document number {i} about things" for i in range(400)]
    tr, he = heldout_split(texts, every=10)
    assert len(tr) + len(he) == 400 and not set(tr) & set(he) and 10 < len(he) < 80
    tr2, he2 = heldout_split(texts[::-1], every=10)
    assert set(he2) == set(he) and set(tr2) == set(tr)
    with pytest.raises(ValueError, match="every"):
        heldout_split(texts, every=1)


@pytest.fixture(scope="module")
def two_caches(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    docs = [f"The river {i} flows past the old mill and the quiet houses." for i in range(60)]
    chat = [f"User: tell me about {i}\nAssistant: It is a number, and a fine one." for i in range(60)]
    a = cache_activations(tiny, docs, Site(1), n_tokens=31 * 24, context_size=32,
                          seqs_per_shard=8, root=root, show_progress=False)
    b = cache_activations(tiny, chat, Site(1), n_tokens=31 * 8, context_size=32,
                          seqs_per_shard=8, root=root, show_progress=False)
    return a, b


def test_mixed_cache_interleaves_and_counts_unique_activations(two_caches):
    a, b = two_caches
    mix = MixedCache.of([a, b], ["docs", "chat"])
    assert (a.n_shards, b.n_shards) == (3, 1)
    # fractional positions: docs 1/6, 3/6, 5/6, chat 1/2 (ties broken by cache order)
    assert mix.order == ((0, 0), (0, 1), (1, 0), (0, 2))
    assert mix.n_tokens == a.n_tokens + b.n_tokens
    assert mix.tokens_by_name() == {"docs": a.n_tokens, "chat": b.n_tokens}
    assert torch.equal(mix.load_shard(2), b.load_shard(0))
    # every shard of every cache appears exactly once, so no stored activation is counted twice
    assert sorted(mix.order) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    rows = torch.cat([mix.load_shard(i) for i in range(mix.n_shards)])
    assert rows.shape[0] == mix.n_tokens
    batches = iter_batches(mix, list(range(4)), 64, seed=0)
    assert next(batches).shape == (64, 64)
    with pytest.raises(ValueError, match="one name per cache"):
        MixedCache.of([a], ["docs", "chat"])


def test_open_cache_reads_a_prefix(two_caches, tmp_path):
    a, _ = two_caches
    got = open_cache(a.path, max_shards=2)
    assert got.shard_sizes == a.shard_sizes[:2] and got.spec == a.spec
    assert open_cache(a.path).shard_sizes == a.shard_sizes
    with pytest.raises(ValueError, match="not an activation cache"):
        open_cache(tmp_path)


def test_cache_activations_max_shards_stops_early(tiny, tmp_path):
    docs = [f"The river {i} flows past the old mill and the quiet houses." for i in range(60)]
    part = cache_activations(tiny, docs, Site(1), n_tokens=31 * 24, context_size=32,
                             seqs_per_shard=8, root=tmp_path, show_progress=False, max_shards=1)
    assert part.n_shards == 1
    full = cache_activations(tiny, docs, Site(1), n_tokens=31 * 24, context_size=32,
                             seqs_per_shard=8, root=tmp_path, show_progress=False)
    assert full.path == part.path and full.n_shards == 3
    assert torch.equal(full.load_shard(0), part.load_shard(0))


def test_train_on_mixed_cache_with_external_eval(two_caches, tmp_path):
    a, b = two_caches
    mix = MixedCache.of([a, b], ["docs", "chat"])
    cfg = SAETrainConfig(d_in=64, d_sae=128, hook_name=a.spec.hook_name, batch_size=64,
                         train_tokens=64 * 6, eval_shards=0, checkpoint_every=3,
                         architecture="topk", k=4, context_size=32)
    ev = b.load_shard(0).float()
    res = train_sae(mix, cfg, tmp_path, show_progress=False, eval_acts=ev)
    assert res.metrics.n_tokens == ev.shape[0] and 0 < res.metrics.l0 <= 4
    with pytest.raises(ValueError, match="eval_acts"):
        train_sae(mix, cfg, tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="eval_shards"):
        SAETrainConfig(d_in=64, d_sae=128, hook_name="h", eval_shards=-1)


# ------------------------------------------------------------------------------ metrics by hand


def test_ev_and_l0_against_a_hand_computation():
    """A 2-feature identity SAE on 2-d inputs: every number below is worked out by hand."""
    cfg = SAETrainConfig(d_in=2, d_sae=2, hook_name="h", batch_size=1, train_tokens=1)
    sae = _finalise(SimpleNamespace(sae=build_training_sae(cfg),
                                    activation_scaler=SimpleNamespace(scaling_factor=None)))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    # ReLU keeps positive coordinates: x_hat = max(x, 0)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [-2.0, 0.0], [2.0, 3.0]])
    m = sae_metrics(sae, x)
    # errors: (0,0), (0,-1), (-2,0), (0,0) -> sum of squares 1 + 4 = 5
    # mean (1, 1); centred squares: (0+1) + (4+4) + (9+1) + (1+4) = 24
    assert m.explained_variance == pytest.approx(1 - 5 / 24, abs=1e-6)  # float32 SAE forward
    assert m.mse == pytest.approx(5 / 8, abs=1e-6)
    # active codes: 2, 1, 0, 2 -> L0 = 5 / 4; both features fire somewhere -> no dead ones
    assert m.l0 == 1.25 and m.dead_fraction == 0.0
    assert m.n_tokens == 4
    m1 = sae_metrics(sae, x[2:3])  # only the third row: nothing fires, both features dead
    assert m1.l0 == 0 and m1.dead_fraction == 1.0


def test_checkpoint_sae_equals_the_finished_sae_and_needs_a_checkpoint(two_caches, tmp_path):
    from steerlens.sae import load_sae
    from steerlens.sae.train import checkpoint_sae

    a, b = two_caches
    cfg = SAETrainConfig(d_in=64, d_sae=128, hook_name=a.spec.hook_name, batch_size=64,
                         train_tokens=64 * 4, eval_shards=0, checkpoint_every=2,
                         architecture="topk", k=4, context_size=32)
    ev = b.load_shard(0).float()
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoint_sae(cfg, tmp_path)
    train_sae(MixedCache.of([a], ["docs"]), cfg, tmp_path, show_progress=False, eval_acts=ev)
    sae, step = checkpoint_sae(cfg, tmp_path)
    done = load_sae(tmp_path / "sae")
    assert step == 4
    for name, v in done.state_dict().items():  # same float32 weights, same folding arithmetic
        assert torch.equal(sae.state_dict()[name], v), name
