"""ku.baselines: the mean baseline and the ridge probe, against numpy references."""
import numpy as np
import pytest

from ku import baselines
from ku.baselines import baseline_table, mean_baseline, ridge_probe


def _data(n=60, d=40, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d) + rng.normal(size=d)
    w = rng.normal(size=d)
    y = ((x - x.mean(0)) / x.std(0)) @ w + noise * rng.normal(size=n)
    return x, y


def _primal(x_train, y_train, x_test, lam):
    """Reference: ridge in the primal on z-scored features with a free intercept."""
    mu, sd = x_train.mean(0), x_train.std(0)
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y_train - y_train.mean()))
    return b @ w + y_train.mean()


def test_ridge_equals_primal_solution():
    x, y = _data()
    pred, alpha = ridge_probe(x[:40], y[:40], x[40:], alphas=[0.3])
    z = (x[:40] - x[:40].mean(0)) / x[:40].std(0)
    lam = 0.3 * np.trace(z @ z.T) / 40
    np.testing.assert_allclose(pred, _primal(x[:40], y[:40], x[40:], lam), rtol=1e-8, atol=1e-8)
    assert alpha == 0.3


def test_alpha_chosen_by_brute_force_leave_one_out():
    x, y = _data(n=30, d=50, noise=1.0, seed=1)
    alphas = [1e-3, 1e-1, 1.0, 10.0]
    _, chosen = ridge_probe(x, y, x[:2], alphas=alphas)

    def loo(a):
        err = []
        for i in range(len(y)):
            m = np.arange(len(y)) != i
            # the probe standardises with all training rows: do the same here
            mu, sd = x.mean(0), x.std(0)
            z = (x - mu) / sd
            lam = a * np.trace(z @ z.T) / len(y)
            zi, yi = z[m], y[m]
            w = np.linalg.solve(zi.T @ zi + lam * np.eye(z.shape[1]), zi.T @ (yi - yi.mean()))
            err.append((y[i] - (z[i] @ w + yi.mean())) ** 2)
        return np.mean(err)

    assert chosen == alphas[int(np.argmin([loo(a) for a in alphas]))]


def test_planted_signal_and_permuted_labels():
    x, y = _data(n=200, d=40, noise=0.3, seed=2)
    pred, _ = ridge_probe(x[:150], y[:150], x[150:])
    assert np.corrcoef(pred, y[150:])[0, 1] > 0.9
    perm = np.random.default_rng(3).permutation(150)
    pred, _ = ridge_probe(x[:150], y[:150][perm], x[150:])
    assert abs(np.corrcoef(pred, y[150:])[0, 1]) < 0.3


def test_constant_columns_are_dropped_not_amplified():
    x, y = _data(n=50, d=10, seed=4)
    noisy = np.hstack([x, 1.0 + 1e-9 * np.random.default_rng(5).normal(size=(50, 200))])
    a, _ = ridge_probe(x[:40], y[:40], x[40:], alphas=[1.0])
    b, _ = ridge_probe(noisy[:40], y[:40], noisy[40:], alphas=[1.0])
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_ridge_errors_name_the_problem():
    x, y = _data(n=10, d=4)
    with pytest.raises(ValueError, match="9 training feature rows for 10"):
        ridge_probe(x[:9], y, x)
    with pytest.raises(ValueError, match="dimensions"):
        ridge_probe(x, y, x[:, :3])
    with pytest.raises(ValueError, match="constant"):
        ridge_probe(np.ones((10, 3)), y, np.ones((2, 3)))


def test_mean_baseline_and_table():
    y_train = np.array([4.0, 5.0, 6.0])
    assert mean_baseline(y_train, 3).tolist() == [5.0, 5.0, 5.0]
    with pytest.raises(ValueError):
        mean_baseline([], 2)
    t = np.array([3.0, 4.5, 6.0, 7.0])
    table = baseline_table(t, t + 0.5, y_train, probe=t[::-1].copy(), label="m")
    assert table["model"].tolist() == ["m", "predict the training mean", "ridge probe"]
    assert table.loc[0, "SRCC"] == pytest.approx(1.0) and table.loc[2, "SRCC"] == pytest.approx(-1.0)
    assert np.isnan(table.loc[1, "SRCC"]) and np.isnan(table.loc[1, "PLCC"])
    assert table.loc[0, "RMSE"] == pytest.approx(0.5)
    assert table.loc[1, "RMSE"] == pytest.approx(np.sqrt(np.mean((t - 5.0) ** 2)))
    assert table.loc[1, "accuracy"] == pytest.approx(0.5)  # 5.0 is not > 5: all "low"


def test_store_features_average_the_augmentations(tmp_path):
    from ku.data.store import FeatureStore

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 8, 3)).astype(np.float16)
    path = tmp_path / "s.h5"
    with FeatureStore.create(path, ids=["a", "b", "c", "d"], feature_shape=(3,), n_augmentations=8) as s:
        s.write_rows(np.arange(4), feats)
    got = baselines.store_features(path, ["c", "a"])
    np.testing.assert_allclose(got, feats[[2, 0]].astype(np.float32).mean(axis=1), rtol=1e-6)


def test_with_baselines_inserts_rows_after_the_run():
    from ku.evaluation import format_table, report_table
    from ku.baselines import with_baselines

    t = np.array([3.0, 4.5, 6.0, 7.0, 5.5])
    p = t + np.array([0.1, -0.2, 0.3, 0.0, 0.1])
    table = with_baselines(report_table(t, p, paper_rows=("Pool-3FC (*)",), label="run"), t, p,
                           [5.0, 6.0], probe=t * 2)
    assert table["model"].tolist()[:3] == ["run", "predict the training mean", "ridge probe"]
    assert table["source"].tolist()[:3] == ["this run", "baseline", "baseline"]
    assert table["source"].iloc[3] != "baseline" and np.isnan(table["RMSE"].iloc[3])
    assert table["RMSE"].iloc[0] == pytest.approx(np.sqrt(np.mean((t - p) ** 2)))
    text = format_table(table)
    assert "predict the training mean" in text and "RMSE" in text
