"""Batches of stored features for training heads: a Keras ``PyDataset`` and a ``tf.data`` pipeline.

Hosu et al. 2019 §3.1: "During training AQA on features, a single random augmentation per epoch is
drawn for each image from among the 8 stored (4 crops, 2 flips). At test time, the final score for
an image is calculated by averaging the predictions over all stored augmentations."

* Training (``augmentation="random"``): each epoch draws one augmentation per image, uniformly and
  independently, and a new item order (``shuffle``). All randomness comes from a local
  ``np.random.default_rng([seed, epoch])`` (the seed and the epoch number as two words of entropy,
  so different seeds never share epoch streams, unlike ``seed + epoch``); the global numpy RNG is
  never touched (the released code re-seeded it every batch, research/ku_anchor.md §2.5).
  An epoch is reproducible from ``(seed, epoch)`` alone, also in worker processes.
* Validation (``augmentation=<int>``, no shuffle): the same data every epoch.
* Test: :func:`iter_all_augmentations` yields (B, A, *feature_shape); average the predictions
  over axis 1. (``augmentation="all"`` in :class:`FeatureSequence` flattens that to (B*A, ...).)

Memory stays flat: only the rows of the current batch are read (sorted HDF5 selections); the file
is opened lazily in each process and never pickled.

Epoch numbering under ``model.fit``: Keras reads a few batches to build its input signature and
then calls ``on_epoch_end`` once before training, so Keras epoch ``k`` of a fresh sequence uses
the draws of epoch ``epoch + k + 1``. This is deterministic, and resuming is exact: a sequence
built with ``epoch=initial_epoch`` and ``fit(..., initial_epoch=initial_epoch)`` continues with the
same draws as the uninterrupted run. The plan only changes in ``on_epoch_end`` (never in
``on_epoch_begin``, which Keras calls after its worker threads/processes have started).

Note: ``model.fit(..., shuffle=True)`` (Keras' default) additionally permutes the *batch* order of
a ``PyDataset`` with Python's global ``random``; pass ``shuffle=False`` to ``fit`` for runs that
are reproducible end to end (this sequence already shuffles items itself).
"""
from __future__ import annotations

import logging

import keras
import numpy as np

from ku.data.store import FeatureStore

logger = logging.getLogger(__name__)

__all__ = ["FeatureSequence", "feature_dataset", "iter_all_augmentations", "epoch_plan"]


