"""tf.data input pipelines of Jia, Li, He 2019: padded full-resolution canvases and the ablations.

Main mode ``"pad_roi"`` (§III-A, §IV-B): every image is zero-padded into one fixed canvas
(800 x 800 on AVA), anchored at the top-left (pad at the bottom and on the right), and its size
is recorded so that the model's ROI pooling only reads the image's region. Images larger than the
canvas are scaled down (area interpolation, aspect ratio kept) until they fit; this is printed
per image (``tf.print`` to stderr) since it changes the input. AVA's images are at most 800 px on
their longer side, so at the paper's canvas nothing is scaled.

Augmentation (§IV-B, §IV-F): the collection "contains the original image, the horizontal flipped
image, and four cropped images" taken at the four corners, keeping the aspect ratio, "1/8 along
one side" cut off: the crops are ``floor(7/8 h) x floor(7/8 w)`` (as in Hosu et al. [31], whose
augmentation Jia says they reuse), not resized. Training draws one of the six per image and step
(seeded); testing averages the predictions over all six (:data:`JIA_AUGMENTATIONS`).
``augment="flip"`` (Table V's "Flip" row) uses only the original and the mirrored image.

Ablation modes (§IV-D, Table III), all producing 299 x 299 inputs:

* ``"resize"``: resize to 340 x 340 (aspect ratio not kept), random 299 x 299 crop and random
  horizontal flip; test: the mean over 20 random crops/flips (seeded per image);
* ``"resized_pad"``: the image (after the six-way augmentation) scaled, aspect ratio kept, so that
  it fills a 299 x 299 canvas along its longer side, then padded like ``"pad_roi"``; test: the
  six-way average, "the same procedure as our proposed method";
* ``"random_crop"``: like ``"resize"`` but the 299 x 299 crop is taken from the original image
  (images with a side below 299 are first scaled up so that their shorter side is 299; ku's
  choice, the paper does not say).

Elements are ``(inputs, target)`` with ``inputs = {"image": float32 (B, H, W, 3) in 0..255,
"valid_size": int32 (B, 2) (height, width of the image inside the canvas), "theme": int32 (B,)}``
(``"theme"`` only with ``theme=True``) and ``target`` the vote distribution ``float32 (B, K)``.
Only TensorFlow graph ops are used in the image path (decode, crop, flip, resize, pad), so the
pipeline can feed a GPU without Python in the loop. TF's decoders do not apply EXIF orientation
(AVA and Photo.net images carry none); files that fail to decode are skipped with a warning
(``ignore_errors(log_warning=True)``).
"""
from __future__ import annotations

import logging
import math
import sys

import numpy as np

from ku.data.augment import DEFAULT_CROP_FRACTION, HOSU_AUGMENTATIONS, ORIGINAL, Augmentation

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "JIA_AUGMENTATIONS",
    "FLIP_AUGMENTATIONS",
    "canvas_dataset",
    "evaluation_views",
    "n_test_views",
    "targets_from_ids",
    "canvas_image",
    "canvas_fit_size",
]

MODES = ("pad_roi", "resize", "resized_pad", "random_crop")
#: The mirrored, uncropped image.
MIRRORED = Augmentation("mirrored", None, True)
#: Jia et al. §IV-B: original, mirrored, four corner crops (7/8 of each side, not mirrored).
JIA_AUGMENTATIONS = (ORIGINAL, MIRRORED) + tuple(a for a in HOSU_AUGMENTATIONS if not a.flip)
#: Table V "Flip": original and mirrored only.
FLIP_AUGMENTATIONS = (ORIGINAL, MIRRORED)
_AUGMENT = {"flip_crop": JIA_AUGMENTATIONS, "flip": FLIP_AUGMENTATIONS, "none": (ORIGINAL,)}

#: Ablation sizes of §IV-D: resize to 340 x 340, crop 299 x 299; 20 test augmentations.
RESIZE_TO, CROP, N_RANDOM_TEST_VIEWS = 340, 299, 20


def _augmentations(augment):
    if augment not in _AUGMENT:
        raise ValueError(f"augment must be one of {sorted(_AUGMENT)}, got {augment!r}")
    return _AUGMENT[augment]


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def n_test_views(mode: str = "pad_roi", augment: str = "flip_crop", n_random: int = N_RANDOM_TEST_VIEWS) -> int:
    """Number of test views per image that :func:`evaluation_views` yields (6, 2, 1 or ``n_random``)."""
    _check_mode(mode)
    if mode in ("resize", "random_crop"):
        return int(n_random)
    return len(_augmentations(augment))


def canvas_size(mode, canvas):
    """(height, width) of the network input for a mode."""
    if mode in ("resize", "random_crop", "resized_pad"):
        return CROP, CROP
    if isinstance(canvas, int):
        return canvas, canvas
    h, w = (int(c) for c in canvas)
    return h, w


