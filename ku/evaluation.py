"""Test-time prediction on stored features and "ours vs paper" tables.

* :func:`predict_augmented`: per-image prediction = mean of the model's outputs over all stored
  augmentations (Hosu et al. 2019 §3.1: "At test time, the final score for an image is calculated
  by averaging the predictions over all stored augmentations"; §4.1 "we aggregate predictions
  over all stored augmentations"). Reads a :class:`ku.data.store.FeatureStore` in row batches.
* :func:`mean_scores`: model outputs / targets -> mean scores (a distribution over the scores
  ``1..K`` gives ``sum_k k p_k``, Murray & Gordo 2017 eq. 2).
* :func:`report_table` / :func:`format_table`: SRCC, PLCC and binary accuracy (threshold 5) of a
  run next to the numbers of Hosu et al. 2019 Table 3 (or any row of
  :func:`ku.metrics.paper_results`).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["mean_scores", "predict_augmented", "report_table", "format_table", "id_list"]


def mean_scores(y, scores=None) -> np.ndarray:
    """Mean scores ``(N,)`` from scores or distributions.

    Args:
        y: ``(N,)`` or ``(N, 1)`` scores (returned as they are), or ``(N, K)`` non-negative
            distributions / histograms over the scores ``1..K``. Rows are L1-normalised before the
            mean is taken (Murray & Gordo 2017 eq. 2; softmax outputs and normalised vote
            histograms are unchanged by it): ``sum_k s_k y_k / sum_k y_k``.
        scores: the K score values of the bins (default ``1..K``).
    Returns:
        float64 array ``(N,)``.
    Raises:
        ValueError: for other shapes, negative entries or rows summing to 0 (named in the message).
    """
    a = np.asarray(y, dtype=np.float64)
    if a.ndim == 1:
        return a
    if a.ndim != 2:
        raise ValueError(f"mean_scores: expected (N,), (N, 1) or (N, K) values; got shape {a.shape}")
    if a.shape[1] == 1:
        return a[:, 0]
    k = a.shape[1]
    s = np.arange(1, k + 1, dtype=np.float64) if scores is None else np.asarray(scores, np.float64)
    if s.shape != (k,):
        raise ValueError(f"mean_scores: scores must have shape ({k},) to match the {k} bins; got {s.shape}")
    neg = (a < 0).any(axis=1)
    if neg.any():
        raise ValueError(f"mean_scores: {int(neg.sum())} row(s) of the (N, {k}) values have negative "
                         f"entries (not a distribution), first rows: {np.flatnonzero(neg)[:5].tolist()}")
    total = a.sum(axis=1)
    zero = ~(total > 0)
    if zero.any():
        raise ValueError(f"mean_scores: {int(zero.sum())} row(s) of the (N, {k}) values sum to 0 or are "
                         f"not finite, first rows: {np.flatnonzero(zero)[:5].tolist()}")
    return (a @ s) / total


def id_list(ids) -> list:
    """Image ids as a list of str from an ids table (its ``image_id`` column), one id or a
    sequence of ids."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(ids, pd.DataFrame):
        if "image_id" not in ids.columns:
            raise ValueError(f"ids table has no 'image_id' column (columns: {list(ids.columns)})")
        ids = ids["image_id"].tolist()
    elif isinstance(ids, str):
        ids = [ids]
    return [str(i) for i in ids]


def _augmentation_indices(store, augmentations):
    """'all' -> None; ints / names -> list of indices into the store's augmentations."""
    if isinstance(augmentations, str):
        if augmentations == "all":
            return None
        augmentations = [augmentations]
    elif np.isscalar(augmentations):
        augmentations = [augmentations]
    names = list(store.augmentations)
    out = []
    for a in augmentations:
        if isinstance(a, str):
            if a not in names:
                raise ValueError(f"{store.path}: unknown augmentation {a!r}; the store has {names}")
            out.append(names.index(a))
        else:
            i = int(a)
            if not 0 <= i < store.n_augmentations:
                raise ValueError(f"{store.path}: augmentation index {i} out of range "
                                 f"[0, {store.n_augmentations})")
            out.append(i)
    if not out:
        raise ValueError("augmentations: empty selection")
    return out


