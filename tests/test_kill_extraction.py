"""Crash-safe extraction end to end: ``scripts/extract_mlsp.py`` on a real Inception-v3
MLSP extractor (random weights, seeded), killed with SIGKILL at random moments, re-run, must
give the store of an uninterrupted run.

tests/test_extraction.py already kills a subprocess at three chosen points of the store's write
protocol (between features and flags, while writing features, from outside) with a tiny
stand-in extractor. This module covers the rest of the path, end to end: the command-line
script, the label CSV reader, ``read_image``, the real backbone, a bad image (truncated JPEG)
and a too-small one (10 x 10, refused, not upscaled) among the good ones, and kills at random
moments (seeded) during the extraction loop, twice in a row, before the final run. (A job to be
killed waits at its first read or write after the kill point, so the kill lands however slowly
the test process runs.)

"Identical" (asserted): the final file has the same sha256 as the uninterrupted run's file
(byte for byte). That implies, and the test also checks one by one for readable failures:
the same datasets with the same shapes and dtypes; ``ids``, ``complete`` and ``failed`` equal;
``features`` bitwise equal for every row (complete rows hold the features, never-written rows of
failed images read as zeros in both); the same attributes (backbone, weights fingerprint, ...).
After every kill the store opens, and every row it marks complete holds exactly the
uninterrupted run's features (no partly written row is marked complete).
"""
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from test_kill_training import TIMEOUT, finish_job, forkserver, run_job, start_job, tail

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "extract_mlsp.py"
GOOD = 10


