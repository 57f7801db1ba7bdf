"""Staged learning-rate schedule (Hosu et al. 2019 §3.3), full-set validation correlations and the
resumable fit helper."""
import json
import shutil

import keras
import numpy as np
import pytest
import scipy.stats

from ku.training import (StagedLearningRate, ValidationCorrelation, paper_schedule, read_schedule_state,
                         released_schedule, safe_name, train)


def tiny_model(n_in=4, n_out=1, seed=0, activation=None):
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential([
        keras.Input((n_in,)),
        keras.layers.Dense(3, activation="relu", kernel_initializer=init, name="h"),
        keras.layers.Dense(n_out, activation=activation, kernel_initializer=init, name="out"),
    ])


def compiled(lr=1e-4, seed=0):
    m = tiny_model(seed=seed)
    m.compile(keras.optimizers.Adam(lr), loss="mse")
    m.optimizer.build(m.trainable_variables)
    return m


def epoch_weights(model, epoch):
    """Distinct weights for every epoch, so reloaded weights tell which epoch they came from."""
    rng = np.random.default_rng([7, epoch])
    return [rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()]


def run_script(cb, model, values, start=0, monitor="val_loss"):
    """Drive the callback like fit() would, with scripted monitor values; record every epoch."""
    recs = []
    for i, v in enumerate(values):
        e = start + i
        model.stop_training = False
        cb.on_epoch_begin(e)
        lr_in_epoch = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        model.set_weights(epoch_weights(model, e))
        logs = {monitor: v}
        cb.on_epoch_end(e, logs)
        recs.append(dict(epoch=e, lr=lr_in_epoch, logged_lr=logs["learning_rate"],
                         lr_after=float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
                         weights=model.get_weights(), stop=bool(model.stop_training)))
        if model.stop_training:
            break
    return recs


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# stage 0: 8 improving epochs (best at 7), 5 flat -> plateau change after epoch 12
# stage 1: 20 improving epochs -> forced change after epoch 32 (20 epochs at 1e-5)
# stage 2: 5 worse epochs -> next rate 1e-7 < 1e-6 -> stop after epoch 37
PAPER_SCRIPT = ([1.0 - 0.1 * i for i in range(8)] + [0.35] * 5
                + [0.29 - 0.001 * i for i in range(20)] + [0.5] * 5)


def test_paper_schedule_scripted():
    m = compiled(lr=1e-4)
    cb = paper_schedule()
    cb.set_model(m)
    cb.on_train_begin()
    recs = run_script(cb, m, PAPER_SCRIPT)
    assert len(recs) == 38 and recs[-1]["stop"] and not any(r["stop"] for r in recs[:-1])
    lrs = np.array([r["lr"] for r in recs])
    np.testing.assert_allclose(lrs[:13], 1e-4)
    np.testing.assert_allclose(lrs[13:33], 1e-5)
    np.testing.assert_allclose(lrs[33:], 1e-6)
    np.testing.assert_allclose([r["logged_lr"] for r in recs], lrs)
    changes = cb.get_state()["changes"]
    assert [(c["epoch"], c["reason"], c["best_epoch"]) for c in changes] == [
        (12, "patience", 7), (32, "stage_epochs", 32), (37, "patience", 32)]
    assert changes[-1]["to_lr"] is None
    # best weights reloaded at every change: best so far = epoch 7, then epoch 32
    assert_weights_equal(recs[12]["weights"], epoch_weights(m, 7))
    assert_weights_equal(recs[32]["weights"], epoch_weights(m, 32))
    assert_weights_equal(recs[37]["weights"], epoch_weights(m, 32))
    assert_weights_equal(cb.best_weights, epoch_weights(m, 32))
    assert cb.best == pytest.approx(PAPER_SCRIPT[32]) and cb.best_epoch == 32 and cb.finished
    np.testing.assert_allclose(recs[12]["lr_after"], 1e-5)
    # between changes the weights are the ones set in the epoch (nothing reloaded)
    assert_weights_equal(recs[11]["weights"], epoch_weights(m, 11))


