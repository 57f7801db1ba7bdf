"""ku.models.mlsp: MLSP extractors (Hosu 2019 §3.1), end-to-end and fine-tuning models (§4.1)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ku.backbones import mlsp_tap_names
from ku.models.mlsp import (
    finetune_model,
    mlsp_end_to_end,
    mlsp_extractor,
    predict_tta,
    rescaled_crop_augment,
)
from test_area_pooling import cv2_area  # numpy/OpenCV INTER_AREA reference
from test_backbones import cached_backbone  # one backbone per name and session

SUMS = {"inception_resnet_v2": 16928, "inception_v3": 10048}


IRNV2 = pytest.mark.backend_independent(
    "Inception-ResNet-v2's 43 taps at more image sizes; on every backend the MLSP layers run in "
    "test_area_pooling (maps smaller than 5x5 included) and the whole extractor on Inception-v3 here")


class _Built(dict):
    """Builds a value on first use (a backbone not asked for on a pass is never built)."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, key):
        self[key] = value = self._make(key)
        return value


@pytest.fixture(scope="session")
def backbones():
    return _Built(cached_backbone)


@pytest.fixture(scope="session")
def extractors(backbones):
    return _Built(lambda key: mlsp_extractor(key[0], features=key[1], backbone_model=backbones[key[0]]))


@pytest.fixture(scope="session")
def tap_models(backbones):
    """Reference: the raw tapped activations via keras.Model(outputs=[taps])."""
    return _Built(lambda name: keras.Model(backbones[name].input, [backbones[name].get_layer(n).output
                                                                   for n in mlsp_tap_names(name, backbones[name])]))


def run(model, x):
    """Eager forward pass (predict() would retrace its tf.function for every new image size)."""
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def image(h, w, b=1, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(b, h, w, 3)).astype(np.float32)


def assert_close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1e-3, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


NAMES = [pytest.param("inception_resnet_v2", marks=IRNV2), "inception_v3"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(75, 75), (160, 130)])
def test_output_shapes(extractors, name, hw):
    x = image(*hw, b=2)
    narrow = run(extractors[(name, "narrow")], x)
    wide = run(extractors[(name, "wide")], x)
    assert narrow.shape == (2, SUMS[name])
    assert wide.shape == (2, 5, 5, SUMS[name])
    assert np.isfinite(narrow).all() and np.isfinite(wide).all()


@pytest.mark.parametrize("name", NAMES)
def test_narrow_is_gap_of_taps(extractors, tap_models, name):
    x = image(97, 121, b=2, seed=1)
    taps = run(tap_models[name], x)
    ref = np.concatenate([t.mean(axis=(1, 2), dtype=np.float64) for t in taps], axis=-1)
    assert_close(run(extractors[(name, "narrow")], x), ref)


@pytest.mark.parametrize("name, hw", [pytest.param("inception_resnet_v2", (230, 210), marks=IRNV2),
                                      ("inception_v3", (235, 221))])
def test_wide_is_cv2_inter_area_of_taps(extractors, tap_models, name, hw):
    x = image(*hw, seed=2)
    taps = run(tap_models[name], x)
    assert min(min(t.shape[1:3]) for t in taps) >= 5  # every tap is downscaled: cv2 applies
    ref = np.concatenate([cv2_area(t, (5, 5)) for t in taps], axis=-1)
    assert_close(run(extractors[(name, "wide")], x), ref)


@IRNV2
def test_wide_small_image_follows_tf_area(extractors, tap_models):
    # 75 px: the last IRNv2 stage is 1x1 (< 5): documented tf.image.resize(area) semantics.
    x = image(75, 75, seed=3)
    taps = run(tap_models["inception_resnet_v2"], x)
    ref = np.concatenate([tf.image.resize(t, (5, 5), method="area").numpy() for t in taps], -1)
    assert_close(run(extractors[("inception_resnet_v2", "wide")], x), ref)


def test_blocks_subset(backbones, extractors):
    # Table 2 "Single-1FC (5)": only the last 5 Inception-v3 blocks.
    sub = mlsp_extractor("inception_v3", features="narrow", backbone_model=backbones["inception_v3"],
                         blocks=range(6, 11))
    x = image(80, 80, seed=4)
    full = run(extractors[("inception_v3", "narrow")], x)
    part = run(sub, x)
    assert part.shape == (1, 768 * 2 + 1280 + 2048 * 2)
    np.testing.assert_array_equal(part, full[:, -part.shape[1]:])
    with pytest.raises(ValueError, match="blocks"):
        mlsp_extractor("inception_v3", backbone_model=backbones["inception_v3"], blocks=[11])
    with pytest.raises(ValueError, match="features"):
        mlsp_extractor("inception_v3", backbone_model=backbones["inception_v3"], features="medium")


def test_deprecated_pooling_keyword_warns_and_means_features(backbones, extractors):
    """mlsp_extractor(pooling=...), the old name of features=, builds the same extractor."""
    with pytest.warns(DeprecationWarning, match="features="):
        old = mlsp_extractor("inception_v3", pooling="narrow", backbone_model=backbones["inception_v3"])
    assert old.name == "mlsp_narrow_inception_v3"
    x = image(80, 80, seed=4)
    np.testing.assert_array_equal(run(old, x), run(extractors[("inception_v3", "narrow")], x))


