"""Hosu et al.'s 8 fixed augmentations: four corner crops x (no mirror, mirror).

Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
Features", CVPR 2019, §3.1: "We augment images with proportional crops at 87.5% of width and
height, e.g., 224 x 224 from 256 x 256, covering the four corners of each image, together with a
mirroring augmentation (on and off). The 8 sets of features are stored in a single HDF5 file".
During training one of the 8 is drawn per image per epoch; at test time predictions are averaged
over all 8 (see :mod:`ku.data.generators`).

Geometry (matches the released code, ``ImageAugmenter.crop(0.875, crop_pos).fliplr(flip)``):

* crop size ``ch = floor(crop_fraction * H)``, ``cw = floor(crop_fraction * W)`` (the original
  used ``int(c * dim)``; a 1e-6 tolerance guards against ``0.29 * 100 = 28.999...``), at least 1;
  all four corner crops of one image therefore have the same size and can go through a network
  as one batch;
* the crop is anchored at a corner: top/left offset 0, bottom/right offset ``H - ch`` /
  ``W - cw``;
* mirroring is a horizontal flip (left-right) applied after cropping.

The optional ``"original"`` augmentation is the uncropped, unmirrored image (for stores without
augmentation, e.g. the paper's "-aug" ablation on rescaled originals, §4).

``augment`` is pure numpy; ``augment_tf`` does the same with TensorFlow graph ops (usable in
``tf.data`` pipelines, also with a tensor augmentation index).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence, Union

import numpy as np

__all__ = [
    "Augmentation",
    "HOSU_AUGMENTATIONS",
    "ORIGINAL",
    "DEFAULT_CROP_FRACTION",
    "hosu_augmentations",
    "get_augmentation",
    "resolve_augmentations",
    "crop_size",
    "augment",
    "augment_all",
    "augment_tf",
]

#: Hosu et al. 2019 §3.1: crops of 87.5 % of width and height.
DEFAULT_CROP_FRACTION = 0.875


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One fixed augmentation.

    Attributes:
        name: unique name, e.g. ``"crop_tl"``, ``"crop_br_flip"``, ``"original"``.
        corner: ``(row, col)`` with row 0 = top / 1 = bottom and col 0 = left / 1 = right, or
            ``None`` for the uncropped image.
        flip: mirror left-right after cropping.
    """

    name: str
    corner: tuple[int, int] | None
    flip: bool

    @property
    def legacy_name(self) -> str | None:
        """HDF5 group name used by the original ku/ava-mlsp code (``'%g_%g_%d' % (y, x, flip)``,
        ``y, x`` = relative crop centre, 0 = top/left), or ``None`` for ``"original"``."""
        if self.corner is None:
            return None
        return "%g_%g_%d" % (self.corner[0], self.corner[1], int(self.flip))


_CORNERS = (("tl", (0, 0)), ("tr", (0, 1)), ("bl", (1, 0)), ("br", (1, 1)))

#: The 8 augmentations of Hosu et al. 2019 §3.1, in storage order:
#: crop_tl, crop_tl_flip, crop_tr, crop_tr_flip, crop_bl, crop_bl_flip, crop_br, crop_br_flip.
HOSU_AUGMENTATIONS: tuple[Augmentation, ...] = tuple(
    Augmentation(f"crop_{tag}" + ("_flip" if flip else ""), corner, flip)
    for tag, corner in _CORNERS
    for flip in (False, True)
)

#: The uncropped, unmirrored image.
ORIGINAL = Augmentation("original", None, False)

_BY_NAME = {a.name: a for a in HOSU_AUGMENTATIONS + (ORIGINAL,)}
_BY_NAME.update({a.legacy_name: a for a in HOSU_AUGMENTATIONS})

AugmentationLike = Union[Augmentation, str]


def hosu_augmentations(include_original: bool = False) -> tuple[Augmentation, ...]:
    """The 8 augmentations of Hosu et al. 2019 §3.1 (4 corner crops x mirror off/on).

    Args:
        include_original: also return the uncropped image, as the first element.
    Returns:
        tuple of :class:`Augmentation` (8, or 9 with the original).
    """
    return ((ORIGINAL,) if include_original else ()) + HOSU_AUGMENTATIONS


def get_augmentation(aug: AugmentationLike) -> Augmentation:
    """Look up an augmentation by name (also the original code's group names like ``"0_1_1"``)."""
    if isinstance(aug, Augmentation):
        return aug
    if isinstance(aug, str) and aug in _BY_NAME:
        return _BY_NAME[aug]
    raise ValueError(
        f"unknown augmentation {aug!r}; known names: {sorted(a.name for a in _BY_NAME.values())}"
    )


