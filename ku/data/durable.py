"""Durable writes: temporary name, flush, fsync, rename -- and every I/O error surfaced at once.

A write that matters (a feature store, a checkpoint, a schedule state, a training history) must
either land completely or not at all, and a failure (a full disk, an I/O error, a file-size
limit) must stop the caller with a message naming the file, never be swallowed. Two patterns:

* **Replace a whole file**: :func:`atomic_write` (bytes / text), :func:`atomic_open` (a file
  object) or :func:`atomic_path` (a temporary path for writers that take a file name, e.g. h5py
  or Keras). The content goes to ``.<name>.tmp-<pid>`` in the same folder, is flushed and
  ``fsync``-ed, renamed over the target (atomic on POSIX and Windows) and the folder is
  ``fsync``-ed. On any error the temporary file is removed and the old target, if any, is left
  untouched; the error is re-raised as :class:`DiskWriteError`.
* **Write in place, then mark complete** (the HDF5 feature store, :mod:`ku.data.store`): write,
  flush, :func:`fsync_file`, and only then set the "complete" marker; wrap the I/O in
  :func:`writing` so that an ``OSError`` becomes a :class:`DiskWriteError` naming the file.

Why ``fsync`` before the marker: a file system may accept a ``write`` into its cache and report
the failure only at ``fsync`` or ``close`` (NFS, quotas, thin provisioning); a marker written
before that could claim data that never reached the disk.

:class:`DiskWriteError` says "the disk is full" for ``ENOSPC`` (and names the quota for
``EDQUOT``); its ``errno`` is the system's error number, also when the error came from HDF5,
whose messages carry it as text (``errno = 28``).
"""
from __future__ import annotations

import contextlib
import errno as _errno
import io
import os
import re
from pathlib import Path
from typing import Iterator

__all__ = [
    "DiskWriteError",
    "atomic_open",
    "atomic_path",
    "atomic_write",
    "error_number",
    "fsync_dir",
    "fsync_file",
    "temp_path",
    "write_error",
    "write_history_csv",
    "writing",
]

_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")
_REASONS = {
    _errno.ENOSPC: "the disk is full (no space left on device)",
    _errno.EDQUOT: "the disk quota is exceeded",
    _errno.EFBIG: "the file is larger than the file system or the process's file-size limit allows",
    _errno.EIO: "input/output error (a failing disk or a lost network file system?)",
    _errno.EROFS: "the file system is read-only",
}


class DiskWriteError(OSError):
    """A write that matters failed. ``str()`` names the file and the reason ("the disk is full"
    for ``ENOSPC``); ``errno`` is the system's error number (None if unknown), ``filename`` the
    file, ``what`` what it is (e.g. ``"feature store"``)."""

    def __init__(self, path, reason: str, errno: int | None = None, what: str = "file", hint: str = ""):
        super().__init__(errno, reason)
        self.filename = str(path)
        self.what = what
        self.hint = hint
        self.message = f"cannot write {what} {self.filename}: {reason}" + (f"; {hint}" if hint else "")

    def __str__(self):
        return self.message

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.filename, self.strerror, self.errno, self.what, self.hint))

    @property
    def disk_full(self) -> bool:
        """True for ``ENOSPC`` and ``EDQUOT``."""
        return self.errno in (_errno.ENOSPC, _errno.EDQUOT)


def error_number(err: BaseException) -> int | None:
    """The system error number of ``err``: its ``errno``, else one written in its message (HDF5
    reports ``errno = 28``), else None."""
    n = getattr(err, "errno", None)
    if isinstance(n, int) and n > 0:
        return n
    m = _ERRNO_IN_TEXT.search(str(err))
    return int(m.group(1)) if m else None


