"""Sweep store reliability (issue 15): SIGKILL at random times never leaves a config and a cells
log that do not belong together, two sweeps cannot share an out_dir, a corrupt line is reported
by file and line and can be dropped while keeping every valid cell, and cells whose logits became
non-finite are recorded as errors that summaries exclude and count (tiny model)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from steerlens.backend import load_model, runtime
from steerlens.checks import NonFiniteError
from steerlens.sweep import (
    CELLS_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    CorruptStoreError,
    compare_random,
    layer_effect,
    load_sweep,
    repair_store,
    sweep,
    zones,
)
from steerlens.sweep import store as sweep_store
from steerlens.vectors import SteeringVector

PROMPTS = ["one", "two words", "three little words", "four"]
KW = dict(chat=False, batch_size=2, show_progress=False)
SETTINGS = {  # two different sweeps written in turn into one directory by the kill loop
    "A": dict(layers=[0, 1], strengths=[-3.0, 0.0, 3.0, 6.0], n_random=1),
    "B": dict(layers=[1], strengths=[0.0, 4.0], measures=("kl", "generate"), max_new_tokens=3),
}

posix_only = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"),
                                reason="needs os.fork and SIGKILL")


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(11)
    return SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)})


def _lines(path):
    return [json.loads(x) for x in (path / CELLS_FILE).read_text().splitlines()]


def _keys(recs):
    return [(r["part"], r.get("vector"), r.get("layer"), r.get("strength"), r["prompt_idx"])
            for r in recs]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # a resumed run may put a cell in another batch: float32-path tolerance on KL (see conftest)
    pd.testing.assert_frame_equal(a.drop(columns=["kl_bits"]), b.drop(columns=["kl_bits"]))
    np.testing.assert_allclose(a.kl_bits, b.kl_bits, rtol=1e-5, atol=1e-6)


def _lock_is_free(directory) -> bool:
    """Nobody holds the directory's lock (a killed holder may leave the file, never the lock)."""
    import fcntl

    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _which(out) -> str:
    strengths = json.loads((out / CONFIG_FILE).read_text())["config"]["strengths"]
    return next(k for k, s in SETTINGS.items() if list(s["strengths"]) == strengths)


def _child(out, vec, seed: int) -> None:
    """Forked child: write sweeps into `out` forever (killed by the parent)."""
    torch.set_num_threads(1)  # the forked child must not use the parent's thread pool
    model = load_model("tiny-random", device="cpu")
    rng = random.Random(seed)
    while True:
        name, resume = rng.choice("AB"), rng.random() < 0.5
        try:
            sweep(model, PROMPTS, vec, out_dir=out, resume=resume, **SETTINGS[name], **KW)
        except ValueError as err:  # resuming the other setting is refused: start it over
            if "different settings" not in str(err):
                raise
            sweep(model, PROMPTS, vec, out_dir=out, resume=False, **SETTINGS[name], **KW)
        time.sleep(rng.uniform(0.0, 0.3))  # so that some kills find a finished sweep