def resolve_augmentations(augs: Iterable[AugmentationLike] | None) -> tuple[Augmentation, ...]:
    """Normalise a list of augmentations/names (``None`` -> the 8 of Hosu); names must be unique."""
    if augs is None:
        return HOSU_AUGMENTATIONS
    if isinstance(augs, (str, Augmentation)):
        augs = [augs]
    out = tuple(get_augmentation(a) for a in augs)
    if not out:
        raise ValueError("augmentations: need at least one augmentation (e.g. 'original')")
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"augmentations: duplicate names in {names}")
    return out


def crop_size(height: int, width: int, crop_fraction: float = DEFAULT_CROP_FRACTION) -> tuple[int, int]:
    """Crop height and width: ``floor(crop_fraction * dim)`` (at least 1), Hosu et al. §3.1."""
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    ch = max(1, int(math.floor(crop_fraction * height + 1e-6)))
    cw = max(1, int(math.floor(crop_fraction * width + 1e-6)))
    return min(ch, height), min(cw, width)


def augment(image: np.ndarray, aug: AugmentationLike, crop_fraction: float = DEFAULT_CROP_FRACTION) -> np.ndarray:
    """Apply one augmentation to an image (numpy).

    Args:
        image: array (H, W) or (H, W, C), any dtype.
        aug: :class:`Augmentation` or its name.
        crop_fraction: crop side as a fraction of the image side (0.875 in Hosu et al. §3.1).
    Returns:
        array (ch, cw[, C]) of the same dtype; a view of ``image`` (no copy).
    """
    aug = get_augmentation(aug)
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"augment: expected an image (H, W) or (H, W, C), got shape {image.shape}")
    out = image
    if aug.corner is not None:
        h, w = image.shape[:2]
        ch, cw = crop_size(h, w, crop_fraction)
        y0 = aug.corner[0] * (h - ch)
        x0 = aug.corner[1] * (w - cw)
        out = out[y0 : y0 + ch, x0 : x0 + cw]
    if aug.flip:
        out = out[:, ::-1]
    return out


def augment_all(
    image: np.ndarray,
    augmentations: Sequence[AugmentationLike] = HOSU_AUGMENTATIONS,
    crop_fraction: float = DEFAULT_CROP_FRACTION,
) -> np.ndarray:
    """Stack several augmentations of one image: (A, ch, cw[, C]).

    All augmentations must produce the same size (true for the corner crops; mixing
    ``"original"`` with crops raises ``ValueError``).
    """
    outs = [augment(image, a, crop_fraction) for a in augmentations]
    shapes = {o.shape for o in outs}
    if len(shapes) != 1:
        raise ValueError(f"augment_all: augmentations give different sizes {sorted(shapes)}; stack them per size")
    return np.stack(outs)


def _aug_table(augmentations: Sequence[AugmentationLike]) -> np.ndarray:
    """(A, 4) int32 table: is_crop, corner_row, corner_col, flip."""
    rows = []
    for a in resolve_augmentations(augmentations):
        if a.corner is None:
            rows.append((0, 0, 0, int(a.flip)))
        else:
            rows.append((1, a.corner[0], a.corner[1], int(a.flip)))
    return np.asarray(rows, dtype=np.int32)


def augment_tf(image, aug, crop_fraction: float = DEFAULT_CROP_FRACTION, augmentations=None):
    """TensorFlow-graph version of :func:`augment` (for ``tf.data.Dataset.map``).

    Args:
        image: tensor (H, W, C) with static or dynamic size.
        aug: an :class:`Augmentation`, its name, or an integer (Python or scalar tensor) index into
            ``augmentations`` (default: the 8 of Hosu et al.), e.g. drawn with
            ``tf.random.stateless_uniform``.
        crop_fraction: as in :func:`augment`.
        augmentations: the list an integer ``aug`` indexes.
    Returns:
        tensor (ch, cw, C); equal to :func:`augment` on the same input.
    """
    import tensorflow as tf

    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    image = tf.convert_to_tensor(image)
    if isinstance(aug, (Augmentation, str)):
        table = tf.constant(_aug_table([aug]))
        index = tf.constant(0, tf.int32)
    else:
        table = tf.constant(_aug_table(HOSU_AUGMENTATIONS if augmentations is None else augmentations))
        index = tf.cast(aug, tf.int32)
        tf.debugging.assert_rank(index, 0, message="augment_tf: aug index must be a scalar")
    row = tf.gather(table, index)
    is_crop, cy, cx, flip = row[0], row[1], row[2], row[3]
    shape = tf.shape(image)
    h, w = shape[0], shape[1]

    def _crop_dim(d):
        c = tf.cast(tf.floor(crop_fraction * tf.cast(d, tf.float64) + 1e-6), tf.int32)
        return tf.minimum(tf.maximum(c, 1), d)

    ch = tf.where(is_crop > 0, _crop_dim(h), h)
    cw = tf.where(is_crop > 0, _crop_dim(w), w)
    y0 = cy * (h - ch)
    x0 = cx * (w - cw)
    out = image[y0 : y0 + ch, x0 : x0 + cw]
    out = tf.cond(flip > 0, lambda: tf.reverse(out, axis=[1]), lambda: out)
    return out
