"""Whole images at their own aspect ratio, batched by aspect ratio and padded (tf.data).

Murray & Gordo 2017 §3.2 / §3.4: the network sees every image whole, at its own aspect ratio,
"we resize each image such that the smaller image dimension equaled 500, while maintaining the
original aspect ratio". To batch such images, images of similar aspect ratio are grouped into
one batch and padded to the batch's largest height and width, each image at the top-left, and
each image's valid size ``(h, w)`` travels with it (for :func:`ku.models.masking.masked_model`
and :class:`ku.layers.SpatialPyramidPooling`).

Pipeline (:func:`aspect_batches`)::

    ids table --(Python, metadata only)--> image sizes from the file headers (bad files skipped
              and reported) --> resized sizes (shorter side = ``shorter_side``) --> batch plan
    tf.data:  row index --> read_file -> decode_image -> resize (bilinear, antialiased) -> float32
              --> padded_batch (zeros at the bottom/right) --> ((images, valid_sizes), targets)

Only TensorFlow graph ops are in the image path, so the map can run anywhere tf.data runs
(``tf.io.decode_image`` does not apply EXIF orientation; AVA's JPEGs do not rely on it -- use
:func:`ku.data.images.read_image` where orientation matters).

**Batch plan** (:func:`plan_batches`). Images are ordered by a *bucket key*:
first the aspect bin ``round(log(w / h) / aspect_step)`` (bins ``aspect_step`` wide in log
aspect, default 0.1, i.e. about 10 % aspect difference; ``aspect_step=None``: the exact aspect),
then the area ``h * w``, then the row index -- so consecutive images have nearly the same aspect
*and* size, and a batch's canvas (its largest height x its largest width) is barely larger than
its images. Evaluation (``shuffle=False``): the key order cut into consecutive batches --
deterministic, least padding. Training (``shuffle=True``), for each epoch: the key order is cut
into buckets of ``bucket_batches * batch_size`` images, the first cut at a random offset (so the
bucket borders move from epoch to epoch), images are shuffled inside their bucket, the buckets
are concatenated, cut into batches and the batch order is shuffled. Every random draw comes from
``np.random.default_rng([seed, epoch])``: reproducible, different between epochs, every image
exactly once per epoch. Every batch has ``batch_size`` images except the last one (dropped with
``drop_remainder=True``). ``bucket_batches`` trades randomness for padding: larger buckets mix
more images (fewer pairs of images meet again in the next epoch), smaller ones pad less.

Measured (:func:`padding_report`, canvas pixels / image pixels; ``bench/bench_buckets.py``):

=========================================== ===== ====== ================= ==========================
sizes                                       batch eval   training (worst   one fixed canvas
                                                          of 3 epochs)
=========================================== ===== ====== ================= ==========================
simulated AVA (:func:`simulate_ava_sizes`)  128   1.06   1.21              1.91 (800 x 800)
simulated AVA                               16    1.01   1.03              1.91 (800 x 800)
demo set, shorter side 500                  16    1.04   1.22              2.24 (largest side)
=========================================== ===== ====== ================= ==========================

(The previous plan -- pure aspect order, fixed buckets -- gave 1.20 / 1.34 on simulated AVA at
batch 128, above the goal of 1.3: sorting by the exact aspect interleaves the sizes, since
rounding makes every size's aspect slightly different.)

For models with exact padding masking (:func:`ku.models.masking.masked_model`, e.g.
``ku.models.apm.apm_model(masked=True)``) a bucketed batch gives the same outputs as a fixed canvas
with less compute (``tests/test_buckets.py``). Murray & Gordo 2017 §3.2 (whole images, adaptive
SPP per image) and Jia, Li, He 2019 §III-A (images padded into a fixed 800 x 800 canvas, ROI
pooling over the image; ``canvas=`` reproduces that batching).

:func:`padding_ratio` / :func:`padding_report` measure the cost: canvas pixels / image pixels
(1.0 = no padding).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "AspectBatches",
    "aspect_batches",
    "image_sizes",
    "resized_size",
    "resized_sizes",
    "bucket_key_order",
    "plan_batches",
    "fixed_canvas_batches",
    "padding_ratio",
    "padding_report",
    "demo_padding_report",
    "simulate_ava_sizes",
    "decode_resize",
    "load_image",
]


# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------
def resized_size(height: int, width: int, shorter_side: Optional[int] = 500,
                 max_side: Optional[int] = None) -> tuple:
    """``(h, w)`` after resizing so that the shorter side is ``shorter_side``, aspect kept.

    The shorter side becomes exactly ``shorter_side``; the longer one is
    ``max(1, round(long * shorter_side / short))`` (Python rounding, half to even). With
    ``max_side`` the longer side is then capped, the shorter one scaled with it. ``shorter_side=None``
    keeps the size (then only ``max_side`` applies). Murray & Gordo 2017 §3.4: 500.
    """
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise ValueError(f"resized_size: image size must be positive, got {(height, width)}")
    if shorter_side is not None:
        s = int(shorter_side)
        if s < 1:
            raise ValueError(f"resized_size: shorter_side must be >= 1, got {shorter_side!r}")
        if h <= w:
            h, w = s, max(1, round(w * s / h))
        else:
            h, w = max(1, round(h * s / w)), s
    if max_side is not None and max(h, w) > int(max_side):
        m = int(max_side)
        if h >= w:
            h, w = m, max(1, round(w * m / h))
        else:
            h, w = max(1, round(h * m / w)), m
    return h, w


def resized_sizes(sizes, shorter_side: Optional[int] = 500, max_side: Optional[int] = None) -> np.ndarray:
    """:func:`resized_size` for an ``(N, 2)`` array of ``(h, w)``; returns int64 ``(N, 2)``."""
    sizes = np.asarray(sizes).reshape(-1, 2)
    return np.array([resized_size(h, w, shorter_side, max_side) for h, w in sizes],
                    dtype=np.int64).reshape(-1, 2)


def image_sizes(paths: Sequence) -> tuple:
    """``(h, w)`` of each image file from its header (PIL, no decoding), stored orientation.

    Returns:
        ``(sizes, failed)``: int64 ``(N, 2)`` with ``(-1, -1)`` for files that cannot be read,
        and a list of ``(index, path, reason)`` for those.
    """
    from PIL import Image

    from ku.data.images import special_file_reason

    sizes = np.full((len(paths), 2), -1, dtype=np.int64)
    failed = []
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)  # follows links: a FIFO or /dev/zero behind a link is never opened
            reason = special_file_reason(st, str(p))
            if reason:
                raise ValueError(reason)
            if st.st_size == 0:
                raise ValueError("empty file (0 bytes)")
            with Image.open(p) as im:
                w, h = im.size
            if h < 1 or w < 1:
                raise ValueError(f"bad size {w}x{h}")
            sizes[i] = (h, w)
        except Exception as e:  # missing, unreadable, not an image
            failed.append((i, str(p), f"{type(e).__name__}: {e}"))
    return sizes, failed


# --------------------------------------------------------------------------------------------
# batch plan and padding
# --------------------------------------------------------------------------------------------
def _check_batch_size(batch_size):
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def bucket_key_order(sizes, aspect_step: Optional[float] = 0.1) -> np.ndarray:
    """Row indices of ``sizes`` sorted by (aspect bin, area, index) -- the order of the batch plan.

    The aspect bin of ``(h, w)`` is ``round(log(w / h) / aspect_step)`` (``aspect_step=None``: the
    exact ``log(w / h)``); landscape images get positive, portrait negative bins, square 0.
    """
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    n = len(sizes)
    aspect = np.log(sizes[:, 1] / sizes[:, 0])
    if aspect_step is not None:
        if not float(aspect_step) > 0:
            raise ValueError(f"aspect_step must be > 0 or None, got {aspect_step!r}")
        aspect = np.floor(aspect / float(aspect_step) + 0.5)
    return np.lexsort((np.arange(n), sizes[:, 0] * sizes[:, 1], aspect)).astype(np.int64)


def plan_batches(sizes, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 drop_remainder: bool = False, bucket_batches: int = 4,
                 aspect_step: Optional[float] = 0.1, n_buckets: Optional[int] = None) -> list:
    """Group images of similar aspect ratio and size into batches (see the module docstring).

    Args:
        sizes: ``(N, 2)`` sizes ``(h, w)`` as they enter the network (after resizing).
        batch_size: images per batch.
        shuffle: training order (shuffled inside buckets whose borders move per epoch, batch order
            shuffled) instead of the deterministic key order.
        seed, epoch: the random draws use ``np.random.default_rng([seed, epoch])``.
        drop_remainder: drop the one batch with fewer than ``batch_size`` images.
        bucket_batches: bucket size in batches for shuffling (default 4). Irrelevant without
            ``shuffle``.
        aspect_step: width of the aspect bins in ``log(w / h)`` (:func:`bucket_key_order`).
        n_buckets: alternatively the number of buckets (bucket size ``ceil(N / n_buckets)``
            images); overrides ``bucket_batches``.

    Returns:
        list of int64 arrays of row indices into ``sizes``; all but (at most) the last have
        ``batch_size`` entries; with ``drop_remainder=False`` every row appears exactly once.
    """
    batch_size = _check_batch_size(batch_size)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    n = len(sizes)
    if n == 0:
        return []
    if (sizes < 1).any():
        raise ValueError("plan_batches: every size must be >= 1 (got a zero or negative height/width)")
    order = bucket_key_order(sizes, aspect_step)
    if shuffle:
        rng = np.random.default_rng([int(seed), int(epoch)])
        if n_buckets is not None:
            bucket = -(-n // max(1, int(n_buckets)))
        else:
            if not isinstance(bucket_batches, (int, np.integer)) or bucket_batches < 1:
                raise ValueError(f"plan_batches: bucket_batches must be a positive integer, got {bucket_batches!r}")
            bucket = int(bucket_batches) * batch_size
        offset = int(rng.integers(0, bucket)) if bucket < n else 0
        cuts = np.unique(np.concatenate([[0], np.arange(offset or bucket, n, bucket), [n]]))
        order = np.concatenate([rng.permutation(order[a:b]) for a, b in zip(cuts[:-1], cuts[1:])])
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if batches and len(batches[-1]) < batch_size and drop_remainder:
        batches = batches[:-1]
    if shuffle and batches:
        full = [b for b in batches if len(b) == batch_size]
        rest = [b for b in batches if len(b) != batch_size]
        batches = [full[i] for i in rng.permutation(len(full))] + rest
    return [np.asarray(b, dtype=np.int64) for b in batches]


def padding_ratio(sizes, batches) -> float:
    """Canvas pixels / image pixels: ``sum_b |b| * max_h(b) * max_w(b) / sum_i h_i * w_i``.

    1.0 means no padding; 2.0 means the network computes on twice the image area.
    """
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    used = np.concatenate([np.asarray(b) for b in batches]) if len(batches) else np.zeros(0, int)
    canvas = sum(len(b) * sizes[b, 0].max() * sizes[b, 1].max() for b in batches)
    image = float((sizes[used, 0] * sizes[used, 1]).sum())
    return float(canvas / image) if image else float("nan")


def padding_report(sizes, batch_size: int = 16, *, shorter_side: Optional[int] = 500,
                   max_side: Optional[int] = None, fixed_canvas: Optional[tuple] = None,
                   n_buckets: Optional[int] = None, seed: int = 0, bucket_batches: int = 4,
                   aspect_step: Optional[float] = 0.1, epochs: int = 3) -> dict:
    """Padding cost of aspect-ratio batches for a set of image sizes.

    Args:
        sizes: ``(N, 2)`` original ``(h, w)``.
        batch_size: images per batch.
        shorter_side, max_side: resizing (see :func:`resized_size`); ``None`` keeps the sizes.
        fixed_canvas: also report a fixed ``(H, W)`` canvas holding every (original-size) image,
            e.g. Jia et al.'s 800x800 (III-A); ratio ``N * H * W / sum h w``.
        n_buckets, seed, bucket_batches, aspect_step: the plan (:func:`plan_batches`).
        epochs: training epochs to plan (``train_ratio_max`` is the worst of them).

    Returns:
        dict with ``n_images``, ``batch_size``, ``image_pixels`` (mean pixels per image),
        ``eval_ratio`` (sorted plan), ``train_ratio`` (shuffled plan, epoch 0),
        ``train_ratio_max`` (the largest over ``epochs`` epochs), ``random_ratio`` (batches drawn
        without regard to aspect), ``max_canvas_ratio`` (one fixed square canvas of the largest
        resized side, ``aspect_batches(canvas="max")``) and, with ``fixed_canvas``, ``fixed_ratio``.
    """
    sizes = np.asarray(sizes).reshape(-1, 2)
    rs = resized_sizes(sizes, shorter_side, max_side) if (shorter_side or max_side) else sizes.astype(np.int64)
    n = len(rs)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    out = {
        "n_images": n,
        "batch_size": int(batch_size),
        "image_pixels": float((rs[:, 0] * rs[:, 1]).mean()) if n else float("nan"),
        "eval_ratio": padding_ratio(rs, plan_batches(rs, batch_size, aspect_step=aspect_step)),
    }
    train = [padding_ratio(rs, plan_batches(rs, batch_size, shuffle=True, seed=seed, epoch=e,
                                            n_buckets=n_buckets, bucket_batches=bucket_batches,
                                            aspect_step=aspect_step))
             for e in range(max(1, int(epochs)))]
    out.update({
        "train_ratio": train[0],
        "train_ratio_max": max(train),
        "random_ratio": padding_ratio(rs, [perm[i:i + batch_size] for i in range(0, n, batch_size)]),
        "max_canvas_ratio": float(n * float(rs.max()) ** 2 / (rs[:, 0] * rs[:, 1]).astype(np.float64).sum())
        if n else float("nan"),
    })
    if fixed_canvas is not None:
        fh, fw = fixed_canvas
        out["fixed_ratio"] = float(n * fh * fw / (sizes[:, 0].astype(np.float64) * sizes[:, 1]).sum())
    return out


def simulate_ava_sizes(n: int = 20000, seed: int = 0, max_side: int = 800) -> np.ndarray:
    """A synthetic AVA-like size distribution for padding estimates, ``(n, 2)`` int ``(h, w)``.

    Not real data: a stand-in for planning numbers. AVA images have the longer side at most 800
    (DPChallenge's limit) and a reported mean of about 629 x 497 (w x h). Model: 80 % landscape,
    15 % portrait, 5 % square; aspect (long/short) from {4:3 (45 %), 3:2 (35 %), 16:9 (10 %),
    5:4 (10 %)}; the longer side is ``max_side`` for 40 % of the images, else uniform in
    [350, max_side). With the defaults the means are about 635 x 509 (w x h) (tested loosely).
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.80, 0.15, 0.05])
    aspect = rng.choice([4 / 3, 3 / 2, 16 / 9, 5 / 4], size=n, p=[0.45, 0.35, 0.10, 0.10])
    aspect = np.where(kind == 2, 1.0, aspect)
    long = np.where(rng.random(n) < 0.4, max_side, rng.uniform(350, max_side, size=n))
    short = np.maximum(1, np.round(long / aspect))
    long = np.round(long)
    h = np.where(kind == 1, long, short)
    w = np.where(kind == 1, short, long)
    return np.stack([h, w], axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# graph image path
# --------------------------------------------------------------------------------------------
def decode_resize(data, size, channels: int = 3):
    """Decode image bytes and resize to ``size = (h, w)`` -- TensorFlow graph ops only.

    ``tf.io.decode_image`` (JPEG/PNG/BMP/GIF first frame; grey -> RGB), then
    ``tf.image.resize(method="bilinear", antialias=True)`` (antialiased when shrinking, bilinear
    when enlarging), clipped to 0..255, float32 ``(h, w, 3)``. The resize is skipped when the
    decoded image already has that size.
    """
    import tensorflow as tf

    from ku.data.tf_decode import decode_image_uint8

    img = tf.cast(decode_image_uint8(data, channels), tf.float32)
    size = tf.cast(size, tf.int32)
    same = tf.reduce_all(tf.equal(tf.shape(img)[:2], size))
    img = tf.cond(same, lambda: img,
                  lambda: tf.clip_by_value(
                      tf.image.resize(img, size, method="bilinear", antialias=True), 0.0, 255.0))
    return tf.ensure_shape(img, [None, None, channels])


def load_image(path, shorter_side: Optional[int] = 500, max_side: Optional[int] = None) -> np.ndarray:
    """One image as the pipeline feeds it (eager): float32 ``(h, w, 3)`` in 0..255, shorter side
    ``shorter_side`` (graph decode + resize of :func:`decode_resize`)."""
    import tensorflow as tf

    sizes, failed = image_sizes([path])
    if failed:
        from ku.data.images import ImageReadError

        raise ImageReadError(path, failed[0][2])
    size = resized_size(*sizes[0], shorter_side, max_side)
    return decode_resize(tf.io.read_file(str(path)), size).numpy()


def _canvas_size(canvas, sizes):
    """``(H, W)`` of a fixed canvas (or None) and a check that every size fits."""
    if canvas is None:
        return None
    sizes = np.asarray(sizes).reshape(-1, 2)
    if isinstance(canvas, str):
        if canvas != "max":
            raise ValueError(f"canvas must be None, 'max', an int or (H, W), got {canvas!r}")
        side = int(sizes.max()) if len(sizes) else 1
        return side, side
    if isinstance(canvas, (int, np.integer)):
        canvas = (canvas, canvas)
    try:
        ch, cw = (int(c) for c in canvas)
    except (TypeError, ValueError):
        raise ValueError(f"canvas must be None, 'max', an int or (H, W), got {canvas!r}") from None
    if ch < 1 or cw < 1:
        raise ValueError(f"canvas must be positive, got {canvas!r}")
    big = np.flatnonzero((sizes[:, 0] > ch) | (sizes[:, 1] > cw)) if len(sizes) else []
    if len(big):
        i = int(big[0])
        raise ValueError(f"canvas {ch}x{cw}: {len(big)} image(s) do not fit, e.g. row {i} of size "
                         f"{int(sizes[i, 0])}x{int(sizes[i, 1])}")
    return ch, cw


def fixed_canvas_batches(images, canvas=None):
    """Stack ``(h_i, w_i, 3)`` images into one zero canvas, each at the top-left (numpy).

    Args:
        images: list of arrays ``(h, w, C)``.
        canvas: ``(H, W)``, an int, or None for the batch's largest height x largest width (the
            bucketed canvas).

    Returns:
        ``(batch float32 (B, H, W, C), valid_sizes int32 (B, 2))``.
    """
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64).reshape(-1, 2)
    ch, cw = _canvas_size(canvas, sizes) if canvas is not None else tuple(int(v) for v in sizes.max(0))
    c = images[0].shape[2] if len(images) and np.ndim(images[0]) == 3 else 3
    batch = np.zeros((len(images), ch, cw, c), np.float32)
    for k, im in enumerate(images):
        batch[k, :im.shape[0], :im.shape[1]] = im
    return batch, sizes.astype(np.int32)


