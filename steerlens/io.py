"""Crash-safe writes: single files by rename, multi-file artefacts by a commit record.

A single file (`atomic_path`, `atomic_write_text`, `atomic_write_bytes`) is written to a temp file
beside it, fsynced, renamed over the target and the directory fsynced, so a crash leaves the old
file or the new one, never a truncated one. A multi-file artefact (a steering vector's tensors and
metadata, a vector set, an SAE or a training checkpoint) is written by `commit_entries` with a
commit record, a small redo log: holding an exclusive lock on the directory, it first writes every
new entry (a file or a whole directory) in full under a fresh hidden temp name beside its final
name and fsyncs it; then it writes `.steerlens-commit.json`, which maps each final name to its temp
name, atomically; that single rename is the commit point. Only then are the temps renamed over the
final names (a directory being replaced is first renamed aside), the directory fsynced and the
record deleted. A crash before the commit point leaves the old entries untouched; a crash after it
leaves a record whose temps are all complete. Readers (`resolve_entry`) take an entry from its
temp while the record names one that still exists, and from its final name otherwise, so they see
the old version or the new one, never a mix, and they never modify the directory; the next save
(or `recover`) finishes the renames and removes every temp a killed save left behind. Files and
directories get the usual modes (0666 / 0777 less the umask). `read_bounded` reads metadata files
with a size cap, refusing anything that is not a regular file (a FIFO, `/dev/zero`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

COMMIT_RECORD = ".steerlens-commit.json"
MAX_RECORD_BYTES = 1 << 20
# temp and set-aside names of `commit_entries`: ".NAME.commit-<12 hex>.tmp" / ".old"
_COMMIT_TEMP = re.compile(r"^\..+\.commit-[0-9a-f]{12}\.(tmp|old)$")
# `atomic_path` temps of the record itself (only ever written under the directory's lock)
_RECORD_TEMP = re.compile(rf"^\.{re.escape(COMMIT_RECORD)}\.\d+-[0-9a-f]{{8}}\.tmp$")


# ------------------------------------------------------------------------------------ fsync


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that renames and creations in it are durable (best effort).

    Args:
        path: the directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some platforms and filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_tree(path: str | Path) -> None:
    """fsync a file, or every file and directory under a directory (deepest first).

    Args:
        path: the file or directory.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        if path.is_file():
            _fsync_file(path)
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                _fsync_file(p)
        fsync_dir(root)


# -------------------------------------------------------------------------- permissions


def current_umask() -> int:
    """The process's umask (read from /proc where possible, so no thread sees it changed).

    Returns:
        The umask, e.g. 0o022.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give a file, or everything under a directory, the modes a plain create would have.

    Files become 0666 and directories 0777, less the umask. For writers that create files with
    fixed modes (safetensors' `save_file` makes them 0600 whatever the umask).

    Args:
        path: the file or directory.
    """
    mask = current_umask()
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    for root, dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)
        for name in dirs:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o777 & ~mask)
    os.chmod(path, 0o777 & ~mask)


# ------------------------------------------------------------------------- single files


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


STALE_TEMP_SECONDS = 60.0


