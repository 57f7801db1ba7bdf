"""Fitting on whole images batched by aspect ratio (Murray & Gordo 2017 §3.2, §3.4: APM and its
semantic pre-training), distributed and resumable: :func:`fit_aspect_batches`."""
from __future__ import annotations

import logging

import numpy as np

from ku import distribute as _dist
from ku.training.harness import TrainingRun, resolve_strategy

logger = logging.getLogger(__name__)

__all__ = ["fit_aspect_batches"]


def fit_aspect_batches(model, train_ids, train_targets, validation_ids=None, validation_targets=None, *,
                       loss, optimizer, batch_size: int = 16, shorter_side: int | None = 500,
                       max_side: int | None = None, epochs: int = 1, seed: int = 0, strategy=None,
                       run_dir=None, resume: bool = True, verbose: int = 1, callbacks=()):
    """Fit ``model`` on whole images batched by aspect ratio (Murray & Gordo 2017 §3.2, §3.4),
    on one device or data-parallel (``tf.distribute``), resumably.

    Data: :func:`ku.data.aspect_batches.aspect_batches` (training: shuffled inside buckets with a
    new draw per epoch from ``seed``; validation: deterministic order). A model with several
    outputs (APM-m) gets the same targets for every output. ``fit(shuffle=False)``.

    Distributed (``strategy`` not default; :mod:`ku.distribute`): ``batch_size`` is the *global*
    batch; each worker builds the same batch plan and reads and decodes only its replicas' slices
    of every batch, each padded to the whole batch's canvas (``aspect_batches(input_context=...)``
    through ``strategy.distribute_datasets_from_function``), so all replicas together train on
    exactly the single-process batch. The model must have been built under ``strategy.scope()``;
    ``optimizer`` (an optimizer or a zero-argument callable returning one, e.g. ``lambda:
    apm_optimizer(...)``) is created and compiled there. BatchNormalization is synchronised over
    the replicas (:func:`ku.distribute.prepare_model`).

    Files (with ``run_dir``): ``backup/`` (:class:`~ku.training.backup.ResumableBackup`: model, optimizer, epoch,
    random generators after every epoch) and ``history.csv`` (appended). Only the chief writes
    ``run_dir``; other workers write a temporary copy (:func:`ku.distribute.worker_run_dir`).
    A call with the same ``run_dir`` continues where an interrupted or finished run stopped, with
    the batches the uninterrupted run would have drawn (``aspect_batches(first_epoch=...)``);
    ``resume=False`` deletes both first. Multi-worker resuming needs ``run_dir`` on a file system
    every worker sees (checked: the workers must agree on the epoch).

    Args:
        model: a Keras model taking ``(images, valid_sizes)``
            (e.g. :func:`ku.models.apm.apm_model`, :func:`ku.models.semantic.student_model`).
        train_ids, validation_ids: ids tables (``image_path``); validation optional.
        train_targets, validation_targets: ``(N, K)`` targets per row.
        loss: a Keras loss (or a dict per output).
        optimizer: see above.
        batch_size, shorter_side, max_side: as :func:`~ku.data.aspect_batches.aspect_batches`.
        epochs: total epochs (over all resumed calls).
        strategy: ``tf.distribute`` strategy or ``"default"`` / ``"mirrored"`` / ``"multi_worker"``.
        run_dir: folder for the checkpoint and history (None: no files, no resume).
        callbacks: extra Keras callbacks (before the history logger and the backup).
    Returns:
        the ``keras.callbacks.History`` of this call (earlier epochs are in ``history.csv``).
    """
    from ku.data.aspect_batches import aspect_batches

    strategy = resolve_strategy(strategy)
    n_rep = _dist.num_replicas(strategy)
    _dist.per_replica_batch_size(batch_size, strategy)  # checks the global size
    run = TrainingRun(run_dir, strategy=strategy, resume=resume, name="fit_aspect_batches")
    run.start_over()
    initial_epoch = run.resume_epoch()
    if initial_epoch:
        logger.info("fit_aspect_batches: resuming %s at epoch %d", run_dir, initial_epoch)
    run.agree(initial_epoch)

    outputs = list(model.output_names)
    common = dict(shorter_side=shorter_side, max_side=max_side)

    def make(ids, targets, training, input_context=None):
        res = aspect_batches(ids, batch_size, targets=np.asarray(targets, np.float32), shuffle=training,
                             seed=seed, epochs=max(1, int(epochs) - initial_epoch) if training else 1,
                             first_epoch=initial_epoch if training else 0, input_context=input_context,
                             **common)
        ds = res.dataset
        if len(outputs) > 1:
            ds = ds.map(lambda x, t: (x, {k: t for k in outputs}))
        return res, ds

    val_given = validation_ids is not None and len(validation_ids)
    if strategy is None:
        plan, data = make(train_ids, train_targets, True)
        val = make(validation_ids, validation_targets, False)[1] if val_given else None
    else:
        made = []

        def train_fn(ctx):
            res, ds = make(train_ids, train_targets, True, ctx)
            made.append(res)
            return ds

        data = strategy.distribute_datasets_from_function(train_fn)
        plan = made[0]
        val = strategy.distribute_datasets_from_function(
            lambda ctx: make(validation_ids, validation_targets, False, ctx)[1]) if val_given else None
    if plan.failed:
        logger.warning("fit_aspect_batches: %d training image(s) skipped (unreadable), e.g. %s: %s",
                       len(plan.failed), plan.failed[0][1], plan.failed[0][2])
    if not plan.steps_per_epoch:
        raise ValueError(f"fit_aspect_batches: no training batch ({len(plan.ids)} readable images, "
                         f"global batch {batch_size}, {n_rep} replicas)")

    run.compile(model, optimizer, loss=loss)
    cbs = run.callbacks(*callbacks)
    try:
        hist = run.fit(model, data, epochs=int(epochs), steps_per_epoch=plan.steps_per_epoch,
                       validation_data=val, verbose=verbose, callbacks=cbs, shuffle=False)
    finally:
        run.finish()  # a non-chief worker's temporary copy
    return hist
