"""Per-channel standardisation of features with fixed statistics: the optional first layer of
ku's heads (not in the papers; :func:`ku.models.heads.adapt_head_input` sets it from the training
features)."""
from __future__ import annotations

import keras
import numpy as np

__all__ = ["FeatureStandardization"]


@keras.saving.register_keras_serializable(package="ku")
class FeatureStandardization(keras.layers.Layer):
    """Per-channel standardisation with fixed statistics: ``(x - mean) * inv_std``.

    The first layer of a head built with ``input_normalization=True`` (named ``input_norm``).
    It has two non-trainable weights of shape ``(C,)``, ``mean`` (zeros) and ``inv_std`` (ones),
    so an un-adapted layer is the identity and the head is exactly the paper's (Hosu et al. 2019
    §3.2). :func:`ku.models.heads.adapt_head_input` sets them from the training split's features
    before training; they are saved with the model (``.keras``, ``.weights.h5``) and never trained.

    **Why** (not in the paper, not in the released ava-mlsp code, which feeds the raw features
    to the first ``Dense``): the heads' first layers assume inputs of order one, as ImageNet
    MLSP features are (ReLU outputs, mostly in [0, 10]); features of other backbones need not
    be: a randomly initialised Inception backbone gives activations of order 1e-5. Single-1FC then needs
    weights ~1e5 times larger than its initialisation, far out of reach of Adam at lr 1e-4, and in
    Single-3FC / Pool-3FC the first ``BatchNormalization`` normalises such inputs during training
    but, with momentum 0.99 and few steps, its moving variance is still near its initial 1.0 at
    inference, so the head predicts a constant. Standardising each channel with the training
    statistics removes both failure modes and is (up to float rounding) the identity on features
    that are already standardised.

    Two guards against amplifying noise (a randomly initialised backbone's float16 features have
    channels whose training deviation is a few float16 steps): a channel that is constant on the
    training data (standard deviation 0, or below 1e-6 of its mean's magnitude, e.g. a dead ReLU)
    gets ``inv_std = 0`` (it carries no information in training, and a deviation at test time
    is ignored instead of amplified); the other deviations are raised to at least ``min_std``
    (default 1e-2) times their root mean square over the channels, so no channel is scaled
    more than 100 times as much as a typical one (measured on Inception-v3 narrow MLSP features
    of a random backbone, 2026-11-29: without this floor, test features reached 1,137 standard
    deviations; with it, 14). Features that are already standardised (every deviation 1) are
    left unchanged.

    Input ``(batch, ..., C)`` (any rank, channels last); output the same shape.

    Example:

    ```python
    import numpy as np
    from ku.layers import FeatureStandardization

    train = np.random.normal(3.0, 0.01, (100, 8)).astype("float32")  # badly scaled features
    norm = FeatureStandardization()
    norm.build(train.shape)
    norm.set_statistics(train.mean(axis=0), train.std(axis=0))
    z = norm(train)  # (100, 8), every channel mean 0 and deviation 1 on the training features
    ```
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"FeatureStandardization {self.name!r}: the channel (last) dimension must "
                             f"be known, got input shape {tuple(input_shape)}")
        self.mean = self.add_weight(shape=(int(channels),), initializer="zeros", trainable=False,
                                    name="mean")
        self.inv_std = self.add_weight(shape=(int(channels),), initializer="ones", trainable=False,
                                       name="inv_std")
        super().build(input_shape)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        mean = keras.ops.cast(self.mean, self.compute_dtype)
        inv_std = keras.ops.cast(self.inv_std, self.compute_dtype)
        return (x - mean) * inv_std

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def set_statistics(self, mean, std, min_std: float = 1e-2, scale: float = 1.0):
        """Set the statistics: ``mean`` and ``std`` are ``(C,)`` arrays (``std >= 0``); ``min_std``:
        the floor of the deviations as a fraction of their root mean square (class docstring);
        ``scale``: the standard deviation of every output channel (default 1). A layer that
        feeds the paper's ``Dense`` layers in place of an L2-normalised vector (APM, theme-ROI)
        uses ``1 / sqrt(C)``, so that its output has a squared norm of 1 on average, like the
        vector those layers and their learning rates were made for."""
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        channels = int(self.mean.shape[0])
        for what, a in (("mean", mean), ("std", std)):
            if a.shape != (channels,):
                raise ValueError(f"FeatureStandardization {self.name!r}: {what} must have shape "
                                 f"({channels},), got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"FeatureStandardization {self.name!r}: {what} has "
                                 f"{int(np.sum(~np.isfinite(a)))} non-finite values")
        if np.any(std < 0):
            raise ValueError(f"FeatureStandardization {self.name!r}: std must be >= 0")
        if not 0 <= float(min_std) < 1:
            raise ValueError(f"FeatureStandardization {self.name!r}: min_std must be in [0, 1), got {min_std!r}")
        if not (np.isfinite(scale) and float(scale) > 0):
            raise ValueError(f"FeatureStandardization {self.name!r}: scale must be positive, got {scale!r}")
        constant = (std == 0) | (std <= 1e-6 * np.abs(mean))
        floor = float(min_std) * np.sqrt(np.mean(np.square(std)))
        inv_std = np.where(constant, 0.0, float(scale) / np.maximum(np.where(constant, 1.0, std), floor))
        self.mean.assign(mean.astype("float32"))
        self.inv_std.assign(inv_std.astype("float32"))

    def reset(self):
        """Back to the identity (``mean = 0``, ``inv_std = 1``)."""
        self.mean.assign(np.zeros(self.mean.shape, "float32"))
        self.inv_std.assign(np.ones(self.inv_std.shape, "float32"))
