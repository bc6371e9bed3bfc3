"""SteeringVector values: immutability, arithmetic, safetensors I/O and its failure modes."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from steerlens.vectors import SteeringVector, SteeringVectorSet, VectorFileError


def _vec(seed=0, layers=(0, 1), d=64, **kw):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({lay: torch.randn(d, generator=g) for lay in layers}, **kw)


def test_metadata_and_immutability():
    v = _vec(method="mean_diff", model_id="tiny-random", n_pairs=7)
    assert v.layers == [0, 1] and v.d_model == 64
    # norms of a float32 64-vector, maybe summed in float64: ~1e-7 relative apart
    assert v.norms[0] == pytest.approx(float(v[0].norm()), rel=1e-6)
    with pytest.raises(AttributeError):
        v.method = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        v.directions[2] = torch.zeros(64)  # type: ignore[index]
    src = torch.ones(64)
    w = SteeringVector({0: src})
    src.add_(1.0)  # the vector holds its own copy
    assert torch.equal(w[0], torch.ones(64))
    meta = v.metadata()
    for key in ("model_id", "d_model", "layers", "method", "read_at", "n_pairs", "norms",
                "version", "sites"):
        assert key in meta


def test_arithmetic():
    a, b = _vec(0), _vec(1)
    # one correctly rounded float32 op per element on both sides: bit-exact
    assert torch.equal((a + b)[0], a[0] + b[0])
    assert torch.equal((a - b)[1], a[1] - b[1])
    assert torch.equal((2.5 * a)[0], a[0] * 2.5) and torch.equal((a * 2.5)[0], a[0] * 2.5)
    assert torch.equal((-a)[1], -a[1])
    assert torch.equal((a / 2)[0], a[0] / 2)
    c = a + _vec(2, layers=(3,))
    assert c.layers == [0, 1, 3] and torch.equal(c[3], _vec(2, layers=(3,))[3])
    n = a.normalized(3.0)
    assert all(abs(x - 3.0) < 1e-5 for x in n.norms.values())  # float32 rescale: ulps of 3
    assert a.cosine(a)[0] == pytest.approx(1.0, rel=1e-6)  # float32 dot / norms: ~1e-7
    with pytest.raises(ValueError, match="different d_model"):
        a + _vec(d=32)
    with pytest.raises(ValueError, match="finite"):
        a * float("nan")
    with pytest.raises(ValueError, match="divide"):
        a / 0


def test_validation():
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector({})
    with pytest.raises(ValueError, match="non-finite"):
        SteeringVector({0: torch.tensor([1.0, float("inf")])})
    # TypeError: under the test suite's jaxtyping hook the shape annotation catches it first
    with pytest.raises((ValueError, TypeError), match="1-D|parameter .directions."):
        SteeringVector({0: torch.zeros(2, 3)})
    with pytest.raises((ValueError, TypeError), match="share d_model|parameter .directions."):
        SteeringVector({0: torch.zeros(3), 1: torch.zeros(4)})
    with pytest.raises(ValueError, match="valid"):
        SteeringVector({0: torch.zeros(3)}, component="resid")
    with pytest.raises(ValueError, match=r"not built for layer\(s\) \[5\]"):
        _vec().select([5])
    with pytest.raises(KeyError, match="its layers are"):
        _vec()[5]


def test_save_load_round_trip(tmp_path, tiny):
    v = _vec(method="pca", read_at="mean", model_id="tiny-random", n_pairs=3, extra={"a": 1})
    v.save(tmp_path / "v")
    w = SteeringVector.load(tmp_path / "v", model=tiny)
    assert w.allclose(v, atol=0) and w.method == "pca" and w.read_at == "mean"
    assert w.n_pairs == 3 and dict(w.extra) == {"a": 1}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "v" / "vector.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["layer.0", "layer.1"]
    raw = (tmp_path / "v" / "vector.safetensors").read_bytes()
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)  # not a pickle


def test_load_refuses_mismatched_model(tmp_path, tiny):
    _vec(d=32).save(tmp_path / "a")
    with pytest.raises(ValueError, match="d_model 32.*d_model 64"):
        SteeringVector.load(tmp_path / "a", model=tiny)
    _vec(layers=(0, 5)).save(tmp_path / "b")
    with pytest.raises(ValueError, match=r"Layer 5 is out of range"):
        SteeringVector.load(tmp_path / "b", model=tiny)


def test_corrupt_files(tmp_path):
    d = tmp_path / "v"
    _vec().save(d)
    t = d / "vector.safetensors"
    good = t.read_bytes()
    t.write_bytes(good[: len(good) // 2])
    with pytest.raises(VectorFileError, match="corrupt or truncated|could not be read"):
        SteeringVector.load(d)
    t.write_bytes(b"\x00" * 3)
    with pytest.raises(VectorFileError):
        SteeringVector.load(d)
    t.write_bytes(good)
    (d / "vector.json").write_text("{broken")
    with pytest.raises(VectorFileError, match="not valid vector metadata"):
        SteeringVector.load(d)
    meta = _vec().metadata()
    meta["layers"] = [0, 1, 2]
    (d / "vector.json").write_text(json.dumps(meta))
    with pytest.raises(VectorFileError, match="lists"):
        SteeringVector.load(d)
    with pytest.raises(VectorFileError, match="does not exist"):
        SteeringVector.load(tmp_path / "nothing")


def test_vector_set(tmp_path):
    s = SteeringVectorSet({"a": _vec(0), "b": _vec(1)})
    s.save(tmp_path / "set")
    back = SteeringVectorSet.load(tmp_path / "set")
    assert list(back) == ["a", "b"] and back["b"].allclose(s["b"], atol=0)
    assert len(s.map(lambda v: v * 2)) == 2
    with pytest.raises(KeyError, match="names are"):
        s["c"]
    with pytest.raises(ValueError, match="at least one"):
        SteeringVectorSet({})
