"""The resumable, distributable fitting core shared by ku's training loops.

:func:`ku.training.train` (stored features, Hosu et al. 2019), :func:`ku.training.fit_aspect_batches`
(whole images batched by aspect ratio, Murray & Gordo 2017) and :func:`ku.training.train_theme_roi`
(padded canvases, Jia et al. 2019) differ in their data, loss, optimizer and schedule; the steps
around ``model.fit`` are the same and live here, in :class:`TrainingRun`:

1. the ``tf.distribute`` strategy (None for the default one, :mod:`ku.distribute`);
2. the run's folder: only the chief writes ``run_dir``, other workers write a temporary copy
   (:func:`ku.distribute.worker_run_dir`); ``resume=False`` deletes the run's files first
   (:meth:`TrainingRun.start_over`);
3. the epoch to resume from, read from the crash-safe checkpoint ``backup/``
   (:func:`~ku.training.backup.backup_epoch`), on which all workers must agree;
4. the model prepared for the strategy and compiled under its scope (the optimizer, or a
   zero-argument callable making it, is created there);
5. the callbacks: BatchNormalization statistics synchronised over the replicas, the loop's own
   callbacks (validation correlations, schedule, ...), :class:`~ku.training.history.HistoryLogger`
   (``history.csv``, one row per epoch across resumes), :class:`~ku.training.backup.ResumableBackup`
   (``backup/``) -- in that order (Keras calls them in list order with one shared ``logs``);
6. ``fit`` and the teardown that also runs when ``fit`` is interrupted (history file closed,
   resume epoch cleared), the history read back, the temporary copy deleted.

Without ``run_dir`` (:func:`ku.training.fit_aspect_batches` allows it) there are no files and no
resume.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import keras

from ku import distribute as _dist
from ku.training.backup import ResumableBackup, backup_epoch
from ku.training.history import HistoryLogger, read_history

logger = logging.getLogger(__name__)

__all__ = ["TrainingRun", "resolve_strategy", "clear_resume_epoch", "end_fit"]


def resolve_strategy(strategy):
    """``strategy`` (a strategy, a name or None) as a ``tf.distribute`` strategy, or None for the
    default strategy (no distribution)."""
    strategy = _dist.get_strategy(strategy)
    return None if _dist.is_default(strategy) else strategy


def clear_resume_epoch(model) -> None:
    """Forget the epoch that ResumableBackup (or Keras' BackupAndRestore) left set on ``model``;
    else a later plain ``model.fit()`` on the same object would start at that epoch."""
    if hasattr(model, "_initial_epoch"):
        model._initial_epoch = None


def end_fit(model, csv_logger=None) -> None:
    """After ``fit``, also an interrupted one: close ``csv_logger``'s file (an interrupted ``fit``
    never calls ``CSVLogger.on_train_end``) and clear the resume epoch."""
    f = getattr(csv_logger, "csv_file", None)
    if f is not None and not f.closed:
        f.close()
    clear_resume_epoch(model)


class TrainingRun:
    """One call of a training loop: strategy, the run's folder, resume epoch, compile, callbacks,
    fit and teardown (module docstring).

    Args:
        run_dir: the run's folder (created), or None (no files, no resume).
        strategy: ``tf.distribute`` strategy, ``"default"`` / ``"mirrored"`` / ``"multi_worker"``
            or None.
        resume: continue the run in ``run_dir``; False: :meth:`start_over` deletes its files.
        name: the loop's name in log messages.

    Attributes:
        strategy: the strategy, None for the default one.
        run_dir: the shared folder (``run_dir``).
        write_dir: where this worker writes (``run_dir`` on the chief, a temporary copy on the
            others; None without ``run_dir``).
    """

    def __init__(self, run_dir, *, strategy=None, resume: bool = True, name: str = "train"):
        self.strategy = resolve_strategy(strategy)
        self.resume = bool(resume)
        self.name = name
        self.csv_logger = None
        if run_dir is None:
            self.run_dir = self.write_dir = None
            self._finish = lambda result: result
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _, self.write_dir, self._finish = _dist.worker_run_dir(self.run_dir, self.strategy, self.resume)

    # -- files ------------------------------------------------------------------------------
    @property
    def history_path(self) -> Path | None:
        return None if self.write_dir is None else self.write_dir / "history.csv"

    @property
    def backup_dir(self) -> Path | None:
        return None if self.write_dir is None else self.write_dir / "backup"

    def path(self, name) -> Path:
        """``name`` in this worker's folder."""
        return self.write_dir / name

    def start_over(self, *files) -> None:
        """With ``resume=False``: delete ``history.csv``, ``backup/`` and ``files`` (names in this
        worker's folder, or paths)."""
        if self.resume or self.write_dir is None:
            return
        for p in [self.history_path, *(self.write_dir / f for f in files), self.backup_dir]:
            if p.is_dir():
                logger.warning("%s(resume=False): removing %s", self.name, p)
                shutil.rmtree(p)
            elif p.exists():
                logger.warning("%s(resume=False): removing %s", self.name, p)
                p.unlink()

    def resume_epoch(self) -> int:
        """Epochs completed according to the checkpoint (0 when not resuming or there is none)."""
        if not self.resume or self.write_dir is None:
            return 0
        return backup_epoch(self.backup_dir)

    # -- distribution -----------------------------------------------------------------------
    def agree(self, epoch: int) -> None:
        """All workers must resume from the same ``epoch`` (they read the shared ``run_dir``)."""
        if self.strategy is not None:
            _dist.all_workers_agree(self.strategy, epoch, "the epoch to resume from")

    def distribute(self, data):
        """Training / validation input ready for the strategy (unchanged without one)."""
        return data if self.strategy is None else _dist.distribute_input(data, self.strategy)

    def compile(self, model, optimizer, **compile_kwargs):
        """Prepare ``model`` for the strategy and compile it under the strategy's scope (optimizer
        variables mirrored too). ``optimizer``: an optimizer or a zero-argument callable making
        one. Returns the optimizer."""
        _dist.prepare_model(model, self.strategy)
        with _dist.scope(self.strategy):
            if callable(optimizer) and not isinstance(optimizer, keras.optimizers.Optimizer):
                optimizer = optimizer()
            _dist.check_optimizer(optimizer, self.strategy)
            model.compile(optimizer=optimizer, **compile_kwargs)
        clear_resume_epoch(model)
        return optimizer

    # -- fit --------------------------------------------------------------------------------
    def callbacks(self, *callbacks) -> list:
        """``[SyncBatchStatistics] + callbacks + [HistoryLogger, ResumableBackup]`` (the first only
        with a strategy, the last two only with a ``run_dir``)."""
        cbs = [*([_dist.SyncBatchStatistics(self.strategy)] if self.strategy is not None else []), *callbacks]
        if self.write_dir is not None:
            self.csv_logger = HistoryLogger(str(self.history_path))
            cbs += [self.csv_logger, ResumableBackup(self.backup_dir)]
        return cbs

    def fit(self, model, *args, **kwargs):
        """``model.fit(*args, **kwargs)`` followed by :func:`end_fit`, also when interrupted."""
        try:
            return model.fit(*args, **kwargs)
        finally:
            end_fit(model, self.csv_logger)

    def history(self):
        """``history.csv`` of all calls as a ``pandas.DataFrame`` (one row per epoch)."""
        return read_history(self.history_path)

    def finish(self, result=None):
        """Point ``result`` (a :class:`~ku.training.features.TrainingResult`) back at ``run_dir``
        and delete a non-chief worker's temporary copy; returns ``result``."""
        return self._finish(result)
