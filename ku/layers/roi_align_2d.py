"""ROI align (Mask R-CNN) as a vectorised Keras layer: the "Align" rows of Jia, Li, He 2019
Tables I/II.

:class:`RoiAlign2D` follows ``torchvision.ops.roi_align``: with ``aligned=False`` (default, the
original Mask R-CNN operator) the same inclusive pixel-index boxes as
:class:`~ku.layers.RoiPooling2D`, sampled between the pixel centres; with ``aligned=True``
continuous coordinates in which pixel ``i`` covers ``[i, i + 1)`` (an ``h x w`` image is
``(0, 0, h, w)``, :func:`ku.layers.image_boxes` with ``convention="continuous"``; box format:
:mod:`ku.layers._roi_common`).

Built from gathers on dynamic shapes (no loop over the batch, boxes or bins), it works with
``None`` batch/spatial sizes inside ``tf.function`` and SavedModels and is differentiable with
respect to the feature map.
"""
from __future__ import annotations

import keras
from keras import ops

from ku.layers._roi_common import BaseRoiLayer, flatten_boxes

__all__ = ["RoiAlign2D"]


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


def _take_columns(rows, cols):
    """``rows (R, n, W, C)`` at the columns ``cols (R, m)`` of each box -> ``(R, n, m, C)``."""
    if keras.backend.backend() == "tensorflow":  # no (R, n, m, C) index tensor
        import tensorflow as tf

        return tf.gather(rows, cols, axis=2, batch_dims=1)
    return ops.take_along_axis(rows, cols[:, None, :, None], axis=2)


@keras.saving.register_keras_serializable(package="ku")
class RoiAlign2D(BaseRoiLayer):
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

    Bilinear sampling on a product grid is separable and linear, so the mean over a bin's
    ``sr x sr`` samples is a weighted sum of ``2 sr`` rows, then of ``2 sr`` columns: one row
    gather ``(R, oh, 2 sr, W, C)`` reduced to ``(R, oh, W, C)``, then one column gather
    ``(R, oh, ow, 2 sr, C)`` reduced to the output. Forward + backward on TensorFlow (CPU, 2
    threads, ``bench/bench_roi.py --op=align``, 2026-11-30): 0.35x the time of
    ``torchvision.ops.roi_align`` at the theme-ROI size (8 x 397 x 397 x 64 -> 146 x 146) and
    0.71x at a Fast R-CNN size (128 boxes on 38 x 50 x 512 -> 7 x 7).

    For inclusive pixel-index boxes (``aligned=False``), every sample lies between the centres
    of the first and the last pixel of the box, so values outside the box never contribute.

    Inputs / output: as :class:`RoiPooling2D`.

    Args:
        output_size: ``(oh, ow)`` or an int.
        spatial_scale: feature-map pixels per input pixel.
        sampling_ratio: samples per bin along each axis (``sr``; fixed, > 0).
        aligned: torchvision's ``aligned`` (half-pixel offset, continuous boxes).

    Example:

    ```python
    import numpy as np
    from ku.layers import ImageBoxes, RoiAlign2D

    features = np.random.rand(2, 40, 40, 64).astype("float32")  # stride-2 map of an 80 x 80 canvas
    sizes = np.array([[80, 60], [50, 80]], "int32")              # (height, width) of each image
    boxes = ImageBoxes("continuous")(sizes)                      # (0, 0, h, w)
    pooled = RoiAlign2D((7, 7), spatial_scale=0.5, aligned=True)([features, boxes])  # (2, 7, 7, 64)
    ```
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=False,
                 **kwargs):
        super().__init__(output_size=output_size, spatial_scale=spatial_scale, **kwargs)
        if not isinstance(sampling_ratio, int) or sampling_ratio < 1:
            raise ValueError(f"RoiAlign2D: sampling_ratio must be a positive int, got {sampling_ratio!r}")
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def _axis_taps(self, lo, hi, n, length):
        """The ``T = 2 * sr`` bilinear taps of each of the ``n`` bins of every box along one axis:
        indices ``(R, n, T)`` int32 and weights ``(R, n, T)`` float32 (divided by ``sr``, so the
        taps of a bin sum to its mean over the ``sr`` samples)."""
        sr = self.sampling_ratio
        size = hi - lo
        if not self.aligned:
            size = ops.maximum(size, 1.0)
        step = size / float(n * sr)                                   # (R,)
        j = ops.arange(n * sr, dtype="float32")[None, :]              # sample index i * sr + s
        coord = lo[:, None] + (j + 0.5) * step[:, None]               # (R, n * sr)
        i0, i1, w0, w1 = _bilinear_axis(coord, length)
        idx = ops.reshape(ops.stack([i0, i1], axis=-1), (-1, n, 2 * sr))
        wts = ops.reshape(ops.stack([w0, w1], axis=-1), (-1, n, 2 * sr)) / float(sr)
        return idx, wts

    def call(self, inputs):
        x, boxes = self._check_inputs(inputs)
        oh, ow = self.output_size
        t = 2 * self.sampling_ratio
        flat, bidx, k = flatten_boxes(boxes, "RoiAlign2D")
        b = flat * self.spatial_scale - (0.5 if self.aligned else 0.0)
        shape = ops.shape(x)
        h, w = shape[1], shape[2]
        c = x.shape[-1] if x.shape[-1] is not None else shape[3]
        dt = x.dtype
        # Bilinear sampling is linear, so each bin's mean over its sr x sr samples is a weighted
        # sum of T = 2 sr rows (then of T columns): rows first, (R, oh, W, C), then columns.
        yi, wy = self._axis_taps(b[:, 0], b[:, 2], oh, h)            # (R, oh, T)
        x_rows = ops.reshape(x, (-1, w, c))                           # (B * H, W, C)
        g = ops.take(x_rows, bidx[:, None, None] * ops.cast(h, "int32") + yi, axis=0)  # (R, oh, T, W, C)
        rows = ops.sum(g * ops.cast(wy, dt)[:, :, :, None, None], axis=2)
        xi, wx = self._axis_taps(b[:, 1], b[:, 3], ow, w)            # (R, ow, T)
        g = _take_columns(rows, ops.reshape(xi, (-1, ow * t)))       # (R, oh, ow * T, C)
        g = ops.reshape(g, (-1, oh, ow, t, c))
        out = ops.sum(g * ops.cast(wx, dt)[:, None, :, :, None], axis=3)
        if k is not None:
            out = ops.reshape(out, (-1, k, oh, ow, c))
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"sampling_ratio": self.sampling_ratio, "aligned": self.aligned})
        return config
