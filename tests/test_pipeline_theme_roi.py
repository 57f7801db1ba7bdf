"""ku.pipelines.theme_roi.run_theme_roi from Python on a tiny demo set (the recipe behind
scripts/train_theme_roi.py): with a random backbone the layers after the pooling train on stored
view features, and the result object carries the tables, the test distributions and the files."""
import json

import numpy as np
import pytest

from ku.data.demo import load_demo
from ku.pipelines.theme_roi import ThemeRoiResult, run_theme_roi, theme_roi_settings


def test_run_theme_roi_tiny_demo(tmp_path):
    ids = load_demo(n_images=48, seed=0, val_fraction=0.15, theme_effects=0.5, root=tmp_path / "demo")
    said = []
    res = run_theme_roi(ids, tmp_path / "run", dataset="demo", backbone_weights=None, canvas=96,
                        roi_size=36, theme="on", augment="flip", epochs=2, batch_size=16, verbose=0,
                        echo=said.append)
    assert isinstance(res, ThemeRoiResult)
    text = "\n".join(said)
    assert "DEMO settings" in text and "backbone FROZEN" in text, text
    assert res.settings["train_backbone"] is False and res.settings["roi_op"] == "pool"
    label = "Pad+ROI+Theme (ku)"
    assert list(res.y_pred) == [label] and list(res.run_dirs) == [label]
    n_test = int((ids["set"] == "test").sum())
    assert res.y_true[label].shape == res.y_pred[label].shape == (n_test, 10)
    np.testing.assert_allclose(res.y_pred[label].sum(axis=1), 1.0, atol=1e-5)
    assert res.run_dirs[label].name == "pad_roi_96_36_roi_flip_fnorm_frozen_theme"
    np.testing.assert_allclose(np.load(res.run_dirs[label] / "test_predictions.npy"), res.y_pred[label])
    assert label in set(res.table1["model"]) and label in set(res.table3.iloc[:, 0])
    assert list(res.baselines) == [label] and label in set(res.baselines[label]["model"])
    assert res.model_path.is_file() and res.model.name == "jia_theme_roi36"
    saved = json.loads(res.results_path.read_text())
    assert saved["settings"]["canvas"] == 96 and set(res.seconds) == {label, "total"}


def test_settings_resolve_the_demo_and_paper_defaults():
    demo = theme_roi_settings(dataset="demo", weights=None, echo=print)
    assert (demo["canvas"], demo["roi_size"], demo["epochs"], demo["train_backbone"]) == (320, 73, 40, False)
    ava = theme_roi_settings(dataset="ava", weights="imagenet", echo=print)
    assert (ava["canvas"], ava["roi_size"], ava["epochs"], ava["train_backbone"]) == (800, 146, 30, True)
    with pytest.raises(ValueError, match="default strategy"):
        theme_roi_settings(dataset="demo", train_backbone=False, distributed=True)
    with pytest.raises(ValueError, match="roi_op"):
        run_theme_roi(None, "unused", roi_op="roi")
