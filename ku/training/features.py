"""Training heads on stored features the way Hosu et al. 2019 did (§3.3), resumably: :func:`train`.

Paper, §3.3: "The initial learning rate used in training is 10^-4, which is divided by 10 every 20
epochs, or when the loss does not decrease within 5 epochs, whichever comes first. The lowest
learning rate we used was 10^-6. At each change in learning rate the previous best model is
loaded. The Adam optimizer is used, with all hyper-parameters except learning rate set to their
defaults." Model selection: minimum validation loss (MSE of the MOS).

:func:`train` compiles with Adam and fits with :class:`~ku.training.validation.ValidationCorrelation`
(whole-set SRCC / PLCC / MSE of the mean every epoch) and the
:class:`~ku.training.schedule.StagedLearningRate` schedule, around the shared fitting core
(:class:`ku.training.harness.TrainingRun`: crash-safe backup, history, chief-only files); a stopped
run resumes where it stopped (model, optimizer, epoch, schedule state, best weights).

Callback order matters: Keras calls callbacks in list order with one shared ``logs`` dict, so
:class:`~ku.training.validation.ValidationCorrelation` must come *before* anything that reads
``val_srcc``/``val_plcc`` (the schedule, checkpoints, ``CSVLogger``). :func:`train` orders them
correctly.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import keras

from ku.training.files import load_model_weights
from ku.training.harness import TrainingRun
from ku.training.schedule import StagedLearningRate, paper_schedule, read_schedule_state
from ku.training.validation import ValidationCorrelation

logger = logging.getLogger(__name__)

__all__ = ["train", "TrainingResult"]


@dataclass
class TrainingResult:
    """What :func:`train` returns.

    Attributes:
        history: per-epoch logs of all runs in ``run_dir`` (from ``history.csv``, one row per epoch,
            ``epoch`` 0-based), a ``pandas.DataFrame``.
        monitor, best, best_epoch: the schedule's monitor, its best value and epoch (0-based).
        finished: the schedule ran to its end (next rate below ``min_lr``).
        epochs_run: epochs trained by this call.
        schedule_changes: one dict per rate change (epoch, reason, from_lr, to_lr, best_epoch).
        run_dir, best_weights_path: where the files are.
    """

    history: object
    monitor: str
    best: float | None
    best_epoch: int | None
    finished: bool
    epochs_run: int
    schedule_changes: list = field(default_factory=list)
    run_dir: Path | None = None
    best_weights_path: Path | None = None


def train(model, train_data, validation_data, *, run_dir, loss="mse", learning_rate=None,
          schedule=None, max_epochs: int = 60, resume: bool = True, verbose: int = 1, callbacks=(),
          metrics=None, batch_size: int | None = None, validation_batch_size: int | None = None,
          shuffle=None, optimizer=None, strategy=None, jit_compile="auto",
          **fit_kwargs) -> TrainingResult:
    """Compile with Adam and train with the schedule of Hosu et al. 2019 §3.3, resumably.

    Callbacks, in this order: :class:`ValidationCorrelation` (``val_srcc``, ``val_plcc``,
    ``val_mean_mse`` on the whole validation set, and ``val_loss`` from the same predictions unless
    ``metrics``, a strategy or ``validation_*`` fit arguments need Keras' own validation pass), the :class:`StagedLearningRate` schedule (its
    best weights go to ``run_dir/best.weights.h5``, its state to ``run_dir/schedule_state.json``),
    ``callbacks`` (extra), :class:`HistoryLogger` (``run_dir/history.csv``, one row per epoch) and
    ``BackupAndRestore(run_dir/backup)`` (model + optimizer + epoch after every epoch; kept after
    training so that a later call with a larger ``max_epochs`` continues).

    Resuming (``resume=True``): a call with the same ``run_dir`` continues a stopped or finished
    run: weights, optimizer state and epoch come from the backup, the schedule's stage, counters
    and best value from its state file, its best weights from ``best.weights.h5``. If the schedule
    already finished, nothing is trained and the model gets the best weights. ``resume=False``
    deletes these files first and starts over. A training
    :class:`~ku.data.generators.FeatureSequence` that is still at epoch 0 is moved to the resumed
    epoch, so its augmentation draws continue as in an uninterrupted run.

    Args:
        model: a built Keras model (any; e.g. a head of :mod:`ku.models.heads`).
        train_data: ``(x, y)`` arrays or a ``keras.utils.PyDataset`` (e.g. ``FeatureSequence``) or
            ``tf.data.Dataset`` of ``(x, y)`` batches.
        validation_data: the same kinds (whole set evaluated every epoch).
        run_dir: directory for the run's files (created).
        loss: Keras loss (``"mse"`` on the MOS in the paper).
        learning_rate: first rate; default: the schedule's ``initial_lr`` or 1e-4 (paper).
        schedule: a :class:`StagedLearningRate` (e.g. ``released_schedule("wide")``), a dict of its
            arguments, or None for :func:`paper_schedule`. Its ``best_weights_path`` and
            ``state_path`` are set to the files in ``run_dir`` unless given.
        max_epochs: total epochs over all calls (60 = 3 stages x 20 in the paper).
        resume: continue the run in ``run_dir`` if there is one.
        verbose: Keras ``fit`` verbosity.
        callbacks: extra callbacks (placed after the schedule; they see ``val_srcc``/``val_plcc``).
        metrics: extra compile metrics.
        batch_size: for array inputs (default 128, §3.3).
        validation_batch_size: for array validation inputs (default ``batch_size``).
        shuffle: ``fit``'s shuffle; default True for arrays, False for datasets (a
            ``FeatureSequence`` shuffles items itself, reproducibly).
        optimizer: default ``keras.optimizers.Adam(learning_rate)`` with default betas (§3.3).
        strategy: ``tf.distribute`` strategy (or ``"default"``, ``"mirrored"``,
            ``"multi_worker"``; :func:`ku.distribute.get_strategy`). The model must have been
            created under ``strategy.scope()``; the optimizer is created and compiled there.
            ``batch_size`` / a ``FeatureSequence``'s batch size is the *global* batch; a
            ``FeatureSequence`` (train and validation) is converted to a sharded distributed
            dataset (every worker reads its slice of each batch,
            :func:`ku.distribute.distribute_sequence`); BatchNormalization uses the statistics
            of the global batch (``synchronized``, :func:`ku.distribute.prepare_model`) and its
            moving statistics are kept equal on all replicas. Only the
            chief writes ``run_dir``; other workers write into a temporary directory (deleted at
            the end), seeded from ``run_dir`` when resuming, so ``run_dir`` must be on a shared
            file system for multi-worker resume (checked).
        jit_compile: ``compile``'s XLA switch. Keras' ``"auto"`` leaves XLA off on a machine without
            an accelerator; ``True`` compiles the training and validation steps with XLA (on 2 CPU
            cores a Pool-3FC step on ``(16, 5, 5, 16928)`` features takes 0.56 s instead of 0.96 s,
            measured 2026-11-29), worth it when every batch has the same shape (stored features).
        **fit_kwargs: passed to ``model.fit``.
    Returns:
        :class:`TrainingResult`; the model holds the best weights.
    """
    run = TrainingRun(run_dir, strategy=strategy, resume=resume, name="train")
    run_dir = run.write_dir
    state_path = run.path("schedule_state.json")
    best_path = run.path("best.weights.h5")

    if schedule is None:
        schedule = paper_schedule(initial_lr=learning_rate if learning_rate is not None else 1e-4)
    elif isinstance(schedule, dict):
        schedule = StagedLearningRate(**schedule)
    elif not isinstance(schedule, StagedLearningRate):
        raise TypeError(f"train: schedule must be a StagedLearningRate, a dict or None, got {type(schedule).__name__}")
    if learning_rate is not None and schedule.initial_lr is not None and \
            not math.isclose(float(learning_rate), schedule.initial_lr, rel_tol=1e-9):
        raise ValueError(f"train: learning_rate={learning_rate} contradicts the schedule's initial_lr="
                         f"{schedule.initial_lr}; give only one")
    if schedule.initial_lr is None:
        schedule.initial_lr = float(learning_rate) if learning_rate is not None else 1e-4
    if schedule.state_path is None:
        schedule.state_path = state_path
    if schedule.best_weights_path is None:
        schedule.best_weights_path = best_path
    if run.write_dir != run.run_dir:  # a non-chief worker writes only into its temporary directory
        schedule.state_path, schedule.best_weights_path = state_path, best_path
    lr0 = schedule.initial_lr

    if not resume:
        schedule.reset()
        run.start_over(schedule.state_path, schedule.best_weights_path)

    run.compile(model, optimizer if optimizer is not None else (lambda: keras.optimizers.Adam(learning_rate=lr0)),
                loss=loss, metrics=metrics, jit_compile=jit_compile)

    def result(epochs_run):
        st = schedule.get_state() if schedule._state is not None else read_schedule_state(schedule.state_path) or {}
        return TrainingResult(
            history=run.history(), monitor=schedule.monitor, best=st.get("best"),
            best_epoch=st.get("best_epoch"), finished=bool(st.get("finished", False)), epochs_run=epochs_run,
            schedule_changes=list(st.get("changes", [])), run_dir=run_dir,
            best_weights_path=schedule.best_weights_path if schedule.best_weights_path.exists() else None)

    saved = read_schedule_state(schedule.state_path) if resume else None
    if saved is not None and saved.get("finished") and schedule._state is None:
        logger.info("train: the schedule in %s already finished (epoch %d); loading the best weights",
                    run_dir, saved["epoch"])
        if schedule.best_weights_path.exists():
            load_model_weights(model, schedule.best_weights_path)
        else:
            logger.warning("train: %s is missing; the model keeps its weights", schedule.best_weights_path)
        return run.finish(result(0))

    initial_epoch = run.resume_epoch()  # the checkpoint's own epoch (ResumableBackup)
    if initial_epoch:
        logger.info("train: resuming %s at epoch %d", run_dir, initial_epoch)
        if hasattr(train_data, "set_epoch") and getattr(train_data, "epoch", None) == 0:
            train_data.set_epoch(initial_epoch)

    run.agree(initial_epoch)
    train_data = run.distribute(train_data)
    is_dataset = not isinstance(train_data, (tuple, list))
    if is_dataset:
        x, y = train_data, None
    else:
        if len(train_data) != 2:
            raise ValueError("train: train_data must be (x, y) or a dataset of (x, y) batches")
        x, y = train_data
    if shuffle is None:
        shuffle = not is_dataset
    val_for_fit = validation_data
    if isinstance(validation_data, list) and len(validation_data) in (2, 3):
        val_for_fit = tuple(validation_data)
    val_for_fit = run.distribute(val_for_fit)
    if not is_dataset and batch_size is None:
        batch_size = 128

    # One validation pass per epoch: ValidationCorrelation's predictions also give val_loss, unless
    # Keras must evaluate (compiled metrics, a strategy's replicas, validation options for fit).
    own_val_loss = run.strategy is None and not metrics and not any(k.startswith("validation_") for k in fit_kwargs)
    cbs = run.callbacks(ValidationCorrelation(validation_data, batch_size=validation_batch_size or batch_size or 128,
                                              compute_loss=own_val_loss),
                        schedule, *callbacks)
    hist = run.fit(model, x, y, batch_size=None if is_dataset else batch_size, epochs=int(max_epochs),
                   validation_data=None if own_val_loss else val_for_fit,
                   validation_batch_size=validation_batch_size if isinstance(val_for_fit, tuple) else None,
                   shuffle=shuffle, callbacks=cbs, verbose=verbose, **fit_kwargs)
    epochs_run = len(hist.epoch) if hist is not None else 0
    return run.finish(result(epochs_run))
