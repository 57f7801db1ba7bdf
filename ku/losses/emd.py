"""Earth mover's distance loss: Jia, Li, He 2019 eq. 7 (section III-C; the NIMA form)."""
from __future__ import annotations

import keras
from keras import ops

from ku.losses._common import FunctionLoss, pair, safe_root

__all__ = ["EMDLoss", "emd_loss"]


def _abs_power(x, r):
    if r == 1:
        return ops.abs(x)
    if r == 2:
        return ops.square(x)
    return ops.power(ops.abs(x), r)


def _check_r(r):
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise ValueError(f"EMD: r must be a number >= 1; got {r!r}") from None
    if not r >= 1:
        raise ValueError(f"EMD: r must be >= 1 (the root's gradient is unbounded below 1); got {r}")
    return int(r) if r.is_integer() else r



def emd_loss(y_true, y_pred, r=2):
    """Earth mover's distance between ordered distributions, Jia et al. 2019 eq. 7 (NIMA form).

    ``(1/K * sum_k |CDF_true(k) - CDF_pred(k)|^r)^(1/r)`` per sample; Jia et al. train with
    r = 2 (section III-C). Shapes: ``(batch, K)`` -> ``(batch,)``.
    """
    r = _check_r(r)
    y_true, y_pred = pair(y_true, y_pred, "emd_loss")
    d = ops.cumsum(y_true, axis=-1) - ops.cumsum(y_pred, axis=-1)
    return safe_root(ops.mean(_abs_power(d, r), axis=-1), r)



@keras.saving.register_keras_serializable(package="ku")
class EMDLoss(FunctionLoss):
    """Earth mover's distance loss, Jia et al. 2019 eq. 7 (section III-C; NIMA).

    Per sample ``(1/K * sum_k |CDF_true(k) - CDF_pred(k)|^r)^(1/r)``, then mean over the batch.

    Args:
      r: the norm, ``2`` in Jia et al. (and NIMA), ``1`` for the r=1 metric; ``r >= 1``.
      name, reduction, dtype: as ``keras.losses.Loss``.
    Shapes: ``y_true, y_pred (batch, K)`` normalised distributions (e.g. softmax outputs).
    """

    def __init__(self, r=2, name="emd_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(emd_loss, name=name, reduction=reduction, dtype=dtype, r=_check_r(r))
