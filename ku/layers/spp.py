"""Older import path of :class:`ku.layers.SpatialPyramidPooling`
(:mod:`ku.layers.spatial_pyramid_pooling`)."""
from ku.layers.spatial_pyramid_pooling import SPP_MODES, SpatialPyramidPooling, spp_bin_bounds

__all__ = ["SpatialPyramidPooling", "spp_bin_bounds", "SPP_MODES"]
