"""Benchmark: RoiPooling2D (or, with ``--op=align``, RoiAlign2D) forward + backward against
torchvision.ops.roi_pool (roi_align) and older ku implementations, at two sizes, in one run.

Sizes (``--sizes``):
  theme   Jia et al.'s working size: a feature map like Inception-v3's stem output on the 800 x 800
          canvas (default B=8, 397 x 397 x 64), one box per image (random image sizes 200..800
          px, mapped with tau = 2), output 146 x 146 (§III-D);
  frcnn   Fast R-CNN (Girshick 2015): a VGG16 conv5_3 map 1 x 38 x 50 x 512 (stride 16), 128
          random ROIs, output 7 x 7, spatial_scale 1/16.
"Forward + backward" = the pooled output, a weighted sum and its gradient with respect to the
feature map (TF: in one compiled ``tf.function``; torch: eager, NCHW, converted before timing).

Implementations:
  ku RoiPooling2D       the layer (max: chunked running max or, for many boxes on a small map,
                        a 2-D sparse table; the saved argmax; backward one scatter),
  scatter_v1            the layer as merged in commit 0c826d9 (2026-11-30): running max over
                        the whole batch with the saved argmax, backward one scatter (max only),
  running_max           the layer until 2026-11-30: running tf.maximum over the window
                        positions, differentiated by autodiff (kept as a reference),
  gather_k              the layer until commit 27f5dba (2026-11-23): one gather of all k rows of
                        every window, an (R, n, k, W, C) tensor, argmax + take_along_axis
                        (theme size only: ~6 s a round at the Fast R-CNN size),
  python_loop, map_fn   the layer image by image (theme size only),
  torchvision roi_pool  torchvision.ops.roi_pool (skipped with a message if torch/torchvision
                        cannot be imported; it is not a dependency of ku).
With ``--op=align`` (``aligned=False``, ``--sampling_ratio`` 2, the same boxes):
  ku RoiAlign2D         the layer (each bin's mean over its sr x sr samples as a weighted sum of
                        2 sr rows, then of 2 sr columns; autodiff gradient),
  align_v1              the layer until 2026-11-30 (all oh * sr sample rows and ow * sr sample
                        columns interpolated, then averaged),
  torchvision roi_align torchvision.ops.roi_align (outputs agree to float32 rounding of the
                        sample coordinates).

Outputs are checked equal before timing (ku's against torchvision's are reported: the two
agree except where torchvision's float32 bin edges differ from ku's exact integer ones).
Rounds alternate between implementations; medians (min..max) and the ratio to torchvision (or to
the layer without torch) are printed as markdown tables.

  python bench/bench_roi.py                     # both sizes, 2 threads
  python bench/bench_roi.py --quick --repeats=11  # ku, scatter_v1 and torchvision only
  python bench/bench_roi.py --sizes=theme --batch=16 --repeats=10 --json=bench/results_roi.json
  python bench/bench_roi.py --op=align --repeats=9 --json=bench/results_roi_align.json

torch must be imported before TensorFlow in one process (the other order crashes with the
tested wheels); this module does so at its top.
"""
import argparse
import json
import platform
import time

import numpy as np

try:  # torch first: importing it after TensorFlow crashes (segfault) with these wheels
    import torch
    import torchvision
except Exception as _e:  # noqa: BLE001 - missing or broken: the torchvision rows are skipped
    torch = torchvision = None
    _TORCH_ERROR = f"{type(_e).__name__}: {_e}"

from keras import ops  # noqa: E402 - after torch, see above

from ku.layers._roi_common import flatten_boxes as _flatten_boxes  # noqa: E402
from ku.layers.roi_pooling_2d import _round_half_away, roi_bin_bounds  # noqa: E402


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


def _bins(x, boxes, output, scale, name):
    """What every reference starts with: the flattened boxes, their image indices, boxes per image
    (None: one), the map's dynamic shape and the integer bin bounds (the layer's rules)."""
    import tensorflow as tf

    flat, bidx, k = _flatten_boxes(boxes, name)
    corners = ops.cast(_round_half_away(flat * scale), "int32")
    shape = tf.shape(x)
    hlo, hhi = roi_bin_bounds(corners[:, 0], corners[:, 2], output, shape[1])
    wlo, whi = roi_bin_bounds(corners[:, 1], corners[:, 3], output, shape[2])
    return bidx, k, shape, hlo, hhi, wlo, whi