@posix_only
def test_sigkill_loop_never_mixes_config_and_cells(tiny, vec, tmp_path):
    """SIGKILL a process writing sweeps at random times; after every kill the directory loads as
    one complete sweep or says it is unfinished, and a rerun completes it to exactly the
    uninterrupted table (no record lost or duplicated)."""
    refs = {k: sweep(tiny, PROMPTS, vec, **s, **KW) for k, s in SETTINGS.items()}
    n_records = {k: len(r.table) * (2 if "generate" in s.get("measures", ()) else 1)
                 + (len(PROMPTS) if "generate" in s.get("measures", ()) else 0)
                 for (k, s), r in zip(SETTINGS.items(), refs.values())}
    out, copy = tmp_path / "out", tmp_path / "copy"
    rng = random.Random(0)
    outcomes = {"no sweep yet": 0, "complete": 0, "unfinished": 0}
    kills, start = 0, time.monotonic()
    while kills < 30 and time.monotonic() - start < 40:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                _child(out, vec, kills)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        assert _lock_is_free(out)  # the OS released the killed writer's lock
        if not (out / CONFIG_FILE).exists():
            outcomes["no sweep yet"] += 1
            continue
        name = _which(out)
        try:
            res = load_sweep(out)
        except ValueError as err:
            assert "unfinished" in str(err), err
            outcomes["unfinished"] += 1
        else:
            outcomes["complete"] += 1
            _same(res.table, refs[name].table)
        # a rerun (on a copy, so that the next child meets the interrupted state) completes it
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(out, copy)
        res = sweep(tiny, PROMPTS, vec, out_dir=copy, **SETTINGS[name], **KW)
        _same(res.table, refs[name].table)
        keys = _keys(_lines(copy))
        assert len(keys) == len(set(keys)) == n_records[name]
        _same(load_sweep(copy).table, refs[name].table)
    print(f"\nsweep SIGKILL loop: {kills} kills in {time.monotonic() - start:.1f} s: {outcomes}")
    assert kills >= 10 and outcomes["complete"] + outcomes["unfinished"] >= 5


# ------------------------------------------------------------------------------ the lock


@posix_only
def test_second_sweep_on_a_locked_out_dir_is_refused(tiny, vec, tmp_path):
    """Two processes: while one sweep runs (held mid-way), a second sweep and repair_store on the
    same out_dir fail at once with a ValueError naming it; after the first finishes, the lock is
    free and a rerun resumes everything."""
    started_r, started_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            torch.set_num_threads(1)
            os.close(started_r)
            os.close(go_w)
            real = runtime.run_from_layer

            def held(*args, **kwargs):  # the first steered forward waits for the parent
                if not held.done:
                    held.done = True
                    os.write(started_w, b"x")
                    os.read(go_r, 1)
                return real(*args, **kwargs)

            held.done = False
            runtime.run_from_layer = held
            sweep(load_model("tiny-random", device="cpu"), PROMPTS, vec, out_dir=tmp_path,
                  **SETTINGS["A"], **KW)
            code = 0
        finally:
            os._exit(code)
    os.close(started_w)
    os.close(go_r)
    try:
        import select

        ready, _, _ = select.select([started_r], [], [], 30)
        assert ready, "the child sweep did not start within 30 s"
        os.read(started_r, 1)
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="another sweep holds its lock") as err:
            sweep(tiny, PROMPTS, vec, out_dir=tmp_path, **SETTINGS["A"], **KW)
        assert str(tmp_path) in str(err.value) and time.monotonic() - t0 < 5  # no waiting
        with pytest.raises(ValueError, match="another sweep holds its lock"):
            sweep(tiny, PROMPTS, vec, out_dir=tmp_path, resume=False, **SETTINGS["B"], **KW)
        with pytest.raises(ValueError, match="another sweep holds its lock"):
            repair_store(tmp_path)
        assert not _lock_is_free(tmp_path)
        # reading is allowed while it writes, and never modifies the directory
        size = (tmp_path / CELLS_FILE).stat().st_size
        with pytest.raises(ValueError, match="unfinished"):
            load_sweep(tmp_path)
        assert (tmp_path / CELLS_FILE).stat().st_size == size and _which(tmp_path) == "A"
    finally:
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the refused sweeps did not disturb it
    assert not (tmp_path / LOCK_FILE).exists()
    res = sweep(tiny, PROMPTS, vec, out_dir=tmp_path, **SETTINGS["A"], **KW)
    assert res.n_computed == 0 and res.n_resumed == len(res.table)
    _same(res.table, sweep(tiny, PROMPTS, vec, **SETTINGS["A"], **KW).table)


