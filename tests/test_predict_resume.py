"""``ku predict`` keeps what it scored: rows are appended as they are scored, an interrupted run
(SIGKILL, SIGINT) keeps them, a re-run continues and ends with the file an uninterrupted run
writes; the progress line has rate, elapsed and ETA (a folder with a named pipe:
tests/bad_input_corpus.py, ``batch/predict_folder_with_fifo``). A tiny image model (tests/test_export.py ``toy_model``) keeps it fast.
"""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pandas as pd
import pytest

from ku import cli

from test_export import make_image, toy_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 120


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    toy_model(name="toy_resume").save(d / "toy.keras")
    images = d / "images"
    images.mkdir()
    for i in range(N_IMAGES):
        cv2.imwrite(str(images / f"im{i:03d}.png"), make_image(40 + i % 7, 50, seed=i)[..., ::-1])
    full = d / "full.csv"
    assert cli.main(["predict", str(images), "--model", str(d / "toy.keras"), "--out", str(full),
                     "-q"]) == 0
    return d, images, pd.read_csv(full, dtype={"image_id": str})


def command(d, images, out):
    return [sys.executable, "-m", "ku.cli", "predict", str(images), "--model", str(d / "toy.keras"),
            "--out", str(out)]


def rows_in(path):
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def interrupt_part_way(cmd, out, sig, tmp_path, at_rows=5):
    """Start ``cmd``, wait until ``out`` has ``at_rows`` rows, send ``sig``; returns (rc, stderr)."""
    err = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), start_new_session=True)
    try:
        deadline = time.time() + 600
        while rows_in(out) < at_rows and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err.seek(0)
    return rc, err.read()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_keeps_rows_and_rerun_continues(setup, tmp_path, sig):
    d, images, full = setup
    out = tmp_path / "preds.csv"
    rc, err = interrupt_part_way(command(d, images, out), out, sig, tmp_path)
    kept = pd.read_csv(out, dtype={"image_id": str})
    assert 5 <= len(kept) < N_IMAGES, len(kept)
    if sig == signal.SIGINT:
        assert rc == 130 and "interrupted; the scores so far are in" in err, err[-2000:]
    else:
        assert rc == -signal.SIGKILL
    # every kept row is a correct score (no half-written line survives a resume either)
    ref = full.set_index("image_path").loc[kept["image_path"].tolist()]
    np.testing.assert_allclose(kept["mean_score"].to_numpy(), ref["mean_score"].to_numpy(), rtol=1e-6)
    with open(out, "ab") as f:  # a line cut short by the kill
        f.write(b"x99,/nowhere/x99.png,4.12")
    assert cli.main(command(d, images, out)[3:] + ["-q"]) == 0
    again = pd.read_csv(out, dtype={"image_id": str})
    pd.testing.assert_frame_equal(again, full)  # identical to an uninterrupted run


def test_rerun_with_other_settings_starts_afresh(setup, tmp_path, capsys):
    d, images, full = setup
    out = tmp_path / "p.csv"
    one = images / "im000.png"
    assert cli.main(["predict", str(one), "--model", str(d / "toy.keras"), "--out", str(out), "-q"]) == 0
    assert cli.main(["predict", str(one), "--model", str(d / "toy.keras"), "--out", str(out),
                     "--min-side", "0"]) == 0
    assert "already in" not in capsys.readouterr().err
    stamp = json.loads((tmp_path / "p.csv.ku-run.json").read_text())
    assert stamp["min_side"] is None
    assert pd.read_csv(out)["mean_score"][0] != full["mean_score"][0]  # rescored, not kept


def test_progress_line_rate_elapsed_eta():
    bar = cli._Progress(100, enabled=True)
    bar.start -= 50.0  # 50 s for 10 images: 5 s/image, never "0.0 images/s"
    line = bar.line(10, 1)
    assert "10/100 images (10%), 1 skipped, 5.0 s/image, elapsed 0:50, ETA 7:30" in line, line
    bar.start -= -45.0  # 5 s for 10 images
    assert "2.0 images/s" in bar.line(10, 0)
    assert "-- images/s" in cli._Progress(5).line(0, 0)

    class Out:
        text = ""

        def write(self, s):
            Out.text += s

        def flush(self):
            pass

    slow = cli._Progress(3, stream=Out(), slow=10.0)
    slow.image_time("big.jpg", 42.0, (3000, 2000))
    slow.image_time("small.jpg", 0.5, (30, 20))
    assert Out.text == "ku predict: big.jpg (3000x2000 px) took 42.0 s\n"
