"""End-to-end Hosu et al. 2019 pipeline on a tiny demo set, and the scripts' command lines."""
import os
from pathlib import Path

import numpy as np
import pytest

from ku.data.demo import load_demo
from ku.pipelines import mlsp as pipeline
from ku.training import paper_schedule

import procs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_ids(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return load_demo(n_images=24, seed=1, root=root, val_fraction=0.25, image_scale=0.5)  # smaller images


def _check_precise_batch_norm(ids, res):
    """precise_bn=True (the default): the saved head's BatchNormalization statistics are the
    population statistics of the training features (recalibrating the saved head again changes
    nothing), not the moving averages of a two-epoch run (which recalibration would change a lot)."""
    import keras

    from ku.data.generators import FeatureSequence
    from ku.training import recalibrate_batch_norm

    head = keras.models.load_model(res.run_dir / "head.keras")
    bns = [la for la in head.layers if isinstance(la, keras.layers.BatchNormalization)]
    saved = [(la.moving_mean.numpy().copy(), la.moving_variance.numpy().copy()) for la in bns]
    train = ids[ids["set"] == "training"]
    seq = FeatureSequence(res.store_path, train, train["mos"].to_numpy("float32"), batch_size=8,
                          augmentation="random", seed=1, shuffle=True)  # run_mlsp's draw (seed + 1)
    try:
        assert recalibrate_batch_norm(head, seq) == len(bns) >= 3
    finally:
        seq.close()
    for la, (mean, var) in zip(bns, saved):
        np.testing.assert_allclose(la.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(la.moving_variance.numpy(), var, rtol=1e-4, atol=1e-6)
    # the moving variances after 2 short epochs would still be ~1 (momentum 0.99 keeps ~96% of the start)
    assert np.abs(saved[0][1] - 1.0).max() > 0.1


def test_run_mlsp_end_to_end_and_resume(tiny_ids, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    kw = dict(backbone="inception_v3", backbone_weights=None, features="narrow", head="single3fc",
              batch_size=8, max_epochs=2, verbose=0, echo=lambda *a: None)
    res = pipeline.run_mlsp(tiny_ids, tmp_path, schedule=paper_schedule(), **kw)
    _check_precise_batch_norm(tiny_ids, res)
    n_test = int((tiny_ids["set"] == "test").sum())
    assert len(res.y_pred) == n_test and np.isfinite(res.y_pred).all()
    np.testing.assert_allclose(res.y_true, tiny_ids.loc[tiny_ids.set == "test", "mos"])
    assert list(res.table["source"])[0] == "this run"
    assert (res.run_dir / "history.csv").is_file() and (res.run_dir / "head.keras").is_file()
    # The head starts at the training mean (bias init), so predictions sit near the data's scale.
    assert abs(np.mean(res.y_pred) - tiny_ids.loc[tiny_ids.set == "training", "mos"].mean()) < 2
    # A second call resumes: the store is complete (nothing re-extracted), training is finished.
    # It uses the deprecated keywords weights= / pooling=: same store and run, and a warning each.
    keras.utils.set_random_seed(0)
    old_kw = {k: v for k, v in kw.items() if k not in ("backbone_weights", "features")}
    with pytest.warns(DeprecationWarning) as caught:
        res2 = pipeline.run_mlsp(tiny_ids, tmp_path, schedule=paper_schedule(), weights=None,
                                 pooling="narrow", **old_kw)
    said = " ".join(str(w.message) for w in caught)
    assert "use backbone_weights=" in said and "use features=" in said, said
    assert res2.run_dir == res.run_dir and res2.store_path == res.store_path
    np.testing.assert_allclose(res2.y_pred, res.y_pred, rtol=1e-5, atol=1e-5)


def test_build_head_rejects_wrong_features():
    with pytest.raises(ValueError, match="wide features"):
        pipeline.build_head("pool3fc", (16928,))
    with pytest.raises(ValueError, match="narrow features"):
        pipeline.build_head("single3fc", (5, 5, 32))
    with pytest.raises(ValueError, match="unknown head"):
        pipeline.build_head("nope", (10,))


def test_resolve_weights_auto_announces_random_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("ku.backbones._download", _fail_download)
    said = []
    assert pipeline.resolve_weights("inception_v3", "auto", echo=said.append) is None
    assert "RANDOMLY INITIALISED" in said[0] and "inception_v3" in said[0]
    assert pipeline.resolve_weights("inception_v3", "none") is None


def _fail_download(*args, **kwargs):
    raise OSError("no network in this test")


def _script(name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return procs.run(procs.python(ROOT / "scripts" / name, *args), env=env, cwd=ROOT)


@pytest.mark.parametrize("name", ["train_mlsp.py", "train_pool3fc.py", "extract_mlsp.py",
                                  "predict_mlsp.py"])
def test_scripts_help(name):
    r = _script(name, "--helpfull" if name == "train_pool3fc.py" else "--help")
    assert r.returncode in (0, 1), r.stderr[-2000:]  # absl exits 1 after printing --help
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "--ava_root" in r.stdout or "--head_path" in r.stdout


def test_script_reports_missing_folder(tmp_path):
    r = _script("train_mlsp.py", f"--ava_root={tmp_path / 'nope'}")
    assert r.returncode != 0
    assert "no such folder" in r.stderr and "nope" in r.stderr
