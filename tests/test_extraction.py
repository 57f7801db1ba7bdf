"""Feature extraction into a store: augmentations, failures, shards, resume after SIGKILL."""
import hashlib
import json
import os
import signal
import textwrap
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import keras
import pytest

from ku.data.augment import augment_all, hosu_augmentations
from ku.data.store import FeatureStore, FeatureStoreError, merge_stores, shard_path
from ku.extraction import extract_features

import procs

SIZES = [(24, 32), (31, 17), (40, 40), (18, 27), (33, 21), (26, 35)]
CORRUPT = 3  # position of the corrupt file in the list


def build_extractor():
    """Tiny stand-in for the MLSP extractor: 0..255 RGB (B, H, W, 3) -> (B, 4); fixed weights."""
    import keras

    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    out = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, out, name="tiny_extractor")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def reader():
    """ku.data.images.read_image when available; else a minimal cv2 reader (same contract)."""
    try:
        from ku.data.images import read_image

        return read_image
    except ImportError:
        def read_image(path, max_pixels=None):
            im = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if im is None:
                raise ValueError(f"cannot read image {path}")
            return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)

        return read_image


def make_images(folder, sizes=SIZES, corrupt=CORRUPT):
    """PNG images (lossless) of various sizes plus one corrupt .jpg; returns (ids, paths)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"im{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(str(p))
    bad = folder / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    paths.insert(corrupt, str(bad))
    return [Path(p).stem for p in paths], paths


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _datasets(path):
    with h5py.File(path, "r") as f:
        return ({k: f[k][:] for k in ("features", "ids", "complete", "failed")},
                {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()})


def _assert_same_store(a, b):
    da, aa = _datasets(a)
    db, ab = _datasets(b)
    for k in da:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    assert aa == ab


@pytest.fixture(scope="module")
def extractor():
    return build_extractor()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images, extractor):
    """An uninterrupted run (module scope: used by the shard and kill tests)."""
    ids, paths = images
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    report = extract_features(dict(zip(ids, paths)), path, extractor, attrs={"pooling": "gap"},
                              progress=False, read_fn=reader())
    return path, report


def test_extraction_matches_direct_computation(reference, images, extractor):
    ids, paths = images
    path, report = reference
    assert report.n_rows == 7 and report.n_done == 6 and report.n_failed == 1 and report.n_skipped == 0
    assert report.failed[0]["image_path"].endswith("broken.jpg") and report.failed[0]["image_id"] == "broken"
    assert "broken.jpg" in report.summary() and not report.complete
    read = reader()
    with FeatureStore(path) as s:
        assert list(s.ids) == ids
        assert s.feature_shape == (4,) and s.n_augmentations == 8
        assert s.augmentations == tuple(a.name for a in hosu_augmentations())
        assert s.attrs["extractor"] == "tiny_extractor" and s.attrs["pooling"] == "gap"
        assert s.attrs["crop_fraction"] == 0.875 and len(s.attrs["extractor_sha256"]) == 64
        complete = s.complete_mask()
        assert complete.tolist() == [i != CORRUPT for i in range(7)]
        assert s.failed_mask().tolist() == [i == CORRUPT for i in range(7)]
        for row in np.flatnonzero(complete):
            img = read(paths[row])
            assert img.shape[:2] == SIZES[row if row < CORRUPT else row - 1]  # full resolution
            ref = keras.ops.convert_to_numpy(extractor(augment_all(img).astype("float32"), training=False))
            got = s.read([row], "all")[0]
            np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-4)  # float16 storage
            assert not np.allclose(got[0], got[1])  # the 8 augmentations differ


def test_resume_skips_complete_rows_and_checks_settings(tmp_path, reference, images, extractor):
    ids, paths = images
    path = tmp_path / "s.h5"
    path.write_bytes(reference[0].read_bytes())
    table = dict(zip(ids, paths))
    rep = extract_features(table, path, extractor, attrs={"pooling": "gap"}, progress=False, read_fn=reader())
    assert (rep.n_skipped, rep.n_done, rep.n_failed) == (6, 0, 1)  # the failed row is retried
    assert _sha(path) == _sha(reference[0])
    with pytest.raises(FeatureStoreError, match=r"s\.h5.*pooling"):
        extract_features(table, path, extractor, attrs={"pooling": "wide"}, progress=False, read_fn=reader())
    with pytest.raises(FeatureStoreError, match=r"s\.h5.*different ids"):
        extract_features(dict(list(table.items())[:3]), path, extractor, attrs={"pooling": "gap"},
                         progress=False, read_fn=reader())
    other = build_extractor()
    other.set_weights([w + 1 for w in other.get_weights()])
    with pytest.raises(FeatureStoreError, match="extractor_sha256"):
        extract_features(table, path, other, attrs={"pooling": "gap"}, progress=False, read_fn=reader())


def test_shards_merged_equal_unsharded(tmp_path, reference, images, extractor):
    ids, paths = images
    table = dict(zip(ids, paths))
    shards = []
    for k in range(2):
        p = shard_path(tmp_path / "s.h5", (k, 2))
        rep = extract_features(table, p, extractor, shard=(k, 2), attrs={"pooling": "gap"},
                               progress=False, read_fn=reader(), batch_size=3)  # 3 + 3 + 2 crops per image
        assert rep.n_rows in (3, 4)
        shards.append(p)
    with FeatureStore(shards[0]) as s0:
        assert s0.attrs["shard"] == [0, 2] and list(s0.ids) == ids[:3]
    merged = merge_stores(shards, tmp_path / "merged.h5")
    _assert_same_store(merged, reference[0])
    assert _sha(merged) == _sha(reference[0])


def test_list_of_paths_and_dataframe_inputs(tmp_path, images, extractor):
    import pandas as pd

    ids, paths = images
    good = [p for p in paths if not p.endswith(".jpg")][:2]
    rep = extract_features(good, tmp_path / "a.h5", extractor, augmentations=["original", "crop_tl"],
                           progress=True, read_fn=reader())
    assert rep.n_done == 2
    with FeatureStore(tmp_path / "a.h5") as s:
        assert list(s.ids) == good and s.augmentations == ("original", "crop_tl")
    df = pd.DataFrame({"image_id": ["x", "y"], "image_path": good, "mos": [5.0, 6.0]})
    rep = extract_features(df, tmp_path / "b.h5", extractor, progress=False, read_fn=reader())
    assert rep.n_done == 2
    with pytest.raises(ValueError, match="duplicate image ids"):
        extract_features([good[0], good[0]], tmp_path / "c.h5",
                         extractor, progress=False, read_fn=reader())


# --- crash safety: a real SIGKILL, then resume --------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from test_extraction import build_extractor, reader
    from ku.data.store import FeatureStore
    from ku.extraction import extract_features

    mode, store, table, side = sys.argv[1:5]
    ids, paths = json.load(open(table))
    calls = {{"n": 0}}
    orig_write, orig_flags = FeatureStore.write_rows, FeatureStore._set_flags
    orig_features = FeatureStore._write_feature_runs

    def write_rows(self, rows, feats):
        calls["n"] += 1
        orig_write(self, rows, feats)
        with open(side, "a") as f:  # side channel for the parent: rows flushed so far
            f.write("%d\\n" % len(feats))

    def set_flags(self, runs, name, value):
        if mode == "between" and calls["n"] == 2 and name == "complete":
            os.kill(os.getpid(), signal.SIGKILL)  # features flushed, flags not yet written
        orig_flags(self, runs, name, value)

    def write_feature_runs(self, runs, data):
        orig_features(self, runs, data)
        if mode == "mid_features" and calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # features handed to HDF5, not flushed

    FeatureStore.write_rows, FeatureStore._set_flags = write_rows, set_flags
    FeatureStore._write_feature_runs = write_feature_runs
    read = reader()

    def slow_read(path, max_pixels=None):
        time.sleep(0.15)
        if os.path.exists(side) and len(open(side).read().split()) >= 2:
            time.sleep(900)  # the parent's kill point is passed: wait here to be killed
        return read(path, max_pixels=max_pixels)

    extract_features(dict(zip(ids, paths)), store, build_extractor(), attrs={{"pooling": "gap"}},
                     progress=False, read_fn=slow_read if mode == "external" else read, flush_every=1)
    print("FINISHED")
    """
)


