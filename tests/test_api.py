"""The 0.2 public API: top-level names, config objects, named multi-vector steering, one binding
context, callable methods and the deprecated 0.1 spellings (which must keep working)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import steerlens as sl
from steerlens.backend import runtime
from steerlens.cli import main
from steerlens.config import GenerationConfig, SweepConfig
from steerlens.methods import mean_diff
from steerlens.steer import Injection, steered_forward
from steerlens.sweep import CONFIG_FILE

PROMPTS = ["Hello there", "Tell me about cats", "ok"]


@pytest.fixture(scope="module")
def vecs(tiny, sentiment):
    a = sl.build_vector(tiny, sentiment.train[:8], [0, 1], read_at="mean", show_progress=False)
    b = sl.random_like(a, seed=3)
    return a, b


def test_top_level_names_resolve_and_are_listed():
    assert len(sl.__all__) >= 20 and len(set(sl.__all__)) == len(sl.__all__)
    for name in sl.__all__:
        assert getattr(sl, name) is not None, name
    for name in ("load_model", "load_behaviour", "ContrastPair", "ContrastSet", "SteeringVector",
                 "SteeringVectorSet", "build_vector", "random_like", "steer", "schedule",
                 "generate", "GenerationConfig", "sweep", "SweepConfig", "load_sweep",
                 "next_token_kl", "vector_lens", "eigengaps"):
        assert name in sl.__all__, name


def test_generation_config_validates_and_round_trips():
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.7, top_k=3, top_p=0.9, seed=2)
    assert GenerationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(temperature=0).greedy and not cfg.greedy
    bad = [dict(max_new_tokens=0), dict(max_new_tokens=True), dict(temperature=-1.0),
           dict(temperature=float("inf")), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5),
           dict(seed=-1)]
    for kw in bad:
        with pytest.raises(ValueError, match=next(iter(kw))):
            GenerationConfig(**kw)
    with pytest.raises(ValueError, match="valid fields are"):
        cfg.replace(max_tokens=3)
    with pytest.raises(ValueError, match="valid fields are"):
        GenerationConfig.from_dict({"max_tokens": 3})


def test_sweep_config_validates_and_round_trips():
    cfg = SweepConfig(layers=[1, 0], strengths=[0, 2.5], measures=("generate",), n_random=20,
                      generation=GenerationConfig(max_new_tokens=8))
    assert cfg.layers == (1, 0) and cfg.strengths == (0.0, 2.5)
    assert cfg.measures == ("kl", "generate") and cfg.generate  # kl is always computed
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SweepConfig.from_settings(None, {"layers": 3, "strengths": 1.0,
                                            "max_new_tokens": 7}).generation.max_new_tokens == 7
    for kw, msg in ((dict(layers=[], strengths=[1]), "no layers"),
                    (dict(layers=[0], strengths=[1, 1]), "must not repeat"),
                    (dict(layers=[0], strengths=[float("nan")]), "finite"),
                    (dict(layers=[0], strengths=[1], measures=("acc",)), "valid measures"),
                    (dict(layers=[0], strengths=[1], positions="middle"), "valid values"),
                    (dict(layers=[0], strengths=[1], generation=GenerationConfig(temperature=1.0)),
                     "greedily")):
        with pytest.raises(ValueError, match=msg):
            SweepConfig(**kw)
    with pytest.raises(ValueError, match="needs"):
        SweepConfig.from_settings(None, {"layers": [0]})


def test_generate_config_equals_keyword_settings(tiny, vecs):
    a, _ = vecs
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.8, seed=4)
    one = sl.generate(tiny, PROMPTS, a.layer(1), 3.0, config=cfg)
    two = sl.generate(tiny, PROMPTS, a.layer(1), 3.0, max_new_tokens=6, temperature=0.8, seed=4)
    assert one.tokens == two.tokens and one.settings == two.settings
    assert one.settings["max_new_tokens"] == 6 and "chat" in one.settings
    with pytest.raises(ValueError, match="valid fields"):
        sl.generate(tiny, PROMPTS, a.layer(1), 3.0, max_tokens=6)
    with pytest.raises(ValueError, match="steering is None"):
        sl.generate(tiny, PROMPTS, None, 3.0)
    # ValueError from our check; under the suite's runtime type checks the annotation
    # (str | Sequence[str]) rejects it first with a TypeError naming the parameter.
    with pytest.raises((ValueError, TypeError), match="item 1 is int|prompts"):
        sl.generate(tiny, ["ok", 1])


def _logits(model, steering_block, prompts=PROMPTS):
    batch = runtime.encode_prompts(model, prompts, chat=False)
    with steering_block as st:
        return steered_forward(model, batch, st).double()


def test_named_set_strengths_equal_explicit_pairs(tiny, vecs):
    a, b = vecs
    vset = sl.SteeringVectorSet({"a": a, "b": b})
    named = _logits(tiny, sl.steer(tiny, vset, strengths={"a": 2.0, "b": -1.5}))
    pairs = _logits(tiny, sl.steer(tiny, [(a, 2.0), (b, -1.5)]))
    torch.testing.assert_close(named, pairs, rtol=0, atol=0)  # same hooks, same order: exact
    dict_form = _logits(tiny, sl.steer(tiny, {"a": a, "b": b}, 1.0, strengths={"b": -1.5}))
    torch.testing.assert_close(dict_form, _logits(tiny, sl.steer(tiny, [(a, 1.0), (b, -1.5)])),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"valid names are \['a', 'b'\]"), \
            sl.steer(tiny, vset, strengths={"c": 1.0}):
        pass
    assert runtime.attached_hook_count(tiny) == 0


def test_set_strength_by_name_and_per_row(tiny, vecs):
    a, b = vecs
    vset = sl.SteeringVectorSet({"a": a, "b": b})
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    with sl.steer(tiny, vset, strengths={"a": 2.0, "b": 0.0}) as st:
        first = steered_forward(tiny, batch, st)
        st.set_strength("b", [0.0, 1.0, -2.0])  # one strength per row
        rows = steered_forward(tiny, batch, st)
        st.set_strength("a", 0.0)
        st.set_strength(1, 0.0)
        off = steered_forward(tiny, batch, st)
        with pytest.raises(ValueError, match="valid names"):
            st.set_strength("nope", 1.0)
        with pytest.raises(ValueError, match="out of range"):
            st.set_strength(5, 1.0)
    base = steered_forward(tiny, batch, None)
    torch.testing.assert_close(off, base, rtol=0, atol=0)  # strength 0 adds nothing
    torch.testing.assert_close(rows[0], first[0], rtol=0, atol=0)  # row 0 kept b at 0
    for i, s in ((1, 1.0), (2, -2.0)):
        ref = _logits(tiny, sl.steer(tiny, [(a, 2.0), (b, s)]), [PROMPTS[i]])[0]
        got = rows[i].double()
        width = ref.shape[0]  # left padding: compare the real positions
        torch.testing.assert_close(got[-width:], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "first", "last"])
def test_named_multi_vector_generation_is_cache_exact(tiny, vecs, positions):
    a, b = vecs
    vset = sl.SteeringVectorSet({"a": a.layer(0), "b": b.layer(1)})
    out = {}
    for cache in (True, False):
        with sl.steer(tiny, vset, 1.0, positions, strengths={"b": [0.0, 3.0, -3.0]}) as st:
            out[cache] = sl.generate(tiny, PROMPTS, st, max_new_tokens=8, use_kv_cache=cache,
                                     chat=False).tokens
    assert out[True] == out[False]
    assert runtime.attached_hook_count(tiny) == 0


def test_bound_unbinds_on_error(tiny, vecs):
    a, _ = vecs
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    with sl.steer(tiny, a.layer(1), 2.0, "last") as st:
        with pytest.raises(RuntimeError), st.bound(batch, offset=3):
            assert st.context.prompt_width == batch.tokens.shape[1] and st.context.offset == 3
            raise RuntimeError("boom")
        assert st.context.prompt_width is None and st.context.offset == 0


def test_injection_names_must_be_unique(tiny, vecs):
    a, b = vecs
    with pytest.raises(ValueError, match="unique"), \
            sl.steer(tiny, [Injection(a, name="x"), Injection(b, name="x")]):
        pass


def test_build_vector_takes_a_callable(tiny, sentiment):
    pairs = sentiment.train[:6]
    ref = sl.build_vector(tiny, pairs, [1], show_progress=False)
    got = sl.build_vector(tiny, pairs, [1], method=mean_diff, show_progress=False)
    assert got.allclose(ref, atol=0) and got.method == "custom:mean_diff"

    def half(pos, neg):
        return (pos - neg).mean(0) / 2

    # float32 mean of differences vs mean_diff's float64 mean: a few float32 ulps apart
    torch.testing.assert_close(sl.build_vector(tiny, pairs, [1], method=half,
                                               show_progress=False)[1], ref[1] / 2,
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(64,\)"):
        sl.build_vector(tiny, pairs, [1], method=lambda p, n: p, show_progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        sl.build_vector(tiny, pairs, [1], method=lambda p, n: p[0] * float("nan"),
                        show_progress=False)


def test_deprecated_position_keyword_still_works(tiny, sentiment):
    pairs = sentiment.train[:4]
    ref = sl.build_vector(tiny, pairs, [1], read_at="mean", show_progress=False)
    with pytest.warns(DeprecationWarning, match="read_at"):
        old = sl.build_vector(tiny, pairs, [1], position="mean", show_progress=False)
    assert old.allclose(ref, atol=0) and old.read_at == "mean"
    with pytest.warns(DeprecationWarning, match="read_at"):
        lens = sl.residual_lens(tiny, "hello", position=1, chat=False)
    assert lens.read_at == 1


def test_old_vector_metadata_key_loads(tiny, vecs, tmp_path):
    a, _ = vecs
    a.save(tmp_path)
    meta = json.loads((tmp_path / "vector.json").read_text())
    meta["position"] = meta.pop("read_at")  # a 0.1 file
    (tmp_path / "vector.json").write_text(json.dumps(meta))
    assert sl.SteeringVector.load(tmp_path).read_at == a.read_at


def test_cli_strength_and_deprecated_flags(tiny, tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["extract", "--model", "tiny-random", "--device", "cpu", "--pairs",
                 "behaviour:sentiment", "--layers", "1", "--position", "mean",
                 "--out", str(out)]) == 0
    assert "--position is deprecated; use --read-at" in capsys.readouterr().err
    assert sl.SteeringVector.load(out).read_at == "mean"
    args = ["generate", "--model", "tiny-random", "--device", "cpu", "--vector", str(out),
            "--layer", "1", "--prompt", "Hi", "--max-new-tokens", "4", "--json"]
    assert main([*args, "--strength", "2"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert main([*args, "--alpha", "2"]) == 0
    captured = capsys.readouterr()
    assert "--alpha is deprecated; use --strength" in captured.err
    assert json.loads(captured.out) == new and new["strength"] == 2.0


def test_sweep_config_is_the_saved_fingerprint(tiny, vecs, tmp_path):
    a, _ = vecs
    cfg = SweepConfig(layers=[0, 1], strengths=[0.0, 2.0], n_random=1, chat=False)
    res = sl.sweep(tiny, PROMPTS, a, cfg, out_dir=tmp_path, show_progress=False)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert SweepConfig.from_dict(saved["config"]) == cfg == res.settings
    assert sl.load_sweep(tmp_path).settings == cfg
    same = sl.sweep(tiny, PROMPTS, a, layers=[0, 1], strengths=[0.0, 2.0], n_random=1,
                    chat=False, out_dir=tmp_path, show_progress=False)
    assert same.n_computed == 0  # keyword settings build the identical config: fully resumed
    # a 0.1 (format 1) directory still loads
    c = saved["config"]
    v1 = {"format": 1, "model": saved["model"], "n_layers": saved["n_layers"],
          "d_model": saved["d_model"], "vectors": saved["vectors"], "layers": c["layers"],
          "strengths": c["strengths"], "prompts": saved["prompts"], "measures": ["kl"],
          "scorer": None, "max_new_tokens": None, "positions": "all", "chat": False,
          "n_random": 1, "random_seed": 0}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(v1))
    old = sl.load_sweep(tmp_path)
    np.testing.assert_array_equal(old.table.kl_bits.to_numpy(), res.table.kl_bits.to_numpy())


def test_measures_share_one_signature(tiny, vecs):
    """(model, inputs, steering, strength) positionally in every measure that steers."""
    a, _ = vecs
    v = a.layer(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert sl.next_token_kl(tiny, PROMPTS, v, 2.0).n == 3
        assert sl.per_token_kl(tiny, "hello", v, 2.0).n > 0
        assert sl.residual_lens(tiny, "hello", v, 2.0, chat=False).steered
        from steerlens.measures import (
            ab_logprob,
            change_rate,
            continuation_logprobs,
            sampling_diversity,
            text_perplexity,
        )

        assert text_perplexity(tiny, ["hello"], v, 2.0).steered
        assert len(continuation_logprobs(tiny, ["q"], ["a"], v, 2.0)) == 1
        assert ab_logprob(tiny, ["q"], v, 2.0, matching=["A"]).steered
        assert change_rate(tiny, PROMPTS[:1], v, 2.0, max_new_tokens=3).n == 1
        assert sampling_diversity(tiny, PROMPTS[:1], v, 2.0, k=2, max_new_tokens=3).n == 1
