"""ROI pooling (Fast R-CNN) and ROI align (Mask R-CNN) as vectorised Keras layers.

Jia, Li, He, "Theme Aware Aesthetic Distribution Prediction with Full Resolution Photos", 2019,
§III-A, eqs. 1-3: images are zero-padded into one canvas, the image's box is mapped onto a feature
map with ``round(x / tau)`` (eq. 1), and the box is max-pooled to a fixed grid whose bin ``m``
spans ``floor(m * rho) .. ceil((m + 1) * rho)`` (eqs. 2-3, ``rho`` = box size / output size). The
"Align" rows of Tables I/II replace it with ROI align (bilinear sampling, He et al. 2017).

Box format (both layers): ``(y1, x1, y2, x2)`` in *input-image pixels* (the coordinate system of
the network input, multiplied by ``spatial_scale = 1 / tau`` to reach the feature map), one box
per image ``(B, 4)`` or ``K`` boxes per image ``(B, K, 4)``.

* :class:`RoiPooling2D` follows the Fast R-CNN operator (``roi_pooling_layer.cpp``; the same as
  ``torchvision.ops.roi_pool``): the corners are *pixel indices*, both inclusive; an image of
  ``h x w`` pixels at the top-left of the canvas is the box ``(0, 0, h - 1, w - 1)``
  (:func:`image_boxes` with ``convention="pixels"``).
* :class:`RoiAlign2D` follows ``torchvision.ops.roi_align``: with ``aligned=False`` (default,
  the original Mask R-CNN operator) the same inclusive pixel-index boxes as ROI pooling, sampled
  between the pixel centres; with ``aligned=True`` continuous coordinates in which pixel ``i``
  covers ``[i, i + 1)`` (an ``h x w`` image is ``(0, 0, h, w)``, ``convention="continuous"``).

Both are built from gathers and reductions on dynamic shapes (no loop over the batch, boxes or
bins; ROI pooling only steps over the ``k ~ ceil(rho) + 1`` positions of a window in a
``tf.while_loop``), work with ``None`` batch/spatial sizes inside ``tf.function`` and SavedModels,
and are differentiable with respect to the feature map.
"""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["RoiPooling2D", "RoiAlign2D", "ImageBoxes", "image_boxes", "roi_bin_bounds"]

_MODES = ("max", "average")


def _pair(value, name, cls):
    if isinstance(value, int):
        value = (value, value)
    try:
        value = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{cls}: {name} must be an int or two ints, got {value!r}") from None
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{cls}: {name} must be two positive ints, got {value!r}")
    return value


def _check_scale(spatial_scale, cls):
    try:
        s = float(spatial_scale)
    except (TypeError, ValueError):
        raise ValueError(f"{cls}: spatial_scale must be a positive number, got {spatial_scale!r}") from None
    if not s > 0:
        raise ValueError(f"{cls}: spatial_scale must be a positive number, got {spatial_scale!r}")
    return s


def image_boxes(sizes, convention: str = "pixels", dtype="float32"):
    """Boxes of images anchored at the top-left of a canvas, from their sizes.

    Args:
        sizes: ``(B, 2)`` (height, width) of each image (tensor or array, any numeric dtype).
        convention: ``"pixels"``: inclusive pixel indices ``(0, 0, h - 1, w - 1)`` (Fast R-CNN;
            :class:`RoiPooling2D`, :class:`RoiAlign2D` with ``aligned=False``); ``"continuous"``:
            ``(0, 0, h, w)`` (:class:`RoiAlign2D` with ``aligned=True``).
        dtype: of the result.
    Returns:
        ``(B, 4)`` boxes ``(y1, x1, y2, x2)``.
    """
    if convention not in ("pixels", "continuous"):
        raise ValueError(f"image_boxes: convention must be 'pixels' or 'continuous', got {convention!r}")
    s = ops.cast(sizes, "float32")
    if convention == "pixels":
        s = s - 1.0
    zeros = ops.zeros_like(s[:, :1])
    return ops.cast(ops.concatenate([zeros, zeros, s[:, :1], s[:, 1:2]], axis=-1), dtype)


