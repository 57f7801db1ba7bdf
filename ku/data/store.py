"""Crash-safe HDF5 store for per-image, per-augmentation features (float16).

Hosu et al. 2019 §3.1 store the features of the 8 augmentations of every image "in a single HDF5
file", as float16 ("no significant decrease in performance ... when converting features from 32 to
16 bit"). The released code wrote one HDF5 dataset per image and per augmentation group (hundreds
of thousands of datasets; ``docs/released_code.md`` §5). This store keeps one array instead.

File layout (format ``ku.feature_store/1``)::

    /features  (N, A, *feature_shape)  float16   chunks (1, 1, *feature_shape), no compression
    /ids       (N,)  utf-8 strings               row -> image id
    /complete  (N,)  uint8                       1 = the row's features are written
    /failed    (N,)  uint8                       1 = the last extraction attempt failed
    attrs: format, feature_shape, dtype, n_augmentations, augmentations (names), ku_version and
           everything the caller passes (backbone, weights, taps, pooling, ...)

One chunk holds one augmentation of one image, so a training read of one augmentation of one row
touches exactly one chunk (a contiguous 33.9 kB block for narrow IRNv2 features).

Crash safety (a process killed with SIGKILL at any moment leaves a valid file holding only complete
rows): the file and all datasets are created up front with *early allocation* (every chunk's file
space and the chunk index exist before any feature is written), no timestamps and no compression,
into a temporary file that is renamed into place. Afterwards the writer only overwrites raw data in
place -- HDF5 metadata is never modified -- in this order: features of a batch of rows, flush,
``fsync``, then their ``complete`` flags, flush. A kill before the second flush leaves the flags
at 0, and the rows are redone on resume. The file is deliberately written with the earliest file-format
version (superblock v0), which has no "file is open for writing" flag that a killed writer would
leave set. Readers trust only rows whose flag is 1.

Determinism: no timestamps are stored (no ``created`` attribute, ``track_times=False``), attributes
are written in sorted order and unwritten space is left unfilled (sparse), so two runs that compute
the same features produce byte-identical files -- also after kill + resume, and after
extracting in shards and merging (:func:`merge_stores`). Power loss: the features of a row are
always on disk before its flag; ``fsync=True`` also makes the flags durable at once (else a
power cut may lose the last flags, and those rows are redone).

Write errors (disk full, I/O error, file-size limit): the store is opened for writing without
HDF5's raw-data chunk cache and sieve buffer, so a failed feature or flag write raises inside :meth:`FeatureStore.write_rows`
(HDF5 would otherwise report it only when the dataset is closed, where the error cannot be
raised); it and a failed ``fsync`` raise :class:`~ku.data.durable.DiskWriteError` naming the
store ("the disk is full" for ``ENOSPC``) *before* any flag of the batch is set. Those rows stay
incomplete, rows completed earlier are kept, and a re-run after freeing space completes the
store exactly as an uninterrupted run would have (the same bytes).

HDF5 files are not safe to read while another process writes them; read a store after its
extraction finished (or stopped).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from ku.data.durable import DiskWriteError, atomic_path, fsync_file, write_error

logger = logging.getLogger(__name__)

__all__ = [
    "DiskWriteError",
    "FORMAT",
    "FeatureStore",
    "FeatureStoreError",
    "IncompleteRowsError",
    "MissingIdsError",
    "check_rows",
    "check_same_layout",
    "merge_stores",
    "shard_path",
    "shard_bounds",
]

FORMAT = "ku.feature_store/1"
#: attributes owned by the store (derived from the arguments of :meth:`FeatureStore.create`)
RESERVED_ATTRS = ("format", "feature_shape", "dtype", "n_augmentations", "augmentations", "ku_version")
#: attributes that describe one shard and are dropped when shards are merged
SHARD_ATTRS = ("shard",)
_FLAG_DATASETS = ("complete", "failed")
WHAT = "feature store"


@contextlib.contextmanager
def _quiet_unraisable():
    """Silence "Exception ignored in ..." reports (h5py reports errors of a close that way)."""
    old = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = old


class FeatureStoreError(ValueError):
    """Bad feature store file or bad request (the message names the file)."""


class IncompleteRowsError(FeatureStoreError):
    """Rows were requested whose features were never written (or whose extraction failed)."""


class MissingIdsError(FeatureStoreError, KeyError):
    """Ids that are not in the store."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def _ku_version() -> str:
    import ku

    return ku.__version__


