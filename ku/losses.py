"""Keras 3 losses of the three papers, written with ``keras.ops`` only (any backend).

Every loss takes ``y_true, y_pred`` of shape ``(batch, K)`` (distributions over K ordered score
bins, or logits for :class:`SoftCrossEntropy` with ``from_logits=True``), computes one value per
sample (shape ``(batch,)``) and lets Keras reduce over the batch (default: mean,
``reduction="sum_over_batch_size"``). Each class has a function form returning the per-sample
values, e.g. ``emd_loss(y_true, y_pred, r=2)``.

=========================  ===============================================  ==================
class                      per-sample value                                 paper
=========================  ===============================================  ==================
:class:`EMDLoss`           ``(mean_k |CDF_t - CDF_p|^r)^(1/r)``             Jia eq. 7, NIMA
:class:`HuberBinLoss`      ``sum_k Huber_delta(p_k - t_k)``, delta=1/sigma^2  Murray eq. 1
:class:`CDLoss`            ``sum_k (CDF_p - CDF_t)^2``                      Murray eq. 3
:class:`KLDivergenceLoss`  ``sum_k t_k (log(t_k+eps) - log(p_k+eps))``      Murray 4, Jia IV-A
:class:`SoftCrossEntropy`  ``-sum_k t_k log p_k`` (soft targets)            Murray 3.3
:class:`EuclideanLoss`     ``0.5 ||p - t||^2`` (or ``||p - t||``)           Murray 4.1
=========================  ===============================================  ==================

Mean-score regression (Hosu et al. 2019 section 3.3: MSE on MOS) uses Keras' own
``keras.losses.MeanSquaredError``; :func:`get_loss` maps short names (``"mse"``, ``"emd"``, ...)
to loss objects for scripts and configs.

The per-sample numbers match the numpy metrics of :mod:`ku.metrics` (``emd``, ``cd_loss``,
``kl_divergence``, ``euclidean_distance``) on the same inputs. Gradients are finite everywhere,
including at all-zero predictions and at ``y_pred == y_true`` (roots use a guarded branch whose
gradient at 0 is 0).
"""
from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "EMDLoss", "HuberBinLoss", "CDLoss", "KLDivergenceLoss", "SoftCrossEntropy", "EuclideanLoss",
    "emd_loss", "huber_bin_loss", "cd_loss", "kl_divergence_loss", "soft_cross_entropy",
    "euclidean_loss", "get_loss", "LOSS_NAMES",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _pair(y_true, y_pred, who):
    """Convert to tensors of y_pred's float dtype and check that the bin axes agree."""
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, keras.config.floatx())
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
    if len(ts) == 0 or len(ps) == 0:
        raise ValueError(f"{who}: y_true and y_pred must have shape (batch, K); got y_true {ts} "
                         f"and y_pred {ps}")
    if ts[-1] is not None and ps[-1] is not None and ts[-1] != ps[-1]:
        raise ValueError(f"{who}: y_true has {ts[-1]} bins but y_pred has {ps[-1]} "
                         f"(shapes y_true {ts}, y_pred {ps})")
    return y_true, y_pred


def _safe_root(x, r):
    """``x ** (1/r)`` for ``x >= 0`` with a finite (zero) gradient at ``x == 0``."""
    if r == 1:
        return x
    positive = x > 0
    safe = ops.where(positive, x, ops.ones_like(x))
    root = ops.sqrt(safe) if r == 2 else ops.power(safe, 1.0 / r)
    return ops.where(positive, root, ops.zeros_like(x))


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


