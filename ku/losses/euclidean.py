"""Euclidean loss between distributions: Murray & Gordo 2017 section 4.1 ("dist-Eucl")."""
from __future__ import annotations

import keras
from keras import ops

from ku.losses._common import FunctionLoss, pair, safe_root

__all__ = ["EuclideanLoss", "euclidean_loss"]


def euclidean_loss(y_true, y_pred, squared=True):
    """Euclidean loss between distributions, Murray & Gordo 2017 section 4.1 ("dist-Eucl").

    The paper does not print the formula; it cites the regression works that "use the Euclidean
    loss". With ``squared=True`` (default) this is the usual (Caffe ``EuclideanLoss``) form
    ``0.5 * ||p - t||^2``, i.e. the quadratic branch of eq. 1 without the linear tails, so
    ``HuberBinLoss`` tends to it as ``sigma -> 0``. ``squared=False`` gives the plain L2
    distance ``||p - t||`` (= ``ku.metrics.euclidean_distance``). ``(batch, K)`` -> ``(batch,)``.
    """
    y_true, y_pred = pair(y_true, y_pred, "euclidean_loss")
    ss = ops.sum(ops.square(y_pred - y_true), axis=-1)
    return 0.5 * ss if squared else safe_root(ss, 2)



@keras.saving.register_keras_serializable(package="ku")
class EuclideanLoss(FunctionLoss):
    """Euclidean loss between distributions (Murray & Gordo 2017 section 4.1,
    "VGG-ImN-dist-Eucl").

    Args:
      squared: ``True`` (default): ``0.5 * ||p - t||^2`` per sample, the conventional
        "Euclidean loss" of the regression works the paper cites (Caffe's ``EuclideanLoss``; the
        paper itself gives no formula). ``False``: the L2 distance ``||p - t||``.
    Shapes: ``y_true, y_pred (batch, K)``.
    """

    def __init__(self, squared=True, name="euclidean_loss", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(euclidean_loss, name=name, reduction=reduction, dtype=dtype,
                         squared=bool(squared))
