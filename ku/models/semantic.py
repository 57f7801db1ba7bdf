"""Semantic pre-training of APM (Murray & Gordo 2017 §3.3, "ResNet-AVA" in Table 1).

1. **Teacher targets** -- "we first use the original ResNet-101 classification model to obtain
   1000-dimensional vectors from the AVA dataset images by taking the softmax output s":
   :func:`build_teacher` (keras.applications ``ResNet101(include_top=True)``, 0..255 RGB in,
   Caffe preprocessing inside) and :func:`teacher_targets`, which computes ``s`` once per training
   image and caches it in an HDF5 file keyed by ``image_id`` (resumable: a second call only
   computes the missing images; unreadable images are skipped and reported). The teacher sees
   the image the way it was trained, at a fixed square size (``image_size``, 224): the whole image
   resized to ``image_size x image_size`` (``crop="resize"``, default) or its central square
   (``crop="center"``); the paper does not say which.
2. **Student** -- "a modified version of the proposed architecture ... one additional FC layer and
   softmax normalization after the output of the SPP that directly predicts s. The model is
   trained using the cross-entropy loss": :func:`student_model` = the APM backbone + SPP + L2 ->
   ``Dense(1000)`` -> softmax, trained by :func:`ku.training.train_student` with
   :class:`ku.losses.SoftCrossEntropy` on whole images batched by aspect ratio
   (:func:`ku.data.aspect_batches.aspect_batches`).
3. **Transfer** -- "only then start predicting the aesthetic distribution": the student's
   convolutional weights go into the aesthetic model with
   :func:`ku.models.apm.copy_backbone_weights` (or :func:`save_backbone_weights` + ``weights=path``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import keras
import numpy as np

from ku.layers import SpatialPyramidPooling

logger = logging.getLogger(__name__)

__all__ = [
    "TEACHER_FILE",
    "build_teacher",
    "teacher_targets",
    "read_teacher_cache",
    "student_model",
    "save_backbone_weights",
]

#: Keras' ImageNet ResNet-101 weights *with* the classifier.
TEACHER_FILE = "resnet101_weights_tf_dim_ordering_tf_kernels.h5"
_TEACHER_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + TEACHER_FILE
_TEACHER_MD5 = "f1aeb4b969a6efcfb50fad2f0c20cfc5"  # keras.src.applications.resnet.WEIGHTS_HASHES


# --------------------------------------------------------------------------------------------
# teacher
# --------------------------------------------------------------------------------------------
def _teacher_weights_path(download: bool, timeout: float) -> Path:
    from ku.backbones import cached_weights_file

    return cached_weights_file(
        TEACHER_FILE, _TEACHER_URL, _TEACHER_MD5, download=download, timeout=timeout,
        what="ImageNet ResNet-101 classifier weights (the semantic teacher)",
        how_to_pass="teacher weights='<path to the .h5 file>'")


def build_teacher(weights="imagenet", image_size: int = 224, *, download: bool = True,
                  timeout: float = 30.0) -> keras.Model:
    """The ImageNet ResNet-101 classifier (§3.3 teacher): ``(B, S, S, 3)`` 0..255 RGB -> softmax
    ``(B, 1000)``.

    Args:
        weights: ``"imagenet"`` (Keras cache; one download attempt, else
            :class:`ku.backbones.WeightsUnavailableError` naming the file and folder), a path to
            a ``.h5`` file, or None (random; for tests).
        image_size: square input side (224 as trained on ImageNet).
    """
    from ku.layers import ImagePreprocessing

    if weights is None:
        path = None
    elif isinstance(weights, str) and weights == "imagenet":
        path = _teacher_weights_path(download, timeout)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"build_teacher: weights file {path} does not exist")
    inp = keras.Input((int(image_size), int(image_size), 3), name="image")
    x = ImagePreprocessing("caffe", name="preprocessing")(inp)
    net = keras.applications.ResNet101(include_top=True, weights=None, input_tensor=x)
    model = keras.Model(inp, net.output, name="resnet101_teacher")
    if path is not None:
        try:
            model.load_weights(str(path))
        except Exception as e:
            raise ValueError(f"build_teacher: could not load {path}: {type(e).__name__}: {e}") from e
    return model


def _teacher_input(path, size: int, crop: str) -> np.ndarray:
    import cv2

    from ku.data.images import read_image

    im = read_image(path)
    if crop == "center":
        h, w = im.shape[:2]
        s = min(h, w)
        im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    interp = cv2.INTER_AREA if min(im.shape[:2]) >= size else cv2.INTER_LINEAR
    return cv2.resize(im, (size, size), interpolation=interp).astype(np.float32)


def read_teacher_cache(cache_path) -> dict:
    """``{image_id: softmax (1000,) float32}`` from a :func:`teacher_targets` cache (empty if absent)."""
    import h5py

    cache_path = Path(cache_path)
    if not cache_path.exists():
        return {}
    with h5py.File(cache_path, "r") as f:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["image_id"][:]]
        s = f["softmax"][: len(ids)]
    return dict(zip(ids, s))


def teacher_targets(ids, cache_path, teacher: Optional[keras.Model] = None, *, weights="imagenet",
                    image_size: int = 224, crop: str = "resize", batch_size: int = 16,
                    verbose: int = 1) -> tuple:
    """Teacher softmax ``s`` for every row of ``ids``, computed once and cached (§3.3).

    The HDF5 cache holds ``image_id`` (strings) and ``softmax`` ``(n, 1000)`` float32, appended and
    flushed batch by batch, so an interrupted run resumes where it stopped; attributes record the
    teacher's input size and crop (a cache made with other settings raises ``ValueError``).

    Args:
        ids: ids table (``image_id``, ``image_path``).
        cache_path: the HDF5 file (created).
        teacher: a model from :func:`build_teacher` (built with ``weights``/``image_size`` if None;
            only built when something is missing from the cache).
        crop: ``"resize"`` (whole image squashed to the square) or ``"center"``.

    Returns:
        ``(targets, failed)``: ``(N, 1000)`` float32 aligned with ``ids`` (NaN rows for images
        that could not be read), and a list of ``(image_id, reason)``.
    """
    import h5py

    if crop not in ("resize", "center"):
        raise ValueError(f"teacher_targets: crop must be 'resize' or 'center', got {crop!r}")
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    image_ids = ids["image_id"].astype(str).tolist()
    paths = ids["image_path"].astype(str).tolist()
    failed = []
    with h5py.File(cache_path, "a") as f:
        if "image_id" not in f:
            f.create_dataset("image_id", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
            f.create_dataset("softmax", shape=(0, 1000), maxshape=(None, 1000), dtype="float32",
                             chunks=(64, 1000))
            f.attrs["image_size"] = int(image_size)
            f.attrs["crop"] = crop
        elif int(f.attrs["image_size"]) != int(image_size) or f.attrs["crop"] != crop:
            raise ValueError(f"teacher_targets: {cache_path} was made with image_size="
                             f"{f.attrs['image_size']}, crop={f.attrs['crop']!r}; asked for "
                             f"{image_size}, {crop!r}. Use another cache file.")
        done = {(i.decode() if isinstance(i, bytes) else str(i)) for i in f["image_id"][:]}
        todo = [k for k, i in enumerate(image_ids) if i not in done]
        if todo:
            if teacher is None:
                teacher = build_teacher(weights, image_size)
            bar = keras.utils.Progbar(len(todo), verbose=verbose, unit_name="image")
            for start in range(0, len(todo), batch_size):
                rows, xs = [], []
                for k in todo[start:start + batch_size]:
                    try:
                        xs.append(_teacher_input(paths[k], int(image_size), crop))
                        rows.append(k)
                    except (OSError, ValueError) as e:
                        logger.warning("teacher_targets: skipping %s (%s): %s", image_ids[k], paths[k], e)
                        failed.append((image_ids[k], str(e)))
                if rows:
                    s = np.asarray(teacher.predict_on_batch(np.stack(xs)), np.float32)
                    n = f["image_id"].shape[0]
                    f["image_id"].resize((n + len(rows),))
                    f["softmax"].resize((n + len(rows), 1000))
                    f["image_id"][n:] = [image_ids[k] for k in rows]
                    f["softmax"][n:] = s
                    f.flush()
                bar.add(len(todo[start:start + batch_size]))
    cache = read_teacher_cache(cache_path)
    targets = np.full((len(image_ids), 1000), np.nan, np.float32)
    for k, i in enumerate(image_ids):
        if i in cache:
            targets[k] = cache[i]
    return targets, failed


# --------------------------------------------------------------------------------------------
# student
# --------------------------------------------------------------------------------------------
def student_model(backbone: str = "resnet101", weights="imagenet", *, n_classes: int = 1000,
                  levels: Sequence[int] = (3,), masked: bool = True, freeze_batch_norm: bool = True,
                  backbone_model: Optional[keras.Model] = None, input_shape=(None, None, 3)) -> keras.Model:
    """The §3.3 student: APM backbone -> SPP (3x3, max) + L2 -> ``Dense(n_classes)`` -> softmax.

    Inputs ``[image, valid_size]`` as :func:`ku.models.apm.apm_model`; output ``semantic``
    ``(B, n_classes)`` probabilities. The backbone sub-model is named ``backbone`` (for
    :func:`ku.models.apm.copy_backbone_weights`).
    """
    from ku.models.apm import apm_backbone

    net = backbone_model or apm_backbone(backbone, weights, masked=masked,
                                         freeze_batch_norm=freeze_batch_norm, input_shape=input_shape)
    images = keras.Input(shape=tuple(net.inputs[0].shape[1:]), name="image")
    sizes = keras.Input(shape=(2,), dtype="int32", name="valid_size")
    features, fsizes = net([images, sizes])
    x = SpatialPyramidPooling(levels, mode="max", l2_normalize=True, name="semantic_spp")([features, fsizes])
    x = keras.layers.Dense(int(n_classes), name="semantic_fc")(x)
    p = keras.layers.Activation("softmax", name="semantic")(x)
    return keras.Model([images, sizes], p, name="apm_semantic_student")


def save_backbone_weights(model: keras.Model, path) -> Path:
    """Save the ``backbone`` sub-model's weights (``.weights.h5``) of a student or APM model.

    Reload them with :func:`ku.models.apm.copy_backbone_weights` from a model, or build the
    aesthetic model and ``model.get_layer("backbone").load_weights(path)`` (same masking)."""
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"save_backbone_weights: file name must end in .weights.h5, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.get_layer("backbone").save_weights(str(path))
    return path
