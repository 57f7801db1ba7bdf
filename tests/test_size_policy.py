"""ku's one size policy (ku/size_policy.py, docs/bad_input.md "Size policy").

* small images: every model family (MLSP end-to-end, APM, theme-ROI) scores images of 1..80 px by
  upscaling them to the backbone's minimum side -- in a fresh process and after a larger image
  was scored, through ``predict`` and ``__call__`` -- and the score equals the model's score on
  the upscaled image (never NaN, never a silent 0);
* large images: the pixel limit is read from the header before decoding, extreme strips are
  refused instead of upscaled, and decoding + resizing peak at <= 16 bytes per input pixel
  (``resource.getrusage`` in a fresh subprocess per measurement);
* the Python policy (``policy_size``, used by ``ku predict``) gives the sizes of the graph's;
* the layer's ``keras.ops`` implementation (JAX, PyTorch) gives TensorFlow's sizes (its float64
  arithmetic, reproduced in int32) and pixels, and compiles under ``jax.jit``.

Tests marked ``tensorflow_only`` need TensorFlow's own ops; the rest also run on JAX.
"""
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from ku.export import _target_size, make_scoring_module
from ku.layers import MinSideUpscale
from ku.size_policy import DEFAULT_MAX_PIXELS, MAX_ASPECT, SizePolicyError, check_pixels, policy_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# around every family's minimum side (APM 32, Inception-v3 75): 1 pixel, below, at, above
SIZES = [1, 3, 16, 31, 32, 75, 80]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return env


def run_python(code, *args, timeout=600):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the rule itself
# ---------------------------------------------------------------------------------------------
def test_policy_size_rules():
    assert policy_size(20, 30, min_side=75) == (75, 112)  # x3.75, 112.5 -> 112 (half to even)
    assert policy_size(160, 300, min_side=75, max_side=200) == (107, 200)
    assert policy_size(30, 400, min_side=75, max_side=200) == (75, 1000)  # min_side wins
    assert policy_size(80, 90, min_side=75) == (80, 90)
    assert policy_size(1, 1, min_side=75) == (75, 75)
    with pytest.raises(SizePolicyError, match="too elongated to upscale"):
        policy_size(1, 20000, min_side=75)  # would be 75 x 1,500,000
    assert policy_size(1, 20, min_side=75) == (75, 1500)  # aspect 20 is still upscaled
    assert policy_size(1, 20000, min_side=75, max_aspect=None) == (75, 1500000)
    assert policy_size(100, 20000, min_side=75) == (100, 20000)  # not small: no aspect limit
    with pytest.raises(SizePolicyError, match="minimum side of 75 px"):
        policy_size(20, 30, min_side=75, small_images="error")
    with pytest.raises(SizePolicyError, match="max_pixels=50,000,000"):
        check_pixels(10000, 5001, DEFAULT_MAX_PIXELS)
    check_pixels(10000, 5000, DEFAULT_MAX_PIXELS)
    check_pixels(10 ** 6, 10 ** 6, None)
    assert MAX_ASPECT == 20


@pytest.mark.tensorflow_only("the exported signatures' size op (ku.export) is TensorFlow code")
def test_policy_size_equals_graph():
    """ku predict (Python) and the exported signatures (graph) resize to the same sizes."""
    rng = np.random.default_rng(0)
    f = tf.function(lambda hw, lo, hi: _target_size(hw, lo, hi))
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 3000, size=2))
        lo, hi = [None, 32, 75][rng.integers(3)], [None, 224, 1000][rng.integers(3)]
        if lo and hi and hi < lo:
            continue
        got = tuple(_target_size(tf.constant([h, w]), lo, hi).numpy().tolist())
        assert got == policy_size(h, w, min_side=lo, max_side=hi, max_aspect=None), (h, w, lo, hi)
    assert f is not None