def _preview(items, k=5) -> str:
    items = list(items)
    s = ", ".join(repr(str(x)) for x in items[:k])
    return s + (f", ... ({len(items)} in all)" if len(items) > k else "")


# ---------------------------------------------------------------------------------------------
# attributes

def _attr_to_h5(key: str, value):
    """Python value -> something h5py stores deterministically."""
    if value is None:
        raise TypeError(f"attrs[{key!r}] is None; HDF5 attributes need a value (use a string)")
    if isinstance(value, (bool, np.bool_)):
        return np.uint8(bool(value))  # stored as 0/1 (portable across HDF5 readers)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else list(value)
        if all(isinstance(v, str) for v in arr):  # includes the empty list
            return np.array(arr, dtype=h5py.string_dtype("utf-8"))
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
            return np.array(arr, dtype=np.int64)
        if all(isinstance(v, (int, float, np.integer, np.floating)) for v in arr):
            return np.array(arr, dtype=np.float64)
        raise TypeError(f"attrs[{key!r}]: lists must hold only strings or only numbers, got {value!r}")
    raise TypeError(
        f"attrs[{key!r}]: unsupported type {type(value).__name__}; use str, int, float, bool or "
        "a list of str / numbers (serialise dicts to JSON yourself)"
    )


def _attr_from_h5(value):
    """h5py attribute value -> plain Python (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_attr_from_h5(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def normalize_attrs(attrs: Mapping | None) -> dict:
    """The Python values that reading the attributes back gives (for comparing attrs)."""
    return {str(k): _attr_from_h5(_attr_to_h5(str(k), v)) for k, v in (attrs or {}).items()}


def diff_attrs(a: Mapping, b: Mapping, ignore: Iterable[str] = ()) -> list[str]:
    """Keys whose normalised values differ (missing on one side counts), sorted."""
    a, b = normalize_attrs(a), normalize_attrs(b)
    keys = (set(a) | set(b)) - set(ignore)
    return sorted(k for k in keys if a.get(k, "<missing>") != b.get(k, "<missing>"))


def _describe_diff(a: Mapping, b: Mapping, keys: Sequence[str], name_a="file", name_b="requested") -> str:
    a, b = normalize_attrs(a), normalize_attrs(b)
    parts = []
    for k in keys[:6]:
        va, vb = repr(a.get(k, "<missing>")), repr(b.get(k, "<missing>"))
        parts.append(f"{k}: {name_a}={va[:80]} {name_b}={vb[:80]}")
    return "; ".join(parts) + (f"; ... ({len(keys)} keys differ)" if len(keys) > 6 else "")


def check_same_layout(store, ref, ignore: Iterable[str] = SHARD_ATTRS, context: str = "") -> None:
    """Raise :class:`FeatureStoreError` unless ``store`` holds the same kind of features as ``ref``.

    Both are :class:`FeatureStore` objects, or anything with ``path``, ``attrs``, ``dtype``,
    ``feature_shape`` and ``n_augmentations``. The same kind means: equal attributes except
    ``ignore`` (shards differ in ``shard``), equal dtype, feature shape and augmentation count.
    ``context`` starts the message (e.g. ``"merge_stores: "``).
    """
    bad = diff_attrs(ref.attrs, store.attrs, ignore=ignore)
    if bad:
        raise FeatureStoreError(f"{context}{store.path} does not match {ref.path}: "
                                + _describe_diff(store.attrs, ref.attrs, bad, Path(store.path).name,
                                                 Path(ref.path).name))
    if (store.dtype, store.feature_shape, store.n_augmentations) != (ref.dtype, ref.feature_shape,
                                                                     ref.n_augmentations):
        raise FeatureStoreError(f"{context}{store.path} has a different layout than {ref.path}: dtype "
                                f"{store.dtype} vs {ref.dtype}, features {store.feature_shape} vs "
                                f"{ref.feature_shape}, {store.n_augmentations} vs {ref.n_augmentations} "
                                "augmentations")


# ---------------------------------------------------------------------------------------------
# shards

def shard_bounds(n_rows: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``k`` of ``n``: contiguous blocks ``k*N//n .. (k+1)*N//n``,
    so that concatenating shards 0..n-1 gives the original order."""
    k, n = shard
    if not (isinstance(n, (int, np.integer)) and n >= 1 and 0 <= k < n):
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    return (k * n_rows) // n, ((k + 1) * n_rows) // n


