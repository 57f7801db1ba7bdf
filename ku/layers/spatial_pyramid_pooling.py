"""Adaptive spatial pyramid pooling (SPP) over each image's valid region, with L2 normalisation.

Murray & Gordo, "A Deep Architecture for Unified Aesthetic Prediction", 2017, §3.2 and Fig. 2:
"we add an adaptive spatial pyramid pooling (SPP) layer after the last convolutional layer ...
the grid of the spatial pyramid is identical for each image ... but the extent of each cell in
the grid is resized on a per-image basis. In our network we used a n x n grid, with n = 3. After
pooling, the C x n^2 feature vectors are stacked into a single vector of Cn^2 dimensions ... We
also l2-normalize the stacked vector". ResNet-101 (C = 2048) and a 3x3 grid give 18,432.
(SPP itself: He et al. 2014, "Spatial Pyramid Pooling in Deep Convolutional Networks".)
"""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["SpatialPyramidPooling", "spp_bin_bounds", "SPP_MODES"]

#: Pooling operators inside each bin.
SPP_MODES = ("max", "average")


def spp_bin_bounds(n, level: int):
    """Integer bin borders of one pyramid level along one axis, for valid extents ``n``.

    Bin ``i`` (``0 <= i < level``) covers the half-open index range ``[start_i, end_i)`` with::

        start_i = floor(i * n / level)
        end_i   = ceil((i + 1) * n / level)

    computed exactly in integers (``(i*n) // l`` and ``((i+1)*n + l - 1) // l``). This is the
    "adaptive pooling" convention (e.g. PyTorch's ``adaptive_max_pool2d`` /
    ``adaptive_avg_pool2d``): bins tile ``[0, n)``, neighbouring bins may share one row/column,
    and every bin is non-empty whenever ``n >= 1``, also when the map is smaller than the grid
    (``n < level``; then bins repeat rows/columns, e.g. ``n = 2, level = 3`` gives ``[0,1)``,
    ``[0,2)``, ``[1,2)``).

    Args:
        n: integer tensor of valid extents, any shape ``S`` (e.g. ``(batch,)``).
        level: number of bins ``l`` (Python int).

    Returns:
        ``(start, end)`` int32 tensors of shape ``S + (level,)``.
    """
    n = ops.cast(n, "int32")[..., None]
    i = ops.arange(level, dtype="int32")
    start = ops.floor_divide(i * n, level)
    end = ops.floor_divide((i + 1) * n + (level - 1), level)
    return start, end


def _bin_masks(n, level, length):
    """``(batch, level, length)`` boolean: index ``t`` lies in bin ``i`` of the valid extent ``n``."""
    start, end = spp_bin_bounds(n, level)  # (B, l)
    t = ops.arange(length, dtype="int32")  # (L,)
    return ops.logical_and(t[None, None, :] >= start[:, :, None], t[None, None, :] < end[:, :, None])


