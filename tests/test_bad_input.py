"""Issue 8: the bad-input corpus (tests/bad_input_corpus.py), run as one table.

Every case is built into its own temporary folder. ``ok`` cases must read and pass their
reference check; ``error`` cases must raise the stated exception type with a message that names
the file / line / argument (every ``mention`` string); ``skip`` cases (batch work) must process
every good item and report every bad one. CLI cases run the script as a subprocess: non-zero exit,
the mentions on stderr, no traceback, and quickly (the checks run before TensorFlow is imported).
"""
import subprocess
import time

import pytest

from bad_input_corpus import cases, markdown_table

CASES = cases()
CLI_TIMEOUT = 60


def _fmt(text, params):
    return text.format(**{k: v for k, v in params.items() if isinstance(v, str)})


def test_corpus_size_and_groups():
    assert len(CASES) >= 50
    groups = {c.group for c in CASES}
    assert groups == {"image", "batch", "labels", "store", "cli"}
    assert markdown_table().count("\n") == len(CASES) + 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    params = case.make(tmp_path)
    if case.group == "cli":
        t0 = time.time()
        r = subprocess.run(params["argv"], capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=params["d"])
        err = r.stderr
        assert r.returncode != 0, (r.stdout[-2000:], err[-2000:])
        assert "Traceback" not in err, err[-3000:]
        for m in case.mention:
            assert _fmt(m, params) in err, (m, err[-1500:])
        assert time.time() - t0 < 30  # no backbone was built, no dataset scanned
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
