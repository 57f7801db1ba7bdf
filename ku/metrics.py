"""Evaluation metrics of the three papers, as plain numpy functions on arrays.

Two kinds of inputs:

* **Scores** ``y_true, y_pred``: arrays ``(N,)`` (``(N, 1)`` is accepted) of mean opinion scores.
  Used by :func:`srcc`, :func:`plcc`, :func:`accuracy`, :func:`mse`, :func:`mae`, :func:`rmse`
  (Hosu et al. 2019, section 4; Murray & Gordo 2017, section 4 "Metrics"; Jia et al. 2019,
  section IV-A).
* **Distributions** ``p_true, p_pred``: arrays ``(N, K)`` whose rows are probability vectors over
  the scores ``1..K`` (a single ``(K,)`` vector counts as one row). Inputs **must already be
  normalised** (rows >= 0, summing to 1); nothing here renormalises silently. Use
  :func:`normalize_distribution` for vote counts or un-normalised network outputs (Murray eq. 2
  L1-normalises the predicted histogram before evaluation). Every distribution metric returns the
  mean over rows, or the per-row values with ``reduction="none"``.

:func:`evaluate` puts everything into a one-row ``pandas.DataFrame`` with the columns of the
papers' tables, and :func:`paper_results` holds the numbers the papers report, for "ours vs paper"
printouts.

All functions raise ``ValueError`` naming the offending argument for wrong shapes or non-finite
values.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "srcc", "plcc", "accuracy", "mse", "mae", "rmse",
    "normalize_distribution", "dist_mean", "dist_std",
    "kl_divergence", "js_divergence", "chi_square", "euclidean_distance", "cosine_distance",
    "emd", "cd_loss",
    "evaluate", "paper_results",
    "SCORE_COLUMNS", "DISTRIBUTION_COLUMNS",
]

#: Columns of :func:`evaluate` computed from mean scores (always present).
SCORE_COLUMNS = ("SRCC", "PLCC", "accuracy", "MSE", "MAE", "RMSE")
#: Columns of :func:`evaluate` computed from distributions (present when both are given).
DISTRIBUTION_COLUMNS = ("KL", "JS", "chi2", "Euclidean", "cosine", "EMD_r1", "EMD_r2", "CDLoss",
                        "SRCC_std", "PLCC_std")

_REDUCTIONS = ("mean", "none")


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_scores(x, name):
    """(N,) or (N, 1) array-like -> float64 (N,), finite."""
    if x is None:
        raise ValueError(f"{name} is None; expected an array of scores of shape (N,)")
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must have shape (N,) or (N, 1); got shape {np.shape(x)}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN/inf), "
                         f"first at index {int(np.flatnonzero(bad)[0])}")
    return a


def _score_pair(y_true, y_pred, min_len=1):
    t = _as_scores(y_true, "y_true")
    p = _as_scores(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length; got y_true with "
                         f"{t.shape[0]} and y_pred with {p.shape[0]} values")
    if t.shape[0] < min_len:
        raise ValueError(f"need at least {min_len} value(s) in y_true/y_pred; got {t.shape[0]}")
    return t, p


def _as_dist(p, name):
    """(N, K) or (K,) array-like -> float64 (N, K), finite."""
    if p is None:
        raise ValueError(f"{name} is None; expected distributions of shape (N, K)")
    a = np.asarray(p, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, K) or (K,); got shape {np.shape(p)}")
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"{name} has non-finite values (NaN/inf) in {rows.size} row(s), "
                         f"first rows: {rows[:5].tolist()}")
    return a


def _dist_pair(p_true, p_pred, names=("p_true", "p_pred")):
    a = _as_dist(p_true, names[0])
    b = _as_dist(p_pred, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape (N, K); got "
                         f"{names[0]} {a.shape} and {names[1]} {b.shape}")
    return a, b


def _reduce(values, reduction):
    if reduction == "mean":
        return float(np.mean(values))
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")


def _scores_for(k, scores, name="scores"):
    if scores is None:
        return np.arange(1, k + 1, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (k,):
        raise ValueError(f"{name} must have shape ({k},) to match the {k} bins; got {s.shape}")
    return s


# --------------------------------------------------------------------------------------------
# metrics on scores
# --------------------------------------------------------------------------------------------
def plcc(y_true, y_pred):
    """Pearson linear correlation coefficient (PLCC) between two score vectors.

    Hosu et al. 2019 section 4 and 5.1; Jia et al. 2019 section IV-A. Same value as
    ``scipy.stats.pearsonr(y_true, y_pred).statistic``. Returns NaN (with a ``RuntimeWarning``)
    when either input is constant.
    """
    t, p = _score_pair(y_true, y_pred, min_len=2)
    tc = t - t.mean()
    pc = p - p.mean()
    den = np.sqrt(np.dot(tc, tc) * np.dot(pc, pc))
    if den == 0:
        warnings.warn("plcc: an input is constant; correlation is undefined (NaN)",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(np.clip(np.dot(tc, pc) / den, -1.0, 1.0))


def srcc(y_true, y_pred):
    """Spearman rank-order correlation coefficient (SRCC): PLCC of the ranks (ties averaged).

    Hosu et al. 2019 section 4 and 5.1; Murray & Gordo 2017 section 4 ("rho"); Jia et al. 2019
    section IV-A. Same value as ``scipy.stats.spearmanr(y_true, y_pred).statistic``.
    """
    from scipy.stats import rankdata

    t, p = _score_pair(y_true, y_pred, min_len=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = plcc(rankdata(t), rankdata(p))
    if np.isnan(r):
        warnings.warn("srcc: an input is constant; correlation is undefined (NaN)",
                      RuntimeWarning, stacklevel=2)
    return r


def accuracy(y_true, y_pred, threshold=5.0):
    """Binary classification accuracy: fraction of items on the same side of ``threshold``.

    An item is "high quality" when its score is strictly greater than ``threshold``
    (AVA convention: MOS > 5; Murray & Gordo 2017 section 4 "Metrics", Hosu et al. 2019
    sections 4.3 and 5.1). Returned as a fraction in [0, 1] (papers print percent).
    """
    t, p = _score_pair(y_true, y_pred)
    return float(np.mean((t > threshold) == (p > threshold)))


def mse(y_true, y_pred):
    """Mean squared error of mean scores (Murray & Gordo 2017 section 4; Jia et al. 2019 IV-A)."""
    t, p = _score_pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def mae(y_true, y_pred):
    """Mean absolute error of mean scores."""
    t, p = _score_pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true, y_pred):
    """Root mean squared error of mean scores (``sqrt(mse)``)."""
    return float(np.sqrt(mse(y_true, y_pred)))


# --------------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------------
def normalize_distribution(p):
    """L1-normalise histograms / non-negative scores to probability vectors.

    Murray & Gordo 2017 section 3.1 (targets) and eq. 2 (predictions are L1-normalised before the
    mean is taken).

    Args:
      p: array ``(N, K)`` or ``(K,)`` of non-negative values (vote counts, ReLU outputs).
    Returns:
      float64 array of the same shape whose rows sum to 1.
    Raises:
      ValueError: for negative or non-finite entries, or rows that sum to 0 (the row indices are
        named in the message).
    """
    a = np.asarray(p, dtype=np.float64)
    one = a.ndim == 1
    a2 = _as_dist(a, "p")
    neg = (a2 < 0).any(axis=1)
    if neg.any():
        rows = np.flatnonzero(neg)
        raise ValueError(f"normalize_distribution: p has negative entries in {rows.size} row(s), "
                         f"first rows: {rows[:5].tolist()}")
    s = a2.sum(axis=1, keepdims=True)
    zero = s[:, 0] == 0
    if zero.any():
        rows = np.flatnonzero(zero)
        raise ValueError(f"normalize_distribution: {rows.size} row(s) of p sum to 0 and cannot "
                         f"be normalised, first rows: {rows[:5].tolist()}")
    out = a2 / s
    return out[0] if one else out


def dist_mean(p, scores=None):
    """Mean score of distributions: ``sum_k s_k p_k`` (Murray & Gordo 2017 eq. 2).

    Args:
      p: ``(N, K)`` (or ``(K,)``) normalised distributions.
      scores: the K score values, default ``1..K``.
    Returns:
      ``(N,)`` array (a float for a ``(K,)`` input).
    """
    a = _as_dist(p, "p")
    s = _scores_for(a.shape[1], scores)
    m = a @ s
    return float(m[0]) if np.ndim(p) == 1 else m


def dist_std(p, scores=None):
    """Standard deviation of the score under each distribution:
    ``sqrt(sum_k p_k (s_k - mean)^2)`` (Jia et al. 2019 section IV-A, Table II "std.dev").

    Shapes as in :func:`dist_mean`.
    """
    a = _as_dist(p, "p")
    s = _scores_for(a.shape[1], scores)
    m = a @ s
    var = np.einsum("nk,nk->n", a, (s[None, :] - m[:, None]) ** 2)
    sd = np.sqrt(np.maximum(var, 0.0))
    return float(sd[0]) if np.ndim(p) == 1 else sd


def kl_divergence(p_true, p_pred, eps=1e-12, reduction="mean"):
    """Kullback-Leibler divergence KL(p_true || p_pred), natural logarithm.

    Per row: ``sum_k t_k * (log(t_k + eps) - log(q_k + eps))``. The ``eps`` keeps empty predicted
    bins finite (AVA ground truths often have empty bins; with ``t_k = 0`` the term is exactly 0,
    so identical inputs give exactly 0). Murray & Gordo 2017 section 4 ("KL-divergence",
    Table 1 KLDIV); Jia et al. 2019 section IV-A, Table I (they use the non-symmetric form
    because "there are zeros in ground-truth distributions", i.e. ground truth first).

    Args:
      p_true, p_pred: ``(N, K)`` normalised distributions.
      eps: added to both distributions inside the logarithms.
      reduction: ``"mean"`` (float) or ``"none"`` (``(N,)`` array).
    """
    t, q = _dist_pair(p_true, p_pred)
    v = np.sum(t * (np.log(t + eps) - np.log(q + eps)), axis=1)
    return _reduce(v, reduction)


def js_divergence(p_true, p_pred, eps=1e-12, reduction="mean"):
    """Jensen-Shannon divergence, natural logarithm (range [0, ln 2]).

    Per row: ``0.5 KL(t || m) + 0.5 KL(q || m)`` with ``m = (t + q) / 2`` and KL as in
    :func:`kl_divergence` (same ``eps``). Jia et al. 2019 section IV-A, Table I "JS". The natural
    logarithm is the one consistent with Jia's numbers: for every pair, Topsoe's inequalities put
    ``JS / chi2`` in [0.5, ln 2] with :func:`chi_square`'s definition; Jia's Table I gives
    0.022 / 0.041 = 0.54 (with log2 the ratio would be at least 0.72).
    """
    t, q = _dist_pair(p_true, p_pred)
    m = 0.5 * (t + q)
    lm = np.log(m + eps)
    v = 0.5 * np.sum(t * (np.log(t + eps) - lm), axis=1) \
        + 0.5 * np.sum(q * (np.log(q + eps) - lm), axis=1)
    return _reduce(np.maximum(v, 0.0), reduction)


def chi_square(p_true, p_pred, reduction="mean"):
    """Symmetric chi-square distance ``0.5 * sum_k (t_k - q_k)^2 / (t_k + q_k)``.

    Bins where ``t_k + q_k = 0`` contribute 0. Jia et al. 2019 section IV-A / Table I ("chi^2
    distance", following Jin et al. 2018) do not print the formula. We use the symmetric form with
    the factor 1/2 (range [0, 1] for probability vectors) because it is the one consistent with
    their numbers: Topsoe's inequalities give ``chi2 / 2 <= JS <= ln(2) * chi2`` for this
    definition (JS with the natural logarithm), and both Jia (JS 0.022, chi2 0.041) and Jin et
    al. as quoted in Jia's Table I (0.037, 0.068) fall inside, whereas without the 1/2 (or with
    log2 in JS) they cannot.
    """
    t, q = _dist_pair(p_true, p_pred)
    num = (t - q) ** 2
    den = t + q
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return _reduce(0.5 * terms.sum(axis=1), reduction)


def euclidean_distance(p_true, p_pred, reduction="mean"):
    """L2 distance ``||t - q||_2`` between the probability vectors (Jia et al. 2019 IV-A, "Euc")."""
    t, q = _dist_pair(p_true, p_pred)
    return _reduce(np.sqrt(np.sum((t - q) ** 2, axis=1)), reduction)


def cosine_distance(p_true, p_pred, reduction="mean"):
    """Cosine distance ``1 - <t, q> / (||t|| ||q||)`` (Jia et al. 2019 IV-A, Table I "CD").

    A zero row has no direction; its distance is reported as 1.
    """
    t, q = _dist_pair(p_true, p_pred)
    den = np.linalg.norm(t, axis=1) * np.linalg.norm(q, axis=1)
    num = np.sum(t * q, axis=1)
    sim = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return _reduce(1.0 - sim, reduction)


def emd(p_true, p_pred, r=2, reduction="mean"):
    """Earth mover's distance on ordered bins, Jia et al. 2019 eq. 7 (the NIMA form).

    Per row: ``(1/K * sum_k |CDF_t(k) - CDF_q(k)|^r)^(1/r)`` with ``CDF(k) = sum_{i<=k} p_i``.
    Jia et al. train with r = 2 and report r = 2 and r = 1 (Table I).

    Relation to scipy (unit spaced scores, normalised inputs):
    ``K * emd(t, q, r=1) == scipy.stats.wasserstein_distance(s, s, t, q)`` and
    ``sqrt(2 K) * emd(t, q, r=2) == scipy.stats.energy_distance(s, s, t, q)`` for ``s = 1..K``.
    """
    if not np.isscalar(r) or not r > 0:
        raise ValueError(f"emd: r must be a positive number; got {r!r}")
    t, q = _dist_pair(p_true, p_pred)
    d = np.abs(np.cumsum(t, axis=1) - np.cumsum(q, axis=1))
    v = np.mean(d ** r, axis=1) ** (1.0 / r)
    return _reduce(v, reduction)


def cd_loss(p_true, p_pred, reduction="mean"):
    """Cumulative distribution loss of Murray & Gordo 2017 eq. 3 (from Wu et al.):
    ``sum_k (CDF_q(k) - CDF_t(k))^2`` per row (no 1/K, no square root; Table 1 "CDLoss").

    ``cd_loss == K * emd(r=2)**2`` for the same inputs.
    """
    t, q = _dist_pair(p_true, p_pred)
    v = np.sum((np.cumsum(q, axis=1) - np.cumsum(t, axis=1)) ** 2, axis=1)
    return _reduce(v, reduction)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def evaluate(y_true, y_pred, *, threshold=5.0, dist_true=None, dist_pred=None, scores=None):
    """All paper metrics in one row.

    Args:
      y_true, y_pred: ``(N,)`` mean scores, or ``None`` to take them from ``dist_true`` /
        ``dist_pred`` (``sum_k s_k p_k``, Murray eq. 2).
      threshold: class boundary of :func:`accuracy` (AVA: 5).
      dist_true, dist_pred: optional ``(N, K)`` normalised distributions. When both are given the
        distribution columns are added.
      scores: the K score values of the bins, default ``1..K``.

    Returns:
      ``pandas.DataFrame`` with one row and columns ``SCORE_COLUMNS`` (SRCC, PLCC, accuracy, MSE,
      MAE, RMSE; Hosu Table 3, Murray Table 1, Jia Table II), followed, when both distributions are
      given, by ``DISTRIBUTION_COLUMNS`` (KL, JS, chi2, Euclidean, cosine, EMD_r1, EMD_r2, CDLoss;
      Jia Table I, Murray Table 1; SRCC_std, PLCC_std: correlations of the distributions' standard
      deviations, Jia Table II).

    Raises:
      ValueError: for missing inputs or mismatched shapes (the arguments are named).
    """
    import pandas as pd

    if dist_true is not None:
        dist_true = _as_dist(dist_true, "dist_true")
    if dist_pred is not None:
        dist_pred = _as_dist(dist_pred, "dist_pred")
    if dist_true is not None and dist_pred is not None and dist_true.shape != dist_pred.shape:
        raise ValueError(f"dist_true and dist_pred must have the same shape (N, K); got "
                         f"dist_true {dist_true.shape} and dist_pred {dist_pred.shape}")

    def means(y, dist, yname, dname):
        if y is None:
            if dist is None:
                raise ValueError(f"evaluate: give {yname} or {dname}")
            return dist_mean(dist, scores=_scores_for(dist.shape[1], scores))
        y = _as_scores(y, yname)
        if dist is not None and dist.shape[0] != y.shape[0]:
            raise ValueError(f"{yname} has {y.shape[0]} values but {dname} has "
                             f"{dist.shape[0]} rows")
        return y

    t = means(y_true, dist_true, "y_true", "dist_true")
    p = means(y_pred, dist_pred, "y_pred", "dist_pred")
    if t.shape != p.shape:
        tn = "y_true" if y_true is not None else "dist_true"
        pn = "y_pred" if y_pred is not None else "dist_pred"
        raise ValueError(f"evaluate: {tn} and {pn} must give the same number of items; got "
                         f"{t.shape[0]} from {tn} and {p.shape[0]} from {pn}")
    row = {
        "SRCC": srcc(t, p), "PLCC": plcc(t, p), "accuracy": accuracy(t, p, threshold),
        "MSE": mse(t, p), "MAE": mae(t, p), "RMSE": rmse(t, p),
    }
    if dist_true is not None and dist_pred is not None:
        s = _scores_for(dist_true.shape[1], scores)
        row.update({
            "KL": kl_divergence(dist_true, dist_pred),
            "JS": js_divergence(dist_true, dist_pred),
            "chi2": chi_square(dist_true, dist_pred),
            "Euclidean": euclidean_distance(dist_true, dist_pred),
            "cosine": cosine_distance(dist_true, dist_pred),
            "EMD_r1": emd(dist_true, dist_pred, r=1),
            "EMD_r2": emd(dist_true, dist_pred, r=2),
            "CDLoss": cd_loss(dist_true, dist_pred),
        })
        sd_t, sd_p = dist_std(dist_true, s), dist_std(dist_pred, s)
        row["SRCC_std"] = srcc(sd_t, sd_p)
        row["PLCC_std"] = plcc(sd_t, sd_p)
    return pd.DataFrame([row])


# Reported numbers, copied from the papers' tables (named per row). Accuracy as a fraction.
_NAN = float("nan")
_HOSU = "Hosu 2019 Table 3"
_PAPER_ROWS = [
    # Hosu et al. 2019, Table 3: AVA test set, features from original images;
    # (*) = InceptionResNet-v2, otherwise Inception-v3.
    (_HOSU, "AVA", "Single-3FC (-aug)", dict(SRCC=0.722, PLCC=0.726, accuracy=0.8031)),
    (_HOSU, "AVA", "Single-3FC", dict(SRCC=0.729, PLCC=0.733, accuracy=0.8065)),
    (_HOSU, "AVA", "Pool-3FC", dict(SRCC=0.745, PLCC=0.748, accuracy=0.8143)),
    (_HOSU, "AVA", "Single-3FC (*)(-aug)", dict(SRCC=0.740, PLCC=0.742, accuracy=0.8096)),
    (_HOSU, "AVA", "Single-3FC (*)", dict(SRCC=0.743, PLCC=0.745, accuracy=0.8137)),
    (_HOSU, "AVA", "Pool-3FC (*)(-aug)", dict(SRCC=0.752, PLCC=0.755, accuracy=0.8161)),
    (_HOSU, "AVA", "Pool-3FC (*)", dict(SRCC=0.756, PLCC=0.757, accuracy=0.8172)),
    # Murray & Gordo 2017, Table 1 (AVA test set); rho = SRCC. APM = ResNet-AVA-dist-m.
    ("Murray 2017 Table 1", "AVA", "VGG-ImN-mean", dict(MSE=0.314, SRCC=0.659, accuracy=0.784)),
    ("Murray 2017 Table 1", "AVA", "VGG-ImN-dist-Eucl",
     dict(KL=0.134, CDLoss=0.0821, MSE=0.383, SRCC=0.560, accuracy=0.763)),
    ("Murray 2017 Table 1", "AVA", "VGG-ImN-dist",
     dict(KL=0.128, CDLoss=0.0673, MSE=0.311, SRCC=0.665, accuracy=0.787)),
    ("Murray 2017 Table 1", "AVA", "ResNet-ImN-dist",
     dict(KL=0.105, CDLoss=0.0618, MSE=0.285, SRCC=0.702, accuracy=0.797)),
    ("Murray 2017 Table 1", "AVA", "ResNet-AVA-dist",
     dict(KL=0.104, CDLoss=0.0609, MSE=0.280, SRCC=0.707, accuracy=0.798)),
    ("Murray 2017 Table 1", "AVA", "APM (ResNet-AVA-dist-m)",
     dict(KL=0.103, CDLoss=0.0607, MSE=0.279, SRCC=0.709, accuracy=0.803)),
    # Jia et al. 2019, Tables I (distribution metrics) and II (mean / std.dev), AVA test set.
    ("Jia 2019 Tables I-II", "AVA", "Pad+ROI+Theme",
     dict(Euclidean=0.134, KL=0.088, JS=0.022, chi2=0.041, EMD_r2=0.059, EMD_r1=0.041,
          cosine=0.040, SRCC=0.7611, PLCC=0.7632, SRCC_std=0.6918, PLCC_std=0.7013, MSE=0.2366)),
    ("Jia 2019 Tables I-II", "AVA", "Pad+ROI+Theme (Align)",
     dict(Euclidean=0.134, KL=0.089, JS=0.022, chi2=0.041, EMD_r2=0.059, EMD_r1=0.041,
          cosine=0.040, SRCC=0.7611, PLCC=0.7621, SRCC_std=0.7031, PLCC_std=0.7111, MSE=0.2390)),
    # Jia et al. 2019, Table VI (Photo.net, 7-point scale). "EMD" there has no r; Tables III-V use
    # r = 1 (their 0.041 equals Table I's r = 1 value), so it is filed under EMD_r1.
    ("Jia 2019 Table VI", "Photo.net", "Pad+ROI+Theme",
     dict(SRCC=0.5826, PLCC=0.5858, MSE=0.2195, EMD_r1=0.065)),
]


def paper_results():
    """Numbers reported in the papers, one row per (source, model).

    Columns: ``source`` (paper and table), ``dataset``, ``model`` (names as printed in the
    paper; Jia's "Ours" is ``Pad+ROI+Theme``), then the metric columns of :func:`evaluate`
    (NaN where a paper does not report a metric). Accuracy is a fraction (81.72% -> 0.8172).

    Rows: Hosu et al. 2019 Table 3 (all 7), Murray & Gordo 2017 Table 1 (all 6; the final model
    is ``APM (ResNet-AVA-dist-m)``), Jia et al. 2019 Tables I+II ("Ours" and "Ours (Align)") and
    Table VI (Photo.net).
    """
    import pandas as pd

    cols = ["source", "dataset", "model", *SCORE_COLUMNS, *DISTRIBUTION_COLUMNS]
    rows = []
    for source, dataset, model, vals in _PAPER_ROWS:
        unknown = set(vals) - set(cols)
        assert not unknown, unknown
        rows.append({"source": source, "dataset": dataset, "model": model,
                     **{c: vals.get(c, _NAN) for c in (*SCORE_COLUMNS, *DISTRIBUTION_COLUMNS)}})
    return pd.DataFrame(rows, columns=cols)