@dataclasses.dataclass
class AspectBatches:
    """What :func:`aspect_batches` returns.

    Attributes:
        dataset: ``tf.data.Dataset`` of ``((images, valid_sizes), targets)`` (or
            ``(images, valid_sizes)`` without targets); images float32 ``(B, H, W, 3)`` 0..255,
            zero-padded at the bottom/right; valid_sizes int32 ``(B, 2)``.
        order: row indices into the (filtered) ids table in the order the dataset yields them
            (all epochs concatenated).
        batches: the plan (list of index arrays; all epochs).
        ids: the ids table rows that are used (unreadable files removed), index reset.
        sizes: resized ``(h, w)`` per row of ``ids``.
        steps_per_epoch: batches per epoch.
        failed: ``(image_id, path, reason)`` of skipped images.
        padding_ratio: canvas pixels / image pixels of the first epoch (of the fixed canvas
            with ``canvas=``).
    """

    dataset: object
    order: np.ndarray
    batches: list
    ids: object
    sizes: np.ndarray
    steps_per_epoch: int
    failed: list
    padding_ratio: float


def aspect_batches(ids, batch_size: int = 16, *, shorter_side: Optional[int] = 500,
                   max_side: Optional[int] = None, targets=None, shuffle: bool = False,
                   seed: int = 0, epochs: int = 1, n_buckets: Optional[int] = None,
                   drop_remainder: bool = False, sizes=None, num_parallel_calls=None,
                   prefetch: int = 2, bucket_batches: int = 4, aspect_step: Optional[float] = 0.1,
                   canvas=None, first_epoch: int = 0, input_context=None) -> AspectBatches:
    """tf.data pipeline of whole images batched by aspect ratio (Murray & Gordo 2017 §3.2, §3.4).

    Args:
        ids: ids table (``image_path`` column; ``image_id`` for error reports) or a list of paths.
        batch_size: images per batch (paper: 128 with an M40; use gradient accumulation).
        shorter_side: resize so that the shorter side is this (paper: 500; ``None`` keeps the
            original size).
        max_side: optional cap on the longer side after that.
        targets: ``(N, K)`` array of targets per row (e.g. ``ku.data.readers.distributions(ids)``),
            ``"distributions"`` to take them from the ids table, or None (no targets).
        shuffle, seed, n_buckets, drop_remainder, bucket_batches, aspect_step: the batch plan,
            see :func:`plan_batches`.
        epochs: number of epochs in the dataset (each with its own shuffle when ``shuffle``);
            pass ``steps_per_epoch`` to ``fit``.
        first_epoch: the epoch number of the dataset's first epoch (its draws are those of
            ``plan_batches(epoch=first_epoch)``, then ``first_epoch + 1``, ...): a run resumed at
            epoch ``k`` continues with the batches of the uninterrupted run.
        sizes: known original ``(N, 2)`` sizes (skips reading the headers).
        num_parallel_calls: for the decode map (default ``tf.data.AUTOTUNE``).
        prefetch: batches to prefetch (0: none).
        canvas: ``(H, W)`` (or an int): pad every batch to this fixed canvas instead of the
            batch's largest image (Jia et al. 2019 §III-A, 800 x 800 on AVA) -- the reference that
            the buckets are compared with; ``"max"``: the smallest canvas that holds every image
            of the set in either orientation (``max side x max side``). An image that does not
            fit raises ``ValueError``. Default None: bucketed canvases.
        input_context: a ``tf.distribute.InputContext`` (as passed by
            ``strategy.distribute_datasets_from_function``; :func:`ku.training.fit_aspect_batches`):
            ``batch_size`` is then the *global* batch size; every planned batch is split into
            ``num_replicas_in_sync`` slices (``numpy.array_split``, in plan order) and this input
            pipeline yields only its replicas' slices, one element per replica and step, so every
            worker reads and decodes only its own images. Each slice is padded to the canvas of the
            whole global batch, so every image sees exactly the padding of a single-process run
            (equal outputs also without masking). Planned batches with fewer images than replicas
            are dropped on every pipeline (all workers run the same number of steps).

    Returns:
        :class:`AspectBatches`. Unreadable images are skipped, logged and listed in ``failed``.
    """
    import pandas as pd
    import tensorflow as tf

    batch_size = _check_batch_size(batch_size)
    if isinstance(ids, pd.DataFrame):
        if "image_path" not in ids.columns:
            raise ValueError("aspect_batches: the ids table has no 'image_path' column")
        table = ids.reset_index(drop=True)
    else:
        paths = [os.fspath(p) for p in ids]
        table = pd.DataFrame({"image_id": [os.path.basename(p) for p in paths], "image_path": paths})
    if isinstance(targets, str):
        if targets != "distributions":
            raise ValueError(f"aspect_batches: targets must be an array, 'distributions' or None, got {targets!r}")
        from ku.data.readers import distributions

        targets = distributions(table)
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim == 1:
            targets = targets[:, None]
        if len(targets) != len(table):
            raise ValueError(f"aspect_batches: targets has {len(targets)} rows but the ids table has {len(table)}")

    paths = table["image_path"].astype(str).tolist()
    if sizes is None:
        sizes, bad = image_sizes(paths)
    else:
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        if len(sizes) != len(table):
            raise ValueError(f"aspect_batches: sizes has {len(sizes)} rows but the ids table has {len(table)}")
        bad = [(i, paths[i], "size <= 0") for i in np.flatnonzero((sizes < 1).any(axis=1))]
    failed = []
    if bad:
        ids_col = table["image_id"].astype(str).tolist() if "image_id" in table else paths
        for i, p, reason in bad:
            logger.warning("aspect_batches: skipping image %s (%s): %s", ids_col[i], p, reason)
            failed.append((ids_col[i], p, reason))
        keep = np.setdiff1d(np.arange(len(table)), [i for i, _, _ in bad])
        table = table.iloc[keep].reset_index(drop=True)
        sizes = sizes[keep]
        paths = [paths[i] for i in keep]
        if targets is not None:
            targets = targets[keep]
    rs = resized_sizes(sizes, shorter_side, max_side) if len(sizes) else np.zeros((0, 2), np.int64)
    canvas = _canvas_size(canvas, rs)

    n_rep, mine = 1, [0]
    if input_context is not None:
        n_rep = int(input_context.num_replicas_in_sync)
        n_pipe = int(input_context.num_input_pipelines)
        if n_rep % n_pipe:
            raise ValueError(f"aspect_batches: {n_rep} replicas do not divide into {n_pipe} input pipelines")
        per = n_rep // n_pipe
        mine = list(range(int(input_context.input_pipeline_id) * per, (int(input_context.input_pipeline_id) + 1) * per))
    batches = []
    steps = None
    for epoch in range(int(first_epoch), int(first_epoch) + int(epochs)):
        plan = plan_batches(rs, batch_size, n_buckets=n_buckets, shuffle=shuffle, seed=seed,
                            epoch=epoch, drop_remainder=drop_remainder,
                            bucket_batches=bucket_batches, aspect_step=aspect_step)
        if n_rep > 1:  # every replica needs at least one image per step
            plan = [b for b in plan if len(b) >= n_rep]
        steps = len(plan) if steps is None else steps
        batches += plan
    order = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    if not steps:
        ratio = float("nan")
    elif canvas is None:
        ratio = padding_ratio(rs, batches[:steps])
    else:
        used = np.concatenate(batches[:steps])
        ratio = float(len(used) * canvas[0] * canvas[1] / (rs[used, 0] * rs[used, 1]).astype(np.float64).sum())

    path_t = tf.constant(paths if paths else [""], dtype=tf.string)
    size_t = tf.constant(rs if len(rs) else np.zeros((1, 2), np.int64), dtype=tf.int32)
    target_t = None if targets is None else tf.constant(targets if len(targets) else np.zeros((1, 1), np.float32))

    def load(i):
        image = decode_resize(tf.io.read_file(tf.gather(path_t, i)), tf.gather(size_t, i))
        size = tf.gather(size_t, i)
        if target_t is None:
            return image, size
        return image, size, tf.gather(target_t, i)

    parallel = num_parallel_calls or tf.data.AUTOTUNE

    # dataset elements: (row indices, canvas (H, W)) -- a planned batch, or with input_context
    # this pipeline's slices of it, padded to the whole batch's canvas
    elements, canvases = [], []
    for b in batches:
        whole = canvas if canvas is not None else tuple(int(v) for v in rs[b].max(axis=0))
        parts = [b] if input_context is None else [np.array_split(b, n_rep)[j] for j in mine]
        for part in parts:
            elements.append(part.tolist())
            canvases.append(whole)

    def one_batch(idx, hw):  # idx: row indices (<= batch_size of them); hw: the canvas
        inner = tf.data.Dataset.from_tensor_slices(idx)
        inner = inner.map(load, num_parallel_calls=parallel, deterministic=True)
        image_shape = [canvas[0], canvas[1], 3] if canvas is not None else tf.concat([hw, [3]], axis=0)
        shapes = (image_shape, [2]) + (() if target_t is None else ([None],))
        return inner.padded_batch(batch_size, padded_shapes=shapes)  # exactly one batch, zeros at the bottom/right

    plan_t = tf.ragged.constant(elements, dtype=tf.int64, ragged_rank=1) \
        if elements else tf.ragged.constant([[0]], dtype=tf.int64)[:0]
    canvas_t = tf.constant(np.asarray(canvases, np.int64).reshape(-1, 2))
    ds = tf.data.Dataset.from_tensor_slices((plan_t, canvas_t)).flat_map(one_batch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(elements)))  # flat_map hides it
    if input_context is not None:  # sliced here, explicitly: tf.distribute must not shard again
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(opts)

    if target_t is None:
        ds = ds.map(lambda im, s: (im, s))
    else:
        ds = ds.map(lambda im, s, t: ((im, s), t))
    if prefetch:
        ds = ds.prefetch(prefetch)
    return AspectBatches(dataset=ds, order=order, batches=batches, ids=table, sizes=rs,
                         steps_per_epoch=steps or 0, failed=failed, padding_ratio=ratio)


def demo_padding_report(batch_size: int = 16, shorter_side: Optional[int] = 500, **demo_kwargs) -> dict:
    """:func:`padding_report` for the demo set (``ku.data.demo.load_demo(**demo_kwargs)``)."""
    from ku.data.demo import load_demo

    ids = load_demo(**demo_kwargs)
    sizes, failed = image_sizes(ids["image_path"].tolist())
    sizes = sizes[(sizes > 0).all(axis=1)]
    return padding_report(sizes, batch_size, shorter_side=shorter_side, fixed_canvas=(800, 800))
