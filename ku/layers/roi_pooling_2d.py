"""ROI pooling (Fast R-CNN) as a vectorised Keras layer: Jia, Li, He 2019 §III-A, eqs. 1-3.

Jia, Li, He, "Theme Aware Aesthetic Distribution Prediction with Full Resolution Photos", 2019,
§III-A, eqs. 1-3: images are zero-padded into one canvas, the image's box is mapped onto a feature
map with ``round(x / tau)`` (eq. 1), and the box is max-pooled to a fixed grid whose bin ``m``
spans ``floor(m * rho) .. ceil((m + 1) * rho)`` (eqs. 2-3, ``rho`` = box size / output size).

:class:`RoiPooling2D` follows the Fast R-CNN operator (``roi_pooling_layer.cpp``; the same as
``torchvision.ops.roi_pool``): the box corners ``(y1, x1, y2, x2)`` are input-image *pixel
indices*, both inclusive; an image of ``h x w`` pixels at the top-left of the canvas is the box
``(0, 0, h - 1, w - 1)`` (:func:`ku.layers.image_boxes` with ``convention="pixels"``; box format:
:mod:`ku.layers._roi_common`).

Max pooling is Girshick, "Fast R-CNN", ICCV 2015, §2.1 (RoI max pooling; its backward routes
each output's gradient to the one input cell that gave its value, the argmax). It is built from
gathers and reductions on dynamic shapes (``tf.while_loop`` only over the ``k ~ ceil(rho) + 1``
positions of a window, over cache-sized chunks of bin rows, or over sparse-table levels), works with
``None`` batch/spatial sizes inside ``tf.function`` and SavedModels, and is differentiable with
respect to the feature map (``mode="max"``: a ``tf.custom_gradient`` that scatters the gradient
to the argmax saved by the forward pass, as the Fast R-CNN operator does).
"""
from __future__ import annotations

import math

import keras
from keras import ops

from ku.layers._roi_common import BaseRoiLayer, flatten_boxes
from ku.layers._roi_pool_ops import roi_pool

__all__ = ["RoiPooling2D", "roi_bin_bounds"]

_MODES = ("max", "average")
# TensorFlow backend, forward method of max pooling: "auto", "direct" or "table" (see
# _roi_max_pool), or "ops": the keras.ops implementation the other backends run (both modes;
# ku.layers._roi_pool_ops). Tests set it.
_MAX_METHOD = "auto"
_CHUNK_CELLS = 1 << 20


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


def _first_max(gather, label, lo, hi, length, increasing=False):
    """Max over the windows ``[lo, hi)`` of one axis and, per element, the label of its *first*
    maximum, as a running max over the offsets ``j = 0 .. k - 1`` (``k`` = the longest window of
    the batch, dynamic).

    ``gather(pos)`` takes ``(R, n)`` positions and returns the ``(R, ...)`` slices at them;
    ``label(pos)`` returns the int32 labels of those slices (broadcastable to them). Offsets past
    the end of a window repeat its last position, so no masking is needed: a repeated value is
    never *greater* than the running max, and the label only changes on a strict increase (the
    first maximum wins ties). The value is ``tf.maximum``'s, as before. Empty windows
    (``lo >= hi``) are returned as they come (the caller zeroes them).

    ``increasing=True`` declares labels that grow with the position (``label(p) >= 0``, never
    smaller at a later offset): the update is then ``max(label, (g > max) * label(p))``, which
    equals the ``where`` above and is cheaper with broadcast labels.

    Returns ``(max, labels, width)`` with ``width = hi - lo`` ``(R, n)``.
    """
    import tensorflow as tf

    width = hi - lo
    kmax = tf.maximum(tf.reduce_max(width), 1)
    last_offset = tf.maximum(width - 1, 0)
    last = tf.maximum(tf.cast(length, "int32") - 1, 0)

    def pos(j):
        return tf.clip_by_value(lo + tf.minimum(j, last_offset), 0, last)

    p = pos(0)
    acc = gather(p)
    arg = tf.broadcast_to(label(p), tf.shape(acc))

    def body(j, acc, arg):
        p = pos(j)
        g = gather(p)
        if increasing:
            arg = tf.maximum(arg, tf.cast(g > acc, arg.dtype) * label(p))
        else:
            arg = tf.where(g > acc, label(p), arg)
        return j + 1, tf.maximum(acc, g), arg

    _, acc, arg = tf.while_loop(lambda j, *_: j < kmax, body, (tf.constant(1), acc, arg))
    return acc, arg, width


