"""SavedModel export of ku models, with decoding and input checks inside the graph.

An exported model is a plain TensorFlow SavedModel: load it with ``tf.saved_model.load`` (or TF
Serving) in a process that has neither ``ku`` nor Keras' ku layers; preprocessing travels with the
model (ku models take 0..255 RGB and preprocess inside, ``docs/design.md`` §1).

Signatures (``loaded.signatures[...]``; each also callable as ``loaded.<name>(...)``):

``serving_default``
    ``images``: ``tf.string`` ``[batch]`` -- encoded JPEG / PNG / GIF / BMP / WebP files of *any*
    sizes
    (plus ``theme``: ``tf.int64`` ``[batch]`` theme indices for theme models, 0 = unknown theme).
    Every image is decoded, made 3-channel and scored on its own (``tf.map_fn``), so the sizes may
    differ within a batch.
``predict_images``
    ``images``: ``tf.float32`` ``[batch, height, width, 3]``, RGB 0..255 (plus ``theme`` as above):
    a batch of same-size images, scored in one call.
``serving_no_theme``
    theme models only: ``serving_default`` with every theme set to 0 (unknown theme), for clients
    that have no theme.

Outputs (a dict):

* ``mean_score`` ``[batch]`` float32: the predicted mean opinion score. For a distribution model
  ``sum_k s_k p_k`` with bin values ``s_k`` (``score_range``, default ``1..K``), Murray & Gordo
  2017 eq. 2; for a MOS head (one output unit, e.g. the Hosu et al. 2019 heads trained with MSE)
  the unit's value.
* ``std_score`` ``[batch]`` and ``distribution`` ``[batch, K]``: only for models that predict a
  distribution (``sqrt(sum_k p_k (s_k - mean)^2)``, Jia et al. 2019 §IV-A). A MOS-only model has
  no standard deviation to report, so these keys are absent rather than filled with a made-up
  value.

Decoding (``serving_default``) reproduces :func:`ku.data.images.read_image` bit for bit (tested
with TF 2.21 / OpenCV 4.12) for RGB / grey JPEG (``dct_method="INTEGER_ACCURATE"``, libjpeg's default that
OpenCV uses; TF's own default, the fast DCT, differs by up to 6 grey levels), 8/16-bit PNG, BMP
and WebP: grey is replicated to RGB, alpha (and a palette PNG's transparent colour) is
composited on white, 16-bit values become ``round(x / 257)``; 8-bit images stay 8-bit until the
resize. Not bit-identical: CMYK JPEGs (TensorFlow's libjpeg converts CMYK differently; pixels 1-2
grey levels apart, tests/bad_input_corpus.py). Not done in the graph: EXIF orientation (send
upright images; ``ku predict`` applies it) and TIFF (no TensorFlow decoder; ``ku predict`` reads
it with OpenCV). A request with an undecodable image fails as a whole (TF Serving convention):
bytes that are not JPEG / PNG / GIF / BMP / WebP (TIFF, PPM, random or non-UTF-8 bytes) are
refused with ``InvalidArgumentError`` naming ``images[i]`` with its index, the accepted formats
and the length (never the raw bytes); a damaged or truncated file of a known format is refused
the same way ("cannot be decoded"), found by a first decoding pass through ``tf.data``'s
``ignore_errors`` (each image is decoded twice; decoding is small next to the network).

Size policy (:mod:`ku.size_policy`; the same in both signatures, ``ku predict`` and the Keras
models): ``serving_default`` refuses an image with more than ``max_pixels`` pixels (default
50,000,000) from its header, before decoding; images whose shorter side is below ``min_side``
(75 px for the Inception backbones, 32 for APM) are upscaled, aspect kept (bilinear), so that
every image gets a score (``small_images="error"`` refuses them with a clear error instead), unless
their aspect ratio exceeds ``max_aspect`` (20: refused, a 1 x 20000 strip would become 75 x
1,500,000); with ``max_side`` images whose longer side exceeds it are downscaled (``area``
resize, reading uint8: <= 16 bytes per input pixel), which bounds memory at full resolution;
``min_side`` wins where both cannot hold. New sizes are ``round(side * scale)`` (half to even).

Input checks: a wrong rank, channel count, value range, batch-size mismatch between
``images`` and ``theme``, or a too-small image fails with a ``tf.errors.InvalidArgumentError``
whose message names the signature, the argument and the expected shape / dtype, e.g.
``predict_images: images must be a float32 tensor [batch, height, width, 3] of RGB values in
0..255; got shape [80 80 3] min 0 max 0``;
a wrong dtype is refused when the call is bound to the signature (TensorFlow names the expected
``TensorSpec``). Python-side functions (:func:`score_images`) raise ``ValueError`` naming the
argument.

Families: a small registry (:func:`register_family`, :func:`get_family`, :class:`ExportFamily`)
maps a family name to the function that calls a Keras model on ``(images, valid_sizes, themes)``
and returns ``(B, K)``:

* ``"mlsp"`` (Hosu et al. 2019, :func:`ku.models.mlsp.mlsp_end_to_end`): ``model(image)``; MOS
  heads give ``K = 1``, distribution heads their softmax; min side 75 (Inception backbones).
* ``"apm"`` (Murray & Gordo 2017, :func:`ku.models.apm.apm_model`): ``model([image,
  valid_size])``, the ReLU ``distribution`` L1-normalised as in §3.4 / eq. 2 (the ``mean``
  variant gives ``K = 1``); APM-m must be wrapped with
  :func:`ku.models.apm.apm_inference_model` (late fusion weight) first; min side 32.
* ``"theme_roi"`` (Jia et al. 2019, :func:`ku.models.theme_roi.theme_roi_model`): each image is
  placed at the top-left of the model's fixed canvas (scaled down to fit with area interpolation
  when larger, as :mod:`ku.data.canvas` does) with its valid size and theme index; models built
  with ``canvas=None`` get the image as its own canvas (min side 75).

:func:`guess_family` picks the family of a loaded model. Every signature calls one traced scoring
function, so the Keras model is traced (and stored) once per export.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = [
    "ExportFamily",
    "register_family",
    "get_family",
    "family_names",
    "guess_family",
    "ScoringModule",
    "make_scoring_module",
    "export_saved_model",
    "score_images",
    "decode_image_tf",
    "decode_image_uint8_tf",
    "SMALL_IMAGE_POLICIES",
]

logger = logging.getLogger(__name__)

from ku.size_policy import DEFAULT_MAX_PIXELS, MAX_ASPECT, SMALL_IMAGE_POLICIES  # noqa: E402

#: Version of the export layout, written to ``<dir>/assets.extra/ku_export.json``.
EXPORT_FORMAT = 1


# --------------------------------------------------------------------------------------------
# family registry
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExportFamily:
    """How to score images with the models of one paper.

    Attributes:
        name: registry key (``"mlsp"``, ``"apm"``, ``"theme_roi"``).
        call: ``call(model, images, sizes, themes) -> tensor (B, K)`` where ``images`` is float32
            ``(B, H, W, 3)`` 0..255 RGB (after the size policy), ``sizes`` int32 ``(B, 2)`` the
            (height, width) of the images, ``themes`` int64 ``(B,)`` or None. ``K`` is 1 for a MOS
            model, the number of bins for a distribution model (rows summing to 1). Runs inside a
            ``tf.function``; must be traceable; raise ``ValueError`` for models it cannot serve.
        output_width: ``output_width(model) -> K`` without running the model.
        takes_theme: the models need a theme index per image (Jia et al. 2019 §III-B).
        min_side: ``min_side(model) -> int or None``: default smallest image side passed to the
            model (None: no limit).
        description: one line for help texts.
    """

    name: str
    call: Callable
    output_width: Callable
    takes_theme: bool = False
    min_side: Callable = lambda model: 75
    description: str = ""


_FAMILIES: dict = {}


def register_family(family: ExportFamily, overwrite: bool = False) -> ExportFamily:
    """Add ``family`` to the registry (``overwrite=True`` replaces an existing entry)."""
    if not isinstance(family, ExportFamily):
        raise TypeError(f"register_family: expected an ExportFamily, got {type(family).__name__}")
    if family.name in _FAMILIES and not overwrite:
        raise ValueError(f"register_family: family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def family_names() -> list:
    """Registered family names, sorted."""
    return sorted(_FAMILIES)


def get_family(name) -> ExportFamily:
    """The registered :class:`ExportFamily` called ``name`` (an ``ExportFamily`` passes through).

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if isinstance(name, ExportFamily):
        return name
    key = str(name).lower().replace("-", "_")
    if key not in _FAMILIES:
        raise ValueError(f"family must be one of {family_names()}, got {name!r}")
    return _FAMILIES[key]


