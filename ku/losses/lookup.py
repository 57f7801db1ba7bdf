"""Loss objects by short name, for scripts and configs (:func:`get_loss`)."""
from __future__ import annotations

import keras

from ku.losses.cd import CDLoss
from ku.losses.cross_entropy import SoftCrossEntropy
from ku.losses.emd import EMDLoss
from ku.losses.euclidean import EuclideanLoss
from ku.losses.huber_bin import HuberBinLoss
from ku.losses.kl_divergence import KLDivergenceLoss

__all__ = ["get_loss", "LOSS_NAMES"]

_FACTORIES = {
    "mse": (keras.losses.MeanSquaredError, {}),
    "emd": (EMDLoss, {"r": 2}),
    "emd2": (EMDLoss, {"r": 2}),
    "emd1": (EMDLoss, {"r": 1}),
    "huber": (HuberBinLoss, {}),
    "cdloss": (CDLoss, {}),
    "kl": (KLDivergenceLoss, {}),
    "xent": (SoftCrossEntropy, {}),
    "eucl": (EuclideanLoss, {}),
}
#: Short names accepted by :func:`get_loss`.
LOSS_NAMES = tuple(_FACTORIES)


def get_loss(name, **kwargs):
    """Loss object for a short name (case-insensitive).

    ``"mse"`` -> ``keras.losses.MeanSquaredError`` (MOS regression, Hosu 2019 section 3.3),
    ``"emd"``/``"emd2"`` -> ``EMDLoss(r=2)`` (Jia eq. 7), ``"emd1"`` -> ``EMDLoss(r=1)``,
    ``"huber"`` -> ``HuberBinLoss(sigma=3)`` (Murray eq. 1), ``"cdloss"`` -> ``CDLoss``,
    ``"kl"`` -> ``KLDivergenceLoss``, ``"xent"`` -> ``SoftCrossEntropy``, ``"eucl"`` ->
    ``EuclideanLoss``. ``kwargs`` override the defaults (e.g. ``get_loss("huber", sigma=2)``).
    A ``keras.losses.Loss`` instance is returned unchanged.
    """
    if isinstance(name, keras.losses.Loss):
        if kwargs:
            raise ValueError("get_loss: keyword arguments given with a Loss instance")
        return name
    key = str(name).strip().lower()
    if key not in _FACTORIES:
        raise ValueError(f"get_loss: unknown loss name {name!r}; expected one of "
                         f"{', '.join(LOSS_NAMES)}")
    cls, defaults = _FACTORIES[key]
    return cls(**{**defaults, **kwargs})
