"""Split a concatenated feature vector into its blocks: the per-level MLSP blocks of Multi-3FC
(Hosu, Goldluecke, Saupe 2019 §3.2.1, Fig. 5; :func:`ku.models.heads.multi_3fc`)."""
from __future__ import annotations

import keras
import numpy as np

__all__ = ["SplitFeatures"]


@keras.saving.register_keras_serializable(package="ku")
class SplitFeatures(keras.layers.Layer):
    """Split a concatenated feature vector into consecutive blocks along the last axis.

    Used by Multi-3FC (Hosu et al. 2019 §3.2.1, Fig. 5) to recover the per-level MLSP blocks
    ``b_1 .. b_N`` from the narrow feature vector ``(batch, sum(b_i))``.

    Args:
        sizes: block widths ``b_i`` (positive ints); the input's last dimension must equal their sum.

    Input: ``(..., sum(sizes))``. Output: list of ``len(sizes)`` tensors ``(..., b_i)``.

    Example:

    ```python
    import numpy as np
    from ku.layers import SplitFeatures

    narrow = np.random.rand(2, 10).astype("float32")  # two MLSP blocks of 4 and 6 features
    first, second = SplitFeatures([4, 6])(narrow)     # (2, 4) and (2, 6)
    ```
    """

    def __init__(self, sizes, **kwargs):
        super().__init__(**kwargs)
        sizes = [int(s) for s in sizes]
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError(f"SplitFeatures: sizes must be positive integers, got {sizes!r}")
        self.sizes = sizes
        self._bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()

    def build(self, input_shape):
        width = input_shape[-1]
        if width is not None and width != self._bounds[-1]:
            raise ValueError(
                f"SplitFeatures {self.name!r}: input has {width} features but the block sizes sum "
                f"to {self._bounds[-1]} ({len(self.sizes)} blocks)"
            )
        super().build(input_shape)

    def call(self, inputs):
        return [inputs[..., a:b] for a, b in zip(self._bounds[:-1], self._bounds[1:])]

    def compute_output_shape(self, input_shape):
        return [tuple(input_shape[:-1]) + (s,) for s in self.sizes]

    def get_config(self):
        config = super().get_config()
        config.update({"sizes": list(self.sizes)})
        return config
