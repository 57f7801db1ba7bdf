"""Keras layers of ku, one public layer per module named after it (``AreaPooling2D`` in
``ku/layers/area_pooling_2d.py``), all registered for ``.keras`` serialisation under the package
"ku". Import them from here: ``from ku.layers import RoiPooling2D``.

Older module paths (``ku.layers.roi_pooling``, ``ku.layers.spp``, ``ku.layers.area_pooling``,
``ku.layers.min_side``, ``ku.layers.preprocessing``) still import, as re-exports.
"""
from ku.layers.area_pooling_2d import AreaPooling2D, area_weights
from ku.layers.distribution_mean import DistributionMean
from ku.layers.feature_standardization import FeatureStandardization
from ku.layers.image_boxes import ImageBoxes, image_boxes
from ku.layers.image_preprocessing import PREPROCESSING_MODES, ImagePreprocessing
from ku.layers.l1_normalization import L1Normalization
from ku.layers.map_valid_size import MapValidSize
from ku.layers.mask_aware_average_pooling_2d import MaskAwareAveragePooling2D
from ku.layers.min_side_upscale import MinSideUpscale
from ku.layers.roi_align_2d import RoiAlign2D
from ku.layers.roi_pooling_2d import RoiPooling2D, roi_bin_bounds
from ku.layers.spatial_pyramid_pooling import SPP_MODES, SpatialPyramidPooling, spp_bin_bounds
from ku.layers.split_features import SplitFeatures
from ku.layers.theme_embedding import AVA_N_THEMES, UNKNOWN_THEME, ThemeEmbedding
from ku.layers.valid_region_mask import ValidRegionMask, valid_mask

__all__ = [
    "AreaPooling2D",
    "DistributionMean",
    "FeatureStandardization",
    "ImageBoxes",
    "ImagePreprocessing",
    "L1Normalization",
    "MapValidSize",
    "MaskAwareAveragePooling2D",
    "MinSideUpscale",
    "RoiAlign2D",
    "RoiPooling2D",
    "SpatialPyramidPooling",
    "SplitFeatures",
    "ThemeEmbedding",
    "ValidRegionMask",
    "AVA_N_THEMES",
    "PREPROCESSING_MODES",
    "SPP_MODES",
    "UNKNOWN_THEME",
    "area_weights",
    "image_boxes",
    "roi_bin_bounds",
    "spp_bin_bounds",
    "valid_mask",
]
