"""Start-up cost and noise (ku/__init__.py, ku/cli.py, ku/absl_app.py).

``import ku`` and the light modules import neither TensorFlow nor Keras; ``ku --help``,
``ku --version`` and every ``ku <command> --help`` exit 0 without importing them; ku's ``.keras``
files load with plain ``keras.models.load_model`` after ``import ku`` whichever of ``ku`` and
``keras`` is imported first; TensorFlow's C++ log lines are silenced unless ``--verbose``.
Every check that needs a fresh interpreter runs in a subprocess.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ku

HEAVY = ("tensorflow", "keras")
#: absl / TensorFlow C++ log lines ("I0000 00:00:... port.cc:153] ...") and absl's preamble.
TF_LOG_LINE = re.compile(r"^(?:[IWEF]\d{4} \d\d:\d\d|WARNING: All log messages before absl)", re.M)


def _python(code, env=None, timeout=300):
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _loaded_after(code):
    """Run ``code`` in a fresh interpreter; return which of tensorflow/keras it imported."""
    r = _python(code + "\nimport json, sys\n"
                       f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_ku_and_light_modules_import_no_tensorflow():
    loaded = _loaded_after("import ku, ku.metrics, ku.data.readers, ku.evaluation, ku.export, "
                           "ku.cli, ku.absl_app")
    assert loaded == [], f"importing ku's light modules imported {loaded}"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["predict", "--help"],
                                  ["evaluate", "--help"], ["export", "--help"],
                                  ["predict"]])  # a usage error (missing arguments) too
def test_help_and_version_exit_0_without_tensorflow(argv):
    code = f"""
        import sys, time
        t = time.perf_counter()
        from ku.cli import main
        try:
            rc = main({argv!r})
        except SystemExit as e:
            rc = e.code
        print("RC", rc, time.perf_counter() - t)
    """
    r = _python(textwrap.dedent(code) + "\nimport json\n"
                       f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    lines = r.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == [], f"ku {' '.join(argv)} imported {lines[-1]}"
    rc_line = [ln for ln in lines if ln.startswith("RC ")][-1].split()
    expected = 2 if argv == ["predict"] else 0
    assert int(rc_line[1]) == expected, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(rc_line[2]) < 10, f"ku {' '.join(argv)} took {rc_line[2]} s"  # ~0.5 s idle
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    if argv == ["--version"]:
        assert f"ku {ku.__version__}" in out
    if argv[-1] == "--help":
        assert "usage: ku" in out and "--verbose" in out


def test_console_entry_point_help_is_fast():
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ku.cli", "--help"], capture_output=True, text=True,
                       timeout=120)
    seconds = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert "predict" in r.stdout and "export" in r.stdout
    assert seconds < 10, seconds  # the TensorFlow import alone takes longer on a loaded machine


def test_keras_objects_table_matches_the_registry():
    """:data:`ku.KERAS_OBJECTS` names every class that ku's modules register, and nothing else."""
    import keras

    ku.register_keras_objects()
    registered = {k.split(">", 1)[1]: v for k, v in keras.saving.get_custom_objects().items()
                  if k.startswith("ku>") and isinstance(v, type)}
    table = {name: module for module, names in ku.KERAS_OBJECTS.items() for name in names}
    missing = sorted(set(registered) - set(table))
    assert not missing, f"add {missing} to ku.KERAS_OBJECTS (ku/__init__.py)"
    stale = sorted(set(table) - set(registered))
    assert not stale, f"ku.KERAS_OBJECTS lists {stale}, which no module registers"
    for name, cls in registered.items():
        assert cls.__module__ == table[name], (name, cls.__module__, table[name])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny model with two ku objects (a layer and, compiled, a loss) saved as .keras, with
    its input and output."""
    import keras

    from ku.layers import AreaPooling2D
    from ku.losses import EMDLoss

    d = tmp_path_factory.mktemp("lazy")
    inp = keras.Input((12, 12, 3))
    x = AreaPooling2D((3, 3), name="area")(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(4, activation="softmax", name="dense")(x)
    model = keras.Model(inp, out, name="lazy_toy")
    model.compile(optimizer="adam", loss=EMDLoss())
    x_in = np.random.default_rng(0).uniform(0, 255, (2, 12, 12, 3)).astype("float32")
    np.save(d / "x.npy", x_in)
    np.save(d / "y.npy", np.asarray(model(x_in)))
    model.save(d / "toy.keras")
    return d


@pytest.mark.parametrize("first,second", [("ku", "keras"), ("keras", "ku")])
def test_keras_load_model_after_import_ku(saved_model, first, second):
    d = saved_model
    code = f"""
        import {first}
        import {second}
        import numpy as np
        m = keras.models.load_model({str(d / 'toy.keras')!r})
        assert type(m.loss).__module__ == "ku.losses.emd", type(m.loss)
        np.save({str(d / 'y_loaded.npy')!r}, np.asarray(m(np.load({str(d / 'x.npy')!r}))))
    """
    r = _python(code, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(np.load(d / "y_loaded.npy"), np.load(d / "y.npy"), rtol=1e-6)


def test_ku_load_model(saved_model):
    m = ku.load_model(saved_model / "toy.keras", compile=False)
    np.testing.assert_allclose(np.asarray(m(np.load(saved_model / "x.npy"))),
                               np.load(saved_model / "y.npy"), rtol=1e-6)


def test_without_import_ku_keras_cannot_load(saved_model):
    """The test above can fail: without ``import ku`` Keras does not know ku's classes."""
    code = f"""
        import keras
        try:
            keras.models.load_model({str(saved_model / 'toy.keras')!r})
        except Exception as e:
            print("REFUSED", type(e).__name__)
    """
    r = _python(code, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert "REFUSED" in r.stdout, r.stdout + r.stderr[-2000:]


def _ku_predict_missing(verbose):
    """``ku predict`` up to the TensorFlow import, then a usage error (missing model file)."""
    argv = ["predict", "missing.jpg", "--model", "missing.keras"] + (["--verbose"] if verbose else [])
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "ku.cli", *argv], capture_output=True, text=True,
                          timeout=300, env=env)


def test_tensorflow_log_lines_silenced_unless_verbose():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    bare = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                          text=True, timeout=300, env=env)
    quiet = _ku_predict_missing(verbose=False)
    assert quiet.returncode == 2, quiet.stderr[-2000:]
    assert "missing.jpg" in quiet.stderr
    assert not TF_LOG_LINE.search(quiet.stderr), quiet.stderr[-2000:]
    if not TF_LOG_LINE.search(bare.stderr):
        pytest.skip("this TensorFlow build prints no log lines on import (nothing to bring back)")
    loud = _ku_predict_missing(verbose=True)
    assert loud.returncode == 2
    assert TF_LOG_LINE.search(loud.stderr), "--verbose must show TensorFlow's log lines"
