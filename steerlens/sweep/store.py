"""Streaming, resumable, crash-safe storage of sweep cells.

A results directory holds `sweep.json`, the grid's fingerprint (written atomically), and
`cells.jsonl`, an append-only log with one JSON object per computed record: a "kl" record per
(vector, layer, strength, prompt) cell, a "gen" record per cell when generating, and a "base"
record per prompt for the unsteered continuation. Records are appended as soon as they are
computed, and each append is flushed and fsync'd, so an interrupt loses at most the batch in
flight. Reopening with the same fingerprint loads every record and the engine computes only what
is missing; a different fingerprint is refused with the list of settings that differ. A final line
cut short by a crash is dropped (and trimmed from the file when a sweep resumes). Without a
directory the store lives in memory only.

Guarantees:
- One writer: a sweep holds an exclusive OS lock (`fcntl.flock`, non-blocking) on `.sweep.lock`
  in its directory for its whole run, released (and the file removed) on every exit path; a
  killed process's lock is released by the OS. A second sweep, or `repair_store`, on a locked
  directory raises a ValueError naming it.
- Config and cells never mix: a fresh sweep removes the old log (and syncs the directory) before
  it writes the new config, and every record carries `fp`, a hash of the fingerprint it was
  computed under. A reader meets the old sweep, the new sweep (perhaps unfinished), never cells
  under a config they were not written for; a record with another `fp`, or for a cell outside the
  grid, is reported like a corrupt line.
- Damage is reported precisely: a bad line raises `CorruptStoreError` naming the file, the line
  and the problem, and how many lines are valid. `repair_store(out_dir)` (or
  `sweep(..., on_corrupt="keep_valid")`) rewrites the log atomically without the bad lines, so a
  rerun computes only the cells they held.
- `load_sweep` only reads: it never truncates or rewrites, so it is safe while a sweep writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_path
from .grid import SweepGrid, upgrade_fingerprint
from .result import SweepResult, build_tables

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

CONFIG_FILE = "sweep.json"
CELLS_FILE = "cells.jsonl"
LOCK_FILE = ".sweep.lock"
TAG_FIELD = "fp"
ON_CORRUPT = ("raise", "keep_valid")

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


def fingerprint_tag(fingerprint: Mapping[str, Any]) -> str:
    """The short hash every record of a sweep carries (its `fp` field).

    Args:
        fingerprint: the (format-2) fingerprint the records are computed under.

    Returns:
        16 hex digits of the SHA-256 of the canonical JSON.
    """
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expected_keys(grid: SweepGrid) -> set[Key]:
    """Every record key a finished sweep over `grid` holds.

    Args:
        grid: the sweep's grid.

    Returns:
        The "kl" keys, plus the "gen" and "base" keys when the sweep generates.
    """
    parts = ("kl", "gen") if grid.generate else ("kl",)
    keys = {(part, name, layer, float(s), p) for part in parts for name in grid.names
            for layer in grid.layers for s in grid.strengths for p in range(len(grid.prompts))}
    if grid.generate:
        keys |= {("base", p) for p in range(len(grid.prompts))}
    return keys


def _clean(value):
    """JSON-safe value: NaN/inf become None (restored to NaN by the table builder)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class CorruptStoreError(ValueError):
    """A sweep's cells log holds lines that cannot be used.

    Attributes:
        path: the log file.
        problems: (line number, problem) for every bad line, 1-based.
        n_valid: how many lines are valid.
    """

    def __init__(self, path: Path, problems: list[tuple[int, str]], n_valid: int,
                 remedy: str) -> None:
        self.path, self.problems, self.n_valid = path, problems, n_valid
        line, problem = problems[0]
        more = ""
        if len(problems) > 1:
            shown = ", ".join(str(n) for n, _ in problems[1:6])
            more = (f" {len(problems) - 1} more line(s) are bad too (line {shown}"
                    + (", ..." if len(problems) > 6 else "") + ").")
        super().__init__(f"{path} line {line} is corrupt: {problem}.{more} {n_valid} line(s) "
                         "are valid. "
                         + remedy)


