"""File helpers of the training loops: safe file names, durable text files, model weights
without the optimizer state."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from ku.data import durable

__all__ = ["safe_name", "atomic_write_text", "save_model_weights", "load_model_weights"]


def safe_name(text: str) -> str:
    """A file-system safe version of ``text``: only ``[A-Za-z0-9._-]`` (others become ``_``).

    The released code built file names such as ``...o1[5,5,16928]_r1.h5``; brackets, colons and
    spaces break shells and some file systems.
    """
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")
    if not out:
        raise ValueError(f"safe_name: {text!r} has no usable characters")
    return out


def atomic_write_text(path: Path, text: str, what: str = "training state") -> None:
    """Write ``text`` durably (temporary name, fsync, rename; :mod:`ku.data.durable`); a failed
    write raises :class:`~ku.data.durable.DiskWriteError` naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.atomic_write(path, text, what=what)


def save_model_weights(model, path: Path) -> None:
    """Model weights only (no optimizer state) to a ``.weights.h5`` file."""
    try:
        from keras.src.saving import saving_lib

        saving_lib.save_weights_only(model, str(path), objects_to_skip=[model.optimizer]
                                     if getattr(model, "optimizer", None) is not None else None)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Keras versions
        model.save_weights(str(path), overwrite=True)


def load_model_weights(model, path: Path) -> None:
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
