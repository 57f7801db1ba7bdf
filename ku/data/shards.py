"""Sharded feature stores read as if they were one store.

AVA wide MLSP features with 8 augmentations are ~1.7 TB (``docs/released_code.md`` §5);
extraction therefore runs in shards (``scripts/extract_mlsp.py --shard=k/n`` writes ``<out>.shard-KK-of-NN.h5``, see
:func:`ku.data.store.shard_path`), one file per shard. :class:`ShardedStore` reads a list or a
glob of such files as one store: rows are numbered in shard order (shard ``k``'s rows follow
shard ``k-1``'s, i.e. exactly the row order of :func:`ku.data.store.merge_stores`), an id maps to
``(shard, row)`` and a read of any rows is split per shard and gathered back in the caller's
order. :class:`~ku.data.generators.FeatureSequence`, :func:`~ku.data.generators.feature_dataset`
and :func:`~ku.data.generators.iter_all_augmentations` accept such a list or glob wherever they
take a store path (through :func:`open_store`), and give the same batches as the merged store.

Interleaving: a training epoch is a random permutation of *all* ids (Hosu et al. 2019 §3.1: one
random augmentation per image per epoch), so every batch mixes items of every shard; each worker
of a distributed run takes its slice of every global batch (``FeatureSequence(part=...)``,
``feature_dataset(input_context=...)``), so no shard is "owned" by a worker and any number of
shards works with any number of workers.

Memory is flat in the size of the shards and bounded in their number: only the rows of the
current batch are read; at most ``max_open_files`` shard files are open at a time (least recently
used ones are closed; each open file costs up to ~1 MB, HDF5's chunk cache, ~0.35 MB measured
with 18 kB chunks). What grows with the number of *rows* is the id index (the ids and one int per
id) -- metadata, not features. With more shards than ``max_open_files`` a random batch reopens
some files (the open ones are read first); raise it when memory allows.
"""
from __future__ import annotations

import collections
import glob
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from ku.data.store import (
    SHARD_ATTRS,
    FeatureStore,
    FeatureStoreError,
    IncompleteRowsError,
    MissingIdsError,
    check_rows,
    check_same_layout,
    _StoreHandle,
    _preview,
)

logger = logging.getLogger(__name__)

__all__ = ["ShardedStore", "open_store", "resolve_store_paths", "is_glob"]

_GLOB_CHARS = set("*?[")


def is_glob(path) -> bool:
    """True when ``path`` (a str) contains glob characters (``*``, ``?``, ``[``)."""
    return isinstance(path, str) and bool(_GLOB_CHARS & set(path))


def resolve_store_paths(spec):
    """A store specification -> a single path (str) or a list of shard paths (str).

    ``spec``: a path (str / ``Path``) of one store; a glob (``"feats.shard-*.h5"``, expanded and
    sorted); or a list / tuple of paths and globs (expanded in place, order kept). A glob or list
    that names exactly one file resolves to that one path. Raises ``FileNotFoundError`` naming the
    pattern when a glob matches nothing, ``ValueError`` for an empty list or a file named twice.
    """
    if isinstance(spec, (str, Path)):
        items, single = [spec], not is_glob(str(spec))
    elif isinstance(spec, (list, tuple)):
        items, single = list(spec), False
        if not items:
            raise ValueError("store paths: empty list of shard files")
    else:
        raise TypeError(f"store path must be a path, a glob or a list of paths, got {type(spec).__name__}")
    if single:
        return str(spec)
    paths = []
    for item in items:
        item = str(item)
        if is_glob(item):
            found = sorted(glob.glob(item))
            if not found:
                raise FileNotFoundError(f"no feature store matches {item!r}")
            paths += found
        else:
            paths.append(item)
    dup = [p for p, c in collections.Counter(str(Path(p).resolve()) for p in paths).items() if c > 1]
    if dup:
        raise ValueError(f"store paths: file(s) named more than once: {_preview(dup)}")
    return paths[0] if len(paths) == 1 else paths


def open_store(spec, max_open_files: int = 16):
    """Open a store specification read-only: one file -> :class:`~ku.data.store.FeatureStore`;
    a list / glob of shards -> :class:`ShardedStore` (same reading interface)."""
    paths = resolve_store_paths(spec)
    if isinstance(paths, str):
        return FeatureStore(paths)
    return ShardedStore(paths, max_open_files=max_open_files)