def roi_pool_gather_k(x, boxes, output, scale, mode):
    import tensorflow as tf

    bidx, _, shape, hlo, hhi, wlo, whi = _bins(x, boxes, output, scale, "gather_k")
    h, w = shape[1], shape[2]
    pos, valid, empty = _windows(hlo, hhi, h)
    src = ops.broadcast_to(bidx[:, None, None], ops.shape(pos))
    g = tf.gather_nd(x, ops.stack([src, pos], axis=-1))
    rows = _reduce_windows(g, valid, empty, 2, mode)
    pos, valid, empty = _windows(wlo, whi, w)
    g = tf.gather(rows, pos, axis=2, batch_dims=1)
    return _reduce_windows(g, valid[:, None], empty[:, None], 3, mode)



# -- the running-max implementation (ku until 2026-11-30), for the ratio -----------------------
def roi_pool_running_max(x, boxes, output, scale, mode):
    """``RoiPooling2D`` as it was until 2026-11-30: rows then columns, each a running
    ``tf.maximum`` over the window positions (``_pool_windows``), differentiated by autodiff
    (the gradients of every gather and maximum, summed)."""
    import tensorflow as tf

    from ku.layers.roi_pooling_2d import _pool_windows

    bidx, k, shape, hlo, hhi, wlo, whi = _bins(x, boxes, output, scale, "running_max")
    h, w = shape[1], shape[2]
    if k is None:
        rows = _pool_windows(lambda pos: tf.gather(x, pos, axis=1, batch_dims=1), hlo, hhi, h,
                             mode, (-1, -1))
    else:
        src = ops.broadcast_to(bidx[:, None], ops.shape(hlo))
        rows = _pool_windows(lambda pos: tf.gather_nd(x, ops.stack([src, pos], axis=-1)), hlo, hhi,
                             h, mode, (-1, -1))
    out = _pool_windows(lambda pos: tf.gather(rows, pos, axis=2, batch_dims=1), wlo, whi, w, mode,
                        (1, -1))
    if k is not None:
        out = ops.reshape(out, (-1, k, output, output, shape[3]))
    return out

# -- the scatter implementation (ku until 2026-11-30, commit 0c826d9), for the ratio ----------
def _first_max_v1(gather, label, lo, hi, length):
    """Running max over the window offsets with the label of the first maximum (as in 0c826d9:
    the layer's helper with its ``where`` update)."""
    from ku.layers.roi_pooling_2d import _first_max

    return _first_max(gather, label, lo, hi, length, increasing=False)


def roi_pool_scatter_v1(x, boxes, output, scale, mode):
    """``RoiPooling2D`` max as merged in 0c826d9 (2026-11-30): separable running max over the
    whole batch (rows, then columns) recording the first maximum's flat index, backward one
    ``SparseTensorDenseAdd`` scatter (``tf.custom_gradient``)."""
    import tensorflow as tf

    bidx, k, shape0, hlo, hhi, wlo, whi = _bins(x, boxes, output, scale, "scatter_v1")

    @tf.custom_gradient
    def pool(x):
        shape = tf.shape(x)
        h, w, c = shape[1], shape[2], shape[3]
        if k is None:
            def gather_rows(p):
                return tf.gather(x, p, axis=1, batch_dims=1)
        else:
            src = tf.broadcast_to(bidx[:, None], tf.shape(hlo))

            def gather_rows(p):
                return tf.gather_nd(x, tf.stack([src, p], axis=-1))
        rows, rarg, hwidth = _first_max_v1(gather_rows, lambda p: (p * w)[:, :, None, None],
                                           hlo, hhi, h)
        acc, arg, wwidth = _first_max_v1(
            lambda p: tf.gather(rows, p, axis=2, batch_dims=1),
            lambda p: tf.gather(rarg, p, axis=2, batch_dims=1) + p[:, None, :, None],
            wlo, whi, w)
        empty = tf.logical_or((hwidth <= 0)[:, :, None, None], (wwidth <= 0)[:, None, :, None])
        out = tf.where(empty, tf.zeros_like(acc), acc)
        hw = tf.cast(h, "int64") * tf.cast(w, "int64")
        c64 = tf.cast(c, "int64")
        index = ((tf.cast(bidx, "int64")[:, None, None, None] * hw + tf.cast(arg, "int64")) * c64
                 + tf.range(c64))

        def grad(dy):
            dy = tf.where(empty, tf.zeros_like(dy), dy)
            n = tf.reshape(tf.cast(shape[0], "int64") * hw * c64, [1])
            dx = tf.raw_ops.SparseTensorDenseAdd(
                a_indices=tf.reshape(index, [-1, 1]), a_values=tf.reshape(dy, [-1]), a_shape=n,
                b=tf.zeros(n, dy.dtype))
            return tf.reshape(dx, shape)

        return out, grad

    out = pool(x)
    if k is not None:
        out = ops.reshape(out, (-1, k, output, output, shape0[3]))
    return out


