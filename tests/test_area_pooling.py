"""AreaPooling2D (Hosu 2019 §3.1 wide MLSP pooling) and ImagePreprocessing against references:
OpenCV INTER_AREA, tf.image.resize(method="area"), keras.applications preprocess_input."""
import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from grads import gradient
from ku.layers import AreaPooling2D, ImagePreprocessing, area_weights



def assert_preprocessed(actual, ref):
    """Equal to Keras' numpy ``preprocess_input`` bit for bit on TensorFlow; XLA (JAX) may turn
    ``x / 127.5`` into ``x * (1 / 127.5)``: within float32 rounding of values up to ~3."""
    if keras.backend.backend() == "tensorflow":
        np.testing.assert_array_equal(actual, ref)
    else:
        np.testing.assert_allclose(actual, ref, rtol=1e-6, atol=1e-6)


def cv2_area(x, out_hw):
    """numpy/OpenCV reference: INTER_AREA per image and channel. x: (B, H, W, C) float32."""
    oh, ow = out_hw
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    for b in range(x.shape[0]):
        for c in range(x.shape[3]):
            out[b, :, :, c] = cv2.resize(x[b, :, :, c], (ow, oh), interpolation=cv2.INTER_AREA)
    return out


def assert_close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def rand(shape, seed):
    return (np.random.default_rng(seed).normal(size=shape) * 10 + 3).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Area pooling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(37, 29), (11, 7), (5, 5), (8, 8), (35, 35), (17, 17), (8, 9)])
def test_matches_cv2_inter_area(hw):
    x = rand((2, *hw, 3), seed=hw[0] * 100 + hw[1])
    assert_close(AreaPooling2D((5, 5))(x), cv2_area(x, (5, 5)))


def test_matches_cv2_random_sizes_and_grids():
    rng = np.random.default_rng(1)
    for k in range(12):
        oh, ow = rng.integers(1, 8, size=2)
        h, w = oh + rng.integers(0, 60), ow + rng.integers(0, 60)  # downscaling on both axes
        x = rand((1, h, w, 2), seed=k)
        assert_close(AreaPooling2D((int(oh), int(ow)))(x), cv2_area(x, (oh, ow)))


def test_identity_when_sizes_equal():
    x = rand((2, 5, 5, 4), seed=3)
    np.testing.assert_allclose(np.asarray(AreaPooling2D((5, 5))(x)), x, rtol=1e-6, atol=1e-6)


def test_integer_factor_is_block_mean():
    x = rand((1, 10, 15, 3), seed=4)
    ref = x.reshape(1, 5, 2, 5, 3, 3).mean(axis=(2, 4))
    assert_close(AreaPooling2D((5, 5))(x), ref)


@pytest.mark.parametrize(
    "hw", [(37, 29), (11, 7), (8, 8), (3, 4), (2, 9), (1, 1), (4, 5), (64, 3), (5, 2)]
)
def test_matches_tf_area_including_upscaling(hw):
    # H < 5 or W < 5 (e.g. the last IRNv2 stage of a small image): documented to follow
    # tf.image.resize(method="area"), which is what the released MLSP code computed.
    x = rand((2, *hw, 3), seed=hw[0] * 7 + hw[1])
    ref = tf.image.resize(x, (5, 5), method="area").numpy()
    assert_close(AreaPooling2D((5, 5))(x), ref)


def test_area_weights_rows_sum_to_one_and_overlap():
    w = np.asarray(area_weights(7, 3))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    # cell 0 covers [0, 7/3): pixels 0, 1 fully, pixel 2 by 1/3; divided by 7/3
    np.testing.assert_allclose(w[0], np.array([3, 3, 1, 0, 0, 0, 0]) / 7, rtol=1e-6)


@pytest.mark.tensorflow_only("tf.function with a (None, None, None, 3) signature")
def test_dynamic_spatial_dims_in_tf_function():
    layer = AreaPooling2D((5, 5))
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    for hw in [(37, 29), (11, 7), (64, 48)]:
        x = rand((1, *hw, 3), seed=hw[0])
        assert_close(fn(x), cv2_area(x, (5, 5)))
    assert fn.experimental_get_tracing_count() == 1  # one trace for all sizes


