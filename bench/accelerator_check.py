"""Accelerator check: ku's models on the JAX backend, without TensorFlow, in one short run.

Run through ``bench/accelerator_check.sh`` (which installs keras and ku from wheels carried with
the tree). Measures, on the default JAX device (a GPU where there is one), in one run, rounds
alternating where two implementations are compared:

1. wide MLSP extraction (Hosu et al. 2019 §3.1: the 43 InceptionResNet-v2 taps, each area-pooled
   to 5 x 5, ``ku.models.mlsp_extractor(features="wide")``) against the bare InceptionResNet-v2
   forward pass, on the same batches: 8 crops of 87.5% of an 800 x 600 image per batch (the
   stored augmentations); images/s and the ratio;
2. Pool-3FC training (§3.2.2, ``ku.models.pool_3fc``, 63.8M parameters) on random (B, 5, 5, 16928)
   features with Adam, batch 128 (§3.3): samples/s of compiled training steps;
3. ``ku.layers.RoiPooling2D`` forward + backward (one ``jax.jit`` of the pooled output's
   weighted sum and its gradient) against ``torchvision.ops.roi_pool`` on the torch device
   (CUDA where there is one; skipped with a message without torch): at Jia et al.'s size
   (8 x 397 x 397 x 64, one box per image -> 146 x 146) and at a Fast R-CNN size
   (1 x 38 x 50 x 512, 128 boxes -> 7 x 7); medians of alternating rounds and the ratio.

Backbones are random (``weights=None``): the speed does not depend on the weights. The whole run
is sized to take a few minutes on a GPU; ``--quick`` shrinks it for a CPU (a check that it runs).

  KERAS_BACKEND=jax python bench/accelerator_check.py [--quick] [--json=results_accelerator.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

try:  # torch first, as in bench_roi.py
    import torch
    import torchvision
except Exception as _e:  # noqa: BLE001 - the torchvision rows are skipped
    torch = torchvision = None
    _TORCH_ERROR = f"{type(_e).__name__}: {_e}"

import jax  # noqa: E402
import keras  # noqa: E402


def _block(x):
    return jax.block_until_ready(x)


def _median(ts):
    return float(np.median(ts)), float(np.min(ts)), float(np.max(ts))


def alternate(fns: dict, rounds: int) -> dict:
    """Call every function once per round, in turn; seconds per call (median, min, max)."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: _median(v) for k, v in times.items()}


def crops(h: int, w: int, seed: int = 0) -> np.ndarray:
    """The 8 stored augmentations of one image: 4 corner crops of 87.5%, each also mirrored."""
    img = np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype("float32")
    ch, cw = int(round(h * 0.875)), int(round(w * 0.875))
    out = []
    for y, x in [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]:
        c = img[y:y + ch, x:x + cw]
        out += [c, c[:, ::-1]]
    return np.stack(out)


def check_extraction(rounds: int, size) -> dict:
    from ku.backbones import build_backbone
    from ku.models.mlsp import mlsp_extractor

    backbone = build_backbone("inception_resnet_v2", weights=None)
    extractor = mlsp_extractor("inception_resnet_v2", weights=None, features="wide",
                               backbone_model=backbone)
    batch = crops(*size)
    bare = jax.jit(lambda x: backbone(x, training=False))
    mlsp = jax.jit(lambda x: extractor(x, training=False))
    out = _block(mlsp(batch))  # compile both
    _block(bare(batch))
    res = alternate({"bare": lambda: _block(bare(batch)), "mlsp": lambda: _block(mlsp(batch))}, rounds)
    return {"image_hw": list(size), "batch": int(batch.shape[0]), "feature_shape": list(out.shape[1:]),
            "images_per_s": {k: 1.0 / v[0] for k, v in res.items()},
            "seconds_per_image": res, "ratio_mlsp_to_bare": res["bare"][0] / res["mlsp"][0]}


def check_pool3fc(steps: int, batch: int) -> dict:
    from ku.models.heads import pool_3fc

    model = pool_3fc()
    model.compile(keras.optimizers.Adam(1e-4), "mse", jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 5, 5, 16928)).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")
    model.train_on_batch(x, y)  # compile
    t = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(loss)
    dt = time.perf_counter() - t
    return {"batch": batch, "steps": steps, "parameters": int(model.count_params()),
            "samples_per_s": batch * steps / dt, "seconds_per_step": dt / steps}


