"""ku.backbones: MLSP taps (Hosu 2019 §3.1), preprocessing inside the model, weight loading."""
import functools
import time

import h5py
import keras
import numpy as np
import pytest

from ku import backbones as bb
from ku.backbones import (
    BACKBONES,
    WeightsUnavailableError,
    build_backbone,
    mlsp_block_channels,
    mlsp_tap_names,
)
from ku.layers import ImagePreprocessing


@functools.lru_cache(maxsize=None)
def cached_backbone(name):
    """One randomly initialised backbone per name and test session (shared with
    tests/test_mlsp_model.py, which imports this function)."""
    return build_backbone(name, weights=None)


@pytest.fixture(scope="session")
def irnv2():
    return cached_backbone("inception_resnet_v2")


@pytest.fixture(scope="session")
def iv3():
    return cached_backbone("inception_v3")


def _no_network(*args, **kwargs):
    raise AssertionError("no download may be attempted here")


def _weights_equal(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


# ---------------------------------------------------------------------------------------------
# Taps
# ---------------------------------------------------------------------------------------------
def test_irnv2_taps(irnv2):
    names = mlsp_tap_names("inception_resnet_v2", irnv2)
    assert names == [layer.name for layer in irnv2.layers if "mixed" in layer.name]
    assert len(names) == 43
    assert names[0] == "mixed_5b" and names[-1] == "block8_10_mixed"
    assert "conv_7b" not in names
    channels = [irnv2.get_layer(n).output.shape[-1] for n in names]
    assert sum(channels) == 16928
    assert channels == mlsp_block_channels("inception_resnet_v2")
    assert mlsp_tap_names("inception_resnet_v2") == names  # static list = model scan


def test_iv3_taps_exclude_inner_concats(iv3):
    names = mlsp_tap_names("inception_v3", iv3)
    assert names == [f"mixed{i}" for i in range(11)]
    layer_names = [layer.name for layer in iv3.layers]
    assert "mixed9_0" in layer_names and "mixed9_1" in layer_names
    assert "mixed9_0" not in names and "mixed9_1" not in names
    assert len([n for n in layer_names if "mixed" in n]) == 13  # why a substring filter is wrong
    channels = [iv3.get_layer(n).output.shape[-1] for n in names]
    assert sum(channels) == 10048
    assert channels == mlsp_block_channels("inception_v3")


def test_taps_in_model_order(irnv2):
    order = {layer.name: i for i, layer in enumerate(irnv2.layers)}
    idx = [order[n] for n in mlsp_tap_names("inception_resnet_v2")]
    assert idx == sorted(idx)


def test_tap_names_errors(iv3):
    with pytest.raises(ValueError, match="Unknown backbone"):
        mlsp_tap_names("alexnet")
    with pytest.raises(ValueError, match="InceptionResNetV2"):
        mlsp_tap_names("inception_resnet_v2", iv3)


# ---------------------------------------------------------------------------------------------
# Structure and registry
# ---------------------------------------------------------------------------------------------
def test_backbone_contains_preprocessing(iv3, irnv2):
    for model, name in [(iv3, "inception_v3"), (irnv2, "inception_resnet_v2")]:
        assert model.name == name
        assert isinstance(model.layers[1], ImagePreprocessing)
        assert model.layers[1].mode == BACKBONES[name].preprocessing == "tf"
        assert tuple(model.input.shape) == (None, None, None, 3)
        assert model.output.shape[-1] == {"inception_v3": 2048, "inception_resnet_v2": 1536}[name]


def test_backbone_output_equals_application_on_preprocessed_input(iv3):
    # The wrapped graph computes exactly the keras.applications graph on preprocess_input(x).
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 80, 90, 3)).astype(np.float32)
    inner = keras.Model(iv3.layers[1].output, iv3.output)
    ref = inner(keras.applications.inception_v3.preprocess_input(x.copy()))
    np.testing.assert_array_equal(np.asarray(iv3(x)), np.asarray(ref))


def test_registry_matches_keras_sources():
    from keras.src.applications import inception_resnet_v2, inception_v3, resnet, vgg16

    irn = BACKBONES["inception_resnet_v2"]
    assert irn.weights_url == inception_resnet_v2.BASE_WEIGHT_URL + irn.weights_file
    assert BACKBONES["inception_v3"].weights_url == inception_v3.WEIGHTS_PATH_NO_TOP
    assert BACKBONES["vgg16"].weights_url == vgg16.WEIGHTS_PATH_NO_TOP
    for name in ["resnet50", "resnet101"]:
        spec = BACKBONES[name]
        assert spec.weights_url == resnet.BASE_WEIGHTS_PATH + spec.weights_file
        assert spec.weights_md5 == resnet.WEIGHTS_HASHES[name][1]
    for spec in BACKBONES.values():
        assert spec.weights_url.endswith("/" + spec.weights_file)
        assert len(spec.taps) == len(spec.block_channels)
    assert sum(mlsp_block_channels("inception_resnet_v2")) == 16928
    assert sum(mlsp_block_channels("inception_v3")) == 10048


