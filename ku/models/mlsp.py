"""MLSP feature extraction and end-to-end MLSP models (Hosu et al. 2019).

Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
Features", CVPR 2019:

* §3.1 / Fig. 1-2: *multi-level spatially pooled* features: the output of every inception module
  of a pretrained backbone is pooled to a fixed size and the results are concatenated along
  channels: narrow (1 x 1, global average pooling, 16,928 channels for InceptionResNet-v2, 10,048
  for Inception-v3) or wide (5 x 5 area interpolation). Features are extracted from images at
  their original resolution (the backbone is fully convolutional).
* §4.1 / Table 2 "Finetune = yes": the same heads trained end to end with the backbone on
  224 x 224 random crops (random location, random flip) of 256 x 256 rescaled images; at test
  time predictions are averaged over 20 random augmentations (§3.1, last paragraph).

Functions:
    :func:`mlsp_extractor`  image (0..255 RGB, any size) -> narrow or wide MLSP features
    :func:`mlsp_end_to_end` image -> score, ``head(extractor(image))`` in one model
    :func:`finetune_model`  trainable end-to-end model for Table 2's fine-tuning setting
    :func:`rescaled_crop_augment` tf.data map function: 256x256 rescale + 224 crop (+ flip)
    :func:`predict_tta`     average of ``n`` random crop/flip predictions per image
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence, Union

import keras
import numpy as np

from ku.backbones import build_backbone, mlsp_tap_names
from ku.layers import AreaPooling2D

__all__ = [
    "mlsp_extractor",
    "mlsp_end_to_end",
    "finetune_model",
    "rescaled_crop_augment",
    "predict_tta",
]

logger = logging.getLogger(__name__)

FEATURES = ("narrow", "wide")
POOLINGS = FEATURES  # deprecated name of FEATURES


def _deprecated_pooling(func: str, features: str, pooling) -> str:
    """``features`` after the deprecated ``pooling=`` keyword (same values), with a warning."""
    if pooling is None:
        return features
    import warnings

    warnings.warn(f"{func}(pooling=...) is deprecated, use features='narrow' | 'wide'",
                  DeprecationWarning, stacklevel=3)
    return pooling


def mlsp_extractor(
    backbone: str = "inception_resnet_v2",
    weights="imagenet",
    features: str = "wide",
    pool_size=(5, 5),
    backbone_model: Optional[keras.Model] = None,
    blocks: Optional[Sequence[int]] = None,
    input_shape=(None, None, 3),
    pooling: Optional[str] = None,
) -> keras.Model:
    """Multi-level spatially pooled (MLSP) feature extractor, Hosu et al. 2019 §3.1, Fig. 1-2.

    Taps the outputs of the inception modules of ``backbone`` (see
    :func:`ku.backbones.mlsp_tap_names`), pools each one and concatenates them on channels:

    * ``features="narrow"``: ``GlobalAveragePooling2D`` per tap (layers ``gap<i>``) ->
      ``Concatenate`` -> ``(B, sum b_i)``: 16,928 for InceptionResNetV2, 10,048 for InceptionV3;
    * ``features="wide"``: :class:`ku.layers.AreaPooling2D` to ``pool_size`` per tap (layers
      ``area_pool<i>``) -> ``Concatenate(axis=-1)`` -> ``(B, 5, 5, sum b_i)``.

    Args:
        backbone: a key of :data:`ku.backbones.BACKBONES`; the paper uses
            ``"inception_resnet_v2"`` (best) and ``"inception_v3"``.
        weights: backbone weights (``"imagenet"``, ``None`` or a file; see
            :func:`ku.backbones.build_backbone`). Ignored when ``backbone_model`` is given.
        features: ``"wide"`` or ``"narrow"``.
        pool_size: output grid of the wide features (paper: 5 x 5).
        backbone_model: an already built :func:`ku.backbones.build_backbone` model of the same
            ``backbone`` (its layers are shared, nothing is copied).
        blocks: indices of the taps to keep (default all), e.g. ``range(6, 11)`` for the last
            5 Inception-v3 blocks of Table 2's "Single-1FC (5)".
        input_shape: image shape when the backbone is built here; ``(None, None, 3)`` = any size
            (original resolution, as the paper extracts).
        pooling: deprecated name of ``features`` (same values); warns.

    Returns:
        ``keras.Model`` mapping 0..255 RGB images ``(B, H, W, 3)`` to features, named
        ``"mlsp_<features>_<backbone>"``; it carries the backbone's ``ku_seed`` / ``ku_weights``
        (:func:`ku.backbones.backbone_seed`), which feature stores record.
    """
    features = _deprecated_pooling("mlsp_extractor", features, pooling)
    if features not in FEATURES:
        raise ValueError(f"mlsp_extractor: features must be one of {FEATURES}, got {features!r}")
    if backbone_model is None:
        backbone_model = build_backbone(backbone, weights=weights, input_shape=input_shape)
    names = mlsp_tap_names(backbone, backbone_model)
    if blocks is not None:
        blocks = list(blocks)
        bad = [b for b in blocks if not -len(names) <= b < len(names)]
        if bad or not blocks:
            raise ValueError(
                f"mlsp_extractor: blocks must be non-empty indices into the {len(names)} "
                f"{backbone} taps, got {blocks}"
            )
        names = [names[b] for b in blocks]
    taps = [backbone_model.get_layer(n).output for n in names]
    if features == "narrow":
        pooled = [
            keras.layers.GlobalAveragePooling2D(name=f"gap{i}")(t) for i, t in enumerate(taps)
        ]
        name_out = "mlsp_narrow"
    else:
        pooled = [
            AreaPooling2D(pool_size, name=f"area_pool{i}")(t) for i, t in enumerate(taps)
        ]
        name_out = "mlsp_wide"
    out = (
        keras.layers.Concatenate(axis=-1, name=name_out)(pooled)
        if len(pooled) > 1
        else keras.layers.Identity(name=name_out)(pooled[0])
    )
    model = keras.Model(backbone_model.input, out, name=f"mlsp_{features}_{backbone}")
    for attr in ("ku_seed", "ku_weights"):  # which backbone: recorded with extracted features
        if hasattr(backbone_model, attr):
            setattr(model, attr, getattr(backbone_model, attr))
    return model


def mlsp_end_to_end(extractor: keras.Model, head: keras.Model, name: str = "mlsp_end_to_end",
                    min_side="auto", small_images: str = "upscale"):
    """Image -> score model: ``head`` nested on top of ``extractor`` (Hosu et al. 2019 §3).

    Same as the released ``predict_mlsp_wide`` notebook: ``Model(extractor.input,
    head(extractor.output))``; the output equals ``head(extractor(image))`` for every image of at
    least ``min_side`` pixels per side. The extractor's layers and the head are shared with the
    given models (train one, the other sees it).

    Small images follow ku's size policy (:mod:`ku.size_policy`): when the image input accepts
    any size, a :class:`ku.layers.MinSideUpscale` layer (``min_side_upscale``) in front of the
    extractor upscales a batch whose shorter side is below ``min_side`` (bilinear, aspect kept),
    so ``predict`` and ``__call__`` score a 16 x 16 image instead of failing or returning NaN.

    Args:
        extractor: :func:`mlsp_extractor` model.
        head: head model on the extractor's features.
        name: model name.
        min_side: the backbone's minimum side; ``"auto"``: from the extractor
            (:func:`ku.extraction.resolve_min_side`, 75 for the Inception backbones); None: no
            layer (images below the minimum then fail in the backbone).
        small_images: ``"upscale"`` (default) or ``"error"`` (a clear error naming the minimum).

    Raises:
        ValueError: the head's input shape does not match the extractor's output.
    """
    feat = extractor.output
    head_in = getattr(head, "input_shape", None)
    if head_in is not None and not isinstance(head_in, list):
        want, got = tuple(head_in[1:]), tuple(feat.shape[1:])
        if len(want) != len(got) or any(w is not None and g is not None and w != g
                                         for w, g in zip(want, got)):
            raise ValueError(
                f"mlsp_end_to_end: head {head.name!r} expects features {want}, but extractor "
                f"{extractor.name!r} gives {got}"
            )
    from ku.extraction import resolve_min_side

    min_side = resolve_min_side(extractor, min_side)
    hw = tuple(extractor.input.shape[1:3])
    if min_side is None or (None not in hw and min(hw) >= min_side):  # fixed size: nothing to do
        return keras.Model(extractor.input, head(feat), name=name)
    from ku.layers import MinSideUpscale

    image = keras.Input(tuple(extractor.input.shape[1:]), name="image")
    x = MinSideUpscale(int(min_side), small_images=small_images, name="min_side_upscale")(image)
    feat = extractor._run_through_graph(x, operation_fn=lambda op: op)
    return keras.Model(image, head(feat), name=name)


def finetune_model(
    backbone: str,
    head_fn: Union[Callable[[tuple], keras.Model], keras.Model],
    features: str = "narrow",
    weights="imagenet",
    input_shape=(224, 224, 3),
    pool_size=(5, 5),
    blocks: Optional[Sequence[int]] = None,
    backbone_model: Optional[keras.Model] = None,
    pooling: Optional[str] = None,
) -> keras.Model:
    """End-to-end trainable MLSP model, Hosu et al. 2019 §4.1 / Table 2 ("Finetune = yes").

    The backbone (with its preprocessing), the MLSP pooling and the head form one model whose
    weights are all trainable. Table 2 fine-tunes Inception-v3 with narrow features on 224 x 224
    random crops of 256 x 256 rescaled images (see :func:`rescaled_crop_augment`), batch 32,
    Adam, MSE on the MOS (§3.3); test predictions average 20 random crops (:func:`predict_tta`).
    Batch-normalisation layers of the backbone run in training mode during ``fit`` (Keras
    default), as in a Keras-2 fine-tuning run.

    Args:
        backbone: backbone name, e.g. ``"inception_v3"``.
        head_fn: a callable ``head_fn(feature_shape) -> keras.Model`` (``feature_shape`` is e.g.
            ``(10048,)`` or ``(5, 5, 10048)``), or an already built head model.
        features, pool_size, blocks: as in :func:`mlsp_extractor`.
        weights, input_shape: backbone weights and image shape (default 224 x 224 crops).
        backbone_model: reuse an already built backbone.
        pooling: deprecated name of ``features`` (same values); warns.

    Returns:
        ``keras.Model`` image (0..255 RGB) -> head output, every layer trainable.

    Example (Table 2, Single-3FC fine-tuned on Inception-v3)::

        from ku.models.heads import single_3fc
        model = finetune_model("inception_v3", lambda shape: single_3fc(shape[0]))
        model.compile(keras.optimizers.Adam(1e-4), "mse")
    """
    features = _deprecated_pooling("finetune_model", features, pooling)
    extractor = mlsp_extractor(
        backbone,
        weights=weights,
        features=features,
        pool_size=pool_size,
        backbone_model=backbone_model,
        blocks=blocks,
        input_shape=input_shape,
    )
    feature_shape = tuple(extractor.output.shape[1:])
    head = head_fn if isinstance(head_fn, keras.Model) else head_fn(feature_shape)
    if not isinstance(head, keras.Model):
        raise TypeError(
            f"finetune_model: head_fn must return a keras.Model, got {type(head).__name__}"
        )
    model = mlsp_end_to_end(extractor, head, name=f"mlsp_finetune_{features}_{backbone}")
    model.trainable = True  # propagates to every nested layer
    return model


# ---------------------------------------------------------------------------------------------
# Rescaled-image augmentation (Hosu et al. 2019 §3.1 last paragraph, §4.1)
# ---------------------------------------------------------------------------------------------
def _rescale(image, rescale: int):
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    image = tf.cast(image, tf.float32)
    return tf.image.resize(image, (rescale, rescale), method="bilinear", antialias=True)


def rescaled_crop_augment(image, training: bool, size: int = 224, rescale: int = 256, seed=None):
    """tf.data map function for the rescaled setting of Hosu et al. 2019 §4.1.

    The image is resized to ``rescale x rescale`` (bilinear with anti-aliasing; aspect ratio
    not kept, as "rescaled to the fixed resolution of 256 x 256"). With ``training=True`` a
    ``size x size`` crop is taken at a uniformly random location and mirrored left-right with
    probability 1/2 (§3.1: "crops at completely random locations ... and random flips"); with
    ``training=False`` the centre crop is returned (a single deterministic view; the paper's test
    protocol averages 20 random views, see :func:`predict_tta`).

    Args:
        image: ``(H, W, 3)`` RGB tensor, uint8 or float in 0..255.
        training: Python bool.
        size: crop side (224).
        rescale: side of the rescaled image (256).
        seed: ``None`` (stateful TF random ops) or a shape-``[2]`` int tensor for stateless,
            reproducible ops, e.g. from ``tf.data.Dataset.random(seed).batch(2)`` zipped with
            the images.

    Returns:
        float32 ``(size, size, 3)`` tensor in 0..255 (the model preprocesses internally).
    """
    import tensorflow as tf

    if size > rescale:
        raise ValueError(f"rescaled_crop_augment: size {size} > rescale {rescale}")
    image = _rescale(image, rescale)
    if not training:
        off = (rescale - size) // 2
        return image[off : off + size, off : off + size, :]
    if seed is None:
        image = tf.image.random_crop(image, (size, size, 3))
        return tf.image.random_flip_left_right(image)
    seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    image = tf.image.stateless_random_crop(image, (size, size, 3), seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def predict_tta(
    model: keras.Model,
    images,
    n: int = 20,
    seed: int = 0,
    size: int = 224,
    rescale: int = 256,
    batch_size: int = 32,
) -> np.ndarray:
    """Average of ``n`` random-augmentation predictions per image (Hosu et al. 2019 §3.1, §4.1).

    Each image is rescaled to ``rescale x rescale`` like :func:`rescaled_crop_augment`; ``n``
    crops of ``size x size`` at uniformly random positions, each mirrored with probability 1/2,
    are drawn with ``np.random.default_rng(seed)`` (reproducible, independent of any global RNG)
    and the model's predictions are arithmetically averaged. The paper uses ``n = 20``.

    Args:
        model: image (0..255 RGB, ``size x size``) -> prediction.
        images: ``(N, H, W, 3)`` array or a sequence of ``(H_i, W_i, 3)`` arrays (any sizes).
        n: augmentations per image.
        seed: seed of the local random generator.
        size, rescale: crop and rescale sides.
        batch_size: prediction batch size.

    Returns:
        ``(N,) + model_output_shape[1:]`` float array of averaged predictions.
    """
    if n < 1:
        raise ValueError(f"predict_tta: n must be >= 1, got {n}")
    if size > rescale:
        raise ValueError(f"predict_tta: size {size} > rescale {rescale}")
    rng = np.random.default_rng(seed)
    results = []
    for k, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"predict_tta: image {k} has shape {image.shape}, expected (H, W, 3)")
        big = np.asarray(_rescale(image, rescale))
        oy = rng.integers(0, rescale - size + 1, size=n)
        ox = rng.integers(0, rescale - size + 1, size=n)
        flip = rng.random(n) < 0.5
        crops = np.stack(
            [
                big[y : y + size, x : x + size][:, ::-1] if f else big[y : y + size, x : x + size]
                for y, x, f in zip(oy, ox, flip)
            ]
        )
        pred = model.predict(crops, batch_size=batch_size, verbose=0)
        results.append(np.mean(np.asarray(pred, dtype=np.float64), axis=0))
    return np.stack(results) if results else np.zeros((0,))
