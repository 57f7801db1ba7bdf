"""Training files under resumes and write faults: one history row per epoch after a resume
(HistoryLogger), and checkpoint / state writes that fail loudly and leave the old file
(ResumableBackup, the schedule state through ku.data.durable)."""
import errno
import os

import keras
import numpy as np
import pandas as pd
import pytest

from ku.data.durable import DiskWriteError
from ku.training import HistoryLogger, ResumableBackup, backup_epoch, paper_schedule, train


def _tiny():
    init = keras.initializers.GlorotUniform(seed=0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, kernel_initializer=init)])
    m.compile(keras.optimizers.Adam(1e-2), loss="mse")
    return m


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x @ np.array([1.0, -0.5, 0.3, 0.2]) + 5).astype("float32")


def test_history_logger_drops_rows_of_re_run_epochs(tmp_path):
    """An epoch logged before a kill and re-run after the resume appears once (the new row); a
    line cut by the kill is dropped; earlier epochs are kept untouched."""
    p = tmp_path / "history.csv"
    x, y = _data()
    _tiny().fit(x, y, epochs=3, verbose=0, callbacks=[HistoryLogger(str(p))])
    h = pd.read_csv(p)
    h.loc[2, "loss"] = 777.0  # epoch 2 logged by the killed run
    h.to_csv(p, index=False, lineterminator="\r\n")
    with open(p, "a", newline="") as f:
        f.write("3,0.0")  # a row cut by the kill
    model = _tiny()
    model.fit(x, y, epochs=4, initial_epoch=2, verbose=0, callbacks=[HistoryLogger(str(p))])
    h2 = pd.read_csv(p)
    assert h2["epoch"].tolist() == [0, 1, 2, 3]
    assert h2["loss"].tolist()[:2] == h["loss"].tolist()[:2] and 777.0 not in h2["loss"].tolist()
    assert not [f for f in tmp_path.iterdir() if f.name != "history.csv"]  # no temporary file left


def test_history_logger_fresh_file_and_config(tmp_path):
    p = tmp_path / "h.csv"
    x, y = _data()
    cb = HistoryLogger(str(p))
    _tiny().fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert pd.read_csv(p)["epoch"].tolist() == [0, 1]
    assert cb.get_config() == {"filename": str(p), "separator": ","}
    _tiny().fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[HistoryLogger(str(p))])
    assert pd.read_csv(p)["epoch"].tolist() == [0, 1, 2]  # a plain continuation appends


def test_train_history_one_row_per_epoch_after_a_resume(tmp_path):
    """train(): a kill after epoch 2's history row but before its checkpoint (simulated: the row
    is appended by hand) re-runs epoch 2 on resume; history.csv holds it once."""
    x, y = _data(48, 1)
    val = _data(16, 2)
    run = tmp_path / "run"
    sched = lambda: paper_schedule(initial_lr=1e-2, stage_epochs=50, patience=50, verbose=0)  # noqa: E731
    train(_tiny(), (x, y), val, run_dir=run, schedule=sched(), max_epochs=2, verbose=0, batch_size=16)
    lines = (run / "history.csv").read_text().splitlines(keepends=True)
    fake = "2" + lines[-1][1:]  # epoch 2's row written, then killed before the checkpoint
    (run / "history.csv").write_text("".join(lines) + fake, newline="")
    assert backup_epoch(run / "backup") == 2
    res = train(_tiny(), (x, y), val, run_dir=run, schedule=sched(), max_epochs=3, verbose=0, batch_size=16)
    raw = pd.read_csv(run / "history.csv")
    assert raw["epoch"].tolist() == [0, 1, 2]  # the file itself, not only the de-duplicated result
    assert res.history["epoch"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_checkpoint_write_fault_raises_and_keeps_the_old_checkpoint(tmp_path, monkeypatch, code):
    x, y = _data()
    backup = tmp_path / "backup"
    model = _tiny()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[ResumableBackup(backup)])
    before = (backup / "latest.weights.h5").read_bytes()
    real = os.fsync

    def failing(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(DiskWriteError) as exc:
        model.fit(x, y, epochs=2, initial_epoch=1, verbose=0, callbacks=[ResumableBackup(backup)])
    monkeypatch.setattr(os, "fsync", real)
    msg = str(exc.value)
    assert str(backup / "latest.weights.h5") in msg and "checkpoint" in msg, msg
    assert ("the disk is full" in msg) == (code == errno.ENOSPC)
    assert (backup / "latest.weights.h5").read_bytes() == before  # the epoch-1 checkpoint, intact
    assert backup_epoch(backup) == 1
    assert sorted(f.name for f in backup.iterdir()) == ["latest.weights.h5", "training_metadata.json"]
