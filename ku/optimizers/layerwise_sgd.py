"""SGD with momentum, per-layer learning-rate multipliers and coupled (L2) weight decay (Jia, Li,
He 2019 §IV-B)."""
from __future__ import annotations

import keras
from keras import ops

from ku.optimizers._layerwise import LayerwiseMixin

__all__ = ["LayerwiseSGD"]


@keras.saving.register_keras_serializable(package="ku")
class LayerwiseSGD(LayerwiseMixin, keras.optimizers.SGD):
    """SGD with momentum, per-layer learning-rate multipliers and coupled (L2) weight decay.

    Jia, Li, He 2019 §IV-B: ``LayerwiseSGD(1e-3, momentum=0.9, weight_decay=1e-4,
    lr_multipliers={"theme_|distribution": 10.0})``.

    Weight decay: with ``decoupled_weight_decay=False`` (default) it is added to the gradient,
    ``g + weight_decay * w``, before momentum, and so scaled by each variable's learning rate, as
    in Caffe and ``torch.optim.SGD`` that the papers used. ``True`` uses Keras' decoupled decay
    (``w -= lr * weight_decay * w`` with the base rate).

    Args:
        learning_rate: base rate (float or schedule).
        momentum: momentum (0.9 in Jia IV-B and Murray 3.4).
        weight_decay: decay factor or None.
        lr_multipliers: ``{regex: factor}`` matched against variable paths (first match wins).
        decoupled_weight_decay: see above.
        **kwargs: other ``keras.optimizers.SGD`` arguments (nesterov, clipnorm, ...).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, weight_decay=None, lr_multipliers=None,
                 decoupled_weight_decay=False, **kwargs):
        decoupled = bool(decoupled_weight_decay)
        super().__init__(learning_rate=learning_rate, momentum=momentum,
                         weight_decay=weight_decay if decoupled else None, **kwargs)
        self.decoupled_weight_decay = decoupled
        self.l2_weight_decay = None if (weight_decay is None or decoupled) else float(weight_decay)
        self._init_layerwise(lr_multipliers)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2_weight_decay:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2_weight_decay, variable.dtype),
                                                      variable))
        return super().update_step(gradient, variable, self._scaled(variable, learning_rate))

    def get_config(self):
        config = super().get_config()
        config["decoupled_weight_decay"] = self.decoupled_weight_decay
        if not self.decoupled_weight_decay:
            config["weight_decay"] = self.l2_weight_decay
        return config
