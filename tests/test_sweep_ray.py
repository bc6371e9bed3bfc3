"""Sweeps on Ray: the same table as in one process, workers killed mid-sweep, a driver interrupted.

The Ray tests share one local cluster (`ray.init(num_cpus=2)`) and one 2-worker `RayExecutor`
per module, so actors start (and import torch) once. They skip when Ray is not installed
(the `ray` extra), unless STEERLENS_REQUIRE_RAY=1 (CI), where that is a failure. The planning
and unit tests at the top need no Ray: they run a unit the way a worker does (job and unit
pickled, grid rebuilt) in this process.

Tolerance: driver and workers run the same float32 ops in the same order on the same shapes
(the same units, the same batches) at one torch thread each, so KL agrees to 1e-6 bits (on one
machine it is bit-identical; another CPU kernel on a remote node could move the last bits) and
greedy texts are identical.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from steerlens.sweep import CELLS_FILE, CellStore, SweepConfig, make_grid, sweep
from steerlens.sweep import engine as sweep_engine
from steerlens.sweep.executor import LocalExecutor, SweepJob, UnitContext, WorkUnit
from steerlens.sweep.grid import scorer_label
from steerlens.sweep.store import expected_keys, record_key
from steerlens.vectors import SteeringVector

PROMPTS = ["one", "two words", "three little words", "four", "five five five", "six"]
SCORER = {"kind": "keywords", "positive": ["a", "e"], "negative": ["o"]}
GRID = dict(layers=[0, 1], strengths=[-3.0, 0.0, 3.0], n_random=1, chat=False,
            measures=("kl", "generate"), max_new_tokens=5, scorer=SCORER)
KW = dict(GRID, batch_size=4, show_progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Driver at one torch thread, like the workers (same summation order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(11)
    return SteeringVector({0: torch.randn(64, generator=g) * 2, 1: torch.randn(64, generator=g) * 2})


@pytest.fixture(scope="module")
def reference(tiny, vec, one_thread):
    return sweep(tiny, PROMPTS, vec, **KW)


def _config() -> SweepConfig:
    return SweepConfig.from_settings(None, dict(GRID, scorer=scorer_label(SCORER)))


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # see the module docstring: same ops, same shapes, one thread -> 1e-6 bits; texts exact
    np.testing.assert_allclose(a.kl_bits, b.kl_bits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.perplexity, b.perplexity, rtol=1e-6)
    others = [c for c in a.columns if c not in ("kl_bits", "perplexity")]
    pd.testing.assert_frame_equal(a[others], b[others])


def _log_keys(out_dir) -> collections.Counter:
    lines = (out_dir / CELLS_FILE).read_text().splitlines()
    return collections.Counter(record_key(json.loads(x)) for x in lines)


def _assert_each_once(out_dir, tiny, vec) -> None:
    keys = _log_keys(out_dir)
    grid = make_grid(tiny, vec, PROMPTS, _config())
    assert set(keys) == expected_keys(grid)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]


# ------------------------------------------------------------------------------ without Ray


def test_plan_covers_every_cell_once(tiny, vec):
    grid = make_grid(tiny, vec, PROMPTS, _config())
    store = CellStore.open(None, grid.fingerprint(tiny), True)
    zero_kl, units = sweep_engine._plan_units(grid, store, 4)
    keys = [record_key(r) for r in zero_kl] + [k for u in units for k in u.record_keys()]
    keys += [("gen", n, layer, s, p) for n, layer, s, p in sweep_engine._zero_gen_cells(grid, store)]
    assert len(keys) == len(set(keys)) and set(keys) == expected_keys(grid)
    kl = [u for u in units if u.kind == "kl"]
    # per (vector, layer): chunk 1 has 4 prompts x 2 non-zero strengths = 8 rows -> 2 units of
    # batch_size 4, chunk 2 has 2 x 2 = 4 rows -> 1 unit; 2 vectors x 2 layers x 3 = 12
    assert len(kl) == 12 and all(len(u.rows) <= 4 for u in units)
    assert {u.group for u in kl} == {("kl", (0, 1, 2, 3), (0, 1)), ("kl", (4, 5), (0, 1))}
    gen = [u for u in units if u.kind == "gen"]
    assert all(u.needs == tuple(("base", p) for p in sorted({p for _, p in u.rows})) for u in gen)
    # a store that holds some cells: only the others are planned
    done = [u for u in units if u.kind in ("kl", "base")][:3]
    store.add_new([{"part": "kl", "vector": k[1], "layer": k[2], "strength": k[3],
                    "prompt_idx": k[4], "kl_bits": 0.0} if k[0] == "kl" else
                   {"part": "base", "prompt_idx": k[1], "text": "", "tokens": [],
                    "score": 0.0, "perplexity": 1.0, "error": None}
                   for u in done for k in u.record_keys()])
    _, again = sweep_engine._plan_units(grid, store, 4)
    left = {k for u in again for k in u.record_keys()}
    assert left == {k for u in units for k in u.record_keys()} - set(store.records)


def test_store_add_new_writes_each_key_once(tmp_path):
    store = CellStore.open(tmp_path, {"format": 2, "x": 1}, True)
    rec = {"part": "kl", "vector": "v", "layer": 0, "strength": 1.0, "prompt_idx": 0,
           "kl_bits": 0.5}
    assert store.add_new([rec, dict(rec, kl_bits=0.7)]) == 1
    assert store.add_new([rec]) == 0
    store.close()
    assert len((tmp_path / CELLS_FILE).read_text().splitlines()) == 1
    assert store.get(record_key(rec))["kl_bits"] == 0.5


def test_a_pickled_unit_runs_like_the_sweep(tiny, vec, reference):
    """The worker path in this process: job and units pickled, grid and scorer rebuilt."""
    grid = make_grid(tiny, vec, PROMPTS, _config())
    job = SweepJob.from_grid(grid, grid.fingerprint(tiny), SCORER, 4, runner=sweep_engine.run_unit)
    job2 = pickle.loads(pickle.dumps(job))
    assert job2.grid().fingerprint(tiny) == job.fingerprint
    store = CellStore.open(None, job.fingerprint, True)
    zero_kl, units = sweep_engine._plan_units(grid, store, 4)
    store.add_new(zero_kl)
    LocalExecutor().run(tiny, job2, [pickle.loads(pickle.dumps(u)) for u in units], store.get,
                        lambda unit, res: store.add_new(res.records))
    t = reference.table.set_index(["vector", "layer", "strength", "prompt_idx"])
    for key, rec in store.records.items():
        if key[0] == "kl":
            assert rec["kl_bits"] == pytest.approx(t.loc[key[1:], "kl_bits"], abs=1e-6)
        elif key[0] == "gen":
            assert rec["text"] == t.loc[key[1:], "text"]
    ctx = UnitContext(tiny, job2)
    with pytest.raises(RuntimeError, match="needs record"):
        LocalExecutor().run(tiny, job2, [u for u in units if u.kind == "gen"][:1],
                            lambda key: None, lambda unit, res: None)
    assert ctx.scorer is not None


def test_unknown_unit_kind_and_bad_executor(tiny, vec):
    with pytest.raises(ValueError, match="valid"):
        WorkUnit("steer")
    # under the test suite's runtime type checker the annotation refuses it first (a TypeError)
    with pytest.raises((ValueError, TypeError)) as info:
        sweep(tiny, PROMPTS[:1], vec, layers=[0], strengths=[1.0], chat=False,
              show_progress=False, executor="ray")
    assert "executor" in str(info.value)


# ------------------------------------------------------------------------------ on Ray


@pytest.fixture(scope="module")
def ray_cluster():
    if importlib.util.find_spec("ray") is None:
        why = "ray is not installed (the optional extra: pip install 'steerlens[ray]')"
        if os.environ.get("STEERLENS_REQUIRE_RAY") == "1":
            pytest.fail(f"STEERLENS_REQUIRE_RAY=1 but {why}")
        pytest.skip(why)
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_cluster):
    from steerlens.sweep.executor import RayExecutor

    # 0.5 CPU each: two workers plus a replacement fit on the 2-CPU cluster
    with RayExecutor(2, num_cpus_per_worker=0.5, torch_threads=1) as ex:
        yield ex


def test_ray_sweep_matches_single_process(tiny, vec, reference, executor):
    res = sweep(tiny, PROMPTS, vec, executor=executor, **KW)
    _same(reference.table, res.table)
    pd.testing.assert_frame_equal(reference.baseline, res.baseline)
    assert res.table.changed.any() and (res.table.kl_bits > 0).any()  # steering did something
    assert res.passes["steered"] == reference.passes["steered"]
    assert res.n_computed == reference.n_computed


def test_worker_exits_mid_sweep_and_is_replaced(tiny, vec, reference, executor, tmp_path):
    marker = str(tmp_path / "died")

    def die_once(unit, n_done):  # in a worker: the first to reach its 3rd unit exits, once
        if n_done == 2:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(1)

    replaced, rerun = executor.n_replaced, executor.n_rerun
    executor.fault_hook = die_once
    try:
        res = sweep(tiny, PROMPTS, vec, executor=executor, out_dir=tmp_path / "s", **KW)
    finally:
        executor.fault_hook = None
    assert os.path.exists(marker)
    assert executor.n_replaced == replaced + 1 and executor.n_rerun > rerun
    _assert_each_once(tmp_path / "s", tiny, vec)
    _same(reference.table, res.table)


def test_worker_killed_by_ray_is_replaced(tiny, vec, reference, executor, tmp_path,
                                          monkeypatch, ray_cluster):
    replaced = executor.n_replaced
    add_new, calls = CellStore.add_new, []

    def kill_after_first_result(self, records):
        calls.append(1)
        if len(calls) == 2:  # call 1 stores the strength-0 KL cells, call 2 the first unit
            ray_cluster.kill(executor.actors[0], no_restart=True)
        return add_new(self, records)

    monkeypatch.setattr(CellStore, "add_new", kill_after_first_result)
    res = sweep(tiny, PROMPTS, vec, executor=executor, out_dir=tmp_path, **KW)
    assert executor.n_replaced == replaced + 1
    _assert_each_once(tmp_path, tiny, vec)
    _same(reference.table, res.table)


def test_interrupted_driver_resumes_from_the_store(tiny, vec, reference, executor, tmp_path,
                                                   monkeypatch):
    add_new, calls = CellStore.add_new, []

    def interrupt(self, records):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return add_new(self, records)

    monkeypatch.setattr(CellStore, "add_new", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sweep(tiny, PROMPTS, vec, executor=executor, out_dir=tmp_path, **KW)
    monkeypatch.setattr(CellStore, "add_new", add_new)
    saved = _log_keys(tmp_path)
    assert 0 < len(saved) < reference.n_computed and max(saved.values()) == 1

    res = sweep(tiny, PROMPTS, vec, executor=executor, out_dir=tmp_path, **KW)
    assert res.n_resumed == len(saved)
    assert res.n_computed == reference.n_computed - len(saved)  # only the missing cells
    _assert_each_once(tmp_path, tiny, vec)
    _same(reference.table, res.table)


@pytest.mark.embedded
def test_ray_sweep_matches_single_process_smollm2(smol, sentiment, executor, one_thread):
    vec = SteeringVector({layer: sentiment_dir for layer, sentiment_dir in
                          _mean_diff(smol, sentiment, [3, 9]).items()})
    prompts = list(sentiment.eval_prompts[:3])
    kw = dict(layers=[3, 9], strengths=[0.0, 4.0, 8.0], measures=("kl", "generate"),
              max_new_tokens=6, batch_size=4, show_progress=False)
    ref = sweep(smol, prompts, vec, **kw)
    res = sweep(smol, prompts, vec, executor=executor, **kw)  # workers load SmolLM2 by name
    _same(ref.table, res.table)
    pd.testing.assert_frame_equal(ref.baseline, res.baseline)
    assert res.table.changed.any()


def _mean_diff(model, behaviour, layers):
    from steerlens.methods import build_vector

    v = build_vector(model, behaviour.train[:8], layers, show_progress=False)
    return {layer: v[layer] for layer in layers}
