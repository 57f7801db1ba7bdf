"""Crash-safe training: SIGKILL a real training process mid-epoch, start it again, and
it must end exactly where an uninterrupted run ends.

What "the same result" means here (asserted below):

* final model weights (the best weights, loaded at the end): **bit-identical** to the
  uninterrupted run (``assert_array_equal``; tolerance 0). The runs are on CPU with
  ``keras.utils.set_random_seed`` and ``tf.config.experimental.enable_op_determinism()``, so any
  difference is a resume bug, not numerical noise;
* the per-epoch history (``loss``, ``val_loss``, ``val_srcc``, ``val_plcc``, ``learning_rate``)
  equal to within ``rtol=1e-12`` (the CSV round trip of float64 values; in practice equal);
* the schedule's state (best value and epoch, rate changes, finished), and, for every epoch, the
  learning rate used and the ``FeatureSequence`` epoch whose augmentation draws it trained on
  (the data RNG continues as if uninterrupted).

A single chain of runs covers the kill moments: (1) a SIGKILL from outside at a random batch
(seeded choice + random delay) of an early epoch, (2) a SIGKILL from inside ``on_epoch_end``
*after* the schedule wrote its state and best-weights files but *before* the epoch's checkpoint
(the window where the files disagree), (3) a run to the end. The head has Dropout (its random
generator state must be restored too), BatchNormalization (moving statistics) and Adam (moments,
step counter); the schedule changes the learning rate during the run.

Processes are forked from a ``multiprocessing`` forkserver that imported TensorFlow once, so
each run costs a model build instead of a TensorFlow import (real processes, real SIGKILL).
Timing never decides the outcome: a job to be killed stops at the first progress point after
the kill point (it waits there to be killed), so a slow parent still kills it mid-run; every job
writes its output into a log whose tail is part of any failure, and gets one generous deadline.
"""
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

N_TRAIN, N_VAL, A, F = 48, 16, 8, 16
BATCH = 8  # 6 batches per epoch
MAX_EPOCHS = 6  # schedule: 1e-2 -> 1e-3 -> 1e-4, stages of <= 2 epochs, patience 2
PRELOAD = ["tensorflow", "keras", "scipy.stats", "pandas", "h5py", "cv2", "ku.metrics", "ku.evaluation",
           "ku.training", "ku.data.generators", "ku.models.heads", "ku.extraction", "ku.models.mlsp",
           "ku.data.readers", "ku.pipelines.mlsp"]
TIMEOUT = 900  # s: the deadline of every job (each takes a few seconds)


