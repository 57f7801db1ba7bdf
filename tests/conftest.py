"""Shared pytest fixtures. Heavy objects (backbones, the demo set) are built once per session."""
import os
import signal

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _stop_on_sigterm(signum, frame):
    """A SIGTERM (e.g. a CI job's time limit) ends the run like Ctrl-C, so the tests' ``finally``
    blocks run and kill the process groups they started (tests/procs.py)."""
    raise KeyboardInterrupt(f"signal {signum}")


if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
