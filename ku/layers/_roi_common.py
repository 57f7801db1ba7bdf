"""What ROI pooling and ROI align share: argument checks, box handling and a base layer.

Jia, Li, He, "Theme Aware Aesthetic Distribution Prediction with Full Resolution Photos", 2019,
§III-A: images are zero-padded into one canvas and each image's box is pooled from the feature
map to a fixed grid (:class:`~ku.layers.RoiPooling2D`, eqs. 1-3; the "Align" rows of Tables I/II:
:class:`~ku.layers.RoiAlign2D`).

Box format (both layers): ``(y1, x1, y2, x2)`` in *input-image pixels* (the coordinate system of
the network input, multiplied by ``spatial_scale = 1 / tau`` to reach the feature map), one box
per image ``(B, 4)`` or ``K`` boxes per image ``(B, K, 4)``. :class:`~ku.layers.ImageBoxes`
makes the boxes of images at the top-left of a canvas from their sizes.
"""
from __future__ import annotations

import keras
from keras import ops


def pair(value, name, cls):
    """``value`` (an int or two ints) as a pair of positive ints; ValueError naming ``cls``."""
    if isinstance(value, int):
        value = (value, value)
    try:
        value = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{cls}: {name} must be an int or two ints, got {value!r}") from None
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{cls}: {name} must be two positive ints, got {value!r}")
    return value


def check_scale(spatial_scale, cls):
    """``spatial_scale`` as a positive float; ValueError naming ``cls``."""
    try:
        s = float(spatial_scale)
    except (TypeError, ValueError):
        raise ValueError(f"{cls}: spatial_scale must be a positive number, got {spatial_scale!r}") from None
    if not s > 0:
        raise ValueError(f"{cls}: spatial_scale must be a positive number, got {spatial_scale!r}")
    return s


def flatten_boxes(boxes, cls):
    """(B, 4) or (B, K, 4) -> (R, 4) float32 boxes, (R,) int32 image index, K or None."""
    rank = len(boxes.shape)
    if rank not in (2, 3) or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"{cls}: boxes must have shape (B, 4) or (B, K, 4), got {tuple(boxes.shape)}")
    boxes = ops.cast(boxes, "float32")
    if rank == 2:
        return boxes, ops.arange(ops.shape(boxes)[0], dtype="int32"), None
    shape = ops.shape(boxes)
    b, k = shape[0], shape[1]
    flat = ops.reshape(boxes, (-1, 4))
    bidx = ops.repeat(ops.arange(b, dtype="int32"), k)
    return flat, bidx, k


class BaseRoiLayer(keras.layers.Layer):
    """Base of the ROI layers (as Keras' ``BaseAdaptivePooling`` is of its adaptive poolings):
    the ``output_size`` / ``spatial_scale`` arguments and their checks, the ``[features, boxes]``
    input check, the output shape and the shared part of the config. Not registered: only its
    subclasses are layers of a model.

    Inputs: ``[features, boxes]``: ``features (B, H, W, C)``; ``boxes (B, 4)`` or ``(B, K, 4)``
    (float or int, ``(y1, x1, y2, x2)``, see the module docstring).
    Output: ``(B, oh, ow, C)`` for ``(B, 4)`` boxes, ``(B, K, oh, ow, C)`` for ``(B, K, 4)``.

    Args:
        output_size: ``(oh, ow)`` or an int.
        spatial_scale: feature-map pixels per input pixel (``1 / tau`` of Jia et al. eq. 1).
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        cls = type(self).__name__
        self.output_size = pair(output_size, "output_size", cls)
        self.spatial_scale = check_scale(spatial_scale, cls)

    def _check_inputs(self, inputs):
        cls = type(self).__name__
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"{cls}: inputs must be [features (B, H, W, C), boxes (B, 4) or "
                             f"(B, K, 4)], got {type(inputs).__name__}")
        feats, boxes = inputs
        if len(feats.shape) != 4:
            raise ValueError(f"{cls}: features must be (B, H, W, C), got {tuple(feats.shape)}")
        return feats, boxes

    def compute_output_shape(self, input_shape):
        fshape, bshape = input_shape
        oh, ow = self.output_size
        if len(bshape) == 3:
            return (fshape[0], bshape[1], oh, ow, fshape[3])
        return (fshape[0], oh, ow, fshape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": list(self.output_size), "spatial_scale": self.spatial_scale})
        return config