# --------------------------------------------------------------------------------------------
# function forms (per-sample values, shape (batch,))
# --------------------------------------------------------------------------------------------
def emd_loss(y_true, y_pred, r=2):
    """Earth mover's distance between ordered distributions, Jia et al. 2019 eq. 7 (NIMA form).

    ``(1/K * sum_k |CDF_true(k) - CDF_pred(k)|^r)^(1/r)`` per sample; Jia et al. train with
    r = 2 (section III-C). Shapes: ``(batch, K)`` -> ``(batch,)``.
    """
    r = _check_r(r)
    y_true, y_pred = _pair(y_true, y_pred, "emd_loss")
    d = ops.cumsum(y_true, axis=-1) - ops.cumsum(y_pred, axis=-1)
    return _safe_root(ops.mean(_abs_power(d, r), axis=-1), r)


def huber_bin_loss(y_true, y_pred, sigma=3.0):
    """Huber loss per bin, summed over bins: Murray & Gordo 2017 eq. 1 (section 3.1).

    With ``x = p_i - g_i`` and ``delta = 1 / sigma^2``::

        L(x) = 0.5 x^2                    if |x| <= delta
               delta (|x| - 0.5 delta)    otherwise

    per sample ``sum_i L(p_i - g_i)``. ``sigma = 3`` (delta = 1/9) in the paper. Shapes
    ``(batch, K)`` -> ``(batch,)``.
    """
    y_true, y_pred = _pair(y_true, y_pred, "huber_bin_loss")
    delta = 1.0 / float(sigma) ** 2
    x = ops.abs(y_pred - y_true)
    quadratic = 0.5 * ops.square(x)
    linear = delta * (x - 0.5 * delta)
    return ops.sum(ops.where(x <= delta, quadratic, linear), axis=-1)


def cd_loss(y_true, y_pred):
    """Cumulative distribution loss ``sum_i (CDF_pred(i) - CDF_true(i))^2``, Murray & Gordo 2017
    eq. 3 (an evaluation metric there; usable for training). ``(batch, K)`` -> ``(batch,)``."""
    y_true, y_pred = _pair(y_true, y_pred, "cd_loss")
    d = ops.cumsum(y_pred, axis=-1) - ops.cumsum(y_true, axis=-1)
    return ops.sum(ops.square(d), axis=-1)


def kl_divergence_loss(y_true, y_pred, eps=1e-7):
    """KL(y_true || y_pred) with soft targets, natural log:
    ``sum_k t_k (log(t_k + eps) - log(p_k + eps))`` (Murray 2017 section 4 / Jia 2019 IV-A
    "KL"). Zero target bins contribute exactly 0. ``(batch, K)`` -> ``(batch,)``."""
    y_true, y_pred = _pair(y_true, y_pred, "kl_divergence_loss")
    return ops.sum(y_true * (ops.log(y_true + eps) - ops.log(y_pred + eps)), axis=-1)


def soft_cross_entropy(y_true, y_pred, from_logits=False, eps=1e-7):
    """Cross-entropy to soft targets ``-sum_k t_k log p_k``.

    Murray & Gordo 2017 section 3.3: the semantic stage is trained with cross-entropy against a
    teacher's softmax outputs. With ``from_logits=True`` ``y_pred`` are logits and
    ``log_softmax`` is used (no ``eps``); otherwise ``y_pred`` are probabilities and
    ``log(p + eps)`` is used (no clipping, no renormalisation). Equals
    ``kl_divergence_loss + entropy(t)``. ``(batch, K)`` -> ``(batch,)``.
    """
    y_true, y_pred = _pair(y_true, y_pred, "soft_cross_entropy")
    if from_logits:
        logp = ops.log_softmax(y_pred, axis=-1)
    else:
        logp = ops.log(y_pred + eps)
    return -ops.sum(y_true * logp, axis=-1)


