"""Theme (AVA challenge) embedding of Jia, Li, He 2019 §III-B.

"We turn the theme of each image into one-hot code ... the one-hot codes are firstly processed by
a fully connected layer and the dimension is reduced to 256" (Fig. 3). A fully connected layer on
a one-hot vector is a row lookup plus the bias: ``onehot(t) @ W + b = W[t] + b``, so the layer
stores ``W`` (``n_themes x dim``) and ``b`` (``dim``) and gathers instead of multiplying, which
gives the same numbers without materialising 1,398-wide one-hot vectors.
"""
from __future__ import annotations

import keras
from keras import ops

__all__ = ["ThemeEmbedding", "AVA_N_THEMES", "UNKNOWN_THEME"]

#: 1,397 AVA challenges (Jia et al. §III-B) + index 0 for an unknown theme
#: (:func:`ku.data.readers.theme_vocabulary`).
AVA_N_THEMES = 1398
#: Theme index of photos without a (known) theme.
UNKNOWN_THEME = 0

_UNKNOWN_MODES = ("zero", "learned")


@keras.saving.register_keras_serializable(package="ku")
class ThemeEmbedding(keras.layers.Layer):
    """Theme index -> ``dim``-d theme feature: the paper's one-hot x FC (Jia et al. §III-B).

    ``output = W[t] + b`` (with ``activation``, default linear: the paper names no activation
    for the theme FC), which equals ``keras.layers.Dense(dim)`` applied to ``one_hot(t,
    n_themes)``, weights and bias included.

    Unknown themes: index 0 (:data:`UNKNOWN_THEME`) is the unknown theme of
    :func:`ku.data.readers.theme_vocabulary`; indices outside ``[0, n_themes)`` are treated as 0
    as well (e.g. a challenge id that was not in the training vocabulary), so every photo gets a
    prediction.

    * ``unknown="zero"`` (default): an unknown theme is the all-zero one-hot code, i.e. the
      output is the bias ``b`` alone (row 0 of ``W`` is never used and gets no gradient). The
      model then predicts from the visual features plus an "average theme" offset learned by the
      bias.
    * ``unknown="learned"``: index 0 is an ordinary row of ``W`` (learned only when some training
      images have index 0, e.g. with theme dropout in the input pipeline).

    Input: integer indices ``(B,)`` or ``(B, 1)`` (floats are truncated).
    Output: ``(B, dim)``.

    Args:
        n_themes: rows of ``W`` including the unknown index 0 (AVA: 1,397 + 1 =
            :data:`AVA_N_THEMES`).
        dim: size of the theme feature (256 in the paper).
        unknown: ``"zero"`` or ``"learned"`` (see above).
        activation: applied to ``W[t] + b`` (default None = linear).
        kernel_initializer, bias_initializer, kernel_regularizer: as for ``Dense``.

    Example:

    ```python
    import numpy as np
    from ku.layers import ThemeEmbedding

    themes = np.array([3, 0, 1397], "int32")                 # AVA challenge indices, 0 = unknown
    theme_features = ThemeEmbedding(n_themes=1398, dim=256)(themes)  # (3, 256); unknown -> bias
    ```
    """

    def __init__(self, n_themes=AVA_N_THEMES, dim=256, unknown="zero", activation=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(n_themes, int) or n_themes < 1:
            raise ValueError(f"ThemeEmbedding: n_themes must be a positive int, got {n_themes!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"ThemeEmbedding: dim must be a positive int, got {dim!r}")
        if unknown not in _UNKNOWN_MODES:
            raise ValueError(f"ThemeEmbedding: unknown must be one of {_UNKNOWN_MODES}, got {unknown!r}")
        self.n_themes = n_themes
        self.dim = dim
        self.unknown = unknown
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(self.n_themes, self.dim),
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.bias = self.add_weight(name="bias", shape=(self.dim,), initializer=self.bias_initializer)

    def theme_indices(self, inputs):
        """Input -> ``(B,)`` int32 indices with out-of-range values mapped to 0."""
        t = ops.cast(inputs, "int32")
        if len(t.shape) == 2:
            t = ops.squeeze(t, axis=-1)
        if len(t.shape) != 1:
            raise ValueError(f"ThemeEmbedding: expected theme indices (B,) or (B, 1), got {tuple(inputs.shape)}")
        return ops.where(ops.logical_and(t >= 0, t < self.n_themes), t, ops.zeros_like(t))

    def call(self, inputs):
        t = self.theme_indices(inputs)
        rows = ops.take(self.kernel, t, axis=0)
        if self.unknown == "zero":
            rows = rows * ops.cast(t > 0, rows.dtype)[:, None]
        return self.activation(rows + self.bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update({
            "n_themes": self.n_themes, "dim": self.dim, "unknown": self.unknown,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        })
        return config
