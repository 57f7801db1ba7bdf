"""RoiPooling2D / RoiAlign2D (Jia et al. 2019 §III-A, eqs. 1-3) against plain numpy loops of the
Fast R-CNN and torchvision roi_align algorithms, tf.nn.max_pool2d, tf.image.crop_and_resize and
finite differences."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from grads import gradient
from ku.layers import RoiAlign2D, RoiPooling2D, image_boxes, roi_bin_bounds


# the implementations the TensorFlow backend can be told to use (_MAX_METHOD); on other backends
# "auto" is the keras.ops implementation and these are skipped
TF_METHODS = [pytest.param(m, marks=pytest.mark.tensorflow_only("a TensorFlow implementation method"))
              for m in ("direct", "direct-chunks-of-1", "table")] + [
    pytest.param("ops", marks=pytest.mark.tensorflow_only("'auto' is the keras.ops implementation there"))]


# ---------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------
def c_round(v):
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def roi_pool_ref(x, boxes, out_hw, scale, mode="max", return_argmax=False):
    """Fast R-CNN roi_pooling_layer.cpp, one box at a time. x (B,H,W,C); boxes (B,4)/(B,K,4)."""
    x = np.asarray(x, np.float64)
    boxes = np.asarray(boxes, np.float64)
    multi = boxes.ndim == 3
    bx = boxes if multi else boxes[:, None]
    B, H, W, C = x.shape
    oh, ow = out_hw
    out = np.zeros(bx.shape[:2] + (oh, ow, C))
    arg = np.full(bx.shape[:2] + (oh, ow, C, 2), -1)
    for b in range(B):
        for k in range(bx.shape[1]):
            y1, x1, y2, x2 = (c_round(v * scale) for v in bx[b, k])  # eq. 1
            rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
            for i in range(oh):
                hs = min(max(math.floor(i * rh / oh) + y1, 0), H)  # eqs. 2-3
                he = min(max(math.ceil((i + 1) * rh / oh) + y1, 0), H)
                for j in range(ow):
                    ws = min(max(math.floor(j * rw / ow) + x1, 0), W)
                    we = min(max(math.ceil((j + 1) * rw / ow) + x1, 0), W)
                    if he <= hs or we <= ws:
                        continue  # empty bin -> 0
                    region = x[b, hs:he, ws:we]
                    if mode == "max":
                        out[b, k, i, j] = region.max(axis=(0, 1))
                        for c in range(C):
                            r, q = np.unravel_index(np.argmax(region[:, :, c]), region.shape[:2])
                            arg[b, k, i, j, c] = (hs + r, ws + q)
                    else:
                        out[b, k, i, j] = region.mean(axis=(0, 1))
    out = out if multi else out[:, 0]
    if return_argmax:
        return out, (arg if multi else arg[:, 0])
    return out


def bilinear_ref(f, y, x):
    """torchvision roi_align bilinear_interpolate for one sample; f (H, W, C)."""
    H, W = f.shape[:2]
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return np.zeros(f.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= H - 1:
        yh = yl = H - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= W - 1:
        xh = xl = W - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * f[yl, xl] + hy * lx * f[yl, xh] + ly * hx * f[yh, xl] + ly * lx * f[yh, xh]


def roi_align_ref(x, boxes, out_hw, scale, sr, aligned):
    x = np.asarray(x, np.float64)
    boxes = np.asarray(boxes, np.float64)
    oh, ow = out_hw
    out = np.zeros((boxes.shape[0], oh, ow, x.shape[3]))
    off = 0.5 if aligned else 0.0
    for b in range(boxes.shape[0]):
        y1, x1, y2, x2 = boxes[b] * scale - off
        rh, rw = y2 - y1, x2 - x1
        if not aligned:
            rh, rw = max(rh, 1.0), max(rw, 1.0)
        bh, bw = rh / oh, rw / ow
        for i in range(oh):
            for j in range(ow):
                acc = 0.0
                for sy in range(sr):
                    yy = y1 + i * bh + (sy + 0.5) * bh / sr
                    for sx in range(sr):
                        xx = x1 + j * bw + (sx + 0.5) * bw / sr
                        acc = acc + bilinear_ref(x[b], yy, xx)
                out[b, i, j] = acc / (sr * sr)
    return out


def rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def random_boxes(rng, n, img_h, img_w, min_side=1):
    """Inclusive pixel boxes inside (or touching the edge of) an img_h x img_w input."""
    y1 = rng.integers(0, img_h - min_side + 1, n)
    x1 = rng.integers(0, img_w - min_side + 1, n)
    y2 = np.minimum(y1 + rng.integers(min_side - 1, img_h, n), img_h - 1)
    x2 = np.minimum(x1 + rng.integers(min_side - 1, img_w, n), img_w - 1)
    return np.stack([y1, x1, y2, x2], -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# RoiPooling2D forward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["auto", TF_METHODS[-1]])
@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("out_hw, scale", [((5, 5), 1.0), ((7, 4), 1.0), ((6, 6), 0.5), ((3, 8), 0.25)])
def test_roi_pool_matches_numpy_loop(mode, out_hw, scale, method, monkeypatch):
    """Both implementations (on TensorFlow: its own and the keras.ops one of the other backends;
    other backends always run the keras.ops one) equal the Fast R-CNN loop."""
    import ku.layers.roi_pooling_2d as roi_module

    monkeypatch.setattr(roi_module, "_MAX_METHOD", method)
    rng = np.random.default_rng(hash((mode, out_hw, scale)) % 2**32)
    x = rand((3, 19, 23, 2), seed=int(rng.integers(1 << 30)))
    # boxes in input pixels (map size / scale): random ones, incl. sizes below the grid
    img_h, img_w = int(19 / scale), int(23 / scale)
    boxes = random_boxes(rng, 3, img_h, img_w)
    y = np.asarray(RoiPooling2D(out_hw, scale, mode=mode)([x, boxes]))
    np.testing.assert_allclose(y, roi_pool_ref(x, boxes, out_hw, scale, mode), rtol=1e-6, atol=1e-6)


def test_roi_pool_special_boxes():
    x = rand((6, 12, 10, 3), seed=1)
    boxes = np.array([
        [0, 0, 11, 9],      # the whole map
        [3, 4, 5, 5],       # 3 x 2 box, smaller than the 4 x 4 grid (rows repeat)
        [7, 7, 7, 7],       # a single pixel
        [8, 6, 11, 9],      # touching the bottom-right edge
        [-3, -2, 4, 20],    # reaching outside the map (clipped bins)
        [5, 5, 2, 2],       # inverted box: size clamps to 1
    ], np.float32)
    for mode in ("max", "average"):
        y = np.asarray(RoiPooling2D(4, 1.0, mode=mode)([x, boxes]))
        np.testing.assert_allclose(y, roi_pool_ref(x, boxes, (4, 4), 1.0, mode), rtol=1e-6, atol=1e-6)
    # a box entirely outside the map: every bin empty -> zeros
    y = RoiPooling2D(3, 1.0)([x[:1], np.array([[20, 20, 30, 30]], np.float32)])
    np.testing.assert_array_equal(np.asarray(y), 0.0)


def test_roi_pool_k_boxes_per_image():
    rng = np.random.default_rng(2)
    x = rand((2, 15, 17, 4), seed=2)
    boxes = np.stack([random_boxes(rng, 5, 15, 17) for _ in range(2)])  # (2, 5, 4)
    y = np.asarray(RoiPooling2D((3, 5), 1.0)([x, boxes]))
    assert y.shape == (2, 5, 3, 5, 4)
    np.testing.assert_allclose(y, roi_pool_ref(x, boxes, (3, 5), 1.0), rtol=1e-6)


def test_stride2_rounding_halves_away_from_zero():
    # eq. 1 at tau = 2: 297 * 0.5 = 148.5 -> 149 (C round), not 148 (round half to even)
    x = np.zeros((1, 160, 4, 1), np.float32)
    x[0, 149, 0, 0] = 5.0
    y = RoiPooling2D((1, 1), 0.5)([x, np.array([[0, 0, 297, 7]], np.float32)])
    assert float(np.asarray(y).ravel()[0]) == 5.0
    y = RoiPooling2D((1, 1), 0.5)([x, np.array([[0, 0, 295, 7]], np.float32)])  # 147.5 -> 148
    assert float(np.asarray(y).ravel()[0]) == 0.0


def test_bin_bounds_exact_integers():
    lo, hi = roi_bin_bounds(np.array([0, 2], np.int32), np.array([396, 4], np.int32), 146, 397)
    lo, hi = np.asarray(lo), np.asarray(hi)
    m = np.arange(146)
    np.testing.assert_array_equal(lo[0], np.floor(m * 397 / 146).astype(int))
    np.testing.assert_array_equal(hi[0], np.ceil((m + 1) * 397 / 146).astype(int))
    # box of 3 rows into 146 bins: bins hold 1 row (2 where a bin straddles a row border)
    assert set(np.asarray(hi[1] - lo[1]).tolist()) == {1, 2}
    assert lo[1].min() == 2 and hi[1].max() == 5


def test_whole_map_equals_inception_max_pool():
    # Inception-v3's first pooling (3x3, stride 2, valid) on a 147 x 147 map == ROI pooling of
    # the whole map to 73 x 73, so a full-size image reproduces the plain network.
    x = rand((2, 147, 147, 3), seed=3)
    y = RoiPooling2D(73, 1.0)([x, image_boxes(np.array([[147, 147]] * 2))])
    ref = tf.nn.max_pool2d(x, 3, 2, "VALID").numpy()
    np.testing.assert_array_equal(np.asarray(y), ref)


@pytest.mark.parametrize("layer", [RoiPooling2D((6, 5), 0.5), RoiPooling2D(4, 0.5, mode="average"),
                                   RoiAlign2D((6, 5), 0.5, sampling_ratio=2)])
def test_values_outside_the_box_do_not_matter(layer):
    rng = np.random.default_rng(4)
    x = rand((3, 30, 26, 2), seed=4)
    boxes = np.array([[0, 0, 39, 31], [4, 6, 51, 51], [0, 0, 59, 51]], np.float32)  # input px
    y0 = np.asarray(layer([x, boxes]))
    x2 = x.copy()
    for b, (y1, x1, y2, xx2) in enumerate(boxes):
        r0, c0 = c_round(y1 * 0.5), c_round(x1 * 0.5)
        r1, c1 = c_round(y2 * 0.5), c_round(xx2 * 0.5)
        outside = np.ones(x.shape[1:3], bool)
        outside[r0:r1 + 1, c0:c1 + 1] = False
        x2[b][outside] = rng.normal(size=(outside.sum(), 2)) * 100
    assert not np.array_equal(x2, x)
    np.testing.assert_array_equal(np.asarray(layer([x2, boxes])), y0)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
def _grad(layer, x, boxes, w):
    def projection(xt):
        y = layer([xt, boxes])
        return keras.ops.sum(y * keras.ops.cast(w, y.dtype))  # (a tensor: torch will not take numpy)

    return gradient(projection, x)


def test_max_gradient_goes_to_argmax():
    rng = np.random.default_rng(5)
    x = rand((2, 11, 13, 3), seed=5)
    boxes = np.array([[1, 2, 9, 12], [0, 0, 2, 3]], np.float32)  # 2nd: smaller than the grid
    w = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    g = _grad(RoiPooling2D((4, 5), 1.0), x, boxes, w)
    _, arg = roi_pool_ref(x, boxes, (4, 5), 1.0, return_argmax=True)
    ref = np.zeros_like(x, dtype=np.float64)
    for b, i, j, c in np.ndindex(w.shape):
        r, q = arg[b, i, j, c]
        ref[b, r, q, c] += w[b, i, j, c]  # overlapping bins accumulate
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_max_gradient_on_ties_goes_to_the_first_maximum():
    """Integer features (ties everywhere, like ReLU zeros): each bin's gradient goes to exactly
    one cell, the first maximum per axis as documented: the leftmost column holding the bin's
    max, and in it the topmost row holding it (rows are pooled first, then columns)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, size=(2, 12, 10, 2)).astype(np.float32)
    boxes = np.array([[[0, 0, 11, 9], [2, 1, 8, 6]], [[1, 3, 10, 9], [0, 0, 1, 2]]], np.float32)
    w = rng.uniform(1, 2, size=(2, 2, 4, 3, 2)).astype(np.float32)
    layer = RoiPooling2D((4, 3), 1.0)
    g = _grad(layer, x, boxes, w)
    ref = np.zeros_like(x, dtype=np.float64)
    for b, k, i, j, c in np.ndindex(w.shape):
        y1, x1, y2, x2 = boxes[b, k].astype(int)
        rh, rw = y2 - y1 + 1, x2 - x1 + 1
        hs, he = y1 + math.floor(i * rh / 4), y1 + math.ceil((i + 1) * rh / 4)
        ws, we = x1 + math.floor(j * rw / 3), x1 + math.ceil((j + 1) * rw / 3)
        region = x[b, hs:he, ws:we, c]
        q = int(np.argmax(region.max(axis=0)))  # first column holding the max
        r = int(np.argmax(region[:, q]))          # first row of that column holding it
        ref[b, hs + r, ws + q, c] += w[b, k, i, j, c]
    assert (x[0, :, :, 0] == x[0, :, :, 0].max()).sum() > 10  # plenty of ties
    np.testing.assert_allclose(g, ref, rtol=1e-6)


