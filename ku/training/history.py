"""The per-epoch history of a resumable run: ``history.csv`` with one row per epoch across
resumes (:class:`HistoryLogger`) and its reader (:func:`read_history`)."""
from __future__ import annotations

import logging
from pathlib import Path

import keras

from ku.data import durable

logger = logging.getLogger(__name__)

__all__ = ["HistoryLogger", "read_history"]


def read_history(path: Path):
    """The rows of a ``history.csv`` as a ``pandas.DataFrame`` (empty when there is none), one
    per epoch: an epoch re-run after a crash keeps its last row; a line cut by a kill is
    skipped with a warning."""
    import pandas as pd

    path = Path(path)
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
