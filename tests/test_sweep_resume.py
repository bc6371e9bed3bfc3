"""Streaming and resuming: interrupt a sweep mid-way, rerun it, and check that nothing is lost or
recomputed and that the final table equals an uninterrupted run (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from steerlens.backend import runtime
from steerlens.sweep import CELLS_FILE, CONFIG_FILE, load_sweep, sweep
from steerlens.sweep import engine as sweep_engine
from steerlens.vectors import SteeringVector

PROMPTS = ["one", "two words", "three little words", "four"]
STRENGTHS = [-3.0, 0.0, 3.0]
KW = dict(chat=False, batch_size=4, show_progress=False)


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(11)
    return SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)})


class Interrupt:
    """Wrap a function: count calls and raise KeyboardInterrupt on call number `at`."""

    def __init__(self, fn, at: int | None = None) -> None:
        self.fn, self.at, self.calls = fn, at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


def _lines(path):
    return [json.loads(x) for x in (path / CELLS_FILE).read_text().splitlines()]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # other float columns: pandas' default rtol 1e-5; KL: a resumed run may put a cell in
    # another batch, so float32-path tolerance (~1e-6 relative on logits, KLs up to a few bits)
    pd.testing.assert_frame_equal(a.drop(columns=["kl_bits"]), b.drop(columns=["kl_bits"]))
    np.testing.assert_allclose(a.kl_bits, b.kl_bits, rtol=1e-5, atol=1e-6)


def test_kl_sweep_resumes_without_recomputing(tiny, vec, tmp_path, monkeypatch):
    full = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, n_random=1, **KW)
    # 2 vectors x 2 layers x 8 non-zero rows -> 2 pieces of 4 rows each = 8 steered forwards
    assert full.passes["steered"] == 8

    wrapped = Interrupt(runtime.run_from_layer, at=4)
    monkeypatch.setattr(runtime, "run_from_layer", wrapped)
    with pytest.raises(KeyboardInterrupt):
        sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, n_random=1, out_dir=tmp_path, **KW)
    saved = _lines(tmp_path)
    with pytest.raises(ValueError, match="unfinished"):
        load_sweep(tmp_path)
    zero_cells = 2 * 2 * len(PROMPTS)  # strength 0: recorded without a forward
    assert len(saved) == zero_cells + 3 * 4  # 3 forwards of 4 rows finished before the interrupt
    assert len({(r["vector"], r["layer"], r["strength"], r["prompt_idx"]) for r in saved}) == len(saved)

    counter = Interrupt(runtime.run_from_layer.fn)
    monkeypatch.setattr(runtime, "run_from_layer", counter)
    res = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, n_random=1, out_dir=tmp_path,
                **KW)
    assert counter.calls == 8 - 3 == res.passes["steered"]
    assert res.n_resumed == len(saved) and res.n_computed == res.n_cells - len(saved)
    assert len(_lines(tmp_path)) == res.n_cells  # every cell written exactly once
    _same(res.table, full.table)

    # a third run computes nothing at all
    again = sweep(tiny, PROMPTS, vec, layers=[0, 1], strengths=STRENGTHS, n_random=1,
                  out_dir=tmp_path, **KW)
    assert again.n_computed == 0 and sum(again.passes.values()) == 0
    assert counter.calls == 5
    _same(again.table, full.table)


def test_generation_sweep_resumes(tiny, vec, tmp_path, monkeypatch):
    gen_kw = dict(KW, measures=("kl", "generate"), max_new_tokens=5)
    full = sweep(tiny, PROMPTS, vec, layers=[1], strengths=STRENGTHS,
                 scorer=lambda t: float(len(t)), **gen_kw)

    seen = []

    def scorer(text: str) -> float:  # interrupts on its 7th call: after the 4 baselines
        seen.append(text)
        if len(seen) == 7:
            raise KeyboardInterrupt
        return float(len(text))

    gens = Interrupt(sweep_engine.generate)
    monkeypatch.setattr(sweep_engine, "generate", gens)
    with pytest.raises(KeyboardInterrupt):
        sweep(tiny, PROMPTS, vec, layers=[1], strengths=STRENGTHS, scorer=scorer, out_dir=tmp_path,
              **gen_kw)
    parts = [r["part"] for r in _lines(tmp_path)]
    assert parts.count("base") == 4 and parts.count("gen") == 4  # baselines + strength-0 cells
    first_calls = gens.calls

    res = sweep(tiny, PROMPTS, vec, layers=[1], strengths=STRENGTHS, scorer=scorer, out_dir=tmp_path,
                **gen_kw)
    # baselines are not regenerated: only the 2 chunks of steered rows run again
    assert gens.calls - first_calls == 2 == res.passes["generate"]
    assert res.n_computed == 8 and res.n_resumed == 4 + 4 + len(STRENGTHS) * len(PROMPTS)
    pd.testing.assert_frame_equal(res.baseline, full.baseline)
    _same(res.table, full.table)
    saved = load_sweep(tmp_path)  # reopened without the model, e.g. by a figure script
    pd.testing.assert_frame_equal(saved.table, res.table)
    pd.testing.assert_frame_equal(saved.baseline, res.baseline)


def test_fingerprint_refuses_other_settings(tiny, vec, tmp_path):
    sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0], out_dir=tmp_path, **KW)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert cfg["config"]["strengths"] == [1.0] and cfg["prompts"] == PROMPTS
    with pytest.raises(ValueError, match="strengths differ"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[2.0], out_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="vectors differ"):
        sweep(tiny, PROMPTS, vec * 2.0, layers=[0], strengths=[1.0], out_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="positions differ"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0], out_dir=tmp_path, positions="last", **KW)
    # resume=False discards the old sweep and starts over with the new settings
    res = sweep(tiny, PROMPTS, vec, layers=[0], strengths=[2.0], out_dir=tmp_path, resume=False, **KW)
    assert res.n_resumed == 0 and len(_lines(tmp_path)) == len(PROMPTS)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["config"]["strengths"] == [2.0]


def test_torn_last_line_is_dropped(tiny, vec, tmp_path):
    full = sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0, 2.0], out_dir=tmp_path, **KW)
    path = tmp_path / CELLS_FILE
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # crash mid-write
    res = sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0, 2.0], out_dir=tmp_path, **KW)
    assert res.n_resumed == len(lines) - 1 and res.n_computed == 1
    assert len(_lines(tmp_path)) == len(lines)
    _same(res.table, full.table)
    path.write_text("not json\n" + text)
    with pytest.raises(ValueError, match="line 1 is corrupt"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0, 2.0], out_dir=tmp_path, **KW)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(ValueError, match="holds no sweep"):
        load_sweep(tmp_path)
    with pytest.raises(ValueError, match="settings are unknown"):
        sweep(tiny, PROMPTS, vec, layers=[0], strengths=[1.0, 2.0], out_dir=tmp_path, **KW)
