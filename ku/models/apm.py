"""APM: Murray & Gordo 2017, "A Deep Architecture for Unified Aesthetic Prediction".

Architecture (§3.2, Fig. 2)::

    image (whole, own aspect ratio; batched: canvas + valid sizes)
      -> ResNet-101 convolutional layers (keras.applications, 0..255 RGB in, preprocessing inside)
      -> adaptive SPP, 3x3 grid, max pooling, over each image's valid region -> 2048 * 9 = 18,432
      -> L2 normalisation of the stacked vector
      -> FC 4096 + ReLU -> FC 10 + ReLU = p (not normalised during training, §3.4)

Evaluation (§4, eq. 2): ``p_hat = p / sum(p)`` (:func:`normalize_distribution`), predicted mean
``mu = sum_i i * p_hat_i`` (:func:`predicted_mean`).

Variants (Table 1, §4.1) -- ``variant=``:

========== ============================================ ========================================
variant    output                                       loss (:func:`apm_loss`)
========== ============================================ ========================================
dist       10 bins (FC 10 + ReLU)                       Huber per bin, delta = 1/sigma^2,
                                                        sigma = 3, summed over bins (eq. 1)
dist_eucl  10 bins                                      Euclidean ``0.5 ||p - g||^2``
mean       1 value (FC 1 + ReLU), the mean score        Huber (same delta) on the mean
========== ============================================ ========================================

``backbone="vgg16"`` gives the VGG rows (SPP after ``block5_conv3``, the last convolution:
512 * 9 = 4,608). APM-m (``global_max_branch=True``, §4.1 "ResNet-AVA-dist-m"): a second branch
after the last convolution, global max pooling (over the valid region) -> L2 -> FC -> FC 10;
the two distributions are fused late by :func:`fuse_distributions` with a weight fit on the
validation set by :func:`fit_fusion_weight`; the new FC layers train at 10x the rate of the
others (:func:`apm_optimizer`, lr 1e-3 vs 1e-4).

**Padding.** Batched inputs are ``[images, valid_sizes]``: a zero-padded canvas with each image
at its top-left and its ``(height, width)``. With ``masked=True`` (default) the backbone is
wrapped by :func:`ku.models.masking.masked_model`, so activations outside each image's valid
region are zero after every layer and an image's prediction in a padded batch equals its
prediction alone (tested). ``masked=False`` is plain zero padding (the padding leaks through
biases/batch norm and border convolutions; SPP still pools over the mapped valid region, so the
difference measured is the backbone's leak). Single unpadded images: pass
``valid_sizes = [[H, W]]`` (see :func:`predict_images`).

**Batch normalisation.** ResNet's batch-norm layers are frozen (``freeze_batch_norm=True``:
inference mode, moving statistics and scale/offset fixed), as Caffe ResNets are fine-tuned with
``use_global_stats``; batch statistics over a padded canvas would also let the padding leak
during training.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import keras
import numpy as np

from ku.layers import DistributionMean, L1Normalization, SpatialPyramidPooling

logger = logging.getLogger(__name__)

__all__ = [
    "VARIANTS",
    "FEATURE_LAYERS",
    "HUBER_SIGMA",
    "apm_model",
    "apm_backbone",
    "apm_loss",
    "apm_targets",
    "apm_optimizer",
    "new_layer_pattern",
    "normalize_distribution",
    "predicted_mean",
    "fuse_distributions",
    "fit_fusion_weight",
    "predict_images",
    "predict_batches",
    "init_output_bias",
    "copy_backbone_weights",
    "spp_features_model",
    "adapt_feature_normalization",
    "apm_head_model",
    "L1Normalization",
    "apm_inference_model",
]

#: Table 1 variants.
VARIANTS = ("dist", "dist_eucl", "mean")
#: sigma of eq. 1 (delta = 1 / sigma^2), "chosen after cross-validation" (§3.1).
HUBER_SIGMA = 3.0
#: The layer after which SPP is applied, per backbone (default: the backbone's output).
FEATURE_LAYERS = {"vgg16": "block5_conv3"}

#: Names of the layers APM adds on top of the backbone (their variable paths start with these).
FC1, FC2, SPP = "apm_fc1", "apm_fc2", "apm_spp"
BRANCH_POOL, BRANCH_FC1, BRANCH_FC2 = "max_branch_pool", "max_branch_fc1", "max_branch_fc2"
FEATURE_NORM = "apm_feature_norm"


# --------------------------------------------------------------------------------------------
# backbone
# --------------------------------------------------------------------------------------------
def apm_backbone(backbone: str = "resnet101", weights="imagenet", *, masked: bool = True,
                 freeze_batch_norm: bool = True, feature_layer: Optional[str] = None,
                 input_shape=(None, None, 3)) -> keras.Model:
    """The convolutional part of APM as one sub-model named ``"backbone"``.

    Returns a model ``[images (B,H,W,3) 0..255, valid_sizes (B,2) int32] -> [features (B,h,w,C),
    feature_valid_sizes (B,2) int32]``. ``masked=True``: :func:`ku.models.masking.masked_model`
    (exact); ``masked=False``: the plain backbone on the canvas, the sizes mapped through the same
    layer geometry.

    Args:
        backbone: ``"resnet101"`` (paper), ``"vgg16"`` (Table 1 VGG rows), ``"resnet50"`` (tests).
        weights: ``"imagenet"`` | None | path (see :func:`ku.backbones.build_backbone`).
        masked: exact padding masking.
        freeze_batch_norm: batch-norm layers in inference mode, not trained (module docstring).
        feature_layer: layer whose output is pooled (default :data:`FEATURE_LAYERS` or the
            backbone's output).
        input_shape: image input shape, ``(None, None, 3)`` for any size.
    """
    from ku import backbones

    base = backbones.build_backbone(backbone, weights=weights, input_shape=input_shape)
    if freeze_batch_norm:
        backbones.freeze_batch_norm(base)
    feature_layer = feature_layer or FEATURE_LAYERS.get(backbone)
    if masked:
        from ku.models.masking import masked_model

        return masked_model(base, outputs=[feature_layer] if feature_layer else None, name="backbone")
    feat = base.get_layer(feature_layer).output if feature_layer else base.outputs[0]
    conv = keras.Model(base.inputs, feat, name=f"{base.name}_conv")
    images = keras.Input(shape=tuple(input_shape), name="image")
    sizes = keras.Input(shape=(2,), dtype="int32", name="valid_size")
    from ku.layers import MapValidSize
    from ku.models.masking import size_mapping

    fsizes = sizes
    for i, (_, geometry) in enumerate(size_mapping(base, feat)):
        fsizes = MapValidSize(**geometry, name=f"valid_size_{i}")(fsizes)
    return keras.Model([images, sizes], [conv(images), fsizes], name="backbone")


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def apm_model(backbone: str = "resnet101", weights="imagenet", *, variant: str = "dist",
              n_bins: int = 10, levels: Sequence[int] = (3,), spp_mode: str = "max",
              masked: bool = True, global_max_branch: bool = False, fc_units: int = 4096,
              branch_units: Optional[int] = None, freeze_batch_norm: bool = True,
              feature_layer: Optional[str] = None, input_shape=(None, None, 3),
              backbone_model: Optional[keras.Model] = None, feature_normalization: bool = False,
              name: Optional[str] = None) -> keras.Model:
    """Build APM (Murray & Gordo 2017 §3.2, Fig. 2; variants of §4.1 / Table 1).

    Args:
        backbone: ``"resnet101"`` (paper), ``"vgg16"`` (VGG rows of Table 1), ``"resnet50"``.
        weights: backbone weights: ``"imagenet"`` | None | path (e.g. the semantic student's
            backbone, see :mod:`ku.models.semantic`).
        variant: ``"dist"`` | ``"dist_eucl"`` (10 outputs) or ``"mean"`` (1 output); see the
            module table and :func:`apm_loss`.
        n_bins: score bins (10 on AVA).
        levels: SPP pyramid levels (paper ``(3,)``: 2048 * 9 = 18,432 for ResNet-101).
        spp_mode: ``"max"`` (paper) or ``"average"``.
        masked: exact padding masking (module docstring); False = plain zero padding.
        global_max_branch: add the APM-m branch (§4.1): global max pooling -> L2 -> FC -> FC.
        fc_units: width of the first FC layer (4096, §3.2). Tests use small values.
        branch_units: width of the branch's first FC layer (not given in the paper; default
            ``fc_units``).
        freeze_batch_norm: see the module docstring.
        feature_layer: override the layer SPP pools (default :data:`FEATURE_LAYERS`).
        input_shape: image shape, ``(None, None, 3)`` = any size.
        backbone_model: a prebuilt :func:`apm_backbone` to use (weights shared) instead of
            building one (``backbone``/``weights``/``masked``/... are then ignored).
        feature_normalization: put a :class:`ku.layers.FeatureStandardization` layer
            (``apm_feature_norm``) between the L2-normalised SPP vector and ``apm_fc1`` (ku, not
            the paper). It is the identity until :func:`adapt_feature_normalization` sets it from
            the training images' SPP vectors; see that function for why.
        name: model name (default ``apm_<variant>``, ``apm_<variant>_m`` with the branch).

    Returns:
        ``keras.Model`` with inputs ``[image (B, H, W, 3) float 0..255, valid_size (B, 2) int32]``
        and output ``distribution`` ``(B, n_bins)`` (``mean`` ``(B, 1)`` for ``variant="mean"``),
        non-negative and not normalised; with ``global_max_branch`` a second output
        ``max_distribution`` (outputs are a dict keyed by these names).
        Images whose valid size is below the backbone's minimum side (32 px) are upscaled in
        the canvas first (ku's size policy, :class:`ku.layers.MinSideUpscale`, layer
        ``min_side_upscale``, absent when a fixed ``input_shape`` is large enough).
        Layer names: ``backbone`` (sub-model), ``apm_spp``, [``apm_feature_norm``], ``apm_fc1``, ``apm_fc2`` and
        ``max_branch_pool``, ``max_branch_fc1``, ``max_branch_fc2``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"apm_model: variant must be one of {VARIANTS}, got {variant!r}")
    if global_max_branch and variant == "mean":
        raise ValueError("apm_model: global_max_branch (APM-m) predicts distributions; use variant 'dist'")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"apm_model: n_bins must be an integer >= 2, got {n_bins!r}")
    for what, v in (("fc_units", fc_units), ("branch_units", branch_units)):
        if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"apm_model: {what} must be a positive integer, got {v!r}")
    net = backbone_model or apm_backbone(backbone, weights, masked=masked,
                                         freeze_batch_norm=freeze_batch_norm,
                                         feature_layer=feature_layer, input_shape=input_shape)
    images = keras.Input(shape=tuple(net.inputs[0].shape[1:]), name="image")
    sizes = keras.Input(shape=(2,), dtype="int32", name="valid_size")
    features, fsizes = net(_upscale_small([images, sizes], backbone))
    x = SpatialPyramidPooling(levels, mode=spp_mode, l2_normalize=True, name=SPP)([features, fsizes])
    if feature_normalization:
        from ku.layers import FeatureStandardization

        x = FeatureStandardization(name=FEATURE_NORM)(x)
    x = keras.layers.Dense(fc_units, activation="relu", name=FC1)(x)
    out_name = "mean" if variant == "mean" else "distribution"
    n_out = 1 if variant == "mean" else int(n_bins)
    p = keras.layers.Dense(n_out, activation="relu", name=FC2)(x)
    p = keras.layers.Identity(name=out_name)(p)
    outputs = p
    if global_max_branch:
        g = SpatialPyramidPooling((1,), mode="max", l2_normalize=True, name=BRANCH_POOL)([features, fsizes])
        g = keras.layers.Dense(branch_units or fc_units, activation="relu", name=BRANCH_FC1)(g)
        g = keras.layers.Dense(int(n_bins), activation="relu", name=BRANCH_FC2)(g)
        g = keras.layers.Identity(name="max_distribution")(g)
        outputs = {"distribution": p, "max_distribution": g}
    name = name or f"apm_{variant}" + ("_m" if global_max_branch else "")
    return keras.Model([images, sizes], outputs, name=name)


