"""The boxes of images at the top-left of a padded canvas, for the ROI layers (Jia, Li, He 2019
§III-A: "the coordinates of one corner is fixed to (0, 0), only its diagonal coordinates need
to be adjusted according to the image size")."""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["ImageBoxes", "image_boxes"]


def image_boxes(sizes, convention: str = "pixels", dtype="float32"):
    """Boxes of images anchored at the top-left of a canvas, from their sizes.

    Args:
        sizes: ``(B, 2)`` (height, width) of each image (tensor or array, any numeric dtype).
        convention: ``"pixels"``: inclusive pixel indices ``(0, 0, h - 1, w - 1)`` (Fast R-CNN;
            :class:`~ku.layers.RoiPooling2D`, :class:`~ku.layers.RoiAlign2D` with
            ``aligned=False``); ``"continuous"``:
            ``(0, 0, h, w)`` (:class:`~ku.layers.RoiAlign2D` with ``aligned=True``).
        dtype: of the result.
    Returns:
        ``(B, 4)`` boxes ``(y1, x1, y2, x2)``.
    """
    if convention not in ("pixels", "continuous"):
        raise ValueError(f"image_boxes: convention must be 'pixels' or 'continuous', got {convention!r}")
    s = ops.cast(sizes, "float32")
    if convention == "pixels":
        s = s - 1.0
    zeros = ops.zeros_like(s[:, :1])
    return ops.cast(ops.concatenate([zeros, zeros, s[:, :1], s[:, 1:2]], axis=-1), dtype)


@keras.saving.register_keras_serializable(package="ku")
class ImageBoxes(keras.layers.Layer):
    """Valid sizes ``(B, 2)`` (height, width) of images at the top-left of a canvas -> their boxes
    ``(B, 4)`` ``(y1, x1, y2, x2)`` for :class:`~ku.layers.RoiPooling2D` /
    :class:`~ku.layers.RoiAlign2D`
    (:func:`image_boxes`; Jia et al. §III-A: "the coordinates of one corner is fixed to (0, 0),
    only its diagonal coordinates need to be adjusted according to the image size").

    Input: ``(B, 2)`` sizes (any numeric dtype). Output: ``(B, 4)`` float32, also under a
    mixed-precision dtype policy (the ROI layers cast boxes to float32 anyway).

    Args:
        convention: ``"pixels"`` (inclusive indices, ``(0, 0, h - 1, w - 1)``) or
            ``"continuous"`` (``(0, 0, h, w)``).

    Example:

    ```python
    import numpy as np
    from ku.layers import ImageBoxes

    sizes = np.array([[480, 640]], "int32")
    ImageBoxes("pixels")(sizes)      # [[0, 0, 479, 639]], float32
    ImageBoxes("continuous")(sizes)  # [[0, 0, 480, 640]]
    ```
    """

    def __init__(self, convention="pixels", **kwargs):
        super().__init__(**kwargs)
        if convention not in ("pixels", "continuous"):
            raise ValueError(f"ImageBoxes: convention must be 'pixels' or 'continuous', got {convention!r}")
        self.convention = convention

    def call(self, sizes):
        return image_boxes(sizes, self.convention)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4)

    def compute_output_spec(self, sizes):
        # float32 boxes under every dtype policy, as ``call`` returns them (the ROI layers
        # compute box coordinates in float32)
        return keras.KerasTensor((sizes.shape[0], 4), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config["convention"] = self.convention
        return config