def test_lock_is_released_on_every_exit_path(tiny, vec, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(runtime, "run_from_layer", broken)
        with pytest.raises(RuntimeError, match="boom"):
            sweep(tiny, PROMPTS, vec, out_dir=tmp_path, **SETTINGS["A"], **KW)
    with pytest.raises(ValueError, match="different settings"):  # raised while opening
        sweep(tiny, PROMPTS, vec, out_dir=tmp_path, **SETTINGS["B"], **KW)
    with monkeypatch.context() as m:  # an interrupt while writing the config of a fresh sweep
        def interrupted(path):
            raise KeyboardInterrupt

        m.setattr(sweep_store, "atomic_path", interrupted)
        with pytest.raises(KeyboardInterrupt):
            sweep(tiny, PROMPTS, vec, out_dir=tmp_path, resume=False, **SETTINGS["B"], **KW)
    if sys.platform != "win32":
        assert not (tmp_path / LOCK_FILE).exists()  # released and removed on every exit path
    # the old log went before the new config: the old sweep reads as unfinished, never mixed
    assert not (tmp_path / CELLS_FILE).exists() and _which(tmp_path) == "A"
    with pytest.raises(ValueError, match="unfinished"):
        load_sweep(tmp_path)
    res = sweep(tiny, PROMPTS, vec, out_dir=tmp_path, **SETTINGS["A"], **KW)
    _same(res.table, sweep(tiny, PROMPTS, vec, **SETTINGS["A"], **KW).table)


# ------------------------------------------------------------------------------ damaged logs


def _corrupt_cases(good: list[bytes], tag: str) -> dict[str, bytes]:
    """A bad line for the middle of a log, per kind of damage."""
    rec = json.loads(good[5])
    other = {**rec, "fp": "0123456789abcdef"}
    return {
        "invalid JSON": b'{"part": "kl", "vector": ',
        "invalid UTF-8": b'{"part": "kl", "vector": "\\xff\xfe"}',
        "not an object": b"[1, 2, 3]",
        "unknown part": json.dumps({**rec, "part": "xx"}).encode(),
        "missing field": json.dumps({k: v for k, v in rec.items() if k != "kl_bits"}).encode(),
        "wrong type": json.dumps({**rec, "layer": "0"}).encode(),
        "value of the wrong type": json.dumps({**rec, "kl_bits": "big"}).encode(),
        "other settings": json.dumps(other).encode(),
        "cell outside the grid": json.dumps({**rec, "layer": 7}).encode(),
        "empty line": b"",
        "NUL bytes": b"\x00" * 40,
    }


def test_a_bad_line_names_file_and_line_and_the_valid_cells_are_kept(tiny, vec, tmp_path,
                                                                     monkeypatch):
    full = sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "ref", **SETTINGS["A"], **KW)
    raw = (tmp_path / "ref" / CELLS_FILE).read_bytes()
    good = raw.splitlines()
    tag = json.loads(good[0])["fp"]
    tried = ok = 0
    for i, (case, bad) in enumerate(_corrupt_cases(good, tag).items()):
        out = tmp_path / f"case{i}"
        shutil.copytree(tmp_path / "ref", out)
        # line 6 replaced by the bad line: one cell lost, every other one valid
        (out / CELLS_FILE).write_bytes(b"\n".join(good[:5] + [bad] + good[6:]) + b"\n")
        tried += 1
        with pytest.raises(CorruptStoreError) as err:
            load_sweep(out)
        msg = str(err.value)
        assert f"{out / CELLS_FILE} line 6 is corrupt" in msg, (case, msg)
        assert f"{len(good) - 1} line(s) are valid" in msg and "repair_store" in msg, case
        assert err.value.problems[0][0] == 6 and err.value.n_valid == len(good) - 1
        with pytest.raises(CorruptStoreError, match="on_corrupt='keep_valid'"):
            sweep(tiny, PROMPTS, vec, out_dir=out, **SETTINGS["A"], **KW)
        if i % 2:  # remedy 1: repair_store, then an ordinary rerun
            report = repair_store(out)
            assert report.kept == len(good) - 1 and report.n_dropped == 1, (case, report)
            assert "line 6" in str(report)
            with pytest.raises(ValueError, match=r"unfinished \(1 records missing\)"):
                load_sweep(out)
            res = sweep(tiny, PROMPTS, vec, out_dir=out, **SETTINGS["A"], **KW)
        else:  # remedy 2: sweep(on_corrupt="keep_valid")
            with pytest.warns(RuntimeWarning, match="line 6"):
                res = sweep(tiny, PROMPTS, vec, out_dir=out, on_corrupt="keep_valid",
                            **SETTINGS["A"], **KW)
        # only the lost cell is recomputed, and the table is the uninterrupted one
        assert res.n_resumed == len(good) - 1 and res.n_computed == 1, case
        keys = _keys(_lines(out))
        assert len(keys) == len(set(keys)) == len(full.table)
        _same(load_sweep(out).table, full.table)
        ok += 1
    print(f"\ndamaged-log cases: {tried} tried, {ok} named file+line and recovered every valid cell")
    with pytest.raises(ValueError, match="on_corrupt"):
        sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "ref", on_corrupt="ignore",
              **SETTINGS["A"], **KW)