# -- RoiAlign2D as it was until 2026-11-30, for the ratio ------------------------------------
def roi_align_v1(x, boxes, output, scale, sampling_ratio):
    """``RoiAlign2D`` (``aligned=False``) until 2026-11-30: both row taps of all ``output * sr``
    sample rows gathered, ``(R, oh * sr, W, C)`` each, then both column taps, ``(R, oh * sr,
    ow * sr, C)`` each, then the mean of every bin's ``sr x sr`` samples; autodiff gradients."""
    import tensorflow as tf

    from ku.layers.roi_align_2d import _bilinear_axis

    flat, bidx, k = _flatten_boxes(boxes, "align_v1")
    b = flat * scale
    sr = sampling_ratio

    def samples(lo, hi):
        step = ops.maximum(hi - lo, 1.0) / float(output * sr)
        j = ops.arange(output * sr, dtype="float32")[None, :]
        return lo[:, None] + (j + 0.5) * step[:, None]

    ys, xs = samples(b[:, 0], b[:, 2]), samples(b[:, 1], b[:, 3])
    shape = tf.shape(x)
    h, w, c = shape[1], shape[2], x.shape[-1]
    y0, y1, wy0, wy1 = _bilinear_axis(ys, h)
    by = bidx[:, None] * h
    x_rows = tf.reshape(x, (-1, w, c))
    rows = tf.gather(x_rows, by + y0) * wy0[:, :, None, None] + tf.gather(x_rows, by + y1) * wy1[:, :, None, None]
    x0, x1, wx0, wx1 = _bilinear_axis(xs, w)
    cols = (tf.gather(rows, x0, axis=2, batch_dims=1) * wx0[:, None, :, None]
            + tf.gather(rows, x1, axis=2, batch_dims=1) * wx1[:, None, :, None])
    out = tf.reduce_mean(tf.reshape(cols, (-1, output, sr, output, sr, c)), axis=(2, 4))
    if k is not None:
        out = tf.reshape(out, (-1, k, output, output, c))
    return out


def _data(size, rng, args):
    """Features (NHWC), boxes ((B, 4) or (1, K, 4), input pixels), output side and scale."""
    if size == "theme":  # Jia et al.: stride-2 map of the 800 x 800 canvas, one box per image
        b, n, c = args.batch, args.size, args.channels
        x = rng.normal(size=(b, n, n, c)).astype(np.float32)
        hw = rng.integers(200, 801, size=(b, 2))
        boxes = np.concatenate([np.zeros((b, 2)), hw - 1], 1).astype(np.float32)
        return x, boxes, args.output, 0.5
    # Fast R-CNN (VGG16 conv5_3 of a ~600 x 800 image, stride 16): 128 random ROIs, 7 x 7
    x = rng.normal(size=(1, 38, 50, 512)).astype(np.float32)
    k = 128
    y1, x1 = rng.uniform(0, 560, k), rng.uniform(0, 760, k)
    y2 = np.minimum(y1 + rng.uniform(16, 400, k), 607)
    x2 = np.minimum(x1 + rng.uniform(16, 400, k), 799)
    return x, np.stack([y1, x1, y2, x2], -1).astype(np.float32)[None], 7, 1 / 16


