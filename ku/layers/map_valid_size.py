"""Where each padded image's valid region ends after one convolution / pooling / zero padding
(the size mapping of :func:`ku.models.masking.masked_model`; Murray & Gordo 2017 §3.2, Jia, Li,
He 2019 §III-A)."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ku.layers._utils import int_pair

__all__ = ["MapValidSize"]


@keras.saving.register_keras_serializable(package="ku")
class MapValidSize(keras.layers.Layer):
    """Map valid sizes (B, 2) through one layer's geometry (where each padded image's valid region
    ends after a convolution / pooling / zero padding; Murray & Gordo §3.2, Jia et al. §III-A).

    Per axis with input extent ``n``: first ``n + pad_before + pad_after``, then for
    ``padding="valid"``: ``max(floor((n - d*(k-1) - 1) / s) + 1, 0)``; for ``"same"``:
    ``ceil(n / s)``. (Pads count as valid: they are zeros in the unpadded image too.)

    Input: ``(B, 2)`` valid ``(height, width)`` per image (any numeric dtype). Output: ``(B, 2)``
    int32, also under a mixed-precision dtype policy.

    Args:
        kernel_size, strides, dilation_rate: ints or pairs (height, width).
        padding: ``"valid"`` or ``"same"``.
        pads: ``((top, bottom), (left, right))`` of a ``ZeroPadding2D``.

    Example:

    ```python
    import numpy as np
    from ku.layers import MapValidSize

    sizes = np.array([[299, 299], [150, 200]], "int32")
    MapValidSize(kernel_size=3, strides=2, padding="valid")(sizes)  # [[149, 149], [74, 99]]
    ```
    """

    def __init__(self, kernel_size=1, strides=1, padding="valid", dilation_rate=1,
                 pads=((0, 0), (0, 0)), **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int_pair(kernel_size)
        self.strides = int_pair(strides)
        self.dilation_rate = int_pair(dilation_rate)
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"MapValidSize: padding must be 'valid' or 'same', got {padding!r}")
        self.pads = tuple(int_pair(p) for p in pads)

    def call(self, sizes):
        sizes = ops.cast(sizes, "int32")
        out = []
        for axis in range(2):
            n = sizes[:, axis] + (self.pads[axis][0] + self.pads[axis][1])
            k, s, d = self.kernel_size[axis], self.strides[axis], self.dilation_rate[axis]
            if self.padding == "valid":
                n = ops.maximum(ops.floor_divide(n - (d * (k - 1) + 1), s) + 1, 0)
            else:
                n = ops.floor_divide(n + (s - 1), s)
            out.append(n)
        return ops.stack(out, axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, sizes):
        # int32 sizes whatever the input dtype or the layer's dtype policy (as ``call`` returns)
        return keras.KerasTensor(sizes.shape, dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
                      dilation_rate=self.dilation_rate, pads=self.pads)
        return config

    def map_numpy(self, sizes):
        """The same mapping on a numpy (N, 2) array."""
        sizes = np.asarray(sizes, dtype=np.int64)
        out = np.empty_like(sizes)
        for axis in range(2):
            n = sizes[:, axis] + sum(self.pads[axis])
            k, s, d = self.kernel_size[axis], self.strides[axis], self.dilation_rate[axis]
            if self.padding == "valid":
                out[:, axis] = np.maximum((n - (d * (k - 1) + 1)) // s + 1, 0)
            else:
                out[:, axis] = -(-n // s)
        return out