class ShardedStore(_StoreHandle):
    """Several feature-store files (shards) read as one store, read-only.

    Args:
        paths: a list of shard files or globs, or one glob (see :func:`resolve_store_paths`).
            Shards written by :func:`ku.extraction.extract_features` with ``shard=(k, n)`` carry
            ``attrs["shard"] = [k, n]``; they are put in the order ``k = 0..n-1`` and must be
            complete (every ``k`` present once, the same ``n``), so the rows are numbered exactly
            as in the merged store. Files without a ``shard`` attribute are taken in the order
            given.
        max_open_files: shard files kept open at a time (least recently used are closed).

    All shards must agree on feature shape, dtype, augmentations and every attribute except
    ``shard`` (as for :func:`~ku.data.store.merge_stores`); ids must be unique over all shards.
    The interface is the reading part of :class:`~ku.data.store.FeatureStore`: ``ids``,
    ``index_of``, ``complete_mask``, ``failed_mask``, ``check_complete``, ``read``, ``read_ids``,
    ``n_rows``, ``n_augmentations``, ``feature_shape``, ``dtype``, ``augmentations``, ``attrs``;
    pickling drops the open handles (reopened lazily, also in worker processes).
    """

    _TRANSIENT = {"_open": collections.OrderedDict}
    _ID_SCOPE = "any shard"

    def __init__(self, paths, max_open_files: int = 16):
        resolved = resolve_store_paths(paths if isinstance(paths, (list, tuple)) else str(paths))
        resolved = [resolved] if isinstance(resolved, str) else list(resolved)
        if int(max_open_files) < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.max_open_files = int(max_open_files)
        self.mode = "r"
        metas = []
        for p in resolved:
            with FeatureStore(p) as s:  # metadata only; closed again right away
                metas.append({"path": Path(p), "attrs": dict(s.attrs), "n_rows": s.n_rows,
                              "n_augmentations": s.n_augmentations, "feature_shape": s.feature_shape,
                              "dtype": s.dtype, "augmentations": s.augmentations,
                              "ids": np.asarray(s.ids, dtype=object), "complete": s.complete_mask()})
        metas = self._order(metas)
        ref = metas[0]
        for m in metas[1:]:  # shards of one extraction may come from different ku versions
            check_same_layout(SimpleNamespace(**m), SimpleNamespace(**ref), ignore=SHARD_ATTRS + ("ku_version",))
        self.paths = tuple(m["path"] for m in metas)
        self.path = self.paths[0].parent / f"{{{', '.join(p.name for p in self.paths[:3])}" \
            f"{', ...' if len(self.paths) > 3 else ''}}}"  # for messages: "dir/{a.h5, b.h5, ...}"
        self.n_shards = len(metas)
        self.shard_rows = np.array([m["n_rows"] for m in metas], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self.n_rows = int(self.offsets[-1])
        self.n_augmentations = ref["n_augmentations"]
        self.feature_shape = ref["feature_shape"]
        self.dtype = ref["dtype"]
        self.augmentations = ref["augmentations"]
        self.attrs = {k: v for k, v in ref["attrs"].items() if k not in SHARD_ATTRS}
        self._ids = np.concatenate([m["ids"] for m in metas])
        self._complete = np.concatenate([m["complete"] for m in metas])
        self._index = None
        if len(set(self._ids.tolist())) != self.n_rows:
            counts = collections.Counter(self._ids.tolist())
            dup = [i for i, c in counts.items() if c > 1]
            raise FeatureStoreError(f"{self.path}: ids occur in more than one shard: {_preview(dup)}")
        self._open = collections.OrderedDict()  # shard index -> FeatureStore (LRU)
        self._lock = threading.Lock()

    @staticmethod
    def _order(metas):
        shards = [m["attrs"].get("shard") for m in metas]
        if all(s is None for s in shards):
            return metas
        missing = [str(m["path"]) for m, s in zip(metas, shards) if s is None]
        if missing:
            raise FeatureStoreError(f"some files are shards and some are not (no 'shard' attribute: "
                                    f"{_preview(missing)})")
        ns = {int(s[1]) for s in shards}
        if len(ns) != 1:
            raise FeatureStoreError(f"shards of different splits (n = {sorted(ns)}): "
                                    f"{_preview(str(m['path']) for m in metas)}")
        n = ns.pop()
        ks = sorted(int(s[0]) for s in shards)
        if ks != list(range(n)):
            have = collections.Counter(ks)
            lost = [k for k in range(n) if k not in have]
            twice = [k for k, c in have.items() if c > 1]
            raise FeatureStoreError(
                f"incomplete set of shards of {n}: missing shard(s) {lost}"
                f"{f', repeated {twice}' if twice else ''} among "
                f"{_preview(str(m['path']) for m in metas)}")
        return sorted(metas, key=lambda m: int(m["attrs"]["shard"][0]))

    # -- handles ----------------------------------------------------------------------------
    def _shard(self, s: int) -> FeatureStore:
        store = self._open.get(s)
        if store is not None:
            self._open.move_to_end(s)
            return store
        store = FeatureStore(self.paths[s])
        self._open[s] = store
        while len(self._open) > self.max_open_files:
            _, old = self._open.popitem(last=False)
            old.close()
        return store

    def close(self):
        """Close all open shard files (reopened lazily on next use)."""
        for store in self._open.values():
            store.close()
        self._open.clear()

    def __repr__(self):
        return (f"ShardedStore({self.n_shards} shards: {self.path}, rows={self.n_rows}, "
                f"augmentations={self.n_augmentations}, feature_shape={self.feature_shape})")

    # -- metadata ---------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        """(N,) object array of the row ids (str), shards concatenated in order."""
        return self._ids

    def shard_of(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """``(shard index, row within the shard)`` of global ``rows``."""
        rows = self._check_rows(rows)
        s = np.searchsorted(self.offsets, rows, side="right") - 1
        return s, rows - self.offsets[s]

    def complete_mask(self) -> np.ndarray:
        return self._complete.copy()

    def failed_mask(self) -> np.ndarray:
        out = []
        for s in range(self.n_shards):
            with self._lock:
                out.append(self._shard(s).failed_mask())
        return np.concatenate(out)

    @property
    def n_complete(self) -> int:
        return int(self._complete.sum())

    def _check_rows(self, rows) -> np.ndarray:
        return check_rows(rows, self.n_rows, self.path)

    def check_complete(self, rows) -> None:
        rows = self._check_rows(rows)
        bad = np.unique(rows[~self._complete[rows]])
        if bad.size:
            s, _ = self.shard_of(bad)
            files = sorted({self.paths[i].name for i in s})
            raise IncompleteRowsError(
                f"{self.path}: {bad.size} requested row(s) have no features (extraction incomplete "
                f"or failed, in {', '.join(files[:5])}): {_preview(self._ids[bad])}; rerun the "
                "extraction of those shards or drop them")

    # -- reading ----------------------------------------------------------------------------
    def read(self, rows, augmentations="all", dtype=np.float32, check_complete: bool = True) -> np.ndarray:
        """Features of global ``rows`` in the caller's order; arguments as
        :meth:`ku.data.store.FeatureStore.read`. Each shard is read with one sorted selection."""
        rows = self._check_rows(rows)
        if check_complete:
            self.check_complete(rows)
        b = rows.size
        per_item = not isinstance(augmentations, str)
        if per_item:
            augs = np.asarray(augmentations)
            if augs.ndim == 0:
                augs = np.full(b, int(augs), dtype=np.int64)
            if augs.shape != (b,):
                raise FeatureStoreError(
                    f"{self.path}: augmentations must be 'all', an int or an int array of shape ({b},), got shape {augs.shape}")
            out = np.empty((b,) + self.feature_shape, dtype=dtype)
        else:
            if augmentations != "all":
                raise FeatureStoreError(f"{self.path}: augmentations must be 'all', an int or an int array, got {augmentations!r}")
            out = np.empty((b, self.n_augmentations) + self.feature_shape, dtype=dtype)
        if b == 0:
            return out
        shard, local = self.shard_of(rows)
        with self._lock:
            # shards whose files are open first: with more shards than handles a fixed order
            # would make the LRU miss on every shard of every batch
            for s in sorted(np.unique(shard).tolist(), key=lambda k: k not in self._open):
                m = np.flatnonzero(shard == s)
                store = self._shard(int(s))
                out[m] = store.read(local[m], augs[m] if per_item else "all", dtype=dtype, check_complete=False)
        return out

