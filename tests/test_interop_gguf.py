"""GGUF control vectors (llama.cpp layout): writing, reading, layer mapping, bad files.

The layout is checked byte-independently: files are read back with the `gguf` package's own
reader and hand-built with its writer following repeng's `export_gguf` conventions (model_hint =
HF model type, uint32 layer_count, `direction.{layer}` float32), so these tests do not only check
our reader against our writer. Real llama.cpp is exercised in tests/test_llama_cpp.py.
"""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch

from steerlens.interop.gguf import (
    control_vector_buffer,
    gguf_index,
    read_control_vector,
)
from steerlens.vectors import SteeringVector, VectorFileError


def _vec(component="resid_pre", layers=(1, 2), d=64, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(d, generator=g) for layer in layers},
                          component=component, model_id="tiny-random", method="mean_diff",
                          n_pairs=7, extra={"seed": seed}, **kw)


def _write_raw(path, tensors, arch="controlvector", hint="llama", count="auto", count_type=None):
    """A control vector written like repeng's ControlVector.export_gguf."""
    w = gguf.GGUFWriter(path, arch)
    w.add_string(f"{arch}.model_hint", hint)
    if count == "auto":
        count = len(tensors)
    if count is not None:
        (count_type or w.add_uint32)(f"{arch}.layer_count", count)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------ layer mapping


def test_gguf_index_mapping():
    # llama.cpp adds direction.N to the output of block N == resid_post N == resid_pre N+1
    assert gguf_index(5, "resid_post") == 5
    assert gguf_index(5, "resid_pre") == 4
    assert gguf_index(1, "resid_post") == 1
    assert gguf_index(2, "resid_pre") == 1


@pytest.mark.parametrize("layer,component", [(0, "resid_post"), (0, "resid_pre"),
                                             (1, "resid_pre")])
def test_unreachable_layers_refused(layer, component):
    with pytest.raises(ValueError, match="direction.0"):
        gguf_index(layer, component)


@pytest.mark.parametrize("component", ["resid_mid", "attn_out", "mlp_out"])
def test_components_llama_cannot_express_are_refused(tmp_path, component):
    vec = _vec(component)
    with pytest.raises(ValueError, match=r"cannot express.*\['resid_post', 'resid_pre'\]"):
        vec.to_gguf(tmp_path / "v.gguf")
    assert not list(tmp_path.iterdir())  # nothing written


def test_written_layout_read_by_gguf_package(tmp_path):
    vec = _vec("resid_pre", layers=(1, 3))  # resid_pre 1 -> direction.0 would be invalid
    with pytest.raises(ValueError, match="resid_pre"):
        vec.to_gguf(tmp_path / "bad.gguf")
    vec = _vec("resid_pre", layers=(2, 5))
    path = vec.to_gguf(tmp_path / "v.gguf")
    r = gguf.GGUFReader(path)
    assert r.get_field("general.architecture").contents() == "controlvector"
    assert r.get_field("controlvector.model_hint").contents() == "tiny-random"
    assert r.get_field("controlvector.layer_count").contents() == 2
    got = {t.name: np.array(t.data) for t in r.tensors}
    assert sorted(got) == ["direction.1", "direction.4"]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
    # exact copies of the float32 directions, at layer - 1
    np.testing.assert_array_equal(got["direction.1"], vec[2].numpy())
    np.testing.assert_array_equal(got["direction.4"], vec[5].numpy())
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp left


def test_strength_is_baked_into_the_tensors(tmp_path):
    vec = _vec("resid_post", layers=(1,))
    path = vec.to_gguf(tmp_path / "v.gguf", strength=-2.5)
    data = np.array(gguf.GGUFReader(path).tensors[0].data)
    # one correctly rounded float32 multiply per element: exact
    np.testing.assert_array_equal(data, vec[1].numpy() * np.float32(-2.5))
    back = SteeringVector.from_gguf(path)
    np.testing.assert_array_equal(back[1].numpy(), data)  # as stored: what llama.cpp adds at 1
    assert back.extra["gguf_strength"] == -2.5
    with pytest.raises(ValueError, match="finite"):
        vec.to_gguf(tmp_path / "w.gguf", strength=float("nan"))


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("component", ["resid_pre", "resid_post"])
def test_round_trip_bit_exact(tmp_path, component):
    vec = _vec(component, layers=(2, 3, 7), d=576)
    path = vec.to_gguf(tmp_path / "v.gguf")
    back = SteeringVector.from_gguf(path)
    assert back.layers == vec.layers and back.component == component
    for layer in vec.layers:
        assert torch.equal(back[layer], vec[layer])  # bit-exact
    assert back.metadata() == vec.metadata()
    assert back.version == vec.version


