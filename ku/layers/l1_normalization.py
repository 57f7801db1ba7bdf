"""Normalise a predicted distribution to sum 1 (Murray & Gordo 2017 §3.4: the network's
outputs are not normalised during training, only at evaluation; used by
:func:`ku.models.apm.apm_inference_model`)."""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["L1Normalization", "l1_normalize"]


def l1_normalize(p, epsilon: float = 1e-12):
    """``p / sum(p)`` over the last axis, all-zero rows (sum <= ``epsilon``) uniform; any backend
    tensor (also a TensorFlow tensor inside a ``tf.function``). Shape ``(..., K) -> (..., K)``."""
    s = ops.sum(p, axis=-1, keepdims=True)
    k = ops.cast(ops.shape(p)[-1], p.dtype)
    return ops.where(s > epsilon, p / ops.maximum(s, epsilon), ops.ones_like(p) / k)


@keras.saving.register_keras_serializable(package="ku")
class L1Normalization(keras.layers.Layer):
    """``p / sum(p)`` over the last axis (Murray & Gordo §3.4, evaluation-time normalisation);
    all-zero rows become uniform. Shape ``(B, K) -> (B, K)``.

    Example:

    ```python
    import numpy as np
    from ku.layers import L1Normalization

    p = np.array([[1.0, 3.0], [0.0, 0.0]], "float32")  # FC + ReLU outputs
    L1Normalization()(p)                                # [[0.25, 0.75], [0.5, 0.5]]
    ```
    """

    def __init__(self, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, p):
        return l1_normalize(p, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