@dataclass(frozen=True)
class RepairReport:
    """What `repair_store` did to a cells log.

    Attributes:
        path: the log file.
        kept: records kept.
        dropped: (line number, problem) for each line removed, 1-based.
        duplicates: earlier copies of a record removed (the last copy is kept).
        torn_tail: whether a final line cut short by a crash was removed.
    """

    path: str
    kept: int
    dropped: tuple[tuple[int, str], ...] = ()
    duplicates: int = 0
    torn_tail: bool = False

    @property
    def n_dropped(self) -> int:
        """Lines removed: bad lines, duplicates and a torn final line."""
        return len(self.dropped) + self.duplicates + int(self.torn_tail)

    def __str__(self) -> str:
        parts = [f"{len(self.dropped)} bad line(s)"]
        if self.dropped:
            parts[0] += " (" + "; ".join(f"line {n}: {p}" for n, p in self.dropped[:3]) + (
                "; ..." if len(self.dropped) > 3 else "") + ")"
        parts += [f"{self.duplicates} duplicate(s)", f"{int(self.torn_tail)} torn final line"]
        return (f"{self.path}: kept {self.kept} record(s), dropped {self.n_dropped} line(s): "
                + ", ".join(parts) + ".")


# ------------------------------------------------------------------------------ the lock


class _DirLock:
    """An exclusive, non-blocking OS lock on `<directory>/.sweep.lock`.

    The lock file is removed on release (while still locked), so a finished sweep leaves only
    its two files. An acquirer that locked a file another process had just removed sees that
    the path no longer names its file and tries again, so two holders can never coexist.
    """

    def __init__(self, directory: Path, what: str) -> None:
        path = directory / LOCK_FILE
        self.fd: int | None = None
        self.path: Path | None = None
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise ValueError(
                    f"Cannot create the lock file {path} ({err.strerror}); {what} needs a "
                    "writable directory (load_sweep reads a finished sweep without writing)."
                ) from err
            try:
                _lock_fd(fd)
            except BlockingIOError as err:
                os.close(fd)
                raise ValueError(
                    f"{directory} is in use: another sweep holds its lock ({path}), and two "
                    "sweeps must not write one out_dir. Wait for it to finish, or use another "
                    "out_dir."
                ) from err
            except OSError as err:  # e.g. a filesystem without locks: run unlocked, loudly
                warnings.warn(f"Could not lock {path} ({err.strerror}); nothing stops another "
                              "sweep from writing this directory at the same time.",
                              RuntimeWarning, stacklevel=4)
                self.fd = fd
                return
            if fcntl is None:  # pragma: no cover - Windows: the file is never removed
                self.fd = fd
                return
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd, self.path = fd, path
                return
            os.close(fd)  # we locked a lock file its holder had just removed: try again
        raise ValueError(f"Could not lock {path}: it kept being replaced.")

    def release(self) -> None:
        fd, path, self.fd, self.path = self.fd, self.path, None, None
        if fd is None:
            return
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            _unlock_fd(fd)
        os.close(fd)


