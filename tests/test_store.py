"""HDF5 feature store: layout, round trip, errors, merge, determinism."""
import hashlib
import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ku.data.store import (
    check_same_layout,
    FeatureStore,
    FeatureStoreError,
    IncompleteRowsError,
    MissingIdsError,
    merge_stores,
    shard_bounds,
    shard_path,
)

A = 8
FS = (2, 2, 3)  # "wide"-like feature shape


def _features(n, seed=0, fs=FS):
    return np.random.default_rng(seed).normal(size=(n, A) + fs).astype(np.float32)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _ids(n, prefix="img"):
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_layout_float16_chunks_early_allocation(tmp_path):
    p = tmp_path / "s.h5"
    attrs = {"backbone": "InceptionResNetV2", "weights": "imagenet", "taps": ["mixed_5b", "block35_1_mixed"],
             "pooling": "wide", "note": "x", "flag": True, "scale": 0.5, "n": 3}
    FeatureStore.create(p, _ids(5), A, FS, attrs=attrs, augmentations=[f"a{i}" for i in range(A)]).close()
    with h5py.File(p, "r") as f:
        d = f["features"]
        assert d.shape == (5, A) + FS and d.dtype == np.float16
        assert d.chunks == (1, 1) + FS  # one augmentation of one row = one chunk
        assert d.compression is None
        assert d.id.get_create_plist().get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY
        assert f["complete"].dtype == np.uint8 and not f["complete"][:].any()
        assert list(f["ids"].asstr()[:]) == _ids(5)
        assert "created" not in f.attrs  # no timestamp: files are reproducible byte for byte
    with FeatureStore(p) as s:
        assert s.feature_shape == FS and s.n_augmentations == A and len(s) == 5
        assert s.augmentations == tuple(f"a{i}" for i in range(A))
        assert s.attrs["taps"] == ["mixed_5b", "block35_1_mixed"]
        assert s.attrs["backbone"] == "InceptionResNetV2" and s.attrs["flag"] == 1
        assert s.attrs["scale"] == 0.5 and s.attrs["n"] == 3 and s.attrs["feature_shape"] == list(FS)
        assert s.attrs["dtype"] == "float16" and s.attrs["format"] == "ku.feature_store/1"
        assert "ku_version" in s.attrs


def test_round_trip_any_order(tmp_path):
    p = tmp_path / "s.h5"
    n = 7
    feats = _features(n)
    f16 = feats.astype(np.float16).astype(np.float32)  # what float16 storage must give back exactly
    with FeatureStore.create(p, _ids(n), A, FS) as s:
        s.write_rows([5, 1, 2], feats[[5, 1, 2]])  # any order, non-contiguous
        s.write_rows(3, feats[3:5])  # contiguous from a start row
        assert s.complete_mask().tolist() == [False, True, True, True, True, True, False]
        s.write_rows([0, 6], feats[[0, 6]])
    with FeatureStore(p) as s:
        assert s.complete_mask().all()
        out = s.read([6, 0, 3, 3], "all")
        assert out.dtype == np.float32 and out.shape == (4, A) + FS
        np.testing.assert_array_equal(out, f16[[6, 0, 3, 3]])
        rows, augs = np.array([4, 2, 6, 2, 0, 5]), np.array([7, 0, 3, 0, 1, 1])
        np.testing.assert_array_equal(s.read(rows, augs), f16[rows, augs])
        np.testing.assert_array_equal(s.read(rows, 5), f16[rows, 5])
        np.testing.assert_array_equal(s.read_ids(["img002", "img001"], 2), f16[[2, 1], 2])
        assert s.index_of("img004") == 4
        np.testing.assert_array_equal(s.index_of(["img006", "img000"]), [6, 0])
        assert s.read([], "all").shape == (0, A) + FS
        assert s.read(np.array([], int), np.array([], int)).shape == (0,) + FS
        assert np.abs(out - feats[[6, 0, 3, 3]]).max() < 5e-3  # float16 precision
    # narrow features
    with FeatureStore.create(tmp_path / "n.h5", ["a", "b"], 1, (16928,)) as s:
        x = _features(2, fs=(16928,))[:, :1]
        s.write_rows(0, x)
        np.testing.assert_array_equal(s.read([1, 0], 0), x[[1, 0], 0].astype(np.float16).astype(np.float32))


