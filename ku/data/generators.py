"""Batches of stored features for training heads: a Keras ``PyDataset`` and a ``tf.data`` pipeline.

Hosu et al. 2019 §3.1: "During training AQA on features, a single random augmentation per epoch is
drawn for each image from among the 8 stored (4 crops, 2 flips). At test time, the final score for
an image is calculated by averaging the predictions over all stored augmentations."

* Training (``augmentation="random"``): each epoch draws one augmentation per image, uniformly and
  independently, and a new item order (``shuffle``). All randomness comes from a local
  ``np.random.default_rng([seed, epoch])`` (the seed and the epoch number as two words of entropy,
  so different seeds never share epoch streams, unlike ``seed + epoch``); the global numpy RNG is
  never touched (the released code re-seeded it every batch, ``docs/released_code.md`` §5).
  An epoch is reproducible from ``(seed, epoch)`` alone, also in worker processes.
* Validation (``augmentation=<int>``, no shuffle): the same data every epoch.
* Test: :func:`iter_all_augmentations` yields (B, A, *feature_shape); average the predictions
  over axis 1. (``augmentation="all"`` in :class:`FeatureSequence` flattens that to (B*A, ...).)

Memory stays flat: only the rows of the current batch are read (sorted HDF5 selections); the file
is opened lazily in each process and never pickled.

Sharded stores and workers: every ``store_path`` may also be a list or a glob of shard
files (``features.shard-*.h5``, written by extraction with ``--shard k/n``); they are read as one
store (:class:`ku.data.shards.ShardedStore`), giving exactly the batches of the merged store.
In data-parallel training the batch size is *global*: ``FeatureSequence(part=(i, n))`` and
``feature_dataset(input_context=...)`` give each worker / replica its slice of every global batch
(``numpy.array_split`` of the batch's items, in order), so the union of the slices is the batch a
single process would train on (:mod:`ku.distribute`).

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
import threading

import keras
import numpy as np

from ku.data.shards import open_store, resolve_store_paths

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


def _check_part(part):
    if part is None:
        return None
    try:
        i, n = (int(v) for v in part)
    except (TypeError, ValueError):
        raise ValueError(f"part must be (index, count), got {part!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"part must be (index, count) with 0 <= index < count, got {part!r}")
    return i, n


class FeatureSequence(keras.utils.PyDataset):
    """Keras ``PyDataset`` over a :class:`~ku.data.store.FeatureStore` (Hosu et al. 2019 §3.1).

    Args:
        store_path: the feature store (``.h5``), or a list or glob of its shards (read as one
            store, :class:`ku.data.shards.ShardedStore`).
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
        part: ``(i, n)``: batch ``b`` holds only slice ``i`` of ``n`` of global batch ``b``
            (``numpy.array_split`` of its items): worker ``i`` of ``n`` in data-parallel
            training, with ``batch_size`` the global batch size. A last global batch with fewer
            than ``n`` items is dropped (every part must have a batch). Default: the whole batch.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` (``PyDataset``). With
            ``workers > 1`` Keras reads batches in threads (its ordered enqueuer): the batches, their
            order and augmentation draws are the same as with one worker (they depend only on
            ``(seed, epoch)``, and the enqueuer stops before ``on_epoch_end`` moves the epoch).
    Batches: ``(x, y)`` with x float32 (B, *feature_shape), y float32 (B,) or (B, K); or ``x``.
    Requesting ids that are missing from the store or whose rows are incomplete raises a
    :class:`~ku.data.store.FeatureStoreError` naming the file at construction.
    """

    def __init__(self, store_path, ids, targets=None, batch_size: int = 128, augmentation="random",
                 shuffle=None, seed: int = 0, epoch: int = 0, drop_remainder: bool = False,
                 part=None, **kwargs):
        super().__init__(**kwargs)
        self.store_path = resolve_store_paths(store_path)  # one path, or the list of shard files
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
        self.part = _check_part(part)
        self._store = None
        self._store_lock = threading.Lock()  # workers > 1: reader threads share one handle
        with open_store(self.store_path) as store:
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
        if self.drop_remainder:
            return n // self.batch_size
        full, last = divmod(n, self.batch_size)
        n_parts = 1 if self.part is None else self.part[1]
        return full + (1 if last >= n_parts else 0)  # a last batch too small to split is dropped

    def __len__(self):
        return self.num_batches

    def _get_store(self):
        with self._store_lock:
            if self._store is None:
                self._store = open_store(self.store_path)
            return self._store

    def global_batch_positions(self, index: int) -> np.ndarray:
        """Positions (into ``ids``) of all items of global batch ``index`` in the current epoch
        (ignores ``part``)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def batch_positions(self, index: int) -> np.ndarray:
        """Positions (into ``ids``) of the items of batch ``index`` in the current epoch (this
        ``part`` of the global batch)."""
        pos = self.global_batch_positions(index)
        if self.part is not None:
            pos = np.array_split(pos, self.part[1])[self.part[0]]
        return pos

    def __getitem__(self, index):
        return self.read_positions(self.batch_positions(int(index)))

    def read_positions(self, pos):
        """``(x, y)`` (or ``x``) of the items at positions ``pos`` (into ``ids``), with this
        epoch's augmentation draws -- any subset of items, e.g. one replica's slice of a batch."""
        pos = np.asarray(pos, dtype=np.int64)
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
        del state["_store_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._store_lock = threading.Lock()

    def close(self):
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def iter_all_augmentations(store_path, ids, batch_size: int = 128):
    """Yield features of all stored augmentations, (B, A, *feature_shape) float32, in ``ids`` order.

    Test-time use (Hosu et al. §3.1): predict on ``x.reshape(-1, *feature_shape)``, reshape the
    predictions to (B, A, ...) and average over axis 1.
    """
    ids, _ = _resolve_ids_targets(ids, None)
    with open_store(store_path) as store:
        rows = store.index_of(ids)
        store.check_complete(rows)
        for i in range(0, len(rows), int(batch_size)):
            yield store.read(rows[i : i + int(batch_size)], "all", check_complete=False)


def feature_dataset(store_path, ids, targets=None, batch_size: int = 128, augmentation="random",
                    shuffle=None, seed: int = 0, epoch: int = 0, drop_remainder: bool = False,
                    prefetch: int | None = 2, input_context=None):
    """The same batches as :class:`FeatureSequence`, as a ``tf.data.Dataset``.

    Every iteration over the dataset (e.g. every epoch of ``model.fit``, or each pass of
    ``.repeat()``) is the next epoch: the first is ``epoch``, then ``epoch + 1``, ... with exactly
    the batches :class:`FeatureSequence` gives for that ``(seed, epoch)``.
    Element spec: ``x`` float32 (None, *feature_shape) [, ``y`` float32 (None[, K])].

    ``input_context`` (a ``tf.distribute.InputContext``, as passed by
    ``strategy.distribute_datasets_from_function``; see :func:`ku.distribute.distribute_features`):
    ``batch_size`` is the global batch size; every global batch is split into
    ``num_replicas_in_sync`` slices (``numpy.array_split``, in order) and this input pipeline
    yields the slices of its replicas (``num_replicas_in_sync / num_input_pipelines`` consecutive
    elements per step), so every worker reads only its part and all replicas together train on
    exactly the single-process batch. A last global batch with fewer items than replicas is
    dropped on every pipeline (all workers must run the same number of steps).
    """
    import tensorflow as tf

    seq = FeatureSequence(store_path, ids, targets, batch_size=batch_size, augmentation=augmentation,
                          shuffle=shuffle, seed=seed, epoch=epoch, drop_remainder=drop_remainder)
    state = {"epoch": int(epoch)}
    if input_context is None:
        slices = None
    else:
        n_rep = int(input_context.num_replicas_in_sync)
        n_pipe = int(input_context.num_input_pipelines)
        if n_rep % n_pipe:
            raise ValueError(f"feature_dataset: {n_rep} replicas do not divide into {n_pipe} input pipelines")
        per = n_rep // n_pipe
        p = int(input_context.input_pipeline_id)
        slices = (n_rep, list(range(p * per, (p + 1) * per)))
        seq.part = (0, n_rep)  # for the batch count: drops a last batch smaller than n_rep

    def gen():
        seq.set_epoch(state["epoch"])
        state["epoch"] += 1
        for i in range(len(seq)):
            if slices is None:
                yield seq[i]
            else:
                parts = np.array_split(seq.global_batch_positions(i), slices[0])
                for j in slices[1]:
                    yield seq.read_positions(parts[j])

    x_spec = tf.TensorSpec((None,) + tuple(seq.feature_shape), tf.float32)
    if seq.targets is None:
        signature = x_spec
    else:
        signature = (x_spec, tf.TensorSpec((None,) + seq.targets.shape[1:], tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
    if input_context is not None:  # sharded here, explicitly: tf.distribute must not shard again
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(opts)
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds
