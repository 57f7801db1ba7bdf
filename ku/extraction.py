"""Extract features of full-resolution images and their augmentations into a feature store.

Hosu et al. 2019 §3.1: MLSP features are computed from the *original-resolution* images (no
resizing), for 8 augmentations per image (4 corner crops at 87.5 % x mirroring, see
:mod:`ku.data.augment`), and stored as float16 in one HDF5 file (:mod:`ku.data.store`). The
released code ran the extractor with batch size 1 per augmentation; here every image is read once
and all its same-sized augmentations go through the extractor as one batch.

The run is resumable and crash safe: rows are written in small groups (features, flush, flags,
flush), so a killed run leaves a valid store, and calling :func:`extract_features` again with the
same arguments continues after the rows already complete and produces the same file, byte for byte,
as an uninterrupted run. Unreadable images (and images the extractor fails on) are logged,
flagged in the store's ``failed`` dataset, listed in the returned report and skipped; they are
retried on the next call. A failed *write* (disk full, I/O error) is different: it stops the
run with :class:`~ku.data.durable.DiskWriteError` naming the store ("the disk is full") and the
number of complete rows; the rows of the failed write stay incomplete, and a re-run after freeing
space continues and gives the same file as an uninterrupted run. Images too small for the backbone (an augmentation's side below its
minimum input side, 75 px for the Inception networks) are refused the same way, with a message
naming the file and the sizes: they are never upscaled (see :mod:`ku.data.images`,
docs/bad_input.md).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import time
import weakref
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ku.data.augment import DEFAULT_CROP_FRACTION, augment, crop_size, resolve_augmentations
from ku.data.durable import DiskWriteError
from ku.data.store import (
    FeatureStore,
    FeatureStoreError,
    _describe_diff,
    diff_attrs,
    normalize_attrs,
    shard_bounds,
)

logger = logging.getLogger(__name__)

__all__ = ["extract_features", "ExtractionReport", "normalize_image_list", "extractor_fingerprint",
           "resolve_min_side"]


@dataclasses.dataclass
class ExtractionReport:
    """What one call of :func:`extract_features` did.

    Attributes:
        store_path: the store written.
        n_rows: rows in the store (this shard).
        n_skipped: rows already complete before this call (resume).
        n_done: rows extracted in this call.
        n_failed: rows that failed in this call (unreadable image or extractor error).
        failed: ``[{"image_id", "image_path", "error"}, ...]`` for the failed rows.
        seconds: wall time of the extraction loop.
    """

    store_path: Path
    n_rows: int
    n_skipped: int = 0
    n_done: int = 0
    n_failed: int = 0
    failed: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.n_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        """True when every row of the store has features."""
        return self.n_skipped + self.n_done == self.n_rows

    def summary(self) -> str:
        s = (f"{self.store_path}: extracted {self.n_done} image(s) in {self.seconds:.1f} s "
             f"({self.images_per_second:.2f} images/s), {self.n_skipped} already done, "
             f"{self.n_failed} failed")
        if self.failed:
            names = ", ".join(Path(f["image_path"]).name for f in self.failed[:5])
            s += f" ({names}{', ...' if len(self.failed) > 5 else ''})"
        return s

    __str__ = summary


def normalize_image_list(ids_table_or_paths, id_column="image_id", path_column="image_path"):
    """(ids, paths) lists from an ids table (DataFrame), a ``{id: path}`` mapping or a list of paths
    (the id of a bare path is the path string)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(ids_table_or_paths, pd.DataFrame):
        df = ids_table_or_paths
        for col in (id_column, path_column):
            if col not in df.columns:
                raise ValueError(f"ids table has no column {col!r} (columns: {list(df.columns)})")
        ids = [str(i) for i in df[id_column].tolist()]
        paths = [str(p) for p in df[path_column].tolist()]
    elif isinstance(ids_table_or_paths, Mapping):
        ids = [str(k) for k in ids_table_or_paths.keys()]
        paths = [str(v) for v in ids_table_or_paths.values()]
    elif isinstance(ids_table_or_paths, (str, Path)):
        raise TypeError("extract_features needs a list of image paths, a {id: path} mapping or an ids "
                        f"table, not a single path {str(ids_table_or_paths)!r}")
    else:
        paths = [str(p) for p in ids_table_or_paths]
        ids = list(paths)
    if len(set(ids)) != len(ids):
        dup = [k for k, c in collections.Counter(ids).items() if c > 1]
        raise ValueError(f"duplicate image ids: {dup[:5]}{' ...' if len(dup) > 5 else ''}")
    return ids, paths


