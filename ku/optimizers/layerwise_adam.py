"""Adam with per-layer learning-rate multipliers (Murray & Gordo 2017 §4.1, APM-m)."""
from __future__ import annotations

import keras

from ku.optimizers._layerwise import LayerwiseMixin

__all__ = ["LayerwiseAdam"]


@keras.saving.register_keras_serializable(package="ku")
class LayerwiseAdam(LayerwiseMixin, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with per-layer learning-rate multipliers.

    Murray & Gordo 2017 §4.1 (APM-m): ``LayerwiseAdam(1e-4, lr_multipliers={"max_branch": 10.0})``
    trains the new branch's layers at 1e-3 and everything else at 1e-4.

    Args:
        learning_rate: base rate (float or schedule).
        lr_multipliers: ``{regex: factor}`` matched against variable paths (first match wins).
        **kwargs: ``keras.optimizers.Adam`` arguments (betas, epsilon, clipnorm, ...).
    """

    def __init__(self, learning_rate=1e-3, lr_multipliers=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._init_layerwise(lr_multipliers)

    def update_step(self, gradient, variable, learning_rate):
        return super().update_step(gradient, variable, self._scaled(variable, learning_rate))
