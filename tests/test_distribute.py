"""Distributed training (ku.distribute): TF_CONFIG checks, global batches split per
worker, and two MultiWorkerMirroredStrategy workers on 127.0.0.1 training Pool-3FC on a sharded
feature store: both finish, hold identical weights, and reach the loss of a single-process run
(tolerance: rtol 2e-3 on every epoch's loss; measured ~1e-4, float summation order)."""
import json
import textwrap
import time

import numpy as np
import pytest

from ku.data.generators import FeatureSequence, feature_dataset
from ku.data.store import FeatureStore, shard_bounds, shard_path
from ku.distribute import (StrategyConfigError, check_optimizer, get_strategy, per_replica_batch_size,
                           read_tf_config)

import procs
from loopback import read_weights, run_cluster, worker_env

FEATURE_SHAPE = (3, 3, 16)  # tiny "wide" features (Pool-3FC takes (H, W, C))
A = 4
N_TRAIN, N_VAL = 48, 16


# ---------------------------------------------------------------------------------------------
# TF_CONFIG and batch sizes (no TensorFlow cluster needed)

def _cfg(**kw):
    cfg = {"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"type": "worker", "index": 1}}
    cfg.update(kw)
    return {"TF_CONFIG": json.dumps(cfg)}


def test_tf_config_is_checked_with_clear_errors():
    assert read_tf_config(_cfg())["task"]["index"] == 1
    cases = [
        ({}, "needs the environment variable TF_CONFIG"),
        ({"TF_CONFIG": "{not json"}, "not valid JSON"),
        ({"TF_CONFIG": json.dumps({"cluster": {}})}, "'cluster' and 'task'"),
        (_cfg(task={"type": "worker", "index": 2}), "out of range for 2 'worker'"),
        (_cfg(task={"type": "ps", "index": 0}), "'ps' is not in the cluster"),
        (_cfg(cluster={"worker": ["127.0.0.1"]}), "is not 'host:port'"),
        (_cfg(cluster={"chief": []}), "no 'worker'"),
    ]
    for env, msg in cases:
        with pytest.raises(StrategyConfigError, match=msg):
            read_tf_config(env)
    with pytest.raises(StrategyConfigError, match="one of default, mirrored, multi_worker"):
        get_strategy("horovod")


def test_multi_worker_without_tf_config_fails_before_tensorflow(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyConfigError, match="TF_CONFIG"):
        get_strategy("multi_worker")


def test_end_worker_process_returns_in_one_process():
    """A script's last call: in single-worker mode it returns (the scripts always call it; in
    multi-worker mode the two-worker script tests end their processes through it, exit 0)."""
    from ku.distribute import end_worker_process

    assert end_worker_process(get_strategy("default")) is None
    assert end_worker_process(None) is None


class _FakeCoordination:
    """TensorFlow's coordination service as the workers of a cluster see it, one object per
    worker (threads here): the barrier and the key-value store live in the chief's process, so a
    call whose reply has to come from an exited chief fails with "Socket closed"."""

    def __init__(self, shared, me, chief):
        self.shared, self.me, self.chief = shared, me, chief

    def _reply(self):
        if self.me == self.chief:
            return  # in-process
        time.sleep(0.05)  # the reply travels from the chief's process
        if self.chief in self.shared["exited"]:
            raise RuntimeError("Socket closed")

    def wait_at_barrier(self, barrier_id, timeout_in_ms):
        self.shared["barrier"].wait(timeout_in_ms / 1000)
        self._reply()
        self.shared["past_barrier"][self.me] = time.monotonic()

    def set_config_key_value(self, key, value):
        with self.shared["cv"]:
            self.shared["kv"][key] = value
            self.shared["cv"].notify_all()
        self._reply()

    def get_config_key_value(self, key, timeout_in_ms=0):
        with self.shared["cv"]:
            if not self.shared["cv"].wait_for(lambda: key in self.shared["kv"], timeout_in_ms / 1000 or None):
                raise TimeoutError(key)
            return self.shared["kv"][key]


def test_exit_handshake_lets_no_worker_leave_while_another_needs_it():
    """Three workers finishing their work at different times: none returns (and so ends its
    process) before all have finished, and the chief (the coordination service's host) returns
    only after every other worker's barrier reply has arrived. A chief that returned right after
    the barrier fails this test ("Socket closed")."""
    import threading

    from ku.distribute import exit_handshake

    tasks = ["worker:0", "worker:1", "worker:2"]
    shared = {"barrier": threading.Barrier(3), "cv": threading.Condition(), "kv": {}, "exited": set(),
              "past_barrier": {}}
    done, errors, order = {}, [], []

    def worker(i, work_s):
        time.sleep(work_s)  # the script's work (its last collective)
        done[i] = time.monotonic()
        try:
            exit_handshake(_FakeCoordination(shared, tasks[i], tasks[0]),
                           {"task_type": "worker", "task_id": i, "num_workers": 3, "is_chief": i == 0}, tasks,
                           timeout_s=30)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{tasks[i]}: {e}")
        order.append((tasks[i], time.monotonic()))
        shared["exited"].add(tasks[i])

    threads = [threading.Thread(target=worker, args=(i, s)) for i, s in enumerate((0.0, 0.3, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(order) == 3 and min(t for _, t in order) >= max(done.values())
    assert dict(order)["worker:0"] >= max(shared["past_barrier"][t] for t in tasks[1:])


def test_global_batch_size():
    class Two:
        num_replicas_in_sync = 2

    assert per_replica_batch_size(128, None) == 128
    assert per_replica_batch_size(128, Two()) == 64
    assert per_replica_batch_size(9, Two()) == 5  # slices of 5 and 4
    with pytest.raises(ValueError, match="global batch size 1 is smaller than the number of replicas"):
        per_replica_batch_size(1, Two())


def test_gradient_accumulation_is_refused_under_a_strategy():
    """Keras 3 gradient accumulation dies inside tf.distribute replicas (merge_call in a cond):
    check_optimizer says so up front, and lets everything else through."""
    import keras

    mirrored = get_strategy("mirrored")
    accumulating = keras.optimizers.Adam(1e-3, gradient_accumulation_steps=4)
    with pytest.raises(ValueError, match=r"gradient accumulation \(4 steps\).*4x larger"):
        check_optimizer(accumulating, mirrored)
    check_optimizer(accumulating, None)  # one device: fine
    check_optimizer(accumulating, get_strategy("default"))
    check_optimizer(keras.optimizers.Adam(1e-3), mirrored)


# ---------------------------------------------------------------------------------------------
# data: a small store in two shards, features that carry the target

def _features(n, seed):
    """(n, A, 3, 3, 16) float features whose mean over channels 0..3 encodes the MOS."""
    rng = np.random.default_rng(seed)
    mos = rng.uniform(3.0, 8.0, n)
    x = rng.normal(0, 1, (n, A) + FEATURE_SHAPE)
    x[..., :4] += (mos[:, None, None, None, None] - 5.5)
    return x.astype(np.float32), mos.astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    x_tr, y_tr = _features(N_TRAIN, 1)
    x_va, y_va = _features(N_VAL, 2)
    x, ids = np.concatenate([x_tr, x_va]), [f"{900000 + i}" for i in range(N_TRAIN + N_VAL)]
    paths = []
    for k in range(2):  # written as extraction with --shard k/2 does
        a, b = shard_bounds(len(ids), (k, 2))
        p = shard_path(root / "feats.h5", (k, 2))
        with FeatureStore.create(p, ids[a:b], A, FEATURE_SHAPE, attrs={"shard": [k, 2], "pooling": "wide"}) as s:
            s.write_rows(0, x[a:b])
        paths.append(p)
    spec = {"store": str(root / "feats.shard-*.h5"), "train_ids": ids[:N_TRAIN], "train_y": y_tr.tolist(),
            "val_ids": ids[N_TRAIN:], "val_y": y_va.tolist()}
    (root / "data.json").write_text(json.dumps(spec))
    return root, spec


def test_worker_slices_make_up_the_global_batch(data):
    """feature_dataset(input_context) on 2 pipelines and FeatureSequence(part) give each worker a
    slice; together they are exactly the single-process batch (same items, augmentations, targets)."""
    import tensorflow as tf

    _, spec = data
    kw = dict(batch_size=10, augmentation="random", seed=3)
    whole = FeatureSequence(spec["store"], spec["train_ids"], spec["train_y"], **kw)
    assert len(whole) == 5  # 48 items: 4 x 10 + 8
    parts = [FeatureSequence(spec["store"], spec["train_ids"], spec["train_y"], part=(i, 2), **kw) for i in range(2)]
    pipes = [list(feature_dataset(spec["store"], spec["train_ids"], spec["train_y"], **kw,
                                  input_context=tf.distribute.InputContext(2, i, 2)).as_numpy_iterator())
             for i in range(2)]
    for b in range(len(whole)):
        x, y = whole[b]
        for source in ([p[b] for p in parts], [pipe[b] for pipe in pipes]):
            assert [len(s[1]) for s in source] == [len(y) // 2 + len(y) % 2, len(y) // 2]
            np.testing.assert_array_equal(np.concatenate([s[0] for s in source]), x)
            np.testing.assert_array_equal(np.concatenate([s[1] for s in source]), y)
    # a last global batch smaller than the number of replicas is dropped on every worker
    small = FeatureSequence(spec["store"], spec["train_ids"][:21], None, batch_size=10, part=(1, 3))
    assert len(small) == 2 and len(small[1]) == 3


# ---------------------------------------------------------------------------------------------
# two workers on loopback

WORKER = textwrap.dedent('''
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from ku import distribute
    mode, data_json, run_dir, out = sys.argv[1:5]
    strategy = distribute.get_strategy(mode)  # first: MWMS connects the workers here
    import keras
    import numpy as np
    from ku.data.generators import FeatureSequence, feature_dataset
    from ku.models.heads import pool_3fc
    from ku.training import paper_schedule, train

    d = json.load(open(data_json))
    info = distribute.worker_info(strategy)
    keras.utils.set_random_seed(0)
    with distribute.scope(strategy):
        if os.environ.get("KU_TEST_HEAD") == "gap":  # no BatchNormalization (for experiments)
            inp = keras.Input((3, 3, 16))
            h = keras.layers.Dense(8, activation="relu")(keras.layers.GlobalAveragePooling2D()(inp))
            model = keras.Model(inp, keras.layers.Dense(1)(h))
        else:
            model = pool_3fc((3, 3, 16), n_kernels=8, x_size=32, dropout=(0, 0, 0))
    model.layers[-1].bias.assign([5.5])  # start at the mean MOS
    kw = dict(batch_size=8, seed=0)
    if mode == "multi_worker":  # FeatureSequence: train() shards it per worker
        train_data = FeatureSequence(d["store"], d["train_ids"], d["train_y"], augmentation="random", **kw)
    else:  # the same epochs as the distributed run (tf.data: epoch k = draws of epoch k)
        train_data = feature_dataset(d["store"], d["train_ids"], d["train_y"], augmentation="random", **kw)
    val = FeatureSequence(d["store"], d["val_ids"], d["val_y"], augmentation=0, **kw)
    kw = dict(run_dir=run_dir, schedule=paper_schedule(initial_lr=3e-3, stage_epochs=20, patience=5),
              verbose=0, strategy=strategy)
    if mode == "multi_worker":  # 2 epochs, then resume for the 3rd (run_dir shared by the workers)
        r1 = train(model, train_data, val, max_epochs=2, **kw)
        r2 = train(model, train_data, val, max_epochs=3, **kw)
        epochs = [r1.epochs_run, r2.epochs_run]
    else:
        r2 = train(model, train_data, val, max_epochs=3, **kw)
        epochs = [r2.epochs_run]
    model.save_weights(os.path.join(out, f"weights-{mode}-{info['task_id']}.weights.h5"))
    hist = r2.history
    json.dump({"epochs": epochs, "loss": hist["loss"].tolist(), "val_loss": hist["val_loss"].tolist(),
               "chief": info["is_chief"], "n_replicas": strategy.num_replicas_in_sync,
               "run_dir": str(r2.run_dir)},
              open(os.path.join(out, f"result-{mode}-{info['task_id']}.json"), "w"))
''')


def test_two_workers_on_loopback_match_single_process(data, tmp_path):
    root, _ = data
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    run_dir = tmp_path / "run_mw"
    t0 = time.monotonic()
    reference = procs.start(procs.python(script, "default", root / "data.json", tmp_path / "run_single", out),
                            tmp_path / "single.log", env=worker_env())  # the single-process reference, alongside
    workers = run_cluster([script, "multi_worker", root / "data.json", run_dir, out], tmp_path,
                          tmpdir=tmp_path / "tmp", others=[reference])
    seconds = time.monotonic() - t0
    tails = procs.failure_message("the processes' logs:", [*workers, reference])
    for name in ("multi_worker-0", "multi_worker-1", "default-0"):
        assert (out / f"result-{name}.json").is_file(), f"result-{name}.json missing\n{tails}"

    res = {name: json.loads((out / f"result-{name}.json").read_text())
           for name in ("multi_worker-0", "multi_worker-1", "default-0")}
    w0, w1 = res["multi_worker-0"], res["multi_worker-1"]
    assert w0["chief"] and not w1["chief"] and w0["n_replicas"] == w1["n_replicas"] == 2, tails
    assert w0["epochs"] == w1["epochs"] == [2, 1]  # the second call resumed at epoch 2
    assert w0["loss"] == w1["loss"] and w0["val_loss"] == w1["val_loss"]  # all-reduced logs
    assert len(w0["loss"]) == 3

    # identical weights (trainable and BatchNormalization statistics), bit for bit
    a, b = read_weights(out / "weights-multi_worker-0.weights.h5"), read_weights(out / "weights-multi_worker-1.weights.h5")
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # only the chief wrote the shared run_dir; the other worker's temporary copy is gone
    assert w1["run_dir"] == str(run_dir)
    assert (run_dir / "backup").is_dir() and (run_dir / "best.weights.h5").is_file()
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 1 + 3
    assert not list((tmp_path / "tmp").glob("ku-worker1-*"))

    # the loss of one process on the same global batches (synchronized BatchNormalization: the
    # statistics of the whole batch, as in one process): equal up to float summation order, at
    # every epoch, also across the resume; and it learns
    single = res["default-0"]
    mw_loss, sp_loss = np.array(w0["loss"]), np.array(single["loss"])
    assert sp_loss[-1] < 0.5 * sp_loss[0], sp_loss
    np.testing.assert_allclose(mw_loss, sp_loss, rtol=2e-3)
    np.testing.assert_allclose(w0["val_loss"], single["val_loss"], rtol=2e-3)
    print(f"two workers + single process: {seconds:.1f} s; final loss 2 workers {mw_loss[-1]:.4f}, "
          f"1 process {sp_loss[-1]:.4f}; val_loss {w0['val_loss'][-1]:.4f} vs {single['val_loss'][-1]:.4f}")