def _torchvision_step(x, boxes, output, scale, weights, args):
    """torchvision.ops.roi_pool (or roi_align) forward + backward on the same data (NCHW,
    (x1, y1, x2, y2))."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    flat = boxes.reshape(-1, 4)
    bidx = np.repeat(np.arange(x.shape[0]), flat.shape[0] // x.shape[0])
    rois = torch.from_numpy(np.concatenate([bidx[:, None], flat[:, [1, 0, 3, 2]]], 1).astype(np.float32))
    w = weights.reshape((flat.shape[0],) + weights.shape[-3:])  # (R, oh, ow, C)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2)))

    def step():
        leaf = xt.detach().requires_grad_(True)
        if args.op == "align":
            y = torchvision.ops.roi_align(leaf, rois, (output, output), scale,
                                          sampling_ratio=args.sampling_ratio, aligned=False)
        else:
            y = torchvision.ops.roi_pool(leaf, rois, (output, output), scale)
        (y * wt).sum().backward()
        return y, leaf.grad

    def to_nhwc(y, g):
        return y.detach().numpy().transpose(0, 2, 3, 1).reshape(w.shape), g.numpy().transpose(0, 2, 3, 1)

    return step, to_nhwc


def run_size(size, args, tf, torch_ok):
    from ku.layers import RoiAlign2D, RoiPooling2D

    rng = np.random.default_rng(0)
    x_np, boxes_np, out, scale = _data(size, rng, args)
    b, c = x_np.shape[0], x_np.shape[-1]
    x, boxes = tf.constant(x_np), tf.constant(boxes_np)
    if args.op == "align":
        layer = RoiAlign2D(out, scale, sampling_ratio=args.sampling_ratio)
    else:
        layer = RoiPooling2D(out, scale, mode=args.mode)
    w_np = rng.normal(size=layer.compute_output_shape((x_np.shape, boxes_np.shape))).astype(np.float32)
    w = tf.constant(w_np)

    def fwd_bwd(pool):
        @tf.function(jit_compile=False)
        def step(x, boxes):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = pool(x, boxes)
                loss = tf.reduce_sum(y * w)
            return y, tape.gradient(loss, x)
        return step

    if args.op == "align":
        ours = "ku RoiAlign2D"
        impls = {ours: fwd_bwd(lambda x, bx: layer([x, bx])),
                 "align_v1": fwd_bwd(lambda x, bx: roi_align_v1(x, bx, out, scale, args.sampling_ratio))}
    else:
        ours = "ku RoiPooling2D"
        impls = {
            ours: fwd_bwd(lambda x, bx: layer([x, bx])),
            "running_max": fwd_bwd(lambda x, bx: roi_pool_running_max(x, bx, out, scale, args.mode)),
        }
        if args.mode == "max":
            impls["scatter_v1"] = fwd_bwd(lambda x, bx: roi_pool_scatter_v1(x, bx, out, scale, args.mode))
        if args.quick:
            impls.pop("running_max")
        if size == "theme" and not args.quick:  # (gather_k: ~6 s a round at the Fast R-CNN size)
            impls["gather_k"] = fwd_bwd(lambda x, bx: roi_pool_gather_k(x, bx, out, scale, args.mode))
            impls["python_loop"] = fwd_bwd(lambda x, bx: tf.concat(
                [layer([x[i:i + 1], bx[i:i + 1]]) for i in range(b)], 0))
            impls["map_fn"] = fwd_bwd(lambda x, bx: tf.map_fn(
                lambda e: layer([e[0][None], e[1][None]])[0], (x, bx),
                fn_output_signature=tf.TensorSpec((out, out, c), tf.float32)))
    calls = {name: (lambda fn=fn: fn(x, boxes)) for name, fn in impls.items()}
    ref = None
    for name, fn in calls.items():
        y, g = fn()  # trace + warm-up
        y, g = y.numpy(), g.numpy()
        if ref is None:
            ref = (y, g)
        elif args.op == "align":  # the same sums in another order
            np.testing.assert_allclose(y.reshape(ref[0].shape), ref[0], rtol=1e-5, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(g, ref[1], rtol=1e-5, atol=1e-5, err_msg=name)
        else:  # the outputs are bit-identical; gradients differ by the order of the sums only
            np.testing.assert_array_equal(y.reshape(ref[0].shape), ref[0], err_msg=name)
            np.testing.assert_allclose(g, ref[1], rtol=1e-5, atol=1e-5, err_msg=name)
    tv_note = ""
    tv_name = f"torchvision roi_{args.op}"
    if torch_ok and args.mode == "max":
        step, to_nhwc = _torchvision_step(x_np, boxes_np, out, scale, w_np, args)
        ty, tg = to_nhwc(*step())
        why = "float32 sample coordinates" if args.op == "align" else "float32 bin edges"
        tv_note = (f"torchvision vs ku: max |output diff| {np.abs(ty - ref[0].reshape(ty.shape)).max():.3g}, "
                   f"max |gradient diff| {np.abs(tg - ref[1]).max():.3g} ({why})")
        calls[tv_name] = step
    elif args.mode == "max":
        tv_note = "torchvision rows skipped: torch / torchvision not importable in this environment"
    ts = {name: [] for name in calls}
    for _ in range(args.repeats):  # alternating rounds: a slow moment of the machine hits all alike
        for name, fn in calls.items():
            t = time.perf_counter()
            y, g = fn()  # both run synchronously on the CPU: the results exist when the call returns
            ts[name].append(time.perf_counter() - t)
            # no .numpy() inside the timing: TensorFlow's copies the gradient (320 MB at the theme
            # size, ~60 ms) where torch's is a zero-copy view
    med = {name: float(np.median(v)) for name, v in ts.items()}

    shape = "x".join(map(str, x_np.shape))
    mode = f"sampling_ratio={args.sampling_ratio}" if args.op == "align" else f"mode={args.mode}"
    print(f"\n{size}: forward+backward, features {shape}, boxes {tuple(boxes_np.shape)} -> {out}x{out}, "
          f"spatial_scale {scale:g}, {mode}; median (min..max) of {args.repeats} alternating rounds\n")
    base = tv_name if tv_name in med else ours
    print(f"| implementation | ms / batch (median) | min..max ms | x {base} |")
    print("|---|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {1000 * t:.1f} | {1000 * min(ts[name]):.1f}..{1000 * max(ts[name]):.1f} "
              f"| {t / med[base]:.2f} |")
    if "scatter_v1" in med:
        print(f"\nku RoiPooling2D / scatter_v1 (medians): {med['ku RoiPooling2D'] / med['scatter_v1']:.2f}")
    if tv_note:
        print(f"\n{tv_note}")
    return {"seconds": med, "all_seconds": ts}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="theme,frcnn", help="comma-separated: theme, frcnn")
    ap.add_argument("--batch", type=int, default=8, help="theme: images per batch (paper: 16)")
    ap.add_argument("--size", type=int, default=397, help="theme: feature map side (800 canvas -> 397)")
    ap.add_argument("--channels", type=int, default=64, help="theme: channels (Inception stem: 64)")
    ap.add_argument("--output", type=int, default=146, help="theme: ROI output side (paper: 146)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up run)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of TF and torch")
    ap.add_argument("--mode", default="max", choices=["max", "average"], help="pooling mode")
    ap.add_argument("--op", default="pool", choices=["pool", "align"],
                    help="RoiPooling2D vs roi_pool, or RoiAlign2D vs roi_align (aligned=False)")
    ap.add_argument("--sampling_ratio", type=int, default=2, help="align: samples per bin and axis")
    ap.add_argument("--quick", action="store_true",
                    help="only ku RoiPooling2D, scatter_v1 and torchvision")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch_ok = torchvision is not None
    if torch_ok:
        torch.set_num_threads(args.threads)
    else:
        print(f"torchvision not available ({_TORCH_ERROR}); its rows are skipped")
    dev = tf.config.list_logical_devices("GPU")
    device = dev[0].name if dev else f"CPU ({platform.processor() or platform.machine()})"
    print(f"device {device}, {args.threads} threads, {time.strftime('%Y-%m-%d')}")
    results = {size: run_size(size, args, tf, torch_ok) for size in args.sizes.split(",")}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "device": device, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