def _gaussian_distribution(mean, std, k):
    """Discretised normal N(mean, std^2) on the scores 1..k (mass in [s - 0.5, s + 0.5], tails
    folded into 1 and k)."""
    edges = np.arange(1, k) + 0.5
    z = (edges[None, :] - mean[:, None]) / np.maximum(std[:, None], 1e-3)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    cdf = np.concatenate([np.zeros((len(mean), 1)), cdf, np.ones((len(mean), 1))], axis=1)
    return np.diff(cdf, axis=1)


def targets_from_ids(ids) -> np.ndarray:
    """``(N, K)`` float32 vote distributions of an ids table (``dist_1..dist_K`` columns).

    Rows whose histogram is unknown (Photo.net lists with only mean and standard deviation, Jia
    §IV-A: "voting information are lost in some images") get a discretised normal with that mean
    and standard deviation instead (ku's choice; the paper does not say what it did); the number
    of such rows is logged.
    """
    from ku.data.readers import distributions

    d = np.asarray(distributions(ids), dtype=np.float64)
    bad = ~np.isfinite(d).all(axis=1)
    if bad.any():
        mos, std = ids["mos"].to_numpy(float)[bad], ids["std"].to_numpy(float)[bad]
        if not (np.isfinite(mos).all() and np.isfinite(std).all()):
            raise ValueError(f"targets_from_ids: {int(bad.sum())} row(s) have neither a vote histogram nor "
                             f"mean and std, e.g. image_id {ids['image_id'].to_numpy()[bad][0]!r}")
        d[bad] = _gaussian_distribution(mos, std, d.shape[1])
        logger.info("targets_from_ids: %d image(s) without vote histogram get a discretised normal "
                    "from their mean and standard deviation", int(bad.sum()))
    return d.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# graph ops on one image
# ---------------------------------------------------------------------------------------------
def _decode(path):
    import tensorflow as tf

    from ku.data.tf_decode import decode_image_uint8

    return decode_image_uint8(tf.io.read_file(path))


def _resize(img, h, w):
    """Resize uint8/float image to (h, w): area for shrinking, bilinear for enlarging; float32."""
    import tensorflow as tf

    img = tf.cast(img, tf.float32)
    shape = tf.shape(img)
    shrink = tf.logical_and(h <= shape[0], w <= shape[1])
    out = tf.cond(shrink,
                  lambda: tf.image.resize(img, tf.stack([h, w]), method="area"),
                  lambda: tf.image.resize(img, tf.stack([h, w]), method="bilinear", antialias=True))
    return tf.clip_by_value(out, 0.0, 255.0)


def canvas_fit_size(hw, ch, cw, *, enlarge=False):
    """The size an image of ``hw = (h, w)`` (int32 tensor) gets on a ``ch x cw`` canvas, aspect
    kept: ``(scale, nh, nw)`` with ``scale = min(ch / h, cw / w)``, capped at 1 unless ``enlarge``
    (images are only scaled down to fit, Jia et al. 2019 §III-A; ``resized_pad`` fills the canvas),
    ``nh = round(h * scale)`` clipped to ``1..ch`` (``nw`` likewise). Graph ops; the data pipeline
    (:func:`canvas_image`) and the exported model (:mod:`ku.export`) use this one rule."""
    import tensorflow as tf

    hf, wf = tf.cast(hw[0], tf.float64), tf.cast(hw[1], tf.float64)
    scale = tf.minimum(tf.cast(ch, tf.float64) / hf, tf.cast(cw, tf.float64) / wf)
    if not enlarge:
        scale = tf.minimum(scale, 1.0)
    nh = tf.clip_by_value(tf.cast(tf.round(hf * scale), tf.int32), 1, ch)
    nw = tf.clip_by_value(tf.cast(tf.round(wf * scale), tf.int32), 1, cw)
    return scale, nh, nw


def _scale_to_fit(img, ch, cw, *, enlarge=False, path=None, log=True):
    """Scale (aspect kept) so that the image fits into ch x cw; only down unless ``enlarge``."""
    import tensorflow as tf

    shape = tf.shape(img)
    h, w = shape[0], shape[1]
    scale, nh, nw = canvas_fit_size(shape[:2], ch, cw, enlarge=enlarge)
    if enlarge:  # resized_pad: always fill the canvas along the longer side
        return tf.cond(tf.logical_or(nh != h, nw != w), lambda: _resize(img, nh, nw),
                       lambda: tf.cast(img, tf.float32))

    def scaled():
        if log:
            tf.print("ku.data.canvas: image", "" if path is None else path, "of", h, "x", w,
                     "is larger than the", ch, "x", cw, "canvas; scaled down to", nh, "x", nw,
                     output_stream=sys.stderr)
        return _resize(img, nh, nw)

    return tf.cond(scale < 1.0, scaled, lambda: tf.cast(img, tf.float32))


