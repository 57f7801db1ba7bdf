"""SpatialPyramidPooling (Murray & Gordo 2017 §3.2) against a plain numpy reference written from
the definition: floor/ceil adaptive bins over each image's valid region, max or average."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from grads import gradient
from ku.layers import SpatialPyramidPooling, spp_bin_bounds


def ref_spp(x, sizes, levels, mode, l2=True, eps=1e-12):
    """numpy reference: loops over images, levels, cells and channels; float64."""
    x = np.asarray(x, np.float64)
    out = []
    for b in range(x.shape[0]):
        h, w = (x.shape[1], x.shape[2]) if sizes is None else sizes[b]
        vec = []
        for level in levels:
            for i in range(level):
                r0, r1 = math.floor(i * h / level), math.ceil((i + 1) * h / level)
                for j in range(level):
                    c0, c1 = math.floor(j * w / level), math.ceil((j + 1) * w / level)
                    cell = x[b, r0:r1, c0:c1, :]
                    assert cell.size > 0
                    for c in range(x.shape[3]):
                        vec.append(cell[..., c].max() if mode == "max" else cell[..., c].mean())
        vec = np.array(vec)
        if l2:
            vec = vec / math.sqrt(max((vec ** 2).sum(), eps))
        out.append(vec)
    return np.stack(out)


def rand(shape, seed):
    return (np.random.default_rng(seed).normal(size=shape) * 3 + 1).astype(np.float32)


def padded_batch(sizes, channels, seed, fill="random"):
    """Canvas (B, Hmax+extra, Wmax+extra, C): each image's valid values at the top-left, junk elsewhere."""
    rng = np.random.default_rng(seed)
    H = max(s[0] for s in sizes) + 2
    W = max(s[1] for s in sizes) + 1
    x = (rng.normal(size=(len(sizes), H, W, channels)) * 3).astype(np.float32)
    if fill == "huge":
        x[:] = 1e6
    valid = [rand((h, w, channels), seed + 1 + k) for k, (h, w) in enumerate(sizes)]
    for k, ((h, w), v) in enumerate(zip(sizes, valid)):
        x[k, :h, :w] = v
    return x, valid


@pytest.mark.parametrize("n, level, expected", [
    (7, 3, [(0, 3), (2, 5), (4, 7)]),
    (6, 3, [(0, 2), (2, 4), (4, 6)]),
    (2, 3, [(0, 1), (0, 2), (1, 2)]),
    (1, 3, [(0, 1), (0, 1), (0, 1)]),
    (5, 1, [(0, 5)]),
    (10, 4, [(0, 3), (2, 5), (5, 8), (7, 10)]),
])
def test_bin_bounds_floor_ceil(n, level, expected):
    start, end = spp_bin_bounds(np.array([n]), level)
    assert list(zip(np.asarray(start)[0].tolist(), np.asarray(end)[0].tolist())) == expected


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("levels", [(3,), (1, 2, 3), (2, 4)])
def test_matches_numpy_reference_random_sizes(mode, levels):
    rng = np.random.default_rng(sum(levels) + (mode == "max"))
    # include maps smaller than the grid (1, 2) and odd sizes
    sizes = [(1, 1), (2, 5), (3, 3), (7, 2), (11, 13), (int(rng.integers(1, 16)), int(rng.integers(1, 16)))]
    x, valid = padded_batch(sizes, channels=4, seed=3)
    layer = SpatialPyramidPooling(levels, mode=mode)
    got = np.asarray(layer([x, np.array(sizes, np.int32)]))
    ref = ref_spp(x, sizes, levels, mode)
    assert got.shape == (len(sizes), 4 * sum(l * l for l in levels))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # each image alone, unpadded, without sizes: identical numbers
    for k, v in enumerate(valid):
        alone = np.asarray(layer(v[None]))
        np.testing.assert_allclose(alone[0], got[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["max", "average"])
def test_values_outside_valid_region_do_not_matter(mode):
    sizes = [(3, 4), (6, 2), (1, 7)]
    x1, _ = padded_batch(sizes, channels=5, seed=10)
    x2 = x1.copy()
    rng = np.random.default_rng(11)
    for k, (h, w) in enumerate(sizes):
        junk = rng.normal(size=x2[k].shape).astype(np.float32) * 1e4
        keep = np.zeros(x2[k].shape[:2], bool)
        keep[:h, :w] = True
        x2[k] = np.where(keep[..., None], x2[k], junk)
    x3 = x1.copy()
    for k, (h, w) in enumerate(sizes):  # inf / nan in the padding
        x3[k, h:, :] = np.inf
        x3[k, :, w:] = np.nan
    layer = SpatialPyramidPooling((1, 2, 3), mode=mode, l2_normalize=False)
    s = np.array(sizes, np.int32)
    y1 = np.asarray(layer([x1, s]))
    np.testing.assert_array_equal(np.asarray(layer([x2, s])), y1)
    np.testing.assert_array_equal(np.asarray(layer([x3, s])), y1)


def test_l2_norm_is_one_and_zero_stays_zero():
    x, _ = padded_batch([(4, 4), (2, 9)], channels=8, seed=20)
    y = np.asarray(SpatialPyramidPooling((1, 3))([x, np.array([[4, 4], [2, 9]], np.int32)]))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-6)
    z = np.asarray(SpatialPyramidPooling((3,))(np.zeros((1, 5, 5, 2), np.float32)))
    np.testing.assert_array_equal(z, 0.0)


