"""The CLI contract: extract writes vector files; generate prints baseline and steered text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from steerlens.cli import main
from steerlens.pairs import load_behaviour
from steerlens.vectors import SteeringVector


@pytest.fixture()
def pairs_file(tmp_path):
    return load_behaviour("sentiment").train[:8].to_jsonl(tmp_path / "pairs.jsonl")


def test_extract_then_generate_json(tmp_path, pairs_file, capsys):
    out = tmp_path / "vec"
    rc = main(["extract", "--model", "tiny-random", "--device", "cpu", "--pairs", str(pairs_file),
               "--layers", "0,1", "--position", "last", "--method", "mean_diff", "--out", str(out)])
    assert rc == 0
    assert (out / "vector.safetensors").exists() and (out / "vector.json").exists()
    vec = SteeringVector.load(out)
    assert vec.layers == [0, 1] and vec.n_pairs == 8 and vec.model_id == "tiny-random"
    capsys.readouterr()
    rc = main(["generate", "--model", "tiny-random", "--device", "cpu", "--vector", str(out),
               "--layer", "1", "--strength", "4", "--prompt", "Hello", "--max-new-tokens", "6",
               "--seed", "0", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"baseline", "steered", "prompt", "layer", "strength"}
    assert data["layer"] == 1 and data["strength"] == 4.0


def test_extract_from_behaviour_and_caa(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["extract", "--model", "tiny-random", "--device", "cpu", "--pairs",
                 "behaviour:refusal", "--layers", "1", "--out", str(out), "--method", "pca"]) == 0
    assert SteeringVector.load(out).method == "pca"
    caa = tmp_path / "caa.json"
    caa.write_text(json.dumps([{"question": f"Q{i}? (A) yes (B) no",
                                "answer_matching_behavior": "(A)",
                                "answer_not_matching_behavior": "(B)"} for i in range(3)]))
    assert main(["extract", "--model", "tiny-random", "--device", "cpu", "--pairs", str(caa),
                 "--layers", "1", "--out", str(tmp_path / "c")]) == 0


def test_cli_errors_are_one_line(tmp_path, pairs_file, capsys):
    rc = main(["extract", "--model", "tiny-random", "--device", "cpu", "--pairs", str(pairs_file),
               "--layers", "7", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "out of range: this model has layers 0..1" in capsys.readouterr().err
    rc = main(["extract", "--model", "tiny-random", "--pairs", "nope.jsonl", "--layers", "1",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "behaviour:NAME" in capsys.readouterr().err
    rc = main(["generate", "--model", "tiny-random", "--vector", str(tmp_path / "missing"),
               "--layer", "1", "--alpha", "1", "--prompt", "x"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["extract", "--model", "no-such-model", "--pairs", str(pairs_file), "--layers", "1",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "Unknown model" in capsys.readouterr().err


def test_console_entry_point():
    proc = subprocess.run([sys.executable, "-m", "steerlens.cli", "models"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "smollm2-135m-instruct" in proc.stdout


# ------------------------------------------------------------------ export / import (llama.cpp GGUF)


@pytest.fixture()
def saved_vector(tmp_path):
    import torch

    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)},
                         component="resid_post", model_id="tiny-random", method="mean_diff")
    return vec, vec.save(tmp_path / "vec")


def test_export_then_import_round_trip(tmp_path, saved_vector, capsys):
    import gguf
    import torch

    vec, vdir = saved_vector
    out = tmp_path / "new" / "dir" / "v.gguf"  # missing parents are created
    assert main(["export", "--vector", str(vdir), "--format", "gguf", "--out", str(out),
                 "--layers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "direction.1" in printed and "strength 1 baked in" in printed
    r = gguf.GGUFReader(out)
    assert [t.name for t in r.tensors] == ["direction.1"]
    assert main(["import", str(out), "--out", str(tmp_path / "back"), "--model", "tiny-random",
                 "--device", "cpu"]) == 0
    back = SteeringVector.load(tmp_path / "back")
    assert back.layers == [1] and torch.equal(back[1], vec[1])  # bit-exact
    assert back.metadata()["method"] == "mean_diff"
    # --strength is baked in: one float32 multiply per element
    assert main(["export", "--vector", str(vdir), "--out", str(tmp_path / "s.gguf"),
                 "--layers", "1", "--strength", "-3"]) == 0
    data = [t.data for t in gguf.GGUFReader(tmp_path / "s.gguf").tensors][0]
    assert (data == vec[1].numpy() * -3.0).all()
    assert main(["import", str(tmp_path / "s.gguf"), "--out", str(tmp_path / "b2"),
                 "--component", "resid_pre"]) == 0
    assert SteeringVector.load(tmp_path / "b2").layers == [2]


def test_export_import_errors_are_one_line(tmp_path, saved_vector, capsys):
    vec, vdir = saved_vector

    def err(argv):
        assert main(argv) == 2
        e = capsys.readouterr().err
        assert e.count("\n") == 1, e
        return e

    # layer 0 of resid_post would be direction.0, which llama.cpp refuses
    e = err(["export", "--vector", str(vdir), "--out", str(tmp_path / "v.gguf")])
    assert "direction.0" in e and "Valid layers for resid_post: 1 and above" in e
    assert not (tmp_path / "v.gguf").exists()
    e = err(["export", "--vector", str(vdir), "--out", str(tmp_path / "v.gguf"), "--layers", "5"])
    assert "its layers are [0, 1]" in e
    e = err(["export", "--vector", str(vdir), "--out", str(tmp_path), "--layers", "1"])
    assert "is a directory" in e
    e = err(["export", "--vector", str(vdir), "--out", str(tmp_path / "v.gguf"), "--layers", "1",
             "--strength", "nan"])
    assert "finite" in e
    e = err(["export", "--vector", str(vdir), "--out", str(tmp_path / "v.gguf"),
             "--format", "onnx"])
    assert "invalid choice" in e and "gguf" in e
    mlp = SteeringVector({1: vec[1]}, component="mlp_out").save(tmp_path / "mlp")
    e = err(["export", "--vector", str(mlp), "--out", str(tmp_path / "v.gguf")])
    assert "cannot express component 'mlp_out'" in e and "['resid_post', 'resid_pre']" in e
    assert not (tmp_path / "v.gguf").exists()

    e = err(["import", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "i")])
    assert "does not exist" in e
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 3)
    e = err(["import", str(tmp_path / "junk.gguf"), "--out", str(tmp_path / "i")])
    assert "not a readable GGUF" in e
    assert not (tmp_path / "i").exists()
    wide = SteeringVector({1: vec[1].repeat(2)}, component="resid_post")
    wide.to_gguf(tmp_path / "wide.gguf")
    e = err(["import", str(tmp_path / "wide.gguf"), "--out", str(tmp_path / "i"),
             "--model", "tiny-random", "--device", "cpu"])
    assert "width 128" in e and "d_model 64" in e
    assert not (tmp_path / "i").exists()
