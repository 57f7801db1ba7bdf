"""The ``ku`` command line (ku/cli.py): predict / evaluate / export, exit codes,
skip-and-report, no network, clear argument errors (docs/bad_input.md).

Commands run in process through ``ku.cli.main(argv)`` (returns the exit status); one test runs
``python -m ku.cli`` in a subprocess. The MLSP model (Inception-v3, random weights, narrow MLSP +
a 10-bin Single-1FC head) is built once per module and scored through a short model name; the
folder / export tests use a tiny image model saved as ``.keras`` (the MLSP export itself is
tested in tests/test_export.py).
"""
import json
import os
import socket
import urllib.request

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from ku import cli, metrics
from ku.backbones import build_backbone
from ku.data.images import read_image
from ku.models import heads
from ku.models.mlsp import mlsp_end_to_end, mlsp_extractor

import procs
from test_export import make_image, run, toy_model  # shared helpers (no fixtures)

RTOL = 1e-5


def assert_close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1e-3, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The model files: a whole .keras model, backbone weights, head weights (Keras 3 and the
    Keras 2 layout of the released ava-mlsp files), and the in-process model."""
    d = tmp_path_factory.mktemp("cli_model")
    backbone = build_backbone("inception_v3", weights=None)
    backbone.save_weights(d / "backbone.weights.h5")
    extractor = mlsp_extractor("inception_v3", features="narrow", backbone_model=backbone)
    head = heads.single_1fc(extractor.output.shape[-1], output="distribution", n_bins=10)
    dense = head.get_layer("head_out")
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(1)
    dense.set_weights([rng.normal(0, 40 / np.sqrt(kernel.shape[0]), kernel.shape).astype("float32"),
                       rng.normal(0, 0.5, bias.shape).astype("float32")])
    model = mlsp_end_to_end(extractor, head, name="cli_test_model")
    head.save_weights(d / "head.weights.h5")
    with h5py.File(d / "head_keras2.h5", "w") as f:  # Keras 2 save_weights layout
        f.attrs["layer_names"] = np.array([b"features", b"head_out"])
        f.create_group("features").attrs["weight_names"] = np.array([], dtype="S1")
        g = f.create_group("head_out")
        g.attrs["weight_names"] = np.array([b"head_out/kernel:0", b"head_out/bias:0"])
        g.create_dataset("head_out/kernel:0", data=dense.get_weights()[0])
        g.create_dataset("head_out/bias:0", data=dense.get_weights()[1])
    toy = toy_model(name="toy_cli")  # small image model with a ku layer, for the fast tests
    toy.save(d / "toy.keras")
    return {"dir": d, "model": model, "head": head, "toy": toy}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good images in 3 sizes (JPEG + PNG, one in a sub-folder, one upper-case extension), a
    truncated JPEG and a text file (not an image extension: ignored)."""
    d = tmp_path_factory.mktemp("cli_images")
    (d / "sub").mkdir()
    good = {"a.jpg": (80, 100), "sub/b.png": (130, 97), "c.JPEG": (111, 123)}
    for i, (name, (h, w)) in enumerate(good.items()):
        assert cv2.imwrite(str(d / name), make_image(h, w, 20 + i)[..., ::-1])
    ok, buf = cv2.imencode(".jpg", make_image(90, 90, 7)[..., ::-1])
    (d / "sub" / "corrupt.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])  # truncated
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL or a socket connection fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a[:2]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def expected_rows(model, paths):
    preds = np.concatenate([run(model, read_image(p)[None]) for p in paths])
    return preds, metrics.dist_mean(preds), metrics.dist_std(preds)


def test_predict_folder_skips_and_reports_corrupt_image(files, folder, tmp_path, no_network,
                                                         capsys):
    out = tmp_path / "preds.csv"
    rc = cli.main(["predict", str(folder), "--model", str(files["dir"] / "toy.keras"),
                   "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == cli.EXIT_SKIPPED == 3
    df = pd.read_csv(out, dtype={"image_id": str})
    good = sorted([folder / "a.jpg", folder / "c.JPEG", folder / "sub" / "b.png"], key=str)
    assert df["image_path"].tolist() == [str(p) for p in good]
    assert df["image_id"].tolist() == ["a", "c", "b"]
    assert list(df.columns) == ["image_id", "image_path", "mean_score", "std_score"] + [
        f"dist_{k}" for k in range(1, 11)]
    dist, mean, std = expected_rows(files["toy"], good)
    assert_close(df[[f"dist_{k}" for k in range(1, 11)]].to_numpy(), dist)
    assert_close(df["mean_score"], mean)
    assert_close(df["std_score"], std)
    assert np.ptp(mean) > 100 * RTOL * mean.max()  # the comparison can fail
    # the bad one: listed at the end of stdout and in <out>.errors.csv
    errors = pd.read_csv(tmp_path / "preds.csv.errors.csv")
    assert errors["image_path"].tolist() == [str(folder / "sub" / "corrupt.jpg")]
    assert "truncated" in errors["error"][0].lower()
    assert "skipped 1 unreadable image(s)" in captured.out
    assert str(folder / "sub" / "corrupt.jpg") in captured.out.splitlines()[-1]
    assert "ku predict: 4/4 images (100%), 1 skipped" in captured.err  # progress on stderr


def test_predict_short_name_weights_files_csv_to_json(files, folder, tmp_path, no_network):
    """--model mlsp-single1fc + --head-weights head + --backbone-weights file, over a CSV with
    relative paths and one missing file; JSON output; a good-only rerun exits 0 and removes
    the stale errors file."""
    csv = folder / "list.csv"
    pd.DataFrame({"image_id": ["x1", "x2", "gone"],
                  "image_path": ["a.jpg", str(folder / "sub" / "b.png"), "missing.jpg"]}
                 ).to_csv(csv, index=False)
    out = tmp_path / "preds.json"
    common = ["--model", "mlsp-single1fc", "--backbone", "inception_v3",
              "--backbone-weights", str(files["dir"] / "backbone.weights.h5"),
              "--head-weights", str(files["dir"] / "head.weights.h5"), "--output", "distribution",
              "--out", str(out), "--quiet"]
    rc = cli.main(["predict", str(csv)] + common)
    assert rc == 3
    records = json.loads(out.read_text())
    assert [r["image_id"] for r in records] == ["x1", "x2"]
    dist, mean, std = expected_rows(files["model"], [folder / "a.jpg", folder / "sub" / "b.png"])
    assert_close([r["distribution"] for r in records], dist)
    assert_close([r["mean_score"] for r in records], mean)
    assert_close([r["std_score"] for r in records], std)
    errors = pd.read_csv(str(out) + ".errors.csv")
    assert errors["image_id"].tolist() == ["gone"] and errors["error"][0] == "file not found"
    # all good -> exit 0, and the old errors file is gone
    rc = cli.main(["predict", str(folder / "a.jpg")] + common)
    assert rc == cli.EXIT_OK == 0
    assert not os.path.exists(str(out) + ".errors.csv")
    assert_close(json.loads(out.read_text())[0]["distribution"], dist[0])


def test_deprecated_weights_flag_still_names_the_head_and_warns(files, folder, tmp_path, no_network,
                                                                capsys):
    """``--weights``, the old name of ``--head-weights``, scores the same and says it is
    deprecated (one line on stderr); giving both names is a usage error."""
    common = ["--model", "mlsp-single1fc", "--backbone", "inception_v3",
              "--backbone-weights", str(files["dir"] / "backbone.weights.h5"), "--output",
              "distribution", "--quiet"]
    head = str(files["dir"] / "head.weights.h5")
    image = str(folder / "a.jpg")
    assert cli.main(["predict", image, "--weights", head, "--out", str(tmp_path / "old.csv")] + common) == 0
    err = capsys.readouterr().err
    assert "ku predict: warning: --weights is deprecated, use --head-weights" in err, err
    assert cli.main(["predict", image, "--head-weights", head, "--out", str(tmp_path / "new.csv")] + common) == 0
    assert "deprecated" not in capsys.readouterr().err
    old, new = pd.read_csv(tmp_path / "old.csv"), pd.read_csv(tmp_path / "new.csv")
    assert_close(old["mean_score"], new["mean_score"])
    rc = cli.main(["predict", image, "--weights", head, "--head-weights", head,
                   "--out", str(tmp_path / "both.csv")] + common)
    assert rc == cli.EXIT_USAGE and "give only --head-weights" in capsys.readouterr().err


def test_released_keras2_head_file_loads(files):
    """--head-weights with a Keras 2 (released ava-mlsp) .h5 goes through load_released_weights."""
    fresh = heads.single_1fc(10048, output="distribution", n_bins=10)
    head = cli._load_head_weights(files["dir"] / "head_keras2.h5", lambda: fresh, (10048,))
    for a, b in zip(head.get_weights(), files["head"].get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(cli.UsageError, match="--head-weights"):
        cli._load_head_weights(files["dir"] / "head_keras2.h5",
                               lambda: heads.single_1fc(10048, output="mos"), (10048,))


def write_ava_txt(path, ids, counts):
    lines = [f"{i + 1} {img} " + " ".join(str(int(c)) for c in row) + " 0 0 0"
             for i, (img, row) in enumerate(zip(ids, counts))]
    path.write_text("\n".join(lines) + "\n")


def test_evaluate_predictions_against_labels(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 40
    ids = [str(100 + i) for i in range(n)]
    counts = rng.integers(0, 30, size=(n, 10)) + 1
    dist_true = counts / counts.sum(1, keepdims=True)
    mos = dist_true @ np.arange(1, 11)
    logits = np.log(dist_true) + rng.normal(0, 0.5, dist_true.shape)
    dist_pred = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred_mean = dist_pred @ np.arange(1, 11)
    preds = pd.DataFrame({"image_id": ids, "image_path": [f"/x/{i}.jpg" for i in ids],
                          "mean_score": pred_mean, "std_score": metrics.dist_std(dist_pred)})
    for k in range(10):
        preds[f"dist_{k + 1}"] = dist_pred[:, k]
    preds.iloc[:35].to_csv(tmp_path / "preds.csv", index=False)  # 5 labels without prediction
    write_ava_txt(tmp_path / "AVA.txt", ids, counts)
    table_csv = tmp_path / "table.csv"
    rc = cli.main(["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--labels",
                   str(tmp_path / "AVA.txt"), "--compare", "Pool-3FC (*)", "--out", str(table_csv)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "35 images evaluated (5 labelled images without prediction, 0 predictions without" in out
    table = pd.read_csv(table_csv)
    row = table.iloc[0]
    assert row["N"] == 35
    assert row["SRCC"] == pytest.approx(metrics.srcc(mos[:35], pred_mean[:35]), abs=1e-12)
    assert row["PLCC"] == pytest.approx(metrics.plcc(mos[:35], pred_mean[:35]), abs=1e-12)
    assert row["EMD_r2"] == pytest.approx(metrics.emd(dist_true[:35], dist_pred[:35]), abs=1e-9)
    assert table.iloc[1]["model"] == "Pool-3FC (*)" and table.iloc[1]["SRCC"] == 0.756
    assert f"{row['SRCC']:.3f}" in out
    # labels CSV (ids table) + a JSON predictions file without distributions, only "test" rows
    labels = pd.DataFrame({"image_id": ids, "mos": mos, "set": ["test"] * 20 + ["training"] * 20})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "p.json").write_text(json.dumps(
        [{"image_id": i, "mean_score": float(m)} for i, m in zip(ids, pred_mean)]))
    rc = cli.main(["evaluate", "--predictions", str(tmp_path / "p.json"), "--labels",
                   str(tmp_path / "labels.csv"), "--set", "test", "--out", str(table_csv)])
    assert rc == 0
    row = pd.read_csv(table_csv).iloc[0]
    assert row["N"] == 20 and "KL" not in row
    assert row["accuracy"] == pytest.approx(metrics.accuracy(mos[:20], pred_mean[:20]))


def test_export_then_reload(files, folder, tmp_path, no_network, capsys):
    out = tmp_path / "saved"
    rc = cli.main(["export", "--model", str(files["dir"] / "toy.keras"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "signatures predict_images, serving_default" in capsys.readouterr().out
    loaded = tf.saved_model.load(str(out))
    data = [(folder / n).read_bytes() for n in ("a.jpg", "sub/b.png")]
    got = loaded.signatures["serving_default"](images=tf.constant(data))
    dist, mean, _ = expected_rows(files["toy"], [folder / "a.jpg", folder / "sub" / "b.png"])
    assert_close(got["distribution"].numpy(), dist)
    assert_close(got["mean_score"].numpy(), mean)
    # a second export into the same folder needs --overwrite
    assert cli.main(["export", "--model", str(files["dir"] / "toy.keras"), "--out",
                     str(out)]) == 2
    assert "argument --out" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["predict", "{folder}", "--model", "nima", "--out", "{tmp}/p.csv"],
     "argument --model: unknown model 'nima'"),
    (["predict", "{tmp}/no_such_folder", "--model", "{model}", "--out", "{tmp}/p.csv"],
     "argument INPUTS: no such file or folder"),
    (["predict", "{folder}", "--model", "{model}", "--out", "{tmp}/missing_dir/p.csv"],
     "argument --out: folder"),
    (["predict", "{folder}", "--model", "{model}", "--out", "{tmp}/p.txt"],
     "argument --out: '{tmp}/p.txt' must end with .csv or .json"),
    (["predict", "{folder}", "--model", "mlsp-pool3fc", "--out", "{tmp}/p.csv"],
     "argument --head-weights: --model mlsp-pool3fc needs --head-weights"),
    (["predict", "{folder}", "--model", "mlsp-single1fc", "--backbone", "inception_v3",
      "--head-weights", "{dir}/head.weights.h5", "--output", "distribution",
      "--backbone-weights", "{tmp}/nope.h5", "--out", "{tmp}/p.csv"],
     "argument --backbone-weights: no such file"),
    (["predict", "{folder}", "--model", "mlsp-single1fc", "--backbone", "inception_v3",
      "--head-weights", "{dir}/head.weights.h5", "--out", "{tmp}/p.csv"],
     "does not fit head 'single_1fc' (check --output / --n-bins / --backbone): ValueError"),
    (["predict", "{folder}", "--model", "{dir}/head.weights.h5", "--out", "{tmp}/p.csv"],
     "argument --model: '{dir}/head.weights.h5' is a weights file: pass it as --head-weights"),
    (["predict", "{folder}", "--model", "{tmp}/gone.keras", "--out", "{tmp}/p.csv"],
     "argument --model: no such file"),
    (["predict", "{folder}", "--out", "{tmp}/p.csv"],
     "the following arguments are required: --model"),
    (["predict", "{folder}", "--model", "{toy}", "--max-side", "-3"],
     "argument --max-side: expected a positive integer, got '-3'"),
    (["predict", "{folder}", "--model", "{toy}", "--max-pixels", "-1"],
     "argument --max-pixels: expected an integer >= 0, got '-1'"),
    (["evaluate", "--predictions", "{tmp}/bad_preds.csv", "--labels", "{tmp}/AVA.txt"],
     "argument --predictions: '{tmp}/bad_preds.csv' needs a mean_score"),
    (["evaluate", "--predictions", "{tmp}/nothing.csv", "--labels", "{tmp}/AVA.txt"],
     "argument --predictions: no such file"),
    (["export", "--model", "{model}", "--out", "{folder}"],
     "argument --out: '{folder}' exists and is not an empty folder"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_name_the_argument(argv, message, files, folder, tmp_path, capsys):
    (tmp_path / "bad_preds.csv").write_text("image_id,value\n1,2\n")
    write_ava_txt(tmp_path / "AVA.txt", ["1"], [[1] * 10])
    subst = {"folder": str(folder), "tmp": str(tmp_path), "dir": str(files["dir"]),
             "model": str(files["dir"] / "toy.keras"), "toy": str(files["dir"] / "toy.keras")}
    rc = cli.main([a.format(**subst) for a in argv])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_USAGE == 2
    assert message.format(**subst) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_every_flag_has_help_and_python_m_works():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "predict" in a.choices).choices
    for name, sub in [("ku", parser)] + list(subparsers.items()):
        for action in sub._actions:
            if action.dest in ("help", "command"):
                continue
            assert action.help and len(action.help) > 15, (name, action.dest)
    proc = procs.run(procs.python("-m", "ku.cli", "predict", "--help"))
    assert proc.returncode == 0
    for flag in ("--model", "--head-weights", "--backbone-weights", "--out", "--max-side",
                 "--path-column", "mlsp-pool3fc"):
        assert flag in proc.stdout
    proc = procs.run(procs.python("-m", "ku.cli", "--help"))
    assert proc.returncode == 0 and "exit status: 0 ok" in proc.stdout