def _dense_head(shape, seed):
    inp = keras.Input(shape)
    x = inp if len(shape) == 1 else keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(seed=seed))(x)
    return keras.Model(inp, out, name="tiny_head")


@pytest.mark.parametrize("name, features", [("inception_v3", "narrow"),
                                             pytest.param("inception_resnet_v2", "wide", marks=IRNV2)])
def test_end_to_end_equals_two_stage(extractors, name, features):
    extractor = extractors[(name, features)]
    head = _dense_head(tuple(extractor.output.shape[1:]), seed=5)
    model = mlsp_end_to_end(extractor, head)
    x = image(111, 93, seed=6)
    two_stage = run(head, run(extractor, x))
    assert_close(run(model, x), two_stage)
    assert model.output.shape == (None, 1)


def test_end_to_end_shape_mismatch(extractors):
    head = _dense_head((16928,), seed=0)  # Inception-ResNet-v2's width on Inception-v3's 10,048
    with pytest.raises(ValueError, match="expects features"):
        mlsp_end_to_end(extractors[("inception_v3", "narrow")], head)


def test_saved_extractor_same_output(extractors, tmp_path):
    extractor = extractors[("inception_v3", "wide")]
    path = tmp_path / "iv3_wide.keras"
    extractor.save(path)
    reloaded = keras.models.load_model(path)
    for hw in [(76, 90), (130, 101)]:
        x = image(*hw, seed=hw[0])
        assert_close(run(reloaded, x), run(extractor, x), rtol=1e-6)


@pytest.mark.tensorflow_only("gradients of the weights by tf.GradientTape")
def test_finetune_model_gradients_reach_backbone(backbones):
    model = finetune_model(
        "inception_v3",
        lambda shape: _dense_head(shape, seed=7),
        features="narrow",
        backbone_model=backbones["inception_v3"],
    )
    assert all(layer.trainable for layer in model.layers)
    n_trainable = len(model.trainable_weights)
    assert n_trainable > 100
    x = tf.constant(image(80, 80, b=2, seed=8))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=False)))  # no BN-statistics update
    grads = tape.gradient(loss, model.trainable_weights)
    first_conv = backbones["inception_v3"].layers[2]
    assert isinstance(first_conv, keras.layers.Conv2D)
    g = grads[[id(w) for w in model.trainable_weights].index(id(first_conv.kernel))]
    assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0
    with pytest.raises(TypeError, match="keras.Model"):
        finetune_model("inception_v3", lambda shape: None, backbone_model=backbones["inception_v3"])


def test_rescaled_crop_augment():
    img = np.random.default_rng(9).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    big = tf.image.resize(tf.cast(img, tf.float32), (32, 32), antialias=True).numpy()
    centre = rescaled_crop_augment(img, training=False, size=24, rescale=32).numpy()
    np.testing.assert_array_equal(centre, big[4:28, 4:28])
    a = rescaled_crop_augment(img, True, size=24, rescale=32, seed=tf.constant([1, 2])).numpy()
    b = rescaled_crop_augment(img, True, size=24, rescale=32, seed=tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(a, b)  # stateless = reproducible
    # every training crop is a (possibly mirrored) window of the rescaled image
    for s in range(6):
        c = rescaled_crop_augment(img, True, size=24, rescale=32, seed=tf.constant([s, 0])).numpy()
        windows = [big[y:y + 24, x:x + 24] for y in range(9) for x in range(9)]
        assert any(np.array_equal(c, w) or np.array_equal(c, w[:, ::-1]) for w in windows)
    ds = tf.data.Dataset.from_tensors(img).repeat(3)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=0).batch(2)))
    ds = ds.map(lambda im, sd: rescaled_crop_augment(im, True, size=24, rescale=32, seed=sd))
    assert [t.shape for t in ds] == [(24, 24, 3)] * 3


def test_predict_tta_matches_numpy_reference():
    size, rescale, n, seed = 8, 12, 5, 3
    inp = keras.Input((size, size, 3))
    out = keras.layers.Dense(1, kernel_initializer="ones")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    weights = np.random.default_rng(0).normal(size=(size * size * 3, 1)).astype(np.float32)
    model.layers[-1].kernel.assign(weights)
    images = [image(20, 17, seed=10)[0], image(12, 30, seed=11)[0]]
    got = predict_tta(model, images, n=n, seed=seed, size=size, rescale=rescale)
    rng = np.random.default_rng(seed)
    ref = []
    for im in images:
        big = tf.image.resize(im, (rescale, rescale), antialias=True).numpy()
        oy, ox = rng.integers(0, 5, size=n), rng.integers(0, 5, size=n)
        flip = rng.random(n) < 0.5
        preds = []
        for y, x, f in zip(oy, ox, flip):
            crop = big[y:y + size, x:x + size]
            crop = crop[:, ::-1] if f else crop
            preds.append(crop.reshape(-1) @ weights[:, 0])
        ref.append([np.mean(preds)])
    assert got.shape == (2, 1)
    np.testing.assert_allclose(got, np.array(ref), rtol=1e-4)
    np.testing.assert_array_equal(got, predict_tta(model, images, n=n, seed=seed, size=size,
                                                   rescale=rescale))
