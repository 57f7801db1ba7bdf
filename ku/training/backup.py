"""Crash-safe per-epoch checkpoint of a run (``run_dir/backup``, docs/bad_input.md):
:class:`ResumableBackup` and :func:`backup_epoch`."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np

from ku.data import durable
from ku.training.files import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["ResumableBackup", "backup_epoch"]

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
        atomic_write_text(Path(self._training_metadata_path),
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