@keras.saving.register_keras_serializable(package="ku")
class SpatialPyramidPooling(keras.layers.Layer):
    """Adaptive spatial pyramid pooling inside each image's valid region (Murray & Gordo 2017
    §3.2), optionally followed by L2 normalisation of the stacked vector.

    For every pyramid level ``l`` the valid region ``h x w`` of each feature map is divided into
    an ``l x l`` grid whose cell extents follow the image (``h``, ``w`` differ per image): cell
    ``(i, j)`` covers rows ``[floor(i h / l), ceil((i+1) h / l))`` and columns
    ``[floor(j w / l), ceil((j+1) w / l))`` (see :func:`spp_bin_bounds`; the adaptive-pooling
    convention, every cell non-empty for ``h, w >= 1`` also when the map is smaller than the
    grid). Each cell is max- (paper) or average-pooled per channel. Positions outside the valid
    region (padding of a batched canvas) are never read, whatever their values.

    **Output order** (fixed, tested): level-major (in the order given by ``levels``), then cell
    row-major (``i`` = grid row, ``j`` = grid column), then channel::

        out[b, offset_l + (i * l + j) * C + c],  offset_l = C * sum of l'^2 over earlier levels

    i.e. for each level the ``(l, l, C)`` grid flattened in C order (what ``keras.layers.Flatten``
    gives for channels-last), levels concatenated.

    **L2 normalisation** (``l2_normalize=True``, §3.2 "we also l2-normalize the stacked vector"):
    ``y = x / sqrt(max(sum(x^2), epsilon))`` over the whole stacked vector (all levels together),
    ``epsilon = 1e-12`` by default (as ``tf.math.l2_normalize``), so an all-zero vector stays zero.

    Inputs: ``features`` ``(batch, H, W, C)`` (``H``, ``W`` may be ``None``), or
    ``[features, valid_sizes]`` with ``valid_sizes`` ``(batch, 2)`` int = ``(h, w)``, the extent
    of each image's valid region *in feature-map cells* anchored at the top-left (e.g. the sizes
    returned by :func:`ku.models.masking.masked_model` next to the feature map). Sizes are
    clipped to ``[1, H]`` / ``[1, W]``. Without ``valid_sizes`` the whole map is valid.

    Output: ``(batch, C * sum(l * l for l in levels))``, e.g. 2048 * 9 = 18,432 for ResNet-101
    and the paper's single 3x3 level.

    Works with dynamic batch and spatial sizes (one trace in ``tf.function``/SavedModels), is
    differentiable (max: the gradient goes to each cell's maximum), and uses only ``keras.ops``
    (Python loops only over the static ``levels`` and cells).

    Args:
        levels: grid sizes of the pyramid, e.g. ``(3,)`` (paper) or ``(1, 2, 3)``.
        mode: ``"max"`` (paper) or ``"average"``.
        l2_normalize: L2-normalise the stacked vector (paper: yes).
        epsilon: floor of the squared norm in the normalisation.

    Example:

    ```python
    import numpy as np
    from ku.layers import SpatialPyramidPooling

    features = np.random.rand(2, 12, 16, 8).astype("float32")  # feature maps of a padded canvas
    valid_sizes = np.array([[12, 16], [7, 9]], "int32")        # each image's (h, w) in cells
    vector = SpatialPyramidPooling(levels=(3,))([features, valid_sizes])  # (2, 72), unit L2 norm
    ```
    """

    def __init__(self, levels=(3,), mode="max", l2_normalize=True, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        if isinstance(levels, int):
            levels = (levels,)
        try:
            levels = tuple(int(level) for level in levels)
        except (TypeError, ValueError):
            raise ValueError(f"SpatialPyramidPooling: levels must be positive ints, got {levels!r}") from None
        if not levels or min(levels) < 1:
            raise ValueError(f"SpatialPyramidPooling: levels must be positive ints, got {levels!r}")
        if mode not in SPP_MODES:
            raise ValueError(f"SpatialPyramidPooling: mode must be one of {SPP_MODES}, got {mode!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"SpatialPyramidPooling: epsilon must be > 0, got {epsilon!r}")
        self.levels = levels
        self.mode = mode
        self.l2_normalize = bool(l2_normalize)
        self.epsilon = float(epsilon)

    @property
    def n_cells(self) -> int:
        """``sum(l * l)``: number of pooled cells per channel."""
        return sum(level * level for level in self.levels)

    def _split(self, inputs):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) == 1:
                return inputs[0], None
            if len(inputs) != 2:
                raise ValueError(
                    f"{self.name}: expected features or [features, valid_sizes], got {len(inputs)} inputs"
                )
            return inputs[0], inputs[1]
        return inputs, None

    def call(self, inputs):
        x, sizes = self._split(inputs)
        shape = ops.shape(x)
        height, width = shape[1], shape[2]
        if sizes is None:
            ones = ops.ones((shape[0],), dtype="int32")
            h = ones * ops.cast(height, "int32")
            w = ones * ops.cast(width, "int32")
        else:
            sizes = ops.cast(sizes, "int32")
            h = ops.clip(sizes[:, 0], 1, ops.cast(height, "int32"))
            w = ops.clip(sizes[:, 1], 1, ops.cast(width, "int32"))

        pooled = []
        for level in self.levels:
            rows = _bin_masks(h, level, height)  # (B, l, H)
            cols = _bin_masks(w, level, width)   # (B, l, W)
            if self.mode == "max":
                pooled.append(self._max_level(x, rows, cols, level))
            else:
                pooled.append(self._average_level(x, rows, cols, level))
        y = ops.concatenate(pooled, axis=-1) if len(pooled) > 1 else pooled[0]
        if self.l2_normalize:
            sq = ops.sum(ops.square(y), axis=-1, keepdims=True)
            y = y * ops.rsqrt(ops.maximum(sq, ops.cast(self.epsilon, y.dtype)))
        return y

    @staticmethod
    def _max_level(x, rows, cols, level):
        """``(B, l*l*C)`` cell maxima, cell row-major then channel."""
        lowest = ops.cast(float("-inf"), x.dtype)
        cells = []
        col_max = []
        for j in range(level):  # max over the columns of column-bin j: (B, H, C)
            m = cols[:, j, None, :, None]  # (B, 1, W, 1)
            col_max.append(ops.max(ops.where(m, x, lowest), axis=2))
        for i in range(level):
            m = rows[:, i, :, None]  # (B, H, 1)
            for j in range(level):
                cells.append(ops.max(ops.where(m, col_max[j], lowest), axis=1))  # (B, C)
        return ops.concatenate(cells, axis=-1)

    @staticmethod
    def _average_level(x, rows, cols, level):
        """``(B, l*l*C)`` cell means, cell row-major then channel."""
        rows_f = ops.cast(rows, x.dtype)
        cols_f = ops.cast(cols, x.dtype)
        # zero everything outside the valid region first (padding may hold anything, even inf)
        valid = ops.logical_and(ops.any(rows, axis=1)[:, :, None], ops.any(cols, axis=1)[:, None, :])
        xv = ops.where(valid[..., None], x, ops.zeros_like(x))
        s = ops.einsum("bhwc,bjw->bhjc", xv, cols_f)      # (B, H, l, C)
        s = ops.einsum("bhjc,bih->bijc", s, rows_f)       # (B, l, l, C)
        count = ops.sum(rows_f, axis=2)[:, :, None] * ops.sum(cols_f, axis=2)[:, None, :]  # (B, l, l)
        s = s / count[..., None]
        return ops.reshape(s, (-1, level * level * ops.shape(x)[-1]))

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        channels = input_shape[-1]
        return (input_shape[0], None if channels is None else channels * self.n_cells)

    def get_config(self):
        config = super().get_config()
        config.update({
            "levels": list(self.levels),
            "mode": self.mode,
            "l2_normalize": self.l2_normalize,
            "epsilon": self.epsilon,
        })
        return config
