"""Cross-entropy to soft targets: Murray & Gordo 2017 section 3.3 (the semantic stage trained
on a teacher's softmax outputs)."""
from __future__ import annotations

import keras
from keras import ops

from ku.losses._common import FunctionLoss, pair

__all__ = ["SoftCrossEntropy", "soft_cross_entropy"]


def soft_cross_entropy(y_true, y_pred, from_logits=False, eps=1e-7):
    """Cross-entropy to soft targets ``-sum_k t_k log p_k``.

    Murray & Gordo 2017 section 3.3: the semantic stage is trained with cross-entropy against a
    teacher's softmax outputs. With ``from_logits=True`` ``y_pred`` are logits and
    ``log_softmax`` is used (no ``eps``); otherwise ``y_pred`` are probabilities and
    ``log(p + eps)`` is used (no clipping, no renormalisation). Equals
    ``kl_divergence_loss + entropy(t)``. ``(batch, K)`` -> ``(batch,)``.
    """
    y_true, y_pred = pair(y_true, y_pred, "soft_cross_entropy")
    if from_logits:
        logp = ops.log_softmax(y_pred, axis=-1)
    else:
        logp = ops.log(y_pred + eps)
    return -ops.sum(y_true * logp, axis=-1)



@keras.saving.register_keras_serializable(package="ku")
class SoftCrossEntropy(FunctionLoss):
    """Cross-entropy to soft targets ``-sum_k t_k log p_k`` (Murray & Gordo 2017 section 3.3,
    semantic stage trained on a teacher's softmax outputs).

    Args:
      from_logits: ``y_pred`` are logits (``log_softmax`` is applied) instead of probabilities.
      eps: for probabilities, ``log(p + eps)`` (no clipping, no renormalisation).
    Shapes: ``y_true (batch, K)`` probability vectors, ``y_pred (batch, K)``.
    """

    def __init__(self, from_logits=False, eps=1e-7, name="soft_cross_entropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(soft_cross_entropy, name=name, reduction=reduction, dtype=dtype,
                         from_logits=bool(from_logits), eps=float(eps))