@pytest.mark.parametrize("mode", ["between", "mid_features", "external"])
def test_sigkill_then_resume_gives_identical_store(tmp_path, mode, reference, images, extractor):
    """Kill (SIGKILL) an extraction (a) right after a batch's features were flushed but before its
    `complete` flags, (b) while its features are being written, (c) from outside at an arbitrary
    moment once rows were flushed; the file must open, hold only complete rows, and a resume must
    give the uninterrupted run's file."""
    ids, paths = images
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent)))
    store, side, table = tmp_path / "s.h5", tmp_path / "side.txt", tmp_path / "table.json"
    table.write_text(json.dumps([ids, paths]))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    job = procs.start(procs.python(script, mode, store, table, side), tmp_path / "child.log", env=env)
    try:
        deadline = time.monotonic() + procs.TIMEOUT
        while mode == "external" and time.monotonic() < deadline and job.popen.poll() is None:
            if side.exists() and len(side.read_text().split()) >= 2:
                os.kill(job.popen.pid, signal.SIGKILL)  # the child waits at its next read
                break
            time.sleep(0.01)
        procs.wait_all([job], max(1.0, deadline - time.monotonic()), ok=(-signal.SIGKILL,))
    finally:
        procs.kill([job])
    assert "FINISHED" not in job.output()

    ref = FeatureStore(reference[0])
    with FeatureStore(store) as s:  # opens fine after the kill
        done = np.flatnonzero(s.complete_mask())
        assert 1 <= done.size < 6
        np.testing.assert_array_equal(s.read(done, "all"), ref.read(done, "all"))  # only complete rows
        if mode != "external":
            assert done.tolist() == [0]  # row 1 was being written: not complete
        if mode == "between":  # the kill really came after row 1's features reached the file
            np.testing.assert_array_equal(s.read([1], "all", check_complete=False), ref.read([1], "all"))
    ref.close()
    rep = extract_features(dict(zip(ids, paths)), store, extractor, attrs={"pooling": "gap"},
                           progress=False, read_fn=reader())
    assert rep.n_skipped == done.size and rep.n_done == 6 - done.size
    _assert_same_store(store, reference[0])
    assert _sha(store) == _sha(reference[0])  # byte-identical to the uninterrupted run
