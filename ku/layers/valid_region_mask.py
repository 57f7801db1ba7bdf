"""The valid region of each image in a zero-padded canvas, as a mask and as a masking layer.

Both full-resolution papers batch images of different sizes by zero-padding them into one canvas,
image at the top-left: Murray & Gordo 2017 §3.2 and Jia, Li, He 2019 §III-A. Plain zero padding
is not neutral inside a network (``docs/design.md`` §3); :func:`ku.models.masking.masked_model`
puts a :class:`ValidRegionMask` before every spatial layer so that it is.
"""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["ValidRegionMask", "valid_mask"]


def valid_mask(sizes, height, width, dtype="float32"):
    """(B, H, W, 1) mask: 1 inside ``[0, h_b) x [0, w_b)`` of each image ``b``, else 0.

    Args:
        sizes: (B, 2) integer tensor of valid (height, width).
        height, width: the canvas size (ints or scalar tensors).
    """
    sizes = ops.cast(sizes, "int32")
    rows = ops.reshape(ops.arange(height, dtype="int32"), (1, -1, 1))
    cols = ops.reshape(ops.arange(width, dtype="int32"), (1, 1, -1))
    inside = ops.logical_and(ops.less(rows, ops.reshape(sizes[:, 0], (-1, 1, 1))),
                             ops.less(cols, ops.reshape(sizes[:, 1], (-1, 1, 1))))
    return ops.cast(inside, dtype)[..., None]


@keras.saving.register_keras_serializable(package="ku")
class ValidRegionMask(keras.layers.Layer):
    """Zero everything outside each image's valid region (padded batches of Murray & Gordo 2017
    §3.2 and Jia, Li, He 2019 §III-A; see the module docstring).

    Inputs: ``[x (B, H, W, C), sizes (B, 2) int]`` with ``sizes[b] = (h_b, w_b)``, the valid
    region being rows ``< h_b`` and columns ``< w_b`` (image at the top-left of the canvas).
    Output: ``x * mask``, shape (B, H, W, C).

    Example:

    ```python
    import numpy as np
    from ku.layers import ValidRegionMask

    canvas = np.ones((2, 4, 5, 3), "float32")
    sizes = np.array([[4, 5], [2, 3]], "int32")     # image 2 is 2 x 3, at the top-left
    masked = ValidRegionMask()([canvas, sizes])    # image 2: zero outside rows < 2, columns < 3
    ```
    """

    def call(self, inputs):
        x, sizes = inputs
        shape = ops.shape(x)
        return x * valid_mask(sizes, shape[1], shape[2], x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]
