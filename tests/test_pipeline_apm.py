"""ku.pipelines.apm.run_apm from Python on a tiny demo set (the recipe behind scripts/train_apm.py):
a random VGG16 (the smallest APM backbone: the recipe does not depend on it) stays frozen, the FC
layers train on SPP vectors computed once, and the result object carries the tables, the test
scores and the files the run wrote."""
import numpy as np
import pandas as pd
import pytest

from ku.data.demo import load_demo
from ku.pipelines.apm import ApmResult, check_apm_args, paper_row, run_apm


def test_run_apm_tiny_demo(tmp_path):
    ids = load_demo(n_images=16, seed=0, split="murray", root=tmp_path / "demo")
    said = []
    res = run_apm(ids, tmp_path / "run", demo=True, backbone="vgg16", backbone_weights=None,
                  shorter_side=32, fc_units=16, epochs=2, batch_size=4, verbose=0, echo=said.append)
    assert isinstance(res, ApmResult)
    text = "\n".join(said)
    assert "backbone FROZEN" in text and "What learning means" in text, text
    # demo defaults resolved from demo=True and a random backbone (no flags involved)
    s = res.settings
    assert (s["train_backbone"], s["feature_norm"], s["optimizer"], s["learning_rate"]) == (False, True, "adam", 1e-4)
    n_test = int((ids["set"] == "test").sum())
    assert len(res.y_true) == len(res.y_pred) == len(res.test_ids) == n_test
    assert np.isfinite(res.y_pred).all() and res.dist_pred.shape == (n_test, 10)
    np.testing.assert_allclose(res.dist_pred.sum(axis=1), 1.0, atol=1e-5)
    assert res.table["model"].iloc[0].startswith("ku apm_") and "SRCC" in res.table
    assert any(m.startswith("ku apm_") for m in res.baselines["model"]) and len(res.baselines) == 3
    assert len(res.history) == 2
    for path in [*res.plots.values(), res.weights_path, res.model_path, res.work_dir / "metrics.csv",
                 res.work_dir / "baselines.csv", res.work_dir / "config.json"]:
        assert path.is_file(), path
    assert set(res.plots) == {"scatter", "training_curves", "distributions"}
    assert set(res.checkpoints) == {"train"}
    pred = pd.read_csv(res.work_dir / "test_predictions.csv")
    np.testing.assert_allclose(pred["predicted_mean"], res.y_pred)
    assert {"spp_features", "train", "test", "total"} <= set(res.seconds)


def test_run_apm_arguments_checked_before_any_work():
    with pytest.raises(ValueError, match="train_backbone=False"):
        check_apm_args(train_backbone=False, distributed=True)
    with pytest.raises(ValueError, match="variant='dist'"):
        check_apm_args(variant="mean", apm_m_epochs=1)
    with pytest.raises(ValueError, match="batch_size=0"):
        check_apm_args(batch_size=0)
    check_apm_args(epochs=0)  # 0 epochs: test the untrained model
    assert paper_row("resnet101", "dist", True, True) == "APM (ResNet-AVA-dist-m)"
    assert paper_row("vgg16", "mean", False, False) == "VGG-ImN-mean"