def write_error(path, err: BaseException, what: str = "file", hint: str = "") -> DiskWriteError:
    """``err`` (an ``OSError``, or an h5py / HDF5 error) as a :class:`DiskWriteError` naming
    ``path``; a :class:`DiskWriteError` is returned as it is."""
    if isinstance(err, DiskWriteError):
        return err
    n = error_number(err)
    if n in _REASONS:
        reason = _REASONS[n]
    elif n is not None:
        reason = f"{os.strerror(n)} (errno {n})"
    else:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = f"{type(err).__name__}: {text[:300]}"
    return DiskWriteError(path, reason, n, what, hint)


@contextlib.contextmanager
def writing(path, what: str = "file", hint: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into a :class:`DiskWriteError` naming
    ``path`` (other exceptions pass unchanged)."""
    try:
        yield
    except DiskWriteError:
        raise
    except OSError as e:
        raise write_error(path, e, what, hint) from e


def temp_path(path) -> Path:
    """``dir/name`` -> ``dir/.name.tmp-<pid>`` (same folder, so the rename is atomic). Names that
    end in ``.weights.h5`` keep that ending (Keras checks it)."""
    path = Path(path)
    name = path.name
    for keep in (".weights.h5", ".keras"):
        if name.endswith(keep) and len(name) > len(keep):
            return path.with_name(f".{name[:-len(keep)]}.tmp-{os.getpid()}{keep}")
    return path.with_name(f".{name}.tmp-{os.getpid()}")


def fsync_file(path, what: str = "file", hint: str = "") -> None:
    """``fsync`` a file by name (reports write errors the file system deferred); an error becomes
    a :class:`DiskWriteError`."""
    with writing(path, what, hint):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path) -> None:
    """``fsync`` a folder (makes a rename in it durable). Skipped where folders cannot be opened
    (Windows) or the file system does not support it."""
    if os.name == "nt":  # pragma: no cover - no directory fsync on Windows
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (_errno.EINVAL, _errno.ENOTSUP, _errno.EBADF):
            raise write_error(path, e, "folder") from e
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    except OSError:  # pragma: no cover - leave it; the error being raised matters more
        pass


def _commit(tmp: Path, path: Path, what: str, hint: str, fsync: bool) -> None:
    with writing(path, what, hint):  # errors name the target, not the temporary file
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path, what: str = "file", hint: str = "", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an exception the file
    written there is fsync-ed and renamed to ``path``. On any exception it is removed (``path``
    keeps its old content) and an ``OSError`` is re-raised as :class:`DiskWriteError`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with writing(path, what, hint):
            yield tmp
        _commit(tmp, path, what, hint, fsync)
    finally:
        if tmp.exists():
            _discard(tmp)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None,
                what: str = "file", hint: str = "", fsync: bool = True) -> Iterator[io.IOBase]:
    """:func:`atomic_path` with the temporary file opened (``mode`` ``"w"`` or ``"wb"``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, what, hint, fsync) as tmp:
        kw = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        f = open(tmp, mode, **kw)
        try:
            yield f
            f.flush()  # buffered data reaches the file system here; its errors surface here
        finally:
            f.close()


def atomic_write(path, data: bytes | str, what: str = "file", hint: str = "", fsync: bool = True,
                 encoding: str = "utf-8") -> Path:
    """Write ``data`` (``str`` is encoded with ``encoding``) to ``path`` atomically and durably
    (see the module docstring). Returns ``path``. Raises :class:`DiskWriteError` naming ``path``."""
    path = Path(path)
    raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path, what, hint, fsync) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(raw)
            while view:
                n = os.write(fd, view)
                if n <= 0:  # pragma: no cover - a write that makes no progress
                    raise OSError(_errno.EIO, "write made no progress")
                view = view[n:]
        finally:
            os.close(fd)
    return path


def write_history_csv(history, path) -> Path:
    """A Keras ``History`` (or its ``.history`` dict) as CSV, one row per epoch with an ``epoch``
    column from 0, written with :func:`atomic_write`. Returns ``path``."""
    import pandas as pd

    logs = getattr(history, "history", history)
    table = pd.DataFrame(logs).rename_axis("epoch").reset_index()
    return atomic_write(path, table.to_csv(index=False), what="history")