def first_max_gradient_ref(x, boxes, out_hw, scale, w):
    """numpy scatter of ``w`` to the first maximum of each bin, column-major (the leftmost column
    holding the bin's max, in it the topmost row), boxes (B, K, 4); empty bins route nothing."""
    B, H, W, _ = x.shape
    oh, ow = out_hw
    ref = np.zeros(x.shape, np.float64)
    for b, k, i, j, c in np.ndindex(w.shape):
        y1, x1, y2, x2 = (c_round(v * scale) for v in boxes[b, k])
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        hs = min(max(math.floor(i * rh / oh) + y1, 0), H)
        he = min(max(math.ceil((i + 1) * rh / oh) + y1, 0), H)
        ws = min(max(math.floor(j * rw / ow) + x1, 0), W)
        we = min(max(math.ceil((j + 1) * rw / ow) + x1, 0), W)
        if he <= hs or we <= ws:
            continue
        region = x[b, hs:he, ws:we, c]
        q = int(np.argmax(region.max(axis=0)))
        r = int(np.argmax(region[:, q]))
        ref[b, hs + r, ws + q, c] += w[b, k, i, j, c]
    return ref


@pytest.mark.parametrize("method", ["auto", *TF_METHODS])
@pytest.mark.parametrize("seed", range(4))
def test_max_gradient_random_ties_and_clipped_boxes(seed, method, monkeypatch):
    """Random integer maps (repeated maxima), boxes partly or wholly outside the map, boxes
    smaller than the grid (bins sharing rows), K boxes per image: outputs equal the Fast R-CNN
    loop exactly, and the gradient equals the first-maximum scatter."""
    import ku.layers.roi_pooling_2d as roi_module

    if method == "direct-chunks-of-1":  # one row of bins a chunk
        method = "direct"
        monkeypatch.setattr(roi_module, "_CHUNK_CELLS", 1)
    monkeypatch.setattr(roi_module, "_MAX_METHOD", method)
    rng = np.random.default_rng(100 + seed)
    B, H, W, C, K = 2, int(rng.integers(5, 20)), int(rng.integers(5, 20)), 3, 4
    out_hw = tuple(int(v) for v in rng.integers(1, 8, 2))
    scale = [1.0, 0.5][seed % 2]
    x = rng.integers(-2, 3, size=(B, H, W, C)).astype(np.float32)
    y1 = rng.integers(-4, int(H / scale) + 2, (B, K))
    x1 = rng.integers(-4, int(W / scale) + 2, (B, K))
    boxes = np.stack([y1, x1, y1 + rng.integers(-1, int(H / scale), (B, K)),
                      x1 + rng.integers(-1, int(W / scale), (B, K))], -1).astype(np.float32)
    w = rng.uniform(1, 2, size=(B, K, *out_hw, C)).astype(np.float32)
    layer = RoiPooling2D(out_hw, scale)
    np.testing.assert_array_equal(np.asarray(layer([x, boxes])), roi_pool_ref(x, boxes, out_hw, scale))
    g = _grad(layer, x, boxes, w)
    np.testing.assert_allclose(g, first_max_gradient_ref(x, boxes, out_hw, scale, w), rtol=1e-6, atol=1e-6)
    # one box per image (the gather with batch_dims=1): the same
    g1 = _grad(layer, x, boxes[:, 0], w[:, 0])
    np.testing.assert_allclose(g1, first_max_gradient_ref(x, boxes[:, :1], out_hw, scale, w[:, :1]),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", [RoiPooling2D((3, 4), 1.0), RoiPooling2D((3, 4), 1.0, mode="average"),
                                   RoiAlign2D((3, 4), 1.0, sampling_ratio=2),
                                   RoiAlign2D((3, 3), 0.5, sampling_ratio=3, aligned=True)])