def guess_family(model) -> str:
    """Family of a Keras model from its inputs and layer names: ``"theme_roi"`` (a ``theme``
    input or an ROI pooling layer), ``"apm"`` (an ``apm_spp`` layer), else ``"mlsp"``."""
    names = {layer.name for layer in model.layers}
    inputs = {getattr(t, "name", "").split(":")[0] for t in model.inputs}
    if "theme" in inputs or names & {"roi_pooling", "roi_align"}:
        return "theme_roi"
    if "apm_spp" in names or model.name.startswith("apm"):
        return "apm"
    return "mlsp"


def _named_outputs(model):
    """``{name: KerasTensor}`` of a model's outputs (dict outputs keep their keys)."""
    out = model.output
    if isinstance(out, dict):
        return dict(out)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return {n: t for n, t in zip(model.output_names, outs)}


def _first_output_width(model):
    outs = list(_named_outputs(model).values())
    return int(outs[0].shape[-1])


def _feed(model, images, sizes, themes):
    """Call ``model`` with its inputs fed by name: names containing ``size`` get ``sizes``,
    ``theme`` the themes, anything else the images."""
    import tensorflow as tf

    if len(model.inputs) == 1:
        return model(images, training=False)
    feeds = []
    for inp in model.inputs:
        n = getattr(inp, "name", "").lower()
        if "size" in n:
            feeds.append(tf.cast(sizes, inp.dtype))
        elif "theme" in n:
            if themes is None:
                raise ValueError(f"model {model.name!r} has a theme input ({inp.name!r}); export it "
                                 "with family='theme_roi' or theme=True")
            feeds.append(tf.cast(themes, inp.dtype))
        else:
            feeds.append(images)
    return model(feeds, training=False)


def _first(out):
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (list, tuple)) else out


# -- mlsp ------------------------------------------------------------------------------------
def _call_mlsp(model, images, sizes, themes):
    """Hosu et al. 2019 end-to-end model: ``model(image)`` -> MOS (B, 1) or softmax (B, K)."""
    return _first(_feed(model, images, sizes, themes))


# -- apm -------------------------------------------------------------------------------------
def _apm_named(model):
    named = _named_outputs(model)
    if "max_distribution" in named:
        raise ValueError(f"APM-m model {model.name!r} has two distributions; export "
                         "ku.models.apm.apm_inference_model(model, fusion_weight) instead")
    return named


def _apm_width(model):
    named = _apm_named(model)
    if "distribution" in named:
        return int(named["distribution"].shape[-1])
    return _first_output_width(model)


def _call_apm(model, images, sizes, themes):
    """Murray & Gordo 2017 APM (inputs ``[image, valid_size]``): the ``distribution`` output
    L1-normalised (§3.4, eq. 2; all-zero rows -> uniform), or the ``mean`` variant's value."""
    import tensorflow as tf

    _apm_named(model)
    out = _feed(model, images, sizes, themes)
    if isinstance(out, dict):
        p = out.get("distribution", None)
        if p is None:
            return _first(out)
    else:
        p = _first(out)
    if p.shape[-1] == 1:
        return p
    from ku.layers.l1_normalization import l1_normalize

    return l1_normalize(p)


