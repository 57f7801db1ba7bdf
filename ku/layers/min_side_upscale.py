"""MinSideUpscale: ku's size policy for small images, inside a Keras model.

The Inception backbones of Hosu et al. 2019 (§3.1) and Jia et al. 2019 (§III-D) need at least
75 x 75 pixels, the ResNet-101 of Murray & Gordo 2017 (§3.2) 32 x 32; below that their valid
convolutions and poolings run out of pixels, and Keras either fails ("negative dimension") or,
once the model has been traced for larger images, returns NaN or 0. This layer sits at the image
input of ku's scoring models and applies the one documented size policy (:mod:`ku.size_policy`):
an image whose shorter side is below ``min_side`` is upscaled, bilinear, aspect ratio kept, to a
shorter side of ``min_side`` (new sides ``round(side * min_side / short)``, half to even: the
same sizes and the same resize op as ``ku predict`` and the exported signatures, so the scores
agree). Images that need no upscaling pass through unchanged (``tf.cond``), so the layer changes
nothing for them, also in padded batches.
"""
from __future__ import annotations

import keras

from ku.size_policy import MAX_ASPECT, SMALL_IMAGE_POLICIES

__all__ = ["MinSideUpscale"]


def _checked(x, ok, dummy, message):
    """``x`` if ``ok`` else a failed assertion with ``message`` (gates the data, so no later op
    fails first with a less clear message)."""
    import tensorflow as tf

    def bad():
        with tf.control_dependencies([tf.debugging.Assert(tf.constant(False), message,
                                                          summarize=8)]):
            return tf.identity(dummy)

    return tf.cond(ok, lambda: tf.identity(x), bad)


