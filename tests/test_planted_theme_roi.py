"""Planted signals through the theme-ROI model (Jia, Li, He 2019 §III) with a frozen random
backbone: images whose content score is their brightness plus a theme offset the pixels do not
show (tests/planted_images.py), zero-padded into one canvas by the real tf.data pipeline
(ku.data.canvas, mirrored views), ROI pooling over each image's box in a randomly initialised
Inception-v3; the pooled features of every view are stored (ku.models.theme_roi.view_features),
the layers after the pooling trained on them (fit_theme_roi_head, the path scripts/train_theme_roi.py
takes on the demo without ImageNet weights), and the *whole* models then score the held-out
images from their pixels, averaging the views (predict_views).

What can fail: views stored in another order than the images (the head would learn the wrong
targets), themes not reaching the theme embedding (the theme model would not beat the
theme-blind one), a head that does not share the model's layers (the whole model would predict
the initial prior).

CI-sized: 96 training / 48 test images with a 64-80 px shorter side in a 112 x 112 canvas, a
36 x 36 ROI output, 2 views, 40 epochs of Adam on stored features. When written (2026-11-29):
test SRCC 0.993 with the theme, 0.729 without (the theme offsets carry about half the variance);
with the training targets shifted by one row (checked by hand) both fall to about 0.
"""
import keras
import numpy as np
import pytest

from ku.backbones import build_backbone
from ku.data.canvas import targets_from_ids
from ku.metrics import srcc
from ku.models import theme_roi as jia
from ku.training import fit_theme_roi_head

from planted_images import make_planted_set

N_TRAIN, N_TEST, CANVAS, ROI = 96, 48, 112, 36
VIEWS = dict(mode="pad_roi", canvas=CANVAS, augment="flip", batch_size=16)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    ids = make_planted_set(tmp_path_factory.mktemp("planted_jia"), N_TRAIN + N_TEST, n_train=N_TRAIN,
                           themes=True, seed=1)
    return {s: ids[ids.set == s].reset_index(drop=True) for s in ("training", "test")}


@pytest.fixture(scope="module")
def trained(planted):
    """The theme and the theme-blind model on one frozen random backbone, heads trained on the
    stored features of every training view; returns {theme: (model, test SRCC)}."""
    train, test = planted["training"], planted["test"]
    backbone = build_backbone("inception_v3", weights=None)
    out, features = {}, None
    for theme in (True, False):
        keras.utils.set_random_seed(0)
        model = jia.theme_roi_model(canvas=CANVAS, roi_size=ROI, theme=theme, n_themes=5, backbone=backbone,
                                    feature_normalization=True)
        if features is None:  # the same backbone: the same visual features for both models
            features = jia.view_features(model, train, **VIEWS)
            assert features.shape[:2] == (N_TRAIN, 2)
        jia.adapt_feature_normalization(model, features)
        themes = train["theme_index"].to_numpy(np.int32) if theme else None
        fit_theme_roi_head(model, features, targets_from_ids(train), themes, epochs=40,
                           optimizer=keras.optimizers.Adam(1e-3), verbose=0)
        pred = jia.predict_views(model, test, **VIEWS)
        assert np.isfinite(pred).all() and np.allclose(pred.sum(axis=1), 1, atol=1e-5)
        mean = pred @ np.arange(1, 11)
        out[theme] = (model, float(srcc(test["mos"], mean)))
    return out


def test_theme_roi_learns_planted_brightness_and_theme(trained):
    _, with_theme = trained[True]
    assert with_theme >= 0.9, with_theme


def test_theme_adds_what_the_pixels_do_not_show(trained):
    _, with_theme = trained[True]
    _, without = trained[False]
    assert with_theme >= without + 0.1, (with_theme, without)


def test_head_model_shares_the_models_layers(trained, planted):
    """The head on one view's stored features equals the whole model on that view."""
    model, _ = trained[True]
    test = planted["test"].head(4)
    x = jia.view_features(model, test, **{**VIEWS, "augment": "none"})[:, 0]
    # the visual-features model built once (as ku.pipelines.theme_roi passes it) gives the same
    np.testing.assert_array_equal(
        jia.view_features(jia.visual_features_model(model), test, **{**VIEWS, "augment": "none"})[:, 0], x)
    themes = test["theme_index"].to_numpy(np.int32)
    head = np.asarray(jia.theme_roi_head_model(model)([x, themes]))
    whole = jia.predict_views(model, test, **{**VIEWS, "augment": "none"})
    np.testing.assert_allclose(head, whole, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="themes_train"):
        fit_theme_roi_head(model, x, np.full((4, 10), 0.1), epochs=1, verbose=0)