def test_best_is_tracked_across_stages_released_narrow():
    """No epoch after epoch 0 improves: every change reloads epoch 0 (the global best)."""
    m = compiled(lr=0.5)  # initial_lr of the preset wins over the optimizer's
    cb = released_schedule("narrow")
    cb.set_model(m)
    cb.on_train_begin()
    recs = run_script(cb, m, [1.0] + [2.0] * 30)
    assert len(recs) == 16 and recs[-1]["stop"]
    lrs = [r["lr"] for r in recs]
    np.testing.assert_allclose(lrs, [1e-3] * 6 + [1e-4] * 5 + [1e-5] * 5)
    for e in (5, 10, 15):
        assert_weights_equal(recs[e]["weights"], epoch_weights(m, 0))


def test_released_wide_monitors_plcc_max():
    cb = released_schedule("wide")
    assert (cb.monitor, cb.mode, cb.initial_lr, cb.min_lr) == ("val_plcc", "max", 1e-4, 1e-6)
    assert (cb.stage_epochs, cb.patience, cb.factor) == (20, 5, 10.0)
    assert StagedLearningRate(monitor="val_srcc").mode == "max"
    assert StagedLearningRate(monitor="val_loss").mode == "min"
    m = compiled()
    cb.set_model(m)
    cb.on_train_begin()
    recs = run_script(cb, m, [0.1, 0.2] + [0.15] * 5 + [0.3] * 3, monitor="val_plcc")
    lrs = [r["lr"] for r in recs]
    np.testing.assert_allclose(lrs, [1e-4] * 7 + [1e-5] * 3)
    assert_weights_equal(recs[6]["weights"], epoch_weights(m, 1))
    assert cb.best == 0.3 and cb.best_epoch == 7


def test_nan_never_improves_and_missing_monitor_is_explained():
    m = compiled()
    cb = paper_schedule(patience=2)
    cb.set_model(m)
    cb.on_train_begin()
    recs = run_script(cb, m, [1.0, float("nan"), float("nan")])
    assert cb.best == 1.0 and cb.get_state()["changes"][0]["epoch"] == 2
    assert_weights_equal(recs[2]["weights"], epoch_weights(m, 0))
    cb2 = paper_schedule(monitor="val_plcc")
    cb2.set_model(m)
    cb2.on_train_begin()
    with pytest.raises(KeyError, match="ValidationCorrelation"):
        cb2.on_epoch_end(0, {"val_loss": 1.0})


def test_state_round_trip_continues_identically(tmp_path):
    split = 20
    m_a = compiled()
    a = paper_schedule(best_weights_path=tmp_path / "a" / "best.weights.h5")
    a.set_model(m_a)
    a.on_train_begin()
    run_script(a, m_a, PAPER_SCRIPT[:split])
    state = json.loads(json.dumps(a.get_state()))  # JSON-able
    assert state["epoch"] == split and state["stage"] == 1 and state["best_epoch"] == 19

    # B: a new process -- new model with A's current weights, state from JSON, best from the file
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "best.weights.h5", tmp_path / "b" / "best.weights.h5")
    m_b = compiled(seed=5)
    m_b.set_weights(m_a.get_weights())
    b = paper_schedule(best_weights_path=tmp_path / "b" / "best.weights.h5")
    b.set_state(state)
    b.set_model(m_b)
    b.on_train_begin()
    assert_weights_equal(b.best_weights, epoch_weights(m_b, 19))
    assert_weights_equal(m_b.get_weights(), m_a.get_weights())  # loading the best left the model alone

    rest = PAPER_SCRIPT[split:]
    ra = run_script(a, m_a, rest, start=split)
    rb = run_script(b, m_b, rest, start=split)
    assert len(ra) == len(rb) == 38 - split
    for x, y in zip(ra, rb):
        assert (x["epoch"], x["lr"], x["stop"]) == (y["epoch"], y["lr"], y["stop"])
        assert_weights_equal(x["weights"], y["weights"])
    sa, sb = a.get_state(), b.get_state()
    assert sa == sb and sa["finished"]


