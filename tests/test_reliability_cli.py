"""The CLI never answers a user error with a traceback (issue 15).

Every subcommand is driven with a table of bad inputs. Each case must exit 2 with exactly one line
on stderr (naming the argument or file at fault), no "Traceback" anywhere, and nothing created or
changed under the test's directory. Cases run in-process (`steerlens.cli.main`) on the tiny model
for speed; one subprocess case proves no traceback reaches a real terminal either.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from steerlens.cli import main
from steerlens.methods import build_vector
from steerlens.pairs import ContrastPair, ContrastSet, IdenticalPairWarning, load_behaviour
from steerlens.vectors import SteeringVector

TINY = ["--model", "tiny-random"]
CPU = ["--device", "cpu"]


@dataclass(frozen=True)
class Case:
    """One bad invocation: argv (with {placeholders} for the fixture's paths) and the text the
    one-line message must contain (the argument or the file it is about)."""

    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...] = ()
    skip: str | None = None


def _extract(*extra: str, pairs: str = "{pairs}", out: str = "{work}/vec") -> tuple[str, ...]:
    return ("extract", *TINY, *CPU, "--pairs", pairs, "--layers", "1", "--out", out, *extra)


def _gen(*extra: str, vector: str = "{vec}", strength: str | None = "1") -> tuple[str, ...]:
    s = () if strength is None else ("--strength", strength)
    return ("generate", *TINY, *CPU, "--vector", vector, "--layer", "1", "--prompt", "Hi",
            "--max-new-tokens", "3", *s, *extra)


def _argv_without(argv: tuple[str, ...], flag: str) -> tuple[str, ...]:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


def _with(argv: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    i = argv.index(flag)
    return argv[:i + 1] + (value,) + argv[i + 2:]


NO_CUDA = None if not torch.cuda.is_available() else "CUDA is available here"
ROOT = "running as root: permissions are not enforced" if os.geteuid() == 0 else None

CASES: list[Case] = [
    # ---- top level and `models`
    Case("no-command", ()),
    Case("unknown-command", ("frobnicate",), ("frobnicate",)),
    Case("models-extra-arg", ("models", "--bogus"), ("--bogus",)),
    # ---- extract: the pairs file
    Case("pairs-directory", _extract(pairs="{inp}"), ("--pairs", "directory")),
    Case("pairs-empty-arg", _extract(pairs=""), ("--pairs",)),
    Case("pairs-name-too-long", _extract(pairs="{inp}/" + "p" * 300), ("--pairs",)),
    Case("pairs-missing", _extract(pairs="{inp}/nope.jsonl"), ("nope.jsonl",)),
    Case("pairs-dev-zero", _extract(pairs="/dev/zero"), ("/dev/zero",),
         None if os.path.exists("/dev/zero") else "no /dev/zero"),
    Case("pairs-empty", _extract(pairs="{inp}/empty.jsonl"), ("empty.jsonl",)),
    Case("pairs-blank-lines", _extract(pairs="{inp}/blank.jsonl"), ("blank.jsonl",)),
    Case("pairs-not-object", _extract(pairs="{inp}/notobj.jsonl"), ("notobj.jsonl:2",)),
    Case("pairs-lacks-key", _extract(pairs="{inp}/lacks.jsonl"), ("lacks.jsonl:2", "negative")),
    Case("pairs-bad-json", _extract(pairs="{inp}/badjson.jsonl"), ("badjson.jsonl:3",)),
    Case("pairs-not-utf8", _extract(pairs="{inp}/latin1.jsonl"), ("latin1.jsonl", "UTF-8")),
    Case("pairs-non-string", _extract(pairs="{inp}/nonstr.jsonl"), ("nonstr.jsonl:1",)),
    Case("pairs-empty-text", _extract(pairs="{inp}/emptytext.jsonl"), ("emptytext.jsonl:2",)),
    Case("pairs-prompt-not-str", _extract(pairs="{inp}/badprompt.jsonl"), ("badprompt.jsonl:1",)),
    Case("pairs-all-identical", _extract(pairs="{inp}/identical.jsonl"),
         ("identical.jsonl", "identical")),
    Case("caa-dict", _extract(pairs="{inp}/caa_dict.json"), ("caa_dict.json",)),
    Case("caa-strings", _extract(pairs="{inp}/caa_strings.json"), ("caa_strings.json", "item 0")),
    Case("caa-empty-list", _extract(pairs="{inp}/caa_empty.json"), ("caa_empty.json",)),
    Case("caa-bad-json", _extract(pairs="{inp}/caa_bad.json"), ("caa_bad.json",)),
    Case("caa-answer-not-str", _extract(pairs="{inp}/caa_none.json"), ("caa_none.json", "item 1")),
    Case("caa-empty-answer", _extract(pairs="{inp}/caa_blank.json"), ("caa_blank.json", "item 0")),
    Case("behaviour-unknown", _extract(pairs="behaviour:nope"), ("nope", "sentiment")),
    Case("behaviour-empty", _extract(pairs="behaviour:"), ("behaviour",)),
    Case("pairs-too-long", _extract(pairs="{inp}/long.jsonl"), ("long.jsonl", "context")),
    # ---- extract: the other arguments
    Case("layers-malformed", _with(_extract(), "--layers", "abc"), ("--layers",)),
    Case("layers-empty", _with(_extract(), "--layers", ""), ("--layers",)),
    Case("layers-negative", _with(_extract(), "--layers", "-1"), ("--layers",)),
    Case("layers-out-of-range", _with(_extract(), "--layers", "7"), ("0..1",)),
    Case("layers-duplicate", _with(_extract(), "--layers", "1,1"), ("--layers",)),
    Case("batch-size-zero", _extract("--batch-size", "0"), ("--batch-size",)),
    Case("batch-size-negative", _extract("--batch-size", "-3"), ("--batch-size",)),
    Case("batch-size-text", _extract("--batch-size", "x"), ("--batch-size",)),
    Case("method-unknown", _extract("--method", "nope"), ("--method",)),
    Case("read-at-all", _extract("--read-at", "all"), ("--read-at",)),
    Case("component-unknown", _extract("--component", "resid"), ("--component",)),
    Case("pairs-missing-arg", _argv_without(_extract(), "--pairs"), ("--pairs",)),
    Case("extract-model-unknown", _with(_extract(), "--model", "no-such-model"), ("no-such-model",)),
    Case("extract-model-empty", _with(_extract(), "--model", ""), ("--model",)),
    Case("extract-device-banana", _with(_extract(), "--device", "banana"), ("--device", "banana")),
    Case("extract-device-cuda", _with(_extract(), "--device", "cuda"), ("--device", "cuda"), NO_CUDA),
    Case("extract-device-cuda-99", _with(_extract(), "--device", "cuda:99"), ("--device",)),
    Case("extract-device-malformed", _with(_extract(), "--device", "cuda:x"), ("--device",)),
    Case("extract-device-meta", _with(_extract(), "--device", "meta"), ("--device",)),
    Case("out-existing-file", _extract(out="{afile}"), ("--out", "afile.txt")),
    Case("out-under-file", _extract(out="{afile}/sub/vec"), ("--out", "afile.txt")),
    Case("out-name-too-long", _extract(out="{work}/" + "x" * 300), ("--out",)),
    Case("out-vector-json-is-dir", _extract(out="{inp}/jsondir"), ("--out", "vector.json")),
    Case("out-empty", _extract(out=""), ("--out",)),
    Case("out-unwritable", _extract(out="{inp}/readonly/vec"), ("--out",), ROOT),
    # ---- generate
    Case("vector-missing", _gen(vector="{inp}/nope"), ("nope",)),
    Case("vector-name-too-long", _gen(vector="{inp}/" + "v" * 300), ("--vector",)),
    Case("vector-empty-dir", _gen(vector="{inp}/emptydir"), ("emptydir",)),
    Case("vector-extra-list", _gen(vector="{inp}/v_extra_list"), ("v_extra_list",)),
    Case("vector-dmodel-text", _gen(vector="{inp}/v_dmodel"), ("v_dmodel",)),
    Case("vector-json-invalid", _gen(vector="{inp}/v_badjson"), ("v_badjson",)),
    Case("vector-json-list", _gen(vector="{inp}/v_list"), ("v_list",)),
    Case("vector-json-not-utf8", _gen(vector="{inp}/v_latin1"), ("v_latin1",)),
    Case("vector-json-is-dir", _gen(vector="{inp}/v_metadir"), ("v_metadir",)),
    Case("vector-tensors-truncated", _gen(vector="{inp}/v_trunc"), ("v_trunc",)),
    Case("vector-layers-text", _gen(vector="{inp}/v_layers_text"), ("v_layers_text",)),
    Case("vector-layers-int", _gen(vector="{inp}/v_layers_int"), ("v_layers_int",)),
    Case("vector-npairs-inf", _gen(vector="{inp}/v_npairs_inf"), ("v_npairs_inf",)),
    Case("vector-component-bad", _gen(vector="{inp}/v_component"), ("v_component",)),
    Case("vector-wrong-width", _gen(vector="{inp}/v_width"), ("d_model", "v_width")),
    Case("vector-nan", _gen(vector="{inp}/v_nan"), ("v_nan",)),
    Case("layer-not-in-vector", _with(_gen(), "--layer", "5"), ("--layer",)),
    Case("layer-negative", _with(_gen(), "--layer", "-1"), ("--layer",)),
    Case("layer-text", _with(_gen(), "--layer", "one"), ("--layer",)),
    Case("strength-missing", _gen(strength=None), ("--strength",)),
    Case("strength-nan", _gen(strength="nan"), ("--strength",)),
    Case("strength-inf", _gen(strength="inf"), ("--strength",)),
    Case("strength-neg-inf", _gen(strength="-inf"), ("--strength",)),
    Case("strength-eq-neg-inf", _gen(strength=None) + ("--strength=-inf",), ("--strength",)),
    Case("strength-1e300", _gen(strength="1e300"), ("Strength 1e+300",)),
    Case("strength-text", _gen(strength="big"), ("--strength",)),
    Case("max-new-tokens-zero", _with(_gen(), "--max-new-tokens", "0"),
         ("--max-new-tokens",)),
    Case("max-new-tokens-negative", _with(_gen(), "--max-new-tokens", "-5"),
         ("--max-new-tokens",)),
    Case("max-new-tokens-past-context",
         _with(_gen(), "--max-new-tokens", "1000"), ("context",)),
    Case("max-new-tokens-huge", _with(_gen(), "--max-new-tokens", str(10**30)), ("context",)),
    Case("seed-huge", _gen("--seed", str(10**30)), ("--seed", "2**63")),
    Case("seed-negative", _gen("--seed", "-1"), ("--seed",)),
    Case("temperature-negative", _gen("--temperature", "-1"), ("--temperature",)),
    Case("temperature-inf", _gen("--temperature", "inf"), ("--temperature",)),
    Case("temperature-nan", _gen("--temperature", "nan"), ("--temperature",)),
    Case("positions-unknown", _gen("--positions", "middle"), ("--positions",)),
    Case("prompt-not-utf8", _with(_gen(), "--prompt", "caf\udce9"), ("--prompt", "UTF-8")),
    Case("model-not-utf8", _with(_gen(), "--model", "caf\udce9"), ("--model", "UTF-8")),
    Case("prompt-too-long", _with(_gen(), "--prompt", "x" * 400), ("--prompt", "context")),
    Case("generate-model-unknown", _with(_gen(), "--model", "no-such-model"),
         ("no-such-model",)),
    Case("generate-device-banana", _with(_gen(), "--device", "banana"),
         ("--device",)),
    Case("generate-device-cuda", _with(_gen(), "--device", "cuda"), ("--device",),
         NO_CUDA),
    # ---- demo
    Case("demo-layer-out-of-range", ("demo", *TINY, *CPU, "--layer", "99", "--out", "{work}/d"),
         ("0..1",)),
    Case("demo-layer-negative", ("demo", *TINY, *CPU, "--layer", "-1", "--out", "{work}/d"),
         ("--layer",)),
    Case("demo-out-existing-file", ("demo", *TINY, *CPU, "--out", "{afile}"), ("--out",)),
    Case("demo-out-under-file", ("demo", *TINY, *CPU, "--out", "{afile}/d"), ("--out",)),
    Case("demo-report-is-dir", ("demo", *TINY, *CPU, "--out", "{inp}/htmldir"),
         ("--out", "demo.html")),
    Case("demo-device-banana", ("demo", *TINY, "--device", "banana"), ("--device",)),
    Case("demo-device-cuda", ("demo", *TINY, "--device", "cuda"), ("--device",), NO_CUDA),
    Case("demo-model-unknown", ("demo", "--model", "no-such-model", *CPU, "--out", "{work}/d"),
         ("no-such-model",)),
    # ---- arena (argument errors only: no case may start a server)
    Case("arena-port-negative", ("arena", *TINY, *CPU, "--port", "-1"), ("--port",)),
    Case("arena-port-huge", ("arena", *TINY, *CPU, "--port", "70000"), ("--port",)),
    Case("arena-port-text", ("arena", *TINY, *CPU, "--port", "http"), ("--port",)),
    Case("arena-host-remote", ("arena", *TINY, *CPU, "--host", "0.0.0.0"), ("--allow-remote",)),
    Case("arena-host-name", ("arena", *TINY, *CPU, "--host", "example.com"), ("--allow-remote",)),
    Case("arena-host-unresolvable", ("arena", *TINY, *CPU, "--host", "no such host!",
                                     "--allow-remote"), ("--host",)),
    Case("arena-port-in-use", ("arena", *TINY, *CPU, "--port", "{busy_port}"), ("--port",)),
    Case("arena-device-banana", ("arena", *TINY, "--device", "banana", "--port", "0"),
         ("--device",)),
    Case("arena-model-unknown", ("arena", "--model", "no-such-model", *CPU, "--port", "0"),
         ("no-such-model",)),
]


def _vector_variant(src: Path, dst: Path, meta=None, tensors: bytes | None = None) -> None:
    shutil.copytree(src, dst)
    if meta is not None:
        path = dst / "vector.json"
        if isinstance(meta, bytes):
            path.write_bytes(meta)
        elif callable(meta):
            new = meta(json.loads(path.read_text()))
            path.write_text(new if isinstance(new, str) else json.dumps(new))
        else:
            path.write_text(meta)
    if tensors is not None:
        (dst / "vector.safetensors").write_bytes(tensors)


def _set(key, value):
    def edit(meta):
        meta[key] = value
        return meta
    return edit


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("cli")
    inp = root / "in"
    inp.mkdir()
    (root / "work").mkdir()
    pairs = load_behaviour("sentiment").train[:4]
    pairs.to_jsonl(inp / "pairs.jsonl")
    (inp / "afile.txt").write_text("x")
    (inp / "empty.jsonl").write_text("")
    (inp / "blank.jsonl").write_text("\n  \n\n")
    good = '{"positive": "a", "negative": "b"}\n'
    (inp / "notobj.jsonl").write_text(good + "[1, 2]\n")
    (inp / "lacks.jsonl").write_text(good + '{"positive": "a"}\n')
    (inp / "badjson.jsonl").write_text(good + good + "{not json}\n")
    (inp / "latin1.jsonl").write_bytes(good.encode() + '{"positive": "caf\xe9", "negative": "x"}\n'
                                       .encode("latin-1"))
    (inp / "nonstr.jsonl").write_text('{"positive": 5, "negative": "b"}\n')
    (inp / "emptytext.jsonl").write_text(good + '{"positive": "", "negative": "b"}\n')
    (inp / "badprompt.jsonl").write_text('{"positive": "a", "negative": "b", "prompt": [1]}\n')
    (inp / "identical.jsonl").write_text('{"positive": "same", "negative": "same"}\n' * 3)
    (inp / "long.jsonl").write_text(json.dumps({"positive": "y" * 400, "negative": "n"}) + "\n")
    (inp / "caa_dict.json").write_text('{"question": "q"}')
    (inp / "caa_strings.json").write_text('["a", "b"]')
    (inp / "caa_empty.json").write_text("[]")
    (inp / "caa_bad.json").write_text("[{")
    item = {"question": "Q? (A) yes (B) no", "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)"}
    (inp / "caa_none.json").write_text(json.dumps(
        [item, {**item, "answer_matching_behavior": None}]))
    (inp / "caa_blank.json").write_text(json.dumps([{**item, "answer_matching_behavior": []}]))
    (inp / "jsondir" / "vector.json").mkdir(parents=True)
    (inp / "htmldir" / "demo.html").mkdir(parents=True)
    (inp / "emptydir").mkdir()
    ro = inp / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    vec = build_vector(tiny, pairs, [1], show_progress=False).save(inp / "vec")
    _vector_variant(vec, inp / "v_extra_list", _set("extra", [1, 2]))
    _vector_variant(vec, inp / "v_dmodel", _set("d_model", "abc"))
    _vector_variant(vec, inp / "v_badjson", "{not json")
    _vector_variant(vec, inp / "v_list", "[]")
    _vector_variant(vec, inp / "v_latin1", b'{"method": "caf\xe9"}')
    _vector_variant(vec, inp / "v_layers_text", _set("layers", "abc"))
    _vector_variant(vec, inp / "v_layers_int", _set("layers", 5))
    _vector_variant(vec, inp / "v_npairs_inf", lambda m: json.dumps(m).replace(
        f'"n_pairs": {m["n_pairs"]}', '"n_pairs": 1e400'))
    _vector_variant(vec, inp / "v_component", _set("component", "nope"))
    _vector_variant(vec, inp / "v_trunc", tensors=(vec / "vector.safetensors").read_bytes()[:40])
    shutil.copytree(vec, inp / "v_metadir")
    (inp / "v_metadir" / "vector.json").unlink()
    (inp / "v_metadir" / "vector.json").mkdir()
    SteeringVector({0: torch.ones(32), 1: torch.ones(32)}, model_id="tiny-random").save(
        inp / "v_width")
    from safetensors.torch import save_file
    _vector_variant(vec, inp / "v_nan")
    save_file({"layer.1": torch.full((64,), float("nan"))},
              str(inp / "v_nan" / "vector.safetensors"))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    paths = {"root": root, "inp": inp, "work": root / "work", "pairs": inp / "pairs.jsonl",
             "afile": inp / "afile.txt", "vec": vec, "busy_port": busy.getsockname()[1]}
    yield paths
    busy.close()
    ro.chmod(0o700)


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(autouse=True)
def _no_server(monkeypatch):
    """No case may start serving: fail loudly instead of hanging."""
    from steerlens.arena import server

    def refuse(self, *a, **k):
        raise AssertionError("test guard: a bad-input case reached serve_forever")

    monkeypatch.setattr(server.ArenaServer, "serve_forever", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, env, capsys, monkeypatch):
    if case.skip:
        pytest.skip(case.skip)
    monkeypatch.chdir(env["work"])
    argv = [a.format(**env) for a in case.argv]
    before = _snapshot(env["root"])
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("steerlens"), err
    for text in case.expect:
        assert text.format(**env) in err, (text, err)
    assert _snapshot(env["root"]) == before, "a failed command created or changed files"


def test_no_traceback_reaches_a_terminal(env):
    """A real process: the bad --pairs directory case, stderr as a terminal would see it."""
    proc = subprocess.run(
        [sys.executable, "-m", "steerlens.cli", "extract", *TINY, *CPU, "--pairs", str(env["inp"]),
         "--layers", "1", "--out", str(env["work"] / "sub")],
        capture_output=True, text=True, timeout=120, cwd=env["work"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.splitlines()) == 1 and "--pairs" in proc.stderr
    assert not (env["work"] / "sub").exists()


def test_checks_before_loading_the_model(env, monkeypatch, capsys):
    """Device, output path, pairs file, seed and numeric ranges are refused before any model loads."""
    import steerlens.backend as backend

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the argument check")

    monkeypatch.setattr(backend, "load_model", boom)
    early = [c for c in CASES if c.id.startswith(("pairs-", "caa-", "behaviour-", "out-", "seed-",
                                                   "batch-size", "strength-", "max-new-tokens-z",
                                                   "max-new-tokens-n", "layers-m", "layers-e",
                                                   "layers-n", "layers-d", "vector-", "layer-",
                                                   "temperature-", "arena-port", "arena-host"))
             or "device" in c.id]
    early = [c for c in early if not c.skip and c.id not in {"pairs-too-long", "vector-wrong-width",
                                                              "strength-1e300"}]
    assert len(early) > 50
    for case in early:
        monkeypatch.chdir(env["work"])
        try:
            rc = main([a.format(**env) for a in case.argv])
        except AssertionError as err:
            raise AssertionError(f"{case.id}: {err}") from None
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (case.id, err)


def test_output_is_published_only_on_success(env, capsys):
    """A fresh nested --out appears only when the vector is complete; no temp dirs are left."""
    out = env["root"] / "pub" / "deep" / "vec"
    assert main([a.format(**env) for a in _extract(out=str(out))]) == 0
    assert SteeringVector.load(out).layers == [1]
    assert sorted(p.name for p in (env["root"] / "pub").iterdir()) == ["deep"]
    capsys.readouterr()
    shutil.rmtree(env["root"] / "pub")


def test_some_identical_pairs_warn_in_one_line(env, capsys, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"positive": "good", "negative": "bad"}\n'
                    '{"positive": "same", "negative": "same"}\n')
    with pytest.warns(IdenticalPairWarning, match=r"mixed.jsonl:2.*pair 1"):
        ContrastSet.from_jsonl(path)
    assert main(list(_extract(pairs=str(path), out=str(tmp_path / "v")))) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "mixed.jsonl:2" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_pairs_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_bytes(b'{"positive": "a", "negative": "b"}\n{"positive": "\xff", "negative": "b"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2 is not valid UTF-8"):
        ContrastSet.from_jsonl(bad)
    bad.write_text('{"positive": "a", "negative": "b"}\n{"positive": "a"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2 lacks \['negative'\]"):
        ContrastSet.from_jsonl(bad)
    bad.write_text("\n")
    with pytest.raises(ValueError, match=r"p.jsonl holds no contrast pairs"):
        ContrastSet.from_jsonl(bad)
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        ContrastSet.from_jsonl(tmp_path)
    bad.write_bytes('\ufeff{"positive": "a", "negative": "b"}\n'.encode())  # a BOM is accepted
    assert ContrastSet.from_jsonl(bad)[0] == ContrastPair("a", "b")
    caa = tmp_path / "c.json"
    caa.write_text('[{"question": 1, "answer_matching_behavior": "(A)", '
                   '"answer_not_matching_behavior": "(B)"}]')
    with pytest.raises(ValueError, match=r"c.json: item 0"):
        ContrastSet.from_caa_json(caa)


def test_failed_write_leaves_nothing(env, monkeypatch, capsys):
    """A write that fails after the model ran (disk full) is one line, and no directory is left."""
    import errno

    from steerlens import vectors

    def full(self, directory):
        (Path(directory) / "vector.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vectors.SteeringVector, "save", full)
    before = _snapshot(env["root"])
    rc = main([a.format(**env) for a in _extract(out="{work}/new/vec")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "No space left" in err and "--out" in err
    assert set(_snapshot(env["root"])) == set(before)  # the staging dir came and went


def test_cuda_devices_are_checked(monkeypatch):
    """The CUDA branches of --device, simulated (the test machines have no GPU)."""
    import argparse

    from steerlens import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli._device("cuda") == "cuda" and cli._device("cuda:0") == "cuda:0"
    with pytest.raises(argparse.ArgumentTypeError, match=r"1 CUDA device\(s\), cuda:0\.\.cuda:0"):
        cli._device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(argparse.ArgumentTypeError, match="no CUDA GPU is visible"):
        cli._device("cuda")


def test_unwritable_out_is_refused_before_the_model(env, monkeypatch, capsys):
    """Permission problems (simulated: the suite may run as root, which ignores modes)."""
    from steerlens import cli

    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    for argv in (_extract(out="{work}/nope/vec"), _extract(out="{work}")):
        rc = main([a.format(**env) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.splitlines()) == 1 and "permission denied" in err, err


def test_interrupt_is_one_line(monkeypatch, capsys):
    from steerlens import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "models", interrupted)
    assert main(["models"]) == 130
    err = capsys.readouterr().err
    assert err == "steerlens models: interrupted.\n"