def _log2_floor(v):
    """``floor(log2(v))`` of positive int32 ``v``, exact (a float estimate, corrected with
    integer shifts)."""
    import tensorflow as tf

    est = tf.floor(tf.math.log(tf.cast(v, "float32") + 0.5) / math.log(2.0))
    lev = tf.maximum(tf.cast(est, "int32"), 0)
    one = tf.ones_like(lev)
    lev = lev - tf.cast(tf.bitwise.left_shift(one, lev) > v, "int32")
    return lev + tf.cast(tf.bitwise.left_shift(one, lev + 1) <= v, "int32")


def _pack(xt):
    """int64 codes ordering the cells of ``xt (B, W, H, C)`` (the feature map, columns first)
    like the first maximum does: ``(ordered value bits) << 32 | (2**31 - 1 - i)``, ``i`` the
    flat index of the cell in ``xt`` (``((b * W + col) * H + row) * C + channel``, below
    ``2**31``), so the largest code of a rectangle of one channel is its largest value and,
    among equal values, the smallest ``i``: the leftmost column holding it, in it the topmost
    row. The value bits are those of the float32 value (``+ 0.0`` first, so that ``-0.0`` ties
    with ``0.0``), mapped to signed integers of the same order."""
    import tensorflow as tf

    bits = tf.bitcast(tf.cast(xt, "float32") + 0.0, "int32")
    ordered = tf.bitwise.bitwise_xor(bits, tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(bits, 31), 0x7FFFFFFF))
    low = tf.reshape(tf.range(0x7FFFFFFF, 0x7FFFFFFF - tf.size(xt, out_type=tf.int64), -1,
                              dtype="int64"), tf.shape(xt))
    return tf.bitwise.left_shift(tf.cast(ordered, "int64"), 32) + low


def _span_tables(v, levels, axis, length):
    """Sparse table of the int64 codes ``v`` along ``axis``: level ``l`` holds, at position
    ``p``, the max of ``[p, p + 2**l)`` (truncated at the end); level ``l + 1`` is the max of
    level ``l`` and level ``l`` shifted by ``2**l``. Returns the ``(levels, ...)`` stack."""
    import tensorflow as tf

    pos = tf.range(length)
    tv = tf.TensorArray(v.dtype, size=levels, infer_shape=False).write(0, v)

    def body(lev, v, tv):
        idx = tf.minimum(pos + tf.bitwise.left_shift(1, lev - 1), length - 1)
        v = tf.maximum(v, tf.gather(v, idx, axis=axis))
        return lev + 1, v, tv.write(lev, v)

    _, _, tv = tf.while_loop(lambda lev, *_: lev < levels, body, (tf.constant(1), v, tv))
    return tv.stack()


def _max_pool_direct(x, bidx, hlo, hhi, wlo, whi):
    """Separable running max, rows first, ``rows[r, i, w, c] = max x[b_r, hlo .. hhi - 1, w, c]``
    with the row of the first maximum (:func:`_first_max` over the row windows, whole rows
    gathered), then columns, carrying the in-image flat index ``row * W + col`` of the first
    maximum. Returns ``(max, index, empty)``: ``(R, oh, ow, C)`` values (empty bins not yet
    zeroed), int64 indices into the flattened ``x`` (``(b * H * W + row * W + col) * C +
    channel``) and the ``(R, oh, ow, 1)`` empty-bin mask."""
    import tensorflow as tf

    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    src = tf.broadcast_to(bidx[:, None], tf.shape(hlo))

    def gather_rows(p):
        return tf.gather_nd(x, tf.stack([src, p], axis=-1))
    # rows: (R, oh, W, C), labels row * W
    rows, rarg, hwidth = _first_max(gather_rows, lambda p: (p * w)[:, :, None, None],
                                    hlo, hhi, h, increasing=True)
    # columns: (R, oh, ow, C), labels row * W + col
    acc, arg, wwidth = _first_max(
        lambda p: tf.gather(rows, p, axis=2, batch_dims=1),
        lambda p: tf.gather(rarg, p, axis=2, batch_dims=1) + p[:, None, :, None],
        wlo, whi, w)
    empty = tf.logical_or((hwidth <= 0)[:, :, None, None], (wwidth <= 0)[:, None, :, None])
    hw = tf.cast(h, "int64") * tf.cast(w, "int64")
    c64 = tf.cast(shape[3], "int64")
    index = ((tf.cast(bidx, "int64")[:, None, None, None] * hw + tf.cast(arg, "int64")) * c64
             + tf.range(c64))
    return acc, index, empty


def _max_pool_direct_chunked(x, bidx, hlo, hhi, wlo, whi, cells=None):
    """:func:`_max_pool_direct` over chunks of bin rows: each row of bins ``(r, i)`` is a box of
    one bin row, and chunks of ``G`` of them, whose row maxima ``(G, 1, W, C)`` hold about
    ``cells`` values, are pooled one after the other so that a chunk's working set stays in the
    cache; the results are concatenated."""
    import tensorflow as tf

    cells = _CHUNK_CELLS if cells is None else cells
    shape = tf.shape(x)
    r, oh, ow = tf.shape(hlo)[0], tf.shape(hlo)[1], tf.shape(wlo)[1]
    rb = r * oh
    bidx_u = tf.repeat(bidx, oh)
    hlo_u, hhi_u = tf.reshape(hlo, [-1, 1]), tf.reshape(hhi, [-1, 1])
    wlo_u, whi_u = tf.repeat(wlo, oh, axis=0), tf.repeat(whi, oh, axis=0)
    g = tf.maximum(cells // tf.maximum(shape[2] * shape[3], 1), 1)
    n = (rb + g - 1) // g
    ta = [tf.TensorArray(d, size=n, infer_shape=False) for d in (x.dtype, tf.int64, tf.bool)]

    def body(i, *ta):
        s = slice(i * g, tf.minimum(i * g + g, rb))
        acc, index, empty = _max_pool_direct(x, bidx_u[s], hlo_u[s], hhi_u[s], wlo_u[s], whi_u[s])
        res = (tf.where(empty, tf.zeros_like(acc), acc), index, empty)  # zeroed in the cache
        return (i + 1,) + tuple(t.write(i, v) for t, v in zip(ta, res))

    _, *ta = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), *ta))
    acc, index, empty = (t.concat() for t in ta)
    out_shape = tf.stack([r, oh, ow, shape[3]])
    return (tf.reshape(acc, out_shape), tf.reshape(index, out_shape),
            tf.reshape(empty, tf.stack([r, oh, ow, 1])))


