"""SavedModel export of the APM (Murray & Gordo 2017) and theme-ROI (Jia et al. 2019) families
(the SavedModel loads and runs in a process without ku, as for MLSP in test_export.py).

Both exports are loaded in ONE fresh interpreter that never imports ku; encoded images of three
sizes are scored there and compared with the in-process Keras model on the same pixels.
Small configurations: APM on VGG16 with random weights and a 16-unit FC layer; Jia's model with
random Inception-v3 weights, a 160 x 160 canvas, 73 x 73 ROI pooling and 5 themes.
"""
import json
import os
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf

from ku.data.images import read_image
from ku.export import export_saved_model, guess_family, make_scoring_module
from ku.metrics import dist_mean, dist_std

apm = pytest.importorskip("ku.models.apm")
theme_roi = pytest.importorskip("ku.models.theme_roi")

import procs  # noqa: E402
from test_export import assert_close, make_image  # noqa: E402  (shared helpers, no fixtures)

SIZES = [((80, 100), ".jpg"), ((130, 97), ".png"), ((150, 190), ".jpg")]  # the last > canvas
CANVAS = 160


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("family_images")
    paths = []
    for i, ((h, w), ext) in enumerate(SIZES):
        p = d / f"img{i}{ext}"
        assert cv2.imwrite(str(p), make_image(h, w, seed=40 + i)[..., ::-1])
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def apm_model():
    return apm.apm_model("vgg16", weights=None, variant="dist", fc_units=16)


@pytest.fixture(scope="module")
def jia_model():
    return theme_roi.theme_roi_model(weights=None, canvas=CANVAS, roi_size=73, theme=True,
                                     n_themes=5, n_bins=10, theme_dim=8, masked=True)


def apm_reference(model, img):
    """Eq. 2 normalisation of APM's raw output on the image alone (valid size = its size)."""
    p = np.asarray(model([img[None].astype(np.float32), np.array([img.shape[:2]], np.int32)],
                         training=False), np.float64)
    return p / p.sum(axis=1, keepdims=True)


def jia_reference(model, img, theme):
    """The image at the top-left of the zero canvas (scaled down to fit, area, as
    ku.data.canvas does), its valid size, its theme."""
    h, w = img.shape[:2]
    x = img.astype(np.float32)
    s = min(CANVAS / h, CANVAS / w, 1.0)
    if s < 1:
        h, w = int(round(h * s)), int(round(w * s))
        x = np.clip(tf.image.resize(x, (h, w), method="area").numpy(), 0, 255)
    canvas = np.zeros((1, CANVAS, CANVAS, 3), np.float32)
    canvas[0, :h, :w] = x
    return np.asarray(model([canvas, np.array([[h, w]], np.int32), np.array([theme], np.int32)],
                            training=False), np.float64)


