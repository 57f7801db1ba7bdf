"""Data-parallel training on whole images (Murray & Gordo's APM and Jia et al.'s theme-ROI
model): two MultiWorkerMirroredStrategy workers on 127.0.0.1, next to one process
on the same data.

* Library level (tiny networks, seconds): APM on aspect-ratio batches (each worker decodes only its
  slice of every global batch, padded to the batch's canvas; a trainable, synchronised
  BatchNormalization in the backbone) and the theme-ROI model on a fixed canvas (tf.data ``DATA``
  sharding). Both workers finish, resume (2 epochs, then a 3rd), hold identical weights, and
  their losses and test predictions equal the single process's (rtol 2e-3; measured ~1e-6,
  float summation order). Only the chief writes the run folders.
* Script level: ``scripts/train_apm.py`` and ``scripts/train_theme_roi.py`` with
  ``--strategy=multi_worker`` on a 48-image demo set (a few steps of a random backbone): both
  workers exit 0, the chief writes the results, the other worker's temporary folder is gone;
  ``--strategy=multi_worker`` without ``TF_CONFIG`` is a one-line error.

Processes run through tests/procs.py (tests/loopback.py for the clusters): own process groups,
logs in ``tmp_path`` whose tails end every failure message, one generous deadline, a new port
pair when a worker's port was taken, nothing left running.
"""
import json
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

import procs
from loopback import ROOT, read_weights, run_cluster, worker_env

DEMO_IMAGES = 48  # the script tests' demo set: APM 34 training / 2 validation / 12 test images
THEME_EFFECTS = 0.5  # the theme-ROI script's demo votes (--demo_theme_effects)

WORKER = textwrap.dedent('''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from ku import distribute
mode, run_root, out = sys.argv[1:4]
strategy = distribute.get_strategy(mode)  # first: MWMS connects the workers here
import keras
import numpy as np
from ku.data.demo import load_demo
from ku.models import apm
from ku.models.masking import masked_model
from ku.training import fit_apm

info = distribute.worker_info(strategy)
ids = load_demo(split="murray")
train_ids = ids[ids.set == "training"].head(12).reset_index(drop=True)
val_ids = ids[ids.set == "validation"].head(4).reset_index(drop=True)
test_ids = ids[ids.set == "test"].head(6).reset_index(drop=True)
result = {"chief": info["is_chief"], "n_replicas": strategy.num_replicas_in_sync}

# ---- APM on aspect-ratio batches: a tiny masked backbone with a trainable BatchNormalization
keras.utils.set_random_seed(0)
with distribute.scope(strategy):
    x = inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    net = masked_model(keras.Model(inp, x, name="tiny"))
    model = apm.apm_model(backbone_model=net, fc_units=16, global_max_branch=True)
apm.init_output_bias(model, 0.1)
run_dir = os.path.join(run_root, "apm")
kw = dict(shorter_side=40, batch_size=4, strategy=strategy, run_dir=run_dir, verbose=0,
          optimizer=lambda: apm.apm_optimizer("sgd", 3e-2, decay_steps=None))
if mode == "multi_worker":  # 2 epochs, then resume for the 3rd
    h1 = fit_apm(model, train_ids, val_ids, epochs=2, **kw)
    h2 = fit_apm(model, train_ids, val_ids, epochs=3, **kw)
    result["apm_epochs"] = [len(h1.epoch), len(h2.epoch)]
else:
    h2 = fit_apm(model, train_ids, val_ids, epochs=3, **kw)
    result["apm_epochs"] = [len(h2.epoch)]
import pandas as pd
from ku.data.aspect_batches import aspect_batches
if info["is_chief"]:
    hist = pd.read_csv(os.path.join(run_dir, "history.csv"))
    result["apm_loss"] = hist["loss"].tolist()
    result["apm_val_loss"] = hist["val_loss"].tolist()
pred, rows = apm.predict_batches(model, aspect_batches(test_ids, 3, shorter_side=40))
result["apm_pred"] = pred["distribution"].tolist()
model.save_weights(os.path.join(out, f"apm-{mode}-{info['task_id']}.weights.h5"))

# ---- theme-ROI on a fixed padded canvas (tf.data, DATA auto-sharding): a tiny ROI model
from ku.data.canvas import canvas_dataset
from ku.layers import ImageBoxes, RoiPooling2D
from ku.layers.theme_embedding import ThemeEmbedding
from ku.models.theme_roi import predict_views
from ku.training import train_theme_roi

keras.utils.set_random_seed(0)
n_themes = int(ids["theme_index"].max()) + 1
with distribute.scope(strategy):
    image = keras.Input((96, 96, 3), name="image")
    sizes = keras.Input((2,), dtype="int32", name="valid_size")
    theme = keras.Input((), dtype="int32", name="theme")
    x = keras.layers.Rescaling(1 / 127.5, -1)(image)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2d_tiny")(x)
    x = RoiPooling2D(6, 0.5, name="roi_pooling")([x, ImageBoxes()(sizes)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, ThemeEmbedding(n_themes, 5, name="theme_fc")(theme)])
    tmodel = keras.Model([image, sizes, theme], keras.layers.Dense(10, activation="softmax", name="distribution")(x))
train = canvas_dataset(train_ids, canvas=96, batch_size=4, seed=1, log_resized=False)
val = canvas_dataset(val_ids, canvas=96, batch_size=4, training=False, log_resized=False)
run_dir = os.path.join(run_root, "theme")
kw = dict(run_dir=run_dir, verbose=0, strategy=strategy, learning_rate=1e-2)
if mode == "multi_worker":
    r1 = train_theme_roi(tmodel, train, val, epochs=2, **kw)
    r2 = train_theme_roi(tmodel, train, val, epochs=3, **kw)
    result["theme_epochs"] = [r1.epochs_run, r2.epochs_run]
else:
    r2 = train_theme_roi(tmodel, train, val, epochs=3, **kw)
    result["theme_epochs"] = [r2.epochs_run]
result["theme_run_dir"] = str(r2.run_dir)
if info["is_chief"]:
    result["theme_loss"] = r2.history["loss"].tolist()
    result["theme_val_loss"] = r2.history["val_loss"].tolist()
    result["theme_val_srcc"] = r2.history["val_srcc"].tolist()
result["theme_pred"] = predict_views(tmodel, test_ids, canvas=96, batch_size=4, log_resized=False).tolist()
tmodel.save_weights(os.path.join(out, f"theme-{mode}-{info['task_id']}.weights.h5"))
json.dump(result, open(os.path.join(out, f"result-{mode}-{info['task_id']}.json"), "w"))
distribute.end_worker_process(strategy)
''')