def _upscale_small(inputs, backbone):
    """ku's size policy (:mod:`ku.size_policy`) at APM's input: images below the backbone's
    minimum side (32 px for ResNet / VGG16) are upscaled in the canvas by
    :class:`ku.layers.MinSideUpscale`, so ``predict`` / ``__call__`` never see a feature map
    that is empty; a fixed canvas that is large enough needs no layer."""
    from ku.backbones import BACKBONES
    from ku.layers import MinSideUpscale

    spec = BACKBONES.get(backbone)
    hw = tuple(inputs[0].shape[1:3])
    if spec is None or (None not in hw and min(hw) >= spec.min_size):
        return inputs
    return MinSideUpscale(int(spec.min_size), name="min_side_upscale")(inputs)


def spp_features_model(model: keras.Model) -> keras.Model:
    """``[image, valid_size] -> the L2-normalised SPP vector`` of an APM model (shared weights);
    18,432-d for ResNet-101 and the paper's 3x3 grid."""
    return keras.Model(model.inputs, model.get_layer(SPP).output, name=f"{model.name}_spp")


def adapt_feature_normalization(model: keras.Model, spp_train) -> None:
    """Set the ``apm_feature_norm`` layer (``apm_model(feature_normalization=True)``) from the
    training images' SPP vectors ``spp_train`` ``(N, D)`` (:func:`spp_features_model`).

    Each of the ``D`` components is centred and scaled to a deviation of ``1 / sqrt(D)``
    (:meth:`ku.layers.FeatureStandardization.set_statistics`), so the vector that reaches
    ``apm_fc1`` has a squared norm of 1 on average, like the paper's L2-normalised vector, and
    the paper's learning rate suits it. Why (not in the paper): with ImageNet weights the SPP
    vectors of different images point in different directions; with a randomly initialised
    ResNet they share one dominant direction (measured on the demo at a shorter side of 256,
    2026-11-29: the per-component deviation over images is ~0.2 of the mean), and the FC layers
    see almost the same input for every image. Centring removes the shared part. Use the
    *training* split only.
    """
    from ku.models.heads import adapt_head_input_unit_norm

    x = np.asarray(spp_train)
    if x.ndim != 2:
        raise ValueError(f"adapt_feature_normalization: spp_train must be (N, D), got shape {x.shape}")
    adapt_head_input_unit_norm(model, x)


