"""Helpers of the multi-worker tests: the environment of a worker process, a cluster of worker
processes on 127.0.0.1 (started and waited for with tests/procs.py: own process groups, logs in
files, one generous deadline, everything killed at the end), and reading a weights file."""
import os
import time
from pathlib import Path

import h5py

import procs
from ku.distribute import loopback_tf_configs

ROOT = procs.ROOT
# what a worker prints when another process took its port between the pick and the bind
BIND_ERRORS = ("Could not start gRPC server", "Address already in use", "Failed to add port")


def worker_env(tf_config=None, tmpdir=None):
    """This environment without TF_CONFIG (or with the given one), CPU only, quiet, unbuffered
    output, ku importable; ``tmpdir``: the workers' temporary folder (TMPDIR; created), to check
    what they leave there."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="-1", PYTHONUNBUFFERED="1")
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    if tmpdir is not None:
        Path(tmpdir).mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return env


def run_cluster(args, log_dir, *, n_workers=2, tmpdir=None, others=(), timeout=procs.TIMEOUT, attempts=3):
    """Run ``python *args`` as ``n_workers`` workers of a loopback ``MultiWorkerMirroredStrategy``
    cluster (ports picked free just before the start) and wait for them and for ``others`` (jobs
    already started, e.g. a single-process reference).

    Logs: ``<log_dir>/worker<i>.log``. Every process must exit 0; the first failure ends the wait
    (its partners would only wait for it) with :class:`procs.Failed` holding every log's tail.
    A worker that could not bind its port (another process took it between the pick and the
    bind) is retried with new ports, up to ``attempts`` times; binding is the first thing a worker
    does, so nothing has been written then (the failed attempt's logs are kept as
    ``worker<i>.attempt<k>.log``). Returns the worker jobs."""
    log_dir, others = Path(log_dir), list(others)
    deadline = time.monotonic() + timeout
    try:
        for attempt in range(1, attempts + 1):
            workers = [procs.start(procs.python(*args), log_dir / f"worker{i}.log", env=worker_env(cfg, tmpdir))
                       for i, cfg in enumerate(loopback_tf_configs(n_workers))]
            try:
                procs.wait_all(workers, max(1.0, deadline - time.monotonic()))
                break
            except procs.Failed as e:
                collided = any(m in w.output() for w in workers for m in BIND_ERRORS)
                if not collided or attempt == attempts:
                    raise procs.Failed(procs.failure_message(str(e).split("\n")[0], workers, others),
                                       workers + others) from None
                for w in workers:
                    w.log.rename(w.log.with_name(f"{w.log.stem}.attempt{attempt}.log"))
        procs.wait_all(workers + others, max(1.0, deadline - time.monotonic()))
        return workers
    finally:
        procs.kill(others)


def read_weights(path):
    """``{dataset path: array}`` of an HDF5 weights file."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out
