"""ku.metrics against scipy and against numbers worked out by hand from the papers' formulas."""
import math

import numpy as np
import pytest
from scipy import stats

from ku import metrics as M

# A 3-bin example worked by hand (scores 1, 2, 3).
T3 = np.array([0.2, 0.5, 0.3])
Q3 = np.array([0.5, 0.3, 0.2])
# CDF_t = [0.2, 0.7, 1.0], CDF_q = [0.5, 0.8, 1.0] -> CDF differences [-0.3, -0.1, 0]
# bin differences q - t = [0.3, -0.2, -0.1], t + q = [0.7, 0.8, 0.5]


def _rand_dists(rng, n, k, alpha=1.0):
    return rng.dirichlet(np.full(k, alpha), size=n)


# ------------------------------------------------------------------ scores
def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    t = rng.normal(5.5, 0.8, 200)
    p = 0.6 * t + rng.normal(0, 0.5, 200)
    t[:20] = np.round(t[:20])  # ties
    p[10:40] = np.round(p[10:40], 1)
    assert M.srcc(t, p) == pytest.approx(stats.spearmanr(t, p).statistic, abs=1e-12)
    assert M.plcc(t, p) == pytest.approx(stats.pearsonr(t, p).statistic, abs=1e-12)
    # (N, 1) model outputs are accepted
    assert M.plcc(t[:, None], p[:, None]) == pytest.approx(M.plcc(t, p), abs=1e-15)


