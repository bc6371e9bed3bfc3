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

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write_text

CONFIG_FILE = "sweep.json"
CELLS_FILE = "cells.jsonl"

Key = tuple


def record_key(rec: Mapping[str, Any]) -> Key:
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
    """Completed records keyed by (part, vector, layer, strength, prompt_idx) / ("base", prompt)."""

    def __init__(self, directory: Path | None, records: dict[Key, dict], n_loaded: int) -> None:
        self.directory = directory
        self.records = records
        self.n_loaded = n_loaded

    @classmethod
    def open(cls, out_dir, fingerprint: dict[str, Any], resume: bool) -> CellStore:
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
            if found != wanted:
                diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
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
        return self.records.get(key)

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Keep records and append them durably (flush + fsync) to the log."""
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
