"""Benchmark: RoiPooling2D (vectorised over the batch) vs a per-image loop, forward + backward.

Same tensors for all: a feature map like Inception-v3's stem output on Jia et al.'s 800 x 800
canvas (default B=8, 397 x 397 x 64), one box per image (random image sizes 200..800 px, mapped
with tau = 2), output 146 x 146 (§III-D). "Forward + backward" = the pooled output, a weighted sum
and its gradient with respect to the feature map, in one compiled ``tf.function``.

Implementations:
  vectorised  RoiPooling2D on the whole batch (ku: a running max over the window positions),
  gather_k    the previous ku layer (until commit 27f5dba, 2026-11-23): one gather of all k
              rows of every window, an (R, n, k, W, C) tensor, argmax + take_along_axis (kept
              here as the reference),
  python_loop the same layer applied image by image (Python loop over the batch, unrolled in the
              graph), then concatenated,
  map_fn      tf.map_fn over the images, each pooled alone.

Prints a markdown table row per implementation and the ratio to the vectorised one (one run).

  python bench/bench_roi.py                   # B=8, CPU or the default device
  python bench/bench_roi.py --batch=16 --repeats=10 --json=bench/results_roi.json
"""
import argparse
import json
import platform
import time

import numpy as np
from keras import ops

from ku.layers._roi_common import flatten_boxes as _flatten_boxes
from ku.layers.roi_pooling_2d import _round_half_away, roi_bin_bounds


# -- the previous implementation (ku until commit 27f5dba), for the ratio ---------------------
def _expand_to(mask, rank):
    """Append singleton axes to ``mask`` until it has ``rank`` dimensions."""
    for _ in range(rank - len(mask.shape)):
        mask = ops.expand_dims(mask, -1)
    return mask


def _reduce_windows(g, valid, empty, axis, mode):
    """Max / mean of ``g`` over ``axis`` where ``valid``; ``empty`` windows give 0.

    Max routes its gradient to one argmax (the first maximum of the window), like the Fast R-CNN
    operator, instead of splitting it between ties as ``reduce_max`` would.
    """
    rank = len(g.shape)
    vmask = _expand_to(valid, rank)
    emask = _expand_to(empty, rank - 1)
    if mode == "max":
        masked = ops.where(vmask, g, ops.full_like(g, float("-inf")))
        idx = ops.argmax(ops.stop_gradient(masked), axis=axis)
        out = ops.squeeze(ops.take_along_axis(masked, ops.expand_dims(idx, axis), axis=axis), axis)
        return ops.where(emask, ops.zeros_like(out), out)
    total = ops.sum(ops.where(vmask, g, ops.zeros_like(g)), axis=axis)
    count = ops.cast(ops.maximum(ops.sum(ops.cast(valid, "int32"), axis=-1), 1), total.dtype)
    return ops.where(emask, ops.zeros_like(total), total / _expand_to(count, rank - 1))


def _windows(lo, hi, length):
    """Indices ``(R, n, k)`` of the ``k`` (longest window of the batch) positions of every window
    ``[lo, hi)``, clipped into ``[0, length)``, their validity and the empty-window mask."""
    width = ops.maximum(hi - lo, 0)
    kmax = ops.maximum(ops.max(width), 1)  # dynamic
    pos = lo[:, :, None] + ops.arange(kmax, dtype="int32")[None, None, :]
    valid = pos < hi[:, :, None]
    pos = ops.clip(pos, 0, ops.maximum(ops.cast(length, "int32") - 1, 0))
    return pos, valid, width <= 0