# -- theme_roi -------------------------------------------------------------------------------
def _canvas(model):
    """Static (height, width) of the model's image input, or None for any size."""
    for inp in model.inputs:
        n = getattr(inp, "name", "").lower()
        if "size" not in n and "theme" not in n and len(inp.shape) == 4:
            h, w = inp.shape[1], inp.shape[2]
            return (int(h), int(w)) if h is not None and w is not None else None
    return None


def _call_theme_roi(model, images, sizes, themes):
    """Jia et al. 2019 (inputs ``image, valid_size[, theme]``): for a fixed canvas (800 x 800 in
    the paper) images larger than it are scaled down to fit (area, aspect kept, as
    ``ku.data.canvas``) and zero-padded at the bottom/right; the valid size goes with them."""
    import tensorflow as tf

    from ku.data.canvas import canvas_fit_size

    canvas = _canvas(model)
    if canvas is not None:
        ch, cw = canvas
        scale, nh, nw = canvas_fit_size(tf.shape(images)[1:3], ch, cw)
        new = tf.stack([nh, nw])
        images = tf.cond(scale < 1.0, lambda: tf.clip_by_value(
            tf.image.resize(images, new, method="area"), 0.0, 255.0), lambda: images)
        sizes = tf.tile(new[None, :], [tf.shape(images)[0], 1])
        images = tf.image.pad_to_bounding_box(images, 0, 0, ch, cw)
        images.set_shape([None, ch, cw, 3])
    if not any("theme" in getattr(t, "name", "").lower() for t in model.inputs):
        themes = None
    return _first(_feed(model, images, sizes, themes))


register_family(ExportFamily(
    "mlsp", _call_mlsp, _first_output_width, takes_theme=False, min_side=lambda model: 75,
    description="Hosu et al. 2019 end-to-end MLSP model (image 0..255 -> MOS or distribution)"))
register_family(ExportFamily(
    "apm", _call_apm, _apm_width, takes_theme=False, min_side=lambda model: 32,
    description="Murray & Gordo 2017 APM ([image, valid_size] -> distribution, L1-normalised)"))
register_family(ExportFamily(
    "theme_roi", _call_theme_roi, _first_output_width, takes_theme=True,
    min_side=lambda model: None if _canvas(model) else 75,
    description="Jia et al. 2019 theme-aware ROI model ([image canvas, valid_size, theme] -> "
                "distribution)"))


# --------------------------------------------------------------------------------------------
# in-graph decoding and size policy
# --------------------------------------------------------------------------------------------
def _composite_on_white(color, alpha):
    """uint8 colour ``(H, W, C)`` and alpha ``(H, W, 1)`` -> uint8 ``round((c a + 255 (255 - a)) /
    255)``: alpha compositing on white in exact integer arithmetic (uint16 holds the numerator,
    at most 65,025; no tie can occur, so this equals OpenCV's float rounding)."""
    import tensorflow as tf

    a = tf.cast(alpha, tf.uint16)
    num = tf.cast(color, tf.uint16) * a + tf.constant(255, tf.uint16) * (tf.constant(255, tf.uint16) - a)
    return tf.cast((num + tf.constant(127, tf.uint16)) // tf.constant(255, tf.uint16), tf.uint8)


def _to_rgb_uint8(img):
    """uint8 ``(H, W, 1..4)`` (grey, grey + alpha, RGB, RGBA) -> uint8 RGB ``(H, W, 3)``."""
    import tensorflow as tf

    img = tf.ensure_shape(img, [None, None, None])
    return tf.switch_case(tf.clip_by_value(tf.shape(img)[-1] - 1, 0, 3), [
        lambda: tf.tile(img[..., :1], [1, 1, 3]),
        lambda: tf.tile(_composite_on_white(img[..., :1], img[..., 1:2]), [1, 1, 3]),
        lambda: img[..., :3],
        lambda: _composite_on_white(img[..., :3], img[..., 3:4]),
    ])


def _png16_to_rgb_uint8(data):
    """A 16-bit PNG -> uint8 RGB: alpha composited on white in 0..1 units, then
    ``round(x * 255)`` (for opaque images ``round(x / 257)``, as OpenCV)."""
    import tensorflow as tf

    unit = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.float64) / 65535.0
    unit = tf.ensure_shape(unit, [None, None, None])
    unit = tf.switch_case(tf.clip_by_value(tf.shape(unit)[-1] - 1, 0, 3), [
        lambda: tf.tile(unit[..., :1], [1, 1, 3]),
        lambda: tf.tile(unit[..., :1] * unit[..., 1:2] + (1.0 - unit[..., 1:2]), [1, 1, 3]),
        lambda: unit[..., :3],
        lambda: unit[..., :3] * unit[..., 3:4] + (1.0 - unit[..., 3:4]),
    ])
    return tf.cast(tf.clip_by_value(tf.round(unit * 255.0), 0.0, 255.0), tf.uint8)


def decode_image_uint8_tf(data):
    """Decode one encoded image (scalar ``tf.string``) to uint8 ``(H, W, 3)`` RGB.

    Equal to :func:`ku.data.images.read_image` (OpenCV) for JPEG, 8/16-bit PNG, BMP and WebP,
    except that EXIF orientation is not applied: JPEG with the accurate integer DCT and fancy
    upsampling (libjpeg defaults), grey -> RGB, alpha (also a palette PNG's ``tRNS``
    transparency) composited on white, ``round((c a + 255 (255 - a)) / 255)``, 16-bit ->
    ``round(x / 257)``. GIF (first frame), BMP and WebP via ``tf.io.decode_image``. One
    difference: CMYK JPEGs (libjpeg's ``JCS_CMYK``, e.g. from print workflows) are converted to
    RGB by TensorFlow's and OpenCV's libjpeg builds in different ways, so their pixels differ by
    a few grey levels. 8-bit images stay 8-bit (3-4 bytes per pixel; a 16-bit PNG needs a
    float64 pass). Graph-mode friendly (use inside ``tf.function``).
    """
    import tensorflow as tf

    head = tf.strings.substr(tf.strings.join([data, b"\0" * 26]), 0, 26)
    is_png = tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n")
    is_png16 = tf.logical_and(is_png, tf.equal(tf.strings.substr(head, 24, 1), b"\x10"))

    def jpeg():
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    def png8():
        return _to_rgb_uint8(tf.io.decode_png(data, channels=0, dtype=tf.uint8))

    def other():  # GIF (first frame), BMP, WebP; unknown formats raise TF's decode error
        return _to_rgb_uint8(tf.io.decode_image(data, channels=0, dtype=tf.uint8,
                                                expand_animations=False))

    out = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: tf.cond(
        is_png16, lambda: _png16_to_rgb_uint8(data), lambda: tf.cond(is_png, png8, other)))
    return tf.ensure_shape(out, [None, None, 3])


