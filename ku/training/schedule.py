"""The learning-rate schedule of Hosu et al. 2019 §3.3 as a resumable Keras callback.

Paper, §3.3: "The initial learning rate used in training is 10^-4, which is divided by 10 every 20
epochs, or when the loss does not decrease within 5 epochs, whichever comes first. The lowest
learning rate we used was 10^-6. At each change in learning rate the previous best model is
loaded." Presets: :func:`paper_schedule` and :func:`released_schedule` (``docs/released_code.md``
§7). The best weights live in a :class:`ku.training.best_weights.BestWeights` store; the schedule
decides when they change and when they are reloaded.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import keras

from ku.training.best_weights import BestWeights, read_best_attrs
from ku.training.files import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["StagedLearningRate", "paper_schedule", "released_schedule", "read_schedule_state", "STATE_FORMAT"]

STATE_FORMAT = "ku.staged_lr/1"
_MAX_MONITORS = ("srcc", "plcc", "acc", "auc", "corr", "precision", "recall")


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
    state and the ``BackupAndRestore`` checkpoint). The best weights are kept by a
    :class:`~ku.training.best_weights.BestWeights` store (:attr:`best_weights_store`); with
    ``best_weights_path`` it also writes them to that ``.weights.h5`` file (model weights only; the
    monitor, best value and epoch in its HDF5 attributes ``ku_monitor``, ``ku_best_value``,
    ``ku_best_epoch``), and the schedule reloads them from it on resume; the file wins when it
    disagrees with the state.

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
        self._store = BestWeights(best_weights_path, self.monitor)
        self.state_path = None if state_path is None else Path(state_path)
        self.verbose = int(verbose)
        self._state = None  # set at on_train_begin or by set_state
        self._persisted = None  # last state written to state_path
        self._pending = None  # (current, previous) read from state_path, chosen at the first epoch

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
        self._store.set(best_weights)

    def reset(self) -> None:
        """Forget the state and best weights (a new run); files are left alone."""
        self._state = self._persisted = self._pending = None
        self._store.clear()

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
        return self._store.weights

    @property
    def best_weights_store(self) -> BestWeights:
        """The :class:`~ku.training.best_weights.BestWeights` store holding them."""
        return self._store

    @property
    def best_weights_path(self):
        """The best weights' ``.weights.h5`` file (None: kept in memory only)."""
        return self._store.path

    @best_weights_path.setter
    def best_weights_path(self, path):
        self._store.path = None if path is None else Path(path)

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
        atomic_write_text(self.state_path, json.dumps(doc, indent=1, sort_keys=True))
        self._persisted = copy.deepcopy(self._state)

    def _reconcile_best_file(self):
        a = self._store.from_file
        st = self._state
        prev_path = self._store.previous_path if self.best_weights_path is not None else None
        if a is None or (a["best_epoch"], a["best"]) != (st["best_epoch"], st["best"]):
            # A kill after an improvement was written but before that epoch's checkpoint leaves the
            # best file one epoch ahead of the resumed state; the previous best file then holds
            # the state's best (a resumed run must equal an uninterrupted one).
            p = read_best_attrs(prev_path) if prev_path is not None and prev_path.exists() else None
            if (p is not None and p["monitor"] == self.monitor and st["best"] is not None
                    and (p["best_epoch"], p["best"]) == (st["best_epoch"], st["best"])):
                logger.info("%s is ahead of the checkpoint (epoch %s); using %s (epoch %d)",
                            self.best_weights_path, None if a is None else a["best_epoch"], prev_path,
                            p["best_epoch"])
                self._store.load(self.model, prev_path)
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
        if (self._store.weights is None and (self._state["best"] is not None or self._state["epoch"] > 0)
                and self._store.on_disk()):
            if self.best_weights_path.exists():
                self._store.load(self.model)
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
            self._store.keep(self.model, value, int(epoch))
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
        if self._store.restore(self.model):
            return
        if self._state["best"] is not None:
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
