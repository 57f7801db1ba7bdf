"""Benchmark: aspect-ratio buckets vs one fixed canvas, ratios taken in one run.

1. Padded pixels / image pixels (no network): simulated AVA sizes (``simulate_ava_sizes``, mean
   ~635 x 509, longer side <= 800) at batch 128 -- the evaluation plan, the worst of three
   training epochs, and Jia et al.'s fixed 800 x 800 canvas (§III-A); the demo set at shorter side
   500 (Murray & Gordo §3.4) at batch 16 -- buckets vs one canvas of the largest side.
2. Throughput (images/s) of the masked APM network (``apm_model("resnet50", weights=None,
   masked=True)``: exact padding masking + adaptive SPP, Murray & Gordo §3.2) on the demo images
   resized to shorter side ``--side`` (128), batch ``--batch``: bucketed batches
   (``aspect_batches``, evaluation plan) vs the same images in one fixed square canvas of the
   largest side (``aspect_batches(canvas="max")``); inference (forward) and training steps
   (forward + backward + SGD update). The batches are decoded once before timing (the model's
   compute is what is compared); both modes use one ``tf.function`` with dynamic shapes, traced
   before timing, and alternate pass by pass (``--rounds``), the median pass counting. The
   masked outputs of the two modes are checked to agree (they must: exact masking).

Usage:  .venv/bin/python bench/bench_buckets.py [--images 64] [--side 128] [--batch 16]
        [--rounds 2] [--no-train] [--out bench/results_buckets.json]
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def padding_rows():
    from ku.data import aspect_batches as ab

    sizes = ab.simulate_ava_sizes(20000, seed=0)
    ava = ab.padding_report(sizes, 128, shorter_side=None, fixed_canvas=(800, 800), epochs=3)
    demo = ab.demo_padding_report(batch_size=16, shorter_side=500)
    return {"simulated_ava_batch128": ava, "demo_side500_batch16": demo}


def materialise(res):
    return [(x.numpy(), s.numpy()) for x, s in res.dataset.take(res.steps_per_epoch)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-train", action="store_true", help="skip the training-step throughput")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_buckets.json")))
    args = ap.parse_args(argv)
    t_start = time.time()

    pad = padding_rows()
    print("padding:", json.dumps(pad), flush=True)

    import keras
    import tensorflow as tf

    from ku.data import aspect_batches as ab
    from ku.data.demo import load_demo
    from ku.models import apm

    ids = load_demo().iloc[: args.images].reset_index(drop=True)
    bucketed = ab.aspect_batches(ids, args.batch, shorter_side=args.side, prefetch=0)
    fixed = ab.aspect_batches(ids, args.batch, shorter_side=args.side, canvas="max", prefetch=0)
    data = {"buckets": materialise(bucketed), "fixed": materialise(fixed)}
    n = len(bucketed.ids)
    side = int(bucketed.sizes.max())

    keras.utils.set_random_seed(0)
    model = apm.apm_model("resnet50", None, fc_units=256, masked=True)
    spec = [tf.TensorSpec((None, None, None, 3), tf.float32), tf.TensorSpec((None, 2), tf.int32)]
    infer = tf.function(lambda x, s: model([x, s], training=False), input_signature=spec)
    opt = keras.optimizers.SGD(1e-4, momentum=0.9)
    target = tf.constant(np.full((1, 10), 0.1, np.float32))

    @tf.function(input_signature=spec)
    def train_step(x, s):
        with tf.GradientTape() as tape:
            p = model([x, s], training=True)
            loss = tf.reduce_mean(tf.square(p - target))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    def run(fn, batches):
        t = time.perf_counter()
        outs = [np.asarray(fn(x, s)) for x, s in batches]
        return time.perf_counter() - t, outs

    # trace + agreement of the masked outputs (rows in ids order)
    preds = {}
    for mode, res in (("buckets", bucketed), ("fixed", fixed)):
        _, outs = run(infer, data[mode])
        full = np.zeros((n, 10), np.float32)
        full[np.concatenate(res.batches[:res.steps_per_epoch])] = np.concatenate(outs)
        preds[mode] = full
    max_rel = float(np.abs(preds["buckets"] - preds["fixed"]).max() / np.abs(preds["fixed"]).max())
    kinds = [("inference", infer)] + ([] if args.no_train else [("training", train_step)])
    if not args.no_train:
        for mode in data:
            train_step(*data[mode][0])  # trace
    timing = {}
    for kind, fn in kinds:
        times = {"buckets": [], "fixed": []}
        for _ in range(args.rounds):
            for mode in ("buckets", "fixed"):
                times[mode].append(run(fn, data[mode])[0])
        timing[kind] = {m: {"seconds_per_pass": float(np.median(t)), "images_per_s": n / float(np.median(t)),
                            "all_seconds": [float(v) for v in t]}
                        for m, t in times.items()}
        timing[kind]["speedup"] = timing[kind]["fixed"]["seconds_per_pass"] / timing[kind]["buckets"]["seconds_per_pass"]
        print(kind, json.dumps(timing[kind]), flush=True)

    ava, demo = pad["simulated_ava_batch128"], pad["demo_side500_batch16"]
    rows = [
        f"| padded / image pixels, simulated AVA sizes (20,000, mean {ava['image_pixels'] / 1e3:.0f}k px), "
        f"batch 128 | buckets: eval {ava['eval_ratio']:.2f}, training {ava['train_ratio_max']:.2f} (worst of 3 epochs) "
        f"| fixed 800x800 canvas {ava['fixed_ratio']:.2f} | {ava['fixed_ratio'] / ava['train_ratio_max']:.2f}x fewer pixels "
        f"| <= 1.3 | {'met' if max(ava['eval_ratio'], ava['train_ratio_max']) <= 1.3 else '**missed**'} |",
        f"| padded / image pixels, demo set ({demo['n_images']} images, shorter side 500), batch 16 "
        f"| buckets: eval {demo['eval_ratio']:.2f}, training {demo['train_ratio_max']:.2f} "
        f"| one canvas of the largest side {demo['max_canvas_ratio']:.2f} (800x800 at original size: {demo['fixed_ratio']:.2f}) "
        f"| {demo['max_canvas_ratio'] / demo['train_ratio_max']:.2f}x | <= 1.3 "
        f"| {'met' if max(demo['eval_ratio'], demo['train_ratio_max']) <= 1.3 else '**missed**'} |",
    ]
    for kind, t in timing.items():
        rows.append(
            f"| masked APM ResNet-50 {kind}, images/s ({n} demo images, shorter side {args.side}, batch {args.batch}) "
            f"| buckets {t['buckets']['images_per_s']:.1f} (pixels x{bucketed.padding_ratio:.2f}) "
            f"| fixed {side}x{side} canvas {t['fixed']['images_per_s']:.1f} (pixels x{fixed.padding_ratio:.2f}) "
            f"| {t['speedup']:.2f}x | > 1 | {'met' if t['speedup'] > 1 else '**missed**'} |")
    cmd = "python bench/bench_buckets.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "tensorflow": tf.__version__, "command": cmd.strip(), "padding": pad,
           "throughput": {"images": n, "side": args.side, "batch": args.batch, "canvas": [side, side],
                          "bucket_padding_ratio": bucketed.padding_ratio,
                          "fixed_padding_ratio": fixed.padding_ratio,
                          "masked_max_relative_difference": max_rel, **timing},
           "seconds": time.time() - t_start}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nmasked outputs, buckets vs fixed canvas: max relative difference {max_rel:.2g}")
    print(f"Reproduce: `.venv/bin/python bench/bench_buckets.py` (writes {args.out}; {out['seconds']:.0f} s)\n")
    print("| what | ku (buckets) | reference | ratio | goal | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    return 0 if max_rel < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