def test_state_file_resume_and_crash_window(tmp_path):
    paths = dict(best_weights_path=tmp_path / "best.weights.h5", state_path=tmp_path / "state.json")
    m = compiled()
    a = paper_schedule(**paths)
    a.set_model(m)
    a.on_train_begin()
    run_script(a, m, PAPER_SCRIPT[:10])
    saved = read_schedule_state(paths["state_path"])
    assert saved == {k: v for k, v in a.get_state().items() if k != "params"}

    # restart at epoch 10: the saved state is used and continues like the uninterrupted run
    c = paper_schedule(**paths)
    m_c = compiled(seed=3)
    c.set_model(m_c)
    c.on_train_begin()
    rc = run_script(c, m_c, PAPER_SCRIPT[10:], start=10)
    assert [r["epoch"] for r in rc if r["stop"]] == [37]
    assert_weights_equal(m_c.get_weights(), epoch_weights(m_c, 32))

    # crash after the schedule state of epoch 9 was written but before the checkpoint: training
    # resumes at epoch 9 and the schedule takes its state from before epoch 9
    m2 = compiled()
    d_paths = dict(best_weights_path=tmp_path / "d" / "best.weights.h5", state_path=tmp_path / "d" / "s.json")
    d = paper_schedule(**d_paths)
    d.set_model(m2)
    d.on_train_begin()
    run_script(d, m2, PAPER_SCRIPT[:9])
    before_9 = d.get_state()
    run_script(d, m2, PAPER_SCRIPT[9:10], start=9)
    e = paper_schedule(**d_paths)
    e.set_model(compiled())
    e.on_train_begin()
    e.on_epoch_begin(9)
    assert e.get_state() == before_9


def test_reset_optimizer_option():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = x.sum(axis=1)
    for reset in (False, True):
        m = compiled(lr=1e-3)
        m.fit(x, y, epochs=1, batch_size=4, verbose=0)
        it = int(keras.ops.convert_to_numpy(m.optimizer.iterations))
        assert it == 4
        cb = StagedLearningRate(stage_epochs=1, reset_optimizer=reset, verbose=0)
        cb.set_model(m)
        cb.on_train_begin()
        cb.on_epoch_begin(0)
        cb.on_epoch_end(0, {"val_loss": 1.0})
        opt = m.optimizer
        assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(1e-4)
        slots = [keras.ops.convert_to_numpy(v) for v in opt.variables if v.name not in ("iteration", "learning_rate")]
        if reset:
            assert int(keras.ops.convert_to_numpy(opt.iterations)) == 0
            assert all(not np.any(s) for s in slots)
        else:
            assert int(keras.ops.convert_to_numpy(opt.iterations)) == it
            assert any(np.any(s) for s in slots)


class _ScriptedMonitor(keras.callbacks.Callback):
    def __init__(self, values):
        super().__init__()
        self.values = values
        self.lr_seen = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.lr_seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = self.values[epoch]


def test_schedule_inside_fit_sets_rates_and_stops():
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    m = tiny_model()
    m.compile(keras.optimizers.Adam(1e-3), loss="mse")
    script = _ScriptedMonitor([10.0 - i for i in range(50)])  # always improving
    cb = StagedLearningRate(stage_epochs=3, patience=2, min_lr=1e-5, monitor="val_score", mode="min", verbose=0)
    h = m.fit(x, x[:, 0], epochs=50, batch_size=8, verbose=0, callbacks=[script, cb])
    assert len(h.epoch) == 9
    expected = [1e-3] * 3 + [1e-4] * 3 + [1e-5] * 3
    np.testing.assert_allclose(script.lr_seen, expected, rtol=1e-6)
    np.testing.assert_allclose(h.history["learning_rate"], expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# ValidationCorrelation

class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.b = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.b)

    def __getitem__(self, i):
        s = slice(i * self.b, (i + 1) * self.b)
        return self.x[s], self.y[s]


