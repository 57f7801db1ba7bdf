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
    assert r.returncode != 0
    assert "batch_size" in out and "Traceback" not in out