def extractor_fingerprint(extractor) -> str | None:
    """sha256 over the extractor's weight shapes and values (None for non-Keras callables).
    Stored with the features so a resume with different weights is refused."""
    weights = getattr(extractor, "weights", None)
    if weights is None:
        return None
    h = hashlib.sha256()
    for w in weights:
        arr = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# Compiled inference functions per extractor (weak keys: an entry goes with its model), so that
# repeated calls -- several shards or datasets in one process -- trace the graph only once
# (tracing an InceptionResNetV2 MLSP graph takes seconds).
_INFER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _make_infer(extractor):
    """Compile the extractor once for any batch/height/width (no retracing per image size)."""
    try:
        return _INFER_CACHE[extractor]
    except (KeyError, TypeError):
        pass
    infer = _compile_infer(extractor)
    try:
        _INFER_CACHE[extractor] = infer
    except TypeError:  # not weak-referenceable (e.g. a plain function): just don't cache
        pass
    return infer


def _compile_infer(extractor):
    """``uint8 (B, H, W, 3) -> numpy features``, compiled: on TensorFlow one ``tf.function`` with
    free batch, height and width (one trace for all image sizes); on other backends the model's
    own compiled ``predict_on_batch`` (JAX compiles once per input shape: images of many sizes
    compile many times, so bucket them or extract on TensorFlow), or a plain call for a function."""
    import keras

    call_kw = {"training": False} if hasattr(extractor, "weights") else {}
    if keras.backend.backend() != "tensorflow":
        if isinstance(extractor, keras.Model):
            return lambda x: np.asarray(extractor.predict_on_batch(np.asarray(x, np.float32)))
        return lambda x: keras.ops.convert_to_numpy(extractor(np.asarray(x, np.float32), **call_kw))
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8)], reduce_retracing=True)
    def infer(x):
        return extractor(tf.cast(x, tf.float32), **call_kw)

    return lambda x: np.asarray(infer(x))