def apm_head_model(model: keras.Model) -> keras.Model:
    """The layers of an APM model after SPP as a model of their own, weights shared:
    ``SPP vector (B, D) -> distribution (B, n_bins)`` (or ``mean (B, 1)``); with
    ``apm_feature_norm`` when the model has it. Training it on stored SPP vectors
    (:func:`ku.training.fit_apm_head`) trains ``model``'s FC layers."""
    spp = model.get_layer(SPP)
    x = inp = keras.Input(shape=(int(spp.output.shape[-1]),), name="spp_vector")
    for name in (FEATURE_NORM, FC1, FC2):
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue
        x = layer(x)
    out = "mean" if model.get_layer(FC2).units == 1 else "distribution"
    return keras.Model(inp, keras.layers.Identity(name=out)(x), name=f"{model.name}_head")


# --------------------------------------------------------------------------------------------
# losses, targets, optimizer
# --------------------------------------------------------------------------------------------
def apm_loss(variant: str = "dist", sigma: float = HUBER_SIGMA):
    """The training loss of a Table 1 variant.

    ``"dist"``: :class:`ku.losses.HuberBinLoss` (eq. 1, ``delta = 1/sigma^2``, summed over the
    bins); ``"mean"``: the same on the 1-d mean score; ``"dist_eucl"``:
    :class:`ku.losses.EuclideanLoss` (``0.5 ||p - g||^2``). All are averaged over the batch.
    """
    from ku.losses import EuclideanLoss, HuberBinLoss

    if variant in ("dist", "mean"):
        return HuberBinLoss(sigma=sigma)
    if variant == "dist_eucl":
        return EuclideanLoss()
    raise ValueError(f"apm_loss: variant must be one of {VARIANTS}, got {variant!r}")


