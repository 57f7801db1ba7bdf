"""Helpers of the multi-worker tests: start worker processes on this machine, wait for them with
a deadline (killing every process group when it passes, so a test always stops by itself), and
read a weights file."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]


def worker_env(tf_config=None, tmpdir=None):
    """This environment without TF_CONFIG (or with the given one), CPU only, quiet, ku importable;
    ``tmpdir``: the workers' temporary folder (TMPDIR; created), to check what they leave there."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="-1")
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    if tmpdir is not None:
        Path(tmpdir).mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return env


def start(args, env, log):
    """``python *args`` in the repository root, in its own process group, output into ``log``."""
    return subprocess.Popen([sys.executable, *map(str, args)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT, start_new_session=True)


def wait_all(procs, timeout):
    """Wait for all processes; kill every process group on timeout. True when all finished."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        return False
    return True


def read_weights(path):
    """``{dataset path: array}`` of an HDF5 weights file."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out