def test_correlations_by_hand():
    # ranks differ by a swap of 2 and 3: SRCC = 1 - 6 * 2 / (4 * 15) = 0.8
    assert M.srcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert M.plcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert M.srcc([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)
    assert M.plcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_constant_input_gives_nan_with_warning():
    with pytest.warns(RuntimeWarning):
        assert math.isnan(M.plcc([1, 2, 3], [5, 5, 5]))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(M.srcc([1, 2, 3], [5, 5, 5]))


def test_accuracy_threshold_is_strict():
    # high = score > 5; true [F, T, F, T], pred [T, T, F, F] -> 2 of 4 agree
    assert M.accuracy([4, 6, 5, 5.5], [6, 7, 4, 5.0]) == 0.5
    assert M.accuracy([4, 6], [4.9, 5.1]) == 1.0
    assert M.accuracy([4, 6], [4.9, 5.1], threshold=5.5) == 0.5


def test_errors_by_hand():
    t, p = [1.0, 2.0, 3.0], [2.0, 2.0, 5.0]
    assert M.mse(t, p) == pytest.approx(5 / 3)
    assert M.mae(t, p) == pytest.approx(1.0)
    assert M.rmse(t, p) == pytest.approx(math.sqrt(5 / 3))


def test_score_input_errors_name_arguments():
    with pytest.raises(ValueError, match="y_true and y_pred"):
        M.mse([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="y_pred"):
        M.plcc([1, 2, 3], [1, np.nan, 2])
    with pytest.raises(ValueError, match="y_true"):
        M.srcc(np.ones((3, 2)), [1, 2, 3])


# ------------------------------------------------------------------ distributions, by hand
def test_distribution_metrics_by_hand():
    assert M.emd(T3, Q3, r=1) == pytest.approx((0.3 + 0.1 + 0.0) / 3)
    assert M.emd(T3, Q3, r=2) == pytest.approx(math.sqrt((0.09 + 0.01 + 0.0) / 3))
    assert M.cd_loss(T3, Q3) == pytest.approx(0.09 + 0.01)
    assert M.euclidean_distance(T3, Q3) == pytest.approx(math.sqrt(0.09 + 0.04 + 0.01))
    assert M.chi_square(T3, Q3) == pytest.approx(0.5 * (0.09 / 0.7 + 0.04 / 0.8 + 0.01 / 0.5))
    # <t, q> = 0.31, |t|^2 = |q|^2 = 0.38
    assert M.cosine_distance(T3, Q3) == pytest.approx(1 - 0.31 / 0.38)
    kl = 0.2 * math.log(0.2 / 0.5) + 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.2)
    assert M.kl_divergence(T3, Q3) == pytest.approx(kl, abs=1e-10)
    m = [0.35, 0.4, 0.25]
    js = 0.5 * sum(a * math.log(a / b) for a, b in zip(T3, m)) \
        + 0.5 * sum(a * math.log(a / b) for a, b in zip(Q3, m))
    assert M.js_divergence(T3, Q3) == pytest.approx(js, abs=1e-10)
    assert M.dist_mean(T3) == pytest.approx(0.2 + 1.0 + 0.9)
    # var = 0.2 * 1.1^2 + 0.5 * 0.1^2 + 0.3 * 0.9^2 = 0.49
    assert M.dist_std(T3) == pytest.approx(0.7)
    assert M.dist_mean(T3, scores=[0, 1, 2]) == pytest.approx(1.1)


def test_emd_orders_bins():
    # Jia III-C: [0, 0, 1] is closer to [0, 1, 0] than to [1, 0, 0]
    a, b, c = [0, 0, 1], [0, 1, 0], [1, 0, 0]
    assert M.emd(a, b, r=1) == pytest.approx(1 / 3)
    assert M.emd(a, c, r=1) == pytest.approx(2 / 3)
    assert M.euclidean_distance(a, b) == pytest.approx(M.euclidean_distance(a, c))


def test_identical_distributions_give_zero():
    rng = np.random.default_rng(1)
    p = _rand_dists(rng, 20, 10)
    p[0] = np.eye(10)[3]  # one-hot row with empty bins
    for f in (M.kl_divergence, M.js_divergence, M.chi_square, M.euclidean_distance,
              M.cosine_distance, M.cd_loss):
        assert f(p, p) == pytest.approx(0.0, abs=1e-12), f.__name__
    for r in (1, 2, 3):
        assert M.emd(p, p, r=r) == pytest.approx(0.0, abs=1e-12)


def test_reduction_none_and_mean():
    rng = np.random.default_rng(2)
    t, q = _rand_dists(rng, 7, 10), _rand_dists(rng, 7, 10)
    for f in (M.kl_divergence, M.js_divergence, M.chi_square, M.euclidean_distance,
              M.cosine_distance, M.emd, M.cd_loss):
        v = f(t, q, reduction="none")
        assert v.shape == (7,)
        assert f(t, q) == pytest.approx(v.mean())
        assert v[3] == pytest.approx(f(t[3], q[3]))
        with pytest.raises(ValueError, match="reduction"):
            f(t, q, reduction="sum")


# ------------------------------------------------------------------ distributions vs scipy
def test_emd_relations_to_scipy():
    rng = np.random.default_rng(3)
    k = 10
    s = np.arange(1, k + 1)
    t, q = _rand_dists(rng, 25, k, 0.7), _rand_dists(rng, 25, k, 2.0)
    e1 = M.emd(t, q, r=1, reduction="none")
    e2 = M.emd(t, q, r=2, reduction="none")
    cd = M.cd_loss(t, q, reduction="none")
    for i in range(len(t)):
        # W1 = integral |F_t - F_q| over [1, K] = sum_{k<K} |CDF diff| = K * emd_r1 (last diff 0)
        assert k * e1[i] == pytest.approx(stats.wasserstein_distance(s, s, t[i], q[i]), rel=1e-9)
        # energy distance = sqrt(2 * integral (F_t - F_q)^2) = sqrt(2 K) * emd_r2 = sqrt(2 cd)
        ed = stats.energy_distance(s, s, t[i], q[i])
        assert math.sqrt(2 * k) * e2[i] == pytest.approx(ed, rel=1e-9)
        assert math.sqrt(2 * cd[i]) == pytest.approx(ed, rel=1e-9)


def test_kl_js_match_scipy_entropy():
    rng = np.random.default_rng(4)
    t, q = _rand_dists(rng, 10, 10), _rand_dists(rng, 10, 10)
    kl = [stats.entropy(a, b) for a, b in zip(t, q)]
    assert M.kl_divergence(t, q, eps=0.0, reduction="none") == pytest.approx(kl, rel=1e-9)
    assert M.kl_divergence(t, q, reduction="none") == pytest.approx(kl, rel=1e-6)
    from scipy.spatial.distance import cosine, jensenshannon
    js = [jensenshannon(a, b) ** 2 for a, b in zip(t, q)]
    assert M.js_divergence(t, q, eps=0.0, reduction="none") == pytest.approx(js, rel=1e-9)
    cd = [cosine(a, b) for a, b in zip(t, q)]
    assert M.cosine_distance(t, q, reduction="none") == pytest.approx(cd, rel=1e-9)


def test_chi_square_js_bounds():
    # Topsoe: chi2 / 2 <= JS <= ln 2 * chi2 for chi2 = 0.5 sum (t-q)^2/(t+q), the reason for
    # our chi2 definition (Jia Table I: JS/chi2 = 0.022/0.041 = 0.54).
    rng = np.random.default_rng(5)
    t, q = _rand_dists(rng, 200, 10, 0.5), _rand_dists(rng, 200, 10, 0.5)
    ratio = M.js_divergence(t, q, eps=0.0, reduction="none") / M.chi_square(t, q, reduction="none")
    assert ratio.min() >= 0.5 - 1e-9
    assert ratio.max() <= math.log(2) + 1e-9


def test_kl_finite_with_empty_predicted_bins():
    t = np.array([[0.5, 0.5, 0.0]])
    q = np.array([[1.0, 0.0, 0.0]])
    v = M.kl_divergence(t, q)
    assert np.isfinite(v) and v > 10
    assert M.kl_divergence(q, t) == pytest.approx(math.log(2), abs=1e-9)


def test_dist_std_matches_weighted_samples():
    rng = np.random.default_rng(6)
    counts = rng.integers(0, 30, size=(5, 10))
    counts[:, 4] += 1
    p = M.normalize_distribution(counts)
    for i in range(5):
        votes = np.repeat(np.arange(1, 11), counts[i])
        assert M.dist_mean(p)[i] == pytest.approx(votes.mean())
        assert M.dist_std(p)[i] == pytest.approx(votes.std())


# ------------------------------------------------------------------ normalisation / errors
def test_normalize_distribution():
    p = M.normalize_distribution([[1, 3, 0], [2, 2, 4]])
    assert p == pytest.approx(np.array([[0.25, 0.75, 0], [0.25, 0.25, 0.5]]))
    assert M.normalize_distribution([2, 2]) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match=r"sum to 0.*\[1\]"):
        M.normalize_distribution([[1, 2], [0, 0]])
    with pytest.raises(ValueError, match=r"negative.*\[0\]"):
        M.normalize_distribution([[1, -2], [1, 1]])
    with pytest.raises(ValueError, match="non-finite"):
        M.normalize_distribution([[1, np.nan]])