def test_build_backbone_bad_args():
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_backbone("alexnet", weights=None)
    with pytest.raises(ValueError, match="75"):
        build_backbone("inception_v3", weights=None, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="weights"):
        build_backbone("inception_v3", weights=3)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def test_imagenet_weights_unavailable_offline(tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    monkeypatch.setattr(bb.urllib.request, "urlopen", offline)
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("inception_v3", weights="imagenet")
    assert time.monotonic() - t0 < 5
    err = info.value
    assert isinstance(err, RuntimeError)
    msg = str(err)
    fname = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert fname in msg and str(tmp_path / "kh" / "models") in msg
    assert BACKBONES["inception_v3"].weights_url in msg and "network unreachable" in msg
    assert err.file_name == fname and err.folder == str(tmp_path / "kh" / "models")
    assert not list((tmp_path / "kh" / "models").glob("*"))  # no partial file left behind


def test_unreachable_url_times_out_quickly(tmp_path, monkeypatch):
    # The real network stack (no monkeypatched urlopen), pointed at a non-routable address:
    # the attempt must end within the timeout instead of hanging, and nothing is downloaded
    # even on a machine with internet access.
    import dataclasses

    spec = BACKBONES["inception_v3"]
    monkeypatch.setitem(
        BACKBONES,
        "inception_v3",
        dataclasses.replace(spec, weights_url="http://10.255.255.1/" + spec.weights_file),
    )
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=spec.weights_file):
        bb.imagenet_weights_path("inception_v3", timeout=2.0)
    assert time.monotonic() - t0 < 10


def test_imagenet_weights_download_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(bb.urllib.request, "urlopen", _no_network)
    with pytest.raises(WeightsUnavailableError, match="download disabled"):
        build_backbone("inception_resnet_v2", weights="imagenet", download=False)


def test_imagenet_weights_from_cache_without_download(iv3, tmp_path, monkeypatch):
    # A keras.applications-style (legacy layout) .h5 in $KERAS_HOME/models is used as is.
    from keras.src.legacy.saving import legacy_h5_format

    spec = BACKBONES["inception_v3"]
    (tmp_path / "models").mkdir()
    with h5py.File(tmp_path / "models" / spec.weights_file, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, iv3)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(bb.urllib.request, "urlopen", _no_network)
    model = build_backbone("inception_v3", weights="imagenet")
    assert _weights_equal(model, iv3)


def test_weights_from_path(iv3, tmp_path):
    path = tmp_path / "iv3.weights.h5"
    iv3.save_weights(path)
    model = build_backbone("inception_v3", weights=path)
    assert _weights_equal(model, iv3)
    x = np.random.default_rng(1).uniform(0, 255, size=(1, 75, 80, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(iv3(x)))


def test_weights_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        build_backbone("inception_v3", weights=tmp_path / "missing.weights.h5")
    bad = tmp_path / "not_weights.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="not_weights.txt"):
        build_backbone("inception_v3", weights=bad)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="corrupt.h5"):
        build_backbone("inception_v3", weights=corrupt)


# ---------------------------------------------------------------------------------------------
# seeded random backbones and the backbone check
# ---------------------------------------------------------------------------------------------
def test_random_backbone_is_seeded_and_leaves_global_state_alone(iv3):
    import random

    state = random.getstate()
    again = build_backbone("inception_v3", weights=None)  # default seed, like iv3
    assert random.getstate() == state
    assert iv3.ku_seed == bb.DEFAULT_SEED and iv3.ku_weights == "random"
    assert bb.weights_fingerprint(again) == bb.weights_fingerprint(iv3)
    other = build_backbone("inception_v3", weights=None, seed=1)
    assert bb.weights_fingerprint(other) != bb.weights_fingerprint(iv3)


