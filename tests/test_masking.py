"""Exact padding masking (ku.models.masking): padded canvas == image alone, for real backbones."""
import numpy as np
import pytest
import keras

from ku.backbones import build_backbone
from ku.layers import MapValidSize, MaskAwareAveragePooling2D, ValidRegionMask
from ku.models.masking import masked_model, valid_output_sizes

CASES = {
    # backbone: (image sizes (h, w), canvas (H, W))
    "resnet50": ([(45, 61), (64, 40), (33, 33)], (70, 72)),
    "vgg16": ([(40, 52), (33, 47)], (56, 60)),
    "inception_v3": ([(75, 90), (88, 77), (101, 80)], (104, 96)),
    "inception_resnet_v2": ([(76, 83), (90, 78)], (96, 92)),
}


def _randomize(model, seed):
    """Random biases and batch-norm statistics, so that zero padding really leaks."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for var, lo_hi in [(layer.gamma, (0.5, 1.5)), (layer.moving_variance, (0.5, 2.0))]:
                if var is not None:
                    var.assign(rng.uniform(*lo_hi, var.shape).astype("float32"))
            for var in (layer.beta, layer.moving_mean):
                if var is not None:
                    var.assign(rng.normal(0, 0.5, var.shape).astype("float32"))
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            k, b = layer.get_weights()
            layer.set_weights([k, rng.normal(0, 0.1, b.shape).astype("float32")])
    return model


LARGE = pytest.mark.backend_independent(
    "the Inception backbones' masked layers are the types that ResNet-50 and VGG16 check on every "
    "backend (test_padded_equals_alone[resnet50], [vgg16]; mask-aware average pooling below)")


@pytest.fixture(scope="module", params=[pytest.param(n, marks=LARGE) if n.startswith("inception") else n
                                        for n in sorted(CASES)])
def case(request):
    name = request.param
    model = _randomize(build_backbone(name, weights=None), seed=1)
    sizes, canvas = CASES[name]
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (h, w, 3)).astype("float32") for h, w in sizes]
    batch = np.zeros((len(sizes),) + canvas + (3,), "float32")
    for b, im in enumerate(images):
        batch[b, : im.shape[0], : im.shape[1]] = im
    alone = [model.predict(im[None], verbose=0)[0] for im in images]
    return dict(name=name, model=model, masked=masked_model(model), images=images, batch=batch,
                sizes=np.array(sizes, "int32"), alone=alone)


def _max_rel(a, b):
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


def test_padded_equals_alone(case):
    feats, out_sizes = case["masked"].predict([case["batch"], case["sizes"]], verbose=0)
    for b, ref in enumerate(case["alone"]):
        h, w = out_sizes[b]
        assert (h, w) == ref.shape[:2], case["name"]
        np.testing.assert_allclose(feats[b, :h, :w], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        assert np.all(feats[b, h:] == 0) and np.all(feats[b, :, w:] == 0)
    np.testing.assert_array_equal(valid_output_sizes(case["model"], case["sizes"]), out_sizes)


def test_without_masking_padding_leaks(case):
    """The reason masking exists: the plain model on the canvas differs inside the valid region."""
    plain = case["model"].predict(case["batch"], verbose=0)
    rel = max(_max_rel(plain[b, : r.shape[0], : r.shape[1]], r) for b, r in enumerate(case["alone"]))
    print(f"\n{case['name']}: largest relative difference without masking = {rel:.3f}")
    assert rel > 1e-3


def test_values_outside_the_image_are_ignored(case):
    noisy = case["batch"].copy()
    rng = np.random.default_rng(5)
    for b, (h, w) in enumerate(case["sizes"]):
        region = np.ones(noisy.shape[1:3], bool)
        region[:h, :w] = False
        noisy[b][region] = rng.uniform(0, 255, (region.sum(), 3))
    a = case["masked"].predict([case["batch"], case["sizes"]], verbose=0)[0]
    b = case["masked"].predict([noisy, case["sizes"]], verbose=0)[0]
    np.testing.assert_array_equal(a, b)


def test_weights_are_shared(case):
    assert {id(v) for v in case["masked"].weights} <= {id(v) for v in case["model"].weights}


def test_intermediate_outputs_and_save_reload(tmp_path):
    model = _randomize(build_backbone("resnet50", weights=None), seed=3)
    m = masked_model(model, outputs=["conv1_relu", "conv2_block1_out"])
    assert len(m.outputs) == 4
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (2, 50, 64, 3)).astype("float32")
    s = np.array([[50, 40], [37, 64]], "int32")
    got = m.predict([x, s], verbose=0)
    np.testing.assert_array_equal(got[1], valid_output_sizes(model, s, output="conv1_relu"))
    np.testing.assert_array_equal(got[3], valid_output_sizes(model, s, output="conv2_block1_out"))
    path = tmp_path / "masked.keras"
    m.save(path)
    r = keras.models.load_model(path)
    for u, v in zip(got, r.predict([x, s], verbose=0)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


def test_map_valid_size_formulas():
    sizes = np.array([[1, 2], [7, 8], [75, 101]])
    for kw in [dict(kernel_size=3, strides=2), dict(kernel_size=(7, 1), strides=1, padding="same"),
               dict(kernel_size=3, strides=2, padding="same"), dict(pads=((3, 3), (1, 2))),
               dict(kernel_size=3, dilation_rate=2)]:
        layer = MapValidSize(**kw)
        np.testing.assert_array_equal(np.asarray(layer(sizes.astype("int32"))), layer.map_numpy(sizes))
    # reference: a 'valid' 3x3 stride-2 convolution's output size on a (n, n) image
    np.testing.assert_array_equal(MapValidSize(3, 2).map_numpy([[75, 8]]), [[37, 3]])
    np.testing.assert_array_equal(MapValidSize(3, 2, padding="same").map_numpy([[75, 8]]), [[38, 4]])
    np.testing.assert_array_equal(MapValidSize(pads=((3, 3), (0, 1))).map_numpy([[5, 5]]), [[11, 6]])


def test_mask_aware_average_pooling_equals_unpadded():
    rng = np.random.default_rng(2)
    img = rng.normal(size=(1, 9, 7, 4)).astype("float32")
    canvas = np.zeros((1, 13, 12, 4), "float32")
    canvas[:, :9, :7] = img
    ref = keras.layers.AveragePooling2D(3, 1, padding="same")(img)
    got = MaskAwareAveragePooling2D(3, 1)([canvas, np.array([[9, 7]], "int32")])
    np.testing.assert_allclose(np.asarray(got)[:, :9, :7], np.asarray(ref), rtol=1e-6, atol=1e-6)
    m = ValidRegionMask()([canvas + 1, np.array([[9, 7]], "int32")])
    assert np.all(np.asarray(m)[:, 9:] == 0) and np.all(np.asarray(m)[:, :9, :7] == canvas[:, :9, :7] + 1)


def test_inexact_layers_raise():
    inp = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="bad_conv")(inp)
    with pytest.raises(ValueError, match="bad_conv"):
        masked_model(keras.Model(inp, out))
    masked_model(keras.Model(inp, out), exact=False)  # accepted when asked
    out2 = keras.layers.UpSampling2D(name="up")(inp)
    with pytest.raises(ValueError, match="UpSampling2D"):
        masked_model(keras.Model(inp, out2))
    with pytest.raises(ValueError, match="no layer 'nope'"):
        masked_model(keras.Model(inp, out), outputs=["nope"])


def test_mask_aware_pooling_model_saves_and_reloads(tmp_path):
    """A masked model with 'same' average pooling (MaskAwareAveragePooling2D) round-trips .keras."""
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c")(inp)
    x = keras.layers.AveragePooling2D(3, 1, padding="same", name="avg")(x)
    m = masked_model(keras.Model(inp, x))
    assert any(isinstance(l, MaskAwareAveragePooling2D) for l in m.layers)
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (2, 20, 24, 3)).astype("float32")
    s = np.array([[20, 17], [13, 24]], "int32")
    got = m.predict([x, s], verbose=0)
    m.save(tmp_path / "mask_aware.keras")
    r = keras.models.load_model(tmp_path / "mask_aware.keras")
    layer = next(l for l in r.layers if isinstance(l, MaskAwareAveragePooling2D))
    assert layer.pool_size == (3, 3) and layer.strides == (1, 1)
    for u, v in zip(got, r.predict([x, s], verbose=0)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)
