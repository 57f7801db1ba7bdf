"""Keras layers of ku (all registered for ``.keras`` serialisation under the package "ku")."""
from ku.layers.area_pooling import AreaPooling2D, area_weights
from ku.layers.preprocessing import ImagePreprocessing

__all__ = ["AreaPooling2D", "ImagePreprocessing", "area_weights"]
