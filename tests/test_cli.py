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
