"""ROI max / average pooling in ``keras.ops`` only (any backend: JAX, PyTorch, TensorFlow).

The same operator as :class:`ku.layers.RoiPooling2D` (Jia et al. 2019 §III-A eqs. 1-3, the Fast
R-CNN ``roi_pooling_layer``): the bins come from :func:`ku.layers.roi_bin_bounds`, a bin's
value is the max (or mean) of its cells, an empty bin gives 0, and the gradient of max pooling
goes to one cell per output value: the leftmost column holding the bin's max and, in it, the
topmost row (rows are pooled first, then columns), exactly as the TensorFlow implementation.

Static shapes, as ``jax.jit`` needs: the windows of one axis are enumerated as a fixed number of
``(bin, position)`` pairs per box, ``P = length + 2 * n``. That is an upper bound of the summed
bin widths after clipping: for ``rho = size / n >= 1`` neighbouring bins share at most one row
(``ceil((m + 1) rho) - floor((m + 1) rho) <= 1``) and bins two apart none, so the clipped widths
add up to at most ``length + n - 1``; for ``rho < 1`` every bin is at most 2 wide. The pairs are
gathered (``(R, P, W, C)`` for the row pass) and reduced per bin with ``segment_max`` /
``segment_sum``; the first maximum's position comes from a second ``segment_max`` over reversed
positions. The output of max pooling is then one ``take`` of the input at the chosen cells, so
its gradient (the adjoint of a gather: a scatter-add) routes each output's gradient to its argmax,
overlapping bins adding up.

The TensorFlow backend uses the faster TensorFlow implementation in
:mod:`ku.layers.roi_pooling_2d` (running maxima in ``tf.while_loop`` with a custom gradient); this
module is what the other backends run, and the tests hold the two equal (values and gradients).
"""
from __future__ import annotations

from keras import ops


def _window_pairs(lo, hi, length: int, n: int):
    """Enumerate the cells of the windows ``[lo, hi)`` (``(R, n)`` int32, clipped to
    ``[0, length]``) of one axis as ``P = length + 2 n`` pairs per box (see the module docstring).

    Returns ``(bin, pos, valid)``, each ``(R, P)``: pair ``p`` of box ``r`` is cell ``pos`` of
    bin ``bin``; ``valid`` is False for the pairs past the box's last window (their ``bin`` is
    ``n - 1`` and ``pos`` is clipped).
    """
    n_pairs = int(length) + 2 * int(n)
    width = ops.maximum(hi - lo, 0)                               # (R, n)
    end = ops.cumsum(width, axis=1)                               # (R, n) exclusive window ends
    start = end - width
    p = ops.arange(n_pairs, dtype="int32")                        # (P,)
    # bin of pair p: the number of windows ending at or before p (empty windows are skipped)
    b = ops.sum(ops.cast(end[:, None, :] <= p[None, :, None], "int32"), axis=2)  # (R, P)
    valid = p[None, :] < end[:, -1:]
    b = ops.minimum(b, n - 1)
    offset = p[None, :] - ops.take_along_axis(start, b, axis=1)
    pos = ops.clip(ops.take_along_axis(lo, b, axis=1) + offset, 0, max(int(length) - 1, 0))
    return b, pos, valid


def _reduce_windows(g, seg, n_segments: int, valid, mode):
    """Per-bin max (and the first maximum's pair number) or mean of ``g (R * P, ...)`` over
    segments ``seg (R * P,)`` (``n_segments`` real ones; invalid pairs go to a dummy segment)."""
    seg = ops.where(valid, seg, n_segments)

    def per_pair(v):  # (R * P,) -> (R * P, 1, ...), broadcasting against g
        return ops.reshape(v, (-1,) + (1,) * (len(g.shape) - 1))

    if mode == "max":
        fill = ops.cast(float("-inf"), g.dtype)
        g = ops.where(per_pair(valid), g, fill)
        top = ops.segment_max(g, seg, num_segments=n_segments + 1)
        # first maximum: the largest reversed pair number among the pairs equal to the max
        n = ops.shape(g)[0]
        rev = per_pair(n - ops.arange(n, dtype="int32"))
        hit = ops.where(g == ops.take(top, seg, axis=0), rev, 0)
        first = n - ops.maximum(ops.segment_max(hit, seg, num_segments=n_segments + 1), 1)
        return top[:n_segments], first[:n_segments]
    g = ops.where(per_pair(valid), g, ops.zeros_like(g))
    total = ops.segment_sum(g, seg, num_segments=n_segments + 1)[:n_segments]
    count = ops.segment_sum(ops.cast(valid, g.dtype), seg, num_segments=n_segments + 1)[:n_segments]
    return total / per_pair(ops.maximum(count, 1)), None