def _pad(img, ch, cw):
    """Zero-pad at the bottom/right into ch x cw; returns (canvas float32, valid size int32)."""
    import tensorflow as tf

    shape = tf.shape(img)
    canvas = tf.image.pad_to_bounding_box(tf.cast(img, tf.float32), 0, 0, ch, cw)
    canvas.set_shape([ch, cw, 3])
    return canvas, tf.stack([shape[0], shape[1]])


def canvas_image(img, aug_index, *, mode="pad_roi", canvas=800, augment="flip_crop", seed=None,
                 path=None, log_resized=True):
    """One input of the network from one decoded image (graph ops; usable in ``Dataset.map``).

    Args:
        img: (H, W, 3) uint8/float tensor in 0..255.
        aug_index: int32 scalar: index into the augmentation list of ``augment`` for
            ``pad_roi`` / ``resized_pad``; ignored by the random modes.
        mode: one of :data:`MODES`.
        canvas: canvas side (or (h, w)) for ``pad_roi``.
        augment: ``"flip_crop"``, ``"flip"`` or ``"none"``.
        seed: (2,) int stateless seed for the random modes' crop position and flip.
        path: file name for the "scaled down" message.
    Returns:
        ``(image (H, W, 3) float32, valid_size (2,) int32)``.
    """
    import tensorflow as tf

    from ku.data.augment import augment_tf

    _check_mode(mode)
    ch, cw = canvas_size(mode, canvas)
    if mode in ("pad_roi", "resized_pad"):
        augs = _augmentations(augment)
        out = augment_tf(img, aug_index, DEFAULT_CROP_FRACTION, augmentations=augs)
        out = _scale_to_fit(out, ch, cw, enlarge=(mode == "resized_pad"), path=path, log=log_resized)
        return _pad(out, ch, cw)
    # random 299 crop + random flip, after resizing to 340 x 340 or from the original image
    if mode == "resize":
        src = _resize(img, tf.constant(RESIZE_TO), tf.constant(RESIZE_TO))
    else:
        shape = tf.shape(img)
        short = tf.minimum(shape[0], shape[1])
        f = tf.maximum(tf.cast(CROP, tf.float64) / tf.cast(short, tf.float64), 1.0)
        nh = tf.maximum(tf.cast(tf.math.ceil(tf.cast(shape[0], tf.float64) * f), tf.int32), CROP)
        nw = tf.maximum(tf.cast(tf.math.ceil(tf.cast(shape[1], tf.float64) * f), tf.int32), CROP)
        src = tf.cond(short < CROP, lambda: _resize(img, nh, nw), lambda: tf.cast(img, tf.float32))
    shape = tf.shape(src)
    u = tf.random.stateless_uniform([3], seed=seed, dtype=tf.float32)
    y0 = tf.cast(tf.floor(u[0] * tf.cast(shape[0] - CROP + 1, tf.float32)), tf.int32)
    x0 = tf.cast(tf.floor(u[1] * tf.cast(shape[1] - CROP + 1, tf.float32)), tf.int32)
    y0 = tf.clip_by_value(y0, 0, shape[0] - CROP)
    x0 = tf.clip_by_value(x0, 0, shape[1] - CROP)
    out = src[y0:y0 + CROP, x0:x0 + CROP]
    out = tf.cond(u[2] < 0.5, lambda: out, lambda: tf.reverse(out, axis=[1]))
    out = tf.ensure_shape(out, [CROP, CROP, 3])
    return out, tf.constant([CROP, CROP], tf.int32)


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------
def _base(ids, targets, theme):
    import tensorflow as tf

    if "image_path" not in ids.columns:
        raise ValueError(f"ids table has no 'image_path' column (columns: {list(ids.columns)})")
    paths = ids["image_path"].astype(str).to_numpy()
    _check_regular_files(paths)
    themes = ids["theme_index"].to_numpy(np.int32) if (theme and "theme_index" in ids.columns) \
        else np.zeros(len(ids), np.int32)
    if theme and "theme_index" not in ids.columns:
        logger.warning("canvas_dataset: ids table has no 'theme_index'; every image gets the unknown theme 0")
    y = targets_from_ids(ids) if targets is None else np.asarray(targets, np.float32)
    if len(y) != len(ids):
        raise ValueError(f"canvas_dataset: {len(y)} targets for {len(ids)} images")
    return tf.data.Dataset.from_tensor_slices((paths, themes, y, np.arange(len(ids), dtype=np.int64)))


