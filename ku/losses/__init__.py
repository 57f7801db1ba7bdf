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

One registered loss class per module, with its function form: :mod:`ku.losses.emd`,
:mod:`~ku.losses.huber_bin`, :mod:`~ku.losses.cd`, :mod:`~ku.losses.kl_divergence`,
:mod:`~ku.losses.cross_entropy`, :mod:`~ku.losses.euclidean` (named after the quantity: the
snake-case names ``emd_loss``, ..., ``soft_cross_entropy`` are the function forms exported here),
:func:`get_loss` in :mod:`ku.losses.lookup`. Import everything from ``ku.losses``.
"""
from __future__ import annotations

from ku.losses.cd import CDLoss, cd_loss
from ku.losses.cross_entropy import SoftCrossEntropy, soft_cross_entropy
from ku.losses.emd import EMDLoss, emd_loss
from ku.losses.euclidean import EuclideanLoss, euclidean_loss
from ku.losses.huber_bin import HuberBinLoss, huber_bin_loss
from ku.losses.kl_divergence import KLDivergenceLoss, kl_divergence_loss
from ku.losses.lookup import LOSS_NAMES, get_loss

__all__ = [
    "EMDLoss", "HuberBinLoss", "CDLoss", "KLDivergenceLoss", "SoftCrossEntropy", "EuclideanLoss",
    "emd_loss", "huber_bin_loss", "cd_loss", "kl_divergence_loss", "soft_cross_entropy",
    "euclidean_loss", "get_loss", "LOSS_NAMES",
]