def _round_half_away(x):
    """C ``round()`` (halves away from zero), as in the Fast R-CNN operator; ``ops.round`` would
    round halves to even (``148.5 -> 148``), which changes eq. 1 at stride 2."""
    return ops.sign(x) * ops.floor(ops.abs(x) + 0.5)


def roi_bin_bounds(start, end, out_size: int, length):
    """Bin bounds of ROI pooling along one axis, Jia et al. eqs. 2-3 (Fast R-CNN).

    Args:
        start, end: ``(R,)`` int32 first and last (inclusive) feature-map index of each box, i.e.
            eq. 1 already applied. The box length is ``max(end - start + 1, 1)``.
        out_size: number of bins ``n``.
        length: feature-map size along the axis (bins are clipped to ``[0, length]``).
    Returns:
        ``(lo, hi)``: ``(R, n)`` int32, bin ``m`` covers ``[lo, hi)``:
        ``lo = start + floor(m * size / n)``, ``hi = start + ceil((m + 1) * size / n)``, computed in
        integers (exact; the float32 arithmetic of the Caffe operator can be off by one when
        ``m * size`` is a multiple of ``n``), then clipped. ``lo >= hi`` marks an empty bin.
    """
    start = ops.cast(start, "int32")
    size = ops.maximum(ops.cast(end, "int32") - start + 1, 1)[:, None]
    m = ops.arange(out_size, dtype="int32")[None, :]
    lo = (m * size) // out_size
    hi = -((-(m + 1) * size) // out_size)
    length = ops.cast(length, "int32")
    lo = ops.clip(lo + start[:, None], 0, length)
    hi = ops.clip(hi + start[:, None], 0, length)
    return lo, hi


def _flatten_boxes(boxes, cls):
    """(B, 4) or (B, K, 4) -> (R, 4) float32 boxes, (R,) int32 image index, K or None."""
    rank = len(boxes.shape)
    if rank not in (2, 3) or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"{cls}: boxes must have shape (B, 4) or (B, K, 4), got {tuple(boxes.shape)}")
    boxes = ops.cast(boxes, "float32")
    if rank == 2:
        return boxes, ops.arange(ops.shape(boxes)[0], dtype="int32"), None
    shape = ops.shape(boxes)
    b, k = shape[0], shape[1]
    flat = ops.reshape(boxes, (-1, 4))
    bidx = ops.repeat(ops.arange(b, dtype="int32"), k)
    return flat, bidx, k


def _pool_windows(gather, lo, hi, length, mode, mask_axes):
    """Max / mean over the windows ``[lo, hi)`` of one axis, as a running reduction over the
    offsets ``j = 0 .. k - 1`` (``k`` = the longest window of the batch, dynamic).

    ``gather(pos)`` takes ``(R, n)`` positions and returns the ``(R, ...)`` slices at them;
    ``mask_axes`` are the axes at which ``(R, n)`` masks gain singleton dimensions to broadcast
    against those slices. Each step gathers one position of every window and folds it into the
    accumulator, so no ``(R, n, k, ...)`` tensor is built and the max gradient is
    ``tf.maximum``'s: it goes to the accumulator on ties, i.e. to the *first* maximum of the
    window, like the Fast R-CNN operator (``reduce_max`` would split it between ties). Empty
    windows (``lo >= hi``) give 0.
    """
    import tensorflow as tf

    width = tf.maximum(hi - lo, 0)
    kmax = tf.maximum(tf.reduce_max(width), 1)
    last = tf.maximum(tf.cast(length, "int32") - 1, 0)

    def expand(mask):
        for axis in mask_axes:
            mask = tf.expand_dims(mask, axis)
        return mask

    def term(j):
        g = gather(tf.clip_by_value(lo + j, 0, last))
        fill = tf.constant(float("-inf") if mode == "max" else 0.0, g.dtype)
        return tf.where(expand(j < width), g, fill)

    def body(j, acc):
        g = term(j)
        return j + 1, tf.maximum(acc, g) if mode == "max" else acc + g

    _, acc = tf.while_loop(lambda j, _: j < kmax, body, (tf.constant(1), term(0)))
    if mode == "max":
        return tf.where(expand(width > 0), acc, tf.zeros_like(acc))
    return acc / tf.cast(expand(tf.maximum(width, 1)), acc.dtype)


