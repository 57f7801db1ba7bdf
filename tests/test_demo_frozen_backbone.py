"""The demo path of scripts/train_theme_roi.py without ImageNet weights, as a user runs it (a
subprocess, tiny settings): the random backbone stays frozen, the pooled features of every view
are computed once and shared by the theme and the theme-blind run, the layers after the pooling
train on them (ku.training.fit_theme_roi_head) and the whole models are tested. (The
APM demo's frozen path runs in tests/test_readme_commands.py.)"""
import json

import pandas as pd

import procs

DEMO_IMAGES = 48


def test_train_theme_roi_demo_trains_heads_on_stored_view_features(tmp_path):
    from ku.data.demo import make_demo_set

    make_demo_set(n_images=DEMO_IMAGES, seed=0, theme_effects=0.5)
    work = tmp_path / "work"
    r = procs.run(procs.python(procs.ROOT / "scripts" / "train_theme_roi.py", "--backbone_weights=none", "--canvas=96",
                               "--roi_size=36", "--epochs=3", "--augment=flip", "--batch_size=16",
                               f"--demo_images={DEMO_IMAGES}", f"--work_dir={work}", "--verbose=0"),
                  log_dir=tmp_path, name="train_theme_roi")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert out.count("backbone FROZEN") >= 2, out[-3000:]  # both runs
    assert out.count("features of every view (flip)") == 1, out[-3000:]  # computed once, shared
    runs = sorted(p.name for p in work.iterdir() if p.is_dir())
    assert runs == ["pad_roi_96_36_roi_flip_fnorm_frozen_notheme", "pad_roi_96_36_roi_flip_fnorm_frozen_theme"], runs
    for run in runs:
        assert len(pd.read_csv(work / run / "history.csv")) == 3
        assert (work / run / "test_predictions.npy").is_file()
    assert "Theme effect (no theme -> theme)" in out and "What learning means" in out
    settings = json.loads((work / "results.json").read_text())["settings"]
    assert settings["train_backbone"] is False and settings["feature_norm"] is True
    assert (work / "model.keras").is_file()