@keras.saving.register_keras_serializable(package="ku")
class MinSideUpscale(keras.layers.Layer):
    """Upscale images below the model's minimum side (ku's size policy, :mod:`ku.size_policy`).

    Inputs, one of:

    * ``images`` ``(B, H, W, C)``: a batch of same-size images; when ``min(H, W) < min_side`` the
      whole batch is resized to ``round((H, W) * min_side / min(H, W))``.
    * ``[images, valid_sizes]``: a zero-padded canvas ``(B, H, W, C)`` with each image at the
      top-left and its ``(height, width)`` in ``valid_sizes`` ``(B, 2)`` int (APM, theme-ROI).
      Each image below the minimum is cropped, upscaled and put back at the top-left of a canvas
      grown to hold it (a static canvas keeps its size: the upscale is then limited to what fits,
      as the theme-ROI canvas pipeline scales large images down to fit). Images that need no
      upscaling keep their pixels and valid size.

    Outputs: ``images`` (float, the input's dtype) or ``[images, valid_sizes]`` (int32).

    Args:
        min_side: the backbone's minimum side (75 Inception, 32 ResNet / VGG16).
        small_images: ``"upscale"`` (default) or ``"error"`` (an image below ``min_side`` fails
            with ``InvalidArgumentError`` naming the minimum).
        max_aspect: an image that needs upscaling with ``long side > max_aspect * short side``
            fails with ``InvalidArgumentError`` (a 1 x 20000 strip would become 75 x 1,500,000
            pixels); None: no limit.

    Example:

    ```python
    import numpy as np
    from ku.layers import MinSideUpscale

    small = np.random.uniform(0, 255, (1, 40, 60, 3)).astype("float32")
    big = MinSideUpscale(min_side=75)(small)  # (1, 75, 112, 3): shorter side 75, aspect ratio kept
    ```
    """

    def __init__(self, min_side, small_images="upscale", max_aspect=MAX_ASPECT, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(min_side, int) or isinstance(min_side, bool) or min_side < 1:
            raise ValueError(f"MinSideUpscale: min_side must be a positive int, got {min_side!r}")
        if small_images not in SMALL_IMAGE_POLICIES:
            raise ValueError(f"MinSideUpscale: small_images must be one of {SMALL_IMAGE_POLICIES}, "
                             f"got {small_images!r}")
        if max_aspect is not None and not float(max_aspect) >= 1.0:
            raise ValueError(f"MinSideUpscale: max_aspect must be >= 1 or None, got {max_aspect!r}")
        self.min_side = int(min_side)
        self.small_images = small_images
        self.max_aspect = None if max_aspect is None else float(max_aspect)

    def build(self, input_shape):
        # a fixed canvas is what the model declares (at trace time every shape is concrete)
        img = input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape
        self._canvas = (tuple(img[1:3]) if isinstance(input_shape[0], (list, tuple))
                        and None not in tuple(img[1:3]) else None)
        super().build(input_shape)

    # -- sizes -----------------------------------------------------------------------------
    def _new_sizes(self, sizes):
        """int32 (N, 2) sizes -> (new sizes (N, 2) int32, need (N,) bool), with the checks."""
        import tensorflow as tf

        s = tf.cast(sizes, tf.float64)
        short = tf.reduce_min(s, axis=-1)
        need = short < self.min_side
        if self.small_images == "error":
            sizes = _checked(sizes, tf.logical_not(tf.reduce_any(need)), tf.ones_like(sizes) * self.min_side, [
                f"{self.name}: images must be at least {self.min_side} x {self.min_side} pixels for "
                "this model (the backbone's minimum side; small_images='error'); got (height, "
                "width)", sizes])
            return sizes, tf.zeros_like(need)
        if self.max_aspect is not None:
            bad = tf.logical_and(need, tf.reduce_max(s, axis=-1) > self.max_aspect * short)
            sizes = _checked(sizes, tf.logical_not(tf.reduce_any(bad)), tf.ones_like(sizes) * self.min_side, [
                f"{self.name}: an image below the minimum side of {self.min_side} px is too "
                f"elongated to upscale (aspect ratio > max_aspect={self.max_aspect:g}); (height, "
                "width) of the images:", sizes])
            s = tf.cast(sizes, tf.float64)
            short = tf.reduce_min(s, axis=-1)
        one = tf.constant(1.0, tf.float64)
        scale = tf.maximum(one, tf.constant(float(self.min_side), tf.float64) / tf.maximum(short, one))
        return tf.cast(tf.round(s * scale[:, None]), tf.int32), need

    def _one_size(self, images):
        import tensorflow as tf

        static = images.shape[1:3]
        if None not in static and min(static) >= self.min_side:
            return images
        hw = tf.shape(images)[1:3]
        new, need = self._new_sizes(hw[None])
        return tf.cond(need[0], lambda: tf.cast(tf.image.resize(images, new[0], method="bilinear"),
                                                images.dtype),
                       lambda: tf.identity(images))

    def _padded(self, images, sizes):
        import tensorflow as tf

        sizes = tf.cast(sizes, tf.int32)
        new, need = self._new_sizes(sizes)
        static = getattr(self, "_canvas", None)
        if static is not None:  # a fixed canvas: upscale what fits
            fit = tf.minimum(tf.cast(static[0], tf.float64) / tf.cast(new[:, 0], tf.float64),
                             tf.cast(static[1], tf.float64) / tf.cast(new[:, 1], tf.float64))
            shrunk = tf.cast(tf.round(tf.cast(new, tf.float64) * tf.minimum(fit, 1.0)[:, None]),
                             tf.int32)
            new = tf.where(need[:, None], tf.maximum(tf.maximum(shrunk, sizes), 1), sizes)
        canvas = tf.maximum(tf.shape(images)[1:3], tf.reduce_max(new, axis=0))

        def one(args):
            img, s, n = args
            crop = img[:s[0], :s[1]]
            out = tf.cond(tf.reduce_all(tf.equal(s, n)), lambda: tf.identity(crop),
                          lambda: tf.cast(tf.image.resize(crop, n, method="bilinear"), img.dtype))
            return tf.image.pad_to_bounding_box(out, 0, 0, canvas[0], canvas[1])

        def upscaled():
            out = tf.map_fn(one, (images, sizes, new),
                            fn_output_signature=tf.TensorSpec([None, None, images.shape[-1]],
                                                              images.dtype))
            return out, new

        out, out_sizes = tf.cond(tf.reduce_any(need), upscaled,
                                 lambda: (tf.identity(images), tf.identity(sizes)))
        out.set_shape([images.shape[0]] + (list(static) if static else [None, None])
                      + [images.shape[-1]])
        return out, out_sizes

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            images, sizes = inputs
            return list(self._padded(images, sizes))
        return self._one_size(inputs)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            img, sizes = input_shape
            return [tuple(img), tuple(sizes)]
        s = tuple(input_shape)
        return (s[0], None, None, s[-1])

    def compute_output_spec(self, inputs):
        if isinstance(inputs, (list, tuple)):
            images, sizes = inputs
            return [keras.KerasTensor(images.shape, images.dtype),
                    keras.KerasTensor(sizes.shape, "int32")]
        s = inputs.shape
        return keras.KerasTensor((s[0], None, None, s[-1]), inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(min_side=self.min_side, small_images=self.small_images,
                      max_aspect=self.max_aspect)
        return config
