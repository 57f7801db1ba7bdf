"""ku's one size policy (ku/size_policy.py, docs/bad_input.md "Size policy").

* small images: every model family (MLSP end-to-end, APM, theme-ROI) scores images of 1..80 px by
  upscaling them to the backbone's minimum side -- in a fresh process and after a larger image
  was scored, through ``predict`` and ``__call__`` -- and the score equals the model's score on
  the upscaled image (never NaN, never a silent 0);
* large images: the pixel limit is read from the header before decoding, extreme strips are
  refused instead of upscaled, and decoding + resizing peak at <= 16 bytes per input pixel
  (``resource.getrusage`` in a fresh subprocess per measurement);
* the Python policy (``policy_size``, used by ``ku predict``) gives the sizes of the graph's.
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
SIZES = [1, 2, 3, 8, 16, 31, 32, 40, 75, 76, 80]


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


@pytest.mark.parametrize("fmt, how", [("png", "serving"), ("jpg", "predict")])
def test_peak_memory_per_input_pixel(big_files, fmt, how):
    """Decoding + resizing a 6000 x 6000 image for max_side=1000 (issue: ~36 bytes/pixel before)
    must peak at <= 16 bytes per input pixel: 8-bit decoding, resize reading uint8."""
    files, pixels = big_files
    res = run_python(MEMORY, files[fmt], how, pixels)
    print(f"peak memory, {fmt} via {how}: {res['bytes_per_pixel']:.2f} bytes per input pixel")
    assert np.isfinite(res["score"])
    assert res["bytes_per_pixel"] <= 16.0, res