def epoch_plan(n_items: int, n_augmentations: int, seed: int, epoch: int, shuffle: bool, augmentation):
    """Item order and per-item augmentation index for one epoch.

    Returns:
        ``(order, augs)``: ``order`` (n,) positions into the ids list; ``augs`` (n,) augmentation
        index of each item (indexed by item, not by position in ``order``), or None for "all".
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n_items) if shuffle else np.arange(n_items)
    if isinstance(augmentation, str):
        if augmentation == "random":
            augs = rng.integers(0, n_augmentations, size=n_items)
        elif augmentation == "all":
            augs = None
        else:
            raise ValueError(f"augmentation must be 'random', 'all' or an int, got {augmentation!r}")
    else:
        a = int(augmentation)
        if not 0 <= a < n_augmentations:
            raise ValueError(f"augmentation index {a} out of range [0, {n_augmentations})")
        augs = np.full(n_items, a, dtype=np.int64)
    return order, augs


def _resolve_ids_targets(ids, targets, id_column="image_id"):
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(ids, pd.DataFrame):
        df = ids
        if id_column not in df.columns:
            raise ValueError(f"ids table has no column {id_column!r} (columns: {list(df.columns)})")
        if isinstance(targets, str) or (isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets)):
            cols = [targets] if isinstance(targets, str) else list(targets)
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise ValueError(f"ids table has no target column(s) {missing}")
            targets = df[cols[0]].to_numpy() if isinstance(targets, str) else df[cols].to_numpy()
        ids = df[id_column].tolist()
    ids = [str(i) for i in ids]
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim not in (1, 2) or targets.shape[0] != len(ids):
            raise ValueError(f"targets must have shape (N,) or (N, K) with N = {len(ids)} ids, got {targets.shape}")
    return ids, targets


class FeatureSequence(keras.utils.PyDataset):
    """Keras ``PyDataset`` over a :class:`~ku.data.store.FeatureStore` (Hosu et al. 2019 §3.1).

    Args:
        store_path: the feature store (``.h5``).
        ids: image ids (list) or an ids table (DataFrame; its ``image_id`` column).
        targets: (N,) or (N, K) array aligned with ``ids``; with an ids table also a column name
            or list of names (e.g. ``"mos"``); None -> batches hold only features.
        batch_size: items per batch (128 in Hosu et al. §3.3).
        augmentation: ``"random"`` (one uniform draw per item per epoch; training), an int (that
            stored augmentation, e.g. 0 for validation), or ``"all"`` (every augmentation:
            x (B*A, ...), targets repeated A times, item-major).
        shuffle: new item order every epoch (default: True for ``"random"``, else False).
        seed: seed of the local RNG; epoch ``e`` uses ``np.random.default_rng([seed, e])``.
        epoch: epoch to start at (for resuming a training run reproducibly).
        drop_remainder: drop the last partial batch.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` (``PyDataset``).
    Batches: ``(x, y)`` with x float32 (B, *feature_shape), y float32 (B,) or (B, K); or ``x``.
    Requesting ids that are missing from the store or whose rows are incomplete raises a
    :class:`~ku.data.store.FeatureStoreError` naming the file at construction.
    """

    def __init__(self, store_path, ids, targets=None, batch_size: int = 128, augmentation="random",
                 shuffle=None, seed: int = 0, epoch: int = 0, drop_remainder: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.store_path = str(store_path)
        self.ids, self.targets = _resolve_ids_targets(ids, targets)
        if not self.ids:
            raise ValueError("FeatureSequence: no ids")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.augmentation = augmentation
        self.shuffle = (augmentation == "random") if shuffle is None else bool(shuffle)
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        self._store = None
        with FeatureStore(self.store_path) as store:
            self.rows = store.index_of(self.ids)
            store.check_complete(self.rows)
            self.n_augmentations = store.n_augmentations
            self.feature_shape = store.feature_shape
            self.augmentation_names = store.augmentations
        if isinstance(augmentation, str) and augmentation == "random" and self.n_augmentations == 1:
            logger.info("%s holds one augmentation; 'random' always picks it", self.store_path)
        self.set_epoch(int(epoch))  # also validates `augmentation`

    # -- epochs -----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch`` (order and augmentation draws are a function of ``(seed, epoch)``)."""
        self._epoch = int(epoch)
        self._order, self._augs = epoch_plan(len(self.ids), self.n_augmentations, self.seed, self._epoch,
                                             self.shuffle, self.augmentation)

    def augmentations_for_epoch(self, epoch: int | None = None) -> np.ndarray | None:
        """(N,) augmentation index per item (in ``ids`` order) drawn for ``epoch`` (default: current)."""
        if epoch is None or int(epoch) == self._epoch:
            return None if self._augs is None else self._augs.copy()
        return epoch_plan(len(self.ids), self.n_augmentations, self.seed, int(epoch), self.shuffle,
                          self.augmentation)[1]

    def order_for_epoch(self, epoch: int | None = None) -> np.ndarray:
        """(N,) item positions in batch order for ``epoch`` (default: current)."""
        if epoch is None or int(epoch) == self._epoch:
            return self._order.copy()
        return epoch_plan(len(self.ids), self.n_augmentations, self.seed, int(epoch), self.shuffle,
                          self.augmentation)[0]

    def on_epoch_end(self):
        self.set_epoch(self._epoch + 1)

    # -- batches ----------------------------------------------------------------------------
    @property
    def num_batches(self):
        n = len(self.ids)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def __len__(self):
        return self.num_batches

    def _get_store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore(self.store_path)
        return self._store

    def batch_positions(self, index: int) -> np.ndarray:
        """Positions (into ``ids``) of the items of batch ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index):
        pos = self.batch_positions(int(index))
        rows = self.rows[pos]
        store = self._get_store()
        if self._augs is None:  # "all"
            x = store.read(rows, "all", check_complete=False)
            x = x.reshape((-1,) + self.feature_shape)
            y = None if self.targets is None else np.repeat(self.targets[pos], self.n_augmentations, axis=0)
        else:
            x = store.read(rows, self._augs[pos], check_complete=False)
            y = None if self.targets is None else self.targets[pos]
        return x if y is None else (x, y)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_store"] = None  # never pickle an open HDF5 handle; reopened lazily per process
        return state

    def close(self):
        if self._store is not None:
            self._store.close()
            self._store = None


def iter_all_augmentations(store_path, ids, batch_size: int = 128):
    """Yield features of all stored augmentations, (B, A, *feature_shape) float32, in ``ids`` order.

    Test-time use (Hosu et al. §3.1): predict on ``x.reshape(-1, *feature_shape)``, reshape the
    predictions to (B, A, ...) and average over axis 1.
    """
    ids, _ = _resolve_ids_targets(ids, None)
    with FeatureStore(store_path) as store:
        rows = store.index_of(ids)
        store.check_complete(rows)
        for i in range(0, len(rows), int(batch_size)):
            yield store.read(rows[i : i + int(batch_size)], "all", check_complete=False)


def feature_dataset(store_path, ids, targets=None, batch_size: int = 128, augmentation="random",
                    shuffle=None, seed: int = 0, epoch: int = 0, drop_remainder: bool = False,
                    prefetch: int | None = 2):
    """The same batches as :class:`FeatureSequence`, as a ``tf.data.Dataset``.

    Every iteration over the dataset (e.g. every epoch of ``model.fit``, or each pass of
    ``.repeat()``) is the next epoch: the first is ``epoch``, then ``epoch + 1``, ... with exactly
    the batches :class:`FeatureSequence` gives for that ``(seed, epoch)``.
    Element spec: ``x`` float32 (None, *feature_shape) [, ``y`` float32 (None[, K])].
    """
    import tensorflow as tf

    seq = FeatureSequence(store_path, ids, targets, batch_size=batch_size, augmentation=augmentation,
                          shuffle=shuffle, seed=seed, epoch=epoch, drop_remainder=drop_remainder)
    state = {"epoch": int(epoch)}

    def gen():
        seq.set_epoch(state["epoch"])
        state["epoch"] += 1
        for i in range(len(seq)):
            yield seq[i]

    x_spec = tf.TensorSpec((None,) + tuple(seq.feature_shape), tf.float32)
    if seq.targets is None:
        signature = x_spec
    else:
        signature = (x_spec, tf.TensorSpec((None,) + seq.targets.shape[1:], tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds
