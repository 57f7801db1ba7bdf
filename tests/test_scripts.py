"""Every script explains its flags (--helpfull) and refuses a bad flag naming it, without a traceback."""
from pathlib import Path

import pytest

import procs

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


def _run(*args):
    return procs.run(procs.python(*args))


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_every_flag(name):
    r = _run(f"scripts/{name}", "--helpfull")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]   # ku.absl_app.run: absl's own exit status 1 -> 0
    assert "Traceback" not in out
    # every flag the script defines is listed with a help text
    src = (ROOT / "scripts" / name).read_text()
    import re
    for flag in re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', src):
        assert f"--{flag}" in out or f"--[no]{flag}" in out, f"{name}: --{flag} missing from --helpfull"


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_exits_0(name):
    r = _run(f"scripts/{name}", "--help")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("name", ["train_apm.py", "train_theme_roi.py"])
def test_bad_flag_value_is_named(name):
    if not (ROOT / "scripts" / name).exists():
        pytest.skip(f"{name} not present")
    r = _run(f"scripts/{name}", "--batch_size=0", "--work_dir=/tmp/ku_never_used")
    out = r.stdout + r.stderr
    assert r.returncode == 2, (r.returncode, out[-2000:])  # ku.absl_app: bad arguments -> 2
    assert "batch_size" in out and "Traceback" not in out


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_flag_exits_2(name):
    r = _run(f"scripts/{name}", "--no_such_flag=1")
    out = r.stdout + r.stderr
    assert r.returncode == 2, (r.returncode, out[-2000:])
    assert "no_such_flag" in out and "Traceback" not in out


def test_unexpected_error_keeps_status_1(tmp_path):
    """Only bad arguments and unusable inputs map to 2: a crash in main stays Python's 1."""
    script = tmp_path / "crash.py"
    script.write_text("from ku import absl_app\n"
                      "def main(argv):\n    raise RuntimeError('boom')\n"
                      "absl_app.run(main)\n")
    r = procs.run(procs.python(str(script)), cwd=ROOT)
    assert r.returncode == 1 and "RuntimeError: boom" in r.stderr, (r.returncode, r.stderr[-2000:])