def roi_pool_gather_k(x, boxes, output, scale, mode):
    import tensorflow as tf

    flat, bidx, _ = _flatten_boxes(boxes, "gather_k")
    corners = ops.cast(_round_half_away(flat * scale), "int32")
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    hlo, hhi = roi_bin_bounds(corners[:, 0], corners[:, 2], output, h)
    wlo, whi = roi_bin_bounds(corners[:, 1], corners[:, 3], output, w)
    pos, valid, empty = _windows(hlo, hhi, h)
    src = ops.broadcast_to(bidx[:, None, None], ops.shape(pos))
    g = tf.gather_nd(x, ops.stack([src, pos], axis=-1))
    rows = _reduce_windows(g, valid, empty, 2, mode)
    pos, valid, empty = _windows(wlo, whi, w)
    g = tf.gather(rows, pos, axis=2, batch_dims=1)
    return _reduce_windows(g, valid[:, None], empty[:, None], 3, mode)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="images per batch (paper: 16)")
    ap.add_argument("--size", type=int, default=397, help="feature map side (800 canvas -> 397)")
    ap.add_argument("--channels", type=int, default=64, help="feature channels (Inception stem: 64)")
    ap.add_argument("--output", type=int, default=146, help="ROI output side (paper: 146)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs (after one warm-up run)")
    ap.add_argument("--mode", default="max", choices=["max", "average"], help="pooling mode")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    import tensorflow as tf

    from ku.layers import RoiPooling2D

    rng = np.random.default_rng(0)
    b, n, c = args.batch, args.size, args.channels
    x = tf.constant(rng.normal(size=(b, n, n, c)).astype(np.float32))
    hw = rng.integers(200, 801, size=(b, 2))
    boxes = tf.constant(np.concatenate([np.zeros((b, 2)), hw - 1], 1).astype(np.float32))
    w = tf.constant(rng.normal(size=(b, args.output, args.output, c)).astype(np.float32))
    layer = RoiPooling2D(args.output, 0.5, mode=args.mode)

    def fwd_bwd(pool):
        @tf.function(jit_compile=False)
        def step(x, boxes):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = pool(x, boxes)
                loss = tf.reduce_sum(y * w)
            return y, tape.gradient(loss, x)
        return step

    impls = {
        "vectorised": fwd_bwd(lambda x, bx: layer([x, bx])),
        "gather_k": fwd_bwd(lambda x, bx: roi_pool_gather_k(x, bx, args.output, 0.5, args.mode)),
        "python_loop": fwd_bwd(lambda x, bx: tf.concat([layer([x[i:i + 1], bx[i:i + 1]]) for i in range(b)], 0)),
        "map_fn": fwd_bwd(lambda x, bx: tf.map_fn(
            lambda e: layer([e[0][None], e[1][None]])[0], (x, bx),
            fn_output_signature=tf.TensorSpec((args.output, args.output, c), tf.float32))),
    }
    ref = None
    for name, fn in impls.items():
        y, g = fn(x, boxes)  # trace + warm-up
        if ref is None:
            ref = (y.numpy(), g.numpy())
        else:
            np.testing.assert_allclose(y.numpy(), ref[0], rtol=1e-6)
            np.testing.assert_allclose(g.numpy(), ref[1], rtol=1e-5, atol=1e-6)
    ts = {name: [] for name in impls}
    for _ in range(args.repeats):  # alternating rounds: a slow moment of the machine hits all alike
        for name, fn in impls.items():
            t = time.perf_counter()
            y, g = fn(x, boxes)
            _ = g.numpy()
            ts[name].append(time.perf_counter() - t)
    times = {name: float(np.median(v)) for name, v in ts.items()}

    dev = tf.config.list_logical_devices("GPU")
    device = dev[0].name if dev else f"CPU ({platform.processor() or platform.machine()})"
    print(f"\nRoiPooling2D forward+backward, B={b}, {n}x{n}x{c} -> {args.output}x{args.output}, "
          f"mode={args.mode}, device {device}, median of {args.repeats} alternating rounds\n")
    print("| implementation | ms / batch | ms / image | x vectorised |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1000 * t:.1f} | {1000 * t / b:.1f} | {t / times['vectorised']:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "device": device, "seconds": times}, f, indent=1)


if __name__ == "__main__":
    main()