def test_resid_pre_and_resid_post_read_the_same_tensor(tmp_path):
    vec = _vec("resid_pre", layers=(2, 3))
    path = vec.to_gguf(tmp_path / "v.gguf")
    post = SteeringVector.from_gguf(path, component="resid_post")
    assert post.component == "resid_post" and post.layers == [1, 2]
    assert torch.equal(post[1], vec[2]) and torch.equal(post[2], vec[3])
    with pytest.raises(ValueError, match="Valid components"):
        SteeringVector.from_gguf(path, component="attn_out")


def test_round_trip_with_model_checks(tmp_path, tiny):
    vec = _vec("resid_post", layers=(1,))
    path = vec.to_gguf(tmp_path / "v.gguf", model=tiny)
    back = SteeringVector.from_gguf(path, model=tiny, strict=True)
    assert torch.equal(back[1], vec[1])


def test_buffer_matches_llama_cpp_loader_layout():
    vec = _vec("resid_pre", layers=(2, 4), d=8)
    buf = control_vector_buffer(vec.directions, vec.component, n_layers=6, strength=3.0)
    assert buf.dtype == np.float32 and buf.shape == (5 * 8,)
    # common_control_vector_load: direction.N at (N - 1) * n_embd, times the scale
    want = np.zeros((5, 8), np.float32)
    want[0] = vec[2].numpy() * np.float32(3.0)   # resid_pre 2 -> direction.1 -> slot 0
    want[2] = vec[4].numpy() * np.float32(3.0)   # resid_pre 4 -> direction.3 -> slot 2
    np.testing.assert_array_equal(buf, want.reshape(-1))
    with pytest.raises(ValueError, match="beyond"):
        control_vector_buffer({6: np.ones(8)}, "resid_post", n_layers=6)
    with pytest.raises(ValueError, match="Valid components"):
        control_vector_buffer({3: np.ones(8)}, "mlp_out", n_layers=6)


# ------------------------------------------------------------------ other tools' files


def test_reads_repeng_style_file(tmp_path):
    g = np.random.default_rng(0)
    dirs = {layer: g.standard_normal(64).astype(np.float32) for layer in (3, 1, 2)}
    path = _write_raw(tmp_path / "repeng.gguf", {f"direction.{k}": v for k, v in dirs.items()})
    vec = SteeringVector.from_gguf(path)
    assert vec.component == "resid_post" and vec.layers == [1, 2, 3]
    for k, v in dirs.items():
        np.testing.assert_array_equal(vec[k].numpy(), v)
    assert vec.extra == {"source": "gguf", "model_hint": "llama"}
    assert vec.model_id == "unknown"