@pytest.fixture(scope="module")
def exports(apm_model, jia_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("family_exports")
    return {
        "apm": export_saved_model(apm_model, d / "apm", family="apm"),
        "theme_roi": export_saved_model(jia_model, d / "theme_roi", family="theme_roi"),
    }


NO_KU = textwrap.dedent(r"""
    import json, sys
    import tensorflow as tf

    exports, files, themes, out_file = (json.loads(sys.argv[1]), json.loads(sys.argv[2]),
                                        json.loads(sys.argv[3]), sys.argv[4])
    data = tf.constant([open(p, "rb").read() for p in files])
    res = {}
    apm = tf.saved_model.load(exports["apm"])
    res["apm"] = {k: v.numpy().tolist() for k, v in
                  apm.signatures["serving_default"](images=data).items()}
    jia = tf.saved_model.load(exports["theme_roi"])
    res["jia_signatures"] = sorted(jia.signatures.keys())
    res["jia"] = {k: v.numpy().tolist() for k, v in jia.signatures["serving_default"](
        images=data, theme=tf.constant(themes, tf.int64)).items()}
    res["jia_no_theme"] = jia.signatures["serving_no_theme"](images=data)["distribution"].numpy().tolist()
    try:
        jia.signatures["serving_default"](images=data, theme=tf.constant(themes[:1], tf.int64))
        res["theme_error"] = None
    except Exception as e:  # noqa: BLE001
        res["theme_error"] = str(e)
    res["ku_imported"] = [m for m in sys.modules if m == "ku" or m.startswith("ku.")]
    json.dump(res, open(out_file, "w"))
""")


@pytest.fixture(scope="module")
def no_ku(exports, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("family_no_ku") / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = procs.run(
        procs.python("-c", NO_KU, json.dumps({k: str(v) for k, v in exports.items()}),
                     json.dumps([str(p) for p in images]), json.dumps([3, 0, 4]), str(out)),
        env=env, cwd=str(out.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_apm_export_without_ku(no_ku, apm_model, images):
    assert no_ku["ku_imported"] == []
    ref = np.concatenate([apm_reference(apm_model, read_image(p)) for p in images])
    assert_close(no_ku["apm"]["distribution"], ref)
    assert_close(no_ku["apm"]["mean_score"], dist_mean(ref))
    assert_close(no_ku["apm"]["std_score"], dist_std(ref))
    assert np.ptp(dist_mean(ref)) > 1e-3  # the images score differently


def test_theme_roi_export_without_ku(no_ku, jia_model, images):
    assert no_ku["jia_signatures"] == ["predict_images", "serving_default", "serving_no_theme"]
    themes = [3, 0, 4]
    ref = np.concatenate([jia_reference(jia_model, read_image(p), t)
                          for p, t in zip(images, themes)])
    assert_close(no_ku["jia"]["distribution"], ref)
    assert_close(no_ku["jia"]["mean_score"], dist_mean(ref))
    no_theme = np.concatenate([jia_reference(jia_model, read_image(p), 0) for p in images])
    assert_close(no_ku["jia_no_theme"], no_theme)
    assert np.abs(ref[0] - no_theme[0]).max() > 1e-4  # the theme matters
    assert "one per image" in no_ku["theme_error"]


def test_family_guess_and_apm_m_needs_fusion(apm_model, jia_model):
    assert guess_family(apm_model) == "apm" and guess_family(jia_model) == "theme_roi"
    m = apm.apm_model("vgg16", weights=None, variant="dist", fc_units=8, global_max_branch=True,
                      backbone_model=apm_model.get_layer("backbone"))
    with pytest.raises(ValueError, match="apm_inference_model"):
        make_scoring_module(m, family="apm")
    fused = apm.apm_inference_model(m, fusion_weight=0.3)
    module = make_scoring_module(fused, family="apm")
    img = make_image(70, 90, seed=3)
    out = module.predict_images(img[None].astype(np.float32))
    ref = np.asarray(fused([img[None].astype(np.float32), np.array([[70, 90]], np.int32)],
                           training=False)["distribution"])
    assert_close(out["distribution"].numpy(), ref)


NOT_IMAGES = {
    "tiff": lambda: cv2.imencode(".tiff", make_image(20, 20, seed=1))[1].tobytes(),
    "ppm": lambda: b"P6\n2 2\n255\n" + bytes(12),
    "random": lambda: np.random.default_rng(3).integers(0, 256, 200, dtype=np.uint8).tobytes(),
    "non_utf8": lambda: b"\xc3\x28\xff\xfe" * 10,
    "text": lambda: b"<html>404</html>",
    "empty": lambda: b"",
}
DAMAGED = {  # a known format whose decoding fails
    "truncated_jpeg": lambda: cv2.imencode(".jpg", make_image(60, 60, seed=4))[1].tobytes()[:700],
    "damaged_png": lambda: (lambda b: b[:37] + b"x" * 20 + b[57:])(
        cv2.imencode(".png", make_image(60, 60, seed=5))[1].tobytes()),
}


@pytest.mark.parametrize("family", ["mlsp", "apm", "theme_roi"])
def test_serving_refuses_non_images_naming_the_index(family, apm_model, jia_model):
    """Every family's serving graph answers bytes that are not an image with
    InvalidArgumentError naming images[i] (never UnicodeDecodeError from raw bytes)."""
    from test_export import toy_model

    model = {"mlsp": lambda: toy_model(name="toy_bytes"), "apm": lambda: apm_model,
             "theme_roi": lambda: jia_model}[family]()
    module = make_scoring_module(model, family=family)
    good = cv2.imencode(".png", make_image(80, 90, seed=2))[1].tobytes()
    extra = [tf.constant([0, 0, 0], tf.int64)] if module.takes_theme else []
    ok = module.predict_bytes(tf.constant([good, good, good]), *extra)
    assert np.isfinite(ok["mean_score"].numpy()).all()
    for name, make in NOT_IMAGES.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            module.predict_bytes(tf.constant([good, make(), good]), *extra)
        msg = str(e.value)
        assert "serving_default: images[1]" in msg and "is not an encoded JPEG, PNG" in msg, (name, msg)
    for name, make in DAMAGED.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            module.predict_bytes(tf.constant([good, make(), good]), *extra)
        msg = str(e.value)
        assert "serving_default: images[1]" in msg and "cannot be decoded" in msg, (name, msg)
