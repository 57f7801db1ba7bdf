"""Durable writes (ku.data.durable) and the feature store under write faults: disk full (ENOSPC),
I/O errors (EIO), a file-size limit (EFBIG).

The faults are made three ways: injected into the write path (every platform), a real kernel
error from a file-size limit (RLIMIT_FSIZE, unprivileged, Linux) and a real full disk (a 4 MB
tmpfs in a private mount namespace; skipped where ``unshare -m`` is not allowed). Each test shows
that the error names the file (and says the disk is full for ENOSPC), that no row is marked
complete whose features did not reach the disk, and that a re-run after the fault gives the same
file, byte for byte, as an uninterrupted run.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ku.data import durable
from ku.data.durable import DiskWriteError, atomic_write, write_error
from ku.data.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
ERRNOS = {"ENOSPC": (errno.ENOSPC, "the disk is full"), "EIO": (errno.EIO, "input/output error")}


# ---------------------------------------------------------------------------------------------
# the helper

def _fail_once(monkeypatch, module, name, err):
    real = getattr(module, name)
    state = {"left": 1}

    def fake(*a, **k):
        if state["left"]:
            state["left"] -= 1
            raise OSError(err, os.strerror(err))
        return real(*a, **k)

    monkeypatch.setattr(module, name, fake)
    return state


def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path):
    p = tmp_path / "state.json"
    atomic_write(p, "old")
    atomic_write(p, "new ü")
    assert p.read_text(encoding="utf-8") == "new ü"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
@pytest.mark.parametrize("code", sorted(ERRNOS))
def test_atomic_write_fault_keeps_the_old_file(tmp_path, monkeypatch, step, code):
    err, words = ERRNOS[code]
    p = tmp_path / "history.csv"
    p.write_text("epoch\n0\n")
    state = _fail_once(monkeypatch, os, step, err)
    with pytest.raises(DiskWriteError) as exc:
        atomic_write(p, "epoch\n0\n1\n", what="history")
    assert state["left"] == 0  # the fault was hit
    msg = str(exc.value)
    assert str(p) in msg and words in msg and "history" in msg, msg
    assert exc.value.errno == err and exc.value.disk_full == (err == errno.ENOSPC)
    assert p.read_text() == "epoch\n0\n"  # the old content, untouched
    assert sorted(x.name for x in tmp_path.iterdir()) == ["history.csv"]  # no temporary file left


def test_atomic_open_error_inside_block_removes_temp(tmp_path):
    p = tmp_path / "a.txt"
    with pytest.raises(RuntimeError):
        with durable.atomic_open(p) as f:
            f.write("partial")
            raise RuntimeError("interrupted")
    assert not list(tmp_path.iterdir())


def test_write_error_reads_the_errno_of_an_hdf5_message(tmp_path):
    e = write_error(tmp_path / "s.h5", RuntimeError("Can't write data (file write failed: errno = 28, "
                                                    "error message = 'No space left on device')"), "feature store")
    assert e.errno == errno.ENOSPC and e.disk_full
    assert str(e).startswith(f"cannot write feature store {tmp_path / 's.h5'}: the disk is full")
    assert write_error("x", OSError(errno.EFBIG, "File too large")).errno == errno.EFBIG
    assert write_error("x", e) is e
    # picklable (extraction runs readers in threads; predict may use processes)
    import pickle

    assert str(pickle.loads(pickle.dumps(e))) == str(e)


# ---------------------------------------------------------------------------------------------
# the feature store, injected faults

N, A, FS = 6, 2, (64,)


def _features(rows):
    rng = np.random.default_rng(7)
    allf = rng.standard_normal((N, A) + FS).astype(np.float32) + 2.0
    return allf[rows]


def _new_store(path):
    return FeatureStore.create(path, [f"i{k}" for k in range(N)], A, FS, attrs={"backbone": "b"})


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    p = tmp_path_factory.mktemp("ref") / "s.h5"
    with _new_store(p) as s:
        for r in range(0, N, 2):
            s.write_rows(r, _features([r, r + 1]))
    return p.read_bytes()


def _inject(monkeypatch, stage, err):
    """Make the next write of ``stage`` fail with ``err`` (once)."""
    import ku.data.store as store_mod

    if stage == "features":  # half of the batch reaches the file, then the write fails
        real = FeatureStore._write_feature_runs

        def fake(self, runs, features):
            monkeypatch.setattr(FeatureStore, "_write_feature_runs", real)
            r0, r1, p0 = runs[0]
            self._h5()["features"][r0] = features[p0]
            raise OSError(err, os.strerror(err))

        monkeypatch.setattr(FeatureStore, "_write_feature_runs", fake)
    elif stage == "fsync":  # the file system reports the deferred error at fsync
        _fail_once(monkeypatch, store_mod, "fsync_file", err)
    else:  # the features are on disk, writing the flags fails
        real = FeatureStore._set_flags

        def fake(self, runs, name, value):
            monkeypatch.setattr(FeatureStore, "_set_flags", real)
            raise OSError(err, os.strerror(err))

        monkeypatch.setattr(FeatureStore, "_set_flags", fake)


@pytest.mark.parametrize("stage", ["features", "fsync", "flags"])
@pytest.mark.parametrize("code", sorted(ERRNOS))
def test_store_write_fault_marks_nothing_complete(tmp_path, monkeypatch, reference_store, stage, code):
    err, words = ERRNOS[code]
    p = tmp_path / "s.h5"
    s = _new_store(p)
    s.write_rows(0, _features([0, 1]))
    _inject(monkeypatch, stage, err)
    with pytest.raises(DiskWriteError) as exc:
        s.write_rows(2, _features([2, 3]))
    msg = str(exc.value)
    assert str(p) in msg and words in msg and "feature store" in msg and "2 row(s)" in msg, msg
    assert exc.value.errno == err
    # no marker survives: rows 2, 3 incomplete (and not 'failed'), rows 0, 1 kept, also on disk
    np.testing.assert_array_equal(s.complete_mask(), [1, 1, 0, 0, 0, 0])
    s.close()
    with FeatureStore(p) as r:
        np.testing.assert_array_equal(r.complete_mask(), [1, 1, 0, 0, 0, 0])
        assert not r.failed_mask().any()
        np.testing.assert_array_equal(r.read([0, 1]), _features([0, 1]).astype(np.float16))
    # the re-run after the fault completes the store: the same bytes as the uninterrupted run
    with FeatureStore(p, "r+") as s:
        for r in np.flatnonzero(~s.complete_mask())[::2]:
            s.write_rows(int(r), _features([r, r + 1]))
    assert p.read_bytes() == reference_store


def test_store_mark_failed_fault_raises(tmp_path, monkeypatch):
    p = tmp_path / "s.h5"
    with _new_store(p) as s:
        _fail_once(monkeypatch, FeatureStore, "_set_flags", errno.EIO)
        with pytest.raises(DiskWriteError, match="flagging failed rows"):
            s.mark_failed([1])


def test_store_create_fault_leaves_no_file(tmp_path, monkeypatch):
    _fail_once(monkeypatch, os, "fsync", errno.ENOSPC)
    with pytest.raises(DiskWriteError, match="the disk is full") as exc:
        _new_store(tmp_path / "s.h5")
    assert str(tmp_path / "s.h5") in str(exc.value)
    assert not list(tmp_path.iterdir())


def test_extraction_stops_on_a_write_fault_and_resumes_identically(tmp_path, monkeypatch):
    """extract_features: the fault stops the run with the store named and the complete count (no
    "N extracted, 0 failed"); no row flagged failed; the re-run equals an uninterrupted run."""
    import ku.data.store as store_mod
    from bad_input_corpus import pattern, tiny_extractor, write_cv
    from ku.extraction import extract_features

    table = {f"im{i}": str(write_cv(tmp_path / f"im{i}.png", pattern(90, 96, seed=i))) for i in range(6)}
    ex = tiny_extractor()
    kw = dict(augmentations=["original", "crop_tl"], flush_every=2, progress=False)
    extract_features(table, tmp_path / "ref.h5", ex, **kw)
    real = store_mod.fsync_file
    calls = {"n": 0}

    def fsync_fails_second_write(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(store_mod, "fsync_file", fsync_fails_second_write)
    with pytest.raises(DiskWriteError) as exc:
        extract_features(table, tmp_path / "s.h5", ex, **kw)
    msg = str(exc.value)
    assert str(tmp_path / "s.h5") in msg and "the disk is full" in msg and "2 of 6 rows are complete" in msg, msg
    with FeatureStore(tmp_path / "s.h5") as s:
        np.testing.assert_array_equal(s.complete_mask(), [1, 1, 0, 0, 0, 0])
        assert not s.failed_mask().any()
    monkeypatch.setattr(store_mod, "fsync_file", real)
    report = extract_features(table, tmp_path / "s.h5", ex, **kw)
    assert (report.n_skipped, report.n_done, report.n_failed) == (2, 4, 0)
    assert (tmp_path / "s.h5").read_bytes() == (tmp_path / "ref.h5").read_bytes()


# ---------------------------------------------------------------------------------------------
# real kernel errors

_WRITER = textwrap.dedent("""
    import json, resource, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from ku.data.store import FeatureStore
    from ku.data.durable import DiskWriteError
    path, mode, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n, a, fs = 40, 8, (8192,)
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((n, a) + fs).astype(np.float32) + 2.0
    s = (FeatureStore.create(path, [f"i{{k}}" for k in range(n)], a, fs, attrs={{"backbone": "b"}})
         if mode == "create" else FeatureStore(path, "r+"))
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = {{"error": None, "errno": None}}
    try:
        for r in np.flatnonzero(~s.complete_mask())[::2]:
            s.write_rows(int(r), feats[r:r + 2])
    except DiskWriteError as e:
        out.update(error=str(e), errno=e.errno)
    out["complete"] = s.complete_mask().astype(int).tolist()
    s.close()
    print(json.dumps(out))