def test_validation_correlation_whole_set():
    rng = np.random.default_rng(2)
    n = 37  # batch size 8 does not divide it
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([1.0, -0.5, 0.3, 0.0]) + rng.normal(scale=0.5, size=n)).astype("float32")
    m = tiny_model()
    pred = m.predict(x, verbose=0)[:, 0]
    want = {"val_srcc": scipy.stats.spearmanr(y, pred).statistic,
            "val_plcc": scipy.stats.pearsonr(y, pred).statistic,
            "val_mean_mse": float(np.mean((y.astype(np.float64) - pred) ** 2))}
    batch_mean_plcc = np.mean([scipy.stats.pearsonr(y[i:i + 8], pred[i:i + 8]).statistic for i in range(0, n, 8)])
    assert abs(batch_mean_plcc - want["val_plcc"]) > 1e-3  # the test can tell the difference
    for data in ((x, y), _Batches(x, y, 8)):
        cb = ValidationCorrelation(data, batch_size=8)
        cb.set_model(m)
        logs = {"loss": 1.0}
        cb.on_epoch_end(0, logs)
        for k, v in want.items():
            assert logs[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        assert logs["loss"] == 1.0


def test_validation_correlation_distributions_use_means():
    rng = np.random.default_rng(3)
    n, k = 29, 5
    x = rng.normal(size=(n, 4)).astype("float32")
    p_true = rng.dirichlet(np.ones(k), size=n).astype("float32")
    m = tiny_model(n_out=k, activation="softmax")
    p = m.predict(x, verbose=0)
    s = np.arange(1, k + 1)
    cb = ValidationCorrelation(_Batches(x, p_true, 8))
    cb.set_model(m)
    logs = {}
    cb.on_epoch_end(0, logs)
    assert logs["val_srcc"] == pytest.approx(scipy.stats.spearmanr(p_true @ s, p @ s).statistic, rel=1e-5)
    assert logs["val_plcc"] == pytest.approx(scipy.stats.pearsonr(p_true @ s, p @ s).statistic, rel=1e-5)


def test_validation_correlation_loss_equals_keras_evaluate():
    """compute_loss=True: val_loss from the callback's predictions equals Keras' own validation
    loss (batch means weighted by batch size), also with sample weights and a regularised model."""
    rng = np.random.default_rng(4)
    n = 37
    x = rng.normal(size=(n, 4)).astype("float32")
    y = rng.normal(size=n).astype("float32")
    w = rng.uniform(0.1, 2.0, n).astype("float32")
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        1, kernel_regularizer=keras.regularizers.L2(0.3), kernel_initializer=keras.initializers.GlorotUniform(1))])
    for loss in ("mse", "huber"):
        m.compile(loss=loss)
        for data, want in (((x, y), m.evaluate(x, y, batch_size=8, verbose=0)),
                           (_Batches(x, y, 8), m.evaluate(x, y, batch_size=8, verbose=0)),
                           ((x, y, w), m.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0))):
            cb = ValidationCorrelation(data, batch_size=8, compute_loss=True)
            cb.set_model(m)
            logs = {}
            cb.on_epoch_end(0, logs)
            assert logs["val_loss"] == pytest.approx(want, rel=1e-5), (loss, type(data))
    cb = ValidationCorrelation((x, y), compute_loss=False)
    cb.set_model(m)
    logs = {}
    cb.on_epoch_end(0, logs)
    assert "val_loss" not in logs


