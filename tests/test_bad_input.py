"""The bad-input corpus (tests/bad_input_corpus.py, docs/bad_input.md), run as one table.

Every case is built into its own temporary folder. ``ok`` cases must read and pass their
reference check; ``error`` cases must raise the stated exception type with a message that names
the file / line / argument (every ``mention`` string); ``skip`` cases (batch work) must process
every good item and report every bad one. CLI cases run the script as a subprocess: non-zero exit,
the mentions on stderr, no traceback, and the checks run before TensorFlow is imported (a stand-in
``tensorflow`` package first on the path records any import and refuses it; no wall-clock limit).
"""
import os

import pytest

import procs
from bad_input_corpus import cases, markdown_table

CASES = cases()
# a ``tensorflow`` package that shadows the real one: it records who imported it, then refuses
TF_TRAP = """import os, traceback
with open(os.environ["KU_TEST_TF_TRAP"], "a") as f:
    f.write("".join(traceback.format_stack()))
raise ImportError("tensorflow imported before the input checks (tests/test_bad_input.py)")
"""


@pytest.fixture(scope="module")
def tf_trap(tmp_path_factory):
    """A folder to put first on PYTHONPATH: its ``tensorflow`` records the import and refuses it."""
    folder = tmp_path_factory.mktemp("tf_trap")
    (folder / "tensorflow").mkdir()
    (folder / "tensorflow" / "__init__.py").write_text(TF_TRAP)
    return folder


def _fmt(text, params):
    return text.format(**{k: v for k, v in params.items() if isinstance(v, str)})


def test_corpus_size_and_groups():
    assert len(CASES) >= 50
    groups = {c.group for c in CASES}
    assert groups == {"image", "batch", "labels", "store", "cli"}
    assert markdown_table().count("\n") == len(CASES) + 1


def _run_cli(params, trap_dir, log_dir):
    """Run the case's command line with the tensorflow trap first on PYTHONPATH; returns
    (CompletedProcess, what the trap recorded: '' when TensorFlow was not imported)."""
    trap = log_dir / "tensorflow_imported.txt"
    path = os.pathsep.join([str(trap_dir), str(procs.ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "KU_TEST_TF_TRAP": str(trap)}
    r = procs.run(params["argv"], cwd=params["d"], env=env, log_dir=log_dir, name="cli")
    return r, (trap.read_text() if trap.exists() else "")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, request):
    params = case.make(tmp_path)
    if case.group == "cli":
        logs = tmp_path / "logs"
        logs.mkdir()
        r, tf_stack = _run_cli(params, request.getfixturevalue("tf_trap"), logs)
        err = r.stderr
        # the checks come first: TensorFlow is not even imported (so no backbone is built)
        assert not tf_stack, f"TensorFlow was imported before the input check, from:\n{tf_stack[-3000:]}"
        # ku's exit statuses (ku.absl_app): 2 = bad arguments or unusable inputs, 1 = a crash
        assert r.returncode == 2, (r.returncode, r.stdout[-2000:], err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        for m in case.mention:
            assert _fmt(m, params) in err, (m, err[-1500:])
        return
    if case.expect == "error":
        with pytest.raises(case.error) as exc:
            case.run(params)
        msg = str(exc.value)
        for m in case.mention:
            assert _fmt(m, params) in msg, f"{m!r} not in the message: {msg}"
        return
    result = case.run(params)
    if case.check is not None:
        case.check(result, params)
