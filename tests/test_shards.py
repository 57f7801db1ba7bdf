"""Sharded feature stores: a list or glob of shards reads exactly like the merged store,
through ShardedStore, FeatureSequence, feature_dataset and iter_all_augmentations; sharded
extraction of the demo images + glob reading + merge end to end; memory stays flat when the store
is 10x larger (and has 10x more shards)."""
import json
import pickle
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ku.data.generators import FeatureSequence, feature_dataset, iter_all_augmentations
from ku.data.shards import ShardedStore, open_store, resolve_store_paths
from ku.data.store import (
    FeatureStore,
    FeatureStoreError,
    IncompleteRowsError,
    MissingIdsError,
    merge_stores,
    shard_bounds,
    shard_path,
)

import procs

ROOT = Path(__file__).resolve().parents[1]
N, A, FS = 23, 3, (2,)
IDS = [f"im{i:02d}" for i in range(N)]


def _write_shards(folder, n_shards, ids=IDS, skip=(), attrs=None, fs=FS, a=A, missing_rows=()):
    """features[r, a] = (r, a) (exact in float16); rows in `missing_rows` stay incomplete."""
    paths = []
    for k in range(n_shards):
        lo, hi = shard_bounds(len(ids), (k, n_shards))
        p = shard_path(Path(folder) / "feats.h5", (k, n_shards))
        if k in skip:
            continue
        feats = np.zeros((hi - lo, a) + fs, np.float32)
        feats[..., 0] = np.arange(lo, hi).reshape((-1, 1) + (1,) * (len(fs) - 1))
        feats[..., 1] = np.arange(a).reshape((1, -1) + (1,) * (len(fs) - 1))
        with FeatureStore.create(p, ids[lo:hi], a, fs, attrs=dict(attrs or {"pooling": "gap"}, shard=[k, n_shards])) as s:
            done = [r for r in range(lo, hi) if r not in missing_rows]
            if done:
                s.write_rows(np.asarray(done) - lo, feats[np.asarray(done) - lo])
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    paths = _write_shards(folder, 3, missing_rows=(21,))
    merged = merge_stores(paths, folder / "merged.h5")
    return folder, paths, merged


def test_sharded_store_reads_like_the_merged_store(shards):
    folder, paths, merged = shards
    glob = str(folder / "feats.shard-*.h5")
    rng = np.random.default_rng(0)
    with ShardedStore(glob, max_open_files=1) as sh, FeatureStore(merged) as m:
        assert sh.n_shards == 3 and sh.n_rows == N and sh.paths == tuple(paths)
        assert list(sh.ids) == list(m.ids) == IDS and "shard" not in sh.attrs
        assert (sh.feature_shape, sh.n_augmentations, sh.augmentations) == (m.feature_shape, m.n_augmentations, m.augmentations)
        np.testing.assert_array_equal(sh.complete_mask(), m.complete_mask())
        np.testing.assert_array_equal(sh.failed_mask(), m.failed_mask())
        ok = np.flatnonzero(m.complete_mask())
        rows = rng.choice(ok, 40)  # any order, repeats, across shards
        np.testing.assert_array_equal(sh.read(rows), m.read(rows))
        augs = rng.integers(0, A, rows.size)
        np.testing.assert_array_equal(sh.read(rows, augs), m.read(rows, augs))
        np.testing.assert_array_equal(sh.read(rows, 2, dtype=np.float16), m.read(rows, 2, dtype=np.float16))
        assert sh.read(rows[:0]).shape == (0, A) + FS
        assert len(sh._open) == 1  # LRU: never more than max_open_files handles
        np.testing.assert_array_equal(sh.index_of(["im22", "im00", "im08"]), [22, 0, 8])
        s, local = sh.shard_of([0, 7, 8, 22])
        assert s.tolist() == [0, 1, 1, 2] and local.tolist() == [0, 0, 1, 7]  # shards of 7, 8, 8 rows
        with pytest.raises(IncompleteRowsError, match=r"shard-2-of-3\.h5.*'im21'"):
            sh.read([3, 21])
        with pytest.raises(MissingIdsError, match="not in any shard: 'nope'"):
            sh.index_of(["im01", "nope"])
        clone = pickle.loads(pickle.dumps(sh))  # no open handles pickled
        assert not clone._open and np.array_equal(clone.read(rows[:5]), m.read(rows[:5]))
    # a list of paths in any order and a glob give the same store; one file gives a FeatureStore
    assert ShardedStore([str(p) for p in paths[::-1]]).paths == tuple(paths)
    assert isinstance(open_store(str(merged)), FeatureStore) and isinstance(open_store(paths), ShardedStore)
    assert resolve_store_paths(str(folder / "merged*.h5")) == str(merged)