def _feature_shape(extractor, infer, feature_shape):
    if feature_shape is not None:
        return tuple(int(s) for s in feature_shape)
    shape = getattr(extractor, "output_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) >= 2 and all(isinstance(s, int) for s in shape[1:]):
        return tuple(shape[1:])
    probe = infer(np.zeros((1, 299, 299, 3), np.uint8))  # output size not static: measure it
    return tuple(probe.shape[1:])


def resolve_min_side(extractor, min_side="auto") -> int | None:
    """The smallest input side ``extractor`` accepts: ``min_side`` itself when it is an int or
    None; for ``"auto"`` the ``ku_min_side`` attribute of the extractor if set, else the
    ``min_size`` of the :data:`ku.backbones.BACKBONES` entry whose name is part of the
    extractor's name (``mlsp_wide_inception_v3`` -> 75), else None (no check)."""
    if min_side is None or not isinstance(min_side, str):
        if min_side is not None and int(min_side) < 1:
            raise ValueError(f"min_side must be a positive int, None or 'auto', got {min_side!r}")
        return None if min_side is None else int(min_side)
    if min_side != "auto":
        raise ValueError(f"min_side must be a positive int, None or 'auto', got {min_side!r}")
    own = getattr(extractor, "ku_min_side", None)
    if own is not None:
        return int(own)
    name = str(getattr(extractor, "name", "") or "")
    try:
        from ku.backbones import BACKBONES
    except ImportError:  # pragma: no cover
        return None
    hits = sorted((k for k in BACKBONES if k in name), key=len, reverse=True)
    return int(BACKBONES[hits[0]].min_size) if hits else None


def _check_min_side(image, path, augs, crop_fraction, min_side):
    """ImageReadError naming the file if an augmentation of ``image`` is below ``min_side``."""
    from ku.data.images import ImageReadError

    h, w = int(image.shape[0]), int(image.shape[1])
    sizes = [(h, w) if a.corner is None else crop_size(h, w, crop_fraction) for a in augs]
    ah, aw = min(sizes, key=min)
    if min(ah, aw) < min_side:
        what = "the image" if (ah, aw) == (h, w) else f"its {crop_fraction:g} crops ({ah}x{aw} px)"
        raise ImageReadError(path, f"image is {h}x{w} px: {what} below the extractor's minimum input "
                                   f"side of {min_side} px (small images are refused, not upscaled; "
                                   f"crops need an image side >= {_min_image_side(min_side, crop_fraction, augs)} px)")


def _min_image_side(min_side, crop_fraction, augs):
    if all(a.corner is None for a in augs):
        return min_side
    s = min_side
    while crop_size(s, s, crop_fraction)[0] < min_side:
        s += 1
    return s


def _group_by_size(image, augs, crop_fraction):
    """{size: [(aug_index, array), ...]} -- same-sized augmentations go through one batch."""
    groups = collections.OrderedDict()
    for j, a in enumerate(augs):
        arr = augment(image, a, crop_fraction)
        groups.setdefault(arr.shape, []).append((j, arr))
    return groups


def extract_features(
    ids_table_or_paths,
    store_path,
    extractor,
    augmentations=None,
    batch_size: int | None = None,
    shard: tuple[int, int] | None = None,
    attrs: Mapping | None = None,
    resume: bool = True,
    max_pixels: int | None = None,
    progress: bool = True,
    crop_fraction: float = DEFAULT_CROP_FRACTION,
    dtype="float16",
    flush_every: int = 16,
    readers: int = 1,
    feature_shape: Sequence[int] | None = None,
    max_consecutive_errors: int = 20,
    read_fn: Callable | None = None,
    id_column: str = "image_id",
    path_column: str = "image_path",
    min_side="auto",
) -> ExtractionReport:
    """Extract features of every image (and its augmentations) into an HDF5 feature store.

    Args:
        ids_table_or_paths: ids table (DataFrame with ``image_id``, ``image_path``), a mapping
            ``{id: path}`` or a list of image paths (ids = the path strings).
        store_path: the ``.h5`` file to write (with ``shard``: this shard's own file, e.g.
            :func:`ku.data.store.shard_path`; join shards with :func:`ku.data.store.merge_stores`).
        extractor: a Keras model (or callable) taking (B, H, W, 3) RGB in 0..255 and returning
            (B, *feature_shape), e.g. :func:`ku.models.mlsp.mlsp_extractor`. It is called in
            inference mode inside one ``tf.function`` whose input signature has free batch, height
            and width (traced once, not once per image size).
        augmentations: augmentations / names (default: the 8 of Hosu et al. §3.1). Images are
            never resized; same-sized augmentations form one extractor batch.
        batch_size: at most this many augmentations per extractor call (None: all of an image at
            once; lower it if large images run out of accelerator memory).
        shard: ``(k, n)``: process only the contiguous block of rows ``k*N//n .. (k+1)*N//n`` (so
            shards merged in order reproduce the unsharded row order); the store gets attribute
            ``shard = [k, n]``.
        attrs: extra store attributes; ``backbone``, ``weights``, ``taps``, ``pooling`` are
            expected (defaults: the extractor's name / ``"unknown"`` / ``[]`` / ``"unknown"``). The
            store also records ``extractor``, ``extractor_sha256`` (weights fingerprint),
            ``backbone_seed`` (the initialisation seed of a ku backbone, ``extractor.ku_seed``,
            see :func:`ku.backbones.backbone_seed`; absent for other extractors),
            ``crop_fraction`` and ``max_pixels``.
        resume: an existing store with the same ids and attributes is continued (complete rows
            are skipped, failed ones retried); different ids/attributes raise
            :class:`~ku.data.store.FeatureStoreError`. ``resume=False`` replaces an existing file.
        max_pixels: passed to :func:`ku.data.images.read_image` (downscale larger images);
            None = full resolution as in the paper.
        progress: show a ``keras.utils.Progbar`` with images/s.
        crop_fraction: crop size of the corner crops (0.875, Hosu §3.1).
        dtype: storage dtype (float16 as in the paper).
        flush_every: rows per write (features -> flush -> flags -> flush).
        readers: threads reading/decoding images ahead of the extractor.
        feature_shape: only needed when the extractor's output shape is not static.
        max_consecutive_errors: raise after this many consecutive *extractor* failures (a broken
            model rather than a bad image). Read failures never stop the run.
        read_fn: image reader ``f(path, max_pixels=...) -> uint8 (H, W, 3)``; default
            :func:`ku.data.images.read_image`.
        min_side: images whose augmentations (crops) would have a side below this are skipped
            and reported (never upscaled); ``"auto"`` (default) takes the backbone's minimum from
            the extractor (:func:`resolve_min_side`; 75 px for Inception: images >= 86 px for
            87.5 % crops), None disables the check.
    Returns:
        :class:`ExtractionReport` (also logged as a one-line summary).
    Raises:
        DiskWriteError: writing the store failed (disk full, I/O error); the message names the
            store and the rows complete so far. Re-run to continue.
    """
    t_start = time.perf_counter()
    ids, paths = normalize_image_list(ids_table_or_paths, id_column, path_column)
    if shard is not None:
        k, n = int(shard[0]), int(shard[1])
        n_all = len(ids)
        start, stop = shard_bounds(n_all, (k, n))
        ids, paths = ids[start:stop], paths[start:stop]
        if not ids:
            raise ValueError(f"shard {k}/{n} of {n_all} images is empty")
    augs = resolve_augmentations(augmentations)
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if read_fn is None:
        from ku.data.images import read_image as read_fn  # noqa: N813 (lazy: keeps import light)

    min_side = resolve_min_side(extractor, min_side)
    infer = _make_infer(extractor)
    fshape = _feature_shape(extractor, infer, feature_shape)
    store_path = Path(store_path)

    full_attrs = {
        "backbone": getattr(extractor, "name", type(extractor).__name__),
        "weights": "unknown",
        "taps": [],
        "pooling": "unknown",
        "extractor": getattr(extractor, "name", type(extractor).__name__),
        "crop_fraction": float(crop_fraction),
        "max_pixels": int(max_pixels or 0),
    }
    fp = extractor_fingerprint(extractor)
    if fp is not None:
        full_attrs["extractor_sha256"] = fp
    seed = getattr(extractor, "ku_seed", None)  # ku.backbones.backbone_seed (no Keras import here)
    if seed is not None:
        full_attrs["backbone_seed"] = int(seed)
    full_attrs.update(dict(attrs or {}))
    if shard is not None:
        full_attrs["shard"] = [k, n]
    names = [a.name for a in augs]

    store = _open_or_create(store_path, ids, names, fshape, full_attrs, dtype, resume)
    report = ExtractionReport(store_path=store_path, n_rows=len(ids))
    with store:
        complete = store.complete_mask()
        report.n_skipped = int(complete.sum())
        pending = np.flatnonzero(~complete)
        if report.n_skipped:
            logger.info("%s: resuming, %d of %d rows already complete", store_path, report.n_skipped, len(ids))
        try:
            _run(store, pending, ids, paths, augs, infer, report, batch_size=batch_size,
                 crop_fraction=crop_fraction, max_pixels=max_pixels, flush_every=flush_every,
                 readers=readers, progress=progress, read_fn=read_fn,
                 max_consecutive_errors=max_consecutive_errors, min_side=min_side)
        except DiskWriteError as e:
            raise _stopped(e, store) from e
    report.seconds = time.perf_counter() - t_start
    logger.info(report.summary())
    return report


def _stopped(err: DiskWriteError, store: FeatureStore) -> DiskWriteError:
    """``err`` with the number of rows the store holds complete (extraction stopped)."""
    try:
        done = f"{store.n_complete} of {store.n_rows} rows are complete"
    except Exception:  # noqa: BLE001 - the disk may refuse even this; the first error matters
        done = "the rows completed before are kept"
    return DiskWriteError(err.filename, f"{err.strerror}; extraction stopped, {done}", err.errno, err.what,
                          "free space (or fix the disk) and re-run with the same arguments to continue")


def _open_or_create(store_path, ids, names, fshape, full_attrs, dtype, resume) -> FeatureStore:
    if store_path.exists() and resume:
        store = FeatureStore(store_path, "r+")
        try:
            if list(store.ids) != list(ids):
                stored = list(store.ids)
                first = next((i for i, (a, b) in enumerate(zip(stored, ids)) if a != b), min(len(stored), len(ids)))
                raise FeatureStoreError(
                    f"{store_path}: existing store holds different ids ({len(stored)} rows vs {len(ids)} requested; "
                    f"first difference at row {first}); use another file or resume=False to replace it")
            expected = dict(full_attrs)
            expected.update(format=store.attrs.get("format"), feature_shape=list(fshape),
                            dtype=np.dtype(dtype).name, n_augmentations=len(names), augmentations=names)
            # a store begun before ku recorded the seed resumes: extractor_sha256 still checks it
            ignore = ("ku_version",) + (() if "backbone_seed" in store.attrs else ("backbone_seed",))
            bad = diff_attrs(store.attrs, expected, ignore=ignore)
            if bad:
                raise FeatureStoreError(
                    f"{store_path}: existing store was made with other settings: "
                    + _describe_diff(store.attrs, expected, bad, "file", "now")
                    + "; use another file or resume=False to replace it")
            if normalize_attrs({"v": store.attrs.get("ku_version", "")})["v"] != normalize_attrs({"v": _version()})["v"]:
                logger.warning("%s was started with ku %s, continuing with ku %s",
                               store_path, store.attrs.get("ku_version"), _version())
        except Exception:
            store.close()
            raise
        return store
    if store_path.exists():
        logger.warning("replacing existing feature store %s (resume=False)", store_path)
    return FeatureStore.create(store_path, ids, len(names), fshape, attrs=full_attrs, dtype=dtype,
                               augmentations=names, overwrite=True)


def _version():
    import ku

    return ku.__version__


def _run(store, pending, ids, paths, augs, infer, report, *, batch_size, crop_fraction, max_pixels,
         flush_every, readers, progress, read_fn, max_consecutive_errors, min_side=None):
    import keras

    bar = keras.utils.Progbar(len(pending), stateful_metrics=["images/s", "failed"],
                              verbose=1 if progress else 0, unit_name="image")
    buf_rows = []
    # features of the rows since the last flush, written in place in the store's dtype (no
    # per-image stack, no stack of the buffer, no cast at write time: ~10% of the time at 2 cores)
    buf = np.empty((max(1, int(flush_every)), store.n_augmentations) + tuple(store.feature_shape), store.dtype)
    consecutive_errors = 0
    t0 = time.perf_counter()

    def flush():
        if buf_rows:
            rows = np.asarray(buf_rows)
            buf_rows.clear()  # a failed write is not retried: those rows stay incomplete
            store.write_rows(rows, buf[: rows.size])

    def load(row):
        try:
            image = read_fn(paths[row], max_pixels=max_pixels)
            if min_side is not None:
                _check_min_side(np.asarray(image), paths[row], augs, crop_fraction, min_side)
            return image, None
        except Exception as e:  # ImageReadError, OSError, anything a decoder throws
            return None, e

    def fail(row, stage, err):
        msg = f"{type(err).__name__}: {err}"
        logger.warning("skipping image %s (id %s): %s failed: %s", paths[row], ids[row], stage, msg)
        report.failed.append({"image_id": ids[row], "image_path": paths[row], "error": msg})
        report.n_failed += 1
        store.mark_failed([row])

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(readers)))
    window = collections.deque()
    it = iter(pending.tolist())
    try:
        for row in it:  # fill the read-ahead window
            window.append((row, executor.submit(load, row)))
            if len(window) >= 2 * max(1, int(readers)):
                break
        while window:
            row, fut = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append((nxt, executor.submit(load, nxt)))
            image, err = fut.result()
            if err is not None:
                fail(row, "reading", err)
            else:
                try:
                    _extract_one(image, augs, infer, batch_size, crop_fraction, out=buf[len(buf_rows)])
                    consecutive_errors = 0
                except Exception as e:
                    consecutive_errors += 1
                    fail(row, f"extracting ({image.shape[1]}x{image.shape[0]} px)", e)
                    if consecutive_errors >= max_consecutive_errors:
                        raise RuntimeError(
                            f"the extractor failed on {consecutive_errors} images in a row; last: "
                            f"{paths[row]}: {e}") from e
                else:
                    buf_rows.append(row)
                    report.n_done += 1
                    if len(buf_rows) >= len(buf):
                        flush()
            elapsed = time.perf_counter() - t0
            values = [("images/s", report.n_done / elapsed if elapsed > 0 else 0.0)]
            if report.n_failed:
                values.append(("failed", report.n_failed))
            bar.add(1, values=values)
    except DiskWriteError:
        buf_rows.clear()  # the disk failed: stop at once, write nothing more
        raise
    finally:
        try:
            flush()  # rows computed before an interruption are kept
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _extract_one(image, augs, infer, batch_size, crop_fraction, out=None) -> np.ndarray:
    """Features ``(A, *feature_shape)`` of every augmentation of ``image``; written into ``out``
    (cast to its dtype) when given, else into a new float32 array."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"reader returned {image.dtype} {image.shape}, expected uint8 (H, W, 3)")
    for _, items in _group_by_size(image, augs, crop_fraction).items():
        step = len(items) if batch_size is None else int(batch_size)
        for i in range(0, len(items), step):
            chunk = items[i : i + step]
            y = infer(np.stack([arr for _, arr in chunk]))
            if out is None:
                out = np.empty((len(augs),) + y.shape[1:], np.float32)
            if y.shape[1:] != out.shape[1:]:
                raise ValueError(f"the extractor gave features of shape {y.shape[1:]}, the store holds "
                                 f"{out.shape[1:]}")
            for (j, _), f in zip(chunk, y):
                out[j] = f
    return out