def apm_targets(ids, variant: str = "dist") -> np.ndarray:
    """Training targets from an ids table: the L1-normalised vote distributions ``(N, K)`` (§3.1)
    or, for ``"mean"``, the mean scores ``(N, 1)``."""
    from ku.data.readers import distributions

    dist = distributions(ids).astype(np.float32)
    if variant == "mean":
        return predicted_mean(dist)[:, None].astype(np.float32)
    if variant not in VARIANTS:
        raise ValueError(f"apm_targets: variant must be one of {VARIANTS}, got {variant!r}")
    return dist


def new_layer_pattern() -> str:
    """Regex of the APM-m branch's new FC layers (variable paths), for lr multipliers."""
    return rf"^({BRANCH_FC1}|{BRANCH_FC2})/"


def apm_optimizer(kind: str = "sgd", learning_rate=1e-3, *, momentum: float = 0.9,
                  weight_decay: Optional[float] = 5e-4, decay_steps: Optional[int] = 20000,
                  decay_factor: float = 0.1, lr_multipliers=None, gradient_accumulation_steps=None):
    """Optimizer of §3.4 / §4.1.

    ``kind="sgd"`` (paper): :class:`ku.optimizers.LayerwiseSGD` with momentum 0.9, coupled (L2,
    Caffe) weight decay 5e-4, learning rate 1e-3 divided by 10 every 20k iterations
    (``keras.optimizers.schedules.ExponentialDecay(staircase=True)``; ``decay_steps=None``:
    constant). ``kind="adam"``: :class:`ku.optimizers.LayerwiseAdam` (no weight decay).

    APM-m (§4.1): base rate 1e-4 and ``lr_multipliers={new_layer_pattern(): 10.0}``, so the new
    branch trains at 1e-3. ``gradient_accumulation_steps``: Keras' accumulation, e.g. 128 / 16 = 8
    to reach the paper's batch of 128 with batches of 16 (the decay counts optimizer updates,
    i.e. "iterations" of the accumulated batch).
    """
    from ku.optimizers import LayerwiseAdam, LayerwiseSGD

    lr = learning_rate
    if decay_steps:
        lr = keras.optimizers.schedules.ExponentialDecay(
            float(learning_rate), decay_steps=int(decay_steps), decay_rate=float(decay_factor),
            staircase=True)
    if kind == "sgd":
        return LayerwiseSGD(lr, momentum=momentum, weight_decay=weight_decay,
                            lr_multipliers=lr_multipliers,
                            gradient_accumulation_steps=gradient_accumulation_steps)
    if kind == "adam":
        return LayerwiseAdam(lr, lr_multipliers=lr_multipliers,
                             gradient_accumulation_steps=gradient_accumulation_steps)
    raise ValueError(f"apm_optimizer: kind must be 'sgd' or 'adam', got {kind!r}")


