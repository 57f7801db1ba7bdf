"""ku.export: SavedModel export and input validation of exported models (the checks of the
``ku.export`` module docstring).

The central test loads the export in a separate Python process that never imports ku and checks
its scores against in-process ``model.predict`` on the same pixels (decoded by ku.read_image, so
the in-graph decoder is checked against OpenCV as well).
"""
import json
import os
import subprocess
import sys
import textwrap

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from ku.data.images import read_image
from ku.export import (
    ExportFamily,
    decode_image_tf,
    export_saved_model,
    family_names,
    get_family,
    make_scoring_module,
    register_family,
    score_images,
)
from ku.metrics import dist_mean, dist_std
from ku.models import heads
from ku.models.mlsp import mlsp_end_to_end, mlsp_extractor

RTOL = 1e-5
SIZES = [((80, 100), ".jpg"), ((130, 97), ".png"), ((111, 123), ".jpg")]


def make_image(h, w, seed):
    """Smooth colour image (uint8 RGB) that differs clearly from the other seeds."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path, rgb, **kw):
    ok = cv2.imwrite(str(path), rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[-1] == 3 else rgb, **kw)
    assert ok, path
    return path


def assert_close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1e-3, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def run(model, x):
    """Eager in-process prediction (``model.predict`` would retrace for every image size; the
    numbers are the same)."""
    return np.asarray(model(np.asarray(x, np.float32), training=False))


def toy_model(output="distribution", name="toy"):
    """A tiny image model (0..255 RGB in, preprocessing inside, size-sensitive: strided conv +
    global max pooling) for the parts of the export that do not depend on the backbone."""
    from ku.layers import ImagePreprocessing

    img = keras.Input((None, None, 3), name="image")
    x = ImagePreprocessing("tf", name="preprocessing")(img)
    x = keras.layers.Conv2D(6, 3, strides=2, kernel_initializer=keras.initializers.RandomNormal(
        0, 1, seed=1), name="conv")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    units, act = (10, "softmax") if output == "distribution" else (1, None)
    out = keras.layers.Dense(units, activation=act, kernel_initializer=keras.initializers.RandomNormal(
        0, 0.2, seed=2), name="out")(x)
    return keras.Model(img, out, name=name)


@pytest.fixture(scope="module")
def toy():
    return toy_model()


@pytest.fixture(scope="module")
def extractor():
    # Inception-v3, random weights (no download), narrow MLSP features (10,048 channels); seeded,
    # so the sensitivity check below does not depend on which tests ran before in this process
    keras.utils.set_random_seed(0)
    return mlsp_extractor("inception_v3", weights=None, features="narrow")


@pytest.fixture(scope="module")
def dist_model(extractor):
    """End-to-end MLSP model with a 10-bin distribution head whose softmax is not flat."""
    head = heads.single_1fc(extractor.output.shape[-1], output="distribution", n_bins=10)
    dense = head.get_layer("head_out")
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(1)
    dense.set_weights([rng.normal(0, 1, kernel.shape).astype("float32") * 40.0
                       / np.sqrt(kernel.shape[0]), bias])
    return mlsp_end_to_end(extractor, head, name="mlsp_dist_test")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three encoded images of different sizes (JPEG, PNG, JPEG) on disk."""
    d = tmp_path_factory.mktemp("export_images")
    paths = []
    for i, ((h, w), ext) in enumerate(SIZES):
        kw = [cv2.IMWRITE_JPEG_QUALITY, 85] if ext == ".jpg" else []
        paths.append(write_image(d / f"img{i}{ext}", make_image(h, w, seed=10 + i), params=kw))
    return paths