def _extract_job(argv, side, stall_after_reads=None):
    """Child: run scripts/extract_mlsp.py with ``argv``; every finished image read (a path) and
    every finished store write (``W``) is appended to ``side`` (the parent's clock for choosing
    a kill moment). With ``stall_after_reads=k`` the job waits to be killed at the first read or
    write after the parent's kill point (>= 1 write and k reads), so the kill lands however slowly
    the parent runs. Nothing else is changed."""
    import logging
    import runpy
    import time

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.disable(logging.WARNING)
    import ku.data.images as images

    read = images.read_image

    def stall():
        if stall_after_reads is not None and _lines(side, "write") >= 1 and _lines(side) >= stall_after_reads:
            time.sleep(TIMEOUT)  # the kill point is passed: wait here to be killed

    def logged_read(path, **kw):
        stall()
        try:
            return read(path, **kw)
        finally:
            with open(side, "a") as f:
                f.write(f"{path}\n")

    images.read_image = logged_read  # extraction imports read_image at call time
    from ku.data.store import FeatureStore

    write = FeatureStore.write_rows

    def logged_write(self, rows, features):
        stall()
        write(self, rows, features)
        with open(side, "a") as f:
            f.write("W\n")

    FeatureStore.write_rows = logged_write
    sys.path.insert(0, str(SCRIPT.parent))
    sys.argv = [str(SCRIPT), *argv]
    runpy.run_path(str(SCRIPT), run_name="__main__")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("killextract")
    img = root / "images"
    img.mkdir()
    rng = np.random.default_rng(7)
    rows = []
    for i in range(GOOD):
        h, w = (int(v) for v in rng.integers(86, 101, size=2))  # 87.5 % crops >= 75 px (Inception)
        ext = ".png" if i % 2 else ".jpg"
        arr = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(img / f"g{i:02d}{ext}"), arr)
        rows.append((f"g{i:02d}{ext}", 3.0 + i * 0.3))
    ok, enc = cv2.imencode(".jpg", rng.integers(0, 256, (90, 90, 3), dtype=np.uint8))
    (img / "truncated.jpg").write_bytes(enc.tobytes()[: len(enc) // 2])
    cv2.imwrite(str(img / "tiny.png"), np.full((10, 10, 3), 128, np.uint8))
    rows.insert(3, ("truncated.jpg", 5.0))
    rows.insert(8, ("tiny.png", 5.0))
    csv = root / "labels.csv"
    csv.write_text("image_id,mos\n" + "".join(f"{n},{m}\n" for n, m in rows))
    return root, csv, img, [n for n, _ in rows]


def _argv(csv, img, out):
    return [f"--labels_csv={csv}", f"--images_dir={img}", f"--out={out}", "--backbone=inception_v3",
            "--backbone_weights=none", "--features=narrow", "--verbose=0", "--flush_every=2"]


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _contents(path):
    with h5py.File(path, "r") as f:
        data = {k: (f[k].shape, f[k].dtype.str, f[k][()]) for k in f}
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return data, attrs


def _lines(side, kind="read"):
    try:
        lines = Path(side).read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum((ln == "W") == (kind == "write") for ln in lines)


def _run(ctx, argv, side, log, kill_after_reads=None, delay=0.0):
    Path(side).unlink(missing_ok=True)

    def reached():  # kill: after >= 1 write and k reads
        return _lines(side, "write") >= 1 and _lines(side) >= kill_after_reads

    return run_job(ctx, _extract_job, (argv, str(side), kill_after_reads), log=log,
                   kill_when=reached if kill_after_reads is not None else None,
                   delay=lambda: delay, timeout=TIMEOUT, what="extraction")


def test_sigkill_at_random_moments_then_rerun_gives_identical_store(dataset, tmp_path):
    root, csv, img, names = dataset
    ctx = forkserver()
    rng = np.random.default_rng(int(os.environ.get("KU_KILL_SEED", "8")))
    ref_path, path = tmp_path / "ref" / "store.h5", tmp_path / "killed" / "store.h5"
    ref_log, log = tmp_path / "ref_output.log", tmp_path / "output.log"
    ref = start_job(ctx, _extract_job, (_argv(csv, img, ref_path), str(tmp_path / "ref_side.txt")), ref_log)
    try:  # the uninterrupted run, in parallel with the interrupted chain
        side = tmp_path / "side.txt"
        kills = [(int(rng.integers(3, 6)), float(rng.uniform(0, 0.15))),
                 (int(rng.integers(2, 4)), float(rng.uniform(0, 0.15)))]
        partial = []
        for k, delay in kills:
            code = _run(ctx, _argv(csv, img, path), side, log, kill_after_reads=k, delay=delay)
            assert code == -signal.SIGKILL, f"extraction exited with {code} before the kill (after {k} reads)\n{tail(log)}"
            if path.exists():  # a kill before the store was created leaves nothing (created atomically)
                with h5py.File(path, "r") as f:
                    partial.append((f["complete"][()].astype(bool), f["failed"][()].astype(bool),
                                    f["features"][()]))
        assert _run(ctx, _argv(csv, img, path), side, log) == 0, tail(log)
        assert _lines(side) > 0 and _lines(side) < len(names)  # the last run only read what was missing
        assert finish_job(ref, ref_log, time.monotonic() + TIMEOUT, "reference extraction") == 0, tail(ref_log)
    finally:
        if ref.is_alive():
            ref.kill()
            ref.join()
    (rd, ra), (kd, ka) = _contents(ref_path), _contents(path)
    bad = [names.index("truncated.jpg"), names.index("tiny.png")]
    good = [i for i in range(len(names)) if i not in bad]
    # the uninterrupted run: good images complete, the two bad ones flagged failed
    assert [s.decode() if isinstance(s, bytes) else s for s in rd["ids"][2]] == names
    assert np.flatnonzero(rd["complete"][2]).tolist() == good
    assert np.flatnonzero(rd["failed"][2]).tolist() == bad
    # after each kill: only fully written rows are marked complete
    assert len(partial) == 2 and partial[0][0].any()  # the kills came after rows were written
    for complete, failed, feats in partial:
        assert complete.sum() < len(good)
        assert not complete[bad].any() and not (complete & failed).any()
        np.testing.assert_array_equal(feats[complete], rd["features"][2][complete])
    # identical, dataset by dataset, then byte for byte
    assert sorted(kd) == sorted(rd) == ["complete", "failed", "features", "ids"]
    for k in rd:
        assert kd[k][:2] == rd[k][:2], k  # shape, dtype
        np.testing.assert_array_equal(kd[k][2], rd[k][2], err_msg=k)
    assert ka == ra
    assert ra["backbone"] == "inception_v3" and len(ra["extractor_sha256"]) == 64
    assert _sha(path) == _sha(ref_path)