def _lock_fd(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif msvcrt is not None:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as err:
            raise BlockingIOError(str(err)) from err


def _unlock_fd(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stray_temps(directory: Path) -> None:
    """Remove temp files a killed writer left (only called while holding the lock)."""
    for name in (CONFIG_FILE, CELLS_FILE):
        for tmp in directory.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


# ------------------------------------------------------------------------------ reading the log


@dataclass
class _Scan:
    """One pass over a cells log: valid records, bad lines, a torn tail."""

    path: Path
    records: dict[Key, dict] = field(default_factory=dict)
    lines: list[tuple[Key, bytes]] = field(default_factory=list)  # valid lines, in file order
    problems: list[tuple[int, str]] = field(default_factory=list)
    torn: bytes = b""
    size: int = 0


_NUMBER = (numbers.Real,)
_FIELDS: dict[str, dict[str, tuple]] = {
    "kl": {"kl_bits": _NUMBER + (type(None),)},
    "gen": {"text": (str, type(None)), "changed": (bool, type(None)),
            "diverge_at": (int, type(None)), "score": _NUMBER + (type(None),),
            "perplexity": _NUMBER + (type(None),), "error": (str, type(None))},
    "base": {"text": (str,), "tokens": (list,), "score": _NUMBER + (type(None),),
             "perplexity": _NUMBER + (type(None),), "error": (str, type(None))},
}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_record(rec, tag: str | None, expected: set[Key] | None) -> Key:
    """The record's key, or ValueError saying what is wrong with it."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    part = rec.get("part")
    if part not in _FIELDS:
        raise ValueError(f"unknown record part {part!r} (valid: 'kl', 'gen', 'base')")
    if tag is not None and TAG_FIELD in rec and rec[TAG_FIELD] != tag:
        raise ValueError(f"written under other settings (fingerprint tag {rec[TAG_FIELD]!r}, "
                         f"but {CONFIG_FILE} has {tag!r})")
    if not _is_int(rec.get("prompt_idx")):
        raise ValueError(f"prompt_idx must be an int, got {rec.get('prompt_idx')!r}")
    if part != "base":
        if not isinstance(rec.get("vector"), str):
            raise ValueError(f"vector must be a string, got {rec.get('vector')!r}")
        if not _is_int(rec.get("layer")):
            raise ValueError(f"layer must be an int, got {rec.get('layer')!r}")
        s = rec.get("strength")
        if isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise ValueError(f"strength must be a number, got {s!r}")
    for name, types in _FIELDS[part].items():
        value = rec.get(name)
        if name not in rec or isinstance(value, bool) and bool not in types \
                or not isinstance(value, types):
            raise ValueError(f"field {name!r} is missing or has the wrong type ({value!r})")
    if part == "base" and not all(_is_int(t) for t in rec["tokens"]):
        raise ValueError("field 'tokens' must be a list of ints")
    key = record_key(rec)
    if expected is not None and key not in expected:
        what = ("prompt" if part == "base" else "vector, layer, strength or prompt")
        raise ValueError(f"record {key} is not a cell of this sweep (its {what} is not in "
                         f"{CONFIG_FILE})")
    return key


def _scan(path: Path, tag: str | None, expected: set[Key] | None) -> _Scan:
    """Parse and check every line of the log (read only)."""
    scan = _Scan(path)
    if not path.exists():
        return scan
    if not path.is_file():
        raise ValueError(f"{path} is not a file; a sweep's {CELLS_FILE} must be a regular file.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"Cannot read {path} ({err.strerror}).") from err
    scan.size = len(raw)
    lines = raw.split(b"\n")
    scan.torn = lines.pop()  # bytes after the last newline: empty, or a line cut short by a crash
    for i, line in enumerate(lines):
        try:
            if not line.strip():
                raise ValueError("empty line")
            try:
                rec = json.loads(line)
            except UnicodeDecodeError as err:
                raise ValueError(f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
            except ValueError as err:
                raise ValueError(f"not valid JSON ({err})") from None
            key = _check_record(rec, tag, expected)
        except ValueError as err:
            scan.problems.append((i + 1, str(err)))
            continue
        scan.records[key] = rec
        scan.lines.append((key, line))
    return scan


def _rewrite(scan: _Scan) -> RepairReport:
    """Atomically replace the log with its valid lines (the last copy of each record)."""
    last = {key: i for i, (key, _) in enumerate(scan.lines)}
    keep = [line for i, (key, line) in enumerate(scan.lines) if last[key] == i]
    report = RepairReport(str(scan.path), len(keep), tuple(scan.problems),
                          len(scan.lines) - len(keep), bool(scan.torn))
    if report.n_dropped:
        with atomic_path(scan.path) as tmp:
            tmp.write_bytes(b"".join(line + b"\n" for line in keep))
        _fsync_dir(scan.path.parent)
    return report


def _read_fingerprint(cfg_path: Path) -> dict[str, Any]:
    """The saved fingerprint (upgraded to format 2), or ValueError naming the file."""
    try:
        found = json.loads(cfg_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"Cannot read {cfg_path} ({err.strerror}).") from err
    except ValueError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); remove it or pass resume=False "
                         "to start over.") from err
    if not isinstance(found, dict):
        raise ValueError(f"{cfg_path} is not a sweep config (a JSON object); remove it or pass "
                         "resume=False to start over.")
    return found


def _remedy(directory: Path, in_sweep: bool) -> str:
    how = (f"pass on_corrupt='keep_valid' to sweep(), or call "
           f"steerlens.sweep.repair_store({str(directory)!r}) first" if in_sweep else
           f"call steerlens.sweep.repair_store({str(directory)!r}), then rerun sweep(...) with "
           "the same settings and out_dir")
    return (f"To keep the valid cells and recompute only the lost ones, {how}; resume=False "
            "discards every cell.")


# ------------------------------------------------------------------------------ the store


class CellStore:
    """Completed records keyed by (part, vector, layer, strength, prompt_idx) / ("base", prompt).

    A store opened on a directory holds the directory's lock until `close()` (it is also a
    context manager).

    Args:
        directory: the results directory, or None for an in-memory store.
        records: the records loaded so far, by key.
        n_loaded: how many were loaded from disk.
        tag: the fingerprint tag written into every record.
    """

    def __init__(self, directory: Path | None, records: dict[Key, dict], n_loaded: int,
                 tag: str | None = None) -> None:
        self.directory = directory
        self.records = records
        self.n_loaded = n_loaded
        self.tag = tag
        self._lock: _DirLock | None = None

    @classmethod
    def open(cls, out_dir, fingerprint: dict[str, Any], resume: bool,
             on_corrupt: str = "raise") -> CellStore:
        """Open (or create) a results directory for a sweep with this fingerprint, and lock it.

        Args:
            out_dir (str | Path | None): the results directory; None keeps records in memory only.
            fingerprint: the sweep's `SweepGrid.fingerprint`.
            resume: load matching records already in `out_dir`; False discards them.
            on_corrupt: "raise" (a `CorruptStoreError` naming the file and line) or
                "keep_valid" (drop the bad lines from the log with a warning, keep the rest).

        Returns:
            The store, holding the records a resumed sweep need not recompute. Call `close()`
            (or use it as a context manager) to release the directory's lock.

        Raises:
            ValueError: if `out_dir` is a file, is locked by another sweep, holds a sweep with
                different settings (the message names them), or has records without settings.
            CorruptStoreError: if the log has bad lines and `on_corrupt` is "raise".
        """
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"Unknown on_corrupt {on_corrupt!r}; valid values are "
                             f"{list(ON_CORRUPT)}.")
        wanted = json.loads(json.dumps(fingerprint))
        tag = fingerprint_tag(wanted)
        if out_dir is None:
            return cls(None, {}, 0, tag)
        directory = Path(out_dir)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"out_dir {directory} exists and is not a directory.")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"out_dir {directory} cannot be created ({err.strerror}).") from err
        lock = _DirLock(directory, "a sweep")
        try:
            store = cls._open_locked(directory, wanted, tag, resume, on_corrupt)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    def _open_locked(cls, directory: Path, wanted: dict[str, Any], tag: str, resume: bool,
                     on_corrupt: str) -> CellStore:
        cfg_path, cells_path = directory / CONFIG_FILE, directory / CELLS_FILE
        _remove_stray_temps(directory)
        if resume and cfg_path.exists():
            found = _read_fingerprint(cfg_path)
            with contextlib.suppress(ValueError, TypeError):  # reported as a difference below
                found = upgrade_fingerprint(found)
            if found != wanted:
                diff = _differences(found, wanted)
                raise ValueError(
                    f"{directory} holds a sweep with different settings ({', '.join(diff)} "
                    "differ), so it cannot be resumed. Use another out_dir, or resume=False to "
                    "discard it and start over."
                )
            scan = _scan(cells_path, tag, expected_keys(SweepGrid.from_fingerprint(wanted)))
            if scan.problems:
                if on_corrupt == "raise":
                    raise CorruptStoreError(cells_path, scan.problems, len(scan.lines),
                                            _remedy(directory, True))
                report = _rewrite(scan)
                warnings.warn(f"Dropped damaged lines from the sweep log: {report} Their cells "
                              "will be recomputed.", RuntimeWarning, stacklevel=4)
            elif scan.torn:  # a line cut short by a crash: trim it so appends start clean
                with open(cells_path, "r+b") as fh:
                    fh.truncate(scan.size - len(scan.torn))
                    fh.flush()
                    os.fsync(fh.fileno())
            return cls(directory, scan.records, len(scan.records), tag)
        if resume and cells_path.exists() and (not cells_path.is_file()
                                               or cells_path.stat().st_size > 0):
            raise ValueError(f"{cells_path} exists but {cfg_path} does not, so its settings are "
                             "unknown; use another out_dir or resume=False to discard it.")
        # a fresh sweep: the old log goes (durably) before the new config names the directory,
        # so no reader can ever pair the new config with old cells
        if cells_path.is_dir() and not cells_path.is_symlink():
            raise ValueError(f"{cells_path} is a directory; remove it or use another out_dir.")
        cells_path.unlink(missing_ok=True)
        _fsync_dir(directory)
        with atomic_path(cfg_path) as tmp:
            tmp.write_text(json.dumps(wanted, indent=1), encoding="utf-8")
        _fsync_dir(directory)
        return cls(directory, {}, 0, tag)

    def close(self) -> None:
        """Release the directory's lock (idempotent; an in-memory store has none)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> CellStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
            records: the new records (NaN / inf values are stored as null); each is tagged with
                the fingerprint tag.
        """
        recs = [{**{k: _clean(v) for k, v in r.items()}, TAG_FIELD: self.tag} for r in records]
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

    def add_new(self, records: Iterable[dict[str, Any]]) -> int:
        """Append only the records whose key is not stored yet (each cell is written once).

        A distributed sweep's driver stores results through this, so a unit that was rerun
        after its worker died, or whose result arrives twice, never duplicates a cell.

        Args:
            records: the new records.

        Returns:
            How many were added.
        """
        seen: set[Key] = set()
        fresh = []
        for r in records:
            key = record_key(r)
            if key not in self.records and key not in seen:
                seen.add(key)
                fresh.append(r)
        self.add(fresh)
        return len(fresh)


def _differences(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Names of the settings that differ, looking inside the nested "config" dict."""
    out = []
    for k in sorted(set(found) | set(wanted), key=str):
        a, b = found.get(k), wanted.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and k == "config":
            out += [n for n in _differences(a, b)]
        elif a != b:
            out.append(str(k))
    return out


def _load_dir(directory: Path) -> tuple[dict[str, Any], SweepGrid, _Scan]:
    """Read a results directory without writing anything: fingerprint, grid and the log scan.

    The config is read again after the log; if it changed meanwhile (a sweep started over while
    we read), the read is retried, so the records always belong to the config returned.
    """
    cfg_path = directory / CONFIG_FILE
    for _ in range(5):
        if not cfg_path.is_file():
            raise ValueError(f"{directory} holds no sweep ({CONFIG_FILE} is missing).")
        before = cfg_path.read_bytes()
        try:
            fingerprint = upgrade_fingerprint(_read_fingerprint(cfg_path))
            grid = SweepGrid.from_fingerprint(fingerprint)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{cfg_path} is not a valid sweep config ({err}).") from err
        scan = _scan(directory / CELLS_FILE, fingerprint_tag(fingerprint), expected_keys(grid))
        if cfg_path.is_file() and cfg_path.read_bytes() == before:
            return fingerprint, grid, scan
    raise ValueError(f"The sweep in {directory} kept changing while it was read (another sweep "
                     "is writing it); try again when it has finished.")


def load_sweep(out_dir) -> SweepResult:
    """Reopen a sweep written to `out_dir` (e.g. for figures) without the model.

    Reading never modifies the directory, so it is safe while a sweep is still writing it.

    Args:
        out_dir (str | Path): the directory a `sweep(..., out_dir=...)` call wrote.

    Returns:
        The `SweepResult`; its `config` is the saved fingerprint (format 2, with the
        `SweepConfig` dict under "config"; 0.1 directories are upgraded on read).

    Raises:
        ValueError: if the directory is not a sweep, its fingerprint is malformed, or the sweep
            is unfinished (rerun `sweep(...)` with the same settings and out_dir to complete it).
        CorruptStoreError: if a line of the log is damaged (the message names the file and the
            line; `repair_store(out_dir)` keeps the valid cells).
    """
    directory = Path(out_dir)
    fingerprint, grid, scan = _load_dir(directory)
    if scan.problems:
        raise CorruptStoreError(scan.path, scan.problems, len(scan.lines),
                                _remedy(directory, False))
    missing = len(expected_keys(grid) - scan.records.keys())
    if missing > 0:
        raise ValueError(f"The sweep in {directory} is unfinished ({missing} records missing); "
                         "rerun sweep(...) with the same settings and out_dir to complete it.")
    store = CellStore(directory, scan.records, 0)
    table, baseline = build_tables(grid, store)
    return SweepResult(table, baseline, fingerprint, 0, len(store.records), {}, str(directory))


def repair_store(out_dir) -> RepairReport:
    """Rewrite a sweep's cells log without its damaged lines, keeping every valid cell.

    Drops lines that are not valid JSON or not valid records, records written under other
    settings or for cells outside the sweep, earlier copies of a record, and a final line cut
    short by a crash. The new log replaces the old one atomically (a crash leaves one or the
    other), under the directory's lock. A rerun of `sweep(...)` with the same settings and
    out_dir then computes only the dropped cells.

    Args:
        out_dir (str | Path): the sweep's results directory.

    Returns:
        A `RepairReport` (records kept, lines dropped with their problems); nothing is rewritten
        when nothing needs dropping.

    Raises:
        ValueError: if the directory holds no sweep, its config is invalid, or a sweep is
            running in it.
    """
    directory = Path(out_dir)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory, so it holds no sweep.")
    lock = _DirLock(directory, "repair_store")
    try:
        _remove_stray_temps(directory)
        _, _, scan = _load_dir(directory)
        return _rewrite(scan)
    finally:
        lock.release()