def decode_image_tf(data):
    """Decode one encoded image (scalar ``tf.string``) to float32 ``(H, W, 3)`` RGB 0..255:
    :func:`decode_image_uint8_tf` as float32 (see there for what equals ``read_image``)."""
    import tensorflow as tf

    return tf.cast(decode_image_uint8_tf(data), tf.float32)


def _header_hw(data):
    """int64 ``[height, width]`` from the header of a JPEG, PNG, GIF, BMP or WebP file (nothing is
    decoded); ``[-1, -1]`` where the header does not say (e.g. a WebP with an unknown chunk)."""
    import tensorflow as tf

    b = tf.cast(tf.io.decode_raw(tf.strings.substr(tf.strings.join([data, b"\0" * 32]), 0, 32),
                                 tf.uint8), tf.int64)

    def le(o, n):
        return tf.add_n([b[o + k] * (256 ** k) for k in range(n)])

    def be(o, n):
        return tf.add_n([b[o + k] * (256 ** (n - 1 - k)) for k in range(n)])

    def signed32(v):
        return tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))

    tag = tf.strings.substr(tf.strings.join([data, b"\0" * 16]), 12, 4)
    vp8l = le(21, 4)
    unknown = tf.constant([-1, -1], tf.int64)
    webp = tf.where(tf.equal(tag, b"VP8X"), tf.stack([le(27, 3) + 1, le(24, 3) + 1]),
                    tf.where(tf.equal(tag, b"VP8 "), tf.stack([le(28, 2) % 16384, le(26, 2) % 16384]),
                             tf.where(tf.equal(tag, b"VP8L"),
                                      tf.stack([(vp8l // 16384) % 16384 + 1, vp8l % 16384 + 1]),
                                      unknown)))
    bmp = tf.where(tf.equal(le(14, 4), 12), tf.stack([le(20, 2), le(18, 2)]),
                   tf.stack([signed32(le(22, 4)), signed32(le(18, 4))]))
    first = tf.strings.substr(data, 0, 4)
    return tf.case([
        (tf.io.is_jpeg(data), lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
        (tf.equal(tf.strings.substr(first, 0, 4), b"\x89PNG"), lambda: tf.stack([be(20, 4), be(16, 4)])),
        (tf.equal(tf.strings.substr(first, 0, 3), b"GIF"), lambda: tf.stack([le(8, 2), le(6, 2)])),
        (tf.equal(tf.strings.substr(first, 0, 2), b"BM"), lambda: bmp),
        (tf.equal(first, b"RIFF"), lambda: webp),
    ], default=lambda: unknown)


def _known_format(data):
    """True where the scalar string starts like a JPEG, PNG, GIF, BMP or WebP file."""
    import tensorflow as tf

    head = tf.strings.substr(tf.strings.join([data, b"\0" * 12]), 0, 12)  # short files: padded
    return tf.reduce_any(tf.stack([
        tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff",
        tf.strings.substr(head, 0, 8) == b"\x89PNG\r\n\x1a\n",
        tf.strings.substr(head, 0, 4) == b"GIF8",
        tf.strings.substr(head, 0, 2) == b"BM",
        tf.logical_and(tf.strings.substr(head, 0, 4) == b"RIFF",
                       tf.strings.substr(head, 8, 4) == b"WEBP"),
    ]))


def _target_size(hw, min_side, max_side):
    """New (h, w) int32 so that min(h, w) >= min_side and max(h, w) <= max_side, aspect kept.

    The lower bound wins when both cannot hold (extreme aspect ratios): the backbone cannot run
    below it, while ``max_side`` only bounds memory."""
    import tensorflow as tf

    hwf = tf.cast(hw, tf.float64)
    scale = tf.constant(1.0, tf.float64)
    if max_side:
        scale = tf.minimum(scale, float(max_side) / tf.reduce_max(hwf))
    if min_side:
        scale = tf.maximum(scale, float(min_side) / tf.reduce_min(hwf))
    new = tf.cast(tf.round(hwf * scale), tf.int32)
    return tf.maximum(new, 1)


def _checked(x, ok, dummy, data):
    """``x`` if ``ok`` else a failed ``tf.debugging.Assert`` with ``data`` as its message.

    The check gates the data (``tf.cond``): when it fails, a harmless ``dummy`` flows on, so no
    op after it can fail first with a less clear message (``tf.control_dependencies`` on an
    ``Identity`` does not guarantee that ordering after graph optimisation)."""
    import tensorflow as tf

    def bad():
        with tf.control_dependencies([tf.debugging.Assert(tf.constant(False), data, summarize=8)]):
            return tf.identity(dummy)

    return tf.cond(ok, lambda: tf.identity(x), bad)


def _policy_checks(x, hw, min_side, policy, max_aspect, dummy, what):
    """``x`` gated by the small-image checks of the size policy on ``hw`` (int32 ``[h, w]``):
    below ``min_side`` with ``policy == "error"``, or too elongated to upscale (``what`` names
    the image in the message, a list of strings and tensors)."""
    import tensorflow as tf

    if not min_side:
        return x
    short, long_ = tf.reduce_min(hw), tf.reduce_max(hw)
    small = short < int(min_side)
    if policy == "error":
        return _checked(x, tf.logical_not(small), dummy, what + [
            f"must be at least {min_side} x {min_side} pixels for this model (exported with "
            "small_images=error); got height, width", hw])
    if max_aspect is None:
        return x
    bad = tf.logical_and(small, tf.cast(long_, tf.float64) > float(max_aspect) * tf.cast(short, tf.float64))
    return _checked(x, tf.logical_not(bad), dummy, what + [
        f"is below the minimum side of this model ({min_side} px) and too elongated to upscale "
        f"(aspect ratio > max_aspect={max_aspect:g}); height, width", hw])


def _resize_to(images, new):
    """Resize a (B, H, W, 3) batch (uint8 or float) to ``new`` (int32 ``[h, w]``) -> float32:
    bilinear when enlarging, area averaging when shrinking, nothing when the size is ``new``.
    TensorFlow's resize kernels read uint8 directly and write float32 only at the new size."""
    import tensorflow as tf

    hw = tf.shape(images)[1:3]

    def resized():
        return tf.cond(tf.reduce_any(new > hw),
                       lambda: tf.image.resize(images, new, method="bilinear"),
                       lambda: tf.image.resize(images, new, method="area"))

    out = tf.cond(tf.reduce_all(tf.equal(new, hw)), lambda: tf.cast(images, tf.float32), resized)
    out.set_shape([None, None, None, 3])
    return out


def _resize_batch(images, min_side, max_side, policy, where, max_aspect=MAX_ASPECT):
    """Apply the size policy to a (B, H, W, 3) batch (see the module docstring) -> float32."""
    import tensorflow as tf

    hw = tf.shape(images)[1:3]
    images = _policy_checks(images, hw, min_side, policy, max_aspect,
                            tf.zeros([1, int(min_side or 1), int(min_side or 1), 3], images.dtype),
                            [f"{where}"])
    images.set_shape([None, None, None, 3])
    if policy == "error":
        min_side = None
    if not min_side and not max_side:
        return tf.cast(images, tf.float32)
    return _resize_to(images, _target_size(tf.shape(images)[1:3], min_side, max_side))


# --------------------------------------------------------------------------------------------
# the scoring module
# --------------------------------------------------------------------------------------------
def _check_bins(model, family, n_bins, score_range):
    """Output width K of ``model`` and the bin values (float64 array) or None for MOS models."""
    try:
        k = int(family.output_width(model))
    except TypeError:
        raise ValueError(f"model {model.name!r}: the output's last dimension is unknown") from None
    if n_bins is not None:
        if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer or None, got {n_bins!r}")
        if k != 1 and n_bins != k:
            raise ValueError(f"n_bins={n_bins} but model {model.name!r} predicts {k} values")
    if k == 1:
        return 1, None
    if score_range is None:
        return k, np.arange(1, k + 1, dtype=np.float64)
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise ValueError(f"score_range must be (lowest, highest) bin value, got {score_range!r}") from None
    if not hi > lo:
        raise ValueError(f"score_range must be increasing (lowest, highest), got {score_range!r}")
    return k, np.linspace(lo, hi, k)


def _summary(raw, scores):
    """Outputs dict from the raw (B, K) model output."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    if scores is None:
        return {"mean_score": raw[:, 0]}
    s = tf.constant(scores, tf.float32)
    mean = tf.reduce_sum(raw * s, axis=-1)
    var = tf.reduce_sum(raw * tf.square(s[None, :] - mean[:, None]), axis=-1)
    return {"mean_score": mean, "std_score": tf.sqrt(tf.maximum(var, 0.0)), "distribution": raw}


def _make_module_class():
    import tensorflow as tf

    class ScoringModule(tf.Module):
        """A ``tf.Module`` wrapping a Keras model with the export signatures (see the module
        docstring). Use :func:`make_scoring_module` to build one; call ``predict_bytes`` /
        ``predict_images`` in process, or save with :func:`export_saved_model`."""

        def __init__(self, model, family, n_bins=None, score_range=None, min_side="auto",
                     max_side=None, small_images="upscale", theme=None,
                     max_pixels=DEFAULT_MAX_PIXELS, max_aspect=MAX_ASPECT):
            super().__init__(name="ku_scoring_module")
            fam = get_family(family)
            if small_images not in SMALL_IMAGE_POLICIES:
                raise ValueError(f"small_images must be one of {SMALL_IMAGE_POLICIES}, got "
                                 f"{small_images!r}")
            if min_side == "auto":
                min_side = fam.min_side(model)
            for what, v in (("min_side", min_side), ("max_side", max_side)):
                if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                                      or v < 1):
                    raise ValueError(f"{what} must be a positive integer or None, got {v!r}")
            if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer))
                                           or isinstance(max_pixels, bool) or max_pixels < 1):
                raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
            if max_aspect is not None and not (isinstance(max_aspect, (int, float, np.number))
                                               and max_aspect >= 1):
                raise ValueError(f"max_aspect must be a number >= 1 or None, got {max_aspect!r}")
            if min_side and max_side and max_side < min_side:
                raise ValueError(f"max_side={max_side} is smaller than min_side={min_side}")
            self.model = model
            self.family = fam
            if theme is None:  # e.g. Jia's no-theme variant "Pad+ROI" takes no theme
                theme = fam.takes_theme and any(
                    "theme" in getattr(t, "name", "").lower() for t in model.inputs)
            self.takes_theme = bool(theme)
            self.n_outputs, scores = _check_bins(model, fam, n_bins, score_range)
            self._scores = scores  # numpy (not tracked) or None
            self.min_side, self.max_side, self.small_images = min_side, max_side, small_images
            self.max_pixels = None if max_pixels is None else int(max_pixels)
            self.max_aspect = None if max_aspect is None else float(max_aspect)
            self._build_functions()

        # -- graph pieces ------------------------------------------------------------------
        def _raw_fn(self, images, themes):
            """Checked images (B, H, W, 3) + themes (B,) -> raw (B, K). Traced ONCE (as
            ``self._score``) and called by every signature, so the model graph is traced and
            saved once per export."""
            images = _resize_batch(images, self.min_side, self.max_side, self.small_images,
                                   "images", self.max_aspect)
            b = tf.shape(images)[0]
            sizes = tf.tile(tf.shape(images)[1:3][None, :], [b, 1])
            raw = self.family.call(self.model, images, sizes,
                                   themes if self.takes_theme else None)
            return tf.ensure_shape(tf.cast(raw, tf.float32), [None, self.n_outputs])

        def _raw(self, images, themes, where):
            if themes is None:
                themes = tf.zeros(tf.shape(images)[:1], tf.int64)
            return self._score(images, themes)

        def _check_theme(self, themes, batch, where):
            r1 = tf.equal(tf.rank(themes), 1)
            ok = tf.cond(r1, lambda: tf.logical_and(
                tf.equal(tf.size(themes), batch),
                tf.reduce_all(themes >= 0)), lambda: tf.constant(False))
            themes = _checked(themes, ok, tf.zeros([batch], tf.int64), [
                f"{where}: theme must be int64 [batch] theme indices >= 0 (0 = unknown theme), "
                "one per image; got shape", tf.shape(themes), "for a batch of", batch,
                "images, values", themes])
            themes.set_shape([None])
            return themes

        def _bytes(self, images, themes, where):
            images = _checked(images, tf.equal(tf.rank(images), 1), tf.constant([], tf.string), [
                f"{where}: images must be a tf.string vector [batch] of encoded JPEG/PNG/GIF/BMP/"
                "WebP files; got shape", tf.shape(images)])
            images.set_shape([None])
            if themes is None:
                themes = tf.zeros(tf.shape(images), tf.int64)
            else:
                themes = self._check_theme(themes, tf.size(images), where)

            def one(args):
                i, data, th, ok = args
                return self._raw(self._decode_one(data, i, ok, where),
                                 th[None] if self.takes_theme else None, where)[0]

            index = tf.range(tf.size(images, out_type=tf.int32))
            decodable = self._decodable_mask(index, images)
            raw = tf.map_fn(one, (index, images, themes, decodable),
                            fn_output_signature=tf.TensorSpec([self.n_outputs], tf.float32))
            return _summary(raw, self._scores)

        def _header_within_max_pixels(self, data):
            """bool: the header's height x width is within ``max_pixels`` (True without a limit)."""
            if self.max_pixels is None:
                return tf.constant(True)
            hw = _header_hw(data)
            return hw[0] * hw[1] <= self.max_pixels

        def _decodable_mask(self, index, images):
            """bool ``[batch]``: False where decoding the bytes fails (a truncated or damaged file
            of a known format), found in a first pass through ``tf.data``'s ``ignore_errors``,
            the one graph construct that survives a failing op; only bytes that pass the format
            and header-size checks are decoded, one image at a time."""
            def probe(i, data):  # the same conditions as _decode_one's first two checks
                ok = tf.logical_and(_known_format(data), self._header_within_max_pixels(data))
                size = tf.cond(ok, lambda: tf.size(decode_image_uint8_tf(data)),
                               lambda: tf.constant(0))
                return i, size

            seen = (tf.data.Dataset.from_tensor_slices((index, images)).map(probe)
                    .ignore_errors(log_warning=False))
            return seen.reduce(tf.zeros_like(index, tf.bool), lambda acc, x: tf.tensor_scatter_nd_update(
                acc, [[x[0]]], [True]))

        def _decode_one(self, data, i, decodable, where):
            """One encoded image -> float32 (1, h, w, 3) after the size policy: format check,
            pixel limit from the header, 8-bit decoding, small-image checks, resize on uint8.
            Every refusal names ``images[i]`` with its index (never the raw bytes)."""
            name = [tf.strings.format(where + ": images[{}]", i)]
            dummy = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8))
            data = _checked(data, _known_format(data), dummy, name + [
                "is not an encoded JPEG, PNG, GIF, BMP or WebP file (other formats, e.g. TIFF or "
                "PPM, and other bytes are not accepted; convert them to PNG or JPEG); length in "
                "bytes:", tf.strings.length(data)])
            data = _checked(data, decodable, dummy, name + [
                "cannot be decoded: a damaged or truncated JPEG/PNG/GIF/BMP/WebP file (e.g. an "
                "interrupted download); re-encode or replace it; length in bytes:",
                tf.strings.length(data)])
            if self.max_pixels is not None:
                data = _checked(data, self._header_within_max_pixels(data), dummy, name + [
                    f"has more than max_pixels={self.max_pixels:,} pixels (from its header, not "
                    "decoded); height, width:", _header_hw(data)])
            img = decode_image_uint8_tf(data)
            hw = tf.shape(img)[:2]
            if self.max_pixels is not None:  # formats whose header size was not read (WebP)
                img = _checked(img, tf.cast(hw[0], tf.int64) * tf.cast(hw[1], tf.int64)
                               <= self.max_pixels, tf.zeros([1, 1, 3], tf.uint8), name + [
                    f"has more than max_pixels={self.max_pixels:,} pixels; height, width:", hw])
            img = _policy_checks(img, tf.shape(img)[:2], self.min_side, self.small_images,
                                 self.max_aspect, tf.zeros([int(self.min_side or 1)] * 2 + [3], tf.uint8),
                                 name)
            min_side = None if self.small_images == "error" else self.min_side
            img = img[None]
            if min_side or self.max_side:
                return _resize_to(img, _target_size(tf.shape(img)[1:3], min_side, self.max_side))
            return tf.cast(img, tf.float32)

        def _floats(self, images, themes, where):
            r4 = tf.equal(tf.rank(images), 4)
            flat = tf.concat([tf.reshape(images, [-1]), [0.0]], 0)
            lo, hi = tf.reduce_min(flat), tf.reduce_max(flat)
            shape_ok = tf.cond(r4, lambda: tf.logical_and(
                tf.equal(tf.shape(images)[-1], 3),
                tf.reduce_min(tf.shape(images)[1:3]) > 0), lambda: tf.constant(False))
            ok = tf.logical_and(shape_ok, tf.logical_and(lo >= 0.0, hi <= 255.0))
            images = _checked(images, ok, tf.zeros([1, 8, 8, 3]), [
                f"{where}: images must be a float32 tensor [batch, height, width, 3] of RGB "
                "values in 0..255; got shape", tf.shape(images), "min", lo, "max", hi])
            images.set_shape([None, None, None, 3])
            th = None
            if themes is not None:
                themes = self._check_theme(themes, tf.shape(images)[0], where)
            if self.takes_theme:
                th = themes if themes is not None else tf.zeros(tf.shape(images)[:1], tf.int64)
            return _summary(self._raw(images, th, where), self._scores)

        def _build_functions(self):
            self._score = tf.function(self._raw_fn, input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32),
                tf.TensorSpec([None], tf.int64)])
            s_bytes = tf.TensorSpec(None, tf.string, name="images")
            s_float = tf.TensorSpec(None, tf.float32, name="images")
            s_theme = tf.TensorSpec(None, tf.int64, name="theme")
            if self.takes_theme:
                self.predict_bytes = tf.function(
                    lambda images, theme: self._bytes(images, theme, "serving_default"),
                    input_signature=[s_bytes, s_theme])
                self.predict_images = tf.function(
                    lambda images, theme: self._floats(images, theme, "predict_images"),
                    input_signature=[s_float, s_theme])
                self.predict_bytes_no_theme = tf.function(
                    lambda images: self._bytes(images, None, "serving_no_theme"),
                    input_signature=[s_bytes])
            else:
                self.predict_bytes = tf.function(
                    lambda images: self._bytes(images, None, "serving_default"),
                    input_signature=[s_bytes])
                self.predict_images = tf.function(
                    lambda images: self._floats(images, None, "predict_images"),
                    input_signature=[s_float])

        def signatures(self) -> dict:
            """The SavedModel signatures: name -> concrete function."""
            sig = {
                "serving_default": self.predict_bytes.get_concrete_function(),
                "predict_images": self.predict_images.get_concrete_function(),
            }
            if self.takes_theme:
                sig["serving_no_theme"] = self.predict_bytes_no_theme.get_concrete_function()
            return sig

        def metadata(self) -> dict:
            """What the export holds (written next to the SavedModel as JSON)."""
            return {
                "format": EXPORT_FORMAT,
                "family": self.family.name,
                "model": self.model.name,
                "outputs": ["mean_score"] + ([] if self._scores is None else ["std_score", "distribution"]),
                "n_bins": None if self._scores is None else self.n_outputs,
                "bin_values": None if self._scores is None else self._scores.tolist(),
                "takes_theme": self.takes_theme,
                "min_side": self.min_side,
                "max_side": self.max_side,
                "small_images": self.small_images,
                "max_pixels": self.max_pixels,
                "max_aspect": self.max_aspect,
                "signatures": sorted(self.signatures()),
            }

    return ScoringModule