# --------------------------------------------------------------------------------------------
# evaluation helpers (§4, eq. 2) and late fusion (§4.1)
# --------------------------------------------------------------------------------------------
def normalize_distribution(p, eps: float = 1e-12) -> np.ndarray:
    """L1-normalise predictions ``(N, K)`` (§3.4: "we l1-normalize p as a post-processing step
    during evaluation"). All-zero rows (every ReLU off) become uniform."""
    p = np.asarray(p, dtype=np.float64)
    s = p.sum(axis=-1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[-1])
    return np.where(s > eps, p / np.maximum(s, eps), uniform)


def predicted_mean(p, scores=None) -> np.ndarray:
    """``mu = sum_i i * p_hat_i`` (eq. 2) with ``p_hat`` the L1-normalised ``p``; ``scores``
    default ``1..K``. ``(N, K) -> (N,)``."""
    p = normalize_distribution(p)
    scores = np.arange(1, p.shape[-1] + 1, dtype=np.float64) if scores is None else np.asarray(scores, np.float64)
    return p @ scores


def fuse_distributions(p_spp, p_max, weight: float) -> np.ndarray:
    """Late fusion of APM-m (§4.1): ``w * p_hat_spp + (1 - w) * p_hat_max`` of the L1-normalised
    predictions of the two branches (a weighted average, still a distribution)."""
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"fuse_distributions: weight must be in [0, 1], got {weight!r}")
    return w * normalize_distribution(p_spp) + (1.0 - w) * normalize_distribution(p_max)