@pytest.fixture(scope="module")
def exported(dist_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "mlsp_dist"
    return export_saved_model(dist_model, path, family="mlsp", score_range=(1, 10))


NO_KU_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import tensorflow as tf

    export_dir, image_files, out_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    loaded = tf.saved_model.load(export_dir)
    data = [open(p, "rb").read() for p in image_files]
    res = {"signatures": sorted(loaded.signatures.keys())}
    out = loaded.signatures["serving_default"](images=tf.constant(data))
    res.update({"bytes_" + k: v.numpy().tolist() for k, v in out.items()})
    same = np.stack([np.load(out_file + ".batch.npy")[i] for i in range(2)])
    out = loaded.signatures["predict_images"](images=tf.constant(same))
    res.update({"float_" + k: v.numpy().tolist() for k, v in out.items()})
    out = loaded.predict_images(same)  # the tf.function attribute works too
    res["attr_mean_score"] = out["mean_score"].numpy().tolist()
    errors = {}
    bad = {
        "rank": lambda: loaded.signatures["predict_images"](images=tf.zeros([80, 80, 3])),
        "channels": lambda: loaded.signatures["predict_images"](images=tf.zeros([1, 80, 80, 4])),
        "dtype": lambda: loaded.signatures["predict_images"](images=tf.zeros([1, 80, 80, 3], tf.uint8)),
        "range": lambda: loaded.signatures["predict_images"](images=tf.fill([1, 80, 80, 3], 300.0)),
        "bytes_rank": lambda: loaded.signatures["serving_default"](images=tf.constant(data[0])),
        "not_image": lambda: loaded.signatures["serving_default"](
            images=tf.constant([data[0], b"<html>not an image</html>"])),
    }
    for name, fn in bad.items():
        try:
            fn()
            errors[name] = None
        except Exception as e:  # noqa: BLE001
            errors[name] = type(e).__name__ + ": " + str(e)
    res["errors"] = errors
    res["ku_imported"] = [m for m in sys.modules if m == "ku" or m.startswith("ku.")]
    json.dump(res, open(out_file, "w"))
""")


@pytest.fixture(scope="module")
def no_ku_results(exported, images, tmp_path_factory):
    """Run NO_KU_SCRIPT in a fresh interpreter (neutral cwd, no PYTHONPATH); the script reports
    every ku module in sys.modules, which must be none."""
    out = tmp_path_factory.mktemp("no_ku") / "out.json"
    batch = np.stack([make_image(90, 77, seed=30), make_image(90, 77, seed=31)]).astype(np.float32)
    np.save(str(out) + ".batch.npy", batch)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-c", NO_KU_SCRIPT, str(exported), json.dumps([str(p) for p in images]),
         str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(out.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    res["batch"] = batch
    return res


def test_no_ku_process_scores_encoded_images_like_predict(no_ku_results, dist_model, images):
    assert no_ku_results["ku_imported"] == []
    assert no_ku_results["signatures"] == ["predict_images", "serving_default"]
    # reference: in-process model.predict on the pixels ku.read_image decodes (OpenCV)
    ref = np.concatenate([run(dist_model, read_image(p)[None]) for p in images])
    got = np.asarray(no_ku_results["bytes_distribution"], np.float32)
    assert got.shape == (3, 10)
    assert_close(got, ref)
    assert_close(no_ku_results["bytes_mean_score"], dist_mean(ref))
    assert_close(no_ku_results["bytes_std_score"], dist_std(ref))
    # the comparison can fail: the images' scores differ by far more than the tolerance (and
    # decoding the JPEGs with TF's default INTEGER_FAST DCT changes this model's distribution by
    # ~2e-3 relative, measured)
    means = dist_mean(ref)
    assert np.ptp(means) > 100 * RTOL * np.abs(means).max()
    assert np.abs(ref - 0.1).max() > 0.01  # not a flat softmax


def test_no_ku_process_float_signature(no_ku_results, dist_model):
    batch = no_ku_results["batch"]
    ref = run(dist_model, batch)
    assert_close(no_ku_results["float_distribution"], ref)
    assert_close(no_ku_results["float_mean_score"], dist_mean(ref))
    assert_close(no_ku_results["float_std_score"], dist_std(ref))
    assert_close(no_ku_results["attr_mean_score"], dist_mean(ref))


@pytest.mark.parametrize("case, expected", [
    ("rank", "images must be a float32 tensor [batch, height, width, 3] of RGB values in 0..255; "
             "got shape] [80 80 3]"),
    ("channels", "got shape] [1 80 80 4]"),
    ("dtype", "expected to be a float tensor but is a uint8 tensor"),
    ("range", "[max] [300]"),
    ("bytes_rank", "images must be a tf.string vector [batch]"),
    ("not_image", "serving_default: images[1]] [is not an encoded JPEG, PNG, GIF, BMP or WebP file"),
])
def test_no_ku_process_input_errors_are_clear(no_ku_results, case, expected):
    """Wrong dtype / rank / channels / content -> a message naming the expected
    input, raised at the signature boundary (not deep inside the backbone)."""
    err = no_ku_results["errors"][case]
    assert err is not None, f"{case}: no error raised"
    assert expected in err, err
    assert "InvalidArgumentError" in err
    if case != "dtype":
        assert "predict_images" in err or "serving_default" in err


def test_export_metadata_and_refuses_non_empty_folder(exported, dist_model):
    meta = json.loads((exported / "assets.extra" / "ku_export.json").read_text())
    assert meta["family"] == "mlsp" and meta["n_bins"] == 10
    assert meta["bin_values"] == list(np.linspace(1, 10, 10))
    assert meta["outputs"] == ["mean_score", "std_score", "distribution"]
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        export_saved_model(dist_model, exported)


def test_in_graph_decoder_equals_read_image(tmp_path):
    """decode_image_tf == ku.read_image for JPEG (incl. grey), 8/16-bit PNG, grey, RGBA, BMP,
    WebP."""
    rng = np.random.default_rng(5)
    rgb = make_image(37, 45, seed=5)
    grey = rgb[..., 0]
    rgba = np.dstack([rgb[..., ::-1], rng.integers(0, 256, size=(37, 45), dtype=np.uint8)])
    files = {
        "q90.jpg": (rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "grey.jpg": (grey, []),
        "rgb.png": (rgb[..., ::-1], []),
        "grey.png": (grey, []),
        "rgba.png": (rgba, []),
        "rgb16.png": ((rgb[..., ::-1].astype(np.uint16) * 257
                       + rng.integers(0, 257, size=rgb.shape)).astype(np.uint16), []),
        "rgb.bmp": (rgb[..., ::-1], []),
        "rgb.webp": (rgb[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 90]),
    }
    decode = tf.function(decode_image_tf)
    for name, (arr, params) in files.items():
        path = tmp_path / name
        assert cv2.imwrite(str(path), arr, params)
        want = read_image(path)
        got = decode(tf.constant(path.read_bytes())).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=name)


def test_mos_model_has_mean_only():
    """A MOS model (one linear unit, like the Hosu et al. 2019 heads trained with MSE, §3.3)
    exports mean_score only: there is no distribution to take a standard deviation of."""
    mos_model = toy_model(output="mos", name="toy_mos")
    module = make_scoring_module(mos_model, family="mlsp")
    x = np.stack([make_image(84, 90, seed=3), make_image(84, 90, seed=4)]).astype(np.float32)
    out = module.predict_images(x)
    assert sorted(out) == ["mean_score"]
    assert_close(out["mean_score"].numpy(), run(mos_model, x)[:, 0])
    assert module.metadata()["outputs"] == ["mean_score"]
    assert module.metadata()["n_bins"] is None


def test_size_policy(toy):
    """Below min_side (75 for MLSP): bilinear upscale, aspect kept; above max_side: area resize;
    min_side wins where both cannot hold; small_images='error' refuses with a clear message."""
    small = make_image(20, 30, seed=7).astype(np.float32)
    big = make_image(160, 300, seed=8)
    wide = make_image(30, 400, seed=9)
    module = make_scoring_module(toy, family="mlsp", max_side=200)
    out = score_images(module, [small, big, wide, make_image(80, 90, seed=10)])
    resize = lambda im, hw, m: tf.image.resize(np.asarray(im, np.float32)[None], hw, method=m)
    assert_close(out["distribution"][0], run(toy, resize(small, (75, 112), "bilinear"))[0])  # x3.75
    assert_close(out["distribution"][1], run(toy, resize(big, (107, 200), "area"))[0])  # x2/3
    # 30 x 400 cannot have both sides in 75..200: the minimum side (the backbone's limit) wins
    assert_close(out["distribution"][2], run(toy, resize(wide, (75, 1000), "bilinear"))[0])
    assert_close(out["distribution"][3], run(toy, make_image(80, 90, seed=10)[None])[0])  # as is
    # the references differ from plain (unresized) predictions, so the test can fail
    assert np.abs(run(toy, small[None])[0] - out["distribution"][0]).max() > 1e-3
    strict = make_scoring_module(toy, family="mlsp", small_images="error")
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 75 x 75 pixels"):
        strict.predict_images(small[None])
    none = make_scoring_module(toy, family="mlsp", min_side=None)
    assert_close(none.predict_images(small[None])["distribution"].numpy(), run(toy, small[None]))


def test_score_images_validates_arguments(toy):
    module = make_scoring_module(toy)
    good = make_image(80, 80, seed=1)
    with pytest.raises(ValueError, match=r"images\[1\] must have shape \(height, width, 3\)"):
        score_images(module, [good, good[..., :2]])
    with pytest.raises(ValueError, match=r"images\[0\] must be a numeric array"):
        score_images(module, [np.array([["a"]])])
    with pytest.raises(ValueError, match=r"images\[0\] must hold RGB values in 0..255"):
        score_images(module, good.astype(np.float32) * 2)
    with pytest.raises(ValueError, match=r"images\[0\] contains NaN"):
        score_images(module, np.full((80, 80, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="images must be an"):
        score_images(module, "photo.jpg")
    with pytest.raises(ValueError, match="themes given"):
        score_images(module, good, themes=[1])
    with pytest.raises(ValueError, match="images is empty"):
        score_images(module, [])
    out = score_images(toy, good, family="mlsp")  # one (H, W, 3) uint8 image, a Keras model
    assert out["distribution"].shape == (1, 10)
    assert_close(out["distribution"], run(toy, good[None]))


def test_export_arguments_are_checked(dist_model, tmp_path):
    with pytest.raises(ValueError, match="family must be one of"):
        export_saved_model(dist_model, tmp_path / "a", family="nima")
    with pytest.raises(ValueError, match="n_bins=7 but model"):
        export_saved_model(dist_model, tmp_path / "b", n_bins=7)
    with pytest.raises(ValueError, match="score_range must be increasing"):
        make_scoring_module(dist_model, score_range=(10, 1))
    with pytest.raises(ValueError, match="small_images must be one of"):
        make_scoring_module(dist_model, small_images="pad")
    with pytest.raises(ValueError, match="max_side=50 is smaller than min_side=75"):
        make_scoring_module(dist_model, max_side=50)
    with pytest.raises(ValueError, match="model must be a keras.Model"):
        make_scoring_module("model.keras")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_family_registry():
    assert {"mlsp", "apm", "theme_roi"} <= set(family_names())
    assert get_family("theme-roi").takes_theme and not get_family("mlsp").takes_theme
    with pytest.raises(ValueError, match="already registered"):
        register_family(ExportFamily("mlsp", call=lambda *a: None, output_width=lambda m: 1))
    with pytest.raises(ValueError, match="family must be one of"):
        get_family("nope")


def test_theme_signatures_with_a_toy_theme_model(tmp_path):
    """The theme plumbing (serving_default with theme, serving_no_theme, checks) on a tiny
    registered-layer-free model: image mean colour + theme embedding -> 5-bin softmax."""
    img = keras.Input((None, None, 3), name="image")
    sizes = keras.Input((2,), dtype="int32", name="valid_sizes")
    theme = keras.Input((), dtype="int64", name="theme")
    pooled = keras.layers.GlobalAveragePooling2D()(img)
    emb = keras.layers.Flatten()(keras.layers.Embedding(4, 3)(keras.layers.Reshape((1,))(theme)))
    out = keras.layers.Dense(5, activation="softmax")(keras.layers.Concatenate()([pooled, emb]))
    toy = keras.Model([img, sizes, theme], out, name="toy_theme")
    module = make_scoring_module(toy, family="theme_roi", min_side=None)
    x = np.stack([make_image(16, 20, seed=s) for s in (1, 2)]).astype(np.float32)
    th = np.array([3, 0], np.int64)
    out = module.predict_images(x, th)
    ref = toy.predict([x, np.array([[16, 20]] * 2, np.int32), th], verbose=0)
    assert_close(out["distribution"].numpy(), ref)
    enc = [tf.io.encode_png(make_image(16, 20, seed=s)).numpy() for s in (1, 2)]
    assert_close(module.predict_bytes(tf.constant(enc), tf.constant(th))["distribution"].numpy(), ref)
    assert_close(module.predict_bytes_no_theme(tf.constant(enc))["distribution"].numpy(),
                 toy.predict([x, np.array([[16, 20]] * 2, np.int32), np.zeros(2, np.int64)],
                             verbose=0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one per image"):
        module.predict_bytes(tf.constant(enc), tf.constant([1], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="theme indices >= 0"):
        module.predict_images(x, tf.constant([1, -2], tf.int64))
    assert sorted(module.signatures()) == ["predict_images", "serving_default", "serving_no_theme"]


def test_keras_file_reloads_after_import_ku_without_custom_objects(dist_model, tmp_path):
    """``.keras`` files of the MLSP end-to-end model reload with
    ``keras.models.load_model`` after a plain ``import ku`` (fresh interpreter)."""
    path = tmp_path / "mlsp.keras"
    dist_model.save(path)
    x = make_image(81, 93, seed=9)[None].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import numpy as np, keras
        import ku
        m = keras.models.load_model({str(path)!r})
        np.save({str(tmp_path / 'y.npy')!r}, np.asarray(m(np.load({str(tmp_path / 'x.npy')!r}))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, (
        "keras.models.load_model failed after `import ku` (ku/__init__.py must import the modules "
        "that register ku's Keras objects):\n" + proc.stderr[-1500:])
    assert_close(np.load(tmp_path / "y.npy"), run(dist_model, x))


def test_export_records_the_backbone_seed(tmp_path):
    """``ku_export.json`` names the backbone's seed: from ``model.ku_seed`` (what
    ``build_backbone`` / ``mlsp_extractor`` / ``ku predict`` set), or given explicitly."""
    model = toy_model(name="seeded_toy")
    model.ku_seed, model.ku_weights = 5, "random"
    meta = json.loads((export_saved_model(model, tmp_path / "a") / "assets.extra"
                       / "ku_export.json").read_text())
    assert meta["backbone_seed"] == 5 and meta["backbone_weights"] == "random"
    meta = json.loads((export_saved_model(toy_model(), tmp_path / "b", backbone_seed=None)
                       / "assets.extra" / "ku_export.json").read_text())
    assert meta["backbone_seed"] is None and meta["backbone_weights"] is None
    with pytest.raises(ValueError, match="backbone_seed"):
        export_saved_model(model, tmp_path / "c", backbone_seed="3")


def test_cli_export_max_pixels_and_seed_record(tmp_path, toy):
    """``ku export --max-pixels N``: the export refuses images over N pixels from the header
    (0: no limit); a ``.keras`` model's backbone record (``<stem>.backbone.json``) gives the
    seed written to the export's metadata."""
    from ku import cli
    from ku.backbones import save_backbone_record

    toy.save(tmp_path / "toy.keras")
    save_backbone_record(tmp_path / "toy.keras", {"backbone": "toy", "weights": "random",
                                                  "backbone_seed": 7})
    assert cli.main(["export", "--model", str(tmp_path / "toy.keras"), "--out",
                     str(tmp_path / "limited"), "--max-pixels", "1000"]) == 0
    meta = json.loads((tmp_path / "limited" / "assets.extra" / "ku_export.json").read_text())
    assert meta["max_pixels"] == 1000 and meta["backbone_seed"] == 7
    serve = tf.saved_model.load(str(tmp_path / "limited")).signatures["serving_default"]
    small = tf.io.encode_png(make_image(30, 30, seed=1))  # 900 pixels: scored
    assert np.isfinite(serve(images=tf.stack([small]))["mean_score"].numpy()).all()
    big = tf.io.encode_png(make_image(40, 40, seed=2))  # 1,600 pixels: refused
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels=1,000"):
        serve(images=tf.stack([big]))
    assert cli.main(["export", "--model", str(tmp_path / "toy.keras"), "--out",
                     str(tmp_path / "unlimited"), "--max-pixels", "0"]) == 0
    meta = json.loads((tmp_path / "unlimited" / "assets.extra" / "ku_export.json").read_text())
    assert meta["max_pixels"] is None
    assert cli.main(["export", "--model", str(tmp_path / "toy.keras"), "--out",  # argparse error
                     str(tmp_path / "x"), "--max-pixels", "-1"]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(cli.UsageError, match="--backbone-seed"):
        cli.load_model(cli.build_parser().parse_args(
            ["export", "--model", str(tmp_path / "toy.keras"), "--out", str(tmp_path / "y"),
             "--backbone-seed", "1"]))