def _check_regular_files(paths):
    """ValueError naming every path that is not a regular file (``tf.io.read_file`` would block
    forever on a named pipe, or read /dev/zero until memory runs out); missing files are left to
    the reader's own error."""
    import os

    from ku.data.images import special_file_reason

    bad = []
    for p in paths:
        try:
            reason = special_file_reason(os.stat(p), p)
        except OSError:
            continue
        if reason:
            bad.append(f"{p}: {reason}")
    if bad:
        raise ValueError(f"canvas_dataset: {len(bad)} image path(s) are not regular files; remove them "
                         "from the ids table: " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))


def _pack(image, size, theme_index, y, theme, with_targets):
    x = {"image": image, "valid_size": size}
    if theme:
        x["theme"] = theme_index
    return (x, y) if with_targets else x


def canvas_dataset(ids, *, mode="pad_roi", canvas=800, augment="flip_crop", training=True,
                   batch_size=16, seed=0, theme=True, targets=None, shuffle=None,
                   drop_remainder=False, log_resized=True, num_parallel_calls=None):
    """Training / validation dataset of network inputs (see the module docstring).

    Args:
        ids: ids table (``image_path``, ``theme_index``, ``dist_*``; e.g. ``load_demo()`` rows).
        mode: one of :data:`MODES`.
        canvas: canvas side for ``pad_roi`` (800 in the paper; 400 for Table IV's first row).
        augment: ``"flip_crop"`` (paper), ``"flip"`` (Table V) or ``"none"``.
        training: draw one random augmentation / crop per image and step (seeded; a new draw
            every epoch); False: the unaugmented image (``pad_roi``/``resized_pad``: the
            original; random modes: view 0 of :func:`evaluation_views`, a fixed seeded crop).
        batch_size: 16 in the paper (§IV-B).
        seed: shuffling and augmentation seed.
        theme: include the ``"theme"`` input.
        targets: ``(N, K)`` targets; default :func:`targets_from_ids`.
        shuffle: default ``training``.
    Returns:
        ``tf.data.Dataset`` of ``(inputs dict, target)`` batches.
    """
    import tensorflow as tf

    _check_mode(mode)
    augs = _augmentations(augment)
    shuffle = training if shuffle is None else shuffle
    ds = _base(ids, targets, theme)
    if shuffle:
        ds = ds.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    n_aug = len(augs)
    if training:
        rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, rand))
    else:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()))

    def load(item, r):
        path, theme_index, y, idx = item
        s = tf.stack([tf.cast(r % (2**31 - 1), tf.int32), tf.cast(idx % (2**31 - 1), tf.int32)])
        a = tf.random.stateless_uniform([], seed=s, minval=0, maxval=n_aug, dtype=tf.int32) \
            if training else tf.constant(0, tf.int32)
        if not training and mode in ("resize", "random_crop"):
            s = tf.stack([tf.constant(int(seed) % (2**31 - 1), tf.int32), tf.cast(idx, tf.int32) * 1000])
        img, size = canvas_image(_decode(path), a, mode=mode, canvas=canvas, augment=augment, seed=s,
                                 path=path, log_resized=log_resized)
        return _pack(img, size, theme_index, y, theme, True)

    ds = ds.map(load, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def evaluation_views(ids, *, mode="pad_roi", canvas=800, augment="flip_crop", batch_size=16, seed=0,
               theme=True, n_random=N_RANDOM_TEST_VIEWS, log_resized=True):
    """All test views of every image, image-major: ``n_test_views(mode, augment)`` consecutive
    inputs per image (the six augmentations of §IV-B, or ``n_random`` seeded random crops for the
    ``resize`` / ``random_crop`` ablations, §IV-D). Average the predictions over each image's
    views (:func:`ku.models.theme_roi.predict_views`).

    Unlike :func:`canvas_dataset`, a file that cannot be read raises (skipping here would shift
    the views of the following images); check files first (``ku.data.images.check_images``).

    Returns:
        ``tf.data.Dataset`` of input dicts (no targets), batches of ``batch_size`` views.
    """
    import tensorflow as tf

    _check_mode(mode)
    n_views = n_test_views(mode, augment, n_random)
    ds = _base(ids, np.zeros((len(ids), 1), np.float32), theme)
    ch, cw = canvas_size(mode, canvas)

    def views(path, theme_index, y, idx):
        img = _decode(path)

        def one(a):
            s = tf.stack([tf.constant(int(seed) % (2**31 - 1), tf.int32), tf.cast(idx, tf.int32) * 1000 + a])
            return canvas_image(img, a, mode=mode, canvas=canvas, augment=augment, seed=s, path=path,
                                log_resized=log_resized)

        imgs, sizes = tf.map_fn(one, tf.range(n_views, dtype=tf.int32),
                                fn_output_signature=(tf.TensorSpec([ch, cw, 3], tf.float32),
                                                     tf.TensorSpec([2], tf.int32)))
        return _pack(imgs, sizes, tf.fill([n_views], theme_index), None, theme, False)

    ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
