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

Layout: :class:`LayerwiseAdam` in :mod:`ku.optimizers.layerwise_adam`, :class:`LayerwiseSGD` in
:mod:`ku.optimizers.layerwise_sgd`, the shared part in the private ``ku.optimizers._layerwise``.
Import them from ``ku.optimizers``.
"""
from __future__ import annotations

from ku.optimizers._layerwise import lr_factors
from ku.optimizers.layerwise_adam import LayerwiseAdam
from ku.optimizers.layerwise_sgd import LayerwiseSGD

__all__ = ["LayerwiseAdam", "LayerwiseSGD", "lr_factors"]
