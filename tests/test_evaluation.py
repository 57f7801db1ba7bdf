"""Augmentation-averaged prediction on a feature store (Hosu et al. 2019 §3.1) and the
"ours vs paper" table (§4, Table 3)."""
import keras
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from ku.data.store import FeatureStore, IncompleteRowsError, MissingIdsError
from ku.evaluation import format_table, mean_scores, predict_augmented, report_table

N, A, FS = 13, 8, (6,)
IDS = [f"img{i}" for i in range(N)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "feats.h5"
    feats = np.random.default_rng(0).normal(size=(N, A) + FS).astype(np.float32)
    with FeatureStore.create(path, IDS + ["missing_row"], A, FS) as s:
        s.write_rows(0, feats)
    return path, feats.astype(np.float16).astype(np.float32)  # what the store holds


def model(n_out=1, activation=None):
    init = keras.initializers.GlorotUniform(seed=1)
    return keras.Sequential([keras.Input(FS), keras.layers.Dense(5, activation="tanh", kernel_initializer=init),
                             keras.layers.Dense(n_out, activation=activation, kernel_initializer=init)])


def by_hand(m, feats, rows, augs=range(A)):
    """Mean over augmentations of the model's outputs, one image and one augmentation at a time."""
    out = []
    for r in rows:
        out.append(np.mean([np.asarray(m(feats[r, a][None], training=False))[0] for a in augs], axis=0))
    return np.array(out)


def test_predict_augmented_scores(store):
    path, feats = store
    m = model()
    order = [7, 2, 12, 0, 5, 3]
    pred = predict_augmented(m, path, [IDS[i] for i in order], batch_size=4)  # 4 does not divide 6
    assert pred.shape == (6,)
    np.testing.assert_allclose(pred, by_hand(m, feats, order)[:, 0], rtol=1e-5, atol=1e-6)
    # a single augmentation is not the same thing
    assert not np.allclose(pred, by_hand(m, feats, order, [0])[:, 0], atol=1e-4)
    # ids table, subsets by index and by name
    df = pd.DataFrame({"image_id": IDS, "mos": np.arange(N, dtype=float)})
    np.testing.assert_allclose(predict_augmented(m, path, df, batch_size=5), by_hand(m, feats, range(N))[:, 0],
                               rtol=1e-5, atol=1e-6)
    sub = predict_augmented(m, path, IDS[:3], augmentations=[1, 6])
    np.testing.assert_allclose(sub, by_hand(m, feats, range(3), [1, 6])[:, 0], rtol=1e-5, atol=1e-6)
    names = FeatureStore(path).augmentations
    np.testing.assert_allclose(predict_augmented(m, path, IDS[:3], augmentations=[names[1], names[6]]), sub)


def test_predict_augmented_distributions(store):
    path, feats = store
    m = model(n_out=4, activation="softmax")
    pred = predict_augmented(m, path, IDS, batch_size=3)
    assert pred.shape == (N, 4)
    np.testing.assert_allclose(pred, by_hand(m, feats, range(N)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)


def test_predict_augmented_errors(store):
    path, _ = store
    with pytest.raises(MissingIdsError, match="nope"):
        predict_augmented(model(), path, ["img0", "nope"])
    with pytest.raises(IncompleteRowsError, match="missing_row"):
        predict_augmented(model(), path, ["missing_row"])
    with pytest.raises(ValueError, match="out of range"):
        predict_augmented(model(), path, IDS, augmentations=[8])


def test_mean_scores():
    p = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(mean_scores(p), [2.5, 1.0])
    np.testing.assert_allclose(mean_scores(2 * p), [2.5, 1.0])  # histograms are normalised
    np.testing.assert_allclose(mean_scores(np.array([[3.0], [4.0]])), [3.0, 4.0])
    with pytest.raises(ValueError, match="negative"):
        mean_scores(np.array([[0.5, -0.1, 0.6]]))


def test_report_table():
    rng = np.random.default_rng(4)
    t = rng.uniform(2, 8, size=200)
    p = t + rng.normal(scale=1.0, size=200)
    df = report_table(t, p, paper_rows=("Pool-3FC (*)", "Single-3FC"))
    assert df["model"].tolist() == ["ku (this run)", "Pool-3FC (*)", "Single-3FC"]
    run = df.iloc[0]
    assert run["SRCC"] == pytest.approx(scipy.stats.spearmanr(t, p).statistic)
    assert run["PLCC"] == pytest.approx(scipy.stats.pearsonr(t, p).statistic)
    assert run["accuracy"] == pytest.approx(np.mean((t > 5) == (p > 5)))
    assert run["N"] == 200
    assert tuple(df.iloc[1][["SRCC", "PLCC", "accuracy"]]) == pytest.approx((0.756, 0.757, 0.8172))
    assert tuple(df.iloc[2][["SRCC", "PLCC", "accuracy"]]) == pytest.approx((0.729, 0.733, 0.8065))
    text = format_table(df)
    assert "81.72%" in text and "0.756" in text and "Hosu 2019 Table 3" in text
    assert f"{100 * run['accuracy']:.2f}%" in text
    assert "NaN" not in text and "nan" not in text
    # distributions are reduced to means
    k = np.arange(1, 11)
    dist = rng.dirichlet(np.ones(10), size=50)
    df2 = report_table(dist, dist @ k + 0.1, paper_rows=None)
    assert len(df2) == 1 and df2["SRCC"].iloc[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no paper row"):
        report_table(t, p, paper_rows=("Pool-9FC",))
