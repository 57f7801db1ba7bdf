"""Planted signal through the Hosu et al. 2019 training path (§3.1, §3.3): feature store ->
FeatureSequence (one random stored augmentation per image and epoch) -> train (staged schedule)
-> predict_augmented (mean over the 8 stored augmentations).

The store holds features whose MOS is a known function (linear in a latent vector) plus noise,
with its rows in another order than the ids table, so every place where a table row is matched
with a store row (targets, random augmentation draws, test-time averaging) is exercised:
a correct pipeline reaches test SRCC >= 0.95 (the noise allows ~0.99), the same pipeline on
permuted training labels stays near 0, and test-time averaging is the mean of the head's outputs
on the 8 stored augmentations of the right image, in any stored order.
"""
import keras
import numpy as np
import pandas as pd
import pytest

from ku.data.generators import FeatureSequence
from ku.data.store import FeatureStore
from ku.evaluation import predict_augmented
from ku.metrics import srcc
from ku.models import heads
from ku.pipelines.mlsp import build_head, init_output_bias
from ku.training import paper_schedule, train

N_TRAIN, N_VAL, N_TEST = 384, 64, 256
CHANNELS, N_AUG = 48, 8
AUG_NOISE = 0.5  # per-augmentation perturbation of the features (crops / flips differ)
MOS_NOISE = 0.1  # label noise; the latent signal has standard deviation 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A float16 store (8 augmentations) and its ids table; MOS = 5 + latent . w + noise, the
    stored features of augmentation a = latent + AUG_NOISE * noise_a (scaled and shifted like
    ReLU features)."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_VAL + N_TEST
    latent = rng.normal(size=(n, CHANNELS))
    w = rng.normal(size=CHANNELS)
    mos = 5.0 + latent @ (w / np.linalg.norm(w)) + MOS_NOISE * rng.normal(size=n)
    feats = latent[:, None, :] + AUG_NOISE * rng.normal(size=(n, N_AUG, CHANNELS))
    feats = 2.0 + 0.7 * feats
    ids = [f"img{i:04d}" for i in range(n)]
    sets = np.array(["training"] * N_TRAIN + ["validation"] * N_VAL + ["test"] * N_TEST)
    table = pd.DataFrame({"image_id": ids, "mos": mos.astype(np.float32), "set": sets})
    table = table.iloc[rng.permutation(n)].reset_index(drop=True)  # table order != store order

    store_order = rng.permutation(n)
    path = tmp_path_factory.mktemp("planted_mlsp") / "features.h5"
    with FeatureStore.create(path, [ids[i] for i in store_order], N_AUG, (CHANNELS,),
                             dtype="float16") as store:
        store.write_rows(0, feats[store_order].astype(np.float16))
    parts = {s: table[table.set == s].reset_index(drop=True) for s in ("training", "validation", "test")}
    return {"path": path, "parts": parts, "feats": feats, "ids": ids}


def _train_and_test(planted, run_dir, train_targets=None, epochs=25):
    """The pipeline of ku.pipelines.mlsp.run_mlsp on the planted store (Single-1FC, input
    standardisation from the training features, output bias at the training mean)."""
    path, parts = planted["path"], planted["parts"]
    y_train = parts["training"]["mos"].to_numpy(np.float32) if train_targets is None else train_targets
    keras.utils.set_random_seed(0)
    model = build_head("single1fc", (CHANNELS,), input_normalization=True)
    heads.adapt_head_input(model, path, parts["training"]["image_id"].tolist())
    init_output_bias(model, float(y_train.mean()))
    train_seq = FeatureSequence(path, parts["training"], y_train, batch_size=32, augmentation="random", seed=0)
    val_seq = FeatureSequence(path, parts["validation"], "mos", batch_size=32, augmentation=0)
    try:
        train(model, train_seq, val_seq, run_dir=run_dir, schedule=paper_schedule(initial_lr=3e-3, verbose=0),
              max_epochs=epochs, verbose=0, shuffle=False)
    finally:
        train_seq.close()
        val_seq.close()
    y_pred = predict_augmented(model, path, parts["test"], batch_size=40)
    return model, y_pred


@pytest.fixture(scope="module")
def trained(planted, tmp_path_factory):
    return _train_and_test(planted, tmp_path_factory.mktemp("run"))


def test_planted_signal_is_learned(planted, trained):
    _, y_pred = trained
    y_true = planted["parts"]["test"]["mos"].to_numpy()
    assert y_pred.shape == (N_TEST,)
    assert srcc(y_true, y_pred) >= 0.95


def test_permuted_labels_learn_nothing(planted, tmp_path):
    y_train = planted["parts"]["training"]["mos"].to_numpy(np.float32)
    shuffled = np.random.default_rng(1).permutation(y_train)
    _, y_pred = _train_and_test(planted, tmp_path, train_targets=shuffled)
    y_true = planted["parts"]["test"]["mos"].to_numpy()
    assert abs(srcc(y_true, y_pred)) < 0.2


def test_test_time_average_is_the_mean_over_the_image_augmentations(planted, trained, tmp_path):
    """predict_augmented == the mean of the head's outputs on the 8 stored augmentations of each
    test image, computed here from the generating array; the same with the augmentation axis
    shuffled per image in a second store, and for the ids in another order."""
    model, y_pred = trained
    test_ids = planted["parts"]["test"]["image_id"].tolist()
    index = {i: k for k, i in enumerate(planted["ids"])}
    feats = planted["feats"][[index[i] for i in test_ids]].astype(np.float16).astype(np.float32)
    outputs = model.predict(feats.reshape(-1, CHANNELS), verbose=0, batch_size=256)
    by_hand = outputs.reshape(N_TEST, N_AUG).mean(axis=1)
    np.testing.assert_allclose(y_pred, by_hand, rtol=1e-5, atol=1e-5)
    assert np.std(outputs.reshape(N_TEST, N_AUG), axis=1).mean() > 0.05  # the 8 outputs differ

    rng = np.random.default_rng(2)
    shuffled = np.stack([f[rng.permutation(N_AUG)] for f in feats])
    path = tmp_path / "shuffled_augmentations.h5"
    with FeatureStore.create(path, test_ids[::-1], N_AUG, (CHANNELS,), dtype="float32") as store:
        store.write_rows(0, shuffled[::-1])
    np.testing.assert_allclose(predict_augmented(model, path, test_ids, batch_size=7), y_pred,
                               rtol=1e-5, atol=1e-5)
    reverse = predict_augmented(model, planted["path"], test_ids[::-1], batch_size=64)
    np.testing.assert_allclose(reverse[::-1], y_pred, rtol=1e-5, atol=1e-5)