# ---------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------
@pytest.mark.tensorflow_only("TensorFlow's InvalidArgumentError (every backend: the keras.ops tests below)")
def test_min_side_upscale_layer_forms_and_save(tmp_path):
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 255, (1, 10, 30, 3)).astype(np.float32)
    layer = MinSideUpscale(32)
    ref = tf.image.resize(small, (32, 96), method="bilinear").numpy()
    np.testing.assert_allclose(layer(small).numpy(), ref, rtol=1e-6)
    big = rng.uniform(0, 255, (2, 40, 50, 3)).astype(np.float32)
    np.testing.assert_array_equal(layer(big).numpy(), big)  # untouched
    # padded form: image 0 (10 x 30) is upscaled to 32 x 96, image 1 (40 x 50) keeps its pixels
    canvas = np.zeros((2, 40, 50, 3), np.float32)
    canvas[0, :10, :30] = small[0]
    canvas[1] = big[1]
    out, sizes = layer([canvas, np.array([[10, 30], [40, 50]], np.int32)])
    assert out.shape == (2, 40, 96, 3) and sizes.numpy().tolist() == [[32, 96], [40, 50]]
    np.testing.assert_allclose(out[0, :32, :96].numpy(), ref[0], rtol=1e-6)
    np.testing.assert_array_equal(out[1, :40, :50].numpy(), big[1])
    assert float(np.abs(out[0, 32:]).max()) == 0 and float(np.abs(out[1, :, 50:]).max()) == 0
    with pytest.raises(tf.errors.InvalidArgumentError, match="too elongated to upscale"):
        layer(np.zeros((1, 1, 40, 3), np.float32))
    strict = MinSideUpscale(32, small_images="error")
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 32 x 32 pixels"):
        strict(small)
    with pytest.raises(ValueError, match="min_side must be a positive int"):
        MinSideUpscale(0)
    # get_config and a .keras round trip
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(MinSideUpscale(32, max_aspect=5.0)(inp)))
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    cfg = again.layers[1].get_config()
    assert (cfg["min_side"], cfg["small_images"], cfg["max_aspect"]) == (32, "upscale", 5.0)
    np.testing.assert_allclose(again.predict(small, verbose=0), model.predict(small, verbose=0),
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the layer's keras.ops implementation (JAX, PyTorch): TensorFlow's sizes and pixels, jax.jit
# ---------------------------------------------------------------------------------------------
def np_resize(image, height, width):
    """numpy ``tf.image.resize(image, (height, width), "bilinear")`` of an (H, W, C) image:
    ``resize_bilinear`` with half-pixel centres, in float32, width first."""
    def taps(src, dst):
        v = ((np.arange(dst, dtype=np.float32) + np.float32(0.5)) * (np.float32(src) / np.float32(dst))
             - np.float32(0.5))
        lo = np.floor(v)
        return np.maximum(lo, 0).astype(int), np.minimum(np.ceil(v), src - 1).astype(int), v - lo

    top, bottom, fy = taps(image.shape[0], height)
    left, right, fx = taps(image.shape[1], width)

    def row(r):
        return r[:, left] + (r[:, right] - r[:, left]) * fx[None, :, None]

    t = row(image[top])
    return t + (row(image[bottom]) - t) * fy[:, None, None]


def np_sizes(sizes, min_side, canvas=None):
    """The TensorFlow path's new sizes in numpy float64 (``MinSideUpscale._new_sizes``; on a fixed
    ``canvas`` what fits, ``_padded``); no max_aspect."""
    s = np.asarray(sizes, np.float64)
    short = s.min(axis=1)
    need = short < min_side
    new = np.round(s * np.maximum(1.0, min_side / np.maximum(short, 1.0))[:, None]).astype(np.int64)
    if canvas is not None:
        fit = np.minimum(canvas[0] / new[:, 0].astype(np.float64), canvas[1] / new[:, 1].astype(np.float64))
        shrunk = np.round(new * np.minimum(fit, 1.0)[:, None]).astype(np.int64)
        new = np.where(need[:, None], np.maximum(np.maximum(shrunk, sizes), 1), sizes)
    return new


def np_padded(canvas, sizes, new, out_hw):
    """Reference output of the padded form: each image cropped to its size, resized to its new
    size (unless equal) at the top-left of a zero canvas ``out_hw``."""
    out = np.zeros((len(canvas), *out_hw, canvas.shape[-1]), np.float32)
    for i, ((h, w), (nh, nw)) in enumerate(zip(sizes, new)):
        crop = canvas[i, :h, :w]
        out[i, :nh, :nw] = crop if (h, w) == (nh, nw) else np_resize(crop, nh, nw)
    return out


def padded_batch(sizes, canvas_hw, seed, channels=3, noise=False):
    """Images of ``sizes`` at the top-left of a canvas (zeros, or noise in the padding)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (len(sizes), *canvas_hw, channels)).astype(np.float32)
    if not noise:
        for i, (h, w) in enumerate(sizes):
            x[i, h:], x[i, :, w:] = 0, 0
    return x, np.asarray(sizes, np.int32)


def as_np(x):
    return keras.ops.convert_to_numpy(x)


def assert_pixels(got, want, err_msg=""):
    """Pixels 0..255 as tf.image.resize's. Compiled by XLA, ``(i + 0.5) * scale - 0.5`` may become
    one fused multiply-add, so a sample position can differ by a float32 unit in its last place
    (``2**-23 * position``) and a pixel by that times 255."""
    got, want = as_np(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=255 * 2.0 ** -22 * max(got.shape[1:3]),
                               err_msg=err_msg)


def test_np_references_are_tensorflows():
    rng = np.random.default_rng(11)
    for (h, w), (nh, nw) in [((1, 1), (32, 32)), ((10, 30), (32, 96)), ((7, 5), (45, 32)),
                             ((3, 60), (75, 1500)), ((40, 50), (40, 50)), ((33, 31), (80, 75))]:
        img = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        ref = tf.image.resize(img, (nh, nw), method="bilinear").numpy()
        np.testing.assert_allclose(np_resize(img, nh, nw), ref, rtol=1e-6, atol=1e-4)
    # the layer's float64 sizes on TensorFlow (sizes 1..80 on canvases 80 x 80 and 90 x 40)
    grid = np.stack(np.meshgrid(np.arange(1, 81), np.arange(1, 81)), -1).reshape(-1, 2).astype(np.int32)
    new, _ = MinSideUpscale(75, max_aspect=None)._new_sizes(tf.constant(grid))
    np.testing.assert_array_equal(new.numpy(), np_sizes(grid, 75))
    for canvas in ((80, 80), (90, 40)):
        sizes = grid[(grid[:, 0] <= canvas[0]) & (grid[:, 1] <= canvas[1])][::17]
        layer = MinSideUpscale(75, max_aspect=None)
        layer.build([(None, *canvas, 3), (None, 2)])
        _, got = layer._padded(tf.zeros((len(sizes), *canvas, 1)), tf.constant(sizes))
        np.testing.assert_array_equal(got.numpy(), np_sizes(sizes, 75, canvas))


def test_round_ratio_is_tensorflows_float64():
    """_round_ratio(a, b, c) == round(a * (b / c)) in float64 (TensorFlow's size arithmetic),
    for every side of images whose shorter side is below min_side (aspect <= 20) and for the fit
    to a fixed canvas; rounding the exact a * b / c half to even differs at some ties."""
    from ku.layers.min_side_upscale import _round_ratio

    def check(a, b, c, chunk=65536):
        ref = np.round(a * (b / c.astype(np.float64))).astype(np.int64)
        for i in range(0, len(a), chunk):
            part = [np.resize(v[i:i + chunk], chunk).astype(np.int32) for v in (a, b, c)]
            got = as_np(_round_ratio(*part))[:len(a[i:i + chunk])]
            bad = np.flatnonzero(got != ref[i:i + chunk])
            assert not bad.size, [(a[i + j], b[i + j], c[i + j], got[j], ref[i + j]) for j in bad[:5]]
        q, r = np.divmod(a * b, c)
        return int(((q + (2 * r > c) + ((2 * r == c) & (q % 2 == 1))) != ref).sum())

    exact_differs = 0
    for m in (32, 75, 100, 299):
        short = np.concatenate([np.full(19 * s + 1, s) for s in range(1, m)]).astype(np.int64)
        side = np.concatenate([np.arange(s, 20 * s + 1) for s in range(1, m)]).astype(np.int64)
        exact_differs += check(side, np.full_like(side, m), short)
    a, c = (v.ravel().astype(np.int64) for v in np.meshgrid(np.arange(1, 301), np.arange(1, 301)))
    for b in (75, 160, 299, 512):
        exact_differs += check(a, np.full_like(a, b), c)
    rng = np.random.default_rng(12)
    check(*(rng.integers(1, 20000, 65536) for _ in range(3)))
    assert exact_differs > 0  # float64 ties: the exact rounding is not TensorFlow's


def test_padded_sizes_match_tensorflow_on_a_random_sweep():
    rng = np.random.default_rng(13)
    for trial in range(40):
        canvas = tuple(int(v) for v in rng.integers(20, 400, 2))
        min_side = int(rng.choice([32, 75, 299]))
        sizes = np.stack([rng.integers(1, canvas[0] + 1, 64), rng.integers(1, canvas[1] + 1, 64)], 1)
        sizes[: 16] = np.minimum(sizes[: 16] // rng.integers(1, 50, (16, 1)) + 1, canvas)  # small ones
        sizes = sizes.astype(np.int32)
        layer = MinSideUpscale(min_side, max_aspect=None)
        layer.build([(None, *canvas, 3), (None, 2)])
        new, _, out_hw = layer._ops_sizes(keras.ops.convert_to_tensor(sizes), canvas)
        assert out_hw == canvas
        np.testing.assert_array_equal(as_np(new), np_sizes(sizes, min_side, canvas), err_msg=str(trial))
        if keras.backend.backend() == "tensorflow":
            _, got = layer([np.zeros((64, *canvas, 1), np.float32), sizes])
            np.testing.assert_array_equal(as_np(got), as_np(new), err_msg=str(trial))


# (input, layer arguments, fixed canvas or None): single-size and padded batches
OPS_CASES = {
    "small": (((2, 10, 30),), {}, None),
    "small, elongated": (((1, 3, 60),), {}, None),
    "large": (((2, 40, 50),), {}, None),
    "one image filling its canvas": ((((10, 30),), (10, 30)), {}, None),
    "mixed batch": ((((10, 30), (40, 50), (3, 7), (31, 40)), (40, 50)), {}, None),
    "none small, noise in the padding": ((((40, 50), (35, 33)), (40, 50)), {}, None),
    "fixed canvas": ((((60, 150), (70, 70), (5, 9), (160, 160)), (160, 160)), {"min_side": 75}, (160, 160)),
    "an image that does not fit": ((((10, 30), (40, 50)), (40, 50)), {}, (40, 50)),
    "min_side 75, mixed": ((((20, 30), (80, 90), (74, 200)), (90, 200)), {"min_side": 75}, None),
}


def ops_case(name, seed=0):
    args, kwargs, fixed = OPS_CASES[name]
    layer = MinSideUpscale(**{"min_side": 32, **kwargs})
    if len(args) == 1:
        x = np.random.default_rng(seed).uniform(0, 255, (*args[0], 3)).astype(np.float32)
        layer.build(x.shape)
        return layer, x
    x, sizes = padded_batch(args[0], args[1], seed, noise="noise" in name)
    layer.build([(None, *(fixed or (None, None)), 3), (None, 2)])
    return layer, [x, sizes]


@pytest.mark.tensorflow_only("compares with the TensorFlow implementation")
@pytest.mark.parametrize("name", sorted(OPS_CASES))
def test_ops_path_equals_tensorflow_path(name):
    layer, x = ops_case(name)
    want, got = layer(x), layer._call_ops(x)
    if isinstance(x, list):
        np.testing.assert_array_equal(as_np(got[1]), as_np(want[1]))
        want, got = want[0], got[0]
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(as_np(got), as_np(want), rtol=1e-5, atol=1e-4)


@pytest.mark.tensorflow_only("compares with the TensorFlow implementation")
def test_traced_ops_path_equals_tensorflow_on_its_canvas():
    """Traced (tf.function here, jax.jit on JAX), the ops path keeps a canvas whose shorter side
    is at least min_side: the TensorFlow path on that fixed canvas gives the same result."""
    layer, (x, sizes) = ops_case("mixed batch")
    fixed = MinSideUpscale(32)
    fixed.build([(None, 40, 50, 3), (None, 2)])
    want = fixed([x, sizes])
    got = tf.function(lambda x, s: layer._call_ops([x, s]))(x, sizes)
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    assert np.asarray(want[1]).tolist()[0] == [17, 50]  # 32 x 96 does not fit: 50 / 96 of it
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5, atol=1e-4)


def traced(fn):
    """``fn`` compiled: jax.jit on JAX, tf.function on TensorFlow."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        return tf.function(fn)
    pytest.skip(f"no compiled function for the {backend} backend here")


@pytest.mark.parametrize("name", sorted(OPS_CASES))
def test_ops_path_equals_numpy_reference_eager_and_traced(name):
    layer, x = ops_case(name)
    if not isinstance(x, list):
        out = as_np(layer._call_ops(x))
        n = np_sizes([x.shape[1:3]], layer.min_side)[0]
        ref = x if min(x.shape[1:3]) >= layer.min_side else np.stack([np_resize(im, *n) for im in x])
        assert_pixels(out, ref)
        assert_pixels(as_np(traced(layer._call_ops)(x)), ref)
        return
    x, sizes = x
    fixed = getattr(layer, "_canvas", None)
    hw = x.shape[1:3]
    for how in ("eager", "traced"):
        if how == "eager":
            out, new = (as_np(v) for v in layer._call_ops([x, sizes]))
            # eager: TensorFlow's canvas, grown to hold every image
            want = np_sizes(sizes, layer.min_side, fixed)
            out_hw = fixed or tuple(np.maximum(hw, want.max(0)))
        else:
            out, new = (as_np(v) for v in traced(lambda a, b: layer._call_ops([a, b]))(x, sizes))
            out_hw = fixed or tuple(np.maximum(hw, np_sizes([hw], layer.min_side)[0]))
            want = np_sizes(sizes, layer.min_side, out_hw)  # the fit to that canvas
        np.testing.assert_array_equal(new, want, err_msg=how)
        assert out.shape == (len(x), *out_hw, 3), how
        if (want == sizes).all():  # nothing upscaled: the input, padding included
            pad = [(0, 0), (0, out_hw[0] - hw[0]), (0, out_hw[1] - hw[1]), (0, 0)]
            np.testing.assert_array_equal(out, np.pad(x, pad))
        else:
            assert_pixels(out, np_padded(x, sizes, want, out_hw), err_msg=how)


def test_ops_path_errors():
    """Known sizes: ValueError with the TensorFlow path's message; traced padded sizes: nothing
    can be raised, the elongated image keeps its size and small_images='error' passes through."""
    layer = MinSideUpscale(32)
    with pytest.raises(ValueError, match=r"too elongated to upscale .*\[\[1, 40\]\]"):
        layer._call_ops(np.zeros((1, 1, 40, 3), np.float32))
    strict = MinSideUpscale(32, small_images="error")
    with pytest.raises(ValueError, match=r"at least 32 x 32 pixels .*\[\[10, 30\]\]"):
        strict._call_ops(np.zeros((1, 10, 30, 3), np.float32))
    x, sizes = padded_batch([(2, 50), (10, 30)], (10, 50), seed=0)
    for lay, match in ((layer, "too elongated"), (strict, "at least 32 x 32")):
        lay.build([(None, None, None, 3), (None, 2)])
        with pytest.raises(ValueError, match=match):
            lay._call_ops([x, sizes])
    if keras.backend.backend() in ("jax", "tensorflow"):
        out, new = traced(lambda a, b: layer._call_ops([a, b]))(x, sizes)
        assert as_np(new).tolist() == [[2, 50], [32, 96]] and out.shape == (2, 32, 160, 3)
        np.testing.assert_array_equal(as_np(out)[0, :2, :50], x[0, :2, :50])
        out, new = traced(lambda a, b: strict._call_ops([a, b]))(x, sizes)
        np.testing.assert_array_equal(as_np(new), sizes)
        np.testing.assert_array_equal(as_np(out), x)


def test_models_predict_compiled_on_every_backend(tmp_path):
    """A model with the layer at its input, through ``predict`` (jax.jit on JAX), ``__call__``
    and a .keras round trip: the policy's sizes and tf.image.resize's pixels."""
    rng = np.random.default_rng(14)
    small = rng.uniform(0, 255, (2, 10, 30, 3)).astype(np.float32)
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, MinSideUpscale(32)(inp))
    ref = np.stack([np_resize(im, 32, 96) for im in small])
    for out in (model.predict(small, verbose=0), model(small)):
        assert_pixels(as_np(out), ref)
    big = rng.uniform(0, 255, (1, 40, 50, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(big, verbose=0), big)

    def padded_model(canvas):
        image, sizes = keras.Input((*canvas, 3)), keras.Input((2,), dtype="int32")
        out = MinSideUpscale(32, name="up")([image, sizes])
        return keras.Model([image, sizes], [keras.layers.Identity(name="image")(out[0]),
                                            keras.layers.Identity(name="size")(out[1])])

    # an image predicted alone (its own canvas), and a fixed canvas with a mixed batch
    alone = padded_model((None, None))
    x, s = padded_batch([(10, 30)], (10, 30), seed=15)
    for out, new in (alone.predict([x, s], verbose=0), alone([x, s])):
        assert as_np(new).tolist() == [[32, 96]]
        assert_pixels(as_np(out), np_resize(x[0], 32, 96)[None])
    fixed = padded_model((40, 50))
    x, s = padded_batch([(10, 30), (40, 50), (3, 7)], (40, 50), seed=16)
    want = np_sizes(s, 32, (40, 50))
    assert want.tolist() == [[17, 50], [40, 50], [21, 50]]  # what fits the canvas
    out, new = fixed.predict([x, s], verbose=0)
    np.testing.assert_array_equal(new, want)
    assert_pixels(out, np_padded(x, s, want, (40, 50)))
    fixed.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(again.predict([x, s], verbose=0), (out, new)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# every family, sizes 1..80, fresh and warm
# ---------------------------------------------------------------------------------------------
FAMILY_SWEEP = textwrap.dedent(r"""
    import json, sys
    import numpy as np, tensorflow as tf, keras
    from ku.backbones import build_backbone
    from ku.models import apm, heads, theme_roi
    from ku.models.mlsp import mlsp_end_to_end, mlsp_extractor

    sizes = json.loads(sys.argv[1])
    keras.utils.set_random_seed(3)
    inception = build_backbone("inception_v3", weights=None)  # shared by MLSP and theme-ROI

    def image(s):
        return np.random.default_rng(s).uniform(0, 255, (1, s, s, 3)).astype(np.float32)

    def mlsp():
        ex = mlsp_extractor("inception_v3", features="narrow", backbone_model=inception)
        return mlsp_end_to_end(ex, heads.single_1fc(ex.output.shape[-1])), 75, lambda x: x

    def apm_():
        model = apm.apm_model("vgg16", weights=None, fc_units=16, variant="dist")
        return model, 32, lambda x: [x, np.array([x.shape[1:3]], np.int32)]

    def jia(canvas):
        model = theme_roi.theme_roi_model(canvas=canvas, roi_size=73, n_themes=5, theme_dim=8,
                                          backbone=inception)
        def feed(x):
            h, w = x.shape[1:3]
            if canvas:
                c = np.zeros((1, canvas, canvas, 3), np.float32)
                c[0, :h, :w] = x[0]
                x = c
            return [x, np.array([[h, w]], np.int32), np.array([2], np.int32)]
        return model, 75, feed

    out = {}
    for family, build in [("mlsp", mlsp), ("apm", apm_), ("theme_roi", lambda: jia(None)),
                          ("theme_roi_canvas", lambda: jia(160))]:
        model, min_side, feed = build()

        def score(x, how):
            y = model.predict(feed(x), verbose=0) if how == "predict" else model(feed(x), training=False)
            y = y["distribution"] if isinstance(y, dict) else y
            return np.asarray(y, np.float64).ravel().tolist()

        res = {"fresh": {}, "warm": {}, "call": {}, "reference": {}}
        for s in sizes:                  # a fresh model: the first call is the smallest image
            res["fresh"][s] = score(image(s), "predict")
        score(image(120), "predict")     # a larger image
        for s in sizes:
            res["warm"][s] = score(image(s), "predict")
            res["call"][s] = score(image(s), "call")
            if s < min_side:             # the policy: bilinear upscale, shorter side = min_side
                res["reference"][s] = score(tf.image.resize(image(s), (min_side, min_side),
                                                            method="bilinear").numpy(), "call")
        out[family] = res
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def sweep():
    """Every family in ONE fresh process (one Inception-v3 shared by MLSP and theme-ROI)."""
    return run_python(FAMILY_SWEEP, json.dumps(SIZES), timeout=900)


@pytest.mark.tensorflow_only("Inception-v3 predicted at 11 image sizes: on JAX one jax.jit compilation per "
                             "size and family; the JAX path is tested on small models below")
@pytest.mark.parametrize("family", ["mlsp", "apm", "theme_roi", "theme_roi_canvas"])
def test_small_images_every_family_fresh_and_warm(sweep, family):
    res = sweep[family]
    for s in map(str, SIZES):
        for key in ("fresh", "warm", "call"):
            v = np.asarray(res[key][s])
            assert v.size and np.all(np.isfinite(v)), (family, key, s, v)
        np.testing.assert_allclose(res["warm"][s], res["fresh"][s], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(res["call"][s], res["fresh"][s], rtol=1e-4, atol=1e-6)
        if s in res["reference"]:
            np.testing.assert_allclose(res["fresh"][s], res["reference"][s], rtol=1e-4, atol=1e-6)
    # the references differ between sizes, so the comparison can fail
    refs = [res["reference"][s] for s in res["reference"]]
    assert max(np.abs(np.subtract(refs[0], r)).max() for r in refs[1:]) > 1e-7


# ---------------------------------------------------------------------------------------------
# large images: header limit, strips, memory per pixel
# ---------------------------------------------------------------------------------------------
def huge_png_header(h, w):
    """A PNG whose header says h x w (its pixel data is one empty row: never decoded)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def toy_module(**kw):
    from test_export import toy_model

    return make_scoring_module(toy_model(name="toy_size"), family="mlsp", **kw)


@pytest.mark.tensorflow_only("tf.Module scoring signatures (ku.export)")
def test_header_limit_and_strip_refused_in_graph():
    module = toy_module(max_side=200)
    ok, good = cv2.imencode(".png", np.full((90, 90, 3), 120, np.uint8))
    ok, strip = cv2.imencode(".png", np.full((1, 20000, 3), 120, np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images\[1\]\] \[has more than max_pixels=50,000,000 pixels"):
        module.predict_bytes(tf.constant([good.tobytes(), huge_png_header(30000, 30000)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images\[0\]\] \[is below the minimum "
                                                              r"side of this model \(75 px\) and too elongated"):
        module.predict_bytes(tf.constant([strip.tobytes()]))
    out = toy_module(max_pixels=None).predict_bytes(tf.constant([good.tobytes()]))
    assert np.isfinite(out["mean_score"].numpy()).all()


MEMORY = textwrap.dedent(r"""
    import json, resource, sys
    import numpy as np, tensorflow as tf
    sys.path.insert(0, "tests")
    from test_export import toy_model
    from ku.export import make_scoring_module

    path, how, pixels = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module = make_scoring_module(toy_model(name="toy_mem"), family="mlsp", max_side=1000)
    data = open(path, "rb").read()
    small = tf.io.encode_png(tf.fill([60, 80, 3], tf.constant(7, tf.uint8))).numpy()
    if how == "serving":
        call = lambda d: module.predict_bytes(tf.constant([d]))
        call(small)                                   # trace + warm up on a small image
    else:
        import cv2
        from ku.cli import _score_one
        cv2.imwrite(path + ".small.png", np.full((60, 80, 3), 7, np.uint8))
        call = lambda d: _score_one(module, path if d is data else path + ".small.png", 0,
                                    50_000_000)[0]
        call(small)

    def status_kb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])

    # TensorFlow's import and the tracing peak above what one image adds: reset the high-water
    # mark (Linux clear_refs 5) and measure from the current resident size; elsewhere the
    # getrusage delta (which can only underestimate)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, peak = status_kb("VmRSS"), lambda: status_kb("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = call(data)
    after = peak()
    print(json.dumps({"bytes_per_pixel": (after - before) * 1024.0 / pixels,
                      "score": float(out["mean_score"].numpy()[0])}))
""")


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    side = 6000
    files = {}
    img = np.full((side, side, 3), (30, 140, 200), np.uint8)
    img[::97] = 255  # a little structure
    cv2.imwrite(str(d / "big.png"), img)
    files["png"] = d / "big.png"
    cv2.imwrite(str(d / "big.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    files["jpg"] = d / "big.jpg"
    return files, side * side


@pytest.mark.tensorflow_only("tf.Module scoring signatures (ku.export)")
@pytest.mark.parametrize("fmt, how", [("png", "serving"), ("jpg", "predict")])
def test_peak_memory_per_input_pixel(big_files, fmt, how):
    """Decoding + resizing a 6000 x 6000 image for max_side=1000 (issue: ~36 bytes/pixel before)
    must peak at <= 16 bytes per input pixel: 8-bit decoding, resize reading uint8."""
    files, pixels = big_files
    res = run_python(MEMORY, files[fmt], how, pixels)
    print(f"peak memory, {fmt} via {how}: {res['bytes_per_pixel']:.2f} bytes per input pixel")
    assert np.isfinite(res["score"])
    assert res["bytes_per_pixel"] <= 16.0, res