@keras.saving.register_keras_serializable(package="ku")
class RoiPooling2D(keras.layers.Layer):
    """ROI max (or average) pooling of boxes to a fixed grid, Jia et al. 2019 §III-A eqs. 1-3.

    For every box ``(y1, x1, y2, x2)`` (input-image pixel indices, inclusive, see the module
    docstring):

    1. eq. 1: ``start = round(y1 * spatial_scale)``, ``end = round(y2 * spatial_scale)`` (C
       rounding, halves away from zero), same for x; box size ``max(end - start + 1, 1)``;
    2. eqs. 2-3: bin ``m`` of ``n`` covers rows ``start + floor(m * rho) .. start + ceil((m + 1)
       * rho) - 1`` with ``rho = size / n`` (neighbouring bins may share a row; a box smaller than
       the grid repeats rows), clipped to the feature map;
    3. each output cell is the max (``mode="max"``, the paper) or the mean (``"average"``) of
       its bin, per channel; a bin that is empty after clipping gives 0.

    Nothing outside a box reaches the output (padding "is cut off", eq. 4), and the gradient of
    max pooling goes to the first maximum of each bin (ties broken per axis: rows are pooled
    first, then columns). For a whole ``147 x 147`` map pooled to ``73 x 73`` this equals
    Inception-v3's ``MaxPooling2D(3, strides=2)``.

    Computation: the pooling is separable (a bin is a rectangle), so rows are pooled first and
    columns second, each as a running max (or sum) over the ``k`` positions of the windows (``k``
    = the longest window in the batch, ``ceil(rho) + 1``): ``k`` gathers of one row (column) of
    every window, no ``(R, n, k, ...)`` intermediate. The backward pass keeps the ``k`` gathered
    slices, ~``n * k / H`` (about 1.5 for 397 -> 146) times the feature map.

    Inputs: ``[features, boxes]``: ``features (B, H, W, C)``; ``boxes (B, 4)`` or ``(B, K, 4)``
    (float or int, ``(y1, x1, y2, x2)``).
    Output: ``(B, oh, ow, C)`` for ``(B, 4)`` boxes, ``(B, K, oh, ow, C)`` for ``(B, K, 4)``.

    Args:
        output_size: ``(oh, ow)`` or an int (Jia et al.: 146, twice Inception-v3's 73, §III-D).
        spatial_scale: ``1 / tau`` of eq. 1, feature-map pixels per input pixel (0.5 for a
            stride-2 map; 1.0 when boxes are given in feature-map coordinates).
        mode: ``"max"`` (paper) or ``"average"``.
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1.0, mode="max", **kwargs):
        super().__init__(**kwargs)
        self.output_size = _pair(output_size, "output_size", "RoiPooling2D")
        self.spatial_scale = _check_scale(spatial_scale, "RoiPooling2D")
        if mode not in _MODES:
            raise ValueError(f"RoiPooling2D: mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode

    def _check_inputs(self, inputs):
        cls = type(self).__name__
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"{cls}: inputs must be [features (B, H, W, C), boxes (B, 4) or "
                             f"(B, K, 4)], got {type(inputs).__name__}")
        feats, boxes = inputs
        if len(feats.shape) != 4:
            raise ValueError(f"{cls}: features must be (B, H, W, C), got {tuple(feats.shape)}")
        return feats, boxes

    def call(self, inputs):
        import tensorflow as tf

        x, boxes = self._check_inputs(inputs)
        oh, ow = self.output_size
        flat, bidx, k = _flatten_boxes(boxes, "RoiPooling2D")
        corners = ops.cast(_round_half_away(flat * self.spatial_scale), "int32")   # eq. 1
        shape = tf.shape(x)
        h, w = shape[1], shape[2]
        hlo, hhi = roi_bin_bounds(corners[:, 0], corners[:, 2], oh, h)         # eqs. 2-3
        wlo, whi = roi_bin_bounds(corners[:, 1], corners[:, 3], ow, w)
        # rows: (R, oh, W, C), one gathered row of every window per step
        if k is None:  # one box per image: box r is image r
            rows = _pool_windows(lambda pos: tf.gather(x, pos, axis=1, batch_dims=1), hlo, hhi, h,
                                 self.mode, (-1, -1))
        else:
            src = ops.broadcast_to(bidx[:, None], ops.shape(hlo))
            rows = _pool_windows(lambda pos: tf.gather_nd(x, ops.stack([src, pos], axis=-1)), hlo, hhi,
                                 h, self.mode, (-1, -1))
        # columns: (R, oh, ow, C)
        out = _pool_windows(lambda pos: tf.gather(rows, pos, axis=2, batch_dims=1), wlo, whi, w,
                            self.mode, (1, -1))
        if k is not None:
            out = ops.reshape(out, (-1, k, oh, ow, x.shape[-1] if x.shape[-1] is not None
                                    else shape[3]))
        return out

    def compute_output_shape(self, input_shape):
        fshape, bshape = input_shape
        oh, ow = self.output_size
        if len(bshape) == 3:
            return (fshape[0], bshape[1], oh, ow, fshape[3])
        return (fshape[0], oh, ow, fshape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": list(self.output_size), "spatial_scale": self.spatial_scale,
                       "mode": self.mode})
        return config


def _bilinear_axis(coord, length):
    """Per-sample 1-D bilinear taps with torchvision ``roi_align``'s border rules.

    Args:
        coord: (R, S) float32 sample coordinates; length: scalar size of the axis.
    Returns:
        ``(i0, i1, w0, w1)``: (R, S) int32 taps and float32 weights; a sample outside
        ``[-1, length]`` gets weights 0.
    """
    n = ops.cast(length, "float32")
    inside = ops.logical_and(coord >= -1.0, coord <= n)
    c = ops.maximum(coord, 0.0)
    low = ops.floor(c)
    at_end = low >= n - 1.0
    low = ops.where(at_end, n - 1.0, low)
    c = ops.where(at_end, low, c)
    high = ops.where(at_end, low, low + 1.0)
    frac = c - low
    w0 = ops.where(inside, 1.0 - frac, 0.0)
    w1 = ops.where(inside, frac, 0.0)
    last = ops.maximum(ops.cast(length, "int32") - 1, 0)
    i0 = ops.clip(ops.cast(low, "int32"), 0, last)
    i1 = ops.clip(ops.cast(high, "int32"), 0, last)
    return i0, i1, w0, w1


@keras.saving.register_keras_serializable(package="ku")
class RoiAlign2D(keras.layers.Layer):
    """ROI align: bilinear sampling of boxes to a fixed grid (the "Align" rows of Jia et al.
    2019 Tables I/II; He et al. 2017 "Mask R-CNN"; same result as ``torchvision.ops.roi_align``
    with a fixed ``sampling_ratio``).

    For a box ``(y1, x1, y2, x2)`` (see the module docstring) scaled by ``spatial_scale`` (and
    shifted by -0.5 when ``aligned=True``), with box height ``bh = y2 - y1`` (at least 1 when
    ``aligned=False``) and bin height ``bh / oh``: output row ``i`` averages the values sampled
    at ``y1 + i * bh / oh + (s + 0.5) * bh / (oh * sr)`` for ``s = 0 .. sr - 1``, and the same
    along x (``sr * sr`` bilinear samples per bin). A sample outside ``[-1, H]`` counts as 0;
    coordinates in ``[-1, 0)`` are clamped to 0, at or after ``H - 1`` to ``H - 1``
    (torchvision's rules). No rounding anywhere, unlike :class:`RoiPooling2D`.

    Bilinear sampling on a product grid is separable, so rows are interpolated first (two row
    gathers, ``(R, oh * sr, W, C)``), then columns, then the ``sr x sr`` samples of each bin are
    averaged.

    For inclusive pixel-index boxes (``aligned=False``), every sample lies between the centres
    of the first and the last pixel of the box, so values outside the box never contribute.

    Inputs / output: as :class:`RoiPooling2D`.

    Args:
        output_size: ``(oh, ow)`` or an int.
        spatial_scale: feature-map pixels per input pixel.
        sampling_ratio: samples per bin along each axis (``sr``; fixed, > 0).
        aligned: torchvision's ``aligned`` (half-pixel offset, continuous boxes).
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_size = _pair(output_size, "output_size", "RoiAlign2D")
        self.spatial_scale = _check_scale(spatial_scale, "RoiAlign2D")
        if not isinstance(sampling_ratio, int) or sampling_ratio < 1:
            raise ValueError(f"RoiAlign2D: sampling_ratio must be a positive int, got {sampling_ratio!r}")
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def _axis_samples(self, lo, hi, n):
        sr = self.sampling_ratio
        size = hi - lo
        if not self.aligned:
            size = ops.maximum(size, 1.0)
        step = size / float(n * sr)                                   # (R,)
        j = ops.arange(n * sr, dtype="float32")[None, :]              # sample index i * sr + s
        return lo[:, None] + (j + 0.5) * step[:, None]                # (R, n * sr)

    def call(self, inputs):
        import tensorflow as tf

        x, boxes = RoiPooling2D._check_inputs(self, inputs)
        oh, ow = self.output_size
        sr = self.sampling_ratio
        flat, bidx, k = _flatten_boxes(boxes, "RoiAlign2D")
        b = flat * self.spatial_scale - (0.5 if self.aligned else 0.0)
        ys = self._axis_samples(b[:, 0], b[:, 2], oh)
        xs = self._axis_samples(b[:, 1], b[:, 3], ow)
        shape = tf.shape(x)
        h, w = shape[1], shape[2]
        c = x.shape[-1] if x.shape[-1] is not None else shape[3]
        dt = x.dtype
        # rows: (R, oh*sr, W, C)
        y0, y1, wy0, wy1 = _bilinear_axis(ys, h)
        src = ops.broadcast_to(bidx[:, None], ops.shape(y0))
        rows = tf.gather_nd(x, ops.stack([src, y0], -1)) * ops.cast(wy0, dt)[:, :, None, None] \
            + tf.gather_nd(x, ops.stack([src, y1], -1)) * ops.cast(wy1, dt)[:, :, None, None]
        # columns: (R, oh*sr, ow*sr, C)
        x0, x1, wx0, wx1 = _bilinear_axis(xs, w)
        cols = tf.gather(rows, x0, axis=2, batch_dims=1) * ops.cast(wx0, dt)[:, None, :, None] \
            + tf.gather(rows, x1, axis=2, batch_dims=1) * ops.cast(wx1, dt)[:, None, :, None]
        out = ops.reshape(cols, (-1, oh, sr, ow, sr, c))
        out = ops.mean(out, axis=(2, 4))
        if k is not None:
            out = ops.reshape(out, (-1, k, oh, ow, c))
        return out

    def compute_output_shape(self, input_shape):
        return RoiPooling2D.compute_output_shape(self, input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": list(self.output_size), "spatial_scale": self.spatial_scale,
                       "sampling_ratio": self.sampling_ratio, "aligned": self.aligned})
        return config


