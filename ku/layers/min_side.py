"""Older import path of :class:`ku.layers.MinSideUpscale` (:mod:`ku.layers.min_side_upscale`)."""
from ku.layers.min_side_upscale import MinSideUpscale

__all__ = ["MinSideUpscale"]