def test_output_order_pinned():
    # x[b, r, c, ch] = 1000 * ch + 10 * r + c  -> max over a cell = 1000 ch + 10 r1-1 + c1-1
    H, W, C = 6, 9, 2
    r, c, ch = np.meshgrid(np.arange(H), np.arange(W), np.arange(C), indexing="ij")
    x = (1000 * ch + 10 * r + c).astype(np.float32)[None]
    y = np.asarray(SpatialPyramidPooling((1, 2, 3), mode="max", l2_normalize=False)(x))[0]
    expected = []
    for level in (1, 2, 3):  # level-major
        for i in range(level):  # cell row-major
            for j in range(level):
                r1 = math.ceil((i + 1) * H / level) - 1
                c1 = math.ceil((j + 1) * W / level) - 1
                for k in range(C):  # channel last
                    expected.append(1000 * k + 10 * r1 + c1)
    np.testing.assert_array_equal(y, np.array(expected, np.float32))
    # the first few values, written out
    np.testing.assert_array_equal(y[:6], [58, 1058, 24, 1024, 28, 1028])


def test_resnet101_width_and_symbolic_shape():
    feat = keras.Input((None, None, 2048))
    sizes = keras.Input((2,), dtype="int32")
    assert SpatialPyramidPooling()([feat, sizes]).shape == (None, 18432)
    assert SpatialPyramidPooling((1, 2, 3))(feat).shape == (None, 2048 * 14)


def test_gradient_max_goes_to_cell_maxima():
    x = rand((1, 4, 4, 1), seed=30)
    layer = SpatialPyramidPooling((2,), l2_normalize=False)
    g = gradient(lambda v: keras.ops.sum(layer([v, np.array([[4, 4]], np.int32)])), x)[0, :, :, 0]
    xn = x[0, :, :, 0]
    ref = np.zeros_like(xn)
    for i in range(2):
        for j in range(2):
            blk = xn[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            a, b = np.unravel_index(blk.argmax(), blk.shape)
            ref[2 * i + a, 2 * j + b] = 1
    np.testing.assert_array_equal(g, ref)


def test_gradient_average_is_finite_and_zero_outside():
    x, _ = padded_batch([(3, 5)], channels=2, seed=31)
    layer = SpatialPyramidPooling((1, 3), mode="average")
    g = gradient(lambda v: keras.ops.sum(layer([v, np.array([[3, 5]], np.int32)])), x)
    assert np.isfinite(g).all()
    assert np.abs(g[0, :3, :5]).sum() > 0
    assert (g[0, 3:] == 0).all() and (g[0, :, 5:] == 0).all()


@pytest.mark.tensorflow_only("tf.function with dynamic-shape signatures")
def test_dynamic_shapes_one_trace():
    layer = SpatialPyramidPooling((1, 3), mode="max")
    fn = tf.function(layer, input_signature=[[tf.TensorSpec((None, None, None, 3), tf.float32),
                                              tf.TensorSpec((None, 2), tf.int32)]])
    for sizes in ([(5, 7), (2, 3)], [(9, 1)], [(1, 2), (4, 4), (3, 8)]):
        x, _ = padded_batch(sizes, channels=3, seed=len(sizes))
        np.testing.assert_allclose(np.asarray(fn([x, np.array(sizes, np.int32)])),
                                   ref_spp(x, sizes, (1, 3), "max"), rtol=1e-5, atol=1e-6)
    assert fn.experimental_get_tracing_count() == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="levels"):
        SpatialPyramidPooling((0, 3))
    with pytest.raises(ValueError, match="levels"):
        SpatialPyramidPooling(())
    with pytest.raises(ValueError, match="mode"):
        SpatialPyramidPooling(mode="sum")
    assert SpatialPyramidPooling(4).levels == (4,)


def test_save_reload_keras(tmp_path):
    feat = keras.Input((None, None, 3))
    sizes = keras.Input((2,), dtype="int32")
    out = SpatialPyramidPooling((1, 3), mode="average", name="spp")([feat, sizes])
    model = keras.Model([feat, sizes], out)
    path = tmp_path / "spp.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    cfg = reloaded.get_layer("spp").get_config()
    assert cfg["levels"] == [1, 3] and cfg["mode"] == "average" and cfg["l2_normalize"] is True
    x, _ = padded_batch([(4, 6), (7, 2)], channels=3, seed=40)
    s = np.array([[4, 6], [7, 2]], np.int32)
    np.testing.assert_array_equal(np.asarray(reloaded([x, s])), np.asarray(model([x, s])))


def test_saved_model_export_dynamic(tmp_path):
    if keras.backend.backend() == "torch":
        pytest.skip("Keras exports a tf_saved_model from TensorFlow and JAX models, not from PyTorch")
    feat = keras.Input((None, None, 2))
    sizes = keras.Input((2,), dtype="int32")
    model = keras.Model([feat, sizes], SpatialPyramidPooling()([feat, sizes]))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    for sizes_ in ([(5, 3)], [(2, 2), (8, 6)]):
        x, _ = padded_batch(sizes_, channels=2, seed=41)
        got = loaded.serve([x, np.array(sizes_, np.int32)])
        np.testing.assert_allclose(np.asarray(got), ref_spp(x, sizes_, (3,), "max"), rtol=1e-5, atol=1e-6)
