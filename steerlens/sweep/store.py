"""Streaming, resumable storage of sweep cells.

A results directory holds `sweep.json`, the grid's fingerprint (written atomically), and
`cells.jsonl`, an append-only log with one JSON object per computed record: a "kl" record per
(vector, layer, strength, prompt) cell, a "gen" record per cell when generating, and a "base"
record per prompt for the unsteered continuation. Records are appended as soon as they are
computed, and each append is flushed and fsync'd, so an interrupt loses at most the batch in
flight. Reopening with the same fingerprint loads every record and the engine computes only what
is missing; a different fingerprint is refused with the list of settings that differ. A final line
cut short by a crash is dropped (and trimmed from the file) on load. Without a directory the store
lives in memory only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .grid import SweepGrid, upgrade_fingerprint
from .result import SweepResult, build_tables

CONFIG_FILE = "sweep.json"
CELLS_FILE = "cells.jsonl"

Key = tuple


def record_key(rec: Mapping[str, Any]) -> Key:
    """The key a record is stored under.

    Args:
        rec: a "kl", "gen" or "base" record.

    Returns:
        ("base", prompt_idx) or (part, vector, layer, strength, prompt_idx).
    """
    if rec["part"] == "base":
        return ("base", int(rec["prompt_idx"]))
    return (rec["part"], rec["vector"], int(rec["layer"]), float(rec["strength"]),
            int(rec["prompt_idx"]))


def _clean(value):
    """JSON-safe value: NaN/inf become None (restored to NaN by the table builder)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class CellStore:
    """Completed records keyed by (part, vector, layer, strength, prompt_idx) / ("base", prompt).

    Args:
        directory: the results directory, or None for an in-memory store.
        records: the records loaded so far, by key.
        n_loaded: how many were loaded from disk.
    """

    def __init__(self, directory: Path | None, records: dict[Key, dict], n_loaded: int) -> None:
        self.directory = directory
        self.records = records
        self.n_loaded = n_loaded

    @classmethod
    def open(cls, out_dir, fingerprint: dict[str, Any], resume: bool) -> CellStore:
        """Open (or create) a results directory for a sweep with this fingerprint.

        Args:
            out_dir (str | Path | None): the results directory; None keeps records in memory only.
            fingerprint: the sweep's `SweepGrid.fingerprint`.
            resume: load matching records already in `out_dir`; False discards them.

        Returns:
            The store, holding the records a resumed sweep need not recompute.

        Raises:
            ValueError: if `out_dir` is a file, holds a sweep with different settings (the message
                names them), has records without settings, or its log is corrupt.
        """
        if out_dir is None:
            return cls(None, {}, 0)
        directory = Path(out_dir)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"out_dir {directory} exists and is not a directory.")
        directory.mkdir(parents=True, exist_ok=True)
        cfg_path, cells_path = directory / CONFIG_FILE, directory / CELLS_FILE
        wanted = json.loads(json.dumps(fingerprint))
        if resume and cfg_path.exists():
            try:
                found = json.loads(cfg_path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise ValueError(f"{cfg_path} is not valid JSON ({err}); remove it or pass "
                                 "resume=False to start over.") from err
            with contextlib.suppress(ValueError):  # reported as a settings difference below
                found = upgrade_fingerprint(found)
            if found != wanted:
                diff = _differences(found, wanted)
                raise ValueError(
                    f"{directory} holds a sweep with different settings ({', '.join(diff)} "
                    "differ), so it cannot be resumed. Use another out_dir, or resume=False to "
                    "discard it and start over."
                )
            records = _load(cells_path)
            return cls(directory, records, len(records))
        if resume and cells_path.exists() and cells_path.stat().st_size > 0:
            raise ValueError(f"{cells_path} exists but {cfg_path} does not, so its settings are "
                             "unknown; use another out_dir or resume=False to discard it.")
        cells_path.unlink(missing_ok=True)
        atomic_write_text(cfg_path, json.dumps(wanted, indent=1))
        return cls(directory, {}, 0)

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def get(self, key: Key) -> dict | None:
        """The record stored under `key`, or None.

        Args:
            key: a `record_key`.

        Returns:
            The record dict, or None when it has not been computed.
        """
        return self.records.get(key)

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Keep records and append them durably (flush + fsync) to the log.

        Args:
            records: the new records (NaN / inf values are stored as null).
        """
        recs = [{k: _clean(v) for k, v in r.items()} for r in records]
        if not recs:
            return
        if self.directory is not None:
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in recs)
            with open(self.directory / CELLS_FILE, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        for r in recs:
            self.records[record_key(r)] = r


def _differences(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Names of the settings that differ, looking inside the nested "config" dict."""
    out = []
    for k in sorted(set(found) | set(wanted)):
        a, b = found.get(k), wanted.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and k == "config":
            out += [n for n in _differences(a, b)]
        elif a != b:
            out.append(k)
    return out


def _load(path: Path) -> dict[Key, dict]:
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # bytes after the last newline: empty, or a line cut short by a crash
    records: dict[Key, dict] = {}
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            records[record_key(rec)] = rec
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} line {i + 1} is corrupt ({err}); the sweep log cannot be "
                             "resumed. Pass resume=False to start over.") from err
    if tail:
        with open(path, "r+b") as fh:
            fh.truncate(len(raw) - len(tail))
            fh.flush()
            os.fsync(fh.fileno())
    return records


def load_sweep(out_dir) -> SweepResult:
    """Reopen a sweep written to `out_dir` (e.g. for figures) without the model.

    Args:
        out_dir (str | Path): the directory a `sweep(..., out_dir=...)` call wrote.

    Returns:
        The `SweepResult`; its `config` is the saved fingerprint (format 2, with the
        `SweepConfig` dict under "config"; 0.1 directories are upgraded on read).

    Raises:
        ValueError: if the directory is not a sweep, its fingerprint is malformed, or the sweep
            is unfinished (rerun `sweep(...)` with the same settings and out_dir to complete it).
    """
    directory = Path(out_dir)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.exists():
        raise ValueError(f"{directory} holds no sweep ({CONFIG_FILE} is missing).")
    try:
        fingerprint = upgrade_fingerprint(json.loads(cfg_path.read_text(encoding="utf-8")))
        grid = SweepGrid.from_fingerprint(fingerprint)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path} is not a valid sweep config ({err}).") from err
    store = CellStore(directory, _load(directory / CELLS_FILE), 0)
    n_parts = 2 if grid.generate else 1
    missing = grid.n_cells * n_parts + (len(grid.prompts) if grid.generate else 0) - len(store.records)
    if missing > 0:
        raise ValueError(f"The sweep in {directory} is unfinished ({missing} records missing); "
                         "rerun sweep(...) with the same settings and out_dir to complete it.")
    table, baseline = build_tables(grid, store)
    return SweepResult(table, baseline, fingerprint, 0, len(store.records), {}, str(directory))
