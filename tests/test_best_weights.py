"""ku.training.best_weights.BestWeights: the store of the best weights that StagedLearningRate asks
to keep, reload and restore (files: best.weights.h5, best.previous.weights.h5)."""
import keras
import numpy as np

from ku.training import BestWeights, paper_schedule
from ku.training.best_weights import read_best_attrs


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((3,))
    return keras.Model(inp, keras.layers.Dense(2, name="dense")(inp))


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_keep_writes_the_file_and_moves_the_previous_best(tmp_path):
    model = _model()
    store = BestWeights(tmp_path / "best.weights.h5", "val_loss")
    assert store.previous_path == tmp_path / "best.previous.weights.h5"
    assert not store.on_disk() and not store.restore(model)
    first = model.get_weights()
    store.keep(model, 0.5, 0)
    assert read_best_attrs(store.path) == {"monitor": "val_loss", "best": 0.5, "best_epoch": 0}
    assert not store.previous_path.exists()
    model.set_weights([w + 1 for w in first])
    store.keep(model, 0.25, 3)
    assert read_best_attrs(store.path)["best_epoch"] == 3
    assert read_best_attrs(store.previous_path) == {"monitor": "val_loss", "best": 0.5, "best_epoch": 0}

    other = _model(seed=1)
    reloaded = BestWeights(store.path, "val_loss")
    before = other.get_weights()
    reloaded.load(other)  # into memory only
    assert _same(other.get_weights(), before)
    assert reloaded.from_file["best_epoch"] == 3
    assert reloaded.restore(other) and _same(other.get_weights(), [w + 1 for w in first])
    reloaded.load(other, store.previous_path)
    assert reloaded.restore(other) and _same(other.get_weights(), first)


def test_a_file_for_another_monitor_is_ignored(tmp_path):
    model = _model()
    BestWeights(tmp_path / "best.weights.h5", "val_loss").keep(model, 0.5, 0)
    store = BestWeights(tmp_path / "best.weights.h5", "val_plcc")
    store.load(model)
    assert store.weights is None and store.from_file is None


def test_the_schedule_keeps_its_best_weights_in_the_store(tmp_path):
    sched = paper_schedule(best_weights_path=tmp_path / "b" / "best.weights.h5")
    assert sched.best_weights_store.path == sched.best_weights_path == tmp_path / "b" / "best.weights.h5"
    assert sched.best_weights_store.monitor == "val_loss"
    sched.best_weights_path = tmp_path / "c.weights.h5"
    assert sched.best_weights_store.path == tmp_path / "c.weights.h5"
    sched.set_state({**sched._fresh_state(1e-4), "best": 0.1, "best_epoch": 0}, best_weights=[np.ones(2)])
    assert _same(sched.best_weights, [np.ones(2)]) and sched.best_weights_store.weights is sched.best_weights
