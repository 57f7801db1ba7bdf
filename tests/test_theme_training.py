"""Training recipe (Jia et al. 2019 §III-C, §IV-B), test-time averaging and the paper tables (§IV-A)."""
import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from ku import metrics
from ku.data.canvas import canvas_dataset
from ku.models.theme_roi import (ablation_row, ablation_table, jia_lr_schedule, jia_optimizer, jia_tables,
                                 predict_views, theme_roi_model)
from ku.optimizers import lr_factors
from ku.training import train_theme_roi


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        h, w = rng.integers(60, 97, 2)
        path = tmp / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        d = rng.dirichlet(np.ones(10) * 3)
        rows.append({"image_id": str(i), "image_path": str(path), "mos": d @ np.arange(1, 11), "std": 1.0,
                     "n_votes": 50.0, **{f"dist_{k + 1}": d[k] for k in range(10)}, "theme": i % 3,
                     "theme_index": i % 3, "set": "training"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def model():
    return theme_roi_model(canvas=96, roi_size=36, n_themes=4)


def tiny_model():
    """The theme model's interface and layer names on a tiny network (training on CPU in seconds):
    image -> conv (stride 2) -> BN -> ROI pooling over the image's box -> GAP, theme -> theme_fc."""
    from ku.layers import ImageBoxes, RoiPooling2D
    from ku.layers.theme_embedding import ThemeEmbedding

    image = keras.Input((96, 96, 3), name="image")
    sizes = keras.Input((2,), dtype="int32", name="valid_size")
    theme = keras.Input((), dtype="int32", name="theme")
    x = keras.layers.Rescaling(1 / 127.5, -1)(image)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv2d_tiny")(x)
    x = keras.layers.BatchNormalization(name="bn_tiny", trainable=False)(x)
    x = keras.layers.Activation("relu")(x)
    boxes = ImageBoxes()(sizes)
    x = RoiPooling2D(6, 0.5, name="roi_pooling")([x, boxes])
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, ThemeEmbedding(4, 5, name="theme_fc")(theme)])
    return keras.Model([image, sizes, theme], keras.layers.Dense(10, activation="softmax", name="distribution")(x))


def test_schedule_halves_every_10_epochs():
    s = jia_lr_schedule()
    np.testing.assert_allclose([s(e) for e in range(30)], [1e-3] * 10 + [5e-4] * 10 + [2.5e-4] * 10)
    np.testing.assert_allclose(s(7, 123.0), 1e-3)  # a pure function of the epoch (resumable)


def test_optimizer_is_the_papers(model):
    opt = jia_optimizer()
    cfg = opt.get_config()
    assert cfg["momentum"] == 0.9 and cfg["weight_decay"] == 1e-4
    assert cfg["learning_rate"] == pytest.approx(1e-3)
    f = dict(zip([v.path for v in model.trainable_variables],
                 lr_factors(model.trainable_variables, opt.lr_multipliers)))
    assert f["theme_fc/kernel"] == f["theme_fc/bias"] == f["distribution/kernel"] == 10.0
    convs = [p for p in f if "conv2d" in p]
    assert len(convs) == 94 and all(f[p] == 1.0 for p in convs)
    assert not any("batch_normalization" in p for p in f)  # frozen (§IV-B)


def test_train_resume_and_predict(data, tmp_path):
    model = tiny_model()
    train = canvas_dataset(data, canvas=96, batch_size=3, seed=1)
    val = canvas_dataset(data, canvas=96, batch_size=3, training=False)
    bn = model.get_layer("bn_tiny")
    bn.set_weights([np.full(w.shape, 0.5, np.float32) for w in bn.get_weights()])
    bn_before = [np.asarray(w).copy() for w in bn.weights]
    conv_before = np.asarray(model.get_layer("conv2d_tiny").kernel).copy()
    res = train_theme_roi(model, train, val, run_dir=tmp_path / "run", epochs=2, verbose=0)
    assert res.epochs_run == 2 and len(res.history) == 2
    np.testing.assert_allclose(res.history["learning_rate"], [1e-3, 1e-3], rtol=1e-6)
    assert {"loss", "val_loss", "val_srcc", "val_plcc"} <= set(res.history.columns)
    assert res.final_weights.exists() and res.best_weights.exists()
    for a, b in zip(bn.weights, bn_before):  # batch norm (parameters and statistics) frozen
        np.testing.assert_array_equal(np.asarray(a), b)
    assert not np.allclose(np.asarray(model.get_layer("conv2d_tiny").kernel), conv_before)
    # resume: a later call continues at epoch 2 and trains one more; a row of epoch 2 written
    # before a kill (simulated: appended by hand) is replaced, not kept twice (HistoryLogger)
    hist = tmp_path / "run" / "history.csv"
    lines = hist.read_text().splitlines(keepends=True)
    hist.write_text("".join(lines) + "2" + lines[-1][1:], newline="")
    res = train_theme_roi(model, train, val, run_dir=tmp_path / "run", epochs=3, verbose=0)
    assert res.epochs_run == 1 and list(res.history["epoch"]) == [0, 1, 2]
    assert pd.read_csv(hist)["epoch"].tolist() == [0, 1, 2]  # the file itself
    # test-time: the mean over the six views of each image
    p = predict_views(model, data, canvas=96, batch_size=4)
    assert p.shape == (6, 10) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    from ku.data.canvas import evaluation_views

    every = np.asarray(model.predict(evaluation_views(data.head(2), canvas=96), verbose=0))
    np.testing.assert_allclose(p[:2], every.reshape(2, 6, 10).mean(axis=1), rtol=1e-5, atol=1e-7)


def test_tables_layout_and_values():
    rng = np.random.default_rng(1)
    t, p = rng.dirichlet(np.ones(10), 50), rng.dirichlet(np.ones(10), 50)
    t1, t2 = jia_tables(t, p, extra_rows={"no theme": (t, t)})
    assert list(t1.columns) == ["model", "source", "N", "Euclidean", "KL", "JS", "chi2", "EMD_r2", "EMD_r1", "cosine"]
    assert list(t2.columns) == ["model", "source", "N", "SRCC", "PLCC", "SRCC_std", "PLCC_std", "MSE"]
    assert list(t1["model"]) == ["ku (this run)", "no theme", "Pad+ROI+Theme", "Pad+ROI+Theme (Align)"]
    assert t1.loc[0, "EMD_r1"] == pytest.approx(metrics.emd(t, p, r=1))
    assert t1.loc[0, "chi2"] == pytest.approx(metrics.chi_square(t, p))
    assert t2.loc[0, "SRCC_std"] == pytest.approx(metrics.srcc(metrics.dist_std(t), metrics.dist_std(p)))
    assert t2.loc[2, "SRCC"] == 0.7611 and t1.loc[2, "EMD_r2"] == 0.059  # the paper's "Ours"
    row = ablation_row(t, p, "Pad+ROI (ku)")
    assert row["KL"] == pytest.approx(metrics.kl_divergence(t, p))
    tab = ablation_table([row], "Table III")
    assert list(tab["model"])[-1] == "Pad+ROI+Theme" and tab.iloc[-1]["SRCC_std"] == 0.6918