def test_same_seed_same_backbone_in_a_new_process(iv3):
    """A fresh interpreter whose global random states were used differently builds the same
    random Inception-v3 (same weights, hence the same features)."""
    import subprocess
    import sys

    code = ("import random, keras; keras.utils.set_random_seed(123); random.random()\n"
            "from ku.backbones import build_backbone, weights_fingerprint\n"
            "print(weights_fingerprint(build_backbone('inception_v3', weights=None)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == bb.weights_fingerprint(iv3)


def test_head_refuses_another_backbone(iv3):
    from ku.extraction import extractor_fingerprint
    from ku.models.mlsp import mlsp_extractor

    ext = mlsp_extractor("inception_v3", features="narrow", backbone_model=iv3)
    # the fingerprint the feature store records is the one checked
    assert extractor_fingerprint(ext) == bb.weights_fingerprint(ext)
    attrs = {"backbone": "inception_v3", "weights": "random", "backbone_seed": 0,
             "extractor_sha256": extractor_fingerprint(ext)}
    bb.check_same_backbone(attrs, ext)  # same backbone: fine
    other = mlsp_extractor("inception_v3", features="narrow",
                           backbone_model=build_backbone("inception_v3", weights=None, seed=7))
    with pytest.raises(bb.BackboneMismatchError, match=r"weights=None, seed=0"):
        bb.check_same_backbone(attrs, other)


# ---------------------------------------------------------------------------------------------
# the seed is recorded with the store, the head and the CLI's random backbone
# ---------------------------------------------------------------------------------------------
SEED = 3


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory, iv3):
    """Narrow MLSP features of one small image from a random Inception-v3 with seed 3, its
    store attributes and a Single-1FC head saved with the store's backbone record."""
    import cv2

    from ku.extraction import extract_features
    from ku.models.heads import single_1fc
    from ku.models.mlsp import mlsp_extractor

    d = tmp_path_factory.mktemp("seeded")
    img = np.random.default_rng(0).integers(0, 255, (96, 104, 3), dtype=np.uint8)
    cv2.imwrite(str(d / "a.png"), img)
    seeded = mlsp_extractor("inception_v3", features="narrow",
                            backbone_model=build_backbone("inception_v3", weights=None, seed=SEED))
    assert bb.backbone_seed(seeded) == SEED and seeded.ku_weights == "random"
    report = extract_features({"a": str(d / "a.png")}, d / "feats.h5", seeded,
                              augmentations=["original"], progress=False,
                              attrs={"backbone": "inception_v3", "weights": "random"})
    assert report.n_failed == 0
    from ku.data.store import FeatureStore

    with FeatureStore(d / "feats.h5") as s:
        attrs = dict(s.attrs)
    head = single_1fc(10048)
    head.save(d / "head.keras")
    record_path = bb.save_backbone_record(d / "head.keras", attrs)
    return {"dir": d, "attrs": attrs, "extractor": seeded, "record_path": record_path}


def test_store_records_the_backbone_seed(seeded_store, iv3):
    from ku.models.mlsp import mlsp_extractor

    attrs = seeded_store["attrs"]
    assert int(attrs["backbone_seed"]) == SEED
    bb.check_same_backbone(attrs, seeded_store["extractor"])  # the same seeded backbone: fine
    default = mlsp_extractor("inception_v3", features="narrow", backbone_model=iv3)  # seed 0
    with pytest.raises(bb.BackboneMismatchError) as e:
        bb.check_same_backbone(attrs, default, what="the test head")
    msg = str(e.value)
    assert f"seed {SEED}" in msg and f"--backbone-seed {SEED}" in msg and "seed 0," in msg, msg


def test_backbone_record_next_to_the_head(seeded_store, tmp_path):
    path = seeded_store["record_path"]
    assert path == seeded_store["dir"] / "head.backbone.json"
    assert bb.backbone_record_path(tmp_path / "best.weights.h5").name == "best.backbone.json"
    record = bb.load_backbone_record(seeded_store["dir"] / "head.keras")
    assert record == {"backbone": "inception_v3", "weights": "random", "backbone_seed": SEED,
                      "extractor_sha256": seeded_store["attrs"]["extractor_sha256"]}
    assert bb.load_backbone_record(tmp_path / "other.keras") is None
    (tmp_path / "bad.backbone.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.backbone.json"):
        bb.load_backbone_record(tmp_path / "bad.keras")


def _cli_args(*argv):
    from ku import cli

    return cli.build_parser().parse_args(["predict", "x.jpg", *argv])


def test_cli_random_backbone_takes_the_recorded_seed(seeded_store):
    """``--backbone-weights none`` with a head whose record says seed 3 builds the seed-3
    backbone (the head's check passes); another ``--backbone-seed`` is refused naming seed 3."""
    from ku import cli

    head = str(seeded_store["dir"] / "head.keras")
    common = ["--model", "mlsp-single1fc", "--backbone", "inception_v3", "--head-weights", head,
              "--backbone-weights", "none", "-q"]
    model, family = cli.load_model(_cli_args(*common))
    assert family == "mlsp" and model.ku_seed == SEED and model.ku_weights == "random"
    with pytest.raises(cli.UsageError) as e:
        cli.load_model(_cli_args(*common, "--backbone-seed", "0"))
    assert "--backbone-seed" in e.value.argument and f"--backbone-seed {SEED}" in str(e.value)
    with pytest.raises(cli.UsageError, match="only applies with --backbone-weights none"):
        cli.load_model(_cli_args("--model", "mlsp-single1fc", "--backbone", "inception_v3",
                                 "--head-weights", head, "--backbone-weights", str(head),
                                 "--backbone-seed", "1"))