def _fusion_criterion(name):
    from ku import metrics

    if name == "huber":
        delta = 1.0 / HUBER_SIGMA ** 2

        def huber(g, p):
            x = np.abs(p - g)
            return float(np.where(x <= delta, 0.5 * x * x, delta * (x - 0.5 * delta)).sum(-1).mean())
        return huber
    table = {
        "cdloss": lambda g, p: metrics.cd_loss(g, p),
        "kl": lambda g, p: metrics.kl_divergence(g, p),
        "mse": lambda g, p: metrics.mse(predicted_mean(g), predicted_mean(p)),
    }
    if name not in table:
        raise ValueError(f"fit_fusion_weight: criterion must be 'huber', {', '.join(table)}; got {name!r}")
    return table[name]


def fit_fusion_weight(p_spp, p_max, dist_true, *, criterion: str = "huber",
                      grid: Optional[Sequence[float]] = None) -> tuple:
    """Fit the late-fusion weight of APM-m on the validation set (§4.1: "the optimal weights are
    learned on the validation set").

    Grid search over ``w`` in ``grid`` (default 0, 0.01, ..., 1) minimising ``criterion`` between
    the validation distributions and :func:`fuse_distributions`: ``"huber"`` (the training loss,
    eq. 1, default), ``"cdloss"`` (eq. 3), ``"kl"``, or ``"mse"`` (of the means, eq. 2). Ties go
    to the smallest ``w``.

    Returns:
        ``(weight, table)``: the best weight and a ``pandas.DataFrame`` [weight, loss].
    """
    import pandas as pd

    grid = np.linspace(0.0, 1.0, 101) if grid is None else np.asarray(grid, dtype=np.float64)
    g = normalize_distribution(dist_true)
    f = _fusion_criterion(criterion)
    losses = np.array([f(g, fuse_distributions(p_spp, p_max, w)) for w in grid])
    best = int(np.argmin(losses))
    return float(grid[best]), pd.DataFrame({"weight": grid, "loss": losses})


# --------------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------------
def _as_dict(out, model):
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    names = [t.name if hasattr(t, "name") else None for t in keras.tree.flatten(model.outputs)]
    if isinstance(out, (list, tuple)):
        return {n: np.asarray(v) for n, v in zip(model.output_names, out)}
    return {model.output_names[0]: np.asarray(out)} if names else {"output": np.asarray(out)}