def test_repair_store_drops_duplicates_and_torn_tail_and_several_bad_lines(tiny, vec, tmp_path):
    full = sweep(tiny, PROMPTS, vec, out_dir=tmp_path, **SETTINGS["A"], **KW)
    good = (tmp_path / CELLS_FILE).read_bytes().splitlines()
    assert repair_store(tmp_path).n_dropped == 0  # a clean log is left alone
    lines = good[:3] + [b"junk"] + good[3:10] + [good[4], b"{}"] + good[10:-1] + [good[-1][:9]]
    (tmp_path / CELLS_FILE).write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptStoreError, match=r"line 4 is corrupt.* 1 more line\(s\) are bad "
                                                r"too \(line 13\)"):
        load_sweep(tmp_path)
    report = repair_store(tmp_path)
    assert report.kept == len(good) - 1 and report.duplicates == 1 and report.torn_tail
    assert [n for n, _ in report.dropped] == [4, 13] and report.n_dropped == 4
    assert not list(tmp_path.glob(".*.tmp"))
    res = sweep(tiny, PROMPTS, vec, out_dir=tmp_path, **SETTINGS["A"], **KW)
    assert res.n_computed == 1
    _same(res.table, full.table)
    with pytest.raises(ValueError, match="holds no sweep"):
        repair_store(tmp_path / "nothing")


def test_config_and_cells_of_different_sweeps_are_never_combined(tiny, vec, tmp_path):
    """A log written under other settings (what a power cut or a hand copy could leave) is
    refused line by line: every record carries a hash of the fingerprint it was computed under."""
    sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "a", **SETTINGS["A"], **KW)
    sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "b", **SETTINGS["B"], **KW)
    shutil.copy(tmp_path / "b" / CELLS_FILE, tmp_path / "a" / CELLS_FILE)
    with pytest.raises(CorruptStoreError, match="line 1 is corrupt: written under other settings"):
        load_sweep(tmp_path / "a")
    with pytest.raises(CorruptStoreError, match="written under other settings"):
        sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "a", **SETTINGS["A"], **KW)
    assert repair_store(tmp_path / "a").kept == 0
    res = sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "a", **SETTINGS["A"], **KW)
    assert res.n_resumed == 0
    # records without a tag (steerlens before 0.2.x) still load
    path = tmp_path / "b" / CELLS_FILE
    recs = [{k: v for k, v in json.loads(x).items() if k != "fp"} for x in path.read_text().split("\n")
            if x]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    _same(load_sweep(tmp_path / "b").table, sweep(tiny, PROMPTS, vec, **SETTINGS["B"], **KW).table)


