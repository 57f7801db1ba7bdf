"""Image decoding inside the training ``tf.data`` pipelines (graph ops).

:func:`decode_image_uint8` is the one decoder of :mod:`ku.data.aspect_batches` (APM, whole images)
and :mod:`ku.data.canvas` (theme-ROI canvases): ``tf.io.decode_image`` with TensorFlow's defaults
(JPEG with libjpeg's fast integer DCT; GIF's first frame; grey -> RGB; alpha dropped; 16-bit PNG
-> 8 bit). Exported models decode with :func:`ku.export.decode_image_uint8_tf` instead, which
equals OpenCV's reading (:func:`ku.data.images.read_image`, used for MLSP feature extraction) to
the grey level: moving the training pipelines to it would change their inputs by up to a few grey
levels per pixel (and the numbers measured on them), so it is a separate, deliberate choice.
"""
from __future__ import annotations

__all__ = ["decode_image_uint8"]


def decode_image_uint8(data, channels: int = 3):
    """Encoded image bytes (scalar ``tf.string``) -> uint8 ``(H, W, channels)`` tensor."""
    import tensorflow as tf

    img = tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)
    img.set_shape([None, None, channels])
    return img
