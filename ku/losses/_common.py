"""Helpers shared by ku's losses: the ``(y_true, y_pred)`` check, a root with a finite
gradient at 0, and the base of the registered loss classes."""
from __future__ import annotations

import keras
from keras import ops


def pair(y_true, y_pred, who):
    """Convert to tensors of y_pred's float dtype and check that the bin axes agree."""
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, keras.config.floatx())
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
    if len(ts) == 0 or len(ps) == 0:
        raise ValueError(f"{who}: y_true and y_pred must have shape (batch, K); got y_true {ts} "
                         f"and y_pred {ps}")
    if ts[-1] is not None and ps[-1] is not None and ts[-1] != ps[-1]:
        raise ValueError(f"{who}: y_true has {ts[-1]} bins but y_pred has {ps[-1]} "
                         f"(shapes y_true {ts}, y_pred {ps})")
    return y_true, y_pred



def safe_root(x, r):
    """``x ** (1/r)`` for ``x >= 0`` with a finite (zero) gradient at ``x == 0``."""
    if r == 1:
        return x
    positive = x > 0
    safe = ops.where(positive, x, ops.ones_like(x))
    root = ops.sqrt(safe) if r == 2 else ops.power(safe, 1.0 / r)
    return ops.where(positive, root, ops.zeros_like(x))


class FunctionLoss(keras.losses.Loss):
    """Base of ku's registered losses: the per-sample function ``fn`` of the loss's module with the
    keyword arguments ``fn_kwargs`` (attributes of the loss and its config), reduced over the batch
    by Keras (``reduction``)."""

    def __init__(self, fn, *, name, reduction="sum_over_batch_size", dtype=None, **fn_kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._fn = fn
        self._fn_kwargs = dict(fn_kwargs)
        for key, value in fn_kwargs.items():
            setattr(self, key, value)

    def call(self, y_true, y_pred):
        return self._fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        return {**super().get_config(), **self._fn_kwargs}