def shard_path(path, shard: tuple[int, int]) -> Path:
    """``features.h5`` -> ``features.shard-01-of-04.h5`` (a suggested file name for a shard)."""
    path = Path(path)
    k, n = shard
    width = len(str(n))
    return path.with_name(f"{path.stem}.shard-{k:0{width}d}-of-{n:0{width}d}{path.suffix}")


# ---------------------------------------------------------------------------------------------

def _dcpl_early(fill_never: bool = True):
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    if fill_never:
        # do not write fill values: creation is O(1) even for TB-sized stores, the unwritten
        # space stays sparse (reads as 0) and identical between runs
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _runs(sorted_rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs of sorted unique rows: (row_start, row_stop, position_start)."""
    if sorted_rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [sorted_rows.size]])
    return [(int(sorted_rows[s]), int(sorted_rows[e - 1]) + 1, int(s)) for s, e in zip(starts, stops)]


def check_rows(rows, n_rows: int, path) -> np.ndarray:
    """``rows`` as a 1-D int64 array, or :class:`FeatureStoreError` naming ``path`` when they are
    not 1-D integers or fall outside ``[0, n_rows)``."""
    rows = np.asarray(rows)
    if rows.ndim == 0:
        rows = rows[None]
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise FeatureStoreError(f"{path}: rows must be a 1-D array of integers, got {rows.dtype} {rows.shape}")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise FeatureStoreError(
            f"{path}: row index out of range [0, {n_rows}): {rows[(rows < 0) | (rows >= n_rows)][:5].tolist()}")
    return rows


def _open_writable(path: Path) -> h5py.File:
    """Open ``path`` read-write without HDF5's raw-data chunk cache and sieve buffer: every write
    of features or flags then reaches the file system inside the call that makes it, where its
    error is raised. (Cached data would be written when the dataset object is closed, and h5py
    can only print an error there -- the write would fail silently.)"""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    mdc, nslots, _, w0 = fapl.get_cache()
    fapl.set_cache(mdc, nslots, 0, w0)
    fapl.set_sieve_buf_size(0)
    return h5py.File(h5py.h5f.open(os.fsencode(str(path)), h5py.h5f.ACC_RDWR, fapl=fapl))


def _open_hint(msg: str) -> str:
    """What to do about an HDF5 error raised while opening a store (from HDF5's message)."""
    if "truncated" in msg or "sblock->base_addr" in msg:
        return (" (the file is truncated or corrupt: an incomplete copy or download, or a disk that "
                "filled up while it was written; delete it and re-run the extraction to rebuild it, "
                "or copy it again)")
    if "signature" in msg:
        return " (not an HDF5 file)"
    if "unable to lock file" in msg or "lock file" in msg:
        return " (is another process writing it?)"
    return " (not readable as HDF5: corrupt? delete it and re-run the extraction to rebuild it)"


def _warn_if_no_room(path: Path, n_bytes: int) -> None:
    """Log a warning when the file system of ``path`` has less free space than the features
    will take (the store is allocated sparse, so creating it succeeds either way)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if n_bytes > free:
        logger.warning("%s: the features will take %.3g GB, but only %.3g GB are free on its disk; "
                       "writing will stop with an error when the disk is full", path, n_bytes / 1e9,
                       free / 1e9)


class _StoreHandle:
    """What :class:`FeatureStore` and :class:`~ku.data.shards.ShardedStore` share: a context
    manager that closes its files, pickles without open handles (``_TRANSIENT``: attribute ->
    value after unpickling; the lock is made anew), ``len`` = rows, :meth:`read_ids`."""

    _TRANSIENT: dict = {}

    def close(self):  # pragma: no cover - both stores define it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update({k: v() if callable(v) else v for k, v in self._TRANSIENT.items()})
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self):
        return self.n_rows

    #: where an unknown id is not, in :class:`MissingIdsError`'s message
    _ID_SCOPE = "the store"

    def index_of(self, ids) -> np.ndarray | int:
        """Row numbers of ``ids`` (a str gives an int). Unknown ids raise :class:`MissingIdsError`
        naming the file(s)."""
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids.tolist())}
        single = isinstance(ids, str)
        ids = [ids] if single else [str(i) for i in ids]
        idx = [self._index.get(i, -1) for i in ids]
        missing = [i for i, r in zip(ids, idx) if r < 0]
        if missing:
            raise MissingIdsError(f"{self.path}: {len(missing)} id(s) not in {self._ID_SCOPE}: "
                                  f"{_preview(missing)}")
        out = np.asarray(idx, dtype=np.int64)
        return int(out[0]) if single else out

    def read_ids(self, ids, augmentations="all", dtype=np.float32) -> np.ndarray:
        """:meth:`read` by image id."""
        return self.read(self.index_of(list(ids)), augmentations, dtype=dtype)


class FeatureStore(_StoreHandle):
    """An HDF5 feature store (see the module docstring for the layout and crash-safety design).

    Open an existing store with ``FeatureStore(path)`` (read-only) or ``FeatureStore(path, "r+")``
    (to write rows); create one with :meth:`FeatureStore.create`. Use as a context manager or call
    :meth:`close`. The object can be pickled (e.g. into data-loader worker processes): the HDF5
    handle is not pickled but reopened lazily, also after a ``fork``.

    Args:
        path: the ``.h5`` file.
        mode: ``"r"`` or ``"r+"``.
        fsync: ``r+`` only: also ``os.fsync`` after writing the flags (the features are always
            fsync-ed before their flags are set).
    """

    _TRANSIENT = {"_file": None, "_pid": None}

    def __init__(self, path, mode: str = "r", fsync: bool = False):
        if mode not in ("r", "r+"):
            raise ValueError(f"FeatureStore mode must be 'r' or 'r+', got {mode!r} (create with FeatureStore.create)")
        self.path = Path(path)
        self.mode = mode
        self.fsync = bool(fsync)
        self._file = None
        self._pid = None
        self._lock = threading.Lock()
        self._ids = None
        self._index = None
        self._complete = None
        if not self.path.exists():
            raise FileNotFoundError(f"feature store {self.path} does not exist")
        f = self._h5()
        try:
            if f.attrs.get("format") is None or _attr_from_h5(f.attrs["format"]) != FORMAT:
                raise FeatureStoreError(f"{self.path} is not a ku feature store (attrs['format'] != {FORMAT!r})")
            for name in ("features", "ids") + _FLAG_DATASETS:
                if name not in f:
                    raise FeatureStoreError(f"{self.path}: dataset {name!r} missing (not a complete ku feature store)")
            self.attrs = {k: _attr_from_h5(f.attrs[k]) for k in sorted(f.attrs.keys())}
            shape = f["features"].shape
        except Exception:
            self.close()
            raise
        self.n_rows = int(shape[0])
        self.n_augmentations = int(shape[1])
        self.feature_shape = tuple(int(s) for s in shape[2:])
        self.dtype = np.dtype(f["features"].dtype)
        self.augmentations = tuple(self.attrs.get("augmentations", [f"aug{i}" for i in range(self.n_augmentations)]))

    # -- handle management ------------------------------------------------------------------
    def _h5(self) -> h5py.File:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            # after fork() the inherited handle belongs to the parent: do not touch it
            try:
                self._file = _open_writable(self.path) if self.mode == "r+" else h5py.File(self.path, "r")
            except OSError as e:
                raise OSError(f"cannot open feature store {self.path} (mode {self.mode!r})"
                              f"{_open_hint(str(e))}: {e}") from e
            self._pid = pid
        return self._file

    def close(self):
        """Close the HDF5 file (reopened lazily on next use)."""
        if self._file is not None and self._pid == os.getpid():
            try:
                self._file.close()
            except Exception:  # pragma: no cover - closing a broken handle
                pass
        self._file = None
        self._pid = None

    def __repr__(self):
        return (f"FeatureStore({str(self.path)!r}, mode={self.mode!r}, rows={self.n_rows}, "
                f"augmentations={self.n_augmentations}, feature_shape={self.feature_shape})")

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path,
        ids: Sequence[str],
        n_augmentations: int,
        feature_shape: Sequence[int],
        attrs: Mapping | None = None,
        dtype="float16",
        augmentations: Sequence[str] | None = None,
        overwrite: bool = False,
        fsync: bool = False,
    ) -> "FeatureStore":
        """Create an empty store (all rows incomplete) and return it opened ``"r+"``.

        Args:
            path: file to create; an existing file raises ``FileExistsError`` unless ``overwrite``.
            ids: N unique image ids (strings), one per row.
            n_augmentations: A, augmentations stored per image (8 in Hosu et al. §3.1).
            feature_shape: shape of one feature, e.g. ``(16928,)`` or ``(5, 5, 16928)``.
            attrs: extra attributes (str, int, float, bool, lists of str or numbers). The reserved
                names ``format, feature_shape, dtype, n_augmentations, augmentations, ku_version``
                are set by the store. No timestamp is written (so files are reproducible byte
                for byte); pass one yourself if you want it.
            dtype: storage dtype, ``"float16"`` (paper) or ``"float32"``.
            augmentations: A names (default ``attrs["augmentations"]`` or ``aug0..``).
        """
        path = Path(path)
        ids = [str(i) if not isinstance(i, str) else i for i in ids]
        if not ids:
            raise FeatureStoreError(f"{path}: cannot create a feature store without ids")
        if len(set(ids)) != len(ids):
            seen, dup = set(), []
            for i in ids:
                (dup.append(i) if i in seen else seen.add(i))
            raise FeatureStoreError(f"{path}: duplicate ids: {_preview(dup)}")
        n_augmentations = int(n_augmentations)
        if n_augmentations < 1:
            raise FeatureStoreError(f"{path}: n_augmentations must be >= 1, got {n_augmentations}")
        feature_shape = tuple(int(s) for s in feature_shape)
        if not feature_shape or any(s < 1 for s in feature_shape):
            raise FeatureStoreError(f"{path}: feature_shape must be positive integers, got {feature_shape}")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise FeatureStoreError(f"{path}: dtype must be a float type, got {dtype}")
        attrs = dict(attrs or {})
        if augmentations is None:
            augmentations = attrs.pop("augmentations", None) or [f"aug{i}" for i in range(n_augmentations)]
        augmentations = [getattr(a, "name", a) for a in augmentations]
        if len(augmentations) != n_augmentations:
            raise FeatureStoreError(
                f"{path}: {len(augmentations)} augmentation names for n_augmentations={n_augmentations}")
        derived = {
            "format": FORMAT,
            "feature_shape": list(feature_shape),
            "dtype": dtype.name,
            "n_augmentations": n_augmentations,
            "augmentations": list(augmentations),
            "ku_version": _ku_version(),
        }
        for k in RESERVED_ATTRS:
            if k in attrs and k != "ku_version" and normalize_attrs({k: attrs[k]})[k] != normalize_attrs({k: derived[k]})[k]:
                raise FeatureStoreError(f"{path}: attrs[{k!r}]={attrs[k]!r} contradicts the store ({derived[k]!r})")
            attrs.pop(k, None)
        attrs.update(derived)
        h5attrs = {str(k): _attr_to_h5(str(k), v) for k, v in attrs.items()}

        if path.exists() and not overwrite:
            raise FileExistsError(f"feature store {path} exists (pass overwrite=True to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(ids)
        _warn_if_no_room(path, n * n_augmentations * int(np.prod(feature_shape)) * dtype.itemsize)
        with atomic_path(path, WHAT, hint="nothing was written; free space and re-run") as tmp:
            try:
                with h5py.File(tmp, "w", libver="earliest") as f:
                    f.create_dataset(
                        "features", shape=(n, n_augmentations) + feature_shape, dtype=dtype,
                        chunks=(1, 1) + feature_shape, dcpl=_dcpl_early(), track_times=False)
                    f.create_dataset(
                        "ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"),
                        dcpl=_dcpl_early(fill_never=False), track_times=False)
                    for name in _FLAG_DATASETS:
                        f.create_dataset(name, shape=(n,), dtype=np.uint8, fillvalue=0,
                                         dcpl=_dcpl_early(fill_never=False), track_times=False)
                    for k in sorted(h5attrs):
                        f.attrs[k] = h5attrs[k]
                    f.flush()
            except RuntimeError as e:  # some HDF5 write errors come as RuntimeError
                raise OSError(str(e)) from e
        logger.info("created feature store %s: %d rows x %d augmentations x %s %s",
                    path, n, n_augmentations, feature_shape, dtype.name)
        return cls(path, "r+", fsync=fsync)

    # -- metadata ---------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        """(N,) object array of the row ids (str)."""
        if self._ids is None:
            self._ids = self._h5()["ids"].asstr()[:]
        return self._ids

    def augmentation_index(self, name) -> int:
        """Index of the augmentation called ``name`` (an int is checked and returned); an unknown
        name or index raises :class:`FeatureStoreError` naming the file and the stored ones."""
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            if not 0 <= int(name) < self.n_augmentations:
                raise FeatureStoreError(f"{self.path}: augmentation index {int(name)} out of range "
                                        f"[0, {self.n_augmentations}) (stored: {list(self.augmentations)})")
            return int(name)
        if str(name) not in self.augmentations:
            raise FeatureStoreError(f"{self.path}: no augmentation {str(name)!r} in the store "
                                    f"(stored: {list(self.augmentations)})")
        return self.augmentations.index(str(name))

    def check_model_input(self, model, what: str = "model") -> None:
        """Raise :class:`FeatureStoreError` (naming the file, the model and both shapes) unless
        ``model``'s input takes this store's features, e.g. a head of :mod:`ku.models.heads`
        trained on it (a narrow ``(C,)`` store fed to a wide ``(5, 5, C)`` head, or features of
        another backbone with a different channel count)."""
        shape = getattr(model, "input_shape", None)
        if shape is None or isinstance(shape, list) or (isinstance(shape, tuple) and shape and isinstance(shape[0], tuple)):
            raise FeatureStoreError(f"{self.path}: {what} {getattr(model, 'name', model)!r} does not have "
                                    f"a single input (input_shape={shape!r})")
        want = tuple(shape[1:])
        got = self.feature_shape
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            raise FeatureStoreError(
                f"{self.path}: {what} {getattr(model, 'name', '?')!r} expects features of shape {want}, but "
                f"the store holds {got} (backbone={self.attrs.get('backbone', '?')!r}, "
                f"pooling={self.attrs.get('pooling', '?')!r}); use a store extracted for this head")

    def complete_mask(self) -> np.ndarray:
        """(N,) bool: rows whose features are written."""
        if self._complete is None or self.mode == "r+":
            with self._locked():
                self._complete = self._h5()["complete"][:].astype(bool)
        return self._complete.copy()

    def failed_mask(self) -> np.ndarray:
        """(N,) bool: rows whose last extraction attempt failed (they are also incomplete)."""
        with self._locked():
            return self._h5()["failed"][:].astype(bool)

    @property
    def n_complete(self) -> int:
        return int(self.complete_mask().sum())

    def check_complete(self, rows) -> None:
        """Raise :class:`IncompleteRowsError` (naming the file and ids) if any row is incomplete."""
        rows = self._check_rows(rows)
        mask = self.complete_mask()
        bad = rows[~mask[rows]]
        if bad.size:
            bad = np.unique(bad)
            ids = self.ids[bad]
            raise IncompleteRowsError(
                f"{self.path}: {bad.size} requested row(s) have no features (extraction incomplete "
                f"or failed): {_preview(ids)}; rerun the extraction or drop them")

    def _check_rows(self, rows) -> np.ndarray:
        return check_rows(rows, self.n_rows, self.path)

    def _locked(self):
        if self._lock is None:
            self._lock = threading.Lock()
        return self._lock

    # -- reading ----------------------------------------------------------------------------
    def read(self, rows, augmentations="all", dtype=np.float32, check_complete: bool = True) -> np.ndarray:
        """Read features of ``rows`` (any order, repeats allowed) in the caller's order.

        Args:
            rows: 1-D row numbers (see :meth:`index_of`).
            augmentations: ``"all"`` -> (B, A, *feature_shape); an int -> that augmentation of every
                row; a (B,) int array -> one augmentation per row; both -> (B, *feature_shape).
            dtype: output dtype (float32 by default; the file holds float16).
            check_complete: raise :class:`IncompleteRowsError` for rows never written.
        Reads are sorted (HDF5 selections must be increasing) and touch only the requested chunks.
        """
        rows = self._check_rows(rows)
        if check_complete:
            self.check_complete(rows)
        b = rows.size
        if isinstance(augmentations, str):
            if augmentations != "all":
                raise FeatureStoreError(f"{self.path}: augmentations must be 'all', an int or an int array, got {augmentations!r}")
            uniq, inv = np.unique(rows, return_inverse=True)
            buf = np.empty((uniq.size, self.n_augmentations) + self.feature_shape, dtype=self.dtype)
            with self._locked():
                dset = self._h5()["features"]
                for r0, r1, p0 in _runs(uniq):
                    dset.read_direct(buf, np.s_[r0:r1], np.s_[p0 : p0 + (r1 - r0)])
            return buf[inv].astype(dtype, copy=False) if b else buf.astype(dtype)
        augs = np.asarray(augmentations)
        if augs.ndim == 0:
            augs = np.full(b, int(augs), dtype=np.int64)
        if augs.shape != (b,) or (b and augs.dtype.kind not in "iu"):
            raise FeatureStoreError(
                f"{self.path}: augmentations must be 'all', an int or an int array of shape ({b},), got shape {augs.shape}")
        augs = augs.astype(np.int64)
        if b and (augs.min() < 0 or augs.max() >= self.n_augmentations):
            raise FeatureStoreError(f"{self.path}: augmentation index out of range [0, {self.n_augmentations})")
        keys = rows * self.n_augmentations + augs
        uniq, inv = np.unique(keys, return_inverse=True)
        urows, uaugs = np.divmod(uniq, self.n_augmentations)
        buf = np.empty((uniq.size,) + self.feature_shape, dtype=self.dtype)
        with self._locked():
            dset = self._h5()["features"]
            for a in np.unique(uaugs):
                pos = np.flatnonzero(uaugs == a)  # rows sorted and unique within one augmentation
                sel_rows = urows[pos]
                for r0, r1, p0 in _runs(sel_rows):
                    k = r1 - r0
                    if k == 1:
                        dset.read_direct(buf, np.s_[r0, a], np.s_[pos[p0]])
                    else:
                        buf[pos[p0 : p0 + k]] = dset[r0:r1, a]
        return buf[inv].astype(dtype, copy=False) if b else buf.astype(dtype)

    # -- writing ----------------------------------------------------------------------------
    def _require_writable(self):
        if self.mode != "r+":
            raise FeatureStoreError(f"{self.path} is open read-only; open with FeatureStore(path, 'r+')")

    def _flush(self, durable: bool = False):
        """HDF5 flush, then ``fsync`` when ``durable`` or the store was opened with ``fsync``."""
        self._h5().flush()
        if durable or self.fsync:
            fsync_file(self.path, WHAT)

    @contextlib.contextmanager
    def _writing(self, n_rows: int, action: str):
        """Any I/O error inside -> :class:`~ku.data.durable.DiskWriteError` naming the store; the
        HDF5 handle is dropped (reopened on next use), so no half-written state is reused."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            self._complete = None
            self._abandon_handle()
            raise write_error(self.path, e, WHAT, hint=(
                f"{action} of {n_rows} row(s) failed, they stay incomplete (rows completed before are "
                "kept); free space / fix the disk and re-run the extraction to continue")) from e

    def _abandon_handle(self):
        """Close the HDF5 file after a failed write, without letting h5py print the errors of
        the flush it attempts while closing (the error has been raised already)."""
        f, self._file, self._pid = self._file, None, None
        if f is None:
            return
        try:
            with _quiet_unraisable():
                f.close()
        except Exception:  # noqa: BLE001 - the handle is broken; the caller gets the first error
            pass

    def _write_feature_runs(self, runs, features):
        dset = self._h5()["features"]
        for r0, r1, p0 in runs:
            dset[r0:r1] = features[p0 : p0 + (r1 - r0)]

    def _set_flags(self, runs, name, value):
        dset = self._h5()[name]
        for r0, r1, _ in runs:
            dset[r0:r1] = np.full(r1 - r0, value, dtype=np.uint8)

    def write_rows(self, start_or_rows, features) -> None:
        """Write complete rows: features of all augmentations of each row, then mark them complete.

        Args:
            start_or_rows: first row (int; rows ``start .. start+len(features)-1``) or a 1-D array
                of distinct row numbers in any order.
            features: (k, A, *feature_shape), any float dtype (cast to the store dtype).
        Order of operations (crash safety): features -> flush -> fsync -> ``complete`` = 1 and
        ``failed`` = 0 -> flush.

        Raises:
            DiskWriteError: a write, flush or fsync failed (the message names the store and says
                "the disk is full" for ``ENOSPC``); none of these rows is marked complete.
        """
        self._require_writable()
        features = np.asarray(features)
        expected = (self.n_augmentations,) + self.feature_shape
        if features.ndim < 1 or features.shape[1:] != expected:
            raise FeatureStoreError(
                f"{self.path}: features of shape {features.shape} do not match the store: expected "
                f"(k, {', '.join(map(str, expected))}) = (rows, augmentations, *feature_shape)")
        k = features.shape[0]
        if isinstance(start_or_rows, (int, np.integer)):
            rows = np.arange(int(start_or_rows), int(start_or_rows) + k, dtype=np.int64)
        else:
            rows = self._check_rows(start_or_rows)
            if rows.size != k:
                raise FeatureStoreError(f"{self.path}: {rows.size} rows for {k} feature rows")
        rows = self._check_rows(rows)
        if np.unique(rows).size != rows.size:
            raise FeatureStoreError(f"{self.path}: write_rows got duplicate rows")
        if k == 0:
            return
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        if not np.array_equal(order, np.arange(k)):
            features = features[order]
        data = np.ascontiguousarray(features, dtype=self.dtype)
        n_inf = int(np.count_nonzero(~np.isfinite(data)))
        if n_inf:
            logger.warning("%s: %d non-finite feature values after casting to %s (overflow?)",
                           self.path, n_inf, self.dtype.name)
        runs = _runs(rows)
        with self._locked(), self._writing(k, "writing the features"):
            self._write_feature_runs(runs, data)
            self._flush(durable=True)  # the features are on disk before any flag says so
            self._set_flags(runs, "complete", 1)
            self._set_flags(runs, "failed", 0)
            self._flush()
        if self._complete is not None:
            self._complete[rows] = True

    def mark_failed(self, rows) -> None:
        """Flag rows whose extraction failed (they stay incomplete)."""
        self._require_writable()
        rows = np.unique(self._check_rows(rows))
        with self._locked(), self._writing(rows.size, "flagging failed rows"):
            self._set_flags(_runs(rows), "failed", 1)
            self._flush()


# ---------------------------------------------------------------------------------------------

def merge_stores(paths: Sequence, out_path, overwrite: bool = False, block_bytes: int = 64 << 20) -> Path:
    """Join shard stores into one: ids concatenated in the order of ``paths``.

    All shards must agree on feature shape, dtype, augmentations and every attribute except
    ``shard``. Shards written by :func:`ku.extraction.extract_features` carry ``shard = [k, n]``;
    they must then be exactly shards ``0..n-1`` in order. Complete rows are copied (in blocks of
    about ``block_bytes``), failure flags too; incomplete rows stay incomplete. Merging shards of
    a run gives the same file, byte for byte, as the unsharded run.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("merge_stores: no input stores")
    stores = [FeatureStore(p) for p in paths]
    try:
        ref = stores[0]
        for s in stores[1:]:
            check_same_layout(s, ref, context="merge_stores: ")
        shards = [s.attrs.get("shard") for s in stores]
        if any(x is not None for x in shards):
            n = len(stores)
            expected = [[k, n] for k in range(n)]
            if shards != expected:
                raise FeatureStoreError(
                    f"merge_stores: expected shards {expected} in this order, got {shards} "
                    f"from {[p.name for p in paths]}")
        ids = [i for s in stores for i in s.ids]
        attrs = {k: v for k, v in ref.attrs.items() if k not in SHARD_ATTRS}
        out = FeatureStore.create(out_path, ids, ref.n_augmentations, ref.feature_shape, attrs=attrs,
                                  dtype=ref.dtype, augmentations=ref.augmentations, overwrite=overwrite)
        row_bytes = ref.n_augmentations * int(np.prod(ref.feature_shape)) * ref.dtype.itemsize
        block = max(1, block_bytes // max(1, row_bytes))
        with out:
            offset = 0
            for s in stores:
                done = np.flatnonzero(s.complete_mask())
                for i in range(0, done.size, block):
                    rows = done[i : i + block]
                    out.write_rows(rows + offset, s.read(rows, "all", dtype=s.dtype))
                failed = np.flatnonzero(s.failed_mask())
                if failed.size:
                    out.mark_failed(failed + offset)
                offset += s.n_rows
        logger.info("merged %d stores (%d rows) into %s", len(stores), len(ids), out_path)
        return Path(out_path)
    finally:
        for s in stores:
            s.close()