def test_generators_over_a_glob_equal_the_merged_store(shards):
    folder, _, merged = shards
    glob = str(folder / "feats.shard-*.h5")
    ids, y = IDS[:21], np.arange(21, dtype=np.float32)  # im21 is incomplete
    for kw in (dict(augmentation="random", seed=4), dict(augmentation=1), dict(augmentation="all")):
        a = FeatureSequence(glob, ids, y, batch_size=5, **kw)
        b = FeatureSequence(merged, ids, y, batch_size=5, **kw)
        assert a.store_path == [str(p) for p in sorted(folder.glob("feats.shard-*.h5"))]
        for _ in range(2):
            for i in range(len(b)):
                for u, v in zip(a[i], b[i]):
                    np.testing.assert_array_equal(u, v)
            a.on_epoch_end(), b.on_epoch_end()
    da = list(feature_dataset(glob, ids, y, batch_size=8, seed=1).as_numpy_iterator())
    db = list(feature_dataset(merged, ids, y, batch_size=8, seed=1).as_numpy_iterator())
    assert len(da) == len(db) == 3
    for (xa, ya), (xb, yb) in zip(da, db):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    for u, v in zip(iter_all_augmentations(glob, ids[::-1], 6), iter_all_augmentations(merged, ids[::-1], 6)):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(IncompleteRowsError, match="im21"):
        FeatureSequence(glob, IDS)


def test_bad_shard_sets_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no feature store matches .*nothing-\*\.h5"):
        FeatureSequence(str(tmp_path / "nothing-*.h5"), IDS)
    _write_shards(tmp_path / "gap", 3, skip=(1,))
    with pytest.raises(FeatureStoreError, match=r"missing shard\(s\) \[1\]"):
        ShardedStore(str(tmp_path / "gap" / "*.h5"))
    p = _write_shards(tmp_path / "a", 2)
    q = _write_shards(tmp_path / "b", 2, attrs={"pooling": "wide"})
    with pytest.raises(FeatureStoreError, match="pooling"):
        ShardedStore([p[0], q[1]])
    r = _write_shards(tmp_path / "c", 2, ids=IDS[:10] + IDS[:10])  # id in both shards
    with pytest.raises(FeatureStoreError, match="more than one shard: 'im00'"):
        ShardedStore(r)
    with pytest.raises(ValueError, match="more than once"):
        ShardedStore([p[0], p[0], p[1]])


