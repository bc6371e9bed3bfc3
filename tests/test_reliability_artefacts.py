"""Issue 15, artefacts: crash-safe multi-file saves (SIGKILL loops), metadata checked against the
tensors, bounded metadata reads, permissions that follow the umask, and degenerate input refused
(zero vectors, zero-norm normalisation, model-id mismatch, broken SAE configs and weights)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import stat
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from _sae_helpers import make_sae

from steerlens import io
from steerlens.checks import NonFiniteError
from steerlens.methods import build_vector
from steerlens.pairs import ContrastPair, ContrastSet
from steerlens.sae import load_sae
from steerlens.sae import train as T
from steerlens.vectors import (
    ModelMismatchWarning,
    SteeringVector,
    SteeringVectorSet,
    VectorFileError,
)

FORK_OK = hasattr(os, "fork") and sys.platform.startswith("linux")


def _vec(seed=0, layers=(0, 1), d=64, **kw):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({lay: torch.randn(d, generator=g) for lay in layers}, **kw)


def _same(a: SteeringVector, b: SteeringVector) -> bool:
    return (a.layers == b.layers and all(torch.equal(a[x], b[x]) for x in a.layers)
            and a.method == b.method and dict(a.extra) == dict(b.extra)
            and a.model_id == b.model_id)


def _strays(d: Path) -> list[str]:
    out = []
    for _root, dirs, files in os.walk(d):
        out += [n for n in dirs + files if n.startswith(".") and
                (n.endswith((".tmp", ".old")) or n == io.COMMIT_RECORD)]
    return out


# ------------------------------------------------------------------------- SIGKILL loops


def _fork(body) -> tuple[int, int]:
    """Fork a child running `body(write_fd)` then exiting; return (pid, read_fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            torch.set_num_threads(1)  # never enter an OpenMP region forked from a threaded parent
            body(w)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _kill_loop(directory: Path, n_versions: int, save, load, which, *, kills: int, seed: int):
    """Fork a child that saves versions 0, 1, ... in turn into `directory` until SIGKILLed at a
    random moment; after each kill the directory must load as exactly one version (or, before any
    save finished, not load, with a clear error). Returns counts."""
    rng = random.Random(seed)

    def calibrate(w):  # time saves in a forked child: a large parent makes them slower there
        t0 = time.perf_counter()
        for i in range(3):
            save(i % n_versions, directory.parent / "probe")
        os.write(w, repr((time.perf_counter() - t0) / 3).encode())

    pid, r = _fork(calibrate)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as fh:
        per_save = float(fh.read())
    counts = {"exact": 0, "absent": 0}
    ever_saved = False
    for k in range(kills):
        start = rng.randrange(n_versions)

        def saver(w, start=start):
            os.write(w, b"r")
            i = start
            while True:
                save(i % n_versions, directory)
                os.write(w, b"s")
                i += 1

        pid, r = _fork(saver)
        assert os.read(r, 1) == b"r"  # the child runs: start the clock
        time.sleep(rng.uniform(0, 3 * per_save))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as fh:
            ever_saved = ever_saved or b"s" in fh.read()
        try:
            got = load(directory)
        except (VectorFileError, FileNotFoundError) as err:
            assert not ever_saved, f"kill {k}: unloadable after a finished save: {err}"
            assert "does not exist" in str(err) or isinstance(err, FileNotFoundError)
            counts["absent"] += 1
            continue
        matches = which(got)
        assert len(matches) == 1, f"kill {k}: loads as {matches}, not exactly one version"
        counts["exact"] += 1
    assert ever_saved and counts["exact"] > 0, counts
    save(0, directory)  # the next save removes whatever the killed ones left
    assert _strays(directory) == []
    return counts


@pytest.mark.skipif(not FORK_OK, reason="needs os.fork (Linux)")
def test_sigkill_vector_saves_load_as_one_version(tmp_path):
    versions = [_vec(1, layers=range(4), d=256, method="mean_diff", extra={"v": 1}),
                _vec(2, layers=range(4), d=256, method="pca", extra={"v": 2}),
                # same norms as version 1 (a scaled copy would not be): only the hash tells
                SteeringVector({k: -v for k, v in _vec(1, layers=range(4), d=256).directions.items()},
                               method="mean_diff", extra={"v": 1})]
    counts = _kill_loop(
        tmp_path / "v", 3, lambda i, d: versions[i].save(d), SteeringVector.load,
        lambda got: [i for i, v in enumerate(versions) if _same(got, v)], kills=30, seed=1)
    assert counts["exact"] + counts["absent"] == 30


@pytest.mark.skipif(not FORK_OK, reason="needs os.fork (Linux)")
def test_sigkill_vector_set_saves_load_as_one_version(tmp_path):
    versions = [SteeringVectorSet({"x": _vec(1, d=128), "y": _vec(2, d=128)}),
                SteeringVectorSet({"x": _vec(3, d=128), "z": _vec(4, d=128, method="pca")})]

    def which(got):
        return [i for i, s in enumerate(versions)
                if list(got) == list(s) and all(_same(got[n], s[n]) for n in s)]

    counts = _kill_loop(tmp_path / "s", 2, lambda i, d: versions[i].save(d),
                        SteeringVectorSet.load, which, kills=30, seed=2)
    assert counts["exact"] + counts["absent"] == 30


def _tiny_trainer(cfg):
    def data():
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(cfg.batch_size, cfg.d_in, generator=g)

    tr = T._trainer(cfg, T.build_training_sae(cfg), data())
    tr.activation_scaler.scaling_factor = 1.0
    return tr, data


CKPT_CFG = dict(d_in=16, d_sae=32, hook_name="blocks.0.hook_resid_pre", batch_size=8,
                train_tokens=64, checkpoint_every=1)


@pytest.mark.skipif(not FORK_OK, reason="needs os.fork (Linux)")
def test_sigkill_sae_checkpoints_load_as_one_version(tmp_path):
    cfg = T.SAETrainConfig(**CKPT_CFG)
    tr, data = _tiny_trainer(cfg)
    tr.step(next(data()))  # Adam moments exist
    base = {k: v.detach().clone() for k, v in tr.sae.state_dict().items()}
    versions = [(1, 0.0), (2, 1.0), (2, 2.0)]  # the third re-saves step 2 with other weights

    def save(i, d):
        step, off = versions[i]
        tr.sae.load_state_dict({k: v + off for k, v in base.items()})
        tr.n_training_steps = step
        tr.activation_scaler.scaling_factor = 1.0 + off
        T._save_checkpoint(Path(d), tr, cfg)

    def load(d):
        t2, _ = _tiny_trainer(cfg)
        t2.activation_scaler.scaling_factor = None
        if T._load_checkpoint(Path(d), t2, cfg) == 0:
            raise FileNotFoundError("no checkpoint (does not exist)")
        return t2

    def which(t2):
        sd = t2.sae.state_dict()
        return [i for i, (step, off) in enumerate(versions)
                if t2.n_training_steps == step and t2.activation_scaler.scaling_factor == 1 + off
                and all(torch.equal(sd[k], base[k] + off) for k in base)]

    counts = _kill_loop(tmp_path / "run", 3, save, load, which, kills=30, seed=3)
    assert counts["exact"] + counts["absent"] == 30


# ---------------------------------------------------------------- the commit protocol, step by step


def test_interrupted_after_commit_point_reads_new_and_next_save_finishes(tmp_path, monkeypatch):
    d = tmp_path / "v"
    a, b, c = _vec(1), _vec(2, method="pca"), _vec(3, method="probe")
    a.save(d)
    with monkeypatch.context() as m:  # "killed" right after the commit record was written
        m.setattr(io, "_roll_forward", lambda directory, rec: None)
        b.save(d)
    assert (d / io.COMMIT_RECORD).exists()
    assert _same(SteeringVector.load(d), b)  # readers take the committed temps
    rec = json.loads((d / io.COMMIT_RECORD).read_text())
    os.replace(d / rec["replace"]["vector.json"], d / "vector.json")  # half rolled forward
    assert _same(SteeringVector.load(d), b)
    io.recover(d)
    assert not (d / io.COMMIT_RECORD).exists() and _strays(d) == []
    assert _same(SteeringVector.load(d), b)
    c.save(d)
    assert _same(SteeringVector.load(d), c)


def test_failed_writer_leaves_old_version_and_no_temps(tmp_path):
    d = tmp_path / "v"
    _vec(1).save(d)

    def boom(p):
        p.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.commit_entries(d, {"vector.json": boom})
    assert _same(SteeringVector.load(d), _vec(1)) and _strays(d) == []


def test_set_member_and_sae_dir_resolve_through_parent_commit(tmp_path, monkeypatch):
    s1 = SteeringVectorSet({"x": _vec(1), "y": _vec(2)})
    s2 = SteeringVectorSet({"x": _vec(3)})
    s1.save(tmp_path / "s")
    sae1, sae2 = make_sae(seed=1), make_sae(seed=2)
    T.save_sae(sae1, tmp_path / "sae")
    with monkeypatch.context() as m:
        m.setattr(io, "_roll_forward", lambda directory, rec: None)
        s2.save(tmp_path / "s")
        T.save_sae(sae2, tmp_path / "sae")
    back = SteeringVectorSet.load(tmp_path / "s")
    assert list(back) == ["x"] and _same(back["x"], _vec(3))
    assert _same(SteeringVector.load(tmp_path / "s" / "x"), _vec(3))  # a member, directly
    assert torch.equal(load_sae(tmp_path / "sae").W_dec, sae2.W_dec)
    s1.save(tmp_path / "s")  # rolls the pending commit forward first, then saves
    assert list(SteeringVectorSet.load(tmp_path / "s")) == ["x", "y"]
    s2.save(tmp_path / "s")
    assert not (tmp_path / "s" / "y").exists()  # members the new set lacks are removed


def test_stray_temps_are_cleaned_by_the_next_save(tmp_path):
    d = tmp_path / "v"
    _vec().save(d)
    legacy = [".vector.json.k3j_a9x.tmp", ".vector.safetensors.q8zz1.tmp",
              ".vector.json.commit-0123456789ab.tmp", ".vector.json.commit-0123456789ab.old"]
    for name in legacy:
        (d / name).write_text("x")
    (d / "notes.txt").write_text("mine")
    _vec(1).save(d)
    assert _strays(d) == [] and (d / "notes.txt").read_text() == "mine"
    # single-file writes: temps of dead processes go, a live process's stay
    target = tmp_path / "f.json"
    dead = tmp_path / ".f.json.999999999-0123abcd.tmp"
    live = tmp_path / f".f.json.{os.getpid()}-0123abcd.tmp"
    recent = tmp_path / ".f.json.999999998-0123abcd.tmp"  # maybe another host's, mid-write
    for p in (dead, live, recent):
        p.write_text("x")
    old = time.time() - 2 * io.STALE_TEMP_SECONDS
    os.utime(dead, (old, old))
    os.utime(live, (old, old))
    io.atomic_write_text(target, "{}")
    assert not dead.exists() and live.exists() and recent.exists()


def test_malformed_commit_record_is_ignored_by_readers(tmp_path):
    d = tmp_path / "v"
    _vec(1).save(d)
    (tmp_path / "secret").write_text("x")
    for rec in ({"replace": {"vector.json": "../secret"}}, {"replace": "x"}, [1], "{"):
        (d / io.COMMIT_RECORD).write_text(rec if isinstance(rec, str) else json.dumps(rec))
        assert io.resolve_entry(d, "vector.json") == d / "vector.json"
        assert _same(SteeringVector.load(d), _vec(1))
    _vec(2).save(d)  # the next save drops the malformed record
    assert not (d / io.COMMIT_RECORD).exists() and (tmp_path / "secret").exists()


def test_save_into_a_file_or_under_one_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        _vec().save(f)
    with pytest.raises(ValueError, match="parent of it is a file"):
        _vec().save(f / "sub")
    with pytest.raises(ValueError, match="cannot be used as a directory name"):
        SteeringVectorSet({"set.json": _vec()}).save(tmp_path / "s")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        _vec().save(tmp_path / "v")
        SteeringVectorSet({"a": _vec()}).save(tmp_path / "s")
        T.save_sae(make_sae(), tmp_path / "sae")
        io.atomic_write_text(tmp_path / "one.txt", "x")
        cfg = T.SAETrainConfig(**CKPT_CFG)
        T._save_checkpoint(tmp_path / "run", _tiny_trainer(cfg)[0], cfg)
    finally:
        os.umask(old)
    want_f, want_d = 0o666 & ~umask, 0o777 & ~umask
    for p in [tmp_path / "v", tmp_path / "s", tmp_path / "s" / "a", tmp_path / "sae",
              tmp_path / "run" / "checkpoint"]:
        assert stat.S_IMODE(p.stat().st_mode) == want_d, p
    for p in [tmp_path / "v" / "vector.json", tmp_path / "v" / "vector.safetensors",
              tmp_path / "s" / "set.json", tmp_path / "s" / "a" / "vector.safetensors",
              tmp_path / "sae" / "cfg.json", tmp_path / "sae" / "sae_weights.safetensors",
              tmp_path / "one.txt", tmp_path / "run" / "checkpoint" / "state.safetensors",
              tmp_path / "run" / "checkpoint" / "trainer.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == want_f, p


# ---------------------------------------------------------------- metadata checked against tensors


def test_tensors_from_another_save_are_refused(tmp_path):
    a, b = _vec(1, method="mean_diff"), _vec(2, method="pca")
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    mixed = tmp_path / "a" / "vector.safetensors"
    mixed.write_bytes((tmp_path / "b" / "vector.safetensors").read_bytes())
    with pytest.raises(VectorFileError, match=r"vector\.safetensors does not match .*SHA-256"):
        SteeringVector.load(tmp_path / "a")
    meta_path = tmp_path / "a" / "vector.json"
    meta = json.loads(meta_path.read_text())
    del meta["tensors_sha256"]  # an older file: the norms still tell
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VectorFileError, match=r"vector\.json records norm .* at layer 0"):
        SteeringVector.load(tmp_path / "a")
    # a genuine older file (no hash) loads; its norms agree to float32 rounding
    (tmp_path / "a" / "vector.safetensors").write_bytes(
        (tmp_path / "b" / "vector.safetensors").read_bytes())
    meta_b = json.loads((tmp_path / "b" / "vector.json").read_text())
    del meta_b["tensors_sha256"]
    meta_path.write_text(json.dumps(meta_b))
    assert _same(SteeringVector.load(tmp_path / "a"), b)


def test_recorded_norms_match_float64_recomputation_within_tolerance():
    # the save-time norm is a float32 reduction; the load-time check recomputes in float64
    g = torch.Generator().manual_seed(0)
    for d in (64, 576, 4096, 65536):
        t = torch.randn(d, generator=g) * 10 ** float(torch.empty(1).uniform_(-3, 3, generator=g))
        rec, got = float(t.norm()), float(t.double().norm())
        assert math.isclose(rec, got, rel_tol=1e-6)  # 10x inside NORM_RTOL = 1e-5


BAD_META = [
    ({"extra": [1, 2]}, r"'extra' must be a JSON object"),
    ({"d_model": "abc"}, r"'d_model' must be a non-negative integer"),
    ({"d_model": True}, r"'d_model' must be a non-negative integer"),
    ({"n_pairs": "7"}, r"'n_pairs' must be a non-negative integer"),
    ({"layers": "0,1"}, r"'layers' must be a list"),
    ({"layers": [0, -1]}, r"'layers' must be a list"),
    ({"method": 5}, r"'method' must be a string"),
    ({"norms": {"0": "big", "1": 1.0}}, r"'norms' must be an object"),
    ({"norms": {"0": 1.0}}, r"'norms' has layers"),
    ({"format": 99}, r"format 99, newer"),
    ({"d_model": 65}, r"says d_model 65"),
]


@pytest.mark.parametrize("patch,match", BAD_META)
def test_bad_metadata_fields_name_the_file(tmp_path, patch, match):
    d = tmp_path / "v"
    _vec().save(d)
    meta = json.loads((d / "vector.json").read_text())
    (d / "vector.json").write_text(json.dumps({**meta, **patch}))
    with pytest.raises(VectorFileError, match=match) as info:
        SteeringVector.load(d)
    assert str(d / "vector.json") in str(info.value)


def test_metadata_files_are_read_with_a_bound(tmp_path):
    d = tmp_path / "v"
    _vec().save(d)
    meta = json.loads((d / "vector.json").read_text())
    (d / "vector.json").write_text(json.dumps({**meta, "extra": {"pad": "x" * 2_000_000}}))
    with pytest.raises(VectorFileError, match=r"vector\.json is 2,0\d\d,\d\d\d bytes, over the"):
        SteeringVector.load(d)
    (d / "vector.json").unlink()
    os.mkfifo(d / "vector.json")  # would block a plain read forever
    with pytest.raises(VectorFileError, match="not a regular file"):
        SteeringVector.load(d)
    (d / "vector.json").unlink()
    if Path("/dev/zero").exists():  # would be read without end
        os.symlink("/dev/zero", d / "vector.json")
        with pytest.raises(VectorFileError, match=r"vector\.json is not a regular file"):
            SteeringVector.load(d)
        (d / "vector.json").unlink()
        (d / "vector.safetensors").unlink()
        os.symlink("/dev/zero", d / "vector.safetensors")
        (d / "vector.json").write_text(json.dumps(meta))
        with pytest.raises(VectorFileError, match=r"vector\.safetensors is not a regular file"):
            SteeringVector.load(d)


@pytest.mark.parametrize("content,match", [
    ('{"names": "ab"}', "non-empty list"),
    ('{"names": ["../../etc"]}', "non-empty list"),
    ('{"names": ["a", "a"]}', "non-empty list"),
    ('{"names": []}', "non-empty list"),
    ("[1]", "corrupt"),
    ("\xff", "corrupt"),
])
def test_bad_set_index_names_the_file(tmp_path, content, match):
    s = tmp_path / "s"
    SteeringVectorSet({"a": _vec()}).save(s)
    (s / "set.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(VectorFileError, match=match) as info:
        SteeringVectorSet.load(s)
    assert str(s / "set.json") in str(info.value)


# --------------------------------------------------------------------- degenerate input


def test_normalizing_a_zero_layer_is_an_error():
    v = SteeringVector({0: torch.ones(8), 3: torch.zeros(8)})
    with pytest.raises(ValueError, match=r"layer\(s\) \[3\] is zero"):
        v.normalized()
    assert v.layer(0).normalized(2.0).norms[0] == pytest.approx(2.0, rel=1e-6)  # float32 ulps
    tiny_v = SteeringVector({0: torch.full((8,), 1e-30)})  # tiny but not zero: fine
    assert tiny_v.normalized().norms[0] == pytest.approx(1.0, rel=1e-6)


def test_model_id_mismatch_warns_and_strict_refuses(tmp_path, tiny):
    _vec(model_id="gpt2").save(tmp_path / "g")
    with pytest.warns(ModelMismatchWarning, match=r"built on model 'gpt2'.*for model 'tiny-random'"):
        SteeringVector.load(tmp_path / "g", model=tiny)
    with pytest.raises(ValueError, match=r"'gpt2'.*'tiny-random'"):
        SteeringVector.load(tmp_path / "g", model=tiny, strict=True)
    SteeringVector.load(tmp_path / "g")  # no model: nothing to compare with
    for same in ("tiny-random", "someorg/Tiny-Random"):
        _vec(model_id=same).save(tmp_path / "t")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            SteeringVector.load(tmp_path / "t", model=tiny, strict=True)
    _vec().save(tmp_path / "u")  # model_id "unknown": no warning, but strict cannot confirm it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SteeringVector.load(tmp_path / "u", model=tiny)
    with pytest.raises(ValueError, match="records no model id"):
        SteeringVector.load(tmp_path / "u", model=tiny, strict=True)
    SteeringVectorSet({"a": _vec(model_id="gpt2"), "b": _vec(1, model_id="gpt2")}).save(
        tmp_path / "s")
    with pytest.warns(ModelMismatchWarning, match=r"vectors \['a', 'b'\].*'gpt2'.*'tiny-random'"):
        SteeringVectorSet.load(tmp_path / "s", model=tiny)
    with pytest.raises(ValueError, match="'gpt2'"):
        SteeringVectorSet.load(tmp_path / "s", model=tiny, strict=True)


def test_identical_pairs_give_an_error_naming_them(tiny):
    same = ContrastSet((ContrastPair("I love it", "I love it", "Review:"),
                        ContrastPair("Great", "Great", "Review:")), "dup")
    with pytest.raises(ValueError, match=r"Every pair of 'dup' .*identical.*\[0, 1\]"):
        build_vector(tiny, same, [0, 1], show_progress=False)
    some = ContrastSet((ContrastPair("I love it", "I hate it", "Review:"),
                        ContrastPair("Great", "Great", "Review:")), "some")
    with pytest.warns(UserWarning, match=r"Pairs \[1\] of 'some' have identical"):
        v = build_vector(tiny, some, [0, 1], read_at="mean", show_progress=False)
    assert all(n > 0 for n in v.norms.values())


def test_activations_that_coincide_are_announced(tiny):
    pairs = ContrastSet((ContrastPair("a good one", "a bad one", "Q:"),
                         ContrastPair("a nice day", "a dull day", "Q:")), "late")
    # the first completion token has the same prefix on both sides: nothing differs anywhere
    with pytest.raises(ValueError, match=r"At layer\(s\) \[0, 1\] .*coincide.*read_at='first'.*"
                                         r"every direction would be a zero vector"):
        build_vector(tiny, pairs, [0, 1], read_at="first", show_progress=False)
    # the last token is the same on both sides: layer 0 (embeddings only) has no direction
    with pytest.warns(UserWarning, match=r"At layer\(s\) \[0\] .*read_at='last'.*are zero"):
        v = build_vector(tiny, pairs, [0, 1], read_at="last", show_progress=False)
    assert not v[0].any() and v.norms[1] > 0  # an exact zero, not amplified rounding noise
    with pytest.raises(ValueError, match=r"layer\(s\) \[0\] is zero"):
        v.normalized()
    v = build_vector(tiny, pairs, [0, 1], read_at="mean", show_progress=False)
    assert all(n > 0 for n in v.norms.values())


def test_method_returning_zeros_is_an_error(tiny, sentiment):
    def nothing(pos, neg):
        return torch.zeros(pos.shape[1])

    with pytest.raises(ValueError, match="'custom:nothing' returned an all-zero direction"):
        build_vector(tiny, sentiment.train[:4], [1], method=nothing, show_progress=False)


# ---------------------------------------------------------------------------------- SAEs


@pytest.fixture
def saved_sae(tmp_path):
    return T.save_sae(make_sae(), tmp_path / "sae")


@pytest.mark.parametrize("d_sae,match", [(0, "d_sae must be an integer >= 1, got 0"),
                                         (-4, "got -4"), ("256", "got '256'"), (2.5, "got 2.5")])
def test_sae_config_sizes_below_one_are_refused(saved_sae, d_sae, match):
    cfg = json.loads((saved_sae / "cfg.json").read_text())
    (saved_sae / "cfg.json").write_text(json.dumps({**cfg, "d_sae": d_sae}))
    with pytest.raises(ValueError, match=match) as info:
        load_sae(saved_sae)
    assert "cfg.json" in str(info.value)


def test_sae_with_nan_weights_is_refused(tmp_path):
    sae = make_sae()
    with pytest.raises(NonFiniteError, match="non-finite weights"):
        with torch.no_grad():
            sae.W_dec[3, 5] = float("nan")
        T.save_sae(sae, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    from safetensors.torch import load_file, save_file

    good = T.save_sae(make_sae(), tmp_path / "sae")
    w = load_file(str(good / "sae_weights.safetensors"))
    w["b_enc"][0] = float("inf")
    save_file(w, str(good / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors holds non-finite .*b_enc"):
        load_sae(good)


def test_sae_weights_overflowing_fp16_are_refused(tmp_path):
    sae = make_sae()
    with torch.no_grad():
        sae.W_enc[0, 0] = 1e6  # finite in float32, inf in float16
    with pytest.raises(NonFiniteError, match=r"\['W_enc'\] do not fit in torch.float16"):
        T.save_sae(sae, tmp_path / "h", dtype=torch.float16)
    assert not (tmp_path / "h").exists() and _strays(tmp_path) == []
    assert sae.W_enc.dtype == torch.float32


def test_sae_config_is_read_with_a_bound(saved_sae):
    cfg_path = saved_sae / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "pad": "x" * 1_100_000}))
    with pytest.raises(ValueError, match=r"cfg\.json is 1,1\d\d,\d\d\d bytes, over the"):
        load_sae(saved_sae)
    if Path("/dev/zero").exists():
        cfg_path.unlink()
        os.symlink("/dev/zero", cfg_path)
        with pytest.raises(ValueError, match=r"cfg\.json is not a regular file"):
            load_sae(saved_sae)


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    cfg = T.SAETrainConfig(**CKPT_CFG)
    tr, _ = _tiny_trainer(cfg)
    with torch.no_grad():
        tr.sae.W_enc[0, 0] = float("nan")
    T._save_checkpoint(tmp_path, tr, cfg)
    t2, _ = _tiny_trainer(cfg)
    with pytest.raises(NonFiniteError, match=r"checkpoint holds non-finite values .*sae\.W_enc"):
        T._load_checkpoint(tmp_path, t2, cfg)


def test_older_checkpoint_layout_resumes_and_is_replaced(tmp_path):
    cfg = T.SAETrainConfig(**CKPT_CFG)
    tr, _ = _tiny_trainer(cfg)
    tr.n_training_steps = 5
    T._save_checkpoint(tmp_path, tr, cfg)
    os.rename(tmp_path / "checkpoint", tmp_path / "ckpt-0000005")  # the old layout
    (tmp_path / "latest.json").write_text(json.dumps({"checkpoint": "ckpt-0000005", "step": 5}))
    (tmp_path / ".ckpt-0000006.tmp").mkdir()  # a killed old-style save
    t2, _ = _tiny_trainer(cfg)
    assert T._load_checkpoint(tmp_path, t2, cfg) == 5
    t2.n_training_steps = 6
    T._save_checkpoint(tmp_path, t2, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    t3, _ = _tiny_trainer(cfg)
    assert T._load_checkpoint(tmp_path, t3, cfg) == 6
    (tmp_path / "checkpoint" / "trainer.json").write_text("{")
    with pytest.raises(ValueError, match=r"checkpoint is corrupt .*delete"):
        T._load_checkpoint(tmp_path, t3, cfg)


def test_activation_cache_refuses_nan_and_drops_fp16_overflow(tiny, monkeypatch):
    from steerlens.sae import activations as A
    from steerlens.sites import Site

    acts = torch.randn(2, 5, 64)
    acts[1, 3, 7] = 70_000.0  # beyond float16's 65504, within the norm-outlier bound
    acts[:, :, 0] += 10_000.0  # keeps that row's norm within 10x the median
    monkeypatch.setattr(A, "site_activations", lambda *a, **k: acts.clone())
    kept, n_out = A._shard_acts(tiny, [[1] * 5, [2] * 5], Site(1), 2, 10.0, False)
    assert n_out == 1 and kept.shape[0] == 7 and torch.isfinite(kept).all()
    acts[0, 2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="activations at .* contain NaN or inf"):
        A._shard_acts(tiny, [[1] * 5, [2] * 5], Site(1), 2, 10.0, False)


def test_activation_shards_follow_the_umask(tiny, tmp_path):
    from steerlens.sae.activations import cache_activations
    from steerlens.sites import Site

    old = os.umask(0o027)
    try:
        cache = cache_activations(tiny, ["some text to cache activations from"] * 20, Site(1),
                                  n_tokens=60, context_size=16, root=tmp_path,
                                  show_progress=False)
    finally:
        os.umask(old)
    for p in [cache.shard_path(0), cache.path / "spec.json", cache.path / "manifest.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