def test_reads_cvector_generator_style_file(tmp_path, tiny):
    # llama.cpp's cvector-generator writes layer_count as int32
    d = np.ones(64, np.float32)
    path = _write_raw(tmp_path / "cv.gguf", {"direction.1": d})
    w = tmp_path / "cv32.gguf"
    writer = gguf.GGUFWriter(w, "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_int32("controlvector.layer_count", 1)
    writer.add_tensor("direction.1", d)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for p in (path, w):
        vec = SteeringVector.from_gguf(p, model=tiny)
        assert vec.layers == [1] and vec.component == "resid_post"
        # tiny has 2 blocks: direction.1 as resid_pre is layer 2, which it lacks
        with pytest.raises(ValueError, match="out of range"):
            SteeringVector.from_gguf(p, model=tiny, component="resid_pre")


# ------------------------------------------------------------------ bad files


def test_wrong_architecture(tmp_path):
    path = _write_raw(tmp_path / "m.gguf", {"direction.1": np.ones(4, np.float32)}, arch="llama")
    with pytest.raises(VectorFileError, match="'llama', not 'controlvector'"):
        SteeringVector.from_gguf(path)


def test_missing_layers(tmp_path):
    path = _write_raw(tmp_path / "m.gguf", {"direction.1": np.ones(4, np.float32)}, count=3)
    with pytest.raises(VectorFileError, match="layer_count 3 but holds 1"):
        SteeringVector.from_gguf(path)


def test_steerlens_file_with_a_tensor_removed(tmp_path):
    vec = _vec("resid_post", layers=(1, 2))
    path = vec.to_gguf(tmp_path / "v.gguf")
    cv = read_control_vector(path)
    # rebuild the file with the same steerlens metadata but one direction dropped
    r = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(tmp_path / "cut.gguf", "controlvector")
    for key in ("controlvector.model_hint", "steerlens.component", "steerlens.metadata"):
        w.add_string(key, r.get_field(key).contents())
    w.add_uint32("controlvector.layer_count", 1)
    w.add_tensor("direction.1", cv.directions[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(VectorFileError, match="records resid_post layers"):
        SteeringVector.from_gguf(tmp_path / "cut.gguf")


def test_edited_tensor_data_detected(tmp_path):
    vec = _vec("resid_post", layers=(1,))
    path = vec.to_gguf(tmp_path / "v.gguf")
    raw = bytearray(path.read_bytes())
    off = raw.rfind(vec[1].numpy().tobytes())
    assert off > 0
    raw[off:off + 4] = np.float32(1000.0).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(VectorFileError, match="edited or corrupted"):
        SteeringVector.from_gguf(path)


def test_d_model_mismatch(tmp_path, tiny):
    path = _vec("resid_post", layers=(1,), d=32).to_gguf(tmp_path / "v.gguf")
    with pytest.raises(ValueError, match="width 32 .* d_model 64"):
        SteeringVector.from_gguf(path, model=tiny)
    with pytest.raises(ValueError, match="d_model"):
        _vec("resid_post", layers=(1,), d=32).to_gguf(tmp_path / "w.gguf", model=tiny)


def test_layer_beyond_model(tmp_path, tiny):
    path = _write_raw(tmp_path / "m.gguf", {"direction.5": np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=r"valid indices are 1\.\.1"):
        SteeringVector.from_gguf(path, model=tiny)


@pytest.mark.parametrize("keep", [0, 10, 100, -8, -40])
def test_truncated(tmp_path, keep):
    path = _vec("resid_post", layers=(1, 2)).to_gguf(tmp_path / "v.gguf")
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:len(raw) + keep])
    with pytest.raises(VectorFileError, match="truncated|not a readable GGUF"):
        SteeringVector.from_gguf(path)


@pytest.mark.parametrize("tensors,match", [
    ({"direction.0": np.ones(4, np.float32)}, "direction.0 is refused"),
    ({"blk.1.weight": np.ones(4, np.float32)}, "only direction.N"),
    ({"direction.1": np.ones(4, np.float16)}, "only F32"),
    ({"direction.1": np.ones((2, 4), np.float32)}, "1-D"),
    ({"direction.1": np.ones(4, np.float32), "direction.2": np.ones(5, np.float32)},
     "different widths"),
    ({}, "no direction tensors"),
])
def test_malformed_tensors(tmp_path, tensors, match):
    path = _write_raw(tmp_path / "m.gguf", tensors)
    with pytest.raises(VectorFileError, match=match):
        SteeringVector.from_gguf(path)


def test_not_a_file(tmp_path):
    with pytest.raises(VectorFileError, match="does not exist"):
        SteeringVector.from_gguf(tmp_path / "nope.gguf")
    with pytest.raises(VectorFileError, match="not a regular file"):
        SteeringVector.from_gguf(tmp_path)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(VectorFileError, match="not a readable GGUF"):
        SteeringVector.from_gguf(tmp_path / "junk.gguf")


def test_failed_write_keeps_old_file(tmp_path):
    path = _vec("resid_post", layers=(1,), seed=1).to_gguf(tmp_path / "v.gguf")
    before = path.read_bytes()
    bad = SteeringVector({1: torch.ones(64)}, component="resid_post", extra={"x": object()})
    with pytest.raises(TypeError):
        bad.to_gguf(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["v.gguf"]


# ------------------------------------------------------------------ from_tensors


def test_from_tensors_accepts_other_libraries_arrays():
    vec = SteeringVector.from_tensors(
        {np.int64(3): np.arange(4, dtype=np.float16), 1: [1.0, 2.0, 3.0, 4.0],
         torch.tensor(2): torch.ones(4, dtype=torch.bfloat16, requires_grad=True)},
        component="resid_post", method="repeng", n_pairs=5)
    assert vec.layers == [1, 2, 3] and vec.component == "resid_post"
    assert vec[3].dtype == torch.float32 and not vec[2].requires_grad
    np.testing.assert_array_equal(vec[3].numpy(), np.arange(4, dtype=np.float32))
    assert vec.method == "repeng" and vec.n_pairs == 5 and vec.model_id == "unknown"


@pytest.mark.parametrize("bad,exc,match", [
    ({}, ValueError, "at least one layer"),
    ({"3": [1.0]}, ValueError, "non-negative ints"),
    ({True: [1.0]}, ValueError, "non-negative ints"),
    ({-1: [1.0]}, ValueError, "non-negative ints"),
    ({1.0: [1.0]}, ValueError, "non-negative ints"),
    ({1: [[1.0, 2.0]]}, ValueError, r"shape \[d_model\]"),
    ({1: "abc"}, TypeError, "cannot be read as numbers"),
    ([1.0], TypeError, "[Mm]apping"),  # (beartype in the test run catches it first)
    ({1: [1.0], 2: [1.0, 2.0]}, ValueError, "share d_model"),
    ({1: [float("inf")]}, ValueError, "non-finite"),
    ({1: np.array([1 + 2j])}, TypeError, "complex"),
])
def test_from_tensors_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        SteeringVector.from_tensors(bad)


def test_from_tensors_with_model(tiny):
    vec = SteeringVector.from_tensors({1: torch.ones(64)}, model=tiny)
    assert vec.model_id == "tiny-random"
    with pytest.raises(ValueError, match="out of range"):
        SteeringVector.from_tensors({5: torch.ones(64)}, model=tiny)
    with pytest.raises(ValueError, match="d_model"):
        SteeringVector.from_tensors({1: torch.ones(8)}, model=tiny)
    with pytest.warns(UserWarning, match="built on model 'gpt2'"):
        SteeringVector.from_tensors({1: torch.ones(64)}, model=tiny, model_id="gpt2")


# ------------------------------------------------------------------ the agreement figure


def test_agreement_figure_draws_the_saved_json():
    from steerlens.figures.interop import llama_cpp_agreement_figure

    def summary(kl_sl, kl_ll, ovl):
        ci = {"mean": ovl, "low": ovl - 0.1, "high": ovl + 0.1, "n": 3}
        return {"kl_pearson": {"r": 0.9, "low": 0.5, "high": 0.99, "n": 3},
                "topk_overlap": ci, "delta_r": ci, "cross_kl_over_base": 1.2,
                "per_prompt": {"kl_steerlens": kl_sl, "kl_llama": kl_ll}}

    result = {
        "settings": {"model": "m", "behaviour": "sentiment", "layer": 12, "n_prompts": 3,
                     "headline_strength": 4.0, "top_k": 10},
        "results": {"correct": {"4.0": summary([0.1, 0.2, 0.4], [0.11, 0.19, 0.41], 0.8)},
                    "off_by_one_late": {"4.0": summary([0.1, 0.2, 0.4], [0.3, 0.1, 0.2], 0.3)}},
        "base_disagreement": {"kl_steerlens_fp32_vs_llama_q4_1": {"mean": 0.007, "low": 0.005,
                                                                  "high": 0.009}},
        "check": {"thresholds": {"topk_overlap": 0.6, "delta_r": 0.95, "cross_kl_over_base": 3}},
    }
    fig = llama_cpp_agreement_figure(result)
    scatter = [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert [list(t.y) for t in scatter] == [[0.11, 0.19, 0.41], [0.3, 0.1, 0.2]]  # exact copies
    assert "direction.11" in fig.layout.title.text
    with pytest.raises(ValueError, match="lacks"):
        llama_cpp_agreement_figure({"settings": {}})
    result["settings"]["headline_strength"] = 2.0
    with pytest.raises(ValueError, match="no strength 2.0"):
        llama_cpp_agreement_figure(result)
