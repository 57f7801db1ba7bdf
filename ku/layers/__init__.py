"""Keras layers of ku (all registered for ``.keras`` serialisation under the package "ku")."""
from ku.layers.area_pooling import AreaPooling2D, area_weights
from ku.layers.min_side import MinSideUpscale
from ku.layers.preprocessing import ImagePreprocessing
from ku.layers.roi_pooling import ImageBoxes, RoiAlign2D, RoiPooling2D, image_boxes, roi_bin_bounds
from ku.layers.spp import SpatialPyramidPooling, spp_bin_bounds
from ku.layers.theme_embedding import ThemeEmbedding

__all__ = [
    "AreaPooling2D",
    "ImageBoxes",
    "ImagePreprocessing",
    "MinSideUpscale",
    "RoiAlign2D",
    "RoiPooling2D",
    "SpatialPyramidPooling",
    "ThemeEmbedding",
    "area_weights",
    "image_boxes",
    "roi_bin_bounds",
    "spp_bin_bounds",
]
