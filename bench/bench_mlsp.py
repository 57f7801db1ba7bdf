"""Benchmarks of the Hosu et al. 2019 pipeline, each a ratio taken in one run on the same data.

1. extraction: `extract_features` (read + 8 augmentations + IRNv2 MLSP wide + float16 HDF5 write)
   vs the bare backbone forward pass (keras.applications InceptionResNetV2, include_top=False) on
   the same 8-crop batches, compiled the same way (tf.function, dynamic sizes). Goal >= 0.9x.
2. reader: `FeatureSequence` batches (random augmentation per item, shuffled rows) vs raw
   sequential h5py reads of the same number of feature vectors. Goal >= 0.8x.
3. input wait: share of a Pool-3FC training epoch spent waiting for input = 1 - (time of the same
   steps on in-memory arrays) / (time with FeatureSequence), medians of alternating one-epoch
   rounds timed inside the epoch. Goal < 5%.

Usage:  .venv/bin/python bench/bench_mlsp.py [--images 24] [--out bench/results_mlsp.json]
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_extraction(ids, work):
    import keras
    import tensorflow as tf

    from ku.data.augment import hosu_augmentations, augment
    from ku.data.images import read_image
    from ku.extraction import extract_features
    from ku.models.mlsp import mlsp_extractor

    keras.utils.set_random_seed(0)
    extractor = mlsp_extractor("inception_resnet_v2", weights=None, features="wide")
    bare = keras.applications.InceptionResNetV2(include_top=False, weights=None,
                                                input_shape=(None, None, 3))

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
                 reduce_retracing=True)
    def bare_fwd(x):
        return bare(x, training=False)

    augs = hosu_augmentations()
    batches = [np.stack([augment(read_image(p), a) for a in augs]).astype("float32") / 127.5 - 1
               for p in ids["image_path"]]
    for b in batches[:2]:
        bare_fwd(b)  # warm-up traces
    t = time.perf_counter()
    for b in batches:
        np.asarray(bare_fwd(b))
    t_bare = time.perf_counter() - t
    warm = ids.iloc[:2]
    extract_features(warm, work / "warm.h5", extractor, progress=False)
    t = time.perf_counter()
    rep = extract_features(ids, work / "store.h5", extractor, progress=False)
    t_ku = time.perf_counter() - t
    n = len(ids)
    return {"images": n, "bare_images_per_s": n / t_bare, "ku_images_per_s": n / t_ku,
            "ratio": t_bare / t_ku, "failed": rep.n_failed}, work / "store.h5"


def bench_reader(store_path, ids, batch_size=16, epochs=3):
    import h5py

    from ku.data.generators import FeatureSequence

    seq = FeatureSequence(store_path, ids, ids["mos"].to_numpy("float32"), batch_size=batch_size,
                          augmentation="random", seed=0)
    n_items = 0
    t = time.perf_counter()
    for e in range(epochs):
        for i in range(len(seq)):
            x, _ = seq[i]
            n_items += len(x)
        seq.on_epoch_end()
    t_seq = time.perf_counter() - t
    with h5py.File(store_path, "r") as f:
        d = f["features"]
        n_rows = d.shape[0]
        t = time.perf_counter()
        done = 0
        while done < n_items:
            for s in range(0, n_rows, batch_size):
                x = d[s:s + batch_size, 0].astype("float32")
                done += len(x)
                if done >= n_items:
                    break
        t_raw = time.perf_counter() - t
    return {"items": n_items, "sequence_items_per_s": n_items / t_seq,
            "raw_h5py_items_per_s": n_items / t_raw, "ratio": t_raw / t_seq}


def bench_input_wait(store_path, ids, batch_size=8, rounds=5, repeat=4):
    """Alternating one-epoch rounds (FeatureSequence, in-memory, FeatureSequence, ...), each timed
    from the epoch's first to its last step by a callback, so that the ~1 s that Keras/tf.data
    sometimes spend tearing down the iterator after ``fit``'s last callback (seen in both modes,
    after ``on_train_end``) is not counted. Medians of the rounds (and minima, for comparison).
    The ids are listed ``repeat`` times so that an epoch has more than a few steps (the first
    batch of an epoch cannot be prefetched; in a real epoch of thousands of steps it is noise)."""
    import keras

    from ku.data.generators import FeatureSequence
    from ku.data.store import FeatureStore
    from ku.models.heads import pool_3fc

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    import pandas as pd

    ids = pd.concat([ids] * repeat, ignore_index=True)
    y = ids["mos"].to_numpy("float32")
    seq = FeatureSequence(store_path, ids, y, batch_size=batch_size, augmentation="random", seed=0)
    with FeatureStore(store_path) as s:
        x_mem = s.read(s.index_of(ids["image_id"].astype(str).tolist()), np.zeros(len(ids), int))
    x_mem = x_mem.reshape((len(ids),) + tuple(x_mem.shape[-3:]))
    keras.utils.set_random_seed(0)
    model = pool_3fc(tuple(x_mem.shape[1:]))
    model.compile(keras.optimizers.Adam(1e-4), "mse")
    model.fit(seq, epochs=1, verbose=0, shuffle=False)  # trace both ways of feeding once
    model.fit(x_mem, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    timer = EpochTimer()
    t_seq, t_mem = [], []
    for _ in range(rounds):
        model.fit(seq, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
        t_seq.append(timer.seconds)
        model.fit(x_mem, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
        t_mem.append(timer.seconds)
    m_seq, m_mem = float(np.median(t_seq)), float(np.median(t_mem))
    return {"steps_per_round": len(seq), "rounds": rounds, "median_seconds_sequence": m_seq,
            "median_seconds_in_memory": m_mem, "seconds_sequence": t_seq, "seconds_in_memory": t_mem,
            "input_wait_share": max(0.0, 1 - m_mem / m_seq),
            "input_wait_share_of_minima": max(0.0, 1 - min(t_mem) / min(t_seq))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--out", default="bench/results_mlsp.json")
    args = ap.parse_args()
    from ku.data.demo import load_demo

    ids = load_demo().iloc[: args.images].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ext, store = bench_extraction(ids, work)
        print("extraction:", json.dumps(ext))
        rd = bench_reader(store, ids)
        print("reader:", json.dumps(rd))
        iw = bench_input_wait(store, ids)
        print("input wait:", json.dumps(iw))
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "extraction": ext, "reader": rd, "input_wait": iw}
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
