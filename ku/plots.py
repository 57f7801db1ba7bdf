"""Plots people would rather look at than read (matplotlib; usable from scripts and notebooks).

Every function draws on a given ``ax`` (or a new figure), returns the figure, and saves it when
``path`` is given. Matplotlib is imported lazily with the non-interactive ``Agg`` backend when no
backend has been chosen yet, so scripts work on machines without a display.
"""
from __future__ import annotations

import os

import numpy as np


def _pyplot():
    import matplotlib

    if "MPLBACKEND" not in os.environ and matplotlib.get_backend().lower() not in ("agg",) \
            and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook():
    try:
        from IPython import get_ipython  # noqa: PLC0415

        return get_ipython() is not None
    except ImportError:
        return False


def _finish(fig, path):
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def scatter_predictions(y_true, y_pred, *, title=None, threshold=None, path=None, ax=None):
    """Predicted vs true scores with the identity line, SRCC/PLCC in the title.

    Args:
      y_true, y_pred: arrays (N,) of mean opinion scores.
      threshold: optional class threshold (e.g. 5 for AVA accuracy) drawn as dashed lines.
      path: save the figure there (PNG/PDF by extension).
    """
    from ku.metrics import plcc, srcc

    plt = _pyplot()
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5))
    else:
        fig = ax.figure
    ax.scatter(y_true, y_pred, s=12, alpha=0.6, edgecolors="none")
    lo = float(min(y_true.min(), y_pred.min()))
    hi = float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    if threshold is not None:
        ax.axvline(threshold, color="grey", ls=":", lw=1)
        ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.set_xlabel("true MOS")
    ax.set_ylabel("predicted MOS")
    stats = f"SRCC {srcc(y_true, y_pred):.3f}  PLCC {plcc(y_true, y_pred):.3f}  N={len(y_true)}"
    ax.set_title(f"{title}\n{stats}" if title else stats)
    return _finish(fig, path)


def training_curves(history, *, keys=None, path=None):
    """Training curves from a Keras ``History``, a dict of lists or a DataFrame (e.g. history.csv).

    One panel per metric family (loss, correlations, learning rate), training and validation
    curves together; axes labelled (epoch, metric), integer epoch ticks.
    """
    import pandas as pd

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    if hasattr(history, "history"):
        history = history.history
    df = pd.DataFrame(history)
    if "epoch" in df.columns:
        df = df.set_index("epoch")
    cols = [c for c in df.columns if keys is None or c in keys or c.removeprefix("val_") in keys]
    families = {}
    for c in cols:
        families.setdefault(c.removeprefix("val_"), []).append(c)
    n = max(len(families), 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, (fam, members) in zip(axes[0], sorted(families.items())):
        for c in sorted(members):
            ax.plot(df.index, df[c], marker=".", label=c)
        if fam in ("learning_rate", "lr"):
            ax.set_yscale("log")
        ax.set_title(fam)
        ax.set_xlabel("epoch")
        ax.set_ylabel(fam.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no fractional epochs
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def distributions(dist_true, dist_pred, *, scores=None, titles=None, path=None, max_items=6):
    """Bar plots of true vs predicted score distributions for a few images.

    Args:
      dist_true, dist_pred: arrays (N, K) of probabilities.
      scores: the score of each bin (default 1..K); x axis "score", y axis "fraction of votes".
    """
    plt = _pyplot()
    dist_true = np.atleast_2d(np.asarray(dist_true, dtype=float))
    dist_pred = np.atleast_2d(np.asarray(dist_pred, dtype=float))
    n = min(len(dist_true), max_items)
    k = dist_true.shape[1]
    scores = np.arange(1, k + 1) if scores is None else np.asarray(scores)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.bar(scores - 0.2, dist_true[i], width=0.4, label="true")
        ax.bar(scores + 0.2, dist_pred[i], width=0.4, label="predicted")
        mt, mp = float(scores @ dist_true[i]), float(scores @ dist_pred[i])
        head = titles[i] if titles is not None else f"#{i}"
        ax.set_title(f"{head}\nmean {mt:.2f} vs {mp:.2f}", fontsize=9)
        ax.set_xticks(scores)
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("fraction of votes")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)
