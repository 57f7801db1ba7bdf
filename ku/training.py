"""Training heads the way Hosu et al. 2019 did (§3.3), resumable.

Paper, §3.3: "The initial learning rate used in training is 10^-4, which is divided by 10 every 20
epochs, or when the loss does not decrease within 5 epochs, whichever comes first. The lowest
learning rate we used was 10^-6. At each change in learning rate the previous best model is
loaded. The Adam optimizer is used, with all hyper-parameters except learning rate set to their
defaults." Model selection: minimum validation loss (MSE of the MOS).

* :class:`StagedLearningRate`: that schedule as a Keras callback (best weights kept across stages,
  reloaded at every change and at the end; stops when the next rate would fall below ``min_lr``).
  Presets: :func:`paper_schedule` and :func:`released_schedule` (``"narrow"``: 1e-3 -> 1e-5 on
  ``val_loss``; ``"wide"``: 1e-4 -> 1e-6 on ``val_plcc``, maximised; ``docs/released_code.md`` §7).
* :class:`ValidationCorrelation`: SRCC / PLCC / MSE of the mean on the *whole* validation set at
  every epoch end, written into ``logs`` (``val_srcc``, ``val_plcc``, ``val_mean_mse``) for the
  callbacks after it. The released wide model monitored a mean of per-batch PLCCs instead.
* :func:`train`: compile with Adam, fit with both callbacks, ``BackupAndRestore``, ``CSVLogger``;
  a stopped run resumes where it stopped (model, optimizer, epoch, schedule state, best weights).

Callback order matters: Keras calls callbacks in list order with one shared ``logs`` dict, so
:class:`ValidationCorrelation` must come *before* anything that reads ``val_srcc``/``val_plcc``
(the schedule, checkpoints, ``CSVLogger``). :func:`train` orders them correctly.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ku.data import durable
from ku.evaluation import mean_scores

logger = logging.getLogger(__name__)

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
]

STATE_FORMAT = "ku.staged_lr/1"
_BEST_ATTRS = ("ku_monitor", "ku_best_value", "ku_best_epoch")
_MAX_MONITORS = ("srcc", "plcc", "acc", "auc", "corr", "precision", "recall")


# ---------------------------------------------------------------------------------------------
# small helpers

def safe_name(text: str) -> str:
    """A file-system safe version of ``text``: only ``[A-Za-z0-9._-]`` (others become ``_``).

    The released code built file names such as ``...o1[5,5,16928]_r1.h5``; brackets, colons and
    spaces break shells and some file systems.
    """
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")
    if not out:
        raise ValueError(f"safe_name: {text!r} has no usable characters")
    return out


def _atomic_write_text(path: Path, text: str, what: str = "training state") -> None:
    """Write ``text`` durably (temporary name, fsync, rename; :mod:`ku.data.durable`); a failed
    write raises :class:`~ku.data.durable.DiskWriteError` naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.atomic_write(path, text, what=what)


def _save_model_weights(model, path: Path) -> None:
    """Model weights only (no optimizer state) to a ``.weights.h5`` file."""
    try:
        from keras.src.saving import saving_lib

        saving_lib.save_weights_only(model, str(path), objects_to_skip=[model.optimizer]
                                     if getattr(model, "optimizer", None) is not None else None)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Keras versions
        model.save_weights(str(path), overwrite=True)


def _load_model_weights(model, path: Path) -> None:
    """Load model weights, leaving the optimizer state alone (and without Keras' warning that the
    file holds no optimizer variables)."""
    opt = getattr(model, "optimizer", None)
    try:
        from keras.src.saving import saving_lib

        saving_lib.load_weights_only(model, str(path), objects_to_skip=[opt] if opt is not None else None)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Keras versions
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
            model.load_weights(str(path))


