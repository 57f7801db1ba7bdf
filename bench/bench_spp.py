"""Benchmark: SpatialPyramidPooling (Murray & Gordo 2017 §3.2) forward+backward vs a per-image loop.

Both compute the same thing on the same tensors: adaptive max SPP over each image's valid region
of a padded batch of feature maps, stacked and L2-normalised, then the gradient of a random
projection of the output with respect to the feature maps (``tf.GradientTape``).

* ku: ``ku.layers.SpatialPyramidPooling`` -- one batched op graph (bin masks + where + max),
  dynamic batch/spatial sizes;
* loop: a Python loop over the images that slices each valid region ``x[b, :h, :w]`` and every
  cell, pools with ``keras.ops.max``, concatenates and normalises -- what one writes without a
  batched layer (the sizes are Python ints, so in graph mode the loop is unrolled for this batch).

Both eager and inside one ``tf.function`` (forward + gradient). The runs alternate A/B for
``--rounds`` rounds and the median time per step is reported, so machine load cancels in the
ratio. Outputs and gradients are checked to agree first.

Usage:  .venv/bin/python bench/bench_spp.py [--batch 16] [--channels 2048] [--rounds 7]
        [--out bench/results_spp.json]
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def loop_spp(x, sizes, levels, epsilon=1e-12):
    """Per-image reference: slice each valid region and each cell, ``keras.ops.max`` per cell."""
    from keras import ops

    out = []
    for b, (h, w) in enumerate(sizes):
        xb = x[b, :h, :w, :]
        cells = []
        for level in levels:
            for i in range(level):
                r0, r1 = (i * h) // level, ((i + 1) * h + level - 1) // level
                for j in range(level):
                    c0, c1 = (j * w) // level, ((j + 1) * w + level - 1) // level
                    cells.append(ops.max(xb[r0:r1, c0:c1, :], axis=(0, 1)))
        v = ops.concatenate(cells, axis=0)
        v = v * ops.rsqrt(ops.maximum(ops.sum(ops.square(v)), epsilon))
        out.append(v)
    return ops.stack(out, axis=0)


def make_steps(levels, sizes_np, proj):
    import tensorflow as tf

    from ku.layers import SpatialPyramidPooling

    layer = SpatialPyramidPooling(levels, mode="max", l2_normalize=True)
    sizes_list = [tuple(int(v) for v in s) for s in sizes_np]
    sizes_t = tf.constant(sizes_np, tf.int32)

    def ku_step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer([x, sizes_t])
            loss = tf.reduce_sum(y * proj)
        return y, tape.gradient(loss, x)

    def loop_step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = loop_spp(x, sizes_list, levels)
            loss = tf.reduce_sum(y * proj)
        return y, tape.gradient(loss, x)

    spec = [tf.TensorSpec((None, None, None, None), tf.float32)]
    return {
        "eager": (ku_step, loop_step),
        "graph": (tf.function(ku_step, input_signature=spec), tf.function(loop_step)),
    }


def time_pair(fa, fb, x, rounds, reps):
    """Alternate fa / fb, ``reps`` calls each per round; median seconds per call of each."""
    ta, tb = [], []
    for _ in range(rounds):
        for f, acc in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            for _ in range(reps):
                y, g = f(x)
                np.asarray(g)  # wait for the result
            acc.append((time.perf_counter() - t) / reps)
    return float(np.median(ta)), float(np.median(tb))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--height", type=int, default=16)
    ap.add_argument("--width", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_spp.json")))
    args = ap.parse_args(argv)
    import tensorflow as tf

    rng = np.random.default_rng(0)
    B, H, W, C = args.batch, args.height, args.width, args.channels
    # varied valid regions inside the (H, W) canvas, the largest one filling it
    sizes = np.stack([rng.integers(max(1, H // 2), H + 1, B), rng.integers(max(1, W // 2), W + 1, B)], 1)
    sizes[0] = (H, W)
    x = tf.constant(rng.normal(size=(B, H, W, C)).astype(np.float32))
    rows, results = [], []
    for levels in [(3,), (1, 2, 3)]:
        n_out = C * sum(level * level for level in levels)
        proj = tf.constant(rng.normal(size=(1, n_out)).astype(np.float32))
        steps = make_steps(levels, sizes, proj)
        for mode, (fa, fb) in steps.items():
            ya, ga = fa(x)  # warm-up (traces in graph mode) and agreement check
            yb, gb = fb(x)
            dy = float(np.abs(np.asarray(ya) - np.asarray(yb)).max())
            dg = float(np.abs(np.asarray(ga) - np.asarray(gb)).max() / np.abs(np.asarray(gb)).max())
            if dy > 1e-5 or dg > 1e-5:
                print(f"MISMATCH levels={levels} {mode}: output {dy:.3g}, gradient {dg:.3g}", file=sys.stderr)
                return 1
            reps = 5 if mode == "graph" else 2
            t_ku, t_loop = time_pair(fa, fb, x, args.rounds, reps)
            res = {"levels": list(levels), "mode": mode, "batch": B, "canvas": [H, W], "channels": C,
                   "ku_ms": 1e3 * t_ku, "loop_ms": 1e3 * t_loop, "speedup": t_loop / t_ku,
                   "max_output_difference": dy, "max_relative_gradient_difference": dg}
            results.append(res)
            print(json.dumps(res), flush=True)
            rows.append(f"| `SpatialPyramidPooling` levels {tuple(levels)} max+L2, forward+backward, {mode}, "
                        f"B={B} {H}x{W}x{C} varied valid sizes | {1e3 * t_ku:.1f} ms | per-image loop "
                        f"(slices + `keras.ops.max`) {1e3 * t_loop:.1f} ms | {t_loop / t_ku:.1f}x |")
    cmd = "python bench/bench_spp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "tensorflow": tf.__version__, "command": cmd.strip(), "sizes": sizes.tolist(), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nReproduce: `.venv/bin/python bench/bench_spp.py` (writes {args.out})\n")
    print("| what | ku | reference | ratio (speed-up) |")
    print("|---|---|---|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