@pytest.fixture(scope="module")
def demo_built():
    from ku.data.demo import load_demo, make_demo_set

    # build every demo set once, here: two workers building the same set at once race (one
    # replaces the folder the other is reading)
    load_demo(split="murray")
    make_demo_set(n_images=DEMO_IMAGES, seed=0)
    make_demo_set(n_images=DEMO_IMAGES, seed=0, theme_effects=THEME_EFFECTS)


def test_two_workers_train_apm_and_theme_roi_like_one_process(demo_built, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    t0 = time.monotonic()
    reference = procs.start(procs.python(script, "default", tmp_path / "run_single", out), tmp_path / "single.log",
                            env=worker_env())  # the single-process reference, alongside
    workers = run_cluster([script, "multi_worker", tmp_path / "run_mw", out], tmp_path, tmpdir=tmp_path / "tmp",
                          others=[reference])
    seconds = time.monotonic() - t0
    logs = procs.failure_message("the processes' logs:", [*workers, reference])
    res = {}
    for n in ("multi_worker-0", "multi_worker-1", "default-0"):
        assert (out / f"result-{n}.json").is_file(), f"result-{n}.json missing\n{logs}"
        res[n] = json.loads((out / f"result-{n}.json").read_text())
    w0, w1, single = res["multi_worker-0"], res["multi_worker-1"], res["default-0"]
    assert w0["chief"] and not w1["chief"] and w0["n_replicas"] == w1["n_replicas"] == 2, logs
    for family in ("apm", "theme"):
        assert w0[f"{family}_epochs"] == w1[f"{family}_epochs"] == [2, 1]  # the second call resumed
        # identical weights on both workers, bit for bit
        a = read_weights(out / f"{family}-multi_worker-0.weights.h5")
        b = read_weights(out / f"{family}-multi_worker-1.weights.h5")
        assert a.keys() == b.keys() and len(a) >= 6
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{family}: {k}")
        # the single process's losses and predictions, on the same global batches
        for key in ("loss", "val_loss"):
            assert len(w0[f"{family}_{key}"]) == 3
            np.testing.assert_allclose(w0[f"{family}_{key}"], single[f"{family}_{key}"], rtol=2e-3, err_msg=key)
        np.testing.assert_allclose(w0[f"{family}_pred"], single[f"{family}_pred"], rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(w1[f"{family}_pred"], w0[f"{family}_pred"], rtol=1e-6, atol=1e-7)
        assert single[f"{family}_loss"][-1] < single[f"{family}_loss"][0]  # it learns
    # only the chief wrote the shared run folders; the other worker's copies are gone
    run = tmp_path / "run_mw"
    assert len(pd.read_csv(run / "apm" / "history.csv")) == 3 and (run / "apm" / "backup").is_dir()
    assert len(pd.read_csv(run / "theme" / "history.csv")) == 3
    assert (run / "theme" / "final.weights.h5").is_file() and (run / "theme" / "best.weights.h5").is_file()
    assert w1["theme_run_dir"] == str(run / "theme")
    assert not list((tmp_path / "tmp").glob("ku-worker1-*"))
    print(f"2 workers + 1 process, APM and theme-ROI: {seconds:.1f} s; APM loss {w0['apm_loss'][-1]:.5f} vs "
          f"{single['apm_loss'][-1]:.5f}, theme loss {w0['theme_loss'][-1]:.5f} vs {single['theme_loss'][-1]:.5f}")


# small settings: a few steps of a randomly initialised backbone on the 48-image demo set, a
# small fraction of the deadline on two busy cores
SCRIPTS = {
    "train_apm.py": ["--backbone=vgg16", "--backbone_weights=none", "--nomasked", "--shorter_side=32", "--fc_units=16",
                     "--epochs=1", "--batch_size=16", f"--demo_images={DEMO_IMAGES}", "--verbose=0"],
    "train_theme_roi.py": ["--backbone_weights=none", "--canvas=96", "--roi_size=36", "--epochs=1", "--theme=on",
                           "--augment=flip", "--batch_size=16", f"--demo_images={DEMO_IMAGES}",
                           f"--demo_theme_effects={THEME_EFFECTS}", "--verbose=0"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_runs_on_two_workers(demo_built, name, tmp_path):
    work = tmp_path / "work"
    t0 = time.monotonic()
    workers = run_cluster([ROOT / "scripts" / name, *SCRIPTS[name], f"--work_dir={work}", "--strategy=multi_worker"],
                          tmp_path, tmpdir=tmp_path / "tmp")
    seconds = time.monotonic() - t0
    logs = procs.failure_message(f"{name}: the workers' logs:", workers)
    chief_log, other_log = (w.output() for w in workers)
    if name == "train_apm.py":
        assert "2 replicas, global batch 16" in chief_log, logs
        assert "training done; the chief writes the results" in other_log, logs
        metrics = pd.read_csv(work / "metrics.csv")
        assert np.isfinite(metrics.iloc[0][["KL", "CDLoss", "MSE"]].astype(float)).all()
        assert len(pd.read_csv(work / "test_predictions.csv")) > 0 and (work / "apm.weights.h5").is_file()
        assert len(pd.read_csv(work / "train" / "history.csv")) == 1
    else:
        run = next(work.glob("pad_roi_96_36_*_theme"))
        assert json.loads((run / "run.json").read_text())["replicas"] == 2
        assert len(pd.read_csv(run / "history.csv")) == 1 and (run / "test_predictions.npy").is_file()
        assert (work / "results.json").is_file()
    leftovers = list((tmp_path / "tmp").glob("ku-worker1-*"))  # the other worker's temporary copies
    assert not leftovers, leftovers
    print(f"{name} on 2 workers: {seconds:.1f} s")


@pytest.mark.parametrize("name", ["train_mlsp.py", *sorted(SCRIPTS)])
def test_multi_worker_without_tf_config_is_a_clear_error(name, tmp_path):
    r = procs.run(procs.python(ROOT / "scripts" / name, "--strategy=multi_worker", f"--work_dir={tmp_path / 'w'}"),
                  env=worker_env(), log_dir=tmp_path)
    assert r.returncode != 0
    assert "needs the environment variable TF_CONFIG" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_train_apm_refuses_accumulation_under_a_strategy(tmp_path):
    r = procs.run(procs.python(ROOT / "scripts" / "train_apm.py", "--strategy=mirrored", "--accumulate=8",
                               f"--work_dir={tmp_path / 'w'}"), env=worker_env(), log_dir=tmp_path)
    assert r.returncode != 0
    assert "--accumulate=8 with --strategy=mirrored" in r.stderr and "8x larger" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()