def _remove_stale_temps(path: Path) -> None:
    """Remove `atomic_path` temps of `path` left by processes that no longer run.

    A temp counts as stale when the pid in its name is not running here and it was last written
    over `STALE_TEMP_SECONDS` ago (the age guards a writer on another host sharing the directory).
    """
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[0-9a-f]{{8}}\.tmp$")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        m = pattern.match(entry.name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                    os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on clean exit it replaces `path` atomically.

    The temp file (created empty, mode 0666 less the umask) is fsynced before the rename and the
    directory after it; it is removed if the block raises, so `path` is never left half-written.
    Temps of the same target left by killed processes (over a minute old) are removed first.

    Args:
        path: the file to write (its directory is created if missing).

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8).

    Args:
        path: the file to write.
        text: the content.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically.

    Args:
        path: the file to write.
        data: the content.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_bounded(path: str | Path, limit: int, what: str = "file",
                 error: type[Exception] = ValueError) -> bytes:
    """Read a regular file of at most `limit` bytes, refusing anything else before reading it.

    FIFOs, devices (`/dev/zero`) and directories are refused without blocking, and a file over
    the limit is refused from its size (and again if it grows while being read).

    Args:
        path: the file.
        limit: the largest size accepted, in bytes.
        what: what the file is, for the message.
        error: the exception class raised for a refused file.

    Returns:
        The file's bytes.

    Raises:
        FileNotFoundError: if the file does not exist.
        error: naming the file, if it is not a regular file or is larger than `limit`.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError as err:
        raise error(f"{path} is a directory, not a {what}.") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file (a device, FIFO or socket); refusing to "
                        f"read it as a {what}.")
        if st.st_size > limit:
            raise error(f"{path} is {st.st_size:,} bytes, over the {limit:,}-byte limit for a "
                        f"{what}; is it the right file?")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise error(f"{path} is over the {limit:,}-byte limit for a {what}.")
        return b"".join(chunks)
    finally:
        os.close(fd)


# -------------------------------------------------------------------- multi-file artefacts


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the directory itself (best effort where flock is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # e.g. a network filesystem without flock
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _valid_name(name: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name)


def _read_record(directory: Path) -> dict | None:
    """The pending commit record of `directory`, or None (absent, unreadable or malformed)."""
    try:
        rec = json.loads(read_bounded(directory / COMMIT_RECORD, MAX_RECORD_BYTES, "commit record"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    replace, remove = rec.get("replace"), rec.get("remove", [])
    if not isinstance(replace, dict) or not isinstance(remove, list):
        return None
    for name, tmp in replace.items():
        if not (_valid_name(name) and _valid_name(tmp) and _COMMIT_TEMP.match(tmp)):
            return None
    if not all(_valid_name(n) for n in remove):
        return None
    return {"replace": replace, "remove": remove}


def resolve_entry(directory: str | Path, name: str) -> Path:
    """Where a reader finds entry `name` of `directory`, given a pending commit (read-only).

    Args:
        directory: the artefact's directory.
        name: the entry's final name (a file or a directory).

    Returns:
        The complete new entry's temp path when a committed save was interrupted before renaming
        it, else `directory / name`.
    """
    directory = Path(directory)
    rec = _read_record(directory)
    if rec is not None and name in rec["replace"]:
        tmp = directory / rec["replace"][name]
        if os.path.lexists(tmp):
            return tmp
    return directory / name


def resolve_path(path: str | Path) -> Path:
    """`resolve_entry(path.parent, path.name)`: a path, given its parent's pending commit.

    Args:
        path: a file or directory that may be an entry of a multi-file artefact.

    Returns:
        The path a reader should open.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        return path
    return resolve_entry(path.parent, path.name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _aside(directory: Path, name: str) -> Path:
    return directory / f".{name}.commit-{secrets.token_hex(6)}.old"


def _roll_forward(directory: Path, rec: dict) -> None:
    """Finish a committed save: rename its temps into place, then drop the record (idempotent)."""
    for name in rec["remove"]:
        p = directory / name
        if os.path.lexists(p) and name not in rec["replace"]:
            os.rename(p, _aside(directory, name))
    for name, tmp in rec["replace"].items():
        src, dst = directory / tmp, directory / name
        if not os.path.lexists(src):
            continue  # moved already
        if os.path.lexists(dst) and ((dst.is_dir() and not dst.is_symlink()) or src.is_dir()):
            os.rename(dst, _aside(directory, name))  # a directory cannot be replaced in place
        os.replace(src, dst)
    fsync_dir(directory)
    (directory / COMMIT_RECORD).unlink(missing_ok=True)
    fsync_dir(directory)
    _clean(directory, None)


def _clean(directory: Path, stray: Callable[[str], bool] | None) -> None:
    """Remove commit temps and set-aside entries (and names `stray` accepts); lock held."""
    for entry in list(os.scandir(directory)):
        if (_COMMIT_TEMP.match(entry.name) or _RECORD_TEMP.match(entry.name)
                or (stray is not None and stray(entry.name))):
            _remove(Path(entry.path))


def _recover_locked(directory: Path, stray: Callable[[str], bool] | None) -> None:
    rec = _read_record(directory)
    if rec is not None:
        _roll_forward(directory, rec)
    else:
        (directory / COMMIT_RECORD).unlink(missing_ok=True)  # malformed: nothing it names is safe
    _clean(directory, stray)


def recover(directory: str | Path, stray: Callable[[str], bool] | None = None) -> None:
    """Finish an interrupted commit in `directory` and remove what killed saves left behind.

    `commit_entries` does this itself before every save; call it to tidy a directory without
    saving.

    Args:
        directory: the artefact's directory (nothing happens if it does not exist).
        stray: also remove entries whose names it accepts (e.g. an older version's temp files).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    with _locked(directory):
        _recover_locked(directory, stray)


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise ValueError(f"Cannot save into {directory}: it exists and is not a directory.") from err
    except NotADirectoryError as err:
        raise ValueError(f"Cannot save into {directory}: a parent of it is a file, not a "
                         "directory.") from err
    if not directory.is_dir():
        raise ValueError(f"Cannot save into {directory}: it exists and is not a directory.")


def commit_entries(
    directory: str | Path,
    writers: Mapping[str, Callable[[Path], object]],
    *,
    remove: Iterable[str] = (),
    stray: Callable[[str], bool] | None = None,
) -> Path:
    """Replace several entries of `directory` together: readers see all old or all new.

    Each writer is called with a fresh temp path (which does not exist yet) and must create a file
    or a directory there. When all have written, the commit record is written atomically, which is
    the commit point; the temps are then renamed into place (see the module docstring).

    Args:
        directory: the artefact's directory (created if missing).
        writers: final entry name -> function writing the new entry at the path it is given.
        remove: entry names to delete in the same commit (e.g. files of an older layout).
        stray: before saving, also remove entries whose names it accepts (older temp files).

    Returns:
        The directory, as a Path.

    Raises:
        ValueError: if `directory` is a file or lies under one, or an entry name is not a plain
            file name.
    """
    directory = Path(directory)
    names = [*writers, *remove]
    bad = [n for n in names if not _valid_name(n) or n == COMMIT_RECORD]
    if bad:
        raise ValueError(f"Cannot save entries {bad}: entry names must be plain file names.")
    _make_dir(directory)
    with _locked(directory):
        _recover_locked(directory, stray)
        temps: dict[str, str] = {}
        try:
            for name, write in writers.items():
                tmp = directory / f".{name}.commit-{secrets.token_hex(6)}.tmp"
                temps[name] = tmp.name
                write(tmp)
                if not os.path.lexists(tmp):
                    raise RuntimeError(f"The writer of {directory / name} wrote nothing.")
                fsync_tree(tmp)
            fsync_dir(directory)
            record = {"format": 1, "replace": temps,
                      "remove": [n for n in dict.fromkeys(remove) if n not in temps]}
            atomic_write_text(directory / COMMIT_RECORD, json.dumps(record))  # the commit point
        except BaseException:
            rec = _read_record(directory)
            if rec is not None and rec["replace"] == temps:
                _roll_forward(directory, rec)  # committed after all: finish it
            else:
                for tmp in temps.values():
                    _remove(directory / tmp)
            raise
        _roll_forward(directory, {"replace": temps, "remove": record["remove"]})
    return directory