def test_sharded_extraction_of_the_demo_images_end_to_end(tmp_path):
    """extract_features(shard=(k, 2)) as `extract_mlsp.py --shard k/2` does, read via a glob,
    equal to merge_stores of the shards (and to the unsharded extraction)."""
    import keras

    from ku.data.demo import load_demo
    from ku.extraction import extract_features

    ids = load_demo(n_images=8, seed=3, root=tmp_path / "demo")
    inp = keras.Input((None, None, 3))
    x = keras.layers.AveragePooling2D(8)(keras.layers.Rescaling(1 / 255.0)(inp))
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.RandomNormal(seed=1))(x)
    extractor = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name="tiny")
    out = tmp_path / "f.h5"
    for k in range(2):
        rep = extract_features(ids, shard_path(out, (k, 2)), extractor, shard=(k, 2), progress=False,
                               attrs={"pooling": "gap"})
        assert rep.complete and rep.n_rows == 4
    glob = str(tmp_path / "f.shard-*-of-2.h5")
    merged = merge_stores(resolve_store_paths(glob), tmp_path / "merged.h5")
    extract_features(ids, tmp_path / "whole.h5", extractor, progress=False, attrs={"pooling": "gap"})
    with open_store(glob) as sh, FeatureStore(merged) as m, FeatureStore(tmp_path / "whole.h5") as w:
        assert list(sh.ids) == list(m.ids) == ids["image_id"].astype(str).tolist()
        rows = np.arange(8)[::-1]
        np.testing.assert_array_equal(sh.read(rows), m.read(rows))
        np.testing.assert_array_equal(sh.read(rows), w.read(rows))
    y = ids["mos"].to_numpy("float32")
    a, b = (FeatureSequence(s, ids, y, batch_size=3, seed=2) for s in (glob, merged))
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b[i][0])


MEMORY_PROBE = textwrap.dedent('''
    import json, sys, tracemalloc
    import numpy as np
    from ku.data.generators import FeatureSequence
    from ku.data.store import FeatureStore

    spec, ids = json.loads(sys.argv[1]), json.loads(sys.argv[2])

    def hwm_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    seq = FeatureSequence(spec, ids, np.zeros(len(ids), np.float32), batch_size=32, seed=0)
    x, _ = seq[0]  # warm: imports, first handles
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = hwm_kb()
    tracemalloc.start()
    n = 0
    for epoch in range(2):
        for i in range(len(seq)):
            x, y = seq[i]
            n += len(x)
        seq.on_epoch_end()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"items": n, "py_peak_kb": peak // 1024, "rss_growth_kb": hwm_kb() - base}))
''')


def _probe(*jobs):
    """Run the probe for each (spec, ids) in parallel subprocesses; their JSON results."""
    with tempfile.TemporaryDirectory(prefix="ku-probe-") as tmp:
        started = [procs.start(procs.python("-c", MEMORY_PROBE, json.dumps(spec), json.dumps(ids)),
                               Path(tmp) / f"probe{i}.out", err_log=Path(tmp) / f"probe{i}.err", cwd=ROOT,
                               env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
                   for i, (spec, ids) in enumerate(jobs)]
        procs.wait_all(started)
        return [json.loads(j.log.read_text().strip().splitlines()[-1]) for j in started]


def test_memory_stays_flat_for_a_10x_larger_store(tmp_path):
    """Reading 2 epochs of a store 10x larger (and in 10x more shards) through FeatureSequence:
    the peak of Python allocations and of the RSS grows by less than a small margin, while the
    features read grow 10x (~3.7 MB vs ~37 MB in float16; 74 MB as float32 if all loaded)."""
    fs, a, rows_per_shard = (3, 3, 256), 4, 100
    ids = [f"{i:06d}" for i in range(20 * rows_per_shard)]
    small = _write_shards(tmp_path / "small", 2, ids=ids[:2 * rows_per_shard], fs=fs, a=a)
    big = _write_shards(tmp_path / "big", 20, ids=ids, fs=fs, a=a)
    assert sum(p.stat().st_size for p in big) > 9 * sum(p.stat().st_size for p in small) > 30e6
    s, b = _probe(([str(p) for p in small], ids[:2 * rows_per_shard]),
                  (str(tmp_path / "big" / "feats.shard-*.h5"), ids))
    assert b["items"] == 10 * s["items"]
    print(f"small: {s}, 10x: {b}")
    assert b["py_peak_kb"] < s["py_peak_kb"] + 1024, (s, b)  # ids/index of 2,000 rows: ~0.3 MB
    assert b["rss_growth_kb"] < s["rss_growth_kb"] + 8 * 1024, (s, b)  # <= 8 open files' caches