def test_gradient_matches_finite_differences(layer):
    """The gradient of a random projection of the output against central differences."""
    x = rand((1, 7, 8, 2), seed=6)
    boxes = np.array([[1, 1, 5, 6]], np.float32)
    w = np.random.default_rng(7).normal(size=tuple(layer([x, boxes]).shape)).astype(np.float32)

    def f(v):
        return float(np.sum(np.asarray(layer([v, boxes]), np.float64) * w))

    num, delta = np.zeros_like(x), 1e-3
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = delta
        num[i] = (f(x + step) - f(x - step)) / (2 * delta)
    theo = _grad(layer, x, boxes, w)
    np.testing.assert_allclose(theo, num, atol=2e-2)
    assert np.abs(theo).sum() > 0


# ---------------------------------------------------------------------------------------------
# RoiAlign2D
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr, out_hw, scale", [(1, (4, 4), 1.0), (2, (5, 3), 0.5), (3, (2, 6), 0.25)])
def test_roi_align_matches_numpy(aligned, sr, out_hw, scale):
    rng = np.random.default_rng(sr * 10 + int(aligned))
    x = rand((4, 13, 11, 2), seed=sr)
    img_h, img_w = 13 / scale, 11 / scale
    boxes = np.stack([rng.uniform(-2, img_h * 0.6, 4), rng.uniform(-2, img_w * 0.6, 4),
                      rng.uniform(img_h * 0.3, img_h + 3, 4), rng.uniform(img_w * 0.3, img_w + 3, 4)],
                     -1).astype(np.float32)
    boxes[0] = [2, 3, 2.5, 3.2]  # a tiny box (size < 1: clamped to 1 when not aligned)
    y = np.asarray(RoiAlign2D(out_hw, scale, sampling_ratio=sr, aligned=aligned)([x, boxes]))
    ref = roi_align_ref(x, boxes, out_hw, scale, sr, aligned)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_roi_align_equals_crop_and_resize_at_bin_centres():
    # sampling_ratio 1 samples the bin centres; crop_and_resize samples oh points corner-aligned
    # from y1' to y2' (normalised by H - 1): the same points for interior boxes.
    x = rand((2, 20, 16, 3), seed=7)
    boxes = np.array([[2.0, 1.5, 15.0, 12.0], [5.0, 3.0, 17.5, 14.0]], np.float32)
    oh, ow = 6, 5
    y = np.asarray(RoiAlign2D((oh, ow), 1.0, sampling_ratio=1)([x, boxes]))
    bh = (boxes[:, 2] - boxes[:, 0]) / oh
    bw = (boxes[:, 3] - boxes[:, 1]) / ow
    nb = np.stack([(boxes[:, 0] + bh / 2) / 19, (boxes[:, 1] + bw / 2) / 15,
                   (boxes[:, 2] - bh / 2) / 19, (boxes[:, 3] - bw / 2) / 15], -1)
    ref = tf.image.crop_and_resize(x, nb, [0, 1], (oh, ow)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_roi_align_k_boxes():
    x = rand((2, 9, 9, 1), seed=8)
    boxes = np.array([[[0, 0, 8, 8], [1, 2, 5, 7]], [[2, 2, 6, 6], [0, 0, 3, 3]]], np.float32)
    y = np.asarray(RoiAlign2D(3, 1.0)([x, boxes]))
    assert y.shape == (2, 2, 3, 3, 1)
    np.testing.assert_allclose(y[1, 0], roi_align_ref(x[1:], boxes[1, :1], (3, 3), 1.0, 2, False)[0],
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Keras integration
# ---------------------------------------------------------------------------------------------
def test_image_boxes():
    s = np.array([[10, 20], [3, 4]])
    np.testing.assert_array_equal(np.asarray(image_boxes(s)), [[0, 0, 9, 19], [0, 0, 2, 3]])
    np.testing.assert_array_equal(np.asarray(image_boxes(s, "continuous")), [[0, 0, 10, 20], [0, 0, 3, 4]])
    with pytest.raises(ValueError, match="convention"):
        image_boxes(s, "corners")


def test_bad_arguments():
    with pytest.raises(ValueError, match="output_size"):
        RoiPooling2D((0, 3))
    with pytest.raises(ValueError, match="spatial_scale"):
        RoiPooling2D(3, spatial_scale=0)
    with pytest.raises(ValueError, match="mode"):
        RoiPooling2D(3, mode="sum")
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoiAlign2D(3, sampling_ratio=0)
    with pytest.raises(ValueError, match="boxes"):
        RoiPooling2D(3)([rand((1, 5, 5, 1), 0), np.zeros((1, 5), np.float32)])
    with pytest.raises(ValueError, match="inputs"):
        RoiPooling2D(3)(rand((1, 5, 5, 1), 0))


@pytest.mark.tensorflow_only("tf.function with dynamic-shape signatures")
def test_dynamic_shapes_one_trace():
    layer = RoiPooling2D((4, 4), 0.5)
    fn = tf.function(layer, input_signature=[[tf.TensorSpec((None, None, None, 2), tf.float32),
                                              tf.TensorSpec((None, 4), tf.float32)]])
    rng = np.random.default_rng(9)
    for b, h, w in [(1, 9, 12), (3, 20, 7), (2, 33, 31)]:
        x = rand((b, h, w, 2), seed=h)
        boxes = random_boxes(rng, b, 2 * h, 2 * w)
        np.testing.assert_allclose(fn([x, boxes]).numpy(), roi_pool_ref(x, boxes, (4, 4), 0.5), rtol=1e-6)
    assert fn.experimental_get_tracing_count() == 1


def _model(layer, channels=3):
    feats = keras.Input((None, None, channels), name="features")
    boxes = keras.Input((4,), name="boxes")
    return keras.Model([feats, boxes], layer([feats, boxes]))


@pytest.mark.parametrize("layer", [RoiPooling2D((5, 4), 0.5, mode="average", name="roi"),
                                   RoiAlign2D(3, 0.25, sampling_ratio=3, aligned=True, name="roi")])
def test_save_reload_keras(tmp_path, layer):
    model = _model(layer)
    assert model.output.shape[1:] == (*layer.output_size, 3)
    path = tmp_path / "roi.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_layer("roi").get_config() == model.get_layer("roi").get_config()
    x = rand((2, 14, 18, 3), seed=10)
    boxes = np.array([[0, 0, 27, 35], [3, 5, 20, 30]], np.float32)
    np.testing.assert_array_equal(np.asarray(reloaded([x, boxes])), np.asarray(model([x, boxes])))


@pytest.mark.tensorflow_only("SavedModel export")
def test_saved_model_export_dynamic_batch(tmp_path):
    model = _model(RoiPooling2D((6, 6), 0.5))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    rng = np.random.default_rng(11)
    for b, h, w in [(1, 10, 14), (4, 23, 17)]:
        x = rand((b, h, w, 3), seed=b)
        boxes = random_boxes(rng, b, 2 * h, 2 * w)
        np.testing.assert_allclose(np.asarray(loaded.serve([x, boxes])),
                                   roi_pool_ref(x, boxes, (6, 6), 0.5), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.tensorflow_only("compares the TensorFlow implementation methods")
def test_max_methods_agree(dtype, monkeypatch):
    """The direct (separable running max) and the table (2-D sparse table) forwards and the
    keras.ops implementation (other backends) give the same outputs, bit for bit, and the same
    gradients, on a Fast R-CNN-like map with many boxes of
    all sizes (windows of 1 to ~12 cells) and on a map with many ties (zeros, -0.0)."""
    import ku.layers.roi_pooling_2d as roi_module

    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 19, 25, 6)).astype(dtype)
    x[0, ::2] = 0.0
    x[1, :, ::3] = -0.0
    k = 20
    y1, x1 = rng.uniform(-20, 280, (2, k)), rng.uniform(-20, 380, (2, k))
    boxes = np.stack([y1, x1, y1 + rng.uniform(0, 200, (2, k)), x1 + rng.uniform(0, 200, (2, k))],
                     -1).astype(np.float32)
    w = rng.normal(size=(2, k, 7, 7, 6)).astype(dtype)
    res = {}
    for method in ["direct", "table", "ops"]:
        monkeypatch.setattr(roi_module, "_MAX_METHOD", method)
        layer = RoiPooling2D(7, 1 / 16)
        res[method] = (np.asarray(layer([x, boxes])), _grad(layer, x, boxes, w))
    for method in ["table", "ops"]:
        np.testing.assert_array_equal(res[method][0], res["direct"][0])
        assert (np.signbit(res[method][0]) == np.signbit(res["direct"][0])).all()
        np.testing.assert_array_equal(res[method][1], res["direct"][1])
    if dtype == "float32":
        ref = first_max_gradient_ref(x, boxes, (7, 7), 1 / 16, w)
        np.testing.assert_allclose(res["table"][1], ref, rtol=1e-5, atol=1e-5)
