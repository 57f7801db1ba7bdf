"""The mean score of a distribution over the scores ``1..K`` (Murray & Gordo 2017 §4, eq. 2;
used by :func:`ku.models.apm.apm_inference_model`)."""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["DistributionMean"]


@keras.saving.register_keras_serializable(package="ku")
class DistributionMean(keras.layers.Layer):
    """``sum_i i * p_i`` for a normalised ``(B, K)`` distribution over scores ``1..K`` (eq. 2);
    output ``(B, 1)``.

    Example:

    ```python
    import numpy as np
    from ku.layers import DistributionMean

    p = np.array([[0.0, 0.5, 0.5]], "float32")  # a distribution over the scores 1, 2, 3
    DistributionMean()(p)                       # [[2.5]]
    ```
    """

    def call(self, p):
        scores = ops.cast(ops.arange(1, ops.shape(p)[-1] + 1), p.dtype)
        return ops.sum(p * scores, axis=-1, keepdims=True)
