"""KL divergence to soft targets: Murray & Gordo 2017 section 4, Jia, Li, He 2019 section IV-A
("KL")."""
from __future__ import annotations

import keras
from keras import ops

from ku.losses._common import FunctionLoss, pair

__all__ = ["KLDivergenceLoss", "kl_divergence_loss"]


def kl_divergence_loss(y_true, y_pred, eps=1e-7):
    """KL(y_true || y_pred) with soft targets, natural log:
    ``sum_k t_k (log(t_k + eps) - log(p_k + eps))`` (Murray 2017 section 4 / Jia 2019 IV-A
    "KL"). Zero target bins contribute exactly 0. ``(batch, K)`` -> ``(batch,)``."""
    y_true, y_pred = pair(y_true, y_pred, "kl_divergence_loss")
    return ops.sum(y_true * (ops.log(y_true + eps) - ops.log(y_pred + eps)), axis=-1)



@keras.saving.register_keras_serializable(package="ku")
class KLDivergenceLoss(FunctionLoss):
    """KL(y_true || y_pred) for soft targets (Murray 2017 section 4; Jia 2019 IV-A "KL").

    Per sample ``sum_k t_k (log(t_k + eps) - log(p_k + eps))``; unlike
    ``keras.losses.KLDivergence`` nothing is clipped, so the gradient stays non-zero for
    predictions below ``eps``.

    Args:
      eps: added inside the logarithms (default ``1e-7``, Keras' epsilon; the numpy metric
        ``ku.metrics.kl_divergence`` defaults to ``1e-12`` for evaluation).
    Shapes: ``y_true, y_pred (batch, K)`` normalised distributions.
    """

    def __init__(self, eps=1e-7, name="kl_divergence_loss", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(kl_divergence_loss, name=name, reduction=reduction, dtype=dtype,
                         eps=float(eps))
