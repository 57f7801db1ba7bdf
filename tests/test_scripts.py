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


#: (script, deprecated flag, its new name, a flag that then stops the script early with status 2)
DEPRECATED = [
    ("train_apm.py", "--weights=none", "--backbone_weights", "--batch_size=0"),
    ("train_theme_roi.py", "--weights=none", "--backbone_weights", "--batch_size=0"),
    ("train_theme_roi.py", "--pooling=align", "--roi_op", "--batch_size=0"),
    ("train_mlsp.py", "--weights=none", "--backbone_weights", "--ava_root=/nonexistent/ku"),
    ("train_mlsp.py", "--pooling=narrow", "--features", "--ava_root=/nonexistent/ku"),
    ("train_pool3fc.py", "--weights=none", "--backbone_weights", "--ava_root=/nonexistent/ku"),
    ("extract_mlsp.py", "--pooling=wide", "--features", "--ava_root=/nonexistent/ku"),
    ("extract_mlsp.py", "--weights=none", "--backbone_weights", "--ava_root=/nonexistent/ku"),
    ("predict_mlsp.py", "--weights=none", "--backbone_weights", "--out=/tmp/ku_never_used.csv"),
]


@pytest.mark.parametrize("name, old, new, stop", DEPRECATED)
def test_deprecated_flag_is_accepted_and_warns(name, old, new, stop):
    """The old flag names still parse and print a one-line "deprecated, use --new" warning."""
    r = _run(f"scripts/{name}", old, stop)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, (r.returncode, out[-2000:])
    flag = old.split("=")[0]
    assert f"warning: {flag} is deprecated, use {new}" in r.stderr, r.stderr[-2000:]


def test_deprecated_flag_maps_its_value():
    """ku.absl_app.deprecated_flag sets the new flag from the old one (with a value mapping),
    leaves it alone when the old one is absent and refuses both at once."""
    from absl import flags

    from ku import absl_app

    fv = flags.FlagValues()
    flags.DEFINE_enum("roi_op", "pool", ["pool", "align"], "new", flag_values=fv)
    flags.DEFINE_enum("pooling", None, ["roi", "align"], "old", flag_values=fv)
    fv(["prog"])
    absl_app.deprecated_flag(fv, "pooling", "roi_op", {"roi": "pool"})
    assert fv.roi_op == "pool"  # absent: untouched
    fv(["prog", "--pooling=align"])
    absl_app.deprecated_flag(fv, "pooling", "roi_op", {"roi": "pool"})
    assert fv.roi_op == "align"
    fv.unparse_flags()
    fv(["prog", "--pooling=roi"])
    fv["roi_op"].value = "align"
    absl_app.deprecated_flag(fv, "pooling", "roi_op", {"roi": "pool"})
    assert fv.roi_op == "pool"
    fv.unparse_flags()
    fv(["prog", "--pooling=roi", "--roi_op=align"])
    with pytest.raises(SystemExit, match="give only --roi_op"):
        absl_app.deprecated_flag(fv, "pooling", "roi_op")