@keras.saving.register_keras_serializable(package="ku")
class ImageBoxes(keras.layers.Layer):
    """Valid sizes ``(B, 2)`` (height, width) of images at the top-left of a canvas -> their boxes
    ``(B, 4)`` ``(y1, x1, y2, x2)`` for :class:`RoiPooling2D` / :class:`RoiAlign2D`
    (:func:`image_boxes`; Jia et al. §III-A: "the coordinates of one corner is fixed to (0, 0),
    only its diagonal coordinates need to be adjusted according to the image size").

    Input: ``(B, 2)`` sizes (any numeric dtype). Output: ``(B, 4)`` float32, also under a
    mixed-precision dtype policy (the ROI layers cast boxes to float32 anyway).

    Args:
        convention: ``"pixels"`` (inclusive indices, ``(0, 0, h - 1, w - 1)``) or
            ``"continuous"`` (``(0, 0, h, w)``).
    """

    def __init__(self, convention="pixels", **kwargs):
        super().__init__(**kwargs)
        if convention not in ("pixels", "continuous"):
            raise ValueError(f"ImageBoxes: convention must be 'pixels' or 'continuous', got {convention!r}")
        self.convention = convention

    def call(self, sizes):
        return image_boxes(sizes, self.convention)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4)

    def compute_output_spec(self, sizes):
        # float32 boxes under every dtype policy, as ``call`` returns them (the ROI layers
        # compute box coordinates in float32)
        return keras.KerasTensor((sizes.shape[0], 4), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config["convention"] = self.convention
        return config