def test_errors_name_the_file(tmp_path):
    p = tmp_path / "s.h5"
    with FeatureStore.create(p, _ids(4), A, FS) as s:
        with pytest.raises(FeatureStoreError, match=r"s\.h5.*do not match"):
            s.write_rows(0, np.zeros((1, A, 3)))
        with pytest.raises(FeatureStoreError, match="do not match"):
            s.write_rows(0, np.zeros((1, A - 1) + FS))
        with pytest.raises(FeatureStoreError, match="out of range"):
            s.write_rows(4, np.zeros((1, A) + FS))
        with pytest.raises(FeatureStoreError, match="duplicate"):
            s.write_rows([1, 1], np.zeros((2, A) + FS))
        s.write_rows(0, _features(1))
    with FeatureStore(p) as s:
        with pytest.raises(MissingIdsError, match=r"s\.h5.*'nope'"):
            s.index_of(["img000", "nope"])
        with pytest.raises(IncompleteRowsError, match=r"s\.h5.*'img002'"):
            s.read([0, 2], "all")
        with pytest.raises(FeatureStoreError, match="read-only"):
            s.write_rows(1, _features(1))
        with pytest.raises(FeatureStoreError, match="augmentation index"):
            s.read([0], 8)
    with pytest.raises(FileExistsError, match=r"s\.h5"):
        FeatureStore.create(p, _ids(4), A, FS)
    with pytest.raises(FeatureStoreError, match="duplicate ids"):
        FeatureStore.create(tmp_path / "d.h5", ["a", "a"], A, FS)
    with pytest.raises(FeatureStoreError, match="augmentation names"):
        FeatureStore.create(tmp_path / "d.h5", ["a"], A, FS, augmentations=["x"])
    with pytest.raises(TypeError, match="attrs"):
        FeatureStore.create(tmp_path / "d.h5", ["a"], A, FS, attrs={"x": None})
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        FeatureStore(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(FeatureStoreError, match="not a ku feature store"):
        FeatureStore(tmp_path / "other.h5")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_failed_flags_and_pickle(tmp_path):
    p = tmp_path / "s.h5"
    feats = _features(3)
    with FeatureStore.create(p, _ids(3), A, FS) as s:
        s.mark_failed([1])
        s.write_rows([0, 2], feats[[0, 2]])
        assert s.failed_mask().tolist() == [False, True, False]
        s.write_rows([1], feats[[1]])  # a retry that succeeds clears the failure flag
        assert s.failed_mask().tolist() == [False, False, False]
    s = FeatureStore(p)
    s.read([0], 0)  # handle open
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._file is None
    np.testing.assert_array_equal(s2.read([2, 1], "all"), s.read([2, 1], "all"))
    s.close()
    s2.close()


def test_creation_is_byte_deterministic(tmp_path):
    feats = _features(3)
    shas = []
    for name in ("a.h5", "b.h5"):
        with FeatureStore.create(tmp_path / name, _ids(3), A, FS, attrs={"z": 1, "a": "x"}) as s:
            s.write_rows(0, feats)
        shas.append(_sha(tmp_path / name))
        time.sleep(1.1)  # a timestamp anywhere in the file would now differ
    assert shas[0] == shas[1]


def test_merge(tmp_path):
    n = 9
    feats = _features(n)
    ids = _ids(n)
    attrs = {"backbone": "b", "pooling": "narrow"}
    with FeatureStore.create(tmp_path / "full.h5", ids, A, FS, attrs=attrs) as s:
        s.write_rows(0, feats)
    paths = []
    for k in range(3):
        a, b = shard_bounds(n, (k, 3))
        paths.append(shard_path(tmp_path / "full.h5", (k, 3)))
        with FeatureStore.create(paths[-1], ids[a:b], A, FS, attrs=dict(attrs, shard=[k, 3])) as s:
            s.write_rows(0, feats[a:b])
    assert paths[1].name == "full.shard-1-of-3.h5"
    out = merge_stores(paths, tmp_path / "merged.h5", block_bytes=2 * A * 12 * 2)  # several blocks
    with FeatureStore(out) as m, FeatureStore(tmp_path / "full.h5") as f:
        assert list(m.ids) == ids and m.complete_mask().all()
        assert "shard" not in m.attrs
        np.testing.assert_array_equal(m.read(np.arange(n), "all"), f.read(np.arange(n), "all"))
    assert _sha(out) == _sha(tmp_path / "full.h5")
    with pytest.raises(FeatureStoreError, match="expected shards"):
        merge_stores([paths[1], paths[0], paths[2]], tmp_path / "bad.h5")
    with pytest.raises(FeatureStoreError, match="expected shards"):
        merge_stores(paths[:2], tmp_path / "bad.h5")
    FeatureStore.create(tmp_path / "x.h5", ["zz"], A, FS, attrs={"backbone": "other", "pooling": "narrow"}).close()
    with pytest.raises(FeatureStoreError, match=r"x\.h5.*backbone"):
        merge_stores([tmp_path / "full.h5", tmp_path / "x.h5"], tmp_path / "bad.h5")
    with pytest.raises(FeatureStoreError, match="duplicate ids"):
        merge_stores([tmp_path / "full.h5", tmp_path / "full.h5"], tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="shard"):
        shard_bounds(5, (3, 3))


def test_check_same_layout_names_what_differs(tmp_path):
    """The one compatibility rule of merge_stores and ShardedStore: attributes (minus ``ignore``),
    dtype, feature shape and augmentation count."""
    def make(name, attrs, dtype="float16", fs=FS, a=A):
        return FeatureStore.create(tmp_path / name, ["i"], a, fs, attrs=attrs, dtype=dtype)

    with make("ref.h5", {"pooling": "wide", "shard": [0, 2]}) as ref:
        with make("ok.h5", {"pooling": "wide", "shard": [1, 2]}) as s:
            check_same_layout(s, ref)  # only the shard attribute differs
            with pytest.raises(FeatureStoreError, match=r"ok\.h5 does not match .*shard"):
                check_same_layout(s, ref, ignore=())
        with make("f32.h5", {"pooling": "wide"}, dtype="float32") as s:
            with pytest.raises(FeatureStoreError, match=r"merge_stores: .*f32\.h5 does not match .*dtype: f32\.h5='float32' ref\.h5='float16'"):
                check_same_layout(s, ref, context="merge_stores: ")
        with make("fs.h5", {"pooling": "wide"}, fs=(1, 1, 3)) as s:
            with pytest.raises(FeatureStoreError, match=r"feature_shape: fs\.h5=\[1, 1, 3\]"):
                check_same_layout(s, ref)
        with make("aug.h5", {"pooling": "wide"}, a=1) as s:
            with pytest.raises(FeatureStoreError, match="n_augmentations: aug.h5=1 ref.h5=8"):
                check_same_layout(s, ref)


def test_open_hint_truncated_is_not_a_lock_error():
    """HDF5's truncation message contains 'sblock->base_addr' (which holds 'lock'): the hint must
    say truncated / corrupt and what to do, not 'another process'."""
    from ku.data.store import _open_hint

    cut = _open_hint("unable to open file (truncated file: eof = 4096, sblock->base_addr = 0, stored_eof = 9000)")
    assert "truncated or corrupt" in cut and "delete it and re-run" in cut and "another process" not in cut
    lock = _open_hint("unable to lock file, errno = 11, error message = 'Resource temporarily unavailable'")
    assert "another process" in lock
    assert "not an HDF5 file" in _open_hint("file signature not found")


def test_open_store_locked_by_another_writer(tmp_path):
    """A real HDF5 lock error (another process holds the store open for writing) gets the hint."""
    import subprocess
    import sys

    p = tmp_path / "s.h5"
    FeatureStore.create(p, ["a", "b"], 1, (4,)).close()
    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            f"from ku.data.store import FeatureStore; s = FeatureStore({str(p)!r}, 'r+'); s._h5(); "
            "print('open', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        try:
            FeatureStore(p, "r+")
        except OSError as e:
            assert str(p) in str(e) and "another process" in str(e) and "truncated" not in str(e), str(e)
        else:
            pytest.skip("HDF5 file locking is disabled here (HDF5_USE_FILE_LOCKING=FALSE?)")
    finally:
        holder.kill()
        holder.wait()