""")


def _writer(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(root=str(ROOT)))
    return script


def _run_writer(script, path, mode, limit=0, prefix=()):
    r = subprocess.run([*prefix, sys.executable, str(script), str(path), mode, str(limit)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Exception ignored" not in r.stderr, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check_rows_on_disk(path, complete):
    """Every row flagged complete holds exactly its features (none zero, none stale)."""
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((40, 8, 8192)).astype(np.float32) + 2.0
    with FeatureStore(path) as s:
        done = np.flatnonzero(s.complete_mask())
        np.testing.assert_array_equal(s.complete_mask().astype(int), complete)
        np.testing.assert_array_equal(s.read(done), feats[done].astype(np.float16))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics checked on Linux")
def test_store_file_size_limit_real_error(tmp_path):
    """A real EFBIG from the kernel (process file-size limit of 1.5 of the store's 5.3 MB). The
    flags lie at the end of the file, beyond the limit: the features of the first rows are
    written, their flags are not, so no row may be complete."""
    script = _writer(tmp_path)
    ref = tmp_path / "ref.h5"
    assert _run_writer(script, ref, "create")["error"] is None
    p = tmp_path / "s.h5"
    out = _run_writer(script, p, "create", limit=1_500_000)
    assert out["errno"] == errno.EFBIG and str(p) in out["error"], out
    assert "larger than the file system or the process's file-size limit" in out["error"]
    assert sum(out["complete"]) == 0
    _check_rows_on_disk(p, out["complete"])
    out2 = _run_writer(script, p, "resume")  # limit lifted: the re-run completes the store
    assert out2["error"] is None and sum(out2["complete"]) == 40
    assert p.read_bytes() == ref.read_bytes()


def _can_mount_tmpfs(d: Path) -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {d}"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def test_store_disk_full_real_tmpfs(tmp_path):
    """A real ENOSPC: the store on a 4 MB tmpfs (private mount namespace), 40 rows of 8 x 16 kB."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs root / unshare)")
    script = _writer(tmp_path)
    ref = tmp_path / "ref.h5"
    assert _run_writer(script, ref, "create")["error"] is None
    p = disk / "s.h5"
    # one namespace: fill the 4 MB disk, then grow it to 64 MB ("free space") and re-run, copy out
    sh = (f"mount -t tmpfs -o size=4m tmpfs {disk} && {sys.executable} {script} {p} create 0 && "
          f"cp {p} {tmp_path}/after_fault.h5 && mount -o remount,size=64m {disk} && "
          f"{sys.executable} {script} {p} resume 0 && cp {p} {tmp_path}/after_rerun.h5")
    r = subprocess.run(["unshare", "-m", "sh", "-c", sh], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Exception ignored" not in r.stderr, r.stderr[-3000:]
    first, second = (json.loads(x) for x in r.stdout.strip().splitlines()[-2:])
    assert first["errno"] == errno.ENOSPC, first
    assert str(p) in first["error"] and "the disk is full" in first["error"], first
    assert 0 < sum(first["complete"]) < 40
    _check_rows_on_disk(tmp_path / "after_fault.h5", first["complete"])
    assert second["error"] is None and sum(second["complete"]) == 40
    assert (tmp_path / "after_rerun.h5").read_bytes() == ref.read_bytes()
