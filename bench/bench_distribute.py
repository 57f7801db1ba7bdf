"""Benchmarks of multi-worker training and sharded stores, each a ratio taken in one run.

1. workers: Pool-3FC training on stored wide features, samples/s of 2 MultiWorkerMirroredStrategy
   workers on 127.0.0.1 (global batch B, B/2 per worker, gRPC all-reduce of the gradients) vs 1
   process (global batch B), every process with the same number of threads. Ideal: 2.0x. Also
   timed in the 2-worker run: the all-reduce of one gradient-sized buffer alone, and a step on
   B/2 items in 1 process (the compute share of a 2-worker step).
2. shards: FeatureSequence items/s reading a store split into --shards files (a glob) vs the
   merged single file, random augmentation per item, shuffled (the training access pattern).

Usage:  .venv/bin/python bench/bench_distribute.py [--channels 2048] [--items 192] [--batch 32]
        [--epochs 3] [--threads 1] [--shards 8] [--out bench/results_distribute.json]
(--channels 16928 is the paper's Pool-3FC on InceptionResNet-v2 wide features: 63.8 M parameters.)
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_store(folder, n_items, channels, n_shards, n_aug=2, seed=0):
    """A (5, 5, channels) float16 store written in n_shards shards, plus the merged file."""
    from ku.data.store import FeatureStore, merge_stores, shard_bounds, shard_path

    rng = np.random.default_rng(seed)
    ids = [f"{800000 + i}" for i in range(n_items)]
    mos = rng.uniform(3, 8, n_items).astype(np.float32)
    paths = []
    for k in range(n_shards):
        a, b = shard_bounds(n_items, (k, n_shards))
        p = shard_path(Path(folder) / "feats.h5", (k, n_shards))
        with FeatureStore.create(p, ids[a:b], n_aug, (5, 5, channels), attrs={"shard": [k, n_shards]}) as s:
            for r in range(a, b, 16):
                x = rng.normal(0, 1, (min(16, b - r), n_aug, 5, 5, channels)).astype(np.float16)
                x[..., :8] += (mos[r:r + len(x)] - 5.5)[:, None, None, None, None]
                s.write_rows(r - a, x)
        paths.append(p)
    merged = merge_stores(paths, Path(folder) / "merged.h5")
    return ids, mos, paths, merged


# ---------------------------------------------------------------------------------------------
# worker process

def worker(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from ku import distribute

    multi = "TF_CONFIG" in os.environ
    strategy = distribute.get_strategy("multi_worker" if multi else "default")
    import keras

    from ku.data.generators import feature_dataset
    from ku.models.heads import pool_3fc

    spec = json.loads(Path(args.spec).read_text())
    keras.utils.set_random_seed(0)
    with distribute.scope(strategy):
        model = pool_3fc((5, 5, args.channels))
        model.compile(keras.optimizers.Adam(1e-4), "mse")
    n_params = model.count_params()
    kw = dict(batch_size=args.batch, augmentation="random", seed=0)
    if multi:
        distribute.prepare_model(model, strategy, sync_batch_norm=bool(args.sync_bn))
        data = distribute.distribute_features(strategy, spec["store"], spec["ids"], spec["mos"], **kw)
    else:
        data = feature_dataset(spec["store"], spec["ids"], spec["mos"], **kw)
    model.fit(data, epochs=1, verbose=0)  # trace + warm up
    t = time.perf_counter()
    model.fit(data, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - t
    out = {"samples_per_s": args.epochs * len(spec["ids"]) / seconds, "seconds": seconds,
           "params": n_params, "replicas": strategy.num_replicas_in_sync}
    if multi:  # the all-reduce alone: one gradient-sized float32 buffer, SUM over the workers
        grad = tf.ones([sum(int(np.prod(v.shape)) for v in model.trainable_variables)], tf.float32)

        @tf.function
        def allreduce():
            return tf.distribute.get_replica_context().all_reduce("SUM", grad)

        strategy.run(allreduce)
        t = time.perf_counter()
        for _ in range(3):
            strategy.experimental_local_results(strategy.run(allreduce))[0].numpy()
        out["allreduce_s"] = (time.perf_counter() - t) / 3
        out["allreduce_mb"] = grad.shape[0] * 4 / 1e6
    else:  # the compute of one worker's share: a step on half the global batch, one process
        x = np.zeros((args.batch // 2, 5, 5, args.channels), np.float32)
        y = np.zeros((args.batch // 2, 1), np.float32)
        model.train_on_batch(x, y)
        t = time.perf_counter()
        for _ in range(3):
            model.train_on_batch(x, y)
        out["half_batch_step_s"] = (time.perf_counter() - t) / 3
        x2 = np.zeros((args.batch, 5, 5, args.channels), np.float32)
        y2 = np.zeros((args.batch, 1), np.float32)
        model.train_on_batch(x2, y2)
        t = time.perf_counter()
        for _ in range(3):
            model.train_on_batch(x2, y2)
        out["full_batch_step_s"] = (time.perf_counter() - t) / 3
    task = json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]["index"]
    Path(args.result).with_suffix(f".{task}.json").write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------

def _run(cmd_args, n_workers, timeout):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", PYTHONPATH=str(ROOT))
    procs = []
    from ku.distribute import loopback_tf_configs

    configs = loopback_tf_configs(n_workers)
    for i in range(n_workers):
        e = dict(env)
        if n_workers > 1:
            e["TF_CONFIG"] = configs[i]
        procs.append(subprocess.Popen([sys.executable, __file__, *cmd_args], env=e, start_new_session=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + timeout
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=max(1, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            raise RuntimeError(f"{n_workers} worker(s) did not finish within {timeout} s")
    for p, o in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"worker failed:\n{o[-3000:]}")


def bench_workers(args, spec_path, work):
    common = ["--role=worker", f"--spec={spec_path}", f"--channels={args.channels}", f"--batch={args.batch}",
              f"--epochs={args.epochs}", f"--threads={args.threads}", f"--sync_bn={args.sync_bn}"]
    _run(common + [f"--result={work / 'one'}"], 1, args.timeout)
    _run(common + [f"--result={work / 'two'}"], 2, args.timeout)
    one = json.loads((work / "one.0.json").read_text())
    two = [json.loads((work / f"two.{i}.json").read_text()) for i in range(2)]
    return {"params": one["params"], "one_worker_samples_per_s": one["samples_per_s"],
            "two_workers_samples_per_s": min(t["samples_per_s"] for t in two),
            "ratio": min(t["samples_per_s"] for t in two) / one["samples_per_s"],
            "step_s_one_worker": args.batch / one["samples_per_s"],
            "step_s_two_workers": args.batch / min(t["samples_per_s"] for t in two),
            "half_batch_step_s": one["half_batch_step_s"], "full_batch_step_s": one["full_batch_step_s"],
            "allreduce_s": two[0]["allreduce_s"], "allreduce_mb": two[0]["allreduce_mb"]}


def bench_shards(ids, mos, shard_glob, merged, batch, epochs=2):
    from ku.data.generators import FeatureSequence

    res = {}
    for name, spec in (("single", str(merged)), ("sharded", shard_glob), ("single2", str(merged))):
        seq = FeatureSequence(spec, ids, mos, batch_size=batch, augmentation="random", seed=0)
        seq[0]
        t = time.perf_counter()
        n = 0
        for _ in range(epochs):
            for i in range(len(seq)):
                n += len(seq[i][0])
            seq.on_epoch_end()
        res[name] = n / (time.perf_counter() - t)
        seq.close()
    single = (res["single"] + res["single2"]) / 2  # before and after: cancels drift
    return {"items": n, "single_items_per_s": single, "sharded_items_per_s": res["sharded"],
            "ratio": res["sharded"] / single}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="main", choices=["main", "worker"])
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--items", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--sync_bn", type=int, default=1, help="synchronized BatchNormalization (ku default)")
    ap.add_argument("--spec")
    ap.add_argument("--result")
    ap.add_argument("--out", default="bench/results_distribute.json")
    args = ap.parse_args()
    if args.role == "worker":
        return worker(args)
    command = "python bench/bench_distribute.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ids, mos, paths, merged = make_store(work, args.items, args.channels, args.shards)
        spec = work / "spec.json"
        spec.write_text(json.dumps({"store": str(work / "feats.shard-*.h5"), "ids": ids, "mos": mos.tolist()}))
        sh = bench_shards(ids, mos, str(work / "feats.shard-*.h5"), merged, args.batch)
        print("shards:", json.dumps(sh))
        wk = bench_workers(args, spec, work)
        print("workers:", json.dumps(wk))
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "command": command, "args": vars(args), "workers": wk, "shards": sh}
    Path(args.out).write_text(json.dumps(res, indent=1))
    print()
    print("| what | ku | reference | ratio |")
    print("|---|---|---|---|")
    print(f"| Pool-3FC training ({wk['params'] / 1e6:.1f} M params, global batch {args.batch}, "
          f"{args.threads} thread(s)/process), samples/s | 2 MWMS workers on 127.0.0.1 "
          f"{wk['two_workers_samples_per_s']:.1f} | 1 process {wk['one_worker_samples_per_s']:.1f} | "
          f"{wk['ratio']:.2f}x (ideal 2x) |")
    print(f"| feature reads, items/s ({args.items} items of 5x5x{args.channels}, batch {args.batch}) | "
          f"`FeatureSequence` on a glob of {args.shards} shards {sh['sharded_items_per_s']:.0f} | "
          f"the merged single store {sh['single_items_per_s']:.0f} | {sh['ratio']:.2f}x |")
    print(f"\nwhere the time goes (2 workers): a step {wk['step_s_two_workers']:.3f} s = compute on "
          f"B/2 ~{wk['half_batch_step_s']:.3f} s + all-reduce of {wk['allreduce_mb']:.0f} MB gradients "
          f"~{wk['allreduce_s']:.3f} s (gRPC, loopback); 1 process: step {wk['step_s_one_worker']:.3f} s "
          f"(compute on B {wk['full_batch_step_s']:.3f} s)")
    print(f"command: {command}; wrote {args.out}")


if __name__ == "__main__":
    main()