def roi_case(name: str, quick: bool):
    rng = np.random.default_rng(1)
    if name == "theme":
        b, hw, c, out, scale = (2 if quick else 8), (397 if not quick else 99), 64, (146 if not quick else 36), 0.5
        sizes = rng.integers(hw, 2 * hw, (b, 2))
        boxes = np.concatenate([np.zeros((b, 2)), sizes - 1], axis=1).astype("float32")  # (B, 4)
        x = rng.normal(size=(b, hw, hw, c)).astype("float32")
        return x, boxes, out, scale
    b, (h, w), c, k, out, scale = 1, (38, 50), (512 if not quick else 64), 128, 7, 1 / 16
    y1, x1 = rng.uniform(0, 16 * h - 32, (b, k)), rng.uniform(0, 16 * w - 32, (b, k))
    boxes = np.stack([y1, x1, y1 + rng.uniform(16, 16 * h / 2, (b, k)),
                      x1 + rng.uniform(16, 16 * w / 2, (b, k))], -1).astype("float32")  # (B, K, 4)
    x = rng.normal(size=(b, h, w, c)).astype("float32")
    return x, boxes, out, scale


def check_roi(rounds: int, quick: bool) -> dict:
    from ku.layers import RoiPooling2D

    results = {}
    for name in ("theme", "frcnn"):
        x, boxes, out, scale = roi_case(name, quick)
        layer = RoiPooling2D(out, spatial_scale=scale)
        wshape = layer.compute_output_shape((x.shape, boxes.shape))
        wts = np.random.default_rng(2).uniform(1, 2, wshape).astype("float32")
        step = jax.jit(jax.value_and_grad(lambda v: keras.ops.sum(layer([v, boxes]) * wts)))
        _block(step(x))
        fns = {"ku RoiPooling2D (jax)": lambda: _block(step(x))}
        if torch is not None:
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            xt = torch.tensor(x.transpose(0, 3, 1, 2), device=dev, requires_grad=True)
            bb = boxes.reshape(-1, 4)
            idx = np.repeat(np.arange(x.shape[0]), bb.shape[0] // x.shape[0])
            rois = torch.tensor(np.concatenate([idx[:, None], bb[:, [1, 0, 3, 2]]], 1).astype("float32"),
                                device=dev)  # (index, x1, y1, x2, y2)
            wt = torch.tensor(wts.reshape(-1, *wts.shape[-3:]).transpose(0, 3, 1, 2).copy(), device=dev)

            def tv():
                xt.grad = None
                s = (torchvision.ops.roi_pool(xt, rois, (out, out), scale) * wt).sum()
                s.backward()
                if dev == "cuda":
                    torch.cuda.synchronize()

            tv()
            with torch.no_grad():  # outputs compared before timing (ku's bin edges are exact)
                ref = torchvision.ops.roi_pool(xt, rois, (out, out), scale).cpu().numpy()
            got = np.asarray(layer([x, boxes])).reshape(-1, out, out, x.shape[-1]).transpose(0, 3, 1, 2)
            diff = np.abs(got - ref)
            row_check = {"max_abs_diff": float(diff.max()), "share_differing": float((diff > 0).mean())}
            fns[f"torchvision roi_pool ({dev})"] = tv
        res = alternate(fns, rounds)
        row = {"shape": list(x.shape), "boxes": list(boxes.shape), "output": out, "seconds": res}
        if torch is not None:
            row["outputs_vs_torchvision"] = row_check
        if len(res) == 2:
            (ku_t, *_), (tv_t, *_) = res.values()
            row["ratio_ku_to_torchvision"] = ku_t / tv_t
        results[name] = row
    if torch is None:
        results["torchvision"] = f"skipped: {_TORCH_ERROR}"
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few rounds (CPU check)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    quick = args.quick
    tf_loaded = "tensorflow" in sys.modules
    info = {"date": time.strftime("%Y-%m-%d"), "backend": keras.backend.backend(),
            "device": str(jax.devices()[0]), "jax": jax.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "tensorflow_imported": tf_loaded,
            "quick": quick}
    print(json.dumps(info), flush=True)
    res = {"info": info}
    t = time.perf_counter()
    res["extraction"] = check_extraction(rounds=3 if quick else 10, size=(200, 150) if quick else (800, 600))
    print("extraction", json.dumps(res["extraction"]), f"({time.perf_counter() - t:.0f} s)", flush=True)
    t = time.perf_counter()
    res["pool3fc"] = check_pool3fc(steps=2 if quick else 20, batch=8 if quick else 128)
    print("pool3fc", json.dumps(res["pool3fc"]), f"({time.perf_counter() - t:.0f} s)", flush=True)
    t = time.perf_counter()
    res["roi"] = check_roi(rounds=3 if quick else 15, quick=quick)
    print("roi", json.dumps(res["roi"]), f"({time.perf_counter() - t:.0f} s)", flush=True)
    res["info"]["tensorflow_imported"] = "tensorflow" in sys.modules
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