def test_distribution_shape_errors():
    with pytest.raises(ValueError, match="p_true and p_pred"):
        M.emd(np.ones((3, 10)) / 10, np.ones((3, 7)) / 7)
    with pytest.raises(ValueError, match="r must be"):
        M.emd(T3, Q3, r=0)
    with pytest.raises(ValueError, match="scores"):
        M.dist_mean(T3, scores=[1, 2])


# ------------------------------------------------------------------ evaluate / paper_results
def test_evaluate_scores_only():
    rng = np.random.default_rng(7)
    t = rng.normal(5.5, 0.7, 50)
    p = t + rng.normal(0, 0.4, 50)
    df = M.evaluate(t, p)
    assert list(df.columns) == list(M.SCORE_COLUMNS)
    assert len(df) == 1
    assert df.SRCC[0] == pytest.approx(stats.spearmanr(t, p).statistic)
    assert df.accuracy[0] == M.accuracy(t, p)
    assert df.RMSE[0] == pytest.approx(math.sqrt(df.MSE[0]))


def test_evaluate_with_distributions():
    rng = np.random.default_rng(8)
    t, q = _rand_dists(rng, 40, 10), _rand_dists(rng, 40, 10)
    df = M.evaluate(None, None, dist_true=t, dist_pred=q)
    assert list(df.columns) == [*M.SCORE_COLUMNS, *M.DISTRIBUTION_COLUMNS]
    mt, mq = M.dist_mean(t), M.dist_mean(q)
    assert df.PLCC[0] == pytest.approx(M.plcc(mt, mq))
    assert df.EMD_r1[0] == pytest.approx(M.emd(t, q, r=1))
    assert df.EMD_r2[0] == pytest.approx(M.emd(t, q, r=2))
    assert df.CDLoss[0] == pytest.approx(M.cd_loss(t, q))
    assert df.KL[0] == pytest.approx(M.kl_divergence(t, q))
    assert df.SRCC_std[0] == pytest.approx(stats.spearmanr(M.dist_std(t), M.dist_std(q)).statistic)
    # y_pred given explicitly overrides the mean of dist_pred
    df2 = M.evaluate(mt, mt + 1.0, dist_true=t, dist_pred=q)
    assert df2.MSE[0] == pytest.approx(1.0)
    assert df2.KL[0] == pytest.approx(df.KL[0])


def test_evaluate_errors_name_arguments():
    t = np.full((4, 10), 0.1)
    with pytest.raises(ValueError, match="dist_true and dist_pred"):
        M.evaluate(None, None, dist_true=t, dist_pred=np.full((4, 7), 1 / 7))
    with pytest.raises(ValueError, match="y_pred or dist_pred"):
        M.evaluate([1, 2, 3, 4], None)
    with pytest.raises(ValueError, match="y_true has 3 values but dist_true has 4"):
        M.evaluate([1, 2, 3], None, dist_true=t, dist_pred=t)
    with pytest.raises(ValueError, match="y_true and y_pred"):
        M.evaluate([1, 2, 3], [1, 2])


def test_paper_results():
    df = M.paper_results()
    assert {"source", "dataset", "model", *M.SCORE_COLUMNS, *M.DISTRIBUTION_COLUMNS} \
        <= set(df.columns)
    best = df[(df.source == "Hosu 2019 Table 3") & (df.model == "Pool-3FC (*)")].iloc[0]
    assert (best.SRCC, best.PLCC, best.accuracy) == (0.756, 0.757, 0.8172)
    apm = df[df.model == "APM (ResNet-AVA-dist-m)"].iloc[0]
    assert (apm.KL, apm.CDLoss, apm.MSE, apm.SRCC, apm.accuracy) == (0.103, 0.0607, 0.279, 0.709,
                                                                      0.803)
    jia = df[(df.source == "Jia 2019 Tables I-II") & (df.model == "Pad+ROI+Theme")].iloc[0]
    assert (jia.SRCC, jia.PLCC, jia.EMD_r2, jia.EMD_r1, jia.chi2) == (0.7611, 0.7632, 0.059,
                                                                       0.041, 0.041)
    assert len(df[df.source == "Hosu 2019 Table 3"]) == 7
    assert df.accuracy.dropna().between(0, 1).all()