_MODULE_CLASS = None


def _module_class():
    global _MODULE_CLASS  # lazily created class (keeps TensorFlow out of `import ku.export`)
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _make_module_class()
    return _MODULE_CLASS


class _ScoringModuleProxy:
    """``ScoringModule(...)`` builds the tf.Module subclass on first use (no TF import here)."""

    def __call__(self, *args, **kwargs):
        return _module_class()(*args, **kwargs)

    def __instancecheck__(self, obj):
        return isinstance(obj, _module_class())


#: The ``tf.Module`` class (created on first use): ``ScoringModule(model, family, ...)``.
ScoringModule = _ScoringModuleProxy()


def _check_model(model):
    import keras

    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
    return model


def make_scoring_module(model, *, family="mlsp", n_bins=None, score_range=None, min_side="auto",
                        max_side=None, small_images="upscale", theme=None,
                        max_pixels=DEFAULT_MAX_PIXELS, max_aspect=MAX_ASPECT):
    """Wrap ``model`` in a :class:`ScoringModule` (in process; nothing is written).

    Args: see :func:`export_saved_model`.
    Returns:
        the module; ``module.predict_bytes(images[, theme])`` and
        ``module.predict_images(images[, theme])`` return the outputs dict of the module docstring.
    """
    return ScoringModule(_check_model(model), family, n_bins=n_bins, score_range=score_range,
                         min_side=min_side, max_side=max_side, small_images=small_images,
                         theme=theme, max_pixels=max_pixels, max_aspect=max_aspect)


