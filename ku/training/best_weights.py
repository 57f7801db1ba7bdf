"""The best weights of a run, in memory and in a ``.weights.h5`` file (model selection of Hosu et
al. 2019 §3.3: "At each change in learning rate the previous best model is loaded").

:class:`BestWeights` owns ``best.weights.h5`` and ``best.previous.weights.h5``;
:class:`ku.training.schedule.StagedLearningRate` decides *when* weights are the best and asks the
store to keep, reload or restore them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ku.data import durable
from ku.training.files import load_model_weights, save_model_weights

logger = logging.getLogger(__name__)

__all__ = ["BestWeights", "read_best_attrs"]

#: HDF5 attributes of a best-weights file: the monitored key, its best value and epoch.
BEST_ATTRS = ("ku_monitor", "ku_best_value", "ku_best_epoch")


def read_best_attrs(path):
    """``{"monitor", "best", "best_epoch"}`` stored in a best-weights file, or None when the file
    lacks them (not written by :class:`BestWeights`)."""
    import h5py

    with h5py.File(path, "r") as f:
        if not all(k in f.attrs for k in BEST_ATTRS):
            return None
        mon = f.attrs["ku_monitor"]
        return {"monitor": mon.decode() if isinstance(mon, bytes) else str(mon),
                "best": float(f.attrs["ku_best_value"]), "best_epoch": int(f.attrs["ku_best_epoch"])}


class BestWeights:
    """Best weights of a model for one monitored value: a copy in memory and, with ``path``, a
    ``.weights.h5`` file (model weights only; the monitor, best value and epoch in its HDF5
    attributes ``ku_monitor``, ``ku_best_value``, ``ku_best_epoch``).

    Every :meth:`keep` writes the file atomically and first moves the file it replaces to
    :attr:`previous_path` (``best.weights.h5`` -> ``best.previous.weights.h5``): a process killed
    after an improvement but before that epoch's checkpoint re-runs the epoch when it resumes and
    then needs the best weights *before* it (docs/bad_input.md).

    Args:
        path: the ``.weights.h5`` file, or None (memory only).
        monitor: the monitored key (files written for another key are ignored when loading).
    """

    def __init__(self, path=None, monitor: str = "val_loss"):
        self.path = None if path is None else Path(path)
        self.monitor = str(monitor)
        self.weights = None  # list of arrays (model.get_weights()) or None
        self.from_file = None  # attrs of the file the weights were loaded from, else None

    @property
    def previous_path(self) -> Path:
        """``best.weights.h5`` -> ``best.previous.weights.h5`` (the best weights before the last
        improvement)."""
        return self.path.with_name(self.path.name[:-len(".weights.h5")] + ".previous.weights.h5")

    def clear(self) -> None:
        """Forget the weights in memory (files are left alone)."""
        self.weights = self.from_file = None

    def set(self, weights) -> None:
        """Take ``weights`` (a ``model.get_weights()`` list, or None) as the best."""
        import numpy as np

        self.weights = None if weights is None else [np.asarray(w) for w in weights]
        self.from_file = None

    def on_disk(self) -> bool:
        """A best-weights file (current or previous) exists."""
        return self.path is not None and (self.path.exists() or self.previous_path.exists())

    def keep(self, model, best: float, best_epoch: int) -> None:
        """The model's current weights are the new best (value ``best`` at ``best_epoch``)."""
        self.weights = model.get_weights()
        self.from_file = None
        if self.path is not None:
            self._write(model, best, best_epoch)

    def _write(self, model, best, best_epoch) -> None:
        import h5py

        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = durable.temp_path(path)
        try:
            with durable.writing(path, "best weights"):
                save_model_weights(model, tmp)
                with h5py.File(tmp, "a") as f:
                    f.attrs["ku_monitor"] = self.monitor
                    f.attrs["ku_best_value"] = float(best)
                    f.attrs["ku_best_epoch"] = int(best_epoch)
                durable.fsync_file(tmp, "best weights")  # on disk before it replaces anything
                if path.exists():
                    # keep the previous best: if this process dies before the epoch's checkpoint, the
                    # resumed run re-runs the epoch and needs the best weights *before* it
                    os.replace(path, self.previous_path)
                os.replace(tmp, path)
            durable.fsync_dir(path.parent)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load(self, model, path=None) -> None:
        """Read the best weights from :attr:`path` (or ``path``) into memory (the model's weights
        are left unchanged; the model is only used to read the file)."""
        path = self.path if path is None else Path(path)
        attrs = read_best_attrs(path)
        if attrs is None or attrs["monitor"] != self.monitor:
            logger.warning("%s: not written by a StagedLearningRate monitoring %r; ignored", path, self.monitor)
            return
        current = model.get_weights()
        load_model_weights(model, path)
        self.weights = model.get_weights()
        model.set_weights(current)
        self.from_file = attrs
        logger.info("loaded best weights (epoch %d, %s=%.6g) from %s", attrs["best_epoch"], self.monitor,
                    attrs["best"], path)

    def restore(self, model) -> bool:
        """Put the best weights into ``model``; False when there are none in memory."""
        if self.weights is None:
            return False
        model.set_weights(self.weights)
        return True