class _CountingBatches(keras.utils.PyDataset):
    def __init__(self, x, y, b):
        super().__init__()
        self.x, self.y, self.b, self.reads = x, y, b, 0

    def __len__(self):
        return -(-len(self.x) // self.b)

    def __getitem__(self, i):
        self.reads += 1
        s = slice(i * self.b, (i + 1) * self.b)
        return self.x[s], self.y[s]


def test_train_reads_the_validation_set_once_per_epoch(tmp_path):
    train_xy, (xv, yv) = _regression(64, 0), _regression(29, 1)
    val = _CountingBatches(xv, yv, 8)
    res = train(tiny_model(), train_xy, val, run_dir=tmp_path / "once", max_epochs=3, verbose=0, batch_size=16,
                schedule=_small_schedule(stage_epochs=5, patience=5))
    assert res.epochs_run == 3 and val.reads == 3 * len(val)  # Keras' own pass would double it
    np.testing.assert_allclose(res.history["val_loss"], res.history["val_mean_mse"], rtol=1e-5)
    # with compiled metrics Keras evaluates too (its val_ metrics need its pass)
    val2 = _CountingBatches(xv, yv, 8)
    res2 = train(tiny_model(), train_xy, val2, run_dir=tmp_path / "twice", max_epochs=2, verbose=0, batch_size=16,
                 metrics=["mae"], schedule=_small_schedule(stage_epochs=5, patience=5))
    assert val2.reads >= 2 * 2 * len(val2) and "val_mae" in res2.history.columns


# ---------------------------------------------------------------------------------------------
# train()

def _regression(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x @ np.array([1.0, -0.5, 0.3, 0.2]) + 5 + rng.normal(scale=0.3, size=n)).astype("float32")


class _Recorder(keras.callbacks.Callback):
    def __init__(self, fail_at=None):
        super().__init__()
        self.epochs, self.fail_at = [], fail_at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.fail_at:
            raise RuntimeError("interrupted")
        self.epochs.append(epoch)


def _small_schedule(**kw):
    return paper_schedule(**{**dict(initial_lr=1e-2, stage_epochs=2, patience=1, min_lr=1e-4, verbose=0), **kw})


def test_train_resume_and_best_weights(tmp_path):
    train_xy, val_xy = _regression(64, 0), _regression(29, 1)
    run = tmp_path / "run"
    rec = _Recorder(fail_at=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        train(tiny_model(), train_xy, val_xy, run_dir=run, schedule=_small_schedule(), max_epochs=20,
              verbose=0, callbacks=[rec], batch_size=16)
    assert rec.epochs == [0, 1]
    assert {"history.csv", "best.weights.h5", "schedule_state.json", "backup"} <= {p.name for p in run.iterdir()}

    # restart in a "new process": fresh model and schedule objects
    rec2 = _Recorder()
    model = tiny_model(seed=9)
    res = train(model, train_xy, val_xy, run_dir=run, schedule=_small_schedule(), max_epochs=20, verbose=0,
                callbacks=[rec2], batch_size=16)
    assert rec2.epochs[0] == 2 and res.epochs_run == len(rec2.epochs)
    assert res.finished and 3 <= 2 + res.epochs_run <= 6  # 3 rates x at most 2 epochs
    h = res.history
    assert h["epoch"].tolist() == list(range(2 + res.epochs_run))
    for col in ("loss", "val_loss", "val_srcc", "val_plcc", "val_mean_mse", "learning_rate"):
        assert col in h.columns and h[col].notna().all(), col
    assert res.best_epoch == int(h["val_loss"].idxmin()) and res.best == pytest.approx(h["val_loss"].min(), rel=1e-6)
    assert [c["epoch"] for c in res.schedule_changes] == sorted(c["epoch"] for c in res.schedule_changes)

    # the model holds the best weights, which are also in best.weights.h5
    ref = tiny_model(seed=4)
    ref.load_weights(run / "best.weights.h5")
    assert_weights_equal(model.get_weights(), ref.get_weights())
    mse = float(np.mean((model.predict(val_xy[0], verbose=0)[:, 0] - val_xy[1]) ** 2))
    assert mse == pytest.approx(res.best, rel=1e-4)

    # a finished run is not trained again; the model gets the best weights
    again = tiny_model(seed=11)
    res3 = train(again, train_xy, val_xy, run_dir=run, schedule=_small_schedule(), max_epochs=20, verbose=0)
    assert res3.epochs_run == 0 and res3.finished and len(res3.history) == len(h)
    assert_weights_equal(again.get_weights(), ref.get_weights())


def test_train_continues_with_more_epochs_and_wide_monitor(tmp_path):
    train_xy, val_xy = _regression(48, 2), _regression(21, 3)
    run = tmp_path / "wide run"
    sched = lambda: released_schedule("wide", stage_epochs=50, patience=50, verbose=0)  # noqa: E731
    model = tiny_model()
    r1 = train(model, train_xy, val_xy, run_dir=run, schedule=sched(), max_epochs=2, verbose=0, batch_size=16)
    assert r1.epochs_run == 2 and not r1.finished and r1.monitor == "val_plcc"
    rec = _Recorder()
    r2 = train(model, train_xy, val_xy, run_dir=run, schedule=sched(), max_epochs=4, verbose=0,
               batch_size=16, callbacks=[rec])
    assert rec.epochs == [2, 3] and r2.history["epoch"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(r2.history["learning_rate"], 1e-4)
    assert r2.best == pytest.approx(r2.history["val_plcc"].max()) and r2.best_epoch == int(r2.history["val_plcc"].idxmax())
    with pytest.raises(ValueError, match="contradicts"):
        train(model, train_xy, val_xy, run_dir=run, schedule=sched(), learning_rate=1e-3, max_epochs=4, verbose=0)
    # resume=False starts over
    r3 = train(model, train_xy, val_xy, run_dir=run, schedule=sched(), max_epochs=1, verbose=0, resume=False,
               batch_size=16)
    assert r3.history["epoch"].tolist() == [0]


def test_safe_name():
    assert safe_name("irnv2_mlsp_wide_orig/i1[5,5,16928]: lr 1e-4") == "irnv2_mlsp_wide_orig_i1_5_5_16928_lr_1e-4"
    with pytest.raises(ValueError):
        safe_name("[]")


def test_train_on_feature_sequences_resumes_draws(tmp_path):
    from ku.data.generators import FeatureSequence
    from ku.data.store import FeatureStore

    n, a = 24, 8
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(n, a, 4)).astype(np.float32)
    ids = [f"i{k}" for k in range(n)]
    with FeatureStore.create(tmp_path / "f.h5", ids, a, (4,)) as s:
        s.write_rows(0, feats)
    y = feats.mean(axis=1).sum(axis=1) + 5
    seq = lambda **kw: FeatureSequence(tmp_path / "f.h5", ids, y, batch_size=7, **kw)  # noqa: E731
    sched = lambda: _small_schedule(stage_epochs=20, patience=20)  # noqa: E731
    run = tmp_path / "run"
    r1 = train(tiny_model(), seq(seed=1), seq(augmentation=0), run_dir=run, schedule=sched(), max_epochs=2, verbose=0)
    assert r1.epochs_run == 2 and r1.history["val_plcc"].notna().all()
    train_seq = seq(seed=1)
    r2 = train(tiny_model(), train_seq, seq(augmentation=0), run_dir=run, schedule=sched(), max_epochs=3, verbose=0)
    assert r2.epochs_run == 1 and r2.history["epoch"].tolist() == [0, 1, 2]
    # the sequence was moved to the resumed epoch (+1 for the on_epoch_end Keras calls before training,
    # +1 after the epoch): the draws continue as in an uninterrupted run
    assert train_seq.epoch == 2 + 2
