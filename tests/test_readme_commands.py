"""The README's commands for the demo's trained model run as written.

``make demo`` (``scripts/train_pool3fc.py``) ends by writing a whole image -> score model and
printing the ``ku predict`` / ``ku export`` commands for it; the README shows the same commands.
This test runs the demo script in a tiny configuration (16 images, Inception-v3, one epoch) in a
fresh folder, so that the files land at the README's paths, then runs every ``ku predict`` /
``ku export`` line of the README that names a file under ``runs/``, exactly as written.
"""
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

import procs

ROOT = Path(__file__).resolve().parents[1]
#: script -> the model file it writes by default on the demo set
RUNS = {"train_pool3fc.py": "runs/pool3fc_wide_demo/run_pool3fc_wide_mos/model.keras",
        "train_apm.py": "runs/apm_dist_demo/model.keras"}
#: tiny settings (the files land at the same paths as with the defaults)
TINY = {"train_pool3fc.py": ["--demo_images=16", "--backbone=inception_v3", "--max_epochs=1",
                             "--batch_size=4", "--backbone_weights=none", "--verbose=0"],
        "train_apm.py": ["--demo_images=16", "--backbone=vgg16", "--backbone_weights=none", "--shorter_side=32",
                         "--fc_units=16", "--epochs=1", "--batch_size=4", "--verbose=0"]}


def readme_commands():
    """``ku predict`` / ``ku export`` lines of README.md whose ``--model`` is under ``runs/``."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines
            if re.match(r"\s*ku (predict|export) .*--model runs/\S+", line)]


def _ku():
    exe = Path(sys.executable).parent / "ku"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ku.cli"]


def test_readme_names_the_files_the_demo_writes():
    cmds = readme_commands()
    assert cmds, "README.md has no `ku predict/export --model runs/...` command"
    models = {re.search(r"--model (\S+)", c).group(1) for c in cmds}
    assert models == set(RUNS.values())


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    env = {**__import__("os").environ, "KU_CACHE_DIR": str(work / "cache")}
    for script, model in RUNS.items():
        r = procs.run(procs.python(ROOT / "scripts" / script, *TINY[script]), cwd=work, env=env,
                      log_dir=work, name=script)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert (work / model).is_file(), r.stdout[-3000:]
        assert f"ku predict photos/ --model {model}" in r.stdout  # the script prints the command
    photos = work / "photos"
    photos.mkdir()
    for p in sorted((work / "cache").glob("demo-*/images/*.jpg"))[:3]:
        shutil.copy(p, photos / p.name)
    return work, env


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(demo_outputs, command):
    work, env = demo_outputs
    args = shlex.split(command)
    r = procs.run(_ku() + args[1:], cwd=work, env=env, log_dir=work, name=args[1])
    assert r.returncode == 0, f"{command}\n{(r.stdout + r.stderr)[-3000:]}"
    out = work / args[args.index("--out") + 1]
    assert out.exists(), f"{command}: wrote no {out}"
    if args[1] == "predict":
        import pandas as pd

        scores = pd.read_json(out) if out.suffix == ".json" else pd.read_csv(out)
        assert len(scores) == 3 and scores["mean_score"].notna().all()