def export_saved_model(model, path, *, family="mlsp", n_bins=None, score_range=None,
                       min_side="auto", max_side=None, small_images="upscale", theme=None,
                       overwrite=False, max_pixels=DEFAULT_MAX_PIXELS, max_aspect=MAX_ASPECT,
                       backbone_seed="auto"):
    """Export a Keras model as a TensorFlow SavedModel that needs neither ku nor Keras to run.

    Signatures ``serving_default`` (encoded bytes), ``predict_images`` (float32 images) and, for
    theme models, ``serving_no_theme``; outputs ``mean_score`` (+ ``std_score`` and
    ``distribution`` for distribution models). See the module docstring for shapes, decoding, the
    size policy and the input checks.

    Args:
        model: a Keras model taking 0..255 RGB images (preprocessing inside), e.g.
            :func:`ku.models.mlsp.mlsp_end_to_end`.
        path: output folder (created; must not exist or be empty unless ``overwrite``).
        family: a registered family name (:func:`family_names`): ``"mlsp"``, ``"apm"``,
            ``"theme_roi"``.
        n_bins: expected number of bins (checked against the model's output), or None.
        score_range: ``(lowest, highest)`` bin value; default ``(1, K)`` (AVA 1..10, Photo.net
            1..7). Ignored for MOS models.
        min_side: smallest side passed to the model (``"auto"``: the family's, 75 for MLSP); None
            disables the check.
        max_side: downscale images whose longer side exceeds this (None = full resolution).
        small_images: ``"upscale"`` (default) or ``"error"`` for images below ``min_side``.
        max_pixels: ``serving_default`` refuses an encoded image with more pixels, read from its
            header before decoding (default 50,000,000; None: no limit).
        max_aspect: an image below ``min_side`` whose longer side exceeds ``max_aspect`` times
            its shorter side is refused instead of upscaled (default 20; None: no limit).
        theme: whether the signatures take ``theme`` (default: the family takes themes and the
            model has an input named ``theme``).
        overwrite: replace an existing non-empty ``path``.
        backbone_seed: initialisation seed of the model's backbone, recorded in the metadata
            (a randomly initialised backbone is only reproducible with its seed); ``"auto"``:
            ``model.ku_seed`` (:func:`ku.backbones.backbone_seed`; None when the model does not
            carry it, e.g. loaded from a ``.keras`` file), or an int / None.

    Returns:
        ``pathlib.Path`` of the SavedModel folder. A JSON description of the export is written to
        ``<path>/assets.extra/ku_export.json``: the :meth:`ScoringModule.metadata` keys plus
        ``backbone_seed`` and ``backbone_weights`` (``model.ku_weights``: ``"random"``,
        ``"imagenet"``, a file, or None when unknown).

    Raises:
        ValueError: bad arguments (named), a non-empty ``path`` without ``overwrite``.
    """
    import tensorflow as tf

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ValueError(f"export_saved_model: path {str(path)!r} exists and is not an empty "
                         "folder (pass overwrite=True to replace it)")
    if isinstance(backbone_seed, str) and backbone_seed == "auto":
        backbone_seed = getattr(model, "ku_seed", None)
    if backbone_seed is not None and (isinstance(backbone_seed, bool) or not isinstance(
            backbone_seed, (int, np.integer))):
        raise ValueError(f"export_saved_model: backbone_seed must be an int, None or 'auto', got "
                         f"{backbone_seed!r}")
    module = make_scoring_module(model, family=family, n_bins=n_bins, score_range=score_range,
                                 min_side=min_side, max_side=max_side, small_images=small_images,
                                 theme=theme, max_pixels=max_pixels, max_aspect=max_aspect)
    signatures = module.signatures()
    if path.exists() and overwrite:
        import shutil

        shutil.rmtree(path) if path.is_dir() else path.unlink()
    tf.saved_model.save(module, str(path), signatures=signatures)
    extra = path / "assets.extra"
    extra.mkdir(exist_ok=True)
    meta = module.metadata()
    meta["backbone_seed"] = None if backbone_seed is None else int(backbone_seed)
    weights = getattr(model, "ku_weights", None)
    meta["backbone_weights"] = None if weights is None else str(weights)
    (extra / "ku_export.json").write_text(json.dumps(meta, indent=1))
    logger.info("exported %s (%s) to %s", model.name, module.family.name, path)
    return path


