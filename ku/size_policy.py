"""ku's one size policy for scoring images (no TensorFlow here: the CLI parses flags with it).

Every scoring entry point follows it: ``ku predict`` and ``ku export`` (:mod:`ku.cli`),
``scripts/predict_mlsp.py``, the exported SavedModel signatures and :func:`ku.export.score_images`
(:mod:`ku.export`), and the Keras models themselves (``predict`` / ``__call__`` of
:func:`ku.models.mlsp.mlsp_end_to_end`, :func:`ku.models.apm.apm_model` and
:func:`ku.models.theme_roi.theme_roi_model`, through :class:`ku.layers.MinSideUpscale`).
``docs/bad_input.md`` ("Size policy") states the same rules for users.

Large images (memory):

* **Pixel limit**, on by default: an image with more than ``max_pixels`` pixels
  (:data:`DEFAULT_MAX_PIXELS`, 50,000,000) is refused *before it is decoded*, from the size
  stored in its header (JPEG, PNG, GIF, BMP; WebP after decoding). ``max_pixels=None`` (``--max-pixels
  0``) disables the limit.
* **Resize before any float conversion**: decoding gives 8-bit RGB; the resize for ``max_side`` /
  ``min_side`` reads the 8-bit image and writes float32 only at the new size, so decoding and
  resizing together peak at about 3-16 bytes per input pixel (measured in
  ``tests/test_size_policy.py``). Scoring a photo at full resolution (the papers' setting, and the
  default) needs far more for the network's activations; ``max_side`` bounds that.

Small images (the backbone's minimum side, ``min_side``: 75 px for Inception-v3 and
InceptionResNet-v2, 32 px for the ResNets / VGG16 of APM):

* An image whose shorter side is below ``min_side`` is **upscaled** (bilinear, aspect ratio kept)
  so that its shorter side equals ``min_side``; ``small_images="error"`` refuses it instead with an
  error naming the minimum. Below the minimum, the networks' valid convolutions and poolings run
  out of pixels: Keras reports a negative dimension, or a model traced for larger images returns
  NaN or 0 -- never a usable score.
* **Aspect-ratio limit**: an image that needs upscaling and whose longer side is more than
  ``max_aspect`` (:data:`MAX_ASPECT`, 20) times its shorter side is refused: upscaling a 1 x 20000
  strip to ``min_side`` would make it 75 x 1,500,000 pixels.

With both ``min_side`` and ``max_side``: the scale is ``max(min(1, max_side / long),
min_side / short)`` -- ``min_side`` wins where both cannot hold (the backbone cannot run below it).
New sizes are ``round(side * scale)``, half to even, at least 1.

Not covered (by design): feature extraction for training (:func:`ku.extraction.extract_features`)
skips and reports images below ``min_side`` rather than upscaling them, since a training label must
describe the pixels the network sees.
"""
from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT",
    "SMALL_IMAGE_POLICIES",
    "SizePolicyError",
    "check_pixels",
    "policy_size",
]

#: Default pixel limit (height * width), checked from the header before decoding.
DEFAULT_MAX_PIXELS = 50_000_000

#: Longest ``long side / short side`` of an image that is upscaled to the minimum side.
MAX_ASPECT = 20.0

#: What happens to images whose shorter side is below ``min_side``.
SMALL_IMAGE_POLICIES = ("upscale", "error")


class SizePolicyError(ValueError):
    """An image refused by the size policy; the message says why and which limit applies."""


def check_pixels(height: int, width: int, max_pixels) -> None:
    """Raise :class:`SizePolicyError` if ``height * width > max_pixels`` (None: no limit)."""
    if max_pixels is not None and int(height) * int(width) > int(max_pixels):
        raise SizePolicyError(
            f"image has {height}x{width} = {int(height) * int(width):,} pixels, more than "
            f"max_pixels={int(max_pixels):,} (checked before decoding; raise the limit with "
            "--max-pixels / max_pixels, 0 or None = no limit)")


def policy_size(height: int, width: int, *, min_side=None, max_side=None,
                small_images: str = "upscale", max_aspect=MAX_ASPECT) -> tuple:
    """The ``(height, width)`` an image of ``height x width`` is scored at (module docstring).

    Args:
        height, width: the image's size (positive integers).
        min_side: the model's minimum side, or None.
        max_side: downscale so that the longer side is at most this, or None.
        small_images: ``"upscale"`` or ``"error"`` (:data:`SMALL_IMAGE_POLICIES`).
        max_aspect: aspect-ratio limit for images that need upscaling (None: no limit).

    Returns:
        ``(new_height, new_width)`` ints.

    Raises:
        SizePolicyError: a small image with ``small_images="error"``, or one too elongated to
            upscale.
        ValueError: bad arguments.
    """
    if small_images not in SMALL_IMAGE_POLICIES:
        raise ValueError(f"small_images must be one of {SMALL_IMAGE_POLICIES}, got {small_images!r}")
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    short, long_ = min(h, w), max(h, w)
    if min_side and short < min_side:
        if small_images == "error":
            raise SizePolicyError(
                f"image is {h}x{w} px, smaller than the model's minimum side of {min_side} px "
                "(small_images='error'; the default 'upscale' scales it up)")
        if max_aspect is not None and long_ > max_aspect * short:
            raise SizePolicyError(
                f"image is {h}x{w} px: below the model's minimum side of {min_side} px and too "
                f"elongated to upscale (aspect ratio {long_ / short:.1f} > max_aspect={max_aspect:g})")
    scale = 1.0
    if max_side:
        scale = min(scale, float(max_side) / long_)
    if min_side:
        scale = max(scale, float(min_side) / short)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))