def forkserver():
    """The multiprocessing context whose server preloads TensorFlow and ku (shared by the kill
    tests: one server per test process)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


# ---------------------------------------------------------------------------------------------
# the training job (runs in the child process)

def _train_job(cfg):
    import logging

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.disable(logging.WARNING)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    from ku.data.generators import FeatureSequence
    from ku.models.heads import single_3fc
    from ku.training import paper_schedule, train

    data = json.loads(Path(cfg["data"]).read_text())
    train_seq = FeatureSequence(data["store"], data["train_ids"], np.asarray(data["y_train"]), batch_size=BATCH,
                                augmentation="random", seed=3, workers=2)  # as run_mlsp
    val_seq = FeatureSequence(data["store"], data["val_ids"], np.asarray(data["y_val"]), batch_size=BATCH,
                              augmentation=0)
    model = single_3fc(F, x_size=32, dropout=(0.25, 0.25, 0.5))

    class Probe(keras.callbacks.Callback):
        """Logs what each epoch used; signals progress; kills itself where asked."""

        epoch = -1

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            with open(cfg["log"], "a") as f:
                f.write(json.dumps({"epoch": epoch, "seq_epoch": train_seq.epoch, "lr": lr}) + "\n")

        def on_train_batch_end(self, batch, logs=None):
            stall, done = cfg.get("stall_after"), _progress(cfg["side"])
            if stall is not None and done is not None and done >= tuple(stall):
                time.sleep(TIMEOUT)  # the kill point is passed: wait here to be killed
            with open(cfg["side"], "a") as f:
                f.write(f"{self.epoch} {batch}\n")
            time.sleep(cfg.get("batch_sleep", 0.0))

        def on_epoch_end(self, epoch, logs=None):
            # placed after the schedule (which has written its state and best weights) and before
            # CSVLogger and the checkpoint: the crash window where the files disagree
            if epoch == cfg.get("self_kill_epoch"):
                os.kill(os.getpid(), signal.SIGKILL)

    sched = paper_schedule(initial_lr=1e-2, stage_epochs=2, patience=2, min_lr=1e-4, verbose=0)
    res = train(model, train_seq, val_seq, run_dir=cfg["run_dir"], schedule=sched, max_epochs=MAX_EPOCHS,
                verbose=0, callbacks=[Probe()], shuffle=False)
    np.savez(cfg["weights"], *model.get_weights())
    hist = res.history
    Path(cfg["result"]).write_text(json.dumps({
        "history": {c: hist[c].tolist() for c in hist.columns},
        "best": res.best, "best_epoch": res.best_epoch, "finished": res.finished,
        "changes": res.schedule_changes, "epochs_run": res.epochs_run}))


# ---------------------------------------------------------------------------------------------
# parent side

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ku.data.store import FeatureStore

    root = tmp_path_factory.mktemp("killtrain")
    rng = np.random.default_rng(11)
    n = N_TRAIN + N_VAL
    feats = rng.normal(size=(n, A, F)).astype(np.float32)
    w = rng.normal(size=F)
    y = np.tanh(feats.mean(axis=1) @ w) + rng.normal(scale=0.1, size=n)  # learnable, mean ~0
    ids = [f"im{i:03d}" for i in range(n)]
    with FeatureStore.create(root / "feat.h5", ids, A, (F,)) as s:
        s.write_rows(0, feats)
    spec = {"store": str(root / "feat.h5"), "train_ids": ids[:N_TRAIN], "val_ids": ids[N_TRAIN:],
            "y_train": y[:N_TRAIN].tolist(), "y_val": y[N_TRAIN:].tolist()}
    (root / "data.json").write_text(json.dumps(spec))
    return root


def _cfg(root, name, **kw):
    d = root / name
    d.mkdir(exist_ok=True)
    return {"data": str(root / "data.json"), "run_dir": str(d / "run"), "log": str(d / "epochs.jsonl"),
            "side": str(d / "batches.txt"), "weights": str(d / "weights.npz"), "result": str(d / "result.json"),
            "output": str(d / "output.log"), **kw}


def _progress(side):
    try:
        lines = Path(side).read_text().split("\n")
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    return None


def _logged(log, target, args):
    """Child side: stdout and stderr (file descriptors 1 and 2, so TensorFlow's too) appended to
    ``log``, then ``target(*args)``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    target(*args)


def tail(log, chars=3000):
    """The end of a job's log (for failure messages)."""
    try:
        return f"--- {log}\n" + Path(log).read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return f"--- {log}: no output"


def start_job(ctx, target, args, log):
    """Start ``target(*args)`` in a process of ``ctx``, its output appended to ``log``."""
    with open(log, "a") as f:
        f.write(f"=== {getattr(target, '__name__', target)} started {time.strftime('%H:%M:%S')}\n")
    p = ctx.Process(target=_logged, args=(str(log), target, args))
    p.start()
    return p


def finish_job(p, log, deadline, what="job"):
    """Wait for ``p`` until ``deadline`` (``time.monotonic()``); kill it and fail the test with its
    log's tail if it is still running then. Returns the exit code."""
    try:
        p.join(max(1.0, deadline - time.monotonic()))
        if p.is_alive():
            pytest.fail(f"{what} did not finish within {TIMEOUT} s (killed)\n{tail(log)}")
        return p.exitcode
    finally:
        if p.is_alive():
            p.kill()
            p.join()


def run_job(ctx, target, args, *, log, kill_when=None, delay=lambda: 0.0, timeout=TIMEOUT, what="job"):
    """Run ``target(*args)`` in a process of ``ctx`` (output appended to ``log``); once
    ``kill_when()`` is true, wait ``delay()`` seconds and SIGKILL it from here (shared by the kill
    tests; the job itself stops at its next progress point after the kill point, so the kill
    lands however slowly this process runs). Fails the test with the log's tail if the process
    has not ended after ``timeout`` seconds. Returns the exit code."""
    p = start_job(ctx, target, args, log)
    deadline = time.monotonic() + timeout
    try:
        if kill_when is not None:
            while time.monotonic() < deadline and p.is_alive():
                if kill_when():
                    time.sleep(delay())
                    os.kill(p.pid, signal.SIGKILL)
                    break
                time.sleep(0.003)
        return finish_job(p, log, deadline, what)
    finally:
        if p.is_alive():
            p.kill()
            p.join()


def _run(ctx, cfg, kill_at=None, rng=None):
    """Run the job; with ``kill_at=(epoch, batch)`` SIGKILL it from here once it has finished
    that batch (plus a random 0..40 ms; the job waits at the end of the next batch). Returns the
    exit code."""
    Path(cfg["side"]).unlink(missing_ok=True)

    def reached():
        pr = _progress(cfg["side"])
        return pr is not None and pr >= kill_at

    if kill_at is not None:
        cfg = dict(cfg, stall_after=list(kill_at))
    return run_job(ctx, _train_job, (cfg,), log=cfg["output"], kill_when=reached if kill_at is not None else None,
                   delay=lambda: float(rng.uniform(0, 0.04)), what="training job")


def _epochs_used(log):
    """{epoch: (seq_epoch, lr)} of the last run of each epoch (a killed epoch is re-run)."""
    out = {}
    for line in Path(log).read_text().splitlines():
        r = json.loads(line)
        out[r["epoch"]] = (r["seq_epoch"], r["lr"])
    return out


def _completed_epochs(run_dir):
    meta = Path(run_dir) / "backup" / "training_metadata.json"
    return json.loads(meta.read_text())["epoch"] if meta.exists() else 0


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(data):
    ctx = forkserver()
    rng = np.random.default_rng(2024)
    ref_cfg = _cfg(data, "reference")
    ref = start_job(ctx, _train_job, (ref_cfg,), ref_cfg["output"])  # in parallel with the interrupted chain
    try:
        cfg = _cfg(data, "killed", batch_sleep=0.02)
        e1, b1 = int(rng.integers(0, 2)), int(rng.integers(0, 5))
        # (1) SIGKILL from outside in the middle of epoch e1
        assert _run(ctx, cfg, kill_at=(e1, b1), rng=rng) == -signal.SIGKILL, tail(cfg["output"])
        assert _completed_epochs(cfg["run_dir"]) == e1  # mid-epoch: the epoch in progress is lost, no more
        assert not Path(cfg["result"]).exists()
        # (2) SIGKILL inside on_epoch_end of epoch e1 + 1, between the schedule's files and the checkpoint
        assert _run(ctx, dict(cfg, self_kill_epoch=e1 + 1)) == -signal.SIGKILL, tail(cfg["output"])
        assert _completed_epochs(cfg["run_dir"]) == e1 + 1
        state = json.loads((Path(cfg["run_dir"]) / "schedule_state.json").read_text())
        assert state["state"]["epoch"] == e1 + 2  # the schedule's file is one epoch ahead of the checkpoint
        # (3) to the end
        assert _run(ctx, cfg) == 0, tail(cfg["output"])
        code = finish_job(ref, ref_cfg["output"], time.monotonic() + TIMEOUT, "reference training")
        assert code == 0, tail(ref_cfg["output"])
    finally:
        if ref.is_alive():
            ref.kill()
            ref.join()
    a, b = np.load(ref_cfg["weights"]), np.load(cfg["weights"])
    assert len(a.files) == len(b.files) > 0
    for k in a.files:
        np.testing.assert_array_equal(b[k], a[k], err_msg=f"weight {k}")  # tolerance: none (bit-identical)
    ra, rb = (json.loads(Path(c["result"]).read_text()) for c in (ref_cfg, cfg))
    assert ra["finished"] and rb["finished"]
    assert rb["best_epoch"] == ra["best_epoch"] and rb["best"] == pytest.approx(ra["best"], rel=1e-12)
    assert rb["changes"] == ra["changes"] and len(ra["changes"]) >= 1  # the rate did change
    ha, hb = ra["history"], rb["history"]
    assert hb["epoch"] == ha["epoch"] == list(range(len(ha["epoch"])))
    for col in ("loss", "val_loss", "val_srcc", "val_plcc", "learning_rate"):
        np.testing.assert_allclose(hb[col], ha[col], rtol=1e-12, err_msg=col)
    used_a, used_b = _epochs_used(ref_cfg["log"]), _epochs_used(cfg["log"])
    assert used_b == used_a  # per epoch: the same FeatureSequence draws and the same learning rate
    assert len({lr for _, lr in used_a.values()}) >= 2
