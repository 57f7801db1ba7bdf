"""MinSideUpscale: ku's size policy for small images, inside a Keras model.

The Inception backbones of Hosu et al. 2019 (§3.1) and Jia et al. 2019 (§III-D) need at least
75 x 75 pixels, the ResNet-101 of Murray & Gordo 2017 (§3.2) 32 x 32; below that their valid
convolutions and poolings run out of pixels, and Keras either fails ("negative dimension") or,
once the model has been traced for larger images, returns NaN or 0. This layer sits at the image
input of ku's scoring models and applies the one documented size policy (:mod:`ku.size_policy`):
an image whose shorter side is below ``min_side`` is upscaled, bilinear, aspect ratio kept, to a
shorter side of ``min_side`` (new sides ``round(side * min_side / short)``, half to even: the
same sizes and the same resize op as ``ku predict`` and the exported signatures, so the scores
agree). Images that need no upscaling pass through unchanged, so the layer changes nothing for
them, also in padded batches.

On TensorFlow the layer runs TensorFlow ops (``tf.cond``, ``tf.map_fn``; any canvas, also with
``None`` sizes in exported signatures); on every other backend (JAX, PyTorch) it runs
``keras.ops`` with static output shapes, so a model with it at its input compiles under
``jax.jit`` (see the class docstring for the canvas rule there).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ku.size_policy import MAX_ASPECT, SMALL_IMAGE_POLICIES

__all__ = ["MinSideUpscale"]

#: 2**0 .. 2**30 (int32)
_POW2 = np.array([2 ** j for j in range(31)], "int32")


def _checked(x, ok, dummy, message):
    """``x`` if ``ok`` else a failed assertion with ``message`` (gates the data, so no later op
    fails first with a less clear message)."""
    import tensorflow as tf

    def bad():
        with tf.control_dependencies([tf.debugging.Assert(tf.constant(False), message,
                                                          summarize=8)]):
            return tf.identity(dummy)

    return tf.cond(ok, lambda: tf.identity(x), bad)


def _value(x):
    """``x`` as numpy when its value is known (eager), None while it is traced (``jax.jit``,
    ``tf.function``)."""
    try:
        return ops.convert_to_numpy(x)
    except (TypeError, ValueError, NotImplementedError):  # a tracer / a symbolic tensor
        return None


def _floor_log2_ratio(b, c):
    """``floor(log2(b / c))`` of positive int32 tensors (broadcast), by integer comparisons."""
    b, c = b[..., None], c[..., None]
    above = ops.sum(ops.cast(c <= ops.floor_divide(b, _POW2[1:]), "int32"), axis=-1)
    below = ops.sum(ops.cast(b < -ops.floor_divide(-c, _POW2), "int32"), axis=-1)  # b * 2**j < c
    return above - below


def _round_ratio(a, b, c):
    """``round(a * (b / c))`` exactly as TensorFlow computes it in float64, in int32 arithmetic.

    TensorFlow rounds the quotient ``b / c`` and then the product to float64, then ``round``
    goes half to even (:meth:`MinSideUpscale._new_sizes` and its fit to a fixed canvas). JAX
    has no float64 by default, so here in integers: away from a half-integer, float64 rounds as
    the exact ``a * b / c`` does. At one (``2 * (a * b mod c) == c``) it lands on the half (then
    half to even) when the quotient's rounding error times ``a`` is at most half a unit in the
    last place of the product, and otherwise on the neighbour in the direction of that error.
    The error is ``err / c`` units in the quotient's last place, with ``err`` the remainder of
    ``b * 2**(52 - floor(log2(b / c)))`` modulo ``c``: the digits of ``b / c`` after 53 bits.

    Args:
        a, b, c: int tensors or ints that broadcast, ``b, c >= 1``; exact while
            ``4 * a * max(b, c) < 2**31`` (sides below ~20,000 px).

    Returns:
        int32 tensor of the broadcast shape.
    """
    a, b, c = (ops.cast(t, "int32") for t in (a, b, c))
    c = ops.maximum(c, 1)
    ab = a * b
    k, r = ops.floor_divide(ab, c), ops.mod(ab, c)
    g = _floor_log2_ratio(b, c)
    steps = 52 - g
    err = ops.fori_loop(0, 84, lambda i, v: ops.where(i < steps, ops.mod(2 * v, c), v),
                        ops.mod(b, c))
    up = 2 * err > c  # float64(b / c) > b / c (exactly half never happens for int32 b, c)
    err = ops.where(up, c - err, err)
    # the product's last place is 2**(f - 52), f = floor(log2(k + 1/2)); the quotient's 2**(g - 52)
    e = _floor_log2_ratio(2 * k + 1, ops.ones_like(k)) - 1 - g
    on_half = 2 * a * err <= c * ops.take(_POW2, ops.clip(e, 0, 30))
    at_half = ops.where(on_half, k + ops.mod(k, 2), k + ops.cast(up, "int32"))
    return ops.where(2 * r == c, at_half, k + ops.cast(2 * r > c, "int32"))


def _bilinear_taps(src, dst, length, limit):
    """TensorFlow's ``resize_bilinear`` taps (half-pixel centres) along one axis.

    Args:
        src, dst: (B,) int32 old and new sizes; length: output positions (static);
            limit: the input's size along the axis (static).

    Returns:
        ``(low, high, frac, inside)``: (B, length) int32 taps, float32 weights of ``high`` and
        bool ``position < dst``.
    """
    src = ops.cast(src, "float32")[:, None]
    dst = ops.cast(ops.maximum(dst, 1), "float32")[:, None]
    i = ops.cast(ops.arange(length), "float32")[None]
    v = (i + 0.5) * (src / dst) - 0.5
    lo = ops.floor(v)
    low = ops.clip(ops.cast(lo, "int32"), 0, limit - 1)
    high = ops.clip(ops.cast(ops.minimum(ops.ceil(v), src - 1.0), "int32"), 0, limit - 1)
    return low, high, v - lo, i < dst


def _resize_on_canvas(images, sizes, new, canvas):
    """Each image's top-left ``sizes[i]`` resized (bilinear, as ``tf.image.resize``) to ``new[i]``
    at the top-left of a zero canvas.

    Args:
        images: (B, H, W, C) float; sizes, new: (B, 2) int32; canvas: static ``(H', W')``.

    Returns:
        (B, H', W', C), the dtype of ``images``.
    """
    x = ops.cast(images, "float32")
    top, bottom, fy, in_y = _bilinear_taps(sizes[:, 0], new[:, 0], canvas[0], images.shape[1])
    left, right, fx, in_x = _bilinear_taps(sizes[:, 1], new[:, 1], canvas[1], images.shape[2])
    fx = fx[:, None, :, None]

    def row(idx):  # (B, H', W', C): the rows idx, interpolated along the width
        rows = ops.take_along_axis(x, idx[:, :, None, None], axis=1)
        lo = ops.take_along_axis(rows, left[:, None, :, None], axis=2)
        return lo + (ops.take_along_axis(rows, right[:, None, :, None], axis=2) - lo) * fx

    t = row(top)
    out = t + (row(bottom) - t) * fy[:, :, None, None]
    inside = ops.logical_and(in_y[:, :, None, None], in_x[:, None, :, None])
    return ops.cast(ops.where(inside, out, 0.0), images.dtype)


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

    Backends: on TensorFlow, TensorFlow ops (any canvas, ``None`` sizes in exported signatures).
    On JAX and PyTorch, ``keras.ops`` (:meth:`_call_ops`), with the same sizes (TensorFlow's
    float64 arithmetic, reproduced in int32) and the same bilinear resize; it needs static image
    / canvas sizes (always the case there). Under ``jax.jit`` (``model.predict``) the sizes of a
    padded batch are traced values, so the output canvas must be known before them: it is the
    layer's fixed canvas if it has one, else the input canvas grown to its own upscaled size
    (a 20 x 30 canvas becomes 75 x 112 for ``min_side=75``), which is the TensorFlow result for
    an image that fills its canvas (an image predicted alone). An image that would outgrow it (in
    a batch of different sizes) is upscaled as far as it fits, as on a fixed canvas. Called
    eagerly (``model(x)``, the sizes known) the canvas grows as on TensorFlow. Errors are
    ``ValueError``s there, raised while tracing for ``images``; for a padded batch under
    ``jax.jit`` nothing can be raised: an image too elongated to upscale keeps its size, and
    ``small_images="error"`` passes the batch through unchanged.

    Args:
        min_side: the backbone's minimum side (75 Inception, 32 ResNet / VGG16).
        small_images: ``"upscale"`` (default) or ``"error"`` (an image below ``min_side`` fails
            with ``InvalidArgumentError``, ``ValueError`` off TensorFlow, naming the minimum).
        max_aspect: an image that needs upscaling with ``long side > max_aspect * short side``
            fails in the same way (a 1 x 20000 strip would become 75 x 1,500,000 pixels); None:
            no limit.

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
    def _small_message(self):
        return (f"{self.name}: images must be at least {self.min_side} x {self.min_side} pixels "
                "for this model (the backbone's minimum side; small_images='error'); got (height, "
                "width)")

    def _elongated_message(self):
        return (f"{self.name}: an image below the minimum side of {self.min_side} px is too "
                f"elongated to upscale (aspect ratio > max_aspect={self.max_aspect:g}); (height, "
                "width) of the images:")

    def _new_sizes(self, sizes):
        """int32 (N, 2) sizes -> (new sizes (N, 2) int32, need (N,) bool), with the checks."""
        import tensorflow as tf

        s = tf.cast(sizes, tf.float64)
        short = tf.reduce_min(s, axis=-1)
        need = short < self.min_side
        if self.small_images == "error":
            sizes = _checked(sizes, tf.logical_not(tf.reduce_any(need)), tf.ones_like(sizes) * self.min_side, [
                self._small_message(), sizes])
            return sizes, tf.zeros_like(need)
        if self.max_aspect is not None:
            bad = tf.logical_and(need, tf.reduce_max(s, axis=-1) > self.max_aspect * short)
            sizes = _checked(sizes, tf.logical_not(tf.reduce_any(bad)), tf.ones_like(sizes) * self.min_side, [
                self._elongated_message(), sizes])
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

    # -- keras.ops (JAX, PyTorch) -----------------------------------------------------------
    def _static_size(self, height, width):
        """The new size of a static ``(height, width)``: :meth:`_new_sizes` (float64) in Python."""
        short = min(height, width)
        if short >= self.min_side:
            return height, width
        scale = max(1.0, self.min_side / max(short, 1))
        return round(height * scale), round(width * scale)

    def _check(self, sizes):
        """The TensorFlow path's errors, as ``ValueError``, for known sizes (numpy (N, 2))."""
        short, long_ = sizes.min(axis=-1), sizes.max(axis=-1)
        need = short < self.min_side
        if self.small_images == "error" and need.any():
            raise ValueError(f"{self._small_message()} {sizes.tolist()}")
        if self.max_aspect is not None and (need & (long_ > self.max_aspect * short)).any():
            raise ValueError(f"{self._elongated_message()} {sizes.tolist()}")

    def _static_hw(self, images):
        hw = tuple(images.shape[1:3])
        if None in hw:
            raise ValueError(f"{self.name}: the keras.ops implementation needs a static image "
                             f"size, got {tuple(images.shape)}")
        return hw

    def _one_size_ops(self, images):
        height, width = self._static_hw(images)
        if min(height, width) >= self.min_side:
            return images
        self._check(np.array([[height, width]]))
        new = self._static_size(height, width)
        return ops.cast(ops.image.resize(images, new, interpolation="bilinear"), images.dtype)

    def _ops_sizes(self, sizes, hw, known=None):
        """New sizes on the keras.ops path.

        Args:
            sizes: (B, 2) int32 valid sizes; hw: the static input canvas ``(H, W)``;
            known: ``sizes`` as numpy when known (eager), else None (traced).

        Returns:
            ``(new, need, canvas)``: (B, 2) int32 new sizes, (B,) bool "is upscaled", and the
            static output canvas ``(H', W')`` (class docstring).
        """
        short = ops.min(sizes, axis=-1)
        need = short < self.min_side
        if self.max_aspect is not None:  # (traced sizes: no error possible, the image keeps its size)
            long_ = ops.cast(ops.max(sizes, axis=-1), "float32")
            need = ops.logical_and(need, long_ <= self.max_aspect * ops.cast(short, "float32"))
        new = ops.where(need[:, None],
                        _round_ratio(sizes, self.min_side, ops.maximum(short, 1)[:, None]), sizes)
        if getattr(self, "_canvas", None) is not None:  # a fixed canvas
            canvas = tuple(self._canvas)
        elif known is not None:  # sizes known: grown to hold every image, as on TensorFlow (the
            # sizes in Python float64, as there; ``new`` may be traced even so, e.g. constant
            # sizes inside jax.jit)
            grown = [self._static_size(int(h), int(w)) for h, w in known if min(h, w) < self.min_side]
            canvas = (max([hw[0]] + [g[0] for g in grown]), max([hw[1]] + [g[1] for g in grown]))
        else:  # traced: grown to the canvas' own upscaled size
            canvas = tuple(max(c, n) for c, n in zip(hw, self._static_size(*hw)))
        # upscale what fits the canvas: new * min(1, canvas_h / new_h, canvas_w / new_w), as
        # _padded on a fixed canvas (a no-op for a canvas grown to hold every image)
        by_height = canvas[0] * new[:, 1] <= canvas[1] * new[:, 0]
        c_fit = ops.where(by_height, canvas[0], canvas[1])[:, None]
        n_fit = ops.where(by_height, new[:, 0], new[:, 1])[:, None]
        shrunk = ops.where(c_fit < n_fit, _round_ratio(new, c_fit, n_fit), new)
        new = ops.where(need[:, None], ops.maximum(ops.maximum(shrunk, sizes), 1), sizes)
        return new, need, canvas

    def _padded_ops(self, images, sizes):
        hw = self._static_hw(images)
        sizes = ops.cast(sizes, "int32")
        known = _value(sizes)  # None under jax.jit
        if known is not None:
            self._check(known)
        if self.small_images == "error":
            return images, sizes
        new, need, canvas = self._ops_sizes(sizes, hw, known)

        def unchanged():
            return ops.pad(images, [[0, 0], [0, canvas[0] - hw[0]], [0, canvas[1] - hw[1]], [0, 0]])

        def upscaled():  # every image cropped to its size, the small ones resized
            return _resize_on_canvas(images, sizes, new, canvas)

        if known is not None:
            return (upscaled() if (known.min(axis=-1) < self.min_side).any() else unchanged()), new
        return ops.cond(ops.any(need), upscaled, unchanged), new

    def _call_ops(self, inputs):
        """:meth:`call` in ``keras.ops`` (the implementation on every backend but TensorFlow)."""
        if isinstance(inputs, (list, tuple)):
            images, sizes = inputs
            return list(self._padded_ops(images, sizes))
        return self._one_size_ops(inputs)

    def call(self, inputs):
        if keras.backend.backend() == "tensorflow":
            if isinstance(inputs, (list, tuple)):
                images, sizes = inputs
                return list(self._padded(images, sizes))
            return self._one_size(inputs)
        return self._call_ops(inputs)

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
