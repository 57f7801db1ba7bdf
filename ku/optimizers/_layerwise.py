"""What the layer-wise optimizers share: the ``lr_multipliers`` check, the factor of each
variable (:func:`lr_factors`) and the mixin that scales the learning rate per variable (see
:mod:`ku.optimizers`)."""
from __future__ import annotations

import re
from typing import Mapping

from keras import ops


def check_multipliers(multipliers, who: str) -> dict:
    """``lr_multipliers`` as ``{regex: float factor >= 0}``; TypeError / ValueError name ``who``."""
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


class LayerwiseMixin:
    """Scales ``learning_rate`` per variable in ``update_step`` (see :mod:`ku.optimizers`)."""

    def _init_layerwise(self, lr_multipliers):
        self.lr_multipliers = check_multipliers(lr_multipliers, type(self).__name__)
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