def euclidean_loss(y_true, y_pred, squared=True):
    """Euclidean loss between distributions, Murray & Gordo 2017 section 4.1 ("dist-Eucl").

    The paper does not print the formula; it cites the regression works that "use the Euclidean
    loss". With ``squared=True`` (default) this is the usual (Caffe ``EuclideanLoss``) form
    ``0.5 * ||p - t||^2``, i.e. the quadratic branch of eq. 1 without the linear tails, so
    ``HuberBinLoss`` tends to it as ``sigma -> 0``. ``squared=False`` gives the plain L2
    distance ``||p - t||`` (= ``ku.metrics.euclidean_distance``). ``(batch, K)`` -> ``(batch,)``.
    """
    y_true, y_pred = _pair(y_true, y_pred, "euclidean_loss")
    ss = ops.sum(ops.square(y_pred - y_true), axis=-1)
    return 0.5 * ss if squared else _safe_root(ss, 2)


# --------------------------------------------------------------------------------------------
# Loss classes
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="ku")
class EMDLoss(keras.losses.Loss):
    """Earth mover's distance loss, Jia et al. 2019 eq. 7 (section III-C; NIMA).

    Per sample ``(1/K * sum_k |CDF_true(k) - CDF_pred(k)|^r)^(1/r)``, then mean over the batch.

    Args:
      r: the norm, ``2`` in Jia et al. (and NIMA), ``1`` for the r=1 metric; ``r >= 1``.
      name, reduction, dtype: as ``keras.losses.Loss``.
    Shapes: ``y_true, y_pred (batch, K)`` normalised distributions (e.g. softmax outputs).
    """

    def __init__(self, r=2, name="emd_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.r = _check_r(r)

    def call(self, y_true, y_pred):
        return emd_loss(y_true, y_pred, r=self.r)

    def get_config(self):
        return {**super().get_config(), "r": self.r}


@keras.saving.register_keras_serializable(package="ku")
class HuberBinLoss(keras.losses.Loss):
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
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not float(sigma) > 0:
            raise ValueError(f"HuberBinLoss: sigma must be > 0; got {sigma!r}")
        self.sigma = float(sigma)

    @property
    def delta(self):
        """``1 / sigma^2``: where the loss switches from quadratic to linear."""
        return 1.0 / self.sigma ** 2

    def call(self, y_true, y_pred):
        return huber_bin_loss(y_true, y_pred, sigma=self.sigma)

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="ku")
class CDLoss(keras.losses.Loss):
    """Cumulative distribution loss ``sum_i (CDF_pred(i) - CDF_true(i))^2`` per sample, mean
    over the batch (Murray & Gordo 2017 eq. 3). Equals ``K * EMDLoss(r=2)^2``.

    Shapes: ``y_true, y_pred (batch, K)``.
    """

    def __init__(self, name="cd_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return cd_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="ku")
class KLDivergenceLoss(keras.losses.Loss):
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
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.eps = float(eps)

    def call(self, y_true, y_pred):
        return kl_divergence_loss(y_true, y_pred, eps=self.eps)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="ku")
class SoftCrossEntropy(keras.losses.Loss):
    """Cross-entropy to soft targets ``-sum_k t_k log p_k`` (Murray & Gordo 2017 section 3.3,
    semantic stage trained on a teacher's softmax outputs).

    Args:
      from_logits: ``y_pred`` are logits (``log_softmax`` is applied) instead of probabilities.
      eps: for probabilities, ``log(p + eps)`` (no clipping, no renormalisation).
    Shapes: ``y_true (batch, K)`` probability vectors, ``y_pred (batch, K)``.
    """

    def __init__(self, from_logits=False, eps=1e-7, name="soft_cross_entropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.eps = float(eps)

    def call(self, y_true, y_pred):
        return soft_cross_entropy(y_true, y_pred, from_logits=self.from_logits, eps=self.eps)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "eps": self.eps}


@keras.saving.register_keras_serializable(package="ku")
class EuclideanLoss(keras.losses.Loss):
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
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.squared = bool(squared)

    def call(self, y_true, y_pred):
        return euclidean_loss(y_true, y_pred, squared=self.squared)

    def get_config(self):
        return {**super().get_config(), "squared": self.squared}


# --------------------------------------------------------------------------------------------
# names for scripts
# --------------------------------------------------------------------------------------------
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
