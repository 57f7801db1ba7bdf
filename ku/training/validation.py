"""SRCC / PLCC / MSE of the mean on the whole validation set at every epoch end, as a Keras
callback (Hosu et al. 2019 §4; the released wide model monitored a mean of per-batch PLCCs)."""
from __future__ import annotations

import logging
import warnings

import keras
import numpy as np

from ku.evaluation import mean_scores

logger = logging.getLogger(__name__)

__all__ = ["ValidationCorrelation"]


def _is_indexable_dataset(data) -> bool:
    """A PyDataset / Sequence of batches (not an array, a tensor or a tuple of arrays)."""
    if isinstance(data, keras.utils.PyDataset):
        return True
    if isinstance(data, (tuple, list, dict, np.ndarray)) or hasattr(data, "shape"):
        return False
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _split_batch(batch):
    """``(x, y, w)`` of an ``(x, y)`` or ``(x, y, w)`` batch (``w`` None when absent)."""
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
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
        compute_loss: also set ``logs[prefix + "loss"]``, the compiled loss (with sample weights
            when the data has them, plus the model's regularisation losses) over the whole set from
            the same predictions, so that ``fit`` needs no validation pass of its own (one model
            pass over the validation set per epoch instead of two). Equal to Keras' ``val_loss``
            for losses that average over samples (Keras weights its per-batch means by batch size).
    """

    def __init__(self, validation_data, batch_size: int = 128, prefix: str = "val_", scores=None,
                 compute_loss: bool = False):
        super().__init__()
        if validation_data is None:
            raise ValueError("ValidationCorrelation: validation_data is None")
        self.validation_data = validation_data
        self.batch_size = int(batch_size)
        self.prefix = str(prefix)
        self.scores = scores
        self.compute_loss = bool(compute_loss)

    def predict(self):
        """``(y_true, y_pred)`` on the whole validation set, as numpy arrays."""
        return self._predict()[:2]

    def _predict(self):
        """``(y_true, y_pred, sample_weight)`` on the whole validation set (weights None when the
        data has none)."""
        data = self.validation_data
        if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(data[0], keras.utils.PyDataset):
            x, y = data[0], data[1]
            w = _numpy(data[2]) if len(data) == 3 else None
            if _multi_worker_model(self.model):
                return _numpy(y), np.concatenate([_numpy(self.model(x[i:i + self.batch_size], training=False))
                                                  for i in range(0, len(x), self.batch_size)]), w
            return _numpy(y), _numpy(self.model.predict(x, batch_size=self.batch_size, verbose=0)), w
        ys, ps, ws = [], [], []
        if _is_indexable_dataset(data):
            n = len(data)
            if n is None:
                raise ValueError("ValidationCorrelation: the validation dataset has no length")
            batches = (data[i] for i in range(n))
        else:
            batches = iter(data)
        for batch in batches:
            x, y, w = _split_batch(batch)
            ys.append(_numpy(y))
            ws.append(None if w is None else _numpy(w))
            if _multi_worker_model(self.model):  # predict* would gather every worker's copy
                ps.append(_numpy(self.model(x, training=False)))
            else:
                ps.append(_numpy(self.model.predict_on_batch(x)))
        if not ys:
            raise ValueError("ValidationCorrelation: the validation data gave no batches")
        weights = None
        if any(w is not None for w in ws):
            if any(w is None for w in ws):
                raise ValueError("ValidationCorrelation: some validation batches have sample weights, others not")
            weights = np.concatenate(ws, axis=0)
        return np.concatenate(ys, axis=0), np.concatenate(ps, axis=0), weights

    def compute(self) -> dict:
        """The log entries for the current model."""
        from ku import metrics

        y, p, w = self._predict()
        out = {}
        if self.compute_loss:
            out[self.prefix + "loss"] = float(_numpy(self.model.compute_loss(
                y=y, y_pred=p, sample_weight=w, training=False)))
        keys = [self.prefix + k for k in ("srcc", "plcc", "mean_mse")]
        try:
            t, q = mean_scores(y, self.scores), mean_scores(p, self.scores)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # constant predictions -> NaN
                vals = (metrics.srcc(t, q), metrics.plcc(t, q), metrics.mse(t, q))
        except ValueError as e:  # e.g. non-finite predictions: report NaN, keep training
            logger.warning("ValidationCorrelation: %s", e)
            vals = (float("nan"),) * 3
        return {**out, **dict(zip(keys, (float(v) for v in vals)))}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(self.compute())