def _max_pool_table(x, bidx, hlo, hhi, wlo, whi):
    """Rectangle max from a 2-D sparse table (range-maximum blocks) of the feature map: level
    ``(i, j)`` holds the largest :func:`_pack` code of every ``2**i x 2**j`` block; a bin of ``h
    x w`` cells is the union of four (overlapping) blocks of level ``(floor(log2 h),
    floor(log2 w))`` at its corners, so its code is the max of four gathered codes, whose low
    bits are the flat index of its first maximum in the transposed map ``(B, W, H, C)``.
    Needs ``B * H * W * C < 2**31``. Returns ``(max, index, empty)``: ``max = x[index]``,
    ``index`` into the transposed map (``transposed=True`` for the scatter)."""
    import tensorflow as tf

    shape = tf.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    hwid, wwid = hhi - hlo, whi - wlo
    lh, lw = _log2_floor(tf.maximum(hwid, 1)), _log2_floor(tf.maximum(wwid, 1))
    nh, nw = tf.reduce_max(lh) + 1, tf.reduce_max(lw) + 1
    xt = tf.transpose(x, [0, 2, 1, 3])                    # (B, W, H, C)
    table = _span_tables(_pack(xt), nw, 1, w)             # (nw, B, W, H, C)
    table = _span_tables(table, nh, 3, h)                 # (nh, nw, B, W, H, C)
    table = tf.reshape(table, [-1, c])
    last_h, last_w = tf.maximum(h - 1, 0), tf.maximum(w - 1, 0)
    r1 = tf.clip_by_value(hlo, 0, last_h)
    r2 = tf.clip_by_value(hhi - tf.bitwise.left_shift(1, lh), 0, last_h)
    c1 = tf.clip_by_value(wlo, 0, last_w)
    c2 = tf.clip_by_value(whi - tf.bitwise.left_shift(1, lw), 0, last_w)
    hw = h * w
    row_part = (lh * (nw * b * hw))[:, :, None]                                # (R, oh, 1)
    col_part = ((lw * b + bidx[:, None]) * hw)[:, None, :]                     # (R, 1, ow)

    def corner(r, cc):
        return tf.gather(table, row_part + col_part + r[:, :, None] + (cc * h)[:, None, :])

    code = tf.maximum(tf.maximum(corner(r1, c1), corner(r2, c1)),
                      tf.maximum(corner(r1, c2), corner(r2, c2)))
    index = 0x7FFFFFFF - tf.bitwise.bitwise_and(code, 0x7FFFFFFF)
    out = tf.gather(tf.reshape(xt, [-1]), index)
    empty = tf.logical_or((hwid <= 0)[:, :, None, None], (wwid <= 0)[:, None, :, None])
    return tf.where(empty, tf.zeros_like(out), out), index, empty


