"""SAE corpus, activation cache and SAELens-based training on the tiny model (d_in=64, d_sae=256)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from steerlens.backend import runtime
from steerlens.sae import corpus as corpus_mod
from steerlens.sae.activations import cache_activations, iter_batches, site_activations
from steerlens.sae.train import (
    SAETrainConfig,
    TrainingInterrupted,
    _finalise,
    build_training_sae,
    sae_metrics,
    train_sae,
)
from steerlens.sites import Site

TEXTS = [t for t in (Path(__file__).resolve().parents[1] / "steerlens" / "data" / "heldout.txt")
         .read_text().split("\n") if t.strip()]
HOOK = "blocks.1.hook_resid_pre"


def tiny_config(**kw) -> SAETrainConfig:
    base = dict(d_in=64, d_sae=256, hook_name=HOOK, model_name="tiny", batch_size=128,
                train_tokens=128 * 40, lr=1e-3, lr_warm_up_steps=2, l1_warm_up_steps=5,
                l1_coefficient=1.0, eval_shards=2, checkpoint_every=5, context_size=32)
    return SAETrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cache(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("acts")
    return cache_activations(tiny, TEXTS * 8, Site(1), n_tokens=8000, context_size=32,
                             batch_size=16, seqs_per_shard=32, root=root, show_progress=False)


# ------------------------------------------------------------------------------------ corpus


def test_paragraphs_drop_code_keep_prose():
    text = ("This function returns the number of apples in the basket for the given farmer.\n\n"
            ">>> count_apples(basket)\n3\n\n```python\nx = f(a, b)  # a comment here and more\n```\n"
            "Some prose that introduces a literal block with enough words to count::\n"
            "        result = compute(alpha, beta)  # indented under the prose: a code block\n"
            "    {'key': [1, 2, 3], 'other': (4, 5)}\n")
    paras = list(corpus_mod._paragraphs(text))
    assert paras == [
        "This function returns the number of apples in the basket for the given farmer.",
        "Some prose that introduces a literal block with enough words to count::",
    ]


def test_build_corpus_is_deterministic_with_provenance(tiny):
    tok = runtime.tokenizer(tiny)
    a = corpus_mod.build_corpus(tok, sources=("pydoc_topics",))
    b = corpus_mod.build_corpus(tok, sources=("pydoc_topics",))
    assert a.documents == b.documents and len(a.documents) > 20
    prov = a.provenance
    assert prov.n_tokens == sum(r.tokens for r in prov.records) > 10_000
    # token counts are the tokenizer's, recomputed independently here
    assert prov.n_tokens == sum(len(tok(d.text, add_special_tokens=False)["input_ids"])
                                for d in a.documents)
    assert {r.source for r in prov.records} == {"pydoc_topics"}
    assert prov.tokens_by_source() == {"pydoc_topics": prov.n_tokens}
    texts = [d.text for d in a.documents]
    paras = [p for t in texts for p in t.split("\n\n")]
    assert len(paras) == len(set(paras))  # deduplicated
    assert not any(">>>" in p for p in paras)


def test_corpus_save_load_roundtrip_and_corrupt(tiny, tmp_path):
    c = corpus_mod.corpus_from_texts(TEXTS[:5], runtime.tokenizer(tiny))
    p = corpus_mod.save_corpus(c, tmp_path / "c.jsonl")
    assert corpus_mod.load_corpus(p) == c
    p.write_text("{not json\n")
    with pytest.raises(ValueError, match="c.jsonl"):
        corpus_mod.load_corpus(p)


def test_empty_corpus_errors(tiny, tmp_path):
    tok = runtime.tokenizer(tiny)
    with pytest.raises(ValueError, match="empty"):
        corpus_mod.corpus_from_texts(["", "   "], tok)
    with pytest.raises(ValueError, match="empty"):
        corpus_mod.build_corpus(tok, sources=())
    with pytest.raises(ValueError, match="valid sources"):
        corpus_mod.build_corpus(tok, sources=("wikipedia",))
    with pytest.raises(ValueError, match="empty"):
        cache_activations(tiny, ["", " "], Site(1), n_tokens=10, root=tmp_path)


# ---------------------------------------------------------------------------------- activations


@pytest.mark.parametrize("component", ["resid_pre", "resid_post", "mlp_out"])
def test_site_activations_match_run_with_cache(tiny, component):
    tokens = torch.randint(1, 200, (3, 12))
    got = site_activations(tiny, tokens, Site(1, component))
    _, ref = tiny.run_with_cache(tokens, names_filter=f"blocks.1.hook_{component}")
    # same float32 ops on the same tokens (ours may stop early at the site): float32 rounding
    torch.testing.assert_close(got, ref[f"blocks.1.hook_{component}"], rtol=1e-5, atol=1e-5)


def test_cache_skips_position_zero_and_resumes(tiny, cache):
    assert cache.n_tokens >= 8000 and cache.n_outliers == 0
    n_windows = -(-8000 // 31)
    assert cache.n_shards == -(-n_windows // 32)
    # first stored row = position 1 of the first window, computed independently
    from steerlens.sae.activations import token_windows

    w = token_windows(tiny, TEXTS * 8, 32, 1, seed=0)[0]
    _, ref = tiny.run_with_cache(torch.tensor([w]), names_filter=HOOK)
    first = cache.load_shard(0)
    assert first.dtype == torch.float16 and first.shape[0] == 32 * 31
    # stored as float16 (10-bit mantissa, ~5e-4 relative) from a batched float32 forward
    torch.testing.assert_close(first[:31].float(), ref[HOOK][0, 1:], atol=2e-2, rtol=1e-2)
    # delete a shard and one more: re-running recomputes it identically, keeps the rest
    before = {i: cache.load_shard(i) for i in (1, 2)}
    mtime2 = cache.shard_path(2).stat().st_mtime_ns
    cache.shard_path(1).unlink()
    again = cache_activations(tiny, TEXTS * 8, Site(1), n_tokens=8000, context_size=32,
                              batch_size=16, seqs_per_shard=32, root=cache.path.parent,
                              show_progress=False)
    assert again.shard_sizes == cache.shard_sizes
    assert torch.equal(again.load_shard(1), before[1])
    assert cache.shard_path(2).stat().st_mtime_ns == mtime2


def test_corrupt_shard_is_recomputed(tiny, cache):
    p = cache.shard_path(3)
    good = cache.load_shard(3)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match="shard_00003"):
        cache.load_shard(3)
    cache_activations(tiny, TEXTS * 8, Site(1), n_tokens=8000, context_size=32, batch_size=16,
                      seqs_per_shard=32, root=cache.path.parent, show_progress=False)
    assert torch.equal(cache.load_shard(3), good)


def test_iter_batches_deterministic_and_skippable(cache):
    shards = list(range(cache.n_shards - 2))
    a = iter_batches(cache, shards, 100, seed=3)
    full = [next(a) for _ in range(120)]  # crosses an epoch
    b = iter_batches(cache, shards, 100, seed=3, start_batch=77)
    for i in range(77, 120):
        assert torch.equal(next(b), full[i])
    c = iter_batches(cache, shards, 100, seed=4)
    assert not torch.equal(next(c), full[0])


# ------------------------------------------------------------------------------------- training


def test_config_roundtrip_and_validation():
    cfg = tiny_config(architecture="topk", k=8)
    assert SAETrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="valid keys"):
        SAETrainConfig.from_dict({**cfg.to_dict(), "l2": 1.0})
    with pytest.raises(ValueError, match="valid architectures"):
        tiny_config(architecture="gated")
    with pytest.raises(ValueError, match="at least one batch"):
        tiny_config(train_tokens=10)


def test_training_reduces_loss_and_saves_saelens_format(cache, tmp_path):
    from sae_lens import SAE

    res = train_sae(cache, tiny_config(train_tokens=128 * 60), tmp_path, show_progress=False)
    assert res.steps == 60 and res.n_train_tokens == 60 * 128
    first, last = np.mean(res.losses[5:10]), np.mean(res.losses[-5:])
    assert last < 0.8 * first
    sae = SAE.load_from_disk(tmp_path / "sae")  # SAELens' own loader
    assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 256 and sae.cfg.metadata.hook_name == HOOK
    ev = torch.cat([cache.load_shard(i) for i in range(cache.n_shards - 2, cache.n_shards)]).float()
    assert sae_metrics(sae, ev) == res.metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["l0"] == res.metrics.l0


def test_resume_equals_uninterrupted(cache, tmp_path):
    cfg = tiny_config(train_tokens=128 * 23, checkpoint_every=5)
    full = train_sae(cache, cfg, tmp_path / "a", show_progress=False)

    def boom(step, loss):
        if step == 13:
            raise TrainingInterrupted("simulated crash")

    with pytest.raises(TrainingInterrupted):
        train_sae(cache, cfg, tmp_path / "b", on_step=boom, show_progress=False)
    resumed = train_sae(cache, cfg, tmp_path / "b", show_progress=False)
    assert resumed.resumed_from_step == 10
    assert resumed.losses == full.losses[10:]
    wa = load_file(str(tmp_path / "a" / "sae" / "sae_weights.safetensors"))
    wb = load_file(str(tmp_path / "b" / "sae" / "sae_weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.metrics == full.metrics
    with pytest.raises(ValueError, match="different config"):
        train_sae(cache, tiny_config(train_tokens=128 * 23, checkpoint_every=5, lr=2e-3),
                  tmp_path / "b", show_progress=False)


def test_max_steps_then_continue(cache, tmp_path):
    cfg = tiny_config(train_tokens=128 * 12, checkpoint_every=4)
    part = train_sae(cache, cfg, tmp_path, max_steps=6, show_progress=False)
    assert part.steps == 6 and not (tmp_path / "sae").exists()
    rest = train_sae(cache, cfg, tmp_path, show_progress=False)
    assert rest.resumed_from_step == 6 and rest.steps == 12


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(cache, tmp_path, monkeypatch):
    from steerlens.checks import NonFiniteError
    from steerlens.sae import train as T

    real = T._trainer

    def poisoned(config, sae, data):
        tr = real(config, sae, data)
        step = tr.step

        def bad_step(batch):
            out = step(batch)
            if tr.n_training_steps == 6:  # the 7th step diverges
                out.loss = out.loss * float("nan")
            return out

        tr.step = bad_step
        return tr

    cfg = tiny_config(train_tokens=128 * 12, checkpoint_every=5)
    monkeypatch.setattr(T, "_trainer", poisoned)
    with pytest.raises(NonFiniteError, match="loss became nan at step 7"):
        train_sae(cache, cfg, tmp_path, show_progress=False)
    monkeypatch.setattr(T, "_trainer", real)
    assert not (tmp_path / "sae").exists()
    assert train_sae(cache, cfg, tmp_path, show_progress=False).resumed_from_step == 5


def test_topk_trains(cache, tmp_path):
    res = train_sae(cache, tiny_config(architecture="topk", k=8, train_tokens=128 * 10),
                    tmp_path, show_progress=False)
    assert 0 < res.metrics.l0 <= 8


def test_topk_finalise_folds_decoder_norms(cache):
    """A TopK SAE trained with rescale_acts_by_decoder_norm decodes f / |W_dec|; the saved SAE has
    the norms folded (unit decoder rows, plain f @ W_dec) and computes the same function: checked
    against float64 numpy of the unfolded training weights."""
    tsae = build_training_sae(tiny_config(architecture="topk", k=8, seed=3))
    assert tsae.cfg.rescale_acts_by_decoder_norm
    with torch.no_grad():
        tsae.W_dec.mul_(torch.rand(tsae.W_dec.shape[0], 1) * 3 + 0.2)  # uneven decoder norms
        tsae.b_enc.normal_(0, 0.5)
        tsae.b_dec.normal_(0, 0.5)
    We, be = tsae.W_enc.double().detach().numpy(), tsae.b_enc.double().detach().numpy()
    Wd, bd = tsae.W_dec.double().detach().numpy(), tsae.b_dec.double().detach().numpy()
    sae = _finalise(SimpleNamespace(sae=tsae, activation_scaler=SimpleNamespace(scaling_factor=None)))
    assert not sae.cfg.rescale_acts_by_decoder_norm
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.W_dec.shape[0]), atol=1e-6)
    x = cache.load_shard(0).float()[:300]
    X = x.double().numpy()
    norms = np.linalg.norm(Wd, axis=1)
    pre = ((X - bd) @ We + be) * norms  # SAELens' rescaled pre-activations
    kth = np.sort(pre, axis=1)[:, -8][:, None]
    f = np.where(pre >= kth, np.maximum(pre, 0), 0.0)
    R = (f / norms) @ Wd + bd
    with torch.no_grad():
        codes = sae.encode(x).double().numpy()
        rec = sae.decode(sae.encode(x)).double().numpy()
    # float32 SAE vs float64 numpy: ~1e-6 relative per value; ties at the k-th value do not occur
    # with continuous random weights
    np.testing.assert_allclose(codes, f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rec, R, rtol=1e-4, atol=1e-4)


def test_metrics_match_numpy(cache):
    sae = _finalise(SimpleNamespace(sae=build_training_sae(tiny_config(seed=5)),
                                    activation_scaler=SimpleNamespace(scaling_factor=None)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.5)
        sae.W_enc.normal_(0, 0.2)
    x = cache.load_shard(0).float()[:700]
    m = sae_metrics(sae, x, chunk=256)
    X = x.double().numpy()
    We, be = sae.W_enc.double().detach().numpy(), sae.b_enc.double().detach().numpy()
    Wd, bd = sae.W_dec.double().detach().numpy(), sae.b_dec.double().detach().numpy()
    f = np.maximum((X - bd) @ We + be, 0)
    R = f @ Wd + bd
    assert m.n_tokens == 700
    # chunked float32 SAE forward vs float64 numpy on the same inputs: ~1e-6 relative per value,
    # so 1e-4 on the sums; L0 counts codes > 0, where float32 can flip a code near 0 (1e-3)
    assert m.mse == pytest.approx(((X - R) ** 2).mean(), rel=1e-4)
    ev = 1 - ((X - R) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
    assert m.explained_variance == pytest.approx(ev, rel=1e-4, abs=1e-5)
    assert m.l0 == pytest.approx((f > 0).sum(1).mean(), rel=1e-3)
    assert m.dead_fraction == pytest.approx(((f > 0).sum(0) == 0).mean())  # a count ratio
    with pytest.raises(ValueError, match="d_in"):
        sae_metrics(sae, torch.zeros(3, 5))


def test_folded_scale_equals_scaled_training_sae(cache):
    tsae = build_training_sae(tiny_config(seed=2))
    with torch.no_grad():
        tsae.b_enc.normal_(0, 0.3)
        tsae.b_dec.normal_(0, 0.3)
    s = 0.37
    final = _finalise(SimpleNamespace(sae=tsae, activation_scaler=SimpleNamespace(scaling_factor=s)))
    x = cache.load_shard(0).float()[:50]
    with torch.no_grad():
        ref = tsae.decode(tsae.encode(x * s)) / s
        got = final.decode(final.encode(x))
    # the same map re-parameterised (scale folded into the weights): float32 rounding through
    # a 64 -> d_sae -> 64 encode/decode, ~1e-6 relative
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert final.cfg.normalize_activations == "none"


def test_sparsity_tradeoff_figure_plots_the_metrics():
    from steerlens.figures.sae import sparsity_tradeoff
    from steerlens.sae.train import SAEMetrics

    runs = {"L1=2": SAEMetrics(100, 3.0, 0.8, 140.0, 0.0, 10.0),
            "L1=5": SAEMetrics(100, 4.6, 0.7, 75.0, 0.01, 10.0)}
    ood = {"L1=2": SAEMetrics(50, 6.0, 0.6, 170.0, 0.02, 10.0)}
    fig = sparsity_tradeoff(runs, ood)
    inside, outside = fig.data
    assert list(inside.x) == [75.0, 140.0] and list(inside.y) == [0.7, 0.8]  # sorted by L0
    assert list(inside.text) == ["L1=5", "L1=2"] and list(outside.y) == [0.6]
    assert "n=100" in fig.layout.title.text
    with pytest.raises(ValueError, match="at least one"):
        sparsity_tradeoff({})
