"""Area interpolation to a fixed grid: the pooling behind Hosu et al.'s *wide* MLSP features.

Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
Features", CVPR 2019, §3.1 and Fig. 2: every tapped activation block is resized "to a fixed
spatial resolution: 1 x 1 global average pooling (GAP) for narrow features, and 5 x 5 spatial
average pooling" for wide features. The released code used ``tf.image.resize_area(x, (5, 5))``
(later ``tf.image.resize(x, (5, 5), method="area")``) inside a ``Lambda`` layer; see
``docs/released_code.md`` §3.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["AreaPooling2D", "area_weights"]


def _standardize_data_format(data_format):
    data_format = keras.config.image_data_format() if data_format is None else data_format
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "data_format must be 'channels_last' or 'channels_first', got " f"{data_format!r}"
        )
    return data_format


def area_weights(in_size, out_size: int, dtype="float32"):
    """Overlap weights of area interpolation along one axis, for a (possibly dynamic) input size.

    Output cell ``i`` covers the input interval ``[i * n / m, (i + 1) * n / m)`` (``n = in_size``,
    ``m = out_size``); input pixel ``j`` covers ``[j, j + 1)``. The weight is the length of their
    intersection divided by the cell length ``n / m``::

        W[i, j] = max(0, min(j + 1, (i + 1) n / m) - max(j, i n / m)) / (n / m)

    Every row sums to 1, so ``W @ x`` is the overlap-weighted average of the pixels in each cell.

    Args:
        in_size: input length ``n`` (Python int or scalar integer tensor, may be dynamic).
        out_size: output length ``m`` (Python int).
        dtype: dtype of the returned matrix (the arithmetic is done in float32; ``i * n`` is
            formed in integers first so the cell borders are exact for ``i * n < 2**24``).

    Returns:
        ``(out_size, in_size)`` tensor.
    """
    if isinstance(in_size, (int, np.integer)):  # static size: numpy, the same float32 arithmetic
        n_i, m32 = int(in_size), np.float32(out_size)  # (a traced arange fails under jax.jit)
        i = np.arange(out_size, dtype=np.int64)
        lo = (i * n_i).astype(np.float32) / m32
        hi = ((i + 1) * n_i).astype(np.float32) / m32
        j = np.arange(n_i, dtype=np.float32)
        overlap = np.minimum(j[None, :] + np.float32(1.0), hi[:, None]) - np.maximum(j[None, :], lo[:, None])
        w = np.maximum(overlap, np.float32(0.0)) / (np.float32(n_i) / m32)
        return ops.convert_to_tensor(w.astype(np.float32), dtype=dtype)
    n_int = ops.cast(in_size, "int32")
    n = ops.cast(n_int, "float32")
    m = float(out_size)
    i = ops.arange(out_size, dtype="int32")
    lo = ops.cast(i * n_int, "float32") / m                # (m,)
    hi = ops.cast((i + 1) * n_int, "float32") / m          # (m,)
    j = ops.cast(ops.arange(n_int, dtype="int32"), "float32")  # (n,)
    overlap = ops.minimum(j[None, :] + 1.0, hi[:, None]) - ops.maximum(j[None, :], lo[:, None])
    w = ops.maximum(overlap, 0.0) / (n / m)
    return ops.cast(w, dtype)


@keras.saving.register_keras_serializable(package="ku")
class AreaPooling2D(keras.layers.Layer):
    """Resize a feature map of any spatial size to a fixed grid by area interpolation.

    Hosu et al. 2019 §3.1 / Fig. 2 ("5 x 5 spatial average pooling" of every activation block,
    wide MLSP features). Each output cell ``(i, j)`` is the overlap-weighted average of the input
    pixels that fall into the cell ``[i H/oh, (i+1) H/oh) x [j W/ow, (j+1) W/ow)`` (fractional
    pixels contribute with the fraction of their area inside the cell). It is computed as two
    small matrix products ``Wh @ x @ Ww^T`` (two batched matmuls) whose weight matrices are built from the dynamic
    input size (see :func:`area_weights`), so the layer works with ``None`` spatial dimensions,
    inside ``tf.function`` and in a SavedModel, and is differentiable.

    Equivalences (tested):

    * downscaling (``H >= oh`` and ``W >= ow``): identical to OpenCV
      ``cv2.resize(x[..., c], (ow, oh), interpolation=cv2.INTER_AREA)`` per channel, and to
      ``tf.image.resize(x, (oh, ow), method="area")`` (the released MLSP code);
    * ``H == oh`` and ``W == ow``: the identity;
    * upscaling along an axis (``H < oh`` or ``W < ow``, e.g. the last IRNv2 block of an image
      smaller than ~160 px): the same overlap-weighted formula, i.e. each output cell copies or
      blends the one or two input pixels it overlaps. This equals
      ``tf.image.resize(method="area")`` (what the released code computes for such small maps);
      it is *not* what ``cv2.INTER_AREA`` does there (OpenCV switches to a bilinear-like scheme
      when enlarging).

    Input shape: ``(batch, H, W, C)`` (``data_format="channels_last"``) or ``(batch, C, H, W)``.
    Output shape: ``(batch, oh, ow, C)`` or ``(batch, C, oh, ow)``.

    Args:
        output_size: ``(oh, ow)`` or an int for a square grid. Default ``(5, 5)`` as in the paper.
        data_format: ``"channels_last"`` / ``"channels_first"``; default Keras' image data format.

    Example:

    ```python
    import numpy as np
    from ku.layers import AreaPooling2D

    features = np.random.rand(2, 17, 23, 64).astype("float32")  # one tapped block, any size
    wide = AreaPooling2D((5, 5))(features)                        # (2, 5, 5, 64)
    ```
    """

    def __init__(self, output_size=(5, 5), data_format=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(
                f"AreaPooling2D: output_size must be two positive ints, got {output_size!r}"
            )
        self.output_size = output_size
        self.data_format = _standardize_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        x = inputs
        oh, ow = self.output_size
        # Static sizes where known (jax.jit traces sizes; ops.arange needs a concrete length there).
        shape = [d if d is not None else ops.shape(x)[i] for i, d in enumerate(x.shape)]
        # Two plain batched matmuls on reshaped views (no transposes): ~8x faster than the
        # equivalent einsums on a 2-core CPU (TensorFlow transposed the whole map for them).
        # Weights in float32, contraction in the input dtype (rows sum to one: no overflow).
        if self.data_format == "channels_last":
            b, h, w, c = shape
            wh = area_weights(h, oh, dtype=x.dtype)                          # (oh, H)
            ww = area_weights(w, ow, dtype=x.dtype)                          # (ow, W)
            y = ops.matmul(wh, ops.reshape(x, (-1, h, w * c)))              # (B, oh, W*C)
            y = ops.matmul(ww, ops.reshape(y, (-1, w, c)))                   # (B*oh, ow, C)
            return ops.reshape(y, (-1, oh, ow, c))
        b, c, h, w = shape
        wh = area_weights(h, oh, dtype=x.dtype)
        ww = area_weights(w, ow, dtype=x.dtype)
        y = ops.matmul(ops.reshape(x, (-1, w)), ops.transpose(ww))           # (B*C*H, ow)
        y = ops.matmul(wh, ops.reshape(y, (-1, h, ow)))                      # (B*C, oh, ow)
        return ops.reshape(y, (-1, c, oh, ow))

    def compute_output_shape(self, input_shape):
        oh, ow = self.output_size
        if self.data_format == "channels_last":
            return (input_shape[0], oh, ow, input_shape[3])
        return (input_shape[0], input_shape[1], oh, ow)

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": list(self.output_size), "data_format": self.data_format})
        return config