def _roi_max_pool(x, bidx, hlo, hhi, wlo, whi, method="auto"):
    """ROI max pooling of ``x (B, H, W, C)`` to ``(R, oh, ow, C)`` over the bins
    ``[hlo, hhi) x [wlo, whi)`` (``(R, oh)``, ``(R, ow)``) of the boxes of images ``bidx (R,)``,
    with the gradient of the Fast R-CNN operator: each output's gradient goes to the one cell
    that gave its value, found in the forward pass (the first maximum in column-major order:
    the leftmost column holding the bin's max and, in it, the topmost row).

    Forward, two exact methods (the same values and indices):

    * ``"direct"`` (:func:`_max_pool_direct_chunked`): the separable running max of
      :func:`_max_pool_direct` (rows, then columns, with the first maximum's index) over chunks
      of about ``2**20`` row-maxima cells, one after the other, so that a chunk's row maxima and
      labels stay in the cache (at 8 x 397 x 397 x 64 -> 146 the whole batch's are ~240 MB).
      Its cost grows with the ``(R, oh, W, C)`` row maxima.
    * ``"table"`` (:func:`_max_pool_table`): a 2-D sparse table (range-maximum blocks of
      ``2**i x 2**j`` cells) of the feature map, then four gathers per bin. Its cost grows with
      the map times the number of levels; cheaper when many boxes share a small map (Fast
      R-CNN: 128 boxes on a 38 x 50 map).
    * ``"auto"``: the table when its ``levels_h * levels_w * B * H * W`` cells are fewer than the
      ``R * oh * W * k_h`` cells the direct row pass gathers and ``B * H * W * C < 2**31`` (a
      ``tf.cond``); float64 maps always go direct (the codes hold float32 values). The table's
      indices point into the transposed map ``(B, W, H, C)``; its gradient is scattered there
      and transposed back.

    Empty bins give 0.

    Backward: one scatter-add of the upstream gradient at the saved ``(B * H * W * C)`` flat
    indices (``tf.raw_ops.SparseTensorDenseAdd``: a serial loop over the indices, in order,
    several times faster on CPU than ``unsorted_segment_sum`` / ``tensor_scatter_nd_add`` for
    scalar slices), like the backward of the Fast R-CNN ``roi_pooling_layer``. Overlapping
    bins add up. Second-order gradients are not defined.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def pool(x):
        shape = tf.shape(x)
        h, w = shape[1], shape[2]

        def direct():
            return _max_pool_direct_chunked(x, bidx, hlo, hhi, wlo, whi)

        def table():
            return _max_pool_table(x, bidx, hlo, hhi, wlo, whi)

        # `transposed`: the indices point into the (B, W, H, C) map (the table's), a Python bool
        # when the method is known here, else a boolean tensor
        if method == "direct" or x.dtype.size > 4:  # the table codes hold float32 values
            (acc, index, empty), transposed = direct(), False
        elif method == "table":
            (acc, index, empty), transposed = table(), True
        else:
            kh = tf.maximum(tf.reduce_max(hhi - hlo), 1)
            kw = tf.maximum(tf.reduce_max(whi - wlo), 1)
            levels = tf.cast((_log2_floor(kh) + 1) * (_log2_floor(kw) + 1), "float32")
            f = lambda v: tf.cast(v, "float32")  # noqa: E731
            table_cells = levels * f(shape[0]) * f(h) * f(w)
            direct_cells = f(tf.size(hlo)) * f(w) * f(kh)
            use_table = tf.logical_and(table_cells < direct_cells,
                                       tf.size(x, out_type=tf.int64) < 2 ** 31)
            acc, index, empty = tf.cond(use_table, table, direct)
            transposed = use_table
        any_empty = tf.reduce_any(empty)

        def unflatten(dx, transposed):
            if not transposed:
                return tf.reshape(dx, shape)
            return tf.transpose(tf.reshape(dx, tf.gather(shape, [0, 2, 1, 3])), [0, 2, 1, 3])

        def grad(dy):
            # empty bins hold a clipped index: their gradient is dropped
            dy = tf.cond(any_empty, lambda: tf.where(empty, tf.zeros_like(dy), dy), lambda: dy)
            n = tf.reshape(tf.size(x, out_type=tf.int64), [1])
            dx = tf.raw_ops.SparseTensorDenseAdd(
                a_indices=tf.reshape(index, [-1, 1]), a_values=tf.reshape(dy, [-1]), a_shape=n,
                b=tf.zeros(n, dy.dtype))
            if isinstance(transposed, bool):
                return unflatten(dx, transposed)
            return tf.cond(transposed, lambda: unflatten(dx, True), lambda: unflatten(dx, False))

        return acc, grad  # empty bins already zeroed

    return pool(x)


@keras.saving.register_keras_serializable(package="ku")
class RoiPooling2D(BaseRoiLayer):
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

    Computation (Girshick 2015 §2.1: RoI max pooling, the gradient routed to each bin's argmax):
    for ``mode="max"`` the forward pass finds, per output value, the cell it came from (the first
    maximum: the leftmost column holding the bin's max, in it the topmost row) and the backward
    pass is one scatter-add of the upstream gradient at those cells' flat indices (an int64
    index per output value is kept). The forward is one of two exact methods, chosen per call
    by size:

    * direct: the pooling is separable (a bin is a rectangle), so rows are pooled first and
      columns second, each as a running max over the ``k`` positions of the windows (``k`` = the
      longest window in the batch, ``ceil(rho) + 1``): ``k`` gathers of one row (column) of every
      window, no ``(R, n, k, ...)`` intermediate, carrying the first maximum's row, then column.
      The bin rows are pooled in chunks of about ``2**20`` row-maxima values, one after the
      other, so that each chunk's working set stays in the CPU cache.
    * sparse table, when many boxes share a small map (Fast R-CNN: 128 boxes on a 38 x 50
      map): each cell is coded as one int64, its float32 value's bits (mapped to integers of
      the same order) above its reversed column-major flat index, so that the max of codes is
      the max value at its first (column-major) position; a 2-D sparse table holds the max code
      of every ``2**i x 2**j`` block, and a bin is the union of four (overlapping) blocks at its
      corners: four gathers and three maxima per bin, whatever its size.

    ``mode="average"`` is differentiated by autodiff through running sums (direct, unchunked).
    On backends other than TensorFlow both modes run the ``keras.ops`` implementation of
    :mod:`ku.layers._roi_pool_ops` (the same outputs and gradients, tested bit for bit).
    Forward + backward on 2 CPU threads of the otherwise idle machine (2026-11-30,
    ``bench/bench_roi.py``, medians of alternating rounds, ``bench/README.md``): 0.83x the time of
    ``torchvision.ops.roi_pool`` at 1 x 38 x 50 x 512 with 128 boxes -> 7 (Fast R-CNN) and
    0.96x / 0.81x (two runs) at 8 x 397 x 397 x 64 -> 146 (Jia et al.); single rounds vary by 2x.

    Inputs: ``[features, boxes]``: ``features (B, H, W, C)``; ``boxes (B, 4)`` or ``(B, K, 4)``
    (float or int, ``(y1, x1, y2, x2)``).
    Output: ``(B, oh, ow, C)`` for ``(B, 4)`` boxes, ``(B, K, oh, ow, C)`` for ``(B, K, 4)``.

    Args:
        output_size: ``(oh, ow)`` or an int (Jia et al.: 146, twice Inception-v3's 73, §III-D).
        spatial_scale: ``1 / tau`` of eq. 1, feature-map pixels per input pixel (0.5 for a
            stride-2 map; 1.0 when boxes are given in feature-map coordinates).
        mode: ``"max"`` (paper) or ``"average"``.

    Example:

    ```python
    import numpy as np
    from ku.layers import ImageBoxes, RoiPooling2D

    features = np.random.rand(2, 40, 40, 64).astype("float32")  # stride-2 map of an 80 x 80 canvas
    sizes = np.array([[80, 60], [50, 80]], "int32")              # (height, width) of each image
    boxes = ImageBoxes("pixels")(sizes)                          # (0, 0, h - 1, w - 1)
    pooled = RoiPooling2D((7, 7), spatial_scale=0.5)([features, boxes])  # (2, 7, 7, 64)
    ```
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1.0, mode="max", **kwargs):
        super().__init__(output_size=output_size, spatial_scale=spatial_scale, **kwargs)
        if mode not in _MODES:
            raise ValueError(f"RoiPooling2D: mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x, boxes = self._check_inputs(inputs)
        oh, ow = self.output_size
        flat, bidx, k = flatten_boxes(boxes, "RoiPooling2D")
        corners = ops.cast(_round_half_away(flat * self.spatial_scale), "int32")   # eq. 1
        shape = ops.shape(x)
        h, w = shape[1], shape[2]
        hlo, hhi = roi_bin_bounds(corners[:, 0], corners[:, 2], oh, h)         # eqs. 2-3
        wlo, whi = roi_bin_bounds(corners[:, 1], corners[:, 3], ow, w)
        if keras.backend.backend() != "tensorflow" or _MAX_METHOD == "ops":  # keras.ops only
            out = roi_pool(x, bidx, hlo, hhi, wlo, whi, self.mode)
        elif self.mode == "max":
            out = _roi_max_pool(x, bidx, hlo, hhi, wlo, whi, _MAX_METHOD)
        else:
            import tensorflow as tf

            # rows: (R, oh, W, C), one gathered row of every window per step
            if k is None:  # one box per image: box r is image r
                rows = _pool_windows(lambda pos: tf.gather(x, pos, axis=1, batch_dims=1), hlo, hhi,
                                     h, self.mode, (-1, -1))
            else:
                src = ops.broadcast_to(bidx[:, None], ops.shape(hlo))
                rows = _pool_windows(lambda pos: tf.gather_nd(x, ops.stack([src, pos], axis=-1)),
                                     hlo, hhi, h, self.mode, (-1, -1))
            # columns: (R, oh, ow, C)
            out = _pool_windows(lambda pos: tf.gather(rows, pos, axis=2, batch_dims=1), wlo, whi,
                                w, self.mode, (1, -1))
        if k is not None:
            out = ops.reshape(out, (-1, k, oh, ow, x.shape[-1] if x.shape[-1] is not None
                                    else shape[3]))
        return out

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config
