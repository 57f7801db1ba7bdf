"""Cumulative distribution loss: Murray & Gordo 2017 eq. 3."""
from __future__ import annotations

import keras
from keras import ops

from ku.losses._common import FunctionLoss, pair

__all__ = ["CDLoss", "cd_loss"]


def cd_loss(y_true, y_pred):
    """Cumulative distribution loss ``sum_i (CDF_pred(i) - CDF_true(i))^2``, Murray & Gordo 2017
    eq. 3 (an evaluation metric there; usable for training). ``(batch, K)`` -> ``(batch,)``."""
    y_true, y_pred = pair(y_true, y_pred, "cd_loss")
    d = ops.cumsum(y_pred, axis=-1) - ops.cumsum(y_true, axis=-1)
    return ops.sum(ops.square(d), axis=-1)



@keras.saving.register_keras_serializable(package="ku")
class CDLoss(FunctionLoss):
    """Cumulative distribution loss ``sum_i (CDF_pred(i) - CDF_true(i))^2`` per sample, mean
    over the batch (Murray & Gordo 2017 eq. 3). Equals ``K * EMDLoss(r=2)^2``.

    Shapes: ``y_true, y_pred (batch, K)``.
    """

    def __init__(self, name="cd_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(cd_loss, name=name, reduction=reduction, dtype=dtype)
