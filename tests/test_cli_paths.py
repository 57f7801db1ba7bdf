"""``ku export`` output folders, ``ku evaluate --ids`` counts and the missing-weights message
(ku/cli.py).

* ``ku export --out a/b/c`` creates the missing parent folders; it refuses only an existing
  non-empty target (unless ``--overwrite``) or a parent that cannot be a folder.
* ``ku evaluate --ids`` counts predictions left out by ``--ids`` as excluded, not as
  "predictions without label".
* Missing ImageNet weights: the error names the command line's flag ``--backbone-weights``.
"""
import numpy as np
import pandas as pd
import pytest

from ku import cli

from test_export import toy_model  # shared helper (no fixture)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("paths") / "toy.keras"
    toy_model(name="toy_paths").save(path)
    return path


def test_export_creates_parent_folders(toy_file, tmp_path, capsys):
    out = tmp_path / "exported" / "deeper" / "x"
    rc = cli.main(["export", "--model", str(toy_file), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out / "saved_model.pb").is_file()
    # an existing empty folder is fine; the now non-empty one needs --overwrite
    (tmp_path / "empty").mkdir()
    assert cli.main(["export", "--model", str(toy_file), "--out", str(tmp_path / "empty")]) == 0
    capsys.readouterr()
    assert cli.main(["export", "--model", str(toy_file), "--out", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(toy_file), "--out", str(out), "--overwrite"]) == 0


def test_export_refuses_a_file_as_parent(toy_file, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    rc = cli.main(["export", "--model", str(toy_file), "--out", str(tmp_path / "a_file" / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "argument --out" in err and "not a folder" in err, err
    assert not (tmp_path / "a_file" / "x").exists()


def test_evaluate_ids_are_not_predictions_without_label(tmp_path, capsys):
    ids = [f"{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    mos = rng.uniform(3, 7, 40)
    pd.DataFrame({"image_id": ids, "mos": mos}).to_csv(tmp_path / "labels.csv", index=False)
    preds = pd.DataFrame({"image_id": ids + ["extra1", "extra2"],
                          "mean_score": np.r_[mos + rng.normal(0, 0.3, 40), 5.0, 5.0]})
    preds.to_csv(tmp_path / "preds.csv", index=False)
    (tmp_path / "test.jpgl").write_text("\n".join(ids[:5]) + "\n")
    rc = cli.main(["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--labels",
                   str(tmp_path / "labels.csv"), "--ids", str(tmp_path / "test.jpgl")])
    out = capsys.readouterr().out
    assert rc == 0
    assert ("5 images evaluated (0 labelled images without prediction, 2 predictions without "
            "label, 35 excluded by --ids/--set)") in out, out
    rc = cli.main(["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--labels",
                   str(tmp_path / "labels.csv")])
    out = capsys.readouterr().out
    assert "40 images evaluated (0 labelled images without prediction, 2 predictions without " \
           "label)" in out, out


def test_missing_imagenet_weights_name_the_flag(tmp_path, monkeypatch, capsys):
    from ku.models import heads

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    head = heads.single_1fc(10048, output="distribution", n_bins=10)
    head.save_weights(tmp_path / "head.weights.h5")
    (tmp_path / "img").mkdir()
    from test_export import make_image
    import cv2

    cv2.imwrite(str(tmp_path / "img" / "a.png"), make_image(80, 90, 1))
    rc = cli.main(["predict", str(tmp_path / "img"), "--model", "mlsp-single1fc", "--backbone",
                   "inception_v3", "--head-weights", str(tmp_path / "head.weights.h5"), "--output",
                   "distribution", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "argument --backbone-weights" in err
    assert "pass --backbone-weights <path to the .h5 file>" in err, err
    assert "weights='" not in err