def predict_augmented(model, store_path, ids, *, batch_size: int = 32, augmentations="all",
                      verbose: int = 0) -> np.ndarray:
    """Per-image predictions averaged over the stored augmentations (Hosu et al. 2019 §3.1, §4.1).

    For every image, the model is applied to the features of each selected augmentation (e.g. the
    8 crops/flips of §3.1) and the outputs are averaged: scores for ``(N, 1)`` outputs,
    probability vectors for ``(N, K)`` distribution outputs (the mean of distributions is a
    distribution; take :func:`mean_scores` of it for the MOS).

    The store is read ``batch_size`` images at a time (the model sees ``batch_size * A`` rows per
    call), never as a whole.

    Args:
        model: a single-input, single-output Keras model on one stored feature
            (``(batch, *feature_shape)`` -> ``(batch, 1)`` or ``(batch, K)``).
        store_path: a :class:`ku.data.store.FeatureStore` file, or a list / glob of shard files.
        ids: image ids (list) or an ids table (its ``image_id`` column), in the order wanted.
        batch_size: images per model call.
        augmentations: ``"all"`` or a list of augmentation indices / names (``store.augmentations``).
        verbose: 1 shows a progress bar.
    Returns:
        float64 ``(N,)`` for single-score models, ``(N, K)`` for distribution outputs.
    Raises:
        ku.data.store.MissingIdsError / IncompleteRowsError (naming the file) for ids missing from
        the store or never extracted; ValueError for a bad augmentation selection.
    """
    import keras

    from ku.data.shards import open_store

    if int(batch_size) < 1:
        raise ValueError(f"predict_augmented: batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    ids = id_list(ids)
    if not ids:
        raise ValueError("predict_augmented: no ids")
    with open_store(store_path) as store:
        rows = store.index_of(ids)
        store.check_complete(rows)
        sel = _augmentation_indices(store, augmentations)
        fshape = tuple(store.feature_shape)
        bar = keras.utils.Progbar(len(rows), unit_name="image") if verbose else None
        out = []
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            if sel is None:
                x = store.read(r, "all", check_complete=False)  # (B, A, *fs)
            else:
                x = np.stack([store.read(r, a, check_complete=False) for a in sel], axis=1)
            b, n_aug = x.shape[:2]
            p = model.predict_on_batch(x.reshape((b * n_aug,) + fshape))
            if isinstance(p, (list, tuple, dict)):
                raise ValueError("predict_augmented: the model must have a single output")
            p = np.asarray(p, dtype=np.float64)
            out.append(p.reshape((b, n_aug) + p.shape[1:]).mean(axis=1))
            if bar is not None:
                bar.add(b)
    pred = np.concatenate(out, axis=0)
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    return pred


def report_table(y_true, y_pred, *, paper_rows: Sequence[str] | None = ("Pool-3FC (*)",),
                 label: str = "ku (this run)", threshold: float = 5.0, scores=None):
    """SRCC, PLCC and accuracy of a run next to the papers' numbers (Hosu et al. 2019 §4, Table 3).

    Args:
        y_true, y_pred: ``(N,)`` mean scores, or ``(N, K)`` distributions (converted with
            :func:`mean_scores`).
        paper_rows: model names of :func:`ku.metrics.paper_results` to list below the run (Hosu
            Table 3 names such as ``"Pool-3FC (*)"``, ``"Single-3FC"``); None or () for none.
        label: name of the run's row.
        threshold: binary accuracy boundary (AVA: 5; an image is "high quality" above it).
        scores: bin values for distributions (default ``1..K``).
    Returns:
        ``pandas.DataFrame`` with columns ``model, source, N, SRCC, PLCC, accuracy`` (accuracy as
        a fraction), the run first. Paper rows have ``N`` = NaN.
    """
    import pandas as pd

    from ku import metrics

    t = mean_scores(y_true, scores)
    p = mean_scores(y_pred, scores)
    if t.shape != p.shape:
        raise ValueError(f"report_table: y_true gives {t.shape[0]} scores but y_pred {p.shape[0]}")
    rows = [{
        "model": label, "source": "this run", "N": float(t.shape[0]),
        "SRCC": metrics.srcc(t, p), "PLCC": metrics.plcc(t, p),
        "accuracy": metrics.accuracy(t, p, threshold=threshold),
    }]
    if paper_rows:
        ref = metrics.paper_results()
        for name in paper_rows:
            hit = ref[ref["model"] == name]
            if hit.empty:
                raise ValueError(f"report_table: no paper row named {name!r}; available: "
                                 f"{ref['model'].tolist()}")
            for _, r in hit.iterrows():
                rows.append({"model": name, "source": r["source"], "N": float("nan"),
                             "SRCC": r["SRCC"], "PLCC": r["PLCC"], "accuracy": r["accuracy"]})
    return pd.DataFrame(rows, columns=["model", "source", "N", "SRCC", "PLCC", "accuracy"])


def format_table(df, digits: int | None = None) -> str:
    """Printable text of a results table, missing values as ``-``.

    ``digits=None`` (a :func:`report_table` frame): SRCC, PLCC and RMSE with 3 decimals, accuracy
    in percent with 2 decimals. An int: every numeric column (other than ``N``) with that many
    decimals (e.g. 4 for the distribution metrics of Jia et al. 2019 Tables I-III)."""

    def num(fmt):
        return lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt(v)

    if digits is None:
        formatters = {
            "SRCC": num(lambda v: f"{v:.3f}"),
            "PLCC": num(lambda v: f"{v:.3f}"),
            "accuracy": num(lambda v: f"{100 * v:.2f}%"),
            "RMSE": num(lambda v: f"{v:.3f}"),
        }
    else:
        formatters = {c: num(lambda v: f"{v:.{int(digits)}f}") for c in df.columns
                      if c not in ("model", "source", "N")}
    formatters["N"] = num(lambda v: f"{int(v)}")
    return df.to_string(index=False, na_rep="-",
                        formatters={k: f for k, f in formatters.items() if k in df.columns})
