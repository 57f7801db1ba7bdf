"""Training APM (Murray & Gordo 2017) on whole images: the aesthetic model (:func:`fit_apm`, §3.4)
and the semantic student of its pre-training (:func:`train_student`, §3.3), both through
:func:`ku.training.aspect_batches.fit_aspect_batches` (distributed, resumable). The models:
:mod:`ku.models.apm`, :mod:`ku.models.semantic`."""
from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from ku.models.apm import HUBER_SIGMA, apm_loss, apm_optimizer, apm_targets
from ku.training.aspect_batches import fit_aspect_batches

__all__ = ["fit_apm", "train_student"]


def fit_apm(model: keras.Model, train_ids, validation_ids=None, *, variant: str = "dist",
            shorter_side: Optional[int] = 500, batch_size: int = 16, epochs: int = 1,
            optimizer=None, seed: int = 0, verbose: int = 1, callbacks=(), sigma: float = HUBER_SIGMA,
            strategy=None, run_dir=None, resume: bool = True):
    """Compile and fit an APM model on whole images batched by aspect ratio (§3.2, §3.4).

    Targets from the ids tables (:func:`ku.models.apm.apm_targets`); loss
    :func:`ku.models.apm.apm_loss` (for APM-m the same loss on both outputs, summed); optimizer
    default :func:`ku.models.apm.apm_optimizer` (SGD, lr 1e-3, momentum 0.9, weight decay 5e-4,
    /10 every 20k iterations; an optimizer or a zero-argument callable). Training batches are
    shuffled per epoch with ``seed`` (:func:`ku.data.aspect_batches.plan_batches`). ``strategy``
    (data-parallel, global ``batch_size``; build the model under its scope), ``run_dir`` and
    ``resume`` (chief-only, crash-safe checkpoints; a repeated call continues):
    :func:`ku.training.fit_aspect_batches`.
    Returns the ``History`` of this call.
    """
    outputs = model.output_names
    loss = {k: apm_loss(variant, sigma) for k in outputs} if len(outputs) > 1 else apm_loss(variant, sigma)
    has_val = validation_ids is not None and len(validation_ids)
    return fit_aspect_batches(
        model, train_ids, apm_targets(train_ids, variant), validation_ids if has_val else None,
        apm_targets(validation_ids, variant) if has_val else None, loss=loss,
        optimizer=optimizer if optimizer is not None else (lambda: apm_optimizer("sgd")),
        batch_size=batch_size, shorter_side=shorter_side, epochs=epochs, seed=seed, strategy=strategy,
        run_dir=run_dir, resume=resume, verbose=verbose, callbacks=callbacks)


def train_student(student: keras.Model, ids, targets, *, shorter_side: Optional[int] = 500,
                  batch_size: int = 16, epochs: int = 1, optimizer=None, seed: int = 0,
                  verbose: int = 1, validation_ids=None, validation_targets=None, strategy=None,
                  run_dir=None, resume: bool = True):
    """Fit the student (:func:`ku.models.semantic.student_model`) to the teacher's softmax
    (:func:`ku.models.semantic.teacher_targets`) with cross-entropy (§3.3).

    Rows whose targets are NaN (unreadable images) are dropped. ``optimizer`` default:
    :func:`ku.models.apm.apm_optimizer` (SGD, lr 1e-3, momentum 0.9, weight decay 5e-4, §3.4 --
    the paper gives no separate settings for this stage; an optimizer or a zero-argument
    callable). ``strategy``, ``run_dir``, ``resume``: :func:`ku.training.fit_aspect_batches`.
    Returns the Keras ``History``.
    """
    from ku.losses import SoftCrossEntropy

    targets = np.asarray(targets, np.float32)
    ok = np.isfinite(targets).all(axis=1)
    ids, targets = ids.reset_index(drop=True)[ok].reset_index(drop=True), targets[ok]
    vids = vt = None
    if validation_ids is not None:
        vt = np.asarray(validation_targets, np.float32)
        vok = np.isfinite(vt).all(axis=1)
        vids, vt = validation_ids.reset_index(drop=True)[vok].reset_index(drop=True), vt[vok]
    return fit_aspect_batches(
        student, ids, targets, vids, vt, loss=SoftCrossEntropy(),
        optimizer=optimizer if optimizer is not None else (lambda: apm_optimizer("sgd")),
        batch_size=batch_size, shorter_side=shorter_side, epochs=epochs, seed=seed, strategy=strategy,
        run_dir=run_dir, resume=resume, verbose=verbose)
