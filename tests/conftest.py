"""Shared pytest fixtures. Heavy objects (backbones, the demo set) are built once per session.

The tests run on the TensorFlow backend by default; ``KERAS_BACKEND=jax`` runs them on JAX
(``make test`` does both for the backend-agnostic modules, ``JAX_TESTS`` in the Makefile), where
the tests marked ``tensorflow_only(reason)`` are skipped with their reason."""
import os
import signal

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _stop_on_sigterm(signum, frame):
    """A SIGTERM (e.g. a CI job's time limit) ends the run like Ctrl-C, so the tests' ``finally``
    blocks run and kill the process groups they started (tests/procs.py)."""
    raise KeyboardInterrupt(f"signal {signum}")


if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)


def pytest_collection_modifyitems(config, items):
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        return
    for item in items:
        mark = item.get_closest_marker("tensorflow_only")
        if mark is not None:
            reason = mark.args[0] if mark.args else mark.kwargs.get("reason", "needs TensorFlow")
            item.add_marker(pytest.mark.skip(reason=f"TensorFlow only ({backend} backend): {reason}"))
