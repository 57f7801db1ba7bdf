"""Training the theme-aware ROI model of Jia, Li, He 2019 with its recipe (§III-C, §IV-B),
distributed and resumable: :func:`train_theme_roi` (the model: :mod:`ku.models.theme_roi`)."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras

from ku import distribute as _dist
from ku.training.harness import TrainingRun
from ku.training.validation import ValidationCorrelation

__all__ = ["train_theme_roi", "ThemeRoiTraining"]


@dataclass
class ThemeRoiTraining:
    """What :func:`train_theme_roi` returns."""

    history: object  # pandas DataFrame of history.csv (one row per epoch)
    epochs_run: int
    run_dir: Path
    final_weights: Path
    best_weights: Path | None = None
    learning_rates: list = field(default_factory=list)


def train_theme_roi(model, train_data, validation_data=None, *, run_dir, epochs=30, learning_rate=1e-3,
                    momentum=0.9, weight_decay=1e-4, fc_multiplier=10.0, halve_every=10, loss=None,
                    resume=True, verbose=1, callbacks=(), select="last", strategy=None) -> ThemeRoiTraining:
    """Train with the recipe of Jia et al. §III-C / §IV-B, resumably.

    Loss :class:`ku.losses.EMDLoss` (r = 2); :func:`ku.models.theme_roi.jia_optimizer`;
    :func:`ku.models.theme_roi.jia_lr_schedule` (halved every ``halve_every`` epochs); batch size
    is the dataset's (16 in the paper). The model's batch norm should be frozen
    (:func:`ku.models.theme_roi.theme_roi_model` does it). The steps around ``fit`` are the shared
    core's (:class:`ku.training.harness.TrainingRun`).

    Files in ``run_dir``: ``history.csv`` (:class:`ku.training.HistoryLogger`: appended, one row
    per epoch also after a resume that re-runs an epoch), ``backup/``
    (:class:`ku.training.ResumableBackup`: model, optimizer and epoch after every epoch, written
    atomically, kept at the end so that a repeated call continues or does nothing),
    ``best.weights.h5`` (lowest ``val_loss``, when there is validation data),
    ``final.weights.h5``, ``run.json`` (arguments).

    Distributed (``strategy``, :mod:`ku.distribute`): build the model under ``strategy.scope()``;
    the optimizer is created there. The batch size of the datasets is the *global* batch: they
    are distributed with ``tf.data``'s ``DATA`` auto-sharding (every global batch is split into
    per-replica slices and each worker keeps its own), so all replicas together train on exactly
    the single-process batches -- also when :func:`ku.data.canvas.canvas_dataset` skips an
    unreadable image, since every worker skips the same one. The price: every worker decodes
    every image of the batch (decoding and padding one image costs far less than Inception-v3 on
    its 800 x 800 canvas). Only the chief writes ``run_dir``; the other workers write a temporary
    copy (:func:`ku.distribute.worker_run_dir`); resuming needs ``run_dir`` on a shared file system.

    Args:
        model: e.g. :func:`ku.models.theme_roi.theme_roi_model`.
        train_data, validation_data: ``tf.data`` datasets of ``(inputs, distributions)``
            (:func:`ku.data.canvas.canvas_dataset`).
        run_dir: the run's folder.
        epochs: total epochs (30).
        resume: continue a run in ``run_dir``; False deletes its files first.
        select: ``"last"`` (the paper trains a fixed schedule) or ``"best"`` (reload the weights
            with the lowest validation loss at the end).
        callbacks: extra Keras callbacks (after the validation correlations, before the logger).
        strategy: ``tf.distribute`` strategy or ``"default"`` / ``"mirrored"`` / ``"multi_worker"``.
    Returns:
        :class:`ThemeRoiTraining`; the model holds the selected weights.
    """
    from ku.losses import EMDLoss
    from ku.models.theme_roi import jia_lr_schedule, jia_optimizer

    if select not in ("last", "best"):
        raise ValueError(f"train_theme_roi: select must be 'last' or 'best', got {select!r}")
    run = TrainingRun(run_dir, strategy=strategy, resume=resume, name="train_theme_roi")
    run.start_over("best.weights.h5", "final.weights.h5", "run.json")
    try:
        with open(run.path("run.json"), "w", encoding="utf-8") as f:
            json.dump({"epochs": epochs, "learning_rate": learning_rate, "momentum": momentum,
                       "weight_decay": weight_decay, "fc_multiplier": fc_multiplier,
                       "halve_every": halve_every, "model": model.name,
                       "replicas": _dist.num_replicas(run.strategy)}, f, indent=1)
        run.agree(run.resume_epoch())
        train_data = run.distribute(train_data)

        schedule = jia_lr_schedule(learning_rate, 0.5, halve_every)
        run.compile(model, lambda: jia_optimizer(learning_rate, momentum, weight_decay, fc_multiplier),
                    loss=loss or EMDLoss(r=2))
        best = run.path("best.weights.h5")
        extra = []
        if validation_data is not None:
            extra.append(ValidationCorrelation(validation_data))  # predicts locally on every worker
            extra.append(keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True,
                                                         save_weights_only=True))
        # history.csv: one row per epoch after a resume
        cbs = run.callbacks(*extra, keras.callbacks.LearningRateScheduler(schedule), *callbacks)
        val = run.distribute(validation_data)
        with warnings.catch_warnings():
            # datasets with ignore_errors() have unknown cardinality: Keras warns at every epoch end
            warnings.filterwarnings("ignore", message=".*ran out of data.*")
            hist = run.fit(model, train_data, validation_data=val, epochs=int(epochs),
                           callbacks=cbs, verbose=verbose, shuffle=False)
        model.save_weights(str(run.path("final.weights.h5")))
        if select == "best" and best.exists():
            model.load_weights(str(best))
        history = run.history()
    finally:
        run.finish()  # a non-chief worker's temporary copy
    best = run.run_dir / "best.weights.h5"
    return ThemeRoiTraining(history=history, epochs_run=len(hist.epoch) if hist is not None else 0,
                            run_dir=run.run_dir, final_weights=run.run_dir / "final.weights.h5",
                            best_weights=best if best.exists() else None,
                            learning_rates=[schedule(e) for e in range(int(epochs))])
