"""Planted signal through APM (Murray & Gordo 2017 §3.2, §3.4) end to end: images whose score is
their brightness (tests/planted_images.py), of several sizes and aspect ratios, through the
real aspect-ratio tf.data batches (ku.data.aspect_batches, padded at the top-left) into a masked,
randomly initialised ResNet-50 APM trained with ku.training.fit_apm; held-out images are
predicted with predict_batches in padded batches. A pipeline that loses the link between an
image and its target (batch order, padding rows, shuffled plans) cannot rank the held-out
images by brightness.

CI-sized: 64 training images with a 40 px shorter side, 8 epochs of SGD (lr 5e-3, the paper's
momentum and weight decay), the "mean" variant (Table 1), a 32-unit first FC layer; test SRCC
was 0.927 when written (2026-11-29; ~44 s of CPU time on a loaded 2-core machine).
"""
import keras
import numpy as np
import pytest

from ku.data.aspect_batches import aspect_batches
from ku.metrics import srcc
from ku.models import apm
from ku.training import fit_apm, fit_apm_head

from planted_images import make_planted_set

N_TRAIN, N_TEST, SIDE = 64, 48, 40


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    ids = make_planted_set(tmp_path_factory.mktemp("planted_apm"), N_TRAIN + N_TEST, n_train=N_TRAIN,
                           short_side=(SIDE, SIDE + 16), seed=0)
    return {s: ids[ids.set == s].reset_index(drop=True) for s in ("training", "test")}


def test_apm_learns_planted_brightness(planted):
    train, test = planted["training"], planted["test"]
    keras.utils.set_random_seed(0)
    model = apm.apm_model("resnet50", None, variant="mean", fc_units=32)  # masked=True
    apm.init_output_bias(model, apm.apm_targets(train, "mean").mean(axis=0))
    fit_apm(model, train, None, variant="mean", shorter_side=SIDE, batch_size=16, epochs=8,
            optimizer=apm.apm_optimizer("sgd", 5e-3, decay_steps=None), verbose=0)
    batches = aspect_batches(test, 16, shorter_side=SIDE)
    canvases = set()
    for element in batches.dataset.take(batches.steps_per_epoch):
        images = element[0][0] if isinstance(element[0], tuple) else element[0]
        canvases.add(tuple(images.shape[1:3]))
    assert len(canvases) > 1  # several aspect-ratio canvases, i.e. padded batches
    out, rows = apm.predict_batches(model, batches)
    assert rows.tolist() == list(range(N_TEST))
    pred = out["mean"][:, 0]
    assert np.isfinite(pred).all() and pred.std() > 0
    assert srcc(test["mos"], pred) >= 0.9


def test_apm_head_on_stored_spp_vectors_learns_planted_brightness(planted):
    """The frozen-backbone path of scripts/train_apm.py (a random backbone on the demo): SPP
    vectors computed once through the aspect-ratio batches, the feature standardisation adapted
    on the training vectors, the FC layers trained by fit_apm_head; the *whole* model then
    predicts the held-out images from their pixels. Rows of the stored vectors that do not match
    their targets, or a head that does not share the model's layers, cannot rank them. A random
    VGG16 (a third of ResNet-50's time here; test SRCC 0.935 on 2026-11-30)."""
    train, test = planted["training"], planted["test"]
    keras.utils.set_random_seed(0)
    model = apm.apm_model("vgg16", None, variant="mean", fc_units=32, feature_normalization=True)
    spp = apm.spp_features_model(model)
    x_train, rows = apm.predict_batches(spp, aspect_batches(train, 16, shorter_side=SIDE))
    x_train = next(iter(x_train.values()))
    assert rows.tolist() == list(range(N_TRAIN))
    y_train = apm.apm_targets(train, "mean")
    apm.adapt_feature_normalization(model, x_train)
    apm.init_output_bias(model, y_train.mean(axis=0))
    backbone_before = [w.copy() for w in model.get_layer("backbone").get_weights()[:4]]
    fit_apm_head(model, x_train, y_train, variant="mean", batch_size=16, epochs=30,
                 optimizer=apm.apm_optimizer("adam", 1e-3, decay_steps=None), verbose=0)
    for a, b in zip(backbone_before, model.get_layer("backbone").get_weights()[:4]):
        np.testing.assert_array_equal(a, b)  # frozen
    out, rows = apm.predict_batches(model, aspect_batches(test, 16, shorter_side=SIDE))
    pred = out["mean"][:, 0]
    assert np.isfinite(pred).all() and pred.std() > 0
    assert srcc(test["mos"], pred) >= 0.9
