"""APM (Murray & Gordo 2017): padding exactness with masking, the leak without it, SPP width,
variants and losses against numpy, save/export round trips, fusion and evaluation helpers."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ku.layers import ImagePreprocessing
from ku.models import apm
from ku.models.masking import masked_model
from ku.training import fit_apm_head

SHAPES = [(96, 128), (120, 90), (64, 64), (77, 101)]


def randomize_batch_norm(model, seed):
    """Random BN statistics/affine (weights=None leaves mean 0 / var 1, which hides leaks)."""
    rng = np.random.default_rng(seed)
    for layer in model.get_layer("backbone").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.2, b.shape),
                               rng.normal(0, 0.2, m.shape), rng.uniform(0.5, 2.0, v.shape)])


def random_images(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, (h, w, 3)).astype(np.float32) for h, w in shapes]


def canvas_of(images, extra=(5, 3)):
    H = max(im.shape[0] for im in images) + extra[0]
    W = max(im.shape[1] for im in images) + extra[1]
    canvas = np.zeros((len(images), H, W, 3), np.float32)
    for k, im in enumerate(images):
        canvas[k, :im.shape[0], :im.shape[1]] = im
    return canvas, np.array([im.shape[:2] for im in images], np.int32)


def out_dict(model, x):
    out = model(x, training=False)
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return {model.output_names[0]: np.asarray(out)}


@pytest.fixture(scope="session")
def r50_masked():
    model = apm.apm_model("resnet50", None, fc_units=32, global_max_branch=True)
    randomize_batch_norm(model, seed=0)
    return model


@pytest.fixture(scope="session")
def r50_unmasked(r50_masked):
    model = apm.apm_model("resnet50", None, fc_units=32, global_max_branch=True, masked=False)
    assert apm.copy_backbone_weights(r50_masked, model) > 100
    for name in ("apm_fc1", "apm_fc2", "max_branch_fc1", "max_branch_fc2"):
        model.get_layer(name).set_weights(r50_masked.get_layer(name).get_weights())
    return model


@pytest.fixture(scope="session")
def r101_masked():
    return apm.apm_model("resnet101", None, fc_units=8)


# --------------------------------------------------------------------------------------------
# padding
# --------------------------------------------------------------------------------------------
@pytest.mark.backend_independent(
    "four image sizes through ResNet-50; on every backend: the masked backbone in test_masking, "
    "masked SPP in test_spp and the whole masked model in the next test")
def test_masked_prediction_in_padded_batch_equals_alone(r50_masked):
    images = random_images(SHAPES, seed=1)
    alone = apm.predict_images(r50_masked, images)
    canvas, sizes = canvas_of(images)
    batched = out_dict(r50_masked, [canvas, sizes])
    for key in ("distribution", "max_distribution"):
        assert np.abs(alone[key]).max() > 0
        np.testing.assert_allclose(batched[key], alone[key], rtol=1e-4, atol=1e-5 * np.abs(alone[key]).max())
    # the SPP vector itself (18,432-d for ResNet-50 too: 2048 channels x 9 cells)
    spp = apm.spp_features_model(r50_masked)
    f_batch = np.asarray(spp([canvas, sizes]))
    f_alone = np.concatenate([np.asarray(spp([im[None], np.array([im.shape[:2]], np.int32)])) for im in images])
    assert f_batch.shape == (len(SHAPES), 18432)
    np.testing.assert_allclose(f_batch, f_alone, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(f_batch, axis=1), 1.0, rtol=1e-5)


def test_masked_canvas_content_outside_images_is_irrelevant(r50_masked):
    images = random_images(SHAPES[:2], seed=2)
    canvas, sizes = canvas_of(images)
    junk = canvas.copy()
    rng = np.random.default_rng(3)
    for k, (h, w) in enumerate(sizes):
        noise = rng.uniform(0, 255, junk[k].shape).astype(np.float32)
        keep = np.zeros(junk.shape[1:3], bool)
        keep[:h, :w] = True
        junk[k] = np.where(keep[..., None], junk[k], noise)
    a, b = out_dict(r50_masked, [canvas, sizes]), out_dict(r50_masked, [junk, sizes])
    np.testing.assert_allclose(b["distribution"], a["distribution"], rtol=1e-5, atol=1e-7)


@pytest.mark.backend_independent("an unmasked twin of the masked model (no ku layer differs); on every "
                                 "backend: the whole masked model in the previous test")
def test_unmasked_padding_leaks_and_is_measured(r50_masked, r50_unmasked):
    images = random_images(SHAPES, seed=1)
    canvas, sizes = canvas_of(images)
    # same weights: the unmasked model agrees with the masked one on single unpadded images
    alone_m = apm.predict_images(r50_masked, images)["distribution"]
    alone_u = apm.predict_images(r50_unmasked, images)["distribution"]
    np.testing.assert_allclose(alone_u, alone_m, rtol=1e-4, atol=1e-6)
    batched = out_dict(r50_unmasked, [canvas, sizes])["distribution"]
    rel = np.abs(batched - alone_u).max() / np.abs(alone_u).max()
    spp = apm.spp_features_model(r50_unmasked)
    f_batch = np.asarray(spp([canvas, sizes]))
    f_alone = np.concatenate([np.asarray(spp([im[None], np.array([im.shape[:2]], np.int32)])) for im in images])
    rel_spp = np.abs(f_batch - f_alone).max() / np.abs(f_alone).max()
    cos = (f_batch * f_alone).sum(axis=1)
    print(f"\nunmasked zero padding (ResNet-50, random BN): prediction max rel diff {rel:.3g}, "
          f"SPP vector max rel diff {rel_spp:.3g}, cosine min {cos.min():.5f}")
    assert rel > 1e-3  # the leak is real (masked: < 1e-4, test above)


R101 = pytest.mark.backend_independent("ResNet-101, the deeper twin of the ResNet-50 tests above")


@R101
def test_resnet101_spp_is_18432_and_masked_exact(r101_masked):
    spp = apm.spp_features_model(r101_masked)
    assert spp.output.shape == (None, 18432)
    assert r101_masked.get_layer("apm_spp").levels == (3,)
    images = random_images([(64, 80), (72, 48)], seed=4)
    canvas, sizes = canvas_of(images)
    f_batch = np.asarray(spp([canvas, sizes]))
    f_alone = np.concatenate([np.asarray(spp([im[None], np.array([im.shape[:2]], np.int32)])) for im in images])
    assert f_batch.shape == (2, 18432)
    np.testing.assert_allclose(f_batch, f_alone, rtol=1e-4, atol=1e-6)


@R101
def test_resnet101_layer_structure(r101_masked):
    model = r101_masked
    assert model.get_layer("apm_fc1").units == 8
    assert model.get_layer("apm_fc2").units == 10
    assert model.get_layer("apm_fc2").activation.__name__ == "relu"
    bns = [l for l in model.get_layer("backbone").layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)  # frozen batch norm (module docstring)
    assert model.get_layer("apm_fc1").trainable


def test_paper_widths_without_building_resnet():
    # FC 4096 -> FC 10 on an 18,432-d SPP vector (§3.2); a stand-in backbone with 2048 channels
    model = apm.apm_model(backbone_model=tiny_backbone(channels=2048))
    assert model.get_layer("apm_fc1").kernel.shape == (18432, 4096)
    assert model.get_layer("apm_fc2").kernel.shape == (4096, 10)


# --------------------------------------------------------------------------------------------
# a tiny masked backbone for fast tests
# --------------------------------------------------------------------------------------------
def tiny_backbone(channels=6, seed=0):
    inp = keras.Input((None, None, 3), name="image")
    x = ImagePreprocessing("caffe", name="preprocessing")(inp)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, name="c1",
                            kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Activation("relu", name="r1")(x)
    x = keras.layers.MaxPooling2D(2, name="p1")(x)
    x = keras.layers.Conv2D(channels, 3, padding="same", name="c2",
                            kernel_initializer=keras.initializers.GlorotUniform(seed + 1),
                            bias_initializer=keras.initializers.Constant(0.1))(x)
    base = keras.Model(inp, x, name="tiny")
    return masked_model(base, name="backbone")


@pytest.mark.parametrize("variant, n_out", [("dist", 10), ("dist_eucl", 10), ("mean", 1)])
def test_variants_output_and_loss_match_numpy(variant, n_out):
    model = apm.apm_model(backbone_model=tiny_backbone(), variant=variant, fc_units=16)
    assert model.output_names == (["mean"] if variant == "mean" else ["distribution"])
    images = random_images([(40, 56), (48, 40), (33, 33)], seed=5)
    canvas, sizes = canvas_of(images)
    # targets from an ids-table-like frame
    rng = np.random.default_rng(6)
    dist = rng.dirichlet(np.ones(10), size=3)
    import pandas as pd
    ids = pd.DataFrame({f"dist_{k + 1}": dist[:, k] for k in range(10)})
    y = apm.apm_targets(ids, variant)
    assert y.shape == (3, n_out)
    if variant == "mean":
        np.testing.assert_allclose(y[:, 0], dist @ np.arange(1, 11), rtol=1e-5)
    model.compile(optimizer="sgd", loss=apm.apm_loss(variant))
    pred = np.asarray(model.predict([canvas, sizes], verbose=0), np.float64)
    assert pred.shape == (3, n_out) and (pred >= 0).all()
    got = model.evaluate([canvas, sizes], y, batch_size=3, verbose=0)
    d = pred - y
    if variant == "dist_eucl":
        ref = (0.5 * (d ** 2).sum(1)).mean()
    else:  # eq. 1 written out, delta = 1 / 3^2, summed over bins, mean over the batch
        delta = 1 / 9
        per_bin = np.where(np.abs(d) <= delta, 0.5 * d ** 2, delta * (np.abs(d) - 0.5 * delta))
        ref = per_bin.sum(1).mean()
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_huber_switch_point_and_slope():
    loss = apm.apm_loss("dist")
    assert math.isclose(loss.sigma, 3.0) and math.isclose(loss.delta, 1 / 9)
    g = np.zeros((1, 10), np.float32)
    p = np.zeros((1, 10), np.float32)
    p[0, 0] = 0.5  # linear branch: delta * (0.5 - delta / 2)
    np.testing.assert_allclose(float(loss(g, p)), (1 / 9) * (0.5 - 1 / 18), rtol=1e-6)
    p[0, 0] = 0.1  # quadratic branch
    np.testing.assert_allclose(float(loss(g, p)), 0.5 * 0.01, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        apm.apm_model(backbone_model=tiny_backbone(), variant="median")
    with pytest.raises(ValueError, match="global_max_branch"):
        apm.apm_model(backbone_model=tiny_backbone(), variant="mean", global_max_branch=True)
    with pytest.raises(ValueError, match="fc_units"):
        apm.apm_model(backbone_model=tiny_backbone(), fc_units=0)
    with pytest.raises(ValueError, match="variant"):
        apm.apm_loss("hinge")


# --------------------------------------------------------------------------------------------
# save / export
# --------------------------------------------------------------------------------------------
def test_save_reload_keras_resnet(r50_masked, tmp_path):
    path = tmp_path / "apm.keras"
    r50_masked.save(path)
    reloaded = keras.models.load_model(path)
    images = random_images([(70, 90), (90, 50)], seed=7)
    canvas, sizes = canvas_of(images)
    a, b = out_dict(r50_masked, [canvas, sizes]), out_dict(reloaded, [canvas, sizes])
    assert set(a) == set(b) == {"distribution", "max_distribution"}
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7)
    assert reloaded.get_layer("apm_spp").levels == (3,)
    assert reloaded.inputs[0].shape == (None, None, None, 3)


@pytest.mark.tensorflow_only("SavedModel export")
def test_export_saved_model_dynamic_and_reload(tmp_path):
    model = apm.apm_model(backbone_model=tiny_backbone(), fc_units=16, levels=(1, 3))
    inference = apm.apm_inference_model(model)
    inference.save(tmp_path / "inf.keras")
    reloaded = keras.models.load_model(tmp_path / "inf.keras")
    inference.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    for shapes in ([(40, 60)], [(35, 50), (52, 31), (44, 44)]):
        images = random_images(shapes, seed=len(shapes))
        canvas, sizes = canvas_of(images)
        ref = out_dict(inference, [canvas, sizes])
        got = loaded.serve([canvas, sizes])
        np.testing.assert_allclose(np.asarray(got["distribution"]), ref["distribution"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(got["mean"]), ref["mean"], rtol=1e-5)
        np.testing.assert_allclose(out_dict(reloaded, [canvas, sizes])["mean"], ref["mean"], rtol=1e-6)
        np.testing.assert_allclose(ref["distribution"].sum(1), 1.0, rtol=1e-5)
        raw = np.asarray(model([canvas, sizes]))
        np.testing.assert_allclose(ref["mean"][:, 0], apm.predicted_mean(raw), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# evaluation helpers, fusion, optimizer
# --------------------------------------------------------------------------------------------
def test_normalize_and_predicted_mean_eq2():
    p = np.array([[0, 2, 2, 0, 0, 0, 0, 0, 0, 0], [0] * 10, [1] * 10], float)
    ph = apm.normalize_distribution(p)
    np.testing.assert_allclose(ph.sum(1), 1.0)
    np.testing.assert_allclose(ph[1], 0.1)  # all-zero row -> uniform
    np.testing.assert_allclose(apm.predicted_mean(p), [2.5, 5.5, 5.5])


def test_fusion_weight_recovers_known_mixture():
    rng = np.random.default_rng(8)
    a = rng.dirichlet(np.ones(10), size=200)
    b = rng.dirichlet(np.ones(10), size=200)
    truth = 0.3 * a + 0.7 * b
    for criterion in ("huber", "cdloss", "kl", "mse"):
        w, table = apm.fit_fusion_weight(a * 3.0, b, truth, criterion=criterion)  # scale: L1-normalised first
        assert abs(w - 0.3) <= 0.011, (criterion, w)
        assert len(table) == 101
    fused = apm.fuse_distributions(a, b, 0.25)
    np.testing.assert_allclose(fused, 0.25 * a + 0.75 * b)
    with pytest.raises(ValueError, match="weight"):
        apm.fuse_distributions(a, b, 1.5)


def test_apm_m_optimizer_multipliers():
    from ku.optimizers import lr_factors

    model = apm.apm_model(backbone_model=tiny_backbone(), fc_units=8, global_max_branch=True)
    opt = apm.apm_optimizer("sgd", 1e-4, lr_multipliers={apm.new_layer_pattern(): 10.0})
    factors = dict(zip([v.path for v in model.trainable_variables],
                       lr_factors(model.trainable_variables, opt.lr_multipliers)))
    assert factors["max_branch_fc1/kernel"] == 10.0 and factors["max_branch_fc2/bias"] == 10.0
    assert factors["apm_fc1/kernel"] == 1.0 and factors["c1/kernel"] == 1.0
    # one real step with two outputs and two losses
    model.compile(optimizer=opt, loss={"distribution": apm.apm_loss(), "max_distribution": apm.apm_loss()})
    images = random_images([(40, 40), (40, 40)], seed=9)
    canvas, sizes = canvas_of(images, extra=(0, 0))
    y = np.full((2, 10), 0.1, np.float32)
    model.fit([canvas, sizes], {"distribution": y, "max_distribution": y}, epochs=1, verbose=0)
    assert opt.iterations.numpy() == 1
    sched = apm.apm_optimizer("sgd", 1e-3, decay_steps=20000)
    lr = sched._learning_rate  # the schedule (learning_rate gives its current value)
    assert math.isclose(float(lr(19999)), 1e-3, rel_tol=1e-6)
    assert math.isclose(float(lr(20000)), 1e-4, rel_tol=1e-5)
    assert math.isclose(sched.l2_weight_decay, 5e-4) and math.isclose(float(sched.momentum), 0.9)


def test_inference_model_fused_apm_m():
    model = apm.apm_model(backbone_model=tiny_backbone(), fc_units=8, global_max_branch=True)
    with pytest.raises(ValueError, match="fusion_weight"):
        apm.apm_inference_model(model)
    inf = apm.apm_inference_model(model, fusion_weight=0.6)
    images = random_images([(40, 44), (30, 50)], seed=10)
    canvas, sizes = canvas_of(images)
    raw = out_dict(model, [canvas, sizes])
    got = out_dict(inf, [canvas, sizes])
    ref = apm.fuse_distributions(raw["distribution"], raw["max_distribution"], 0.6)
    np.testing.assert_allclose(got["distribution"], ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["mean"][:, 0], ref @ np.arange(1, 11), rtol=1e-5)


def test_copy_backbone_weights_between_masked_and_unmasked():
    a = apm.apm_model(backbone_model=tiny_backbone(seed=1), fc_units=4)
    c = apm.apm_model(backbone_model=tiny_backbone(seed=5), fc_units=4)
    assert not np.allclose(a.get_layer("backbone").get_layer("c1").get_weights()[0],
                           c.get_layer("backbone").get_layer("c1").get_weights()[0])
    n = apm.copy_backbone_weights(a, c)
    assert n == 3  # c1, bn1, c2
    for name in ("c1", "bn1", "c2"):
        for wa, wc in zip(a.get_layer("backbone").get_layer(name).get_weights(),
                          c.get_layer("backbone").get_layer(name).get_weights()):
            np.testing.assert_array_equal(wa, wc)


def test_feature_normalization_identity_until_adapted_then_head_matches_model(tmp_path):
    """``feature_normalization=True``: the un-adapted layer is the identity (the paper's model);
    adapted, the head model on stored SPP vectors gives exactly the whole model's output, and
    the statistics are saved with the model."""
    plain = apm.apm_model(backbone_model=tiny_backbone(), fc_units=16, levels=(1, 3))
    normed = apm.apm_model(backbone_model=plain.get_layer("backbone"), fc_units=16, levels=(1, 3),
                           feature_normalization=True)
    for name in ("apm_fc1", "apm_fc2"):
        normed.get_layer(name).set_weights(plain.get_layer(name).get_weights())
    images = random_images([(40, 60), (50, 35), (45, 45)], seed=3)
    canvas, sizes = canvas_of(images)
    np.testing.assert_allclose(out_dict(normed, [canvas, sizes])["distribution"],
                               out_dict(plain, [canvas, sizes])["distribution"], rtol=1e-6, atol=1e-7)
    spp = np.asarray(apm.spp_features_model(normed)([canvas, sizes]))
    apm.adapt_feature_normalization(normed, spp)
    z = np.asarray(normed.get_layer("apm_feature_norm")(spp), np.float64)
    np.testing.assert_allclose(np.mean(np.sum(z ** 2, axis=1)), 1.0, rtol=1e-3)  # unit norm on average
    whole = out_dict(normed, [canvas, sizes])["distribution"]
    head = np.asarray(apm.apm_head_model(normed)(spp))
    np.testing.assert_allclose(head, whole, rtol=1e-5, atol=1e-6)
    path = tmp_path / "normed.keras"
    normed.save(path)
    np.testing.assert_allclose(out_dict(keras.models.load_model(path), [canvas, sizes])["distribution"],
                               whole, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        apm.adapt_feature_normalization(normed, spp[0])
    with pytest.raises(ValueError, match="APM-m"):
        fit_apm_head(apm.apm_model(backbone_model=tiny_backbone(), fc_units=8, global_max_branch=True),
                     spp, np.ones((3, 10)))
