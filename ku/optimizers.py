"""Keras 3 optimizers with per-layer learning-rate multipliers.

Two of the papers train new layers faster than pre-trained ones:

* Murray & Gordo 2017 §4.1 (APM-m): the new fully connected layers at lr 1e-3, the others at 1e-4
  (Adam in ku: :class:`LayerwiseAdam` with ``{"branch_fc": 10.0}`` on a base rate of 1e-4);
* Jia, Li, He 2019 §IV-B: lr 1e-3 on the convolutional layers and 10x on the fully connected
  layers, SGD with momentum 0.9 and weight decay 1e-4 (:class:`LayerwiseSGD`).

Keras 3 has no per-variable learning rates (``tensorflow-addons``' ``MultiOptimizer`` is
Keras-2 only), so these subclasses scale the learning rate that the base optimizer passes to
``update_step`` for each variable. A variable's factor is the value of the first regular
expression in ``lr_multipliers`` that ``re.search`` finds in the variable's ``path`` (e.g.
``"apm_fc1/kernel"``; Keras paths are ``<layer name>/<weight name>``); unmatched variables keep
factor 1. The factors are fixed when the optimizer is built (its first ``apply``), so they work
under ``tf.distribute`` strategies and learning-rate schedules alike (the schedule's value is
multiplied).
"""
from __future__ import annotations

import re
from typing import Mapping

import keras
from keras import ops

__all__ = ["LayerwiseAdam", "LayerwiseSGD", "lr_factors"]


def _check_multipliers(multipliers, who: str) -> dict:
    if multipliers is None:
        return {}
    if not isinstance(multipliers, Mapping):
        raise TypeError(f"{who}: lr_multipliers must be a dict {{regex: factor}}, got "
                        f"{type(multipliers).__name__}")
    out = {}
    for pattern, factor in multipliers.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"{who}: lr_multipliers key {pattern!r} is not a regular expression: {e}") from None
        factor = float(factor)
        if not factor >= 0:
            raise ValueError(f"{who}: lr_multipliers[{pattern!r}] must be >= 0, got {factor}")
        out[str(pattern)] = factor
    return out


def lr_factors(variables, lr_multipliers: Mapping) -> list:
    """The learning-rate factor of each variable: the first matching regex's value, else 1.

    Args:
        variables: Keras variables (anything with a ``path``, e.g. ``model.trainable_variables``).
        lr_multipliers: ``{regex: factor}``, searched in order in each variable's ``path``.
    Returns:
        list of floats, one per variable.
    """
    compiled = [(re.compile(p), float(f)) for p, f in lr_multipliers.items()]
    factors = []
    for v in variables:
        path = getattr(v, "path", None) or getattr(v, "name", "")
        factors.append(next((f for rx, f in compiled if rx.search(path)), 1.0))
    return factors


class _LayerwiseMixin:
    """Scales ``learning_rate`` per variable in ``update_step`` (see the module docstring)."""

    def _init_layerwise(self, lr_multipliers):
        self.lr_multipliers = _check_multipliers(lr_multipliers, type(self).__name__)
        self._lr_factors = None

    def build(self, var_list):
        super().build(var_list)
        self._lr_factors = lr_factors(var_list, self.lr_multipliers)

    def _scaled(self, variable, learning_rate):
        if not self.lr_multipliers or self._lr_factors is None:
            return learning_rate
        factor = self._lr_factors[self._get_variable_index(variable)]
        if factor == 1.0:
            return learning_rate
        return ops.multiply(ops.cast(learning_rate, variable.dtype), ops.cast(factor, variable.dtype))

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = dict(self.lr_multipliers)
        return config


@keras.saving.register_keras_serializable(package="ku")
class LayerwiseAdam(_LayerwiseMixin, keras.optimizers.Adam):
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


@keras.saving.register_keras_serializable(package="ku")
class LayerwiseSGD(_LayerwiseMixin, keras.optimizers.SGD):
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