# --------------------------------------------------------------------------------------------
# Python-side scoring
# --------------------------------------------------------------------------------------------
def _as_image(x, what):
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.integer)
                                 or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{what} must be a numeric array (uint8 or float RGB 0..255), got dtype "
                         f"{a.dtype}")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (height, width, 3) RGB, got {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError(f"{what} must hold RGB values in 0..255, got {a.min()}..{a.max()}")
    return a.astype(np.float32, copy=False)


def score_images(model_or_module, images, *, themes=None, family="mlsp", **module_kwargs) -> dict:
    """Score images of any sizes in process, through the same graph as the export.

    Args:
        model_or_module: a Keras model (wrapped with :func:`make_scoring_module` and
            ``module_kwargs``) or a :class:`ScoringModule` (reuse one across calls: each new
            wrapper traces the model again).
        images: one ``(H, W, 3)`` array, an ``(N, H, W, 3)`` array, or a sequence of ``(H_i, W_i,
            3)`` arrays; uint8 or float, RGB 0..255.
        themes: theme indices ``(N,)`` for theme models.
        family: the family, when a Keras model is given.

    Returns:
        dict of numpy arrays: ``mean_score (N,)`` and, for distribution models, ``std_score
        (N,)`` and ``distribution (N, K)``.

    Raises:
        ValueError: naming the argument (``images``, ``images[i]``, ``themes``) for a wrong type,
            rank, channel count, value range, or a theme count that does not match.
    """
    import tensorflow as tf

    module = model_or_module
    if not isinstance(module, ScoringModule):
        module = make_scoring_module(model_or_module, family=family, **module_kwargs)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items = [images[i] for i in range(images.shape[0])]
    elif isinstance(images, np.ndarray) and images.ndim == 3:
        items = [images]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        shape = getattr(images, "shape", None)
        raise ValueError("images must be an (H, W, 3) or (N, H, W, 3) array or a list of (H, W, 3) "
                         f"arrays, got {type(images).__name__}" + (f" of shape {shape}" if shape else ""))
    arrays = [_as_image(x, f"images[{i}]") for i, x in enumerate(items)]
    if module.takes_theme:
        if themes is None:
            themes = np.zeros(len(arrays), np.int64)
        themes = np.asarray(themes)
        if themes.ndim != 1 or len(themes) != len(arrays) or not np.issubdtype(themes.dtype, np.integer):
            raise ValueError(f"themes must be {len(arrays)} integer theme indices (one per image), "
                             f"got {themes.dtype} array of shape {themes.shape}")
        if np.any(themes < 0):
            raise ValueError("themes must be >= 0 (0 = unknown theme)")
    elif themes is not None:
        raise ValueError(f"themes given, but the {module.family.name!r} model takes no theme")
    outs = []
    for i, a in enumerate(arrays):
        args = [tf.constant(a[None])]
        if module.takes_theme:
            args.append(tf.constant(themes[i:i + 1], tf.int64))
        outs.append({k: v.numpy() for k, v in module.predict_images(*args).items()})
    if not outs:
        raise ValueError("images is empty")
    return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}
