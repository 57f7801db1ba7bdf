"""Older import path of the ROI layers: they live in :mod:`ku.layers.roi_pooling_2d`,
:mod:`ku.layers.roi_align_2d` and :mod:`ku.layers.image_boxes` (all exported by
:mod:`ku.layers`)."""
from ku.layers.image_boxes import ImageBoxes, image_boxes
from ku.layers.roi_align_2d import RoiAlign2D
from ku.layers.roi_pooling_2d import RoiPooling2D, roi_bin_bounds

__all__ = ["RoiPooling2D", "RoiAlign2D", "ImageBoxes", "image_boxes", "roi_bin_bounds"]