def predict_images(model: keras.Model, images: Sequence[np.ndarray]) -> dict:
    """Predict each image alone, unpadded (batch of one, its own size). Returns a dict of
    ``(N, K)`` arrays keyed by output name (raw, not normalised)."""
    rows = []
    for im in images:
        im = np.asarray(im, dtype=np.float32)
        out = model([im[None], np.array([im.shape[:2]], np.int32)], training=False)
        rows.append(_as_dict(out, model))
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def predict_batches(model: keras.Model, batches) -> tuple:
    """Predict an :class:`ku.data.aspect_batches.AspectBatches` (one epoch, deterministic order).

    Returns:
        ``(outputs, rows)``: dict of raw outputs in the ids table's row order, and the row
        indices that were predicted (``batches.order`` of the first epoch, sorted).
    """
    import tensorflow as tf

    outs, n = [], 0
    ds = batches.dataset.take(batches.steps_per_epoch)
    f = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    for element in ds:
        x = element[0] if isinstance(element, tuple) and isinstance(element[0], tuple) else element
        outs.append(_as_dict(f(x), model))
    order = np.concatenate(batches.batches[:batches.steps_per_epoch])
    merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    result = {}
    for k, v in merged.items():
        full = np.full((len(batches.ids),) + v.shape[1:], np.nan, dtype=v.dtype)
        full[order] = v
        result[k] = full[np.sort(order)]
    return result, np.sort(order)


# --------------------------------------------------------------------------------------------
# weights transfer (semantic stage -> aesthetic model, §3.3)
# --------------------------------------------------------------------------------------------
def copy_backbone_weights(source: keras.Model, target: keras.Model) -> int:
    """Copy the convolutional weights of ``source``'s ``backbone`` sub-model into ``target``'s.

    Layers are matched by name (both built with :func:`apm_backbone`, masked or not). Returns
    the number of layers copied; raises ``ValueError`` if a weighted layer of the target has no
    counterpart.
    """
    src, dst = source.get_layer("backbone"), target.get_layer("backbone")

    def weighted(model):
        out = {}
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                out.update(weighted(layer))
            elif layer.weights:
                out[layer.name] = layer
        return out

    s, d = weighted(src), weighted(dst)
    missing = sorted(set(d) - set(s))
    if missing:
        raise ValueError(f"copy_backbone_weights: source backbone lacks layers {missing[:5]}"
                         + (" ..." if len(missing) > 5 else ""))
    for name, layer in d.items():
        layer.set_weights(s[name].get_weights())
    return len(d)


# --------------------------------------------------------------------------------------------
# inference model with eq. 2 outputs
# --------------------------------------------------------------------------------------------
def apm_inference_model(model: keras.Model, fusion_weight: Optional[float] = None) -> keras.Model:
    """Wrap a trained APM for deployment: outputs ``{"distribution": p_hat (B, K),
    "mean": mu (B, 1)}`` (§3.4 normalisation, eq. 2). For APM-m give the late-fusion
    ``fusion_weight`` (:func:`fit_fusion_weight`); the fused distribution is
    ``w p_hat_spp + (1 - w) p_hat_max``."""
    out = model.outputs
    named = {model.output_names[i]: t for i, t in enumerate(out)}
    if "mean" in named:
        return keras.Model(model.inputs, {"mean": named["mean"]}, name=f"{model.name}_inference")
    p = L1Normalization(name="normalized")(named["distribution"])
    if "max_distribution" in named:
        if fusion_weight is None:
            raise ValueError("apm_inference_model: APM-m needs fusion_weight (see fit_fusion_weight)")
        q = L1Normalization(name="normalized_max")(named["max_distribution"])
        w = float(fusion_weight)
        p = keras.layers.Add(name="fused")([keras.layers.Rescaling(w, name="w_spp")(p),
                                            keras.layers.Rescaling(1.0 - w, name="w_max")(q)])
    mu = DistributionMean(name="mean_score")(p)
    return keras.Model(model.inputs, {"distribution": p, "mean": mu}, name=f"{model.name}_inference")


def init_output_bias(model: keras.Model, value) -> None:
    """Set the bias of ``apm_fc2`` (and ``max_branch_fc2``) to ``value`` (e.g. the mean training
    distribution, or the mean score for ``variant="mean"``).

    Not in the paper: with a final ReLU, outputs that start negative for every image never
    receive a gradient; on the paper's 250k images this is rarely an issue, on a few hundred demo
    images with a few optimizer steps it is."""
    from ku.models.heads import set_output_bias

    for name in (FC2, BRANCH_FC2):
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue
        set_output_bias(layer, value)