def _read_best_attrs(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        if not all(k in f.attrs for k in _BEST_ATTRS):
            return None
        mon = f.attrs["ku_monitor"]
        return {"monitor": mon.decode() if isinstance(mon, bytes) else str(mon),
                "best": float(f.attrs["ku_best_value"]), "best_epoch": int(f.attrs["ku_best_epoch"])}


def _get_lr(optimizer) -> float:
    sched = getattr(optimizer, "_learning_rate", None)
    if isinstance(sched, keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError("StagedLearningRate needs an optimizer with a constant learning rate, not a "
                         f"LearningRateSchedule ({type(sched).__name__})")
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def read_schedule_state(path):
    """The saved state of a :class:`StagedLearningRate` (its ``state_path`` file), or None."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if doc.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a ku schedule state file (format {doc.get('format')!r})")
    return doc["state"]


# ---------------------------------------------------------------------------------------------
# the schedule

class StagedLearningRate(keras.callbacks.Callback):
    """Learning rate in stages with reload-best, Hosu et al. 2019 §3.3 (resumable).

    The rate starts at ``initial_lr`` (default: the optimizer's rate when training begins; 1e-4 in
    the paper). A *stage* ends after ``stage_epochs`` epochs at one rate **or** after ``patience``
    epochs in a row in which ``monitor`` did not improve on the best value so far, whichever comes
    first. At the end of a stage the best weights seen so far are loaded back into the model and
    the rate is divided by ``factor``; if the new rate would be below ``min_lr`` training stops
    instead (the model then holds the best weights). Paper: 1e-4, 1e-5, 1e-6, i.e. at most
    3 x 20 = 60 epochs.

    The best value and weights are tracked across stages (like ku's single shared checkpoint):
    an epoch "improves" only if it beats every earlier epoch (by more than ``min_delta``). The
    patience counter restarts at every stage change. ``NaN`` values never improve.

    Released code (``docs/released_code.md`` §7): the stage loop re-created ``Adam`` for every stage,
    which resets its moment estimates and step counter; the paper is silent. ``reset_optimizer``
    chooses: False (default) keeps the optimizer state across stages (only the rate changes);
    True re-initialises all optimizer variables except the rate (exactly as a new optimizer).
    There, each stage also had its own ``EarlyStopping`` whose best value started fresh; here the
    best is global, which is what "when the loss does not decrease" and "the previous best model
    is loaded" describe.

    Keras calls callbacks in list order, so put :class:`ValidationCorrelation` before this callback
    when monitoring ``val_srcc`` / ``val_plcc``.

    Resuming: :meth:`get_state` / :meth:`set_state` give a JSON-able dict (stage, counters, best
    value and epoch, rate). With ``state_path`` the state is written (atomically) at every epoch
    end, together with the state of the epoch before, and read back when training begins; at the
    first epoch the state matching that epoch index is used (covers a crash between writing the
    state and the ``BackupAndRestore`` checkpoint). With ``best_weights_path`` the best weights
    are also written to that ``.weights.h5`` file (model weights only; the monitor, best value and
    epoch are stored in its HDF5 attributes ``ku_monitor``, ``ku_best_value``, ``ku_best_epoch``)
    and reloaded from it on resume; the file wins when it disagrees with the state.

    Args:
        initial_lr: first rate; None takes the optimizer's rate at ``on_train_begin``.
        factor: divisor of the rate at each change (10).
        stage_epochs: maximum epochs per rate (20).
        patience: epochs without improvement that end a stage (5).
        min_lr: lowest rate used (1e-6); the schedule stops when the next one would be lower.
        monitor: key of ``logs`` to watch (``"val_loss"``; ``"val_plcc"`` for the released wide
            model).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for srcc/plcc/accuracy-like names).
        min_delta: minimum change that counts as an improvement.
        reset_optimizer: re-initialise the optimizer state at each change (see above).
        restore_best_on_end: load the best weights when training ends for any other reason too
            (e.g. ``epochs`` reached).
        best_weights_path: optional ``.weights.h5`` file that receives the best weights.
        state_path: optional ``.json`` file for the schedule state (resuming).
        verbose: 1 prints a line at every rate change.
    """

    def __init__(self, initial_lr=None, *, factor=10.0, stage_epochs=20, patience=5, min_lr=1e-6,
                 monitor="val_loss", mode="auto", min_delta=0.0, reset_optimizer=False,
                 restore_best_on_end=True, best_weights_path=None, state_path=None, verbose=1):
        super().__init__()
        if initial_lr is not None and not float(initial_lr) > 0:
            raise ValueError(f"StagedLearningRate: initial_lr must be > 0, got {initial_lr!r}")
        if not float(factor) > 1:
            raise ValueError(f"StagedLearningRate: factor must be > 1, got {factor!r}")
        if int(stage_epochs) < 1:
            raise ValueError(f"StagedLearningRate: stage_epochs must be >= 1, got {stage_epochs!r}")
        if int(patience) < 1:
            raise ValueError(f"StagedLearningRate: patience must be >= 1, got {patience!r}")
        if not float(min_lr) > 0:
            raise ValueError(f"StagedLearningRate: min_lr must be > 0, got {min_lr!r}")
        if float(min_delta) < 0:
            raise ValueError(f"StagedLearningRate: min_delta must be >= 0, got {min_delta!r}")
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"StagedLearningRate: mode must be 'min', 'max' or 'auto', got {mode!r}")
        if mode == "auto":
            mode = "max" if any(s in monitor.lower() for s in _MAX_MONITORS) else "min"
        if best_weights_path is not None and not str(best_weights_path).endswith(".weights.h5"):
            raise ValueError(f"StagedLearningRate: best_weights_path must end in '.weights.h5', "
                             f"got {best_weights_path!r}")
        self.initial_lr = None if initial_lr is None else float(initial_lr)
        self.factor = float(factor)
        self.stage_epochs = int(stage_epochs)
        self.patience = int(patience)
        self.min_lr = float(min_lr)
        self.monitor = str(monitor)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.reset_optimizer = bool(reset_optimizer)
        self.restore_best_on_end = bool(restore_best_on_end)
        self.best_weights_path = None if best_weights_path is None else Path(best_weights_path)
        self.state_path = None if state_path is None else Path(state_path)
        self.verbose = int(verbose)
        self._state = None  # set at on_train_begin or by set_state
        self._persisted = None  # last state written to state_path
        self._pending = None  # (current, previous) read from state_path, chosen at the first epoch
        self._best_weights = None
        self._best_from_file = None  # attrs of best_weights_path when its weights were loaded

    # -- parameters and state ---------------------------------------------------------------
    def get_config(self):
        return {"initial_lr": self.initial_lr, "factor": self.factor, "stage_epochs": self.stage_epochs,
                "patience": self.patience, "min_lr": self.min_lr, "monitor": self.monitor,
                "mode": self.mode, "min_delta": self.min_delta, "reset_optimizer": self.reset_optimizer}

    def _fresh_state(self, initial_lr):
        return {"initial_lr": float(initial_lr), "stage": 0, "epochs_in_stage": 0, "wait": 0,
                "best": None, "best_epoch": None, "epoch": 0, "finished": False, "changes": []}

    def get_state(self) -> dict:
        """JSON-able schedule state (no weights): ``initial_lr``, ``stage``, ``epochs_in_stage``,
        ``wait``, ``best``, ``best_epoch``, ``epoch`` (epochs completed = next epoch index),
        ``finished``, ``changes`` (one entry per rate change) and ``params``."""
        if self._state is None:
            raise RuntimeError("StagedLearningRate.get_state: no state yet (training has not begun)")
        st = copy.deepcopy(self._state)
        st["params"] = self.get_config()
        return st

    def set_state(self, state: dict, best_weights=None) -> None:
        """Continue from a :meth:`get_state` dict (e.g. after a restart).

        Args:
            state: the dict (``params.monitor`` and ``params.mode`` must match this callback).
            best_weights: the best weights (``model.get_weights()`` list); default: read from
                ``best_weights_path`` when training begins, if that file exists.
        """
        st = copy.deepcopy(dict(state))
        params = st.pop("params", {}) or {}
        for key in ("monitor", "mode"):
            if key in params and params[key] != getattr(self, key):
                raise ValueError(f"StagedLearningRate.set_state: state was saved with {key}="
                                 f"{params[key]!r}, this callback has {key}={getattr(self, key)!r}")
        for key in ("factor", "stage_epochs", "patience", "min_lr", "min_delta", "reset_optimizer"):
            if key in params and params[key] != getattr(self, key):
                logger.warning("StagedLearningRate.set_state: state was saved with %s=%r; continuing "
                               "with %s=%r", key, params[key], key, getattr(self, key))
        missing = [k for k in self._fresh_state(1.0) if k not in st]
        if missing:
            raise ValueError(f"StagedLearningRate.set_state: state lacks {missing}")
        self._state = st
        self._persisted = copy.deepcopy(st)
        self._pending = None
        self._best_weights = None if best_weights is None else [np.asarray(w) for w in best_weights]
        self._best_from_file = None

    def reset(self) -> None:
        """Forget the state and best weights (a new run); files are left alone."""
        self._state = self._persisted = self._pending = None
        self._best_weights = self._best_from_file = None

    @property
    def learning_rate(self) -> float:
        """The rate of the current stage."""
        if self._state is None:
            raise RuntimeError("StagedLearningRate: no state yet")
        return self._lr_of_stage(self._state["stage"])

    def _lr_of_stage(self, stage):
        return self._state["initial_lr"] / self.factor ** stage

    @property
    def best(self):
        return None if self._state is None else self._state["best"]

    @property
    def best_epoch(self):
        return None if self._state is None else self._state["best_epoch"]

    @property
    def finished(self) -> bool:
        return bool(self._state and self._state["finished"])

    @property
    def best_weights(self):
        """The best weights (list of arrays) or None."""
        return self._best_weights

    def _improved(self, value) -> bool:
        if value is None or not math.isfinite(value):
            return False
        best = self._state["best"]
        if best is None:
            return True
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    # -- files ------------------------------------------------------------------------------
    def _write_state_file(self):
        if self.state_path is None:
            return
        doc = {"format": STATE_FORMAT, "params": self.get_config(), "state": self._state,
               "previous": self._persisted}
        _atomic_write_text(self.state_path, json.dumps(doc, indent=1, sort_keys=True))
        self._persisted = copy.deepcopy(self._state)

    def _write_best_file(self):
        import h5py

        path = self.best_weights_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = durable.temp_path(path)
        try:
            with durable.writing(path, "best weights"):
                _save_model_weights(self.model, tmp)
                with h5py.File(tmp, "a") as f:
                    f.attrs["ku_monitor"] = self.monitor
                    f.attrs["ku_best_value"] = float(self._state["best"])
                    f.attrs["ku_best_epoch"] = int(self._state["best_epoch"])
                durable.fsync_file(tmp, "best weights")  # on disk before it replaces anything
                if path.exists():
                    # keep the previous best: if this process dies before the epoch's checkpoint, the
                    # resumed run re-runs the epoch and needs the best weights *before* it
                    os.replace(path, self._previous_best_path())
                os.replace(tmp, path)
            durable.fsync_dir(path.parent)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _previous_best_path(self) -> Path:
        """``best.weights.h5`` -> ``best.previous.weights.h5`` (the best weights before the last
        improvement)."""
        path = self.best_weights_path
        return path.with_name(path.name[:-len(".weights.h5")] + ".previous.weights.h5")

    def _load_best_file(self, path=None):
        """Read the best weights from best_weights_path (or ``path``) into memory (model left
        unchanged)."""
        path = self.best_weights_path if path is None else Path(path)
        attrs = _read_best_attrs(path)
        if attrs is None or attrs["monitor"] != self.monitor:
            logger.warning("%s: not written by a StagedLearningRate monitoring %r; ignored", path, self.monitor)
            return
        current = self.model.get_weights()
        _load_model_weights(self.model, path)
        self._best_weights = self.model.get_weights()
        self.model.set_weights(current)
        self._best_from_file = attrs
        logger.info("loaded best weights (epoch %d, %s=%.6g) from %s", attrs["best_epoch"], self.monitor,
                    attrs["best"], path)

    def _reconcile_best_file(self):
        a = self._best_from_file
        st = self._state
        prev_path = self._previous_best_path() if self.best_weights_path is not None else None
        if a is None or (a["best_epoch"], a["best"]) != (st["best_epoch"], st["best"]):
            # A kill after an improvement was written but before that epoch's checkpoint leaves the
            # best file one epoch ahead of the resumed state; the previous best file then holds
            # the state's best (a resumed run must equal an uninterrupted one).
            p = _read_best_attrs(prev_path) if prev_path is not None and prev_path.exists() else None
            if (p is not None and p["monitor"] == self.monitor and st["best"] is not None
                    and (p["best_epoch"], p["best"]) == (st["best_epoch"], st["best"])):
                logger.info("%s is ahead of the checkpoint (epoch %s); using %s (epoch %d)",
                            self.best_weights_path, None if a is None else a["best_epoch"], prev_path,
                            p["best_epoch"])
                self._load_best_file(prev_path)
                return
        if a is None:
            return
        if (a["best_epoch"], a["best"]) != (st["best_epoch"], st["best"]):
            logger.warning("%s holds the best weights of epoch %d (%s=%.6g) but the schedule state says "
                           "epoch %s (%s); using the file", self.best_weights_path, a["best_epoch"],
                           self.monitor, a["best"], st["best_epoch"], st["best"])
            st["best"], st["best_epoch"] = a["best"], a["best_epoch"]

    # -- optimizer --------------------------------------------------------------------------
    def _set_lr(self, lr):
        self.model.optimizer.learning_rate = float(lr)

    def _reset_optimizer_state(self):
        """Give every optimizer variable except the rate the value of a newly built optimizer."""
        opt = self.model.optimizer
        if not opt.built:
            return
        fresh = opt.__class__.from_config(opt.get_config())
        fresh.build(self.model.trainable_variables)
        old, new = list(opt.variables), list(fresh.variables)
        if len(old) != len(new) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(old, new)):
            raise RuntimeError(f"StagedLearningRate: cannot reset the state of {type(opt).__name__}: "
                               "its variables do not match a fresh instance")
        for a, b in zip(old, new):
            if a.name != "learning_rate":
                a.assign(b.value)

    # -- Keras hooks ------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self.model.optimizer is None:
            raise ValueError("StagedLearningRate: compile the model before training")
        if self._state is None:
            saved = None
            if self.state_path is not None and self.state_path.exists():
                with open(self.state_path, encoding="utf-8") as f:
                    saved = json.load(f)
                if saved.get("format") != STATE_FORMAT:
                    raise ValueError(f"{self.state_path}: not a ku schedule state file")
            if saved is not None:
                self.set_state({**saved["state"], "params": saved.get("params", {})})
                prev = saved.get("previous")
                self._pending = (self._state, None if prev is None else copy.deepcopy(prev))
                self._persisted = copy.deepcopy(self._state)
                logger.info("resuming the learning-rate schedule from %s (epoch %d, stage %d)",
                            self.state_path, self._state["epoch"], self._state["stage"])
            else:
                lr0 = self.initial_lr if self.initial_lr is not None else _get_lr(self.model.optimizer)
                self._state = self._fresh_state(lr0)
                self._persisted = copy.deepcopy(self._state)
        if (self._best_weights is None and (self._state["best"] is not None or self._state["epoch"] > 0)
                and self.best_weights_path is not None
                and (self.best_weights_path.exists() or self._previous_best_path().exists())):
            if self.best_weights_path.exists():
                self._load_best_file()
            if self._pending is None:
                self._reconcile_best_file()
        if self._state["finished"]:
            logger.warning("StagedLearningRate: the schedule already finished at epoch %d; stopping",
                           self._state["epoch"])
            self.model.stop_training = True
        self._get_lr_checked()
        self._set_lr(self.learning_rate)

    def _get_lr_checked(self):
        _get_lr(self.model.optimizer)  # raises for LearningRateSchedule optimizers

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending is not None:
            current, previous = self._pending
            self._pending = None
            if current["epoch"] != epoch and previous is not None and previous["epoch"] == epoch:
                logger.warning("StagedLearningRate: the checkpoint is one epoch behind the saved "
                               "schedule state; using the schedule state of epoch %d", epoch)
                self._state = copy.deepcopy(previous)
                self._persisted = copy.deepcopy(previous)
            self._reconcile_best_file()
        if self._state["epoch"] != epoch:
            logger.warning("StagedLearningRate: schedule state is at epoch %d but training runs epoch %d",
                           self._state["epoch"], epoch)
        if self._state["finished"]:
            self.model.stop_training = True
        self._set_lr(self.learning_rate)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        st = self._state
        if st["finished"]:  # Keras runs one epoch even when stopped in on_train_begin
            self.model.stop_training = True
            return
        if self.monitor not in logs:
            hint = (" Put ku.training.ValidationCorrelation before StagedLearningRate in the callback list."
                    if self.monitor.endswith(("srcc", "plcc", "mean_mse")) else
                    " Pass validation_data to fit().")
            raise KeyError(f"StagedLearningRate: monitor {self.monitor!r} is not in the epoch logs "
                           f"(available: {sorted(logs)}).{hint}")
        value = float(logs[self.monitor])
        lr_used = self.learning_rate
        logs["learning_rate"] = lr_used
        if self._improved(value):
            st["best"], st["best_epoch"], st["wait"] = value, int(epoch), 0
            self._best_weights = self.model.get_weights()
            self._best_from_file = None
            if self.best_weights_path is not None:
                self._write_best_file()
        else:
            st["wait"] += 1
        st["epochs_in_stage"] += 1
        st["epoch"] = int(epoch) + 1
        reason = None
        if st["wait"] >= self.patience:
            reason = "patience"
        elif st["epochs_in_stage"] >= self.stage_epochs:
            reason = "stage_epochs"
        if reason is not None:
            self._restore_best()
            next_lr = self._lr_of_stage(st["stage"] + 1)
            stop = next_lr < self.min_lr * (1 - 1e-6)
            st["changes"].append({"epoch": int(epoch), "reason": reason, "from_lr": lr_used,
                                  "to_lr": None if stop else next_lr, "best_epoch": st["best_epoch"],
                                  "best": st["best"]})
            if stop:
                st["finished"] = True
                self.model.stop_training = True
                msg = (f"Epoch {epoch + 1}: learning-rate schedule finished ({reason}); next rate "
                       f"{next_lr:.3g} < min_lr {self.min_lr:.3g}; best {self.monitor}={st['best']} "
                       f"at epoch {None if st['best_epoch'] is None else st['best_epoch'] + 1}")
            else:
                st["stage"] += 1
                st["epochs_in_stage"] = 0
                st["wait"] = 0
                self._set_lr(next_lr)
                if self.reset_optimizer:
                    self._reset_optimizer_state()
                msg = (f"Epoch {epoch + 1}: {reason}: best weights (epoch "
                       f"{None if st['best_epoch'] is None else st['best_epoch'] + 1}) reloaded, "
                       f"learning rate {lr_used:.3g} -> {next_lr:.3g}")
            logger.info(msg)
            if self.verbose:
                print("\n" + msg, flush=True)
        self._write_state_file()

    def _restore_best(self):
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        elif self._state["best"] is not None:
            logger.warning("StagedLearningRate: best weights (epoch %s) are not available; keeping the "
                           "current weights", self._state["best_epoch"])

    def on_train_end(self, logs=None):
        if self.restore_best_on_end:
            self._restore_best()


def paper_schedule(**overrides) -> StagedLearningRate:
    """Hosu et al. 2019 §3.3: 1e-4 / 10 per stage down to 1e-6, stages of at most 20 epochs, patience
    5 on ``val_loss`` (min), best weights reloaded at each change."""
    params = dict(initial_lr=1e-4, factor=10.0, stage_epochs=20, patience=5, min_lr=1e-6,
                  monitor="val_loss", mode="min")
    params.update(overrides)
    return StagedLearningRate(**params)


def released_schedule(kind: str = "narrow", **overrides) -> StagedLearningRate:
    """The settings of the released notebooks (``docs/released_code.md`` §7), same parameters as
    :func:`paper_schedule`:

    * ``"narrow"`` / ``"narrow_aug"``: rates 1e-3, 1e-4, 1e-5 (``initial_lr=1e-3, min_lr=1e-5``),
      monitor ``val_loss`` (min);
    * ``"wide"``: rates 1e-4, 1e-5, 1e-6, monitor ``val_plcc`` (max) -- computed here on the whole
      validation set by :class:`ValidationCorrelation` (the released code averaged per-batch PLCCs).

    Each rate runs at most 20 epochs with early stop after 5 epochs without improvement, then the
    best weights are reloaded. The released loop re-created Adam each stage; pass
    ``reset_optimizer=True`` to do the same.
    """
    kinds = {
        "narrow": dict(initial_lr=1e-3, min_lr=1e-5, monitor="val_loss", mode="min"),
        "narrow_aug": dict(initial_lr=1e-3, min_lr=1e-5, monitor="val_loss", mode="min"),
        "wide": dict(initial_lr=1e-4, min_lr=1e-6, monitor="val_plcc", mode="max"),
    }
    if kind not in kinds:
        raise ValueError(f"released_schedule: kind must be one of {sorted(kinds)}, got {kind!r}")
    params = dict(factor=10.0, stage_epochs=20, patience=5, **kinds[kind])
    params.update(overrides)
    return StagedLearningRate(**params)


# ---------------------------------------------------------------------------------------------
# validation correlations

def _is_indexable_dataset(data) -> bool:
    """A PyDataset / Sequence of batches (not an array, a tensor or a tuple of arrays)."""
    if isinstance(data, keras.utils.PyDataset):
        return True
    if isinstance(data, (tuple, list, dict, np.ndarray)) or hasattr(data, "shape"):
        return False
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _split_batch(batch):
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1]
    raise ValueError("ValidationCorrelation: validation batches must be (x, y) or (x, y, sample_weight); "
                     f"got {type(batch).__name__}")


def _multi_worker_model(model) -> bool:
    """The model lives in a multi-worker MultiWorkerMirroredStrategy (see ku.distribute)."""
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None:
        return False
    from ku.distribute import is_multi_worker

    return is_multi_worker(strategy)


def _numpy(a):
    return np.asarray(keras.ops.convert_to_numpy(a))


class ValidationCorrelation(keras.callbacks.Callback):
    """SRCC, PLCC and MSE of the mean on the whole validation set, every epoch (Hosu et al. 2019 §4).

    At each epoch end the model predicts the complete validation set, and
    ``logs[prefix + "srcc"]``, ``logs[prefix + "plcc"]`` and ``logs[prefix + "mean_mse"]`` are set
    (``val_srcc``, ``val_plcc``, ``val_mean_mse``). The correlations are those of the full set,
    not means of per-batch values. Outputs and targets of shape ``(N, K)`` (distributions over the
    scores ``1..K``) are converted to means ``sum_k k p_k`` first (:func:`ku.evaluation.mean_scores`).

    Place this callback *before* the callbacks that read these keys (Keras calls callbacks in list
    order with a shared ``logs`` dict): :class:`StagedLearningRate`, ``ModelCheckpoint``,
    ``CSVLogger``. ``History`` and the progress bar are appended by Keras and see them anyway.

    Args:
        validation_data: ``(x, y)`` arrays, a ``keras.utils.PyDataset`` / ``Sequence`` yielding
            ``(x, y[, w])`` batches (e.g. :class:`ku.data.generators.FeatureSequence` with a fixed
            augmentation), or an iterable of such batches (``tf.data.Dataset``; finite).
        batch_size: batch size for array inputs.
        prefix: prefix of the log keys.
        scores: bin values for distributions (default ``1..K``).
    """

    def __init__(self, validation_data, batch_size: int = 128, prefix: str = "val_", scores=None):
        super().__init__()
        if validation_data is None:
            raise ValueError("ValidationCorrelation: validation_data is None")
        self.validation_data = validation_data
        self.batch_size = int(batch_size)
        self.prefix = str(prefix)
        self.scores = scores

    def predict(self):
        """``(y_true, y_pred)`` on the whole validation set, as numpy arrays."""
        data = self.validation_data
        if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(data[0], keras.utils.PyDataset):
            x, y = data[0], data[1]
            if _multi_worker_model(self.model):
                return _numpy(y), np.concatenate([_numpy(self.model(x[i:i + self.batch_size], training=False))
                                                  for i in range(0, len(x), self.batch_size)])
            return _numpy(y), _numpy(self.model.predict(x, batch_size=self.batch_size, verbose=0))
        ys, ps = [], []
        if _is_indexable_dataset(data):
            n = len(data)
            if n is None:
                raise ValueError("ValidationCorrelation: the validation dataset has no length")
            batches = (data[i] for i in range(n))
        else:
            batches = iter(data)
        for batch in batches:
            x, y = _split_batch(batch)
            ys.append(_numpy(y))
            if _multi_worker_model(self.model):  # predict* would gather every worker's copy
                ps.append(_numpy(self.model(x, training=False)))
            else:
                ps.append(_numpy(self.model.predict_on_batch(x)))
        if not ys:
            raise ValueError("ValidationCorrelation: the validation data gave no batches")
        return np.concatenate(ys, axis=0), np.concatenate(ps, axis=0)

    def compute(self) -> dict:
        """The log entries for the current model."""
        from ku import metrics

        y, p = self.predict()
        keys = [self.prefix + k for k in ("srcc", "plcc", "mean_mse")]
        try:
            t, q = mean_scores(y, self.scores), mean_scores(p, self.scores)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # constant predictions -> NaN
                vals = (metrics.srcc(t, q), metrics.plcc(t, q), metrics.mse(t, q))
        except ValueError as e:  # e.g. non-finite predictions: report NaN, keep training
            logger.warning("ValidationCorrelation: %s", e)
            vals = (float("nan"),) * 3
        return dict(zip(keys, (float(v) for v in vals)))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(self.compute())


# ---------------------------------------------------------------------------------------------
# fit helper

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


def _read_history(path: Path):
    import pandas as pd

    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    df = pd.read_csv(path, on_bad_lines="warn")  # a line cut by a kill must not lose the history
    if "epoch" in df.columns:  # an epoch re-run after a crash appears twice: keep the last
        df = df.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    return df


class HistoryLogger(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` (appending to ``history.csv``) that keeps one row per epoch
    across resumes.

    A run killed after an epoch's history row but before its checkpoint re-runs that epoch when
    it resumes; plain ``CSVLogger(append=True)`` then writes the epoch twice. Before its first
    row, this logger drops every row of that epoch and later ones (and a last line cut short by
    a kill), rewriting the file durably (:func:`ku.data.durable.atomic_write`); rows are then
    appended as usual.

    Args:
        filename: the CSV file (``run_dir/history.csv``).
        separator: field separator.
    """

    def __init__(self, filename, separator: str = ","):
        super().__init__(filename, separator=separator, append=True)
        self._checked = False

    def get_config(self):
        return {"filename": self.filename, "separator": self.sep}

    def on_train_begin(self, logs=None):
        self._checked = False
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if not self._checked:
            self._checked = True
            self._drop_rows_from(int(epoch))
        super().on_epoch_end(epoch, logs)

    def _drop_rows_from(self, epoch: int) -> None:
        """Remove the rows of epochs >= ``epoch`` (and a cut last line) from the file."""
        path = Path(self.filename)
        if not path.exists() or path.stat().st_size == 0:
            return
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        kept = lines[:1]
        for line in lines[1:]:
            if not line.endswith("\n"):
                continue  # cut by a kill
            head = line.split(self.sep, 1)[0].strip()
            if head.lstrip("-").isdigit() and int(head) >= epoch:
                continue
            kept.append(line)
        new = "".join(kept)
        if kept and not new.endswith("\n"):  # a header cut by a kill: start again
            new, self.append_header = "", True
        if new == text:
            return
        dropped = len(lines) - len(kept)
        logger.info("%s: dropping %d row(s) of epoch %d and later (re-run after a resume)", path, dropped, epoch)
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        durable.atomic_write(path, new, what="training history")
        self.csv_file = open(path, "a", encoding="utf-8", newline="")
        self.writer = None


# ---------------------------------------------------------------------------------------------
# crash-safe checkpoint (docs/bad_input.md)

_BACKUP_EPOCH_ATTR = "ku_epoch"
_RNG_GROUP = "ku_rng_states"


def _rng_variables(model) -> list:
    """The random-generator state variables of ``model`` (e.g. each Dropout layer's
    ``SeedGenerator``), in the model's deterministic variable order. Keras' weight files do not
    hold them, so without them a resumed run would draw other dropout masks."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def backup_epoch(backup_dir) -> int:
    """Epochs completed according to the checkpoint in ``backup_dir`` (0 if there is none): the
    ``ku_epoch`` attribute of ``latest.weights.h5`` written by :class:`ResumableBackup`, else
    Keras' ``training_metadata.json``."""
    import h5py

    backup_dir = Path(backup_dir)
    weights = backup_dir / "latest.weights.h5"
    if weights.exists():
        with h5py.File(weights, "r") as f:
            if _BACKUP_EPOCH_ATTR in f.attrs:
                return int(f.attrs[_BACKUP_EPOCH_ATTR])
    meta = backup_dir / "training_metadata.json"
    if meta.exists():
        with open(meta, encoding="utf-8") as f:
            return int(json.load(f).get("epoch", 0))
    return 0


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` (one checkpoint per epoch) made crash safe.

    Keras overwrites ``latest.weights.h5`` in place and then writes the epoch to a second file, so
    a SIGKILL while saving leaves a corrupt checkpoint (the run cannot resume) or weights of epoch
    ``e + 1`` labelled as epoch ``e`` (the resumed run silently trains epoch ``e + 1`` twice).
    Here the checkpoint is one file, written to a temporary name and renamed into place (atomic):
    model weights and optimizer state (Keras' format), the epoch (HDF5 attribute ``ku_epoch``)
    and the states of the model's random generators (group ``ku_rng_states``: Dropout masks after
    a resume are those of the uninterrupted run). ``training_metadata.json`` is still written
    (atomically) for Keras and other readers; the epoch in the weights file wins.

    Args:
        backup_dir: folder of the checkpoint (``run_dir/backup`` in :func:`train`).
        fsync: ``os.fsync`` the checkpoint before the rename (survives power loss, not only kills).
    """

    def __init__(self, backup_dir, fsync: bool = True):
        super().__init__(backup_dir=str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.fsync = bool(fsync)

    def _save_model(self):
        import h5py

        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = Path(self._weights_path)
        with durable.atomic_path(path, "checkpoint", fsync=self.fsync) as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
            with h5py.File(tmp, "a") as f:
                f.attrs[_BACKUP_EPOCH_ATTR] = int(self._current_epoch)
                group = f.create_group(_RNG_GROUP)
                for i, v in enumerate(_rng_variables(self.model)):
                    ds = group.create_dataset(f"{i:04d}", data=np.asarray(keras.ops.convert_to_numpy(v)))
                    ds.attrs["path"] = v.path
        _atomic_write_text(Path(self._training_metadata_path),
                           json.dumps({"epoch": int(self._current_epoch), "batch": int(self._last_batch_seen)}),
                           what="checkpoint metadata")

    def _load_model(self):
        import h5py

        path = Path(self._weights_path)
        if not path.exists():
            return super()._load_model()
        super()._load_model()  # weights + optimizer state (and Keras' epoch from the json file)
        with h5py.File(path, "r") as f:
            epoch = int(f.attrs[_BACKUP_EPOCH_ATTR]) if _BACKUP_EPOCH_ATTR in f.attrs else None
            states = [f[_RNG_GROUP][k][()] for k in sorted(f[_RNG_GROUP])] if _RNG_GROUP in f else None
        if epoch is not None:
            self.model._initial_epoch = epoch
        if states is not None:
            variables = _rng_variables(self.model)
            if len(variables) != len(states) or any(tuple(v.shape) != s.shape for v, s in zip(variables, states)):
                logger.warning("%s: random-generator states do not match the model (%d saved, %d in the "
                               "model); dropout masks will differ from an uninterrupted run", path,
                               len(states), len(variables))
            else:
                for v, s in zip(variables, states):
                    v.assign(s)


def _clear_resume_epoch(model) -> None:
    """Forget the epoch that ResumableBackup (or Keras' BackupAndRestore) left set on ``model``;
    else a later plain ``model.fit()`` on the same object would start at that epoch."""
    if hasattr(model, "_initial_epoch"):
        model._initial_epoch = None


def _end_fit(model, csv_logger=None) -> None:
    """After ``fit``, also an interrupted one: close ``csv_logger``'s file (an interrupted ``fit``
    never calls ``CSVLogger.on_train_end``) and clear the resume epoch."""
    f = getattr(csv_logger, "csv_file", None)
    if f is not None and not f.closed:
        f.close()
    _clear_resume_epoch(model)


def train(model, train_data, validation_data, *, run_dir, loss="mse", learning_rate=None,
          schedule=None, max_epochs: int = 60, resume: bool = True, verbose: int = 1, callbacks=(),
          metrics=None, batch_size: int | None = None, validation_batch_size: int | None = None,
          shuffle=None, optimizer=None, strategy=None, jit_compile="auto",
          **fit_kwargs) -> TrainingResult:
    """Compile with Adam and train with the schedule of Hosu et al. 2019 §3.3, resumably.

    Callbacks, in this order: :class:`ValidationCorrelation` (``val_srcc``, ``val_plcc``,
    ``val_mean_mse`` on the whole validation set), the :class:`StagedLearningRate` schedule (its
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
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from ku import distribute as _dist

    strategy = _dist.get_strategy(strategy)
    strategy = None if _dist.is_default(strategy) else strategy
    shared_run_dir, run_dir, _finish = _dist.worker_run_dir(run_dir, strategy, resume)
    backup_dir = run_dir / "backup"
    state_path = run_dir / "schedule_state.json"
    best_path = run_dir / "best.weights.h5"
    history_path = run_dir / "history.csv"

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
    if run_dir != shared_run_dir:  # a non-chief worker writes only into its temporary directory
        schedule.state_path, schedule.best_weights_path = state_path, best_path
    lr0 = schedule.initial_lr

    if not resume:
        schedule.reset()
        for p in (schedule.state_path, schedule.best_weights_path, history_path):
            if p.exists():
                logger.warning("train(resume=False): removing %s", p)
                p.unlink()
        if backup_dir.exists():
            logger.warning("train(resume=False): removing %s", backup_dir)
            shutil.rmtree(backup_dir)

    _dist.prepare_model(model, strategy)
    with _dist.scope(strategy):  # optimizer variables must be mirrored too
        if optimizer is None:
            optimizer = keras.optimizers.Adam(learning_rate=lr0)
        _dist.check_optimizer(optimizer, strategy)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile)
    _clear_resume_epoch(model)

    def result(epochs_run):
        st = schedule.get_state() if schedule._state is not None else read_schedule_state(schedule.state_path) or {}
        return TrainingResult(
            history=_read_history(history_path), monitor=schedule.monitor, best=st.get("best"),
            best_epoch=st.get("best_epoch"), finished=bool(st.get("finished", False)), epochs_run=epochs_run,
            schedule_changes=list(st.get("changes", [])), run_dir=run_dir,
            best_weights_path=schedule.best_weights_path if schedule.best_weights_path.exists() else None)

    saved = read_schedule_state(schedule.state_path) if resume else None
    if saved is not None and saved.get("finished") and schedule._state is None:
        logger.info("train: the schedule in %s already finished (epoch %d); loading the best weights",
                    run_dir, saved["epoch"])
        if schedule.best_weights_path.exists():
            _load_model_weights(model, schedule.best_weights_path)
        else:
            logger.warning("train: %s is missing; the model keeps its weights", schedule.best_weights_path)
        return _finish(result(0))

    initial_epoch = 0
    if resume and backup_dir.exists():
        initial_epoch = backup_epoch(backup_dir)  # the checkpoint's own epoch (ResumableBackup)
        logger.info("train: resuming %s at epoch %d", run_dir, initial_epoch)
        if initial_epoch and hasattr(train_data, "set_epoch") and getattr(train_data, "epoch", None) == 0:
            train_data.set_epoch(initial_epoch)

    if strategy is not None:
        _dist.all_workers_agree(strategy, initial_epoch, "the epoch to resume from")
        train_data = _dist.distribute_input(train_data, strategy)
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
    if strategy is not None:
        val_for_fit = _dist.distribute_input(val_for_fit, strategy)
    if not is_dataset and batch_size is None:
        batch_size = 128

    csv_logger = HistoryLogger(str(history_path))
    cbs = [*([_dist.SyncBatchStatistics(strategy)] if strategy is not None else []),
           ValidationCorrelation(validation_data, batch_size=validation_batch_size or batch_size or 128),
           schedule, *callbacks, csv_logger,
           ResumableBackup(backup_dir)]
    try:
        hist = model.fit(x, y, batch_size=None if is_dataset else batch_size, epochs=int(max_epochs),
                         validation_data=val_for_fit,
                         validation_batch_size=validation_batch_size if isinstance(val_for_fit, tuple) else None,
                         shuffle=shuffle, callbacks=cbs, verbose=verbose, **fit_kwargs)
    finally:
        _end_fit(model, csv_logger)
    epochs_run = len(hist.epoch) if hist is not None else 0
    return _finish(result(epochs_run))


# ---------------------------------------------------------------------------------------------
# whole images batched by aspect ratio (APM, semantic pre-training), distributed and resumable

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

    Files (with ``run_dir``): ``backup/`` (:class:`ResumableBackup`: model, optimizer, epoch,
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
    from ku import distribute as _dist
    from ku.data.aspect_batches import aspect_batches

    strategy = _dist.get_strategy(strategy)
    strategy = None if _dist.is_default(strategy) else strategy
    n_rep = _dist.num_replicas(strategy)
    _dist.per_replica_batch_size(batch_size, strategy)  # checks the global size

    write_dir, finish, initial_epoch = None, (lambda r: r), 0
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and _dist.is_chief(strategy):
            for p in (run_dir / "history.csv", run_dir / "backup"):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        _, write_dir, finish = _dist.worker_run_dir(run_dir, strategy, resume)
        if resume:
            initial_epoch = backup_epoch(write_dir / "backup")
            if initial_epoch:
                logger.info("fit_aspect_batches: resuming %s at epoch %d", run_dir, initial_epoch)
    if strategy is not None:
        _dist.all_workers_agree(strategy, initial_epoch, "the epoch to resume from")

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

    _dist.prepare_model(model, strategy)
    with _dist.scope(strategy):  # optimizer variables mirrored too
        opt = optimizer() if callable(optimizer) and not isinstance(optimizer, keras.optimizers.Optimizer) \
            else optimizer
        _dist.check_optimizer(opt, strategy)
        model.compile(optimizer=opt, loss=loss)
    _clear_resume_epoch(model)
    cbs = [*([_dist.SyncBatchStatistics(strategy)] if strategy is not None else []), *callbacks]
    csv_logger = None
    if write_dir is not None:
        csv_logger = HistoryLogger(str(write_dir / "history.csv"))
        cbs += [csv_logger, ResumableBackup(write_dir / "backup")]
    try:
        hist = model.fit(data, epochs=int(epochs), steps_per_epoch=plan.steps_per_epoch,
                         validation_data=val, verbose=verbose, callbacks=cbs, shuffle=False)
    finally:
        _end_fit(model, csv_logger)
        finish(None)  # a non-chief worker's temporary copy
    return hist
