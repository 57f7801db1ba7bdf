"""ImageNet input normalisation as a Keras layer, so that every ku model takes 0..255 RGB.

The released MLSP code applied ``keras.applications.<net>.preprocess_input`` outside the model
(``docs/released_code.md`` §4: InceptionResNetV2 "tf" mode, x / 127.5 - 1, at full original
resolution). Putting the same arithmetic inside the graph keeps exported models self-contained.
"""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["ImagePreprocessing", "PREPROCESSING_MODES"]

# Constants exactly as in keras/src/applications/imagenet_utils.py (_preprocess_*_input).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

#: Supported modes and the keras.applications networks that use them.
PREPROCESSING_MODES = {
    "tf": "x / 127.5 - 1 (InceptionV3, InceptionResNetV2, Xception, MobileNet)",
    "caffe": "RGB -> BGR, minus ImageNet BGR means, no scaling (VGG16/19, ResNet50/101/152)",
    "torch": "x / 255, minus ImageNet RGB means, divided by RGB stds (DenseNet)",
}


@keras.saving.register_keras_serializable(package="ku")
class ImagePreprocessing(keras.layers.Layer):
    """Map RGB images in 0..255 to a keras.applications backbone's expected input.

    Bit-for-bit the same arithmetic (same operation order, float32 constants) as
    ``keras.applications.imagenet_utils.preprocess_input`` with channels-last data:

    * ``"tf"``: ``x / 127.5 - 1`` (InceptionV3 / InceptionResNetV2, used by Hosu et al. 2019 §3.1);
    * ``"caffe"``: reverse the channel axis (RGB -> BGR), then subtract the ImageNet BGR means
      ``(103.939, 116.779, 123.68)`` (VGG16, ResNet50/101 in keras.applications);
    * ``"torch"``: ``x / 255``, subtract ``(0.485, 0.456, 0.406)``, divide by
      ``(0.229, 0.224, 0.225)`` (DenseNet).

    Integer inputs (e.g. uint8) are cast to the layer's compute dtype first.

    Input shape: ``(..., 3)`` RGB, values 0..255. Output shape: same, float.

    Args:
        mode: ``"tf"``, ``"caffe"`` or ``"torch"``.

    Example:

    ```python
    import numpy as np
    from ku.layers import ImagePreprocessing

    rgb = np.random.uniform(0, 255, (2, 8, 8, 3)).astype("float32")  # 0..255 RGB
    x = ImagePreprocessing("tf")(rgb)  # rgb / 127.5 - 1, as inception_v3.preprocess_input
    ```
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"ImagePreprocessing: mode must be one of {sorted(PREPROCESSING_MODES)}, "
                f"got {mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        x = x / 255.0
        x = x - ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
        return x / ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
