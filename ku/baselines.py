"""What learning means: the trivial baselines every run is compared with.

A test SRCC alone does not say whether a model learned anything: on a small or unusual data set a
user needs to see, on the same split, what a model that learned nothing gets and what the
simplest learner gets from the same features. ku's scripts print both rows beside the model:

* :func:`mean_baseline` -- predict the training mean for every test image. Its SRCC/PLCC are
  undefined (a constant has no rank order; shown as ``-``); its RMSE is the number to beat.
* :func:`ridge_probe` -- a linear model (ridge regression) on fixed features, its penalty chosen
  by leave-one-out error on the training split alone. On stored MLSP features
  (:func:`store_features`) it is the linear probe of Hosu et al. 2019's features (§3.1); for the
  end-to-end models (APM, theme-ROI) the scripts use the same network's pooled features before
  training (APM's SPP vector; theme-ROI's global average pooled maps).

Both are plain functions on arrays, as in scikit-learn's metrics. :func:`baseline_table` puts the
model's row and the two baselines into one table with SRCC, PLCC, accuracy and RMSE.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["mean_baseline", "ridge_probe", "store_features", "baseline_table",
           "with_baselines"]

#: penalties tried by :func:`ridge_probe` (relative to the mean eigenvalue of the kernel)
ALPHAS = tuple(float(a) for a in np.logspace(-4, 3, 15))


def mean_baseline(y_train, n: int) -> np.ndarray:
    """``(n,)`` predictions that all equal the mean of the ``(N,)`` training scores ``y_train``."""
    y = np.asarray(y_train, np.float64).ravel()
    if y.size == 0 or not np.isfinite(y).all():
        raise ValueError(f"mean_baseline: y_train must be non-empty and finite (got {y.size} values)")
    return np.full(int(n), y.mean())


def _standardise(x_train, *others):
    """z-score every column with the training statistics. Columns whose training spread is below
    1e-3 of their mean magnitude (float16 storage rounds to ~5e-4 relative: such a column holds
    rounding noise, which z-scoring would blow up to unit variance) or exactly 0 are dropped."""
    mu = x_train.mean(axis=0, dtype=np.float64)
    sd = x_train.std(axis=0, dtype=np.float64)
    keep = (sd > 1e-3 * np.abs(mu)) & (sd > 1e-12 * max(float(sd.max()), 1e-300))
    if not keep.any():
        raise ValueError("ridge_probe: every feature is constant on the training split")
    mu, sd = mu[keep].astype(x_train.dtype), sd[keep].astype(x_train.dtype)
    return [(x[:, keep] - mu) / sd for x in (x_train, *others)]


def ridge_probe(x_train, y_train, x_test, *, alphas: Sequence[float] = ALPHAS):
    """Ridge regression on standardised features; returns ``(predictions (M,), alpha)``.

    Solved in the dual (an ``N x N`` kernel), so features with many more dimensions than images
    (wide MLSP features: 25 x 16,928) cost ``O(N^2 D)``. ``alpha`` (relative to the mean
    eigenvalue of the linear kernel) is chosen by the closed-form leave-one-out error on the
    training split, so the test split is never looked at.

    Args:
        x_train: ``(N, ...)`` training features (flattened to ``(N, D)``).
        y_train: ``(N,)`` training scores.
        x_test: ``(M, ...)`` test features.
        alphas: candidate penalties.
    """
    # float64 unless the features are large (wide MLSP: ~200 x 423k values), where float32 halves
    # the memory; the kernel itself is always solved in float64
    big = np.size(x_train) + np.size(x_test) > 5e7
    dtype = np.float32 if big else np.float64
    xt = np.asarray(x_train, dtype).reshape(len(x_train), -1)
    xs = np.asarray(x_test, dtype).reshape(len(x_test), -1)
    y = np.asarray(y_train, np.float64).ravel()
    if xt.shape[0] != y.shape[0] or xt.shape[0] < 3:
        raise ValueError(f"ridge_probe: {xt.shape[0]} training feature rows for {y.shape[0]} scores "
                         "(need the same number, at least 3)")
    if xt.shape[1] != xs.shape[1]:
        raise ValueError(f"ridge_probe: training features have {xt.shape[1]} dimensions, test {xs.shape[1]}")
    if not (np.isfinite(xt).all() and np.isfinite(xs).all() and np.isfinite(y).all()):
        raise ValueError("ridge_probe: features and scores must be finite")
    xt, xs = _standardise(xt, xs)
    k = (xt @ xt.T).astype(np.float64)
    k_test = (xs @ xt.T).astype(np.float64)
    scale = np.trace(k) / len(k)
    evals, evecs = np.linalg.eigh(k)
    y_mean = y.mean()
    uy = evecs.T @ (y - y_mean)
    best = None
    for a in alphas:
        lam = a * scale
        # hat matrix H = K (K + lam I)^-1; leave-one-out residual = (y - yhat) / (1 - H_ii)
        shrink = evals / (evals + lam)
        fitted = evecs @ (shrink * uy) + y_mean
        h_diag = np.einsum("ij,j,ij->i", evecs, shrink, evecs)
        loo = np.mean(((y - fitted) / np.maximum(1.0 - h_diag - 1.0 / len(y), 1e-9)) ** 2)
        if best is None or loo < best[0]:
            best = (loo, a, lam)
    _, alpha, lam = best
    dual = evecs @ (uy / (evals + lam))
    return k_test @ dual + y_mean, float(alpha)


def store_features(store_path, ids, *, batch_size: int = 32) -> np.ndarray:
    """``(N, *feature_shape)`` float32 features of ``ids`` from a feature store, each the mean over
    the stored augmentations (the same average the test-time prediction takes, Hosu et al. 2019
    §3.1; for a linear model, averaging features equals averaging predictions)."""
    from ku.data.shards import open_store
    from ku.evaluation import id_list

    ids = id_list(ids)
    with open_store(store_path) as store:
        rows = store.index_of(ids)
        store.check_complete(rows)
        out = np.empty((len(rows),) + tuple(store.feature_shape), np.float32)
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            out[i:i + len(r)] = store.read(r, "all", check_complete=False).astype(np.float32).mean(axis=1)
    return out


def baseline_table(y_true, y_model, y_train, *, probe=None, label: str = "model",
                   probe_label: str = "ridge probe", threshold: float = 5.0):
    """One table: the model, "predict the training mean" and (optionally) the ridge probe.

    Args:
        y_true: ``(N,)`` test scores.
        y_model: ``(N,)`` the model's predicted scores.
        y_train: training scores (for the mean baseline).
        probe: ``(N,)`` the probe's predictions, or None.
    Returns:
        ``pandas.DataFrame`` with columns ``model, N, SRCC, PLCC, accuracy, RMSE`` (accuracy as a
        fraction; SRCC/PLCC NaN for the constant baseline).
    """
    import pandas as pd

    from ku import metrics

    t = np.asarray(y_true, np.float64).ravel()
    rows = [(label, np.asarray(y_model, np.float64).ravel()),
            ("predict the training mean", mean_baseline(y_train, t.size))]
    if probe is not None:
        rows.append((probe_label, np.asarray(probe, np.float64).ravel()))
    out = []
    for name, p in rows:
        if p.shape != t.shape:
            raise ValueError(f"baseline_table: {name}: {p.size} predictions for {t.size} test scores")
        const = np.ptp(p) == 0
        out.append({"model": name, "N": float(t.size),
                    "SRCC": np.nan if const else metrics.srcc(t, p),
                    "PLCC": np.nan if const else metrics.plcc(t, p),
                    "accuracy": metrics.accuracy(t, p, threshold=threshold),
                    "RMSE": float(np.sqrt(np.mean((t - p) ** 2)))})
    return pd.DataFrame(out, columns=["model", "N", "SRCC", "PLCC", "accuracy", "RMSE"])


def with_baselines(table, y_true, y_pred, y_train, *, probe=None, probe_label: str = "ridge probe",
                   threshold: float = 5.0):
    """A :func:`ku.evaluation.report_table` frame (the run first, then paper rows) with the
    baseline rows inserted after the run's row (``source`` = ``"baseline"``) and an ``RMSE``
    column (NaN for paper rows). ``y_pred``: the run's ``(N,)`` predicted scores."""
    import pandas as pd

    base = baseline_table(y_true, y_pred, y_train, probe=probe, probe_label=probe_label,
                          threshold=threshold)
    first = table.iloc[:1].assign(RMSE=base.loc[0, "RMSE"])
    rows = base.iloc[1:].assign(source="baseline")
    rest = table.iloc[1:].assign(RMSE=np.nan)
    return pd.concat([first, rows, rest], ignore_index=True)[list(table.columns) + ["RMSE"]]
