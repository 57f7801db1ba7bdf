"""Training: schedules, callbacks, one resumable and distributable fitting core, and the loops of
the three papers built on it.

Modules (one concept each; every public name is re-exported here):

* :mod:`~ku.training.schedule`: :class:`StagedLearningRate`, the schedule of Hosu et al. 2019 §3.3
  ("divided by 10 every 20 epochs, or when the loss does not decrease within 5 epochs ... At each
  change in learning rate the previous best model is loaded"), presets :func:`paper_schedule` and
  :func:`released_schedule` (``docs/released_code.md`` §7), :func:`read_schedule_state`;
* :mod:`~ku.training.best_weights`: :class:`BestWeights`, the store of the best weights
  (``best.weights.h5``, ``best.previous.weights.h5``) the schedule saves to and reloads from;
* :mod:`~ku.training.validation`: :class:`ValidationCorrelation` (SRCC / PLCC / MSE of the mean
  on the whole validation set every epoch, in ``logs`` for the callbacks after it);
* :mod:`~ku.training.history`: :class:`HistoryLogger` (``history.csv``, one row per epoch across
  resumes), :func:`read_history`;
* :mod:`~ku.training.backup`: :class:`ResumableBackup` (crash-safe per-epoch checkpoint),
  :func:`backup_epoch`;
* :mod:`~ku.training.batch_norm`: :func:`recalibrate_batch_norm` (PreciseBN: population statistics
  after a short run);
* :mod:`~ku.training.harness`: :class:`TrainingRun`, the steps every loop shares (strategy,
  chief-only files, resume epoch, compile under the strategy's scope, callbacks, history,
  teardown);
* :mod:`~ku.training.features`: :func:`train` (heads on stored features, Hosu et al. 2019);
* :mod:`~ku.training.aspect_batches`: :func:`fit_aspect_batches` (whole images batched by aspect
  ratio, Murray & Gordo 2017 §3.2);
* :mod:`~ku.training.apm`: :func:`fit_apm` (§3.4), :func:`train_student` (semantic pre-training,
  §3.3);
* :mod:`~ku.training.theme_roi`: :func:`train_theme_roi` (Jia et al. 2019 §III-C, §IV-B);
* :mod:`~ku.training.heads`: :func:`fit_on_features`, :func:`fit_apm_head`,
  :func:`fit_theme_roi_head` (the layers after a frozen backbone on features computed once).

Layering: ``ku.training`` imports ``ku.models`` and the leaf modules, never ``ku.pipelines`` or
the command line (``tests/test_import_layering.py``).
"""
from __future__ import annotations

from ku.training.apm import fit_apm, train_student
from ku.training.aspect_batches import fit_aspect_batches
from ku.training.backup import ResumableBackup, backup_epoch
from ku.training.batch_norm import recalibrate_batch_norm
from ku.training.best_weights import BestWeights
from ku.training.features import TrainingResult, train
from ku.training.files import safe_name
from ku.training.harness import TrainingRun
from ku.training.heads import fit_apm_head, fit_on_features, fit_theme_roi_head
from ku.training.history import HistoryLogger, read_history
from ku.training.schedule import (STATE_FORMAT, StagedLearningRate, paper_schedule, read_schedule_state,
                                  released_schedule)
from ku.training.theme_roi import ThemeRoiTraining, train_theme_roi
from ku.training.validation import ValidationCorrelation

__all__ = [
    "StagedLearningRate",
    "ValidationCorrelation",
    "paper_schedule",
    "released_schedule",
    "train",
    "TrainingResult",
    "safe_name",
    "read_schedule_state",
    "ResumableBackup",
    "HistoryLogger",
    "backup_epoch",
    "fit_aspect_batches",
    "STATE_FORMAT",
    "BestWeights",
    "TrainingRun",
    "read_history",
    "fit_apm",
    "train_student",
    "train_theme_roi",
    "ThemeRoiTraining",
    "fit_on_features",
    "fit_apm_head",
    "fit_theme_roi_head",
    "recalibrate_batch_norm",
]
