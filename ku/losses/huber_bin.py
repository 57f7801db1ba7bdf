"""Huber loss per bin of a predicted distribution, summed over bins: Murray & Gordo 2017 eq. 1
(section 3.1)."""
from __future__ import annotations

import keras
from keras import ops

from ku.losses._common import FunctionLoss, pair

__all__ = ["HuberBinLoss", "huber_bin_loss"]


def huber_bin_loss(y_true, y_pred, sigma=3.0):
    """Huber loss per bin, summed over bins: Murray & Gordo 2017 eq. 1 (section 3.1).

    With ``x = p_i - g_i`` and ``delta = 1 / sigma^2``::

        L(x) = 0.5 x^2                    if |x| <= delta
               delta (|x| - 0.5 delta)    otherwise

    per sample ``sum_i L(p_i - g_i)``. ``sigma = 3`` (delta = 1/9) in the paper. Shapes
    ``(batch, K)`` -> ``(batch,)``.
    """
    y_true, y_pred = pair(y_true, y_pred, "huber_bin_loss")
    delta = 1.0 / float(sigma) ** 2
    x = ops.abs(y_pred - y_true)
    quadratic = 0.5 * ops.square(x)
    linear = delta * (x - 0.5 * delta)
    return ops.sum(ops.where(x <= delta, quadratic, linear), axis=-1)



@keras.saving.register_keras_serializable(package="ku")
class HuberBinLoss(FunctionLoss):
    """Huber loss on each bin of the predicted distribution, summed over bins (Murray & Gordo
    2017 eq. 1, section 3.1); mean over the batch.

    ``L(x) = 0.5 x^2`` for ``|x| <= delta``, ``delta (|x| - delta / 2)`` otherwise, with
    ``x = p_i - g_i`` and ``delta = 1 / sigma^2`` (``sigma = 3`` in the paper).

    Note: this is eq. 1 exactly. The Fast R-CNN "smooth L1 with sigma"
    (``0.5 (sigma x)^2`` if ``|x| < 1/sigma^2`` else ``|x| - 0.5/sigma^2``) is ``sigma^2`` times
    this loss: same minimiser and switch point, gradients 9x larger for sigma = 3.

    Args:
      sigma: ``delta = 1 / sigma^2``.
    Shapes: ``y_true, y_pred (batch, K)``; predictions need not be normalised (the paper's last
    layer is FC + ReLU, section 3.2).
    """

    def __init__(self, sigma=3.0, name="huber_bin_loss", reduction="sum_over_batch_size",
                 dtype=None):
        if not float(sigma) > 0:
            raise ValueError(f"HuberBinLoss: sigma must be > 0; got {sigma!r}")
        super().__init__(huber_bin_loss, name=name, reduction=reduction, dtype=dtype,
                         sigma=float(sigma))

    @property
    def delta(self):
        """``1 / sigma^2``: where the loss switches from quadratic to linear."""
        return 1.0 / self.sigma ** 2