def test_bad_directories_and_configs_get_clear_errors(tiny, vec, tmp_path):
    run = dict(**SETTINGS["A"], **KW)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "file", **run)
    with pytest.raises(ValueError, match="cannot be created"):
        sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "file" / "sub", **run)
    for case, content in {"invalid JSON": "{", "a list": "[1]", "no format": "{}"}.items():
        out = tmp_path / case.replace(" ", "_")
        out.mkdir()
        (out / CONFIG_FILE).write_text(content)
        with pytest.raises(ValueError, match=str(out / CONFIG_FILE)):
            load_sweep(out)
        with pytest.raises(ValueError, match=CONFIG_FILE if case != "no format" else "differ"):
            sweep(tiny, PROMPTS, vec, out_dir=out, **run)
        sweep(tiny, PROMPTS, vec, out_dir=out, resume=False, **run)  # the remedy works
    out = tmp_path / "cells_dir"
    sweep(tiny, PROMPTS, vec, out_dir=out, **run)
    (out / CELLS_FILE).unlink()
    (out / CELLS_FILE).mkdir()
    with pytest.raises(ValueError, match="is not a file"):
        load_sweep(out)
    with pytest.raises(ValueError, match="is a directory"):
        sweep(tiny, PROMPTS, vec, out_dir=out, resume=False, **run)
    # temp files a killed writer left behind are removed by the next sweep
    stray = tmp_path / "stray"
    sweep(tiny, PROMPTS, vec, out_dir=stray, **run)
    (stray / f".{CONFIG_FILE}.abc123.tmp").write_text("half")
    sweep(tiny, PROMPTS, vec, out_dir=stray, **run)
    assert not list(stray.glob(".*.tmp"))


# ------------------------------------------------------------------------------ non-finite cells

HUGE = 1e5  # with entries of ~1-3, the steered residual passes fp16's 65504


@pytest.fixture()
def overflowing():
    """A fresh tiny model whose final norm sees inf wherever the residual leaves fp16's range:
    exactly what a float16 model does with too large a strength, on a float32 CPU model."""
    model = load_model("tiny-random", device="cpu")

    def fp16_overflow(module, args):
        x = args[0]
        return (torch.where(x.abs() > 65504.0, x.sign() * float("inf"), x),)

    handle = model.ln_final.register_forward_pre_hook(fp16_overflow)
    yield model
    handle.remove()


def test_nonfinite_cells_are_recorded_as_errors_and_excluded(tiny, vec, overflowing, tmp_path):
    settings = dict(layers=[0, 1], measures=("kl", "generate"), max_new_tokens=4, n_random=1,
                    scorer=lambda t: float(len(t)), chat=False, show_progress=False)
    # batch_size 64: finite and overflowing rows share one forward and one generate() call
    with pytest.warns(RuntimeWarning, match=r"16 of 48 sweep cells produced non-finite values"):
        res = sweep(overflowing, PROMPTS, vec, strengths=[0.0, 2.0, HUGE], out_dir=tmp_path,
                    batch_size=64, **settings)
    ref = sweep(tiny, PROMPTS, vec, strengths=[0.0, 2.0], batch_size=64, **settings)
    t = res.table
    bad, good = t[t.strength == HUGE], t[t.strength != HUGE]
    assert bad.failed.all() and not good.failed.any() and res.n_errors == 16
    assert bad.error.str.startswith("NonFiniteError: ").all()
    assert bad.kl_bits.isna().all() and bad.text.isna().all() and bad.changed.isna().all()
    assert bad.score.isna().all() and bad.perplexity.isna().all() and bad.diverge_at.isna().all()
    assert not (t.changed == True).fillna(False)[t.failed].any()  # noqa: E712 - never garbage
    # the finite cells of the same batches are exactly those of a sweep without the overflow
    got = good.drop(columns=["failed"]).reset_index(drop=True)
    want = ref.table.drop(columns=["failed"]).reset_index(drop=True)
    got["changed"] = got["changed"].astype(bool)
    assert got.error.isna().all() and want.error.isna().all()
    floats = ["kl_bits", "perplexity", "error"]
    pd.testing.assert_frame_equal(got.drop(columns=floats), want.drop(columns=floats))
    np.testing.assert_allclose(got.kl_bits, want.kl_bits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.perplexity, want.perplexity, rtol=1e-5)

    summ = res.summary(n_boot=200)
    top, rest = summ[summ.strength == HUGE], summ[summ.strength != HUGE]
    assert (top.n == 4).all() and (top.n_errors == 4).all() and (rest.n_errors == 0).all()
    for m in ("kl_bits", "changed", "score", "perplexity"):
        assert (top[f"{m}_n"] == 0).all() and top[f"{m}_mean"].isna().all()
    ref_summ = ref.summary(n_boot=200)
    np.testing.assert_allclose(rest.changed_mean, ref_summ.changed_mean)
    np.testing.assert_allclose(rest.kl_bits_mean, ref_summ.kl_bits_mean, rtol=1e-5)
    z = zones(res)
    assert (z[z.strength == HUGE].zone == "unstable").all()
    assert (z[z.strength == HUGE].n_errors == 4).all() and (z[z.strength != HUGE].n_errors == 0).all()
    for measure in ("kl_bits", "changed", "score", "perplexity"):
        eff = layer_effect(res, measure, strength=HUGE)
        assert (eff.n == 0).all() and (eff.n_errors == 4).all() and eff.effect.isna().all()
    cmp = compare_random(res, "kl_bits")
    assert (cmp[cmp.strength == HUGE].n_errors == 4).all()
    assert (cmp[cmp.strength == HUGE].n_random_errors == 4).all()
    assert (cmp[cmp.strength == 2.0].n_errors == 0).all()

    # saved, reloaded and resumed like any other cell: nothing is recomputed
    pd.testing.assert_frame_equal(load_sweep(tmp_path).table, t)
    with pytest.warns(RuntimeWarning, match="16 of 48"):
        again = sweep(overflowing, PROMPTS, vec, strengths=[0.0, 2.0, HUGE], out_dir=tmp_path,
                      batch_size=64, **settings)
    assert again.n_computed == 0
    # a failed gen record keeps no text, no `changed` and no measures
    recs = [r for r in _lines(tmp_path) if r.get("failed")]
    assert len(recs) == 32 and all(r.get("changed") is None for r in recs if r["part"] == "gen")


