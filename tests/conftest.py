"""Shared pytest fixtures. Heavy objects (backbones, the demo set) are built once per session.

The tests run on the TensorFlow backend by default; ``KERAS_BACKEND=jax`` runs them on JAX
(``make test`` does both for the backend-agnostic modules, ``JAX_TESTS`` in the Makefile), where
the tests marked ``tensorflow_only(reason)`` (need TensorFlow itself) or
``backend_independent(reason)`` (model-level checks the backend does not change, run once; see
pytest.ini) are skipped with their reason."""
import os
import signal

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ["KERAS_BACKEND"] == "jax":
    # The tests' inputs are tiny, so XLA's compile time, not run time, dominates the JAX pass
    # (eager JAX compiles every op again for every new input shape); LLVM level 0 compiles
    # faster (JAX pass 6:05 -> 5:07 on 2 cores, 2026-11-30). Numerics are unchanged: no
    # fast-math either way. Set XLA_FLAGS yourself to override.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


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
        for name, why in (("tensorflow_only", "TensorFlow only"),
                          ("backend_independent", "backend-independent, run on the TensorFlow pass")):
            mark = item.get_closest_marker(name)
            if mark is not None:
                reason = mark.args[0] if mark.args else mark.kwargs.get("reason", "")
                item.add_marker(pytest.mark.skip(reason=f"{why} ({backend} backend): {reason}"))
                break


@pytest.fixture(scope="session", autouse=True)
def _torch_tensors_read_by_numpy():
    """On the PyTorch backend, the tests' ``np.asarray(layer(x))`` reads outputs that require
    grad (torch refuses ``.numpy()`` on them; users call ``keras.ops.convert_to_numpy``)."""
    if os.environ["KERAS_BACKEND"] != "torch":
        yield
        return
    import torch

    original = torch.Tensor.__array__

    def __array__(self, *args, **kwargs):
        return original(self.detach().cpu(), *args, **kwargs)

    torch.Tensor.__array__ = __array__
    yield
    torch.Tensor.__array__ = original
