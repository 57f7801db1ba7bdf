"""Older import path of :class:`ku.layers.AreaPooling2D` (:mod:`ku.layers.area_pooling_2d`)."""
from ku.layers.area_pooling_2d import AreaPooling2D, area_weights

__all__ = ["AreaPooling2D", "area_weights"]