def test_kl_only_nonfinite_and_an_overflowing_unsteered_model(vec, overflowing, tmp_path):
    with pytest.warns(RuntimeWarning, match="8 of 16"):
        res = sweep(overflowing, PROMPTS, vec, layers=[0, 1], strengths=[-HUGE, 3.0], **KW)
    assert list(res.table.columns[-2:]) == ["error", "failed"]
    assert (res.table.failed == (res.table.strength == -HUGE)).all()
    assert res.summary(n_boot=100).n_errors.tolist() == [4, 0, 4, 0]
    assert res.table.kl_bits[~res.table.failed].notna().all()

    def broken(module, args):  # the unsteered model itself overflows: not a cell's problem
        return (args[0] * float("inf"),)

    handle = overflowing.ln_final.register_forward_pre_hook(broken)
    try:
        with pytest.raises(NonFiniteError, match="unsteered model produced non-finite"):
            sweep(overflowing, PROMPTS, vec, layers=[0], strengths=[3.0], out_dir=tmp_path, **KW)
        with pytest.raises(NonFiniteError, match="unsteered model produced non-finite"):
            sweep(overflowing, PROMPTS, vec, layers=[0], strengths=[3.0], out_dir=tmp_path,
                  measures=("generate",), resume=False, **KW)
    finally:
        handle.remove()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_in_one_process_and_a_finished_sweep_leaves_only_its_files(tiny, vec, tmp_path):
    from steerlens.sweep import CellStore

    fp = {"format": 2}
    with CellStore.open(tmp_path, fp, resume=False):
        assert (tmp_path / LOCK_FILE).exists()
        with pytest.raises(ValueError, match=f"{tmp_path} is in use: another sweep holds"):
            CellStore.open(tmp_path, fp, resume=False)
    with CellStore.open(tmp_path, fp, resume=False):  # released: a new holder gets it
        pass
    sweep(tiny, PROMPTS, vec, out_dir=tmp_path / "s", **SETTINGS["A"], **KW)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [CELLS_FILE, CONFIG_FILE]
