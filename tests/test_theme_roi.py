"""The theme-aware ROI model of Jia et al. 2019 (§III): structure, weights, padding, export."""
import keras
import numpy as np
import pytest

from ku.backbones import build_backbone
from ku.models.theme_roi import (freeze_batch_norm, replaced_pool_layer, stem_valid_sizes,
                                 theme_roi_model)


def randomize(model, seed=0):
    """Random weights incl. batch-norm statistics (so padding leaks like in a trained network)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):  # [gamma], [beta], mean, var
            n = ws[-1].shape
            ws = ([rng.uniform(0.5, 1.5, n)] if layer.scale else []) + \
                ([rng.normal(0, 0.3, n)] if layer.center else []) + \
                [rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)]
        elif isinstance(layer, keras.layers.Conv2D):
            k = ws[0]
            ws = [rng.normal(0, np.sqrt(2.0 / np.prod(k.shape[:3])), k.shape)] + ws[1:]
        else:
            ws = [rng.normal(0, 0.05, w.shape) for w in ws]
        layer.set_weights([w.astype(np.float32) for w in ws])


@pytest.fixture(scope="module")
def backbone():
    bb = build_backbone("inception_v3", weights=None)
    randomize(bb, seed=1)
    return bb


@pytest.fixture(scope="module")
def models(backbone):
    """Small models (roi 36) sharing one randomised backbone."""
    out = {
        "masked": theme_roi_model(canvas=None, roi_size=36, masked=True, backbone=backbone, n_themes=8),
        "plain": theme_roi_model(canvas=None, roi_size=36, masked=False, backbone=backbone, n_themes=8),
        "align": theme_roi_model(canvas=None, roi_size=36, masked=True, roi_op="align", backbone=backbone,
                                 n_themes=8),
    }
    for m in out.values():  # same heads everywhere
        for name in ("theme_fc", "distribution"):
            layer = m.get_layer(name)
            rng = np.random.default_rng(2)
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    return out


def images(seed=0, sizes=((117, 139), (90, 150))):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, size=(h, w, 3)).astype(np.float32) for h, w in sizes]


def in_canvas(imgs, canvas):
    x = np.zeros((len(imgs), canvas[0], canvas[1], 3), np.float32)
    for i, im in enumerate(imgs):
        x[i, :im.shape[0], :im.shape[1]] = im
    return x, np.array([im.shape[:2] for im in imgs], np.int32)


def predict(model, x, sizes, themes):
    return np.asarray(model({"image": x, "valid_size": sizes, "theme": np.asarray(themes, np.int32)}))


def alone_and_padded(model, imgs, canvas=(160, 160), themes=(3, 5)):
    x, s = in_canvas(imgs, canvas)
    padded = predict(model, x, s, themes)
    alone = np.concatenate([predict(model, *in_canvas([im], im.shape[:2]), [t]) for im, t in zip(imgs, themes)])
    return alone, padded


FULL_SIZE = pytest.mark.backend_independent(
    "Inception-v3-sized structure and numbers that the backend does not change; on every backend: the "
    "ROI layers (test_roi_pooling), ThemeEmbedding (test_theme_embedding) and the masked model "
    "(test_masked_prediction_equals_image_alone)")


# ---------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------
@FULL_SIZE
def test_replaced_layer_and_stem_sizes(backbone):
    pool, stem = replaced_pool_layer(backbone)
    assert isinstance(pool, keras.layers.MaxPooling2D) and pool.pool_size == (3, 3) and pool.strides == (2, 2)
    stem_layer = backbone.get_layer(stem)
    assert isinstance(stem_layer, keras.layers.Activation)
    sizes = np.array([[800, 800], [299, 299], [117, 139], [160, 75]])
    ref = np.array([[397, 397], [147, 147], [56, 67], [77, 35]])
    np.testing.assert_array_equal(stem_valid_sizes(sizes), ref)
    np.testing.assert_array_equal(stem_valid_sizes(sizes, backbone), ref)
    # = the spatial size of the stem output of each image run alone
    stem_model = keras.Model(backbone.inputs, stem_layer.output)
    assert stem_model([np.zeros((1, 117, 139, 3), np.float32)]).shape[1:3] == (56, 67)


@FULL_SIZE
def test_whole_299_image_with_roi73_is_plain_inception_v3(backbone):
    # ROI pooling of the whole 147x147 map to 73x73 == Inception-v3's first max pooling (§III-D)
    model = theme_roi_model(canvas=299, roi_size=73, theme=False, backbone=backbone)
    feats = keras.Model(model.inputs, model.get_layer("adaptive_avg_pool").output)
    x = np.random.default_rng(3).uniform(0, 255, (2, 299, 299, 3)).astype(np.float32)
    ours = np.asarray(feats({"image": x, "valid_size": np.full((2, 2), 299, np.int32)}))
    ref = np.asarray(backbone(x)).mean(axis=(1, 2))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_variants_build_with_expected_shapes(backbone):
    for canvas, roi, fmap in [(400, 73, 8), (800, 73, 8), (800, 146, 17)]:
        m = theme_roi_model(canvas=canvas, roi_size=roi, backbone=backbone)
        assert m.get_layer("roi_pooling").output.shape == (None, roi, roi, 64)
        assert m.get_layer("adaptive_avg_pool").input.shape == (None, fmap, fmap, 2048)
        assert m.get_layer("theme_fc").output.shape == (None, 256)
        assert m.get_layer("visual_theme").output.shape == (None, 2048 + 256)
        assert m.output.shape == (None, 10)
        assert [t.name for t in m.inputs] == ["image", "valid_size", "theme"]
    m = theme_roi_model(canvas=800, roi_size=146, theme=False, n_bins=7, roi_op="align", backbone=backbone)
    assert [t.name for t in m.inputs] == ["image", "valid_size"]
    assert m.get_layer("roi_align").output.shape == (None, 146, 146, 64)
    assert m.output.shape == (None, 7)
    assert m.get_layer("distribution").input.shape == (None, 2048)
    with pytest.raises(ValueError, match="roi_op"):
        theme_roi_model(roi_op="spp", backbone=backbone)
    with pytest.raises(ValueError, match="canvas"):
        theme_roi_model(canvas=64, backbone=backbone)


def test_deprecated_pooling_keyword_warns_and_maps_to_roi_op(backbone):
    """theme_roi_model(pooling="roi" | "align"), the old name of roi_op, still builds the same
    model and warns."""
    with pytest.warns(DeprecationWarning, match="roi_op"):
        old = theme_roi_model(canvas=None, roi_size=36, theme=False, pooling="roi", backbone=backbone)
    new = theme_roi_model(canvas=None, roi_size=36, theme=False, roi_op="pool", backbone=backbone)
    assert old.name == new.name == "jia_roi36"
    assert "roi_pooling" in [layer.name for layer in old.layers]
    with pytest.warns(DeprecationWarning):
        aligned = theme_roi_model(canvas=None, roi_size=36, theme=False, pooling="align", backbone=backbone)
    assert "roi_align" in [layer.name for layer in aligned.layers]


@FULL_SIZE
def test_batch_norm_frozen(models):
    m = models["plain"]
    bns = [l for l in m.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 94 and not any(l.trainable for l in bns)
    assert freeze_batch_norm(m) == 94
    # non-trainable BN runs in inference mode: training=True gives the same output
    x, s = in_canvas(images(), (160, 160))
    inputs = {"image": x, "valid_size": s, "theme": np.array([1, 2], np.int32)}
    np.testing.assert_allclose(np.asarray(m(inputs, training=True)), np.asarray(m(inputs)), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["masked", "align"])
def test_masked_prediction_equals_image_alone(models, kind):
    alone, padded = alone_and_padded(models[kind], images())
    np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-6)


@FULL_SIZE
def test_unmasked_padding_leaks_and_masking_removes_it(backbone, models, capsys):
    # Plain zero padding leaks through the stem's border convolutions into the ROI's last bins.
    # With the exact box ("valid") of an image at least roi_size feature rows/cols tall, only the
    # last ROI row/col holds padding-dependent values, and Inception's stride-2 valid layers after
    # the ROI drop exactly that row/col, so the leak shows for images smaller than the ROI grid
    # (feature size < roi_size, here < 77 px) and with the paper's eq. 1 box mapping (tau = 2),
    # whose box reaches 2-3 feature rows into the padding.
    paper = theme_roi_model(canvas=None, roi_size=36, box_mapping="paper", backbone=backbone, n_themes=8)
    cases = {"plain, big images": (models["plain"], images(seed=4)),
             "plain, small image": (models["plain"], images(seed=4, sizes=((60, 150), (70, 70)))),
             "plain, eq. 1 boxes": (paper, images(seed=4)),
             "masked, small image": (models["masked"], images(seed=4, sizes=((60, 150), (70, 70)))),
             "masked, big images": (models["masked"], images(seed=4))}
    rel, dist = {}, {}
    for k, (m, imgs) in cases.items():
        both = keras.Model(m.inputs, [m.get_layer("adaptive_avg_pool").output, m.output])
        x, s = in_canvas(imgs, (160, 160))
        padded = both({"image": x, "valid_size": s, "theme": np.array([3, 5], np.int32)})
        alone = [both({"image": xa, "valid_size": sa, "theme": np.array([t], np.int32)})
                 for (xa, sa), t in zip([in_canvas([im], im.shape[:2]) for im in imgs], (3, 5))]
        f_alone = np.concatenate([np.asarray(a[0]) for a in alone])
        rel[k] = float(np.abs(np.asarray(padded[0]) - f_alone).max() / np.abs(f_alone).max())
        dist[k] = float(np.abs(np.asarray(padded[1]) - np.concatenate([np.asarray(a[1]) for a in alone])).max())
    with capsys.disabled():
        print("\n[leak] 160x160 canvas vs own-size canvas, roi 36, randomised weights: relative max "
              "difference of the 2048-d features / max |difference| of the distributions:")
        for k in cases:
            print(f"[leak]   {k:22s} {rel[k]:.3g} / {dist[k]:.3g}")
    assert rel["plain, small image"] > 1e-4  # the paper's plain padding is not neutral ...
    assert rel["plain, eq. 1 boxes"] > 1e-4
    assert rel["plain, big images"] < 1e-5  # (structurally invisible, see above)
    assert rel["masked, small image"] < 1e-5 and rel["masked, big images"] < 1e-5  # ... masking is


def test_padding_values_never_reach_the_roi_when_masked(models):
    imgs = images(seed=5)
    x, s = in_canvas(imgs, (160, 160))
    ref = predict(models["masked"], x, s, [1, 2])
    noisy = x.copy()
    noise = np.random.default_rng(6).uniform(0, 255, x.shape).astype(np.float32)
    for i, (h, w) in enumerate(s):
        keep = np.zeros(x.shape[1:3], bool)
        keep[:h, :w] = True
        noisy[i][~keep] = noise[i][~keep]
    np.testing.assert_allclose(predict(models["masked"], noisy, s, [1, 2]), ref, rtol=1e-5, atol=1e-6)


@FULL_SIZE
def test_theme_changes_prediction_and_unknown_theme_works(models):
    m = models["masked"]
    x, s = in_canvas(images()[:1] * 3, (160, 160))
    p = predict(m, x, s, [0, 3, 99])  # unknown, a theme, out of vocabulary (-> unknown)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert np.abs(p[0] - p[1]).max() > 1e-4
    np.testing.assert_allclose(p[2], p[0], rtol=1e-6)
    # unknown = the bias alone: the same as a head with zero theme features
    head_in = keras.Model(m.inputs, m.get_layer("adaptive_avg_pool").output)(
        {"image": x[:1], "valid_size": s[:1], "theme": np.array([0], np.int32)})
    w, b = m.get_layer("distribution").get_weights()
    z = np.concatenate([np.asarray(head_in), m.get_layer("theme_fc").get_weights()[1][None]], 1) @ w + b
    np.testing.assert_allclose(p[0], np.exp(z[0]) / np.exp(z[0]).sum(), rtol=1e-4)


def test_save_reload_keras(models, tmp_path):
    m = models["masked"]
    path = tmp_path / "theme_roi.keras"
    m.save(path)
    reloaded = keras.models.load_model(path)
    x, s = in_canvas(images(), (160, 160))
    np.testing.assert_allclose(predict(reloaded, x, s, [1, 7]), predict(m, x, s, [1, 7]), rtol=1e-6, atol=1e-7)


def test_feature_normalization_identity_until_set_then_standardises(backbone, tmp_path):
    """feature_normalization=True: a FeatureStandardization between the pooled features and the
    output layer, the identity until adapt_head_input sets it from training features; saved with
    the model."""
    from ku.models.heads import adapt_head_input

    plain = theme_roi_model(canvas=None, roi_size=36, backbone=backbone, n_themes=8, name="plain")
    normed = theme_roi_model(canvas=None, roi_size=36, backbone=backbone, n_themes=8, name="normed",
                             feature_normalization=True)
    for name in ("theme_fc", "distribution"):
        normed.get_layer(name).set_weights(plain.get_layer(name).get_weights())
    x, s = in_canvas(images(), (160, 160))
    np.testing.assert_allclose(predict(normed, x, s, [1, 7]), predict(plain, x, s, [1, 7]), rtol=1e-6, atol=1e-7)
    pooled = keras.Model(normed.inputs, normed.get_layer("adaptive_avg_pool").output)
    inputs = {"image": x, "valid_size": s, "theme": np.array([1, 7], np.int32)}
    feats = np.asarray(pooled(inputs))
    adapt_head_input(normed, feats)
    z = np.asarray(keras.Model(normed.inputs, normed.get_layer("feature_norm").output)(inputs))
    sd = feats.std(axis=0)
    varying = sd >= np.median(sd)  # (channels far below the typical spread are damped, not amplified)
    np.testing.assert_allclose(z[:, varying].mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(np.abs(z[:, varying]), 1, rtol=1e-2)  # two rows: +-1 per channel
    path = tmp_path / "normed.keras"
    normed.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(predict(reloaded, x, s, [1, 7]), predict(normed, x, s, [1, 7]), rtol=1e-5, atol=1e-7)
