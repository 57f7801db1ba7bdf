"""Aspect-ratio buckets vs one fixed canvas: with exact padding masking the
predictions are the same (float32 precision) for the SPP model of Murray & Gordo 2017 (§3.2, APM)
and the ROI model of Jia et al. 2019 (§III-A); without masking they move (printed).

Real demo images through the tf.data pipeline (``aspect_batches``) at a small size (shorter side
48 px, longer side up to ~85 px), small randomised networks (weights=None with random batch-norm
statistics and biases, so that padding really leaks when it is not masked).
"""
import keras
import numpy as np
import pytest

from ku.data import aspect_batches as ab

SIDE = 48      # shorter side of every image
BATCH = 4


def _randomize(model, seed):
    """Random batch-norm statistics/affine and conv biases (nested models too)."""
    rng = np.random.default_rng(seed)

    def walk(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                ws = layer.get_weights()
                n = ws[-1].shape
                layer.set_weights(([rng.uniform(0.5, 1.5, n)] if layer.scale else [])
                                  + ([rng.normal(0, 0.3, n)] if layer.center else [])
                                  + [rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
            elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
                k, b = layer.get_weights()
                layer.set_weights([k, rng.normal(0, 0.1, b.shape).astype("float32")])

    walk(model)
    return model


@pytest.fixture(scope="module")
def ids():
    """10 demo images, both orientations (the sizes differ in aspect and area)."""
    from ku.data.demo import load_demo

    table = load_demo()
    sizes, _ = ab.image_sizes(table["image_path"].tolist())
    portrait = np.flatnonzero(sizes[:, 0] > sizes[:, 1])[:4]
    landscape = np.flatnonzero(sizes[:, 0] < sizes[:, 1])[:6]
    return table.iloc[np.concatenate([landscape, portrait])].reset_index(drop=True)


@pytest.fixture(scope="module")
def pipelines(ids):
    bucketed = ab.aspect_batches(ids, BATCH, shorter_side=SIDE, shuffle=True, seed=3, prefetch=0,
                               bucket_batches=1)
    fixed = ab.aspect_batches(ids, BATCH, shorter_side=SIDE, canvas="max", prefetch=0)
    assert not bucketed.failed and len(bucketed.ids) == len(ids)
    assert (bucketed.sizes[:, 0] > bucketed.sizes[:, 1]).any()  # portrait images are in
    return bucketed, fixed


def predict_rows(fn, res):
    """Run ``fn(images, sizes, rows)`` on one epoch of ``res``; outputs in ids-table row order."""
    out = {}
    for (images, sizes), rows in zip(res.dataset.take(res.steps_per_epoch), res.batches):
        y = np.asarray(fn(images.numpy(), sizes.numpy(), rows))
        out.update(zip(rows.tolist(), y))
    return np.stack([out[i] for i in range(len(res.ids))])


def _max_rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def apm_models():
    from ku.models import apm

    masked = _randomize(apm.apm_model("resnet50", None, fc_units=16), seed=0)
    plain = apm.apm_model("resnet50", None, fc_units=16, masked=False)
    assert apm.copy_backbone_weights(masked, plain) > 100
    for name in ("apm_fc1", "apm_fc2"):
        plain.get_layer(name).set_weights(masked.get_layer(name).get_weights())
    return masked, plain


def test_pipelines_hold_the_same_images(pipelines):
    bucketed, fixed = pipelines
    side = int(bucketed.sizes.max())
    assert side > SIDE and fixed.padding_ratio > 1.15 * bucketed.padding_ratio
    print(f"\npadded / image pixels: buckets {bucketed.padding_ratio:.3f}, "
          f"fixed {side}x{side} canvas {fixed.padding_ratio:.3f}")
    for (xa, sa), (xb, sb), ra, rb in zip(bucketed.dataset, fixed.dataset, bucketed.batches, fixed.batches):
        assert xb.shape[1:3] == (side, side) and xa.shape[1] * xa.shape[2] < side * side
        np.testing.assert_array_equal(sa, bucketed.sizes[ra])
        np.testing.assert_array_equal(sb, fixed.sizes[rb])


def test_apm_masked_buckets_equal_fixed_canvas(apm_models, pipelines):
    """Murray & Gordo 2017 §3.2: SPP over each image's valid region + exact masking -> the
    bucketed batches give the fixed canvas's predictions (and SPP vectors)."""
    from ku.models.apm import spp_features_model

    masked, _ = apm_models
    bucketed, fixed = pipelines
    for model in (masked, spp_features_model(masked)):
        fn = lambda x, s, rows: model([x, s], training=False)  # noqa: E731
        a, b = predict_rows(fn, bucketed), predict_rows(fn, fixed)
        assert np.abs(b).max() > 0 and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_apm_unmasked_outputs_move(apm_models, pipelines):
    """Without masking, the padding leaks (biases, batch norm, border convolutions): report."""
    masked, plain = apm_models
    bucketed, fixed = pipelines
    fn = lambda x, s, rows: plain([x, s], training=False)  # noqa: E731
    a, b = predict_rows(fn, bucketed), predict_rows(fn, fixed)
    ref = predict_rows(lambda x, s, rows: masked([x, s], training=False), bucketed)
    moved, off = _max_rel(a, b), _max_rel(b, ref)
    print(f"\nAPM (ResNet-50, random BN) without masking: buckets vs fixed canvas max relative "
          f"difference {moved:.3g}; fixed canvas vs exact (masked) {off:.3g}")
    assert moved > 1e-3 and off > 1e-3


@pytest.fixture(scope="module")
def theme_backbone():
    pytest.importorskip("ku.models.theme_roi")
    from ku.backbones import build_backbone

    return _randomize(build_backbone("inception_v3", weights=None), seed=1)


def _theme_model(backbone, masked, box_mapping="valid"):
    from ku.models.theme_roi import theme_roi_model

    m = theme_roi_model(canvas=None, roi_size=36, masked=masked, box_mapping=box_mapping,
                        backbone=backbone, n_themes=8)
    for name in ("theme_fc", "distribution"):  # the same random heads in every model
        rng = np.random.default_rng(2)
        layer = m.get_layer(name)
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    # also the visual features before the head (the softmax output saturates with random heads)
    return m, keras.Model(m.inputs, m.get_layer("adaptive_avg_pool").output)


def _theme_predictions(model, pipelines):
    bucketed, fixed = pipelines
    themes = np.random.default_rng(0).integers(0, 8, len(bucketed.ids)).astype(np.int32)
    fn = lambda x, s, rows: model({"image": x, "valid_size": s, "theme": themes[rows]})  # noqa: E731
    return predict_rows(fn, bucketed), predict_rows(fn, fixed)


def test_theme_roi_masked_buckets_equal_fixed_canvas(theme_backbone, pipelines):
    """Jia et al. 2019 §III-A: ROI pooling over each image's box after an exactly masked stem ->
    the bucketed batches give the predictions (and features) of one fixed canvas."""
    for model in _theme_model(theme_backbone, True):
        a, b = _theme_predictions(model, pipelines)
        assert np.isfinite(a).all() and np.abs(b).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_theme_roi_unmasked_outputs_move(theme_backbone, pipelines):
    """The paper's plain zero padding: report how much outputs move between buckets and the
    fixed canvas. Only the stem (3 convolutions) sees the padding; the outputs move only for
    images that touch their bucket's canvas edge (there the last 'same' convolution reads true
    zero padding instead of padding-derived activations) -- a small effect, unlike APM's."""
    moved = {}
    for mapping in ("valid", "paper"):
        for what, model in zip(("output", "features"), _theme_model(theme_backbone, False, mapping)):
            moved[mapping, what] = _max_rel(*_theme_predictions(model, pipelines))
    print("\ntheme-ROI (Inception-v3 stem, random BN) without masking, buckets vs fixed canvas, max "
          "relative difference: " + ", ".join(f"{m} boxes {w} {v:.2g}" for (m, w), v in moved.items()))
    assert moved["valid", "features"] > 1e-6 and moved["paper", "features"] > 1e-5
