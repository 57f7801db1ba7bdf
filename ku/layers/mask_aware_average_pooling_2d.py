"""``same`` average pooling over each padded image's valid positions only (exact masking of
Inception blocks in padded batches, :func:`ku.models.masking.masked_model`;
``docs/design.md`` §3)."""
from __future__ import annotations

import math

import keras
from keras import ops

from ku.layers._utils import int_pair
from ku.layers.valid_region_mask import valid_mask

__all__ = ["MaskAwareAveragePooling2D"]


@keras.saving.register_keras_serializable(package="ku")
class MaskAwareAveragePooling2D(keras.layers.Layer):
    """``same`` average pooling that averages over each image's valid positions only (exact
    masking of Inception blocks in padded batches; ``docs/design.md`` §3, Jia et al. §III-A).

    Equals Keras' ``AveragePooling2D(padding="same")`` on the unpadded image (which does not count
    its own padding), for an image padded into a larger canvas. Inputs ``[x (B,H,W,C) zero outside
    the valid region, sizes (B,2)]``; output (B, H', W', C), zero outside the output's valid region
    (the caller masks it).

    Example:

    ```python
    import numpy as np
    from ku.layers import MaskAwareAveragePooling2D, ValidRegionMask

    canvas = np.random.rand(2, 8, 8, 4).astype("float32")
    sizes = np.array([[8, 8], [5, 6]], "int32")
    x = ValidRegionMask()([canvas, sizes])                             # zero outside each image
    y = MaskAwareAveragePooling2D(pool_size=3, strides=1)([x, sizes])  # (2, 8, 8, 4)
    ```
    """

    def __init__(self, pool_size=(3, 3), strides=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int_pair(pool_size)
        self.strides = int_pair(strides)

    def call(self, inputs):
        x, sizes = inputs
        shape = ops.shape(x)
        mask = valid_mask(sizes, shape[1], shape[2], x.dtype)
        # Keras' 'same' average divides by the in-canvas count; it cancels in the ratio.
        num = ops.average_pool(x, self.pool_size, self.strides, padding="same")
        den = ops.average_pool(mask, self.pool_size, self.strides, padding="same")
        return num / ops.maximum(den, keras.config.epsilon())

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape[0]
        sh, sw = self.strides
        return (b, None if h is None else math.ceil(h / sh), None if w is None else math.ceil(w / sw), c)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides)
        return config
