"""FeatureSequence / feature_dataset: one uniform random augmentation per item per epoch, seeded
locally (Hosu et al. 2019 §3.1), deterministic validation, all augmentations for testing."""
import pickle
import random

import numpy as np
import pytest
import scipy.stats

from ku.data.generators import FeatureSequence, epoch_plan, feature_dataset, iter_all_augmentations
from ku.data.store import FeatureStore, IncompleteRowsError, MissingIdsError

N, A, FS = 40, 8, (3,)
IDS = [f"id{i}" for i in range(N)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """features[r, a] = (r, a, 100 + r) -- exact in float16, so a batch tells which rows and
    augmentations were read. Row 40 ('incomplete') is never written."""
    path = tmp_path_factory.mktemp("gen") / "feats.h5"
    feats = np.zeros((N, A) + FS, np.float32)
    feats[..., 0] = np.arange(N)[:, None]
    feats[..., 1] = np.arange(A)[None, :]
    feats[..., 2] = 100 + np.arange(N)[:, None]
    with FeatureStore.create(path, IDS + ["incomplete"], A, FS) as s:
        s.write_rows(0, feats)
    return path


def _decode(x):
    return x[:, 0].astype(int), x[:, 1].astype(int)


def _epoch(seq):
    return [seq[i] for i in range(len(seq))]


def test_training_batches_one_augmentation_per_item(store):
    targets = np.arange(N, dtype=np.float32) * 0.5
    seq = FeatureSequence(store, IDS, targets, batch_size=16, seed=3)
    assert len(seq) == 3 and seq.shuffle
    rows_seen = []
    for x, y in _epoch(seq):
        assert x.dtype == np.float32 and x.shape[1:] == FS and y.dtype == np.float32
        rows, augs = _decode(x)
        np.testing.assert_array_equal(y, rows * 0.5)  # targets follow their items
        np.testing.assert_array_equal(augs, seq.augmentations_for_epoch()[rows])
        rows_seen += rows.tolist()
    assert sorted(rows_seen) == list(range(N)) and rows_seen != list(range(N))  # all once, shuffled
    assert FeatureSequence(store, IDS, targets, batch_size=16, drop_remainder=True).num_batches == 2


def test_uniform_draws_chi_square():
    n_epochs = 200
    draws = np.concatenate([epoch_plan(N, A, seed=0, epoch=e, shuffle=True, augmentation="random")[1]
                            for e in range(n_epochs)])
    counts = np.bincount(draws, minlength=A)
    assert counts.sum() == N * n_epochs
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    # per item too: each item's draws over the epochs are uniform (pooled test over items)
    per_item = np.stack([epoch_plan(N, A, 0, e, True, "random")[1] for e in range(n_epochs)])  # (E, N)
    item_counts = np.stack([np.bincount(per_item[:, i], minlength=A) for i in range(N)])
    chi2 = (((item_counts - n_epochs / A) ** 2) / (n_epochs / A)).sum()
    assert scipy.stats.chi2.sf(chi2, N * (A - 1)) > 1e-3


def test_reproducible_by_seed_different_across_epochs_and_seeds(store):
    a = FeatureSequence(store, IDS, batch_size=16, seed=7)
    b = FeatureSequence(store, IDS, batch_size=16, seed=7)
    c = FeatureSequence(store, IDS, batch_size=16, seed=8)
    e0a, e0b, e0c = _epoch(a), _epoch(b), _epoch(c)
    for u, v in zip(e0a, e0b):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, v) for u, v in zip(e0a, e0c))
    a.on_epoch_end()
    b.on_epoch_end()
    assert a.epoch == 1
    e1a = _epoch(a)
    for u, v in zip(e1a, _epoch(b)):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(np.concatenate(e0a), np.concatenate(e1a))
    assert not np.array_equal(a.augmentations_for_epoch(0), a.augmentations_for_epoch(1))
    assert not np.array_equal(a.order_for_epoch(0), a.order_for_epoch(1))
    # jumping to an epoch (resume) gives that epoch's batches
    d = FeatureSequence(store, IDS, batch_size=16, seed=7, epoch=1)
    for u, v in zip(e1a, _epoch(d)):
        np.testing.assert_array_equal(u, v)


def test_global_rng_untouched(store):
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    seq = FeatureSequence(store, IDS, np.zeros(N), batch_size=8, seed=1)
    for _ in range(3):
        _epoch(seq)
        seq.on_epoch_end()
    list(feature_dataset(store, IDS, batch_size=8, seed=1).as_numpy_iterator())
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state


def test_validation_is_deterministic(store):
    y = np.arange(N, dtype=np.float32)
    val = FeatureSequence(store, IDS, y, batch_size=16, augmentation=0)
    assert not val.shuffle
    first = _epoch(val)
    rows, augs = _decode(np.concatenate([x for x, _ in first]))
    np.testing.assert_array_equal(rows, np.arange(N))
    assert (augs == 0).all()
    val.on_epoch_end()
    for (x0, y0), (x1, y1) in zip(first, _epoch(val)):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    aug5 = FeatureSequence(store, IDS, batch_size=64, augmentation=5)
    assert (_decode(aug5[0])[1] == 5).all()