def test_channels_first_equals_channels_last():
    x = rand((2, 13, 9, 3), seed=5)
    y_last = np.asarray(AreaPooling2D((5, 4))(x))
    y_first = np.asarray(AreaPooling2D((5, 4), data_format="channels_first")(x.transpose(0, 3, 1, 2)))
    assert_close(y_first.transpose(0, 2, 3, 1), y_last)


def test_gradient_is_transposed_weights():
    g = gradient(lambda x: keras.ops.sum(AreaPooling2D((3, 4))(x)), rand((1, 7, 6, 1), seed=6))[0, :, :, 0]
    wh, ww = np.asarray(area_weights(7, 3)), np.asarray(area_weights(6, 4))
    np.testing.assert_allclose(g, np.outer(wh.sum(0), ww.sum(0)), rtol=1e-6)


def test_output_shape_and_bad_args():
    inp = keras.Input((None, None, 6))
    assert AreaPooling2D((5, 3))(inp).shape == (None, 5, 3, 6)
    assert AreaPooling2D(4).output_size == (4, 4)
    with pytest.raises(ValueError, match="output_size"):
        AreaPooling2D((0, 5))
    with pytest.raises(ValueError, match="data_format"):
        AreaPooling2D(data_format="nhwc")


def test_save_reload_keras(tmp_path):
    inp = keras.Input((None, None, 4))
    model = keras.Model(inp, AreaPooling2D((5, 5), name="pool")(inp))
    path = tmp_path / "area.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_layer("pool").get_config()["output_size"] == [5, 5]
    for hw in [(23, 17), (5, 9)]:
        x = rand((2, *hw, 4), seed=hw[0])
        np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


@pytest.mark.tensorflow_only("SavedModel export")
def test_saved_model_export_dynamic(tmp_path):
    inp = keras.Input((None, None, 2))
    model = keras.Model(inp, AreaPooling2D((5, 5))(inp))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    for hw in [(31, 12), (6, 40)]:
        x = rand((1, *hw, 2), seed=hw[1])
        assert_close(loaded.serve(x), cv2_area(x, (5, 5)))


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, module",
    [
        ("tf", keras.applications.inception_resnet_v2),
        ("tf", keras.applications.inception_v3),
        ("caffe", keras.applications.resnet),
        ("caffe", keras.applications.vgg16),
        ("torch", keras.applications.densenet),
    ],
)
def test_preprocessing_equals_keras_preprocess_input(mode, module):
    x = np.random.default_rng(7).uniform(0, 255, size=(2, 9, 7, 3)).astype(np.float32)
    ref = module.preprocess_input(x.copy())
    assert_preprocessed(np.asarray(ImagePreprocessing(mode)(x)), ref)


def test_preprocessing_uint8_input_and_bad_mode():
    x = np.random.default_rng(8).integers(0, 256, size=(1, 4, 5, 3), dtype=np.uint8)
    ref = keras.applications.inception_v3.preprocess_input(x.astype(np.float32))
    assert_preprocessed(np.asarray(ImagePreprocessing("tf")(x)), ref)
    with pytest.raises(ValueError, match="mode"):
        ImagePreprocessing("imagenet")


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_preprocessing_save_reload(tmp_path, mode):
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, ImagePreprocessing(mode, name="pre")(inp))
    path = tmp_path / f"pre_{mode}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_layer("pre").mode == mode
    x = np.random.default_rng(9).uniform(0, 255, size=(2, 6, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("n,m", [(17, 5), (5, 5), (3, 5), (1, 5), (1000, 7), (71, 5)])
@pytest.mark.tensorflow_only("the dynamic-size path takes a tf.constant size")
def test_static_size_weights_equal_dynamic_ones_bit_for_bit(n, m):
    """A Python-int size takes the numpy path (needed under jax.jit, where a traced arange fails);
    it must give the same float32 weights as the tensor path used for dynamic sizes."""
    import tensorflow as tf

    static = np.asarray(area_weights(n, m))
    dynamic = np.asarray(area_weights(tf.constant(n), m))
    assert static.dtype == np.float32 and static.shape == (m, n)
    np.testing.assert_array_equal(static, dynamic)
    np.testing.assert_allclose(static.sum(axis=1), 1.0, rtol=1e-6)
