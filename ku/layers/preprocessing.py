"""Older import path of :class:`ku.layers.ImagePreprocessing`
(:mod:`ku.layers.image_preprocessing`)."""
from ku.layers.image_preprocessing import PREPROCESSING_MODES, ImagePreprocessing

__all__ = ["ImagePreprocessing", "PREPROCESSING_MODES"]