def test_all_augmentations_for_testing(store):
    y = np.stack([np.arange(N), -np.arange(N)], 1).astype(np.float32)  # (N, K) targets
    seq = FeatureSequence(store, IDS, y, batch_size=16, augmentation="all")
    x, yy = seq[2]  # last, partial batch: 8 items
    assert x.shape == (8 * A,) + FS and yy.shape == (8 * A, 2)
    rows, augs = _decode(x)
    np.testing.assert_array_equal(rows, np.repeat(np.arange(32, 40), A))  # item-major
    np.testing.assert_array_equal(augs, np.tile(np.arange(A), 8))
    np.testing.assert_array_equal(yy[:, 0], rows)
    batches = list(iter_all_augmentations(store, IDS[::-1], batch_size=16))
    assert [b.shape for b in batches] == [(16, A) + FS, (16, A) + FS, (8, A) + FS]
    allx = np.concatenate(batches)
    np.testing.assert_array_equal(allx[:, :, 0], np.repeat(np.arange(N)[::-1, None], A, 1))
    np.testing.assert_array_equal(allx[:, :, 1], np.tile(np.arange(A), (N, 1)))


def test_tf_data_matches_sequence(store):
    y = np.arange(N, dtype=np.float32)
    seq = FeatureSequence(store, IDS, y, batch_size=16, seed=5)
    ds = feature_dataset(store, IDS, y, batch_size=16, seed=5)
    assert ds.element_spec[0].shape.as_list() == [None, 3] and ds.element_spec[1].shape.as_list() == [None]
    for epoch in range(2):  # each pass over the dataset is the next epoch
        got = list(ds.as_numpy_iterator())
        want = _epoch(seq)
        assert len(got) == len(want)
        for (gx, gy), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
        seq.on_epoch_end()
    x_only = feature_dataset(store, IDS, None, batch_size=64, augmentation=3)
    (x,) = list(x_only.as_numpy_iterator())
    assert x.shape == (N,) + FS and (_decode(x)[1] == 3).all()


def test_errors_and_dataframe_targets(store):
    import pandas as pd

    with pytest.raises(IncompleteRowsError, match=r"feats\.h5.*'incomplete'"):
        FeatureSequence(store, IDS + ["incomplete"])
    with pytest.raises(MissingIdsError, match=r"feats\.h5.*'nope'"):
        FeatureSequence(store, ["id1", "nope"])
    with pytest.raises(ValueError, match="targets"):
        FeatureSequence(store, IDS, np.zeros(3))
    with pytest.raises(ValueError, match="augmentation"):
        FeatureSequence(store, IDS, augmentation="mean")
    with pytest.raises(ValueError, match="out of range"):
        FeatureSequence(store, IDS, augmentation=8)
    df = pd.DataFrame({"image_id": IDS[:10], "mos": np.arange(10.0), "dist_1": 1.0, "dist_2": 2.0})
    x, y = FeatureSequence(store, df, "mos", batch_size=4, augmentation=0)[0]
    np.testing.assert_array_equal(y, np.arange(4.0))
    _, y2 = FeatureSequence(store, df, ["dist_1", "dist_2"], batch_size=4, augmentation=0)[1]
    assert y2.shape == (4, 2)
    with pytest.raises(IndexError):
        FeatureSequence(store, df, batch_size=4)[3]


def test_pickle_and_fit_with_workers(store):
    import keras

    y = np.arange(N, dtype=np.float32) / N
    seq = FeatureSequence(store, IDS, y, batch_size=16, seed=2, workers=2)
    ref = seq[1]
    clone = pickle.loads(pickle.dumps(seq))  # open HDF5 handle is not pickled; reopened lazily
    assert clone._store is None
    np.testing.assert_array_equal(clone[1][0], ref[0])
    model = keras.Sequential([keras.Input(FS), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    hist = model.fit(seq, epochs=2, shuffle=False, verbose=0)
    assert len(hist.history["loss"]) == 2 and seq.epoch >= 1


class _Logged(FeatureSequence):
    def __getitem__(self, index):
        self.log.append((self.epoch, int(index)))
        return super().__getitem__(index)


def test_fit_resume_uses_same_draws(store):
    """fit(epochs=3) vs fit(epochs=1) + a new sequence(epoch=1) with fit(initial_epoch=1)."""
    import keras

    y = np.zeros(N, np.float32)

    def run(epoch, initial_epoch, epochs):
        seq = _Logged(store, IDS, y, batch_size=20, seed=4, epoch=epoch)
        seq.log = []
        model = keras.Sequential([keras.Input(FS), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(seq, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0)
        return [e for e, i in seq.log[2:]]  # the first 2 reads are Keras' signature peek

    full = run(0, 0, 3)
    assert full == [1, 1, 2, 2, 3, 3]  # Keras epoch k -> plan epoch k + 1
    assert run(0, 0, 1) + run(1, 1, 3) == full


def test_threaded_workers_give_the_same_training(store):
    """workers=2 (Keras' ordered enqueuer, as run_mlsp trains): the same batches in the same order
    with the same draws every epoch, hence bit-identical weights after 3 epochs."""
    import keras

    y = np.linspace(-1, 1, N).astype(np.float32)

    def run(workers):
        keras.utils.set_random_seed(0)
        seq = _Logged(store, IDS, y, batch_size=8, seed=5, workers=workers)
        seq.log = []
        model = keras.Sequential([keras.Input(FS), keras.layers.Dense(4, "relu"), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(1e-3), "mse")
        model.fit(seq, epochs=3, shuffle=False, verbose=0)
        seq.close()
        return model.get_weights(), sorted(seq.log[2:])

    (w1, log1), (w2, log2) = run(1), run(2)
    assert log1 == log2 and len(log1) == 3 * (N // 8)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