def roi_pool(x, bidx, hlo, hhi, wlo, whi, mode: str = "max"):
    """ROI pooling of ``x (B, H, W, C)`` (static H, W, C) to ``(R, oh, ow, C)`` over the bins
    ``[hlo, hhi) x [wlo, whi)`` (``(R, oh)`` / ``(R, ow)`` int32, from ``roi_bin_bounds``) of the
    boxes of images ``bidx (R,)``; ``mode`` ``"max"`` or ``"average"``. Empty bins give 0."""
    _, h, w, c = (int(d) for d in x.shape)
    r = ops.shape(hlo)[0]
    oh, ow = int(hlo.shape[1]), int(wlo.shape[1])
    bidx = ops.cast(bidx, "int32")
    # rows: pairs (r, p) over the row windows -> (R, P, W, C) -> per (r, bin row) (R * oh, W, C)
    hb, hpos, hvalid = _window_pairs(hlo, hhi, h, oh)
    n_p = int(hpos.shape[1])
    src = ops.stop_gradient(x) if mode == "max" else x
    g = ops.take(ops.reshape(src, (-1, w, c)), ops.reshape(bidx[:, None] * h + hpos, (-1,)), axis=0)
    seg = ops.reshape(ops.arange(r, dtype="int32")[:, None] * oh + hb, (-1,))
    rows, first = _reduce_windows(g, seg, r * oh, ops.reshape(hvalid, (-1,)), mode)
    rows = ops.reshape(rows, (r, oh, w, c))
    # columns: pairs over the column windows of the (R, oh, W, C) row results -> (R, ow, oh, C)
    wb, wpos, wvalid = _window_pairs(wlo, whi, w, ow)
    n_q = int(wpos.shape[1])
    cols = ops.take_along_axis(rows, ops.reshape(wpos, (-1, 1, n_q, 1)), axis=2)  # (R, oh, Q, C)
    cols = ops.reshape(ops.transpose(cols, (0, 2, 1, 3)), (-1, oh, c))            # (R * Q, oh, C)
    seg = ops.reshape(ops.arange(r, dtype="int32")[:, None] * ow + wb, (-1,))
    out, cfirst = _reduce_windows(cols, seg, r * ow, ops.reshape(wvalid, (-1,)), mode)
    out = ops.transpose(ops.reshape(out, (r, ow, oh, c)), (0, 2, 1, 3))           # (R, oh, ow, C)
    h_empty = hhi <= hlo
    w_empty = whi <= wlo
    empty = ops.logical_or(h_empty[:, :, None], w_empty[:, None, :])[..., None]   # (R, oh, ow, 1)
    if mode != "max":
        return ops.where(empty, ops.zeros_like(out), out)
    # the argmax cell of every output value: its column (the first column holding the bin's max),
    # then, in that column, the row pass's first maximum; pair numbers index the flattened pairs
    col = ops.take(ops.reshape(wpos, (-1,)), ops.clip(cfirst, 0, r * n_q - 1), axis=0)
    col = ops.transpose(ops.reshape(col, (r, ow, oh, c)), (0, 2, 1, 3))           # (R, oh, ow, C)
    pick = ops.take_along_axis(ops.reshape(first, (r, oh, w, c)), col, axis=2)    # (R, oh, ow, C)
    row = ops.take(ops.reshape(hpos, (-1,)), ops.clip(pick, 0, r * n_p - 1), axis=0)
    flat = ((bidx[:, None, None, None] * h + row) * w + col) * c + ops.arange(c, dtype="int32")
    out = ops.take(ops.reshape(x, (-1,)), ops.reshape(flat, (-1,)), axis=0)
    return ops.where(empty, ops.zeros_like(x[:1, :1, :1]), ops.reshape(out, (r, oh, ow, c)))
