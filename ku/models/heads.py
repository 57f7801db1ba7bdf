"""Regression heads on MLSP features: Single-1FC, Single-3FC, Multi-3FC and Pool-3FC.

Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
Features", CVPR 2019, §3.2 and Table 1:

============  ======  ==================================================  ==================
head          figure  what                                                input
============  ======  ==================================================  ==================
Single-1FC    4(a)    one fully-connected layer                           narrow ``(b,)``
Single-3FC    4(b)    the 3FC component (Fig. 3) with X = 2048            narrow ``(b,)``
Multi-3FC     5       a 3FC per MLSP block (X = b_i), linearly combined   narrow ``(b,)``
Pool-3FC      6       Inception-type module -> global pooling -> 3FC      wide ``(5, 5, b)``
============  ======  ==================================================  ==================

with b = 16,928 for InceptionResNet-v2 and 10,048 for Inception-v3.

**3FC component** (§3.2, Fig. 3; as released in ``kutils.applications.fc_layers`` with
``batch_norm=2``, see ``docs/released_code.md`` §6.1): three ReLU ``Dense`` layers of ``X``,
``X // 2`` and ``X // 8`` units (2048 / 1024 / 256 for X = 2048; integer division, at least one
unit), each followed by ``BatchNormalization`` and then ``Dropout`` (order Dense(+ReLU) -> BN ->
Dropout, i.e. BN *after* the activation, ``he_normal`` kernels), then the output layer. Dropout
rates (0.25, 0.25, 0.5); the paper's "(+do)" variant (§4.1, Table 2) uses (0.5, 0.5, 0.75), see
:data:`DROPOUT_PLUS`. A rate of 0 omits the Dropout layer (as released).

**Outputs.** ``output="mos"``: ``Dense(1)``, linear (the MOS, trained with MSE, §3.3).
``output="distribution"``: ``Dense(n_bins)`` + softmax, so the same heads can be trained on vote
histograms with an EMD loss (not in the paper; composability, ``docs/design.md`` §2).

**Input standardisation** (not in the paper nor in the released code): every head takes
``input_normalization=True``, which puts a :class:`FeatureStandardization` layer (``input_norm``,
per-channel ``(x - mean) / std`` with fixed statistics) before the paper's layers;
:func:`adapt_head_input` sets it from the training features before training. It makes the
heads train on features of any scale (e.g. a randomly initialised backbone's, ~1e-5, which
otherwise give a constant prediction), is the identity when un-adapted and (to float rounding)
on features that are already standardised, and is skipped (left the identity) by
:func:`load_released_weights`. The default is ``False``: the paper's architecture.

**Layer names** equal the released ones where the released code has the head (Single-3FC:
``head_fc0 head_bn0 head_do0 ... head_out``; Pool-3FC: ``branch_1x1_conv ... mixed_final,
final_GAP, head_*``), so the ava-mlsp ``model_best_weights.h5`` files load by name with
:func:`load_released_weights`. The layer *order* is the same as in Keras 2 as well (Keras 3
orders functional layers with the same depth-first algorithm), so loading by order works too.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Optional, Sequence

import keras
import numpy as np

# The heads' layers live in ku.layers; they stay importable from here (an older import path).
from ku.layers import FeatureStandardization, SplitFeatures

__all__ = [
    "DROPOUT",
    "DROPOUT_PLUS",
    "FeatureStandardization",
    "SplitFeatures",
    "adapt_head_input",
    "feature_statistics",
    "fc3",
    "fc3_sizes",
    "single_1fc",
    "single_3fc",
    "multi_3fc",
    "pool_3fc",
    "load_released_weights",
]

logger = logging.getLogger(__name__)

#: Dropout rates of the 3FC component (§3.2, Fig. 3; released ``fc_layers`` call).
DROPOUT = (0.25, 0.25, 0.5)
#: The "(+do)" variant of Single-3FC (§4.1, Table 2 caption).
DROPOUT_PLUS = (0.5, 0.5, 0.75)

_OUTPUTS = ("mos", "distribution")


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_output(output, n_bins):
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    if output == "distribution" and (not isinstance(n_bins, (int, np.integer)) or n_bins < 2):
        raise ValueError(f"n_bins must be an integer >= 2 for output='distribution', got {n_bins!r}")


def _check_dropout(dropout):
    try:
        rates = tuple(float(r) for r in dropout)
    except TypeError:
        raise ValueError(f"dropout must be a sequence of 3 rates, got {dropout!r}") from None
    if len(rates) != 3 or not all(0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"dropout must be 3 rates in [0, 1), got {dropout!r}")
    return rates


def _check_positive_int(value, what):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def fc3_sizes(x_size: int) -> tuple:
    """Widths of the three hidden layers of the 3FC component: ``(X, X // 2, X // 8)``.

    §3.2, Fig. 3 / Fig. 4(b): 2048 / 1024 / 256 for X = 2048. The released code computed
    ``fc1_size / 2`` and ``fc1_size / 8`` with Python-2 integer division; for X not divisible by
    8 we use floor division too, clipped to at least one unit (e.g. X = 128 -> 128 / 64 / 16,
    X = 12 -> 12 / 6 / 1).
    """
    x_size = _check_positive_int(x_size, "x_size")
    return (x_size, max(1, x_size // 2), max(1, x_size // 8))


def _output_layer(x, output, n_bins, name, kernel_initializer="he_normal"):
    if output == "mos":
        return keras.layers.Dense(
            1, activation="linear", kernel_initializer=kernel_initializer, name=name
        )(x)
    return keras.layers.Dense(
        n_bins, activation="softmax", kernel_initializer=kernel_initializer, name=name
    )(x)


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def fc3(
    x,
    x_size: int = 2048,
    dropout: Sequence[float] = DROPOUT,
    name: str = "head",
    output: str = "mos",
    n_bins: int = 10,
):
    """The 3FC component (§3.2, Fig. 3) applied to a symbolic tensor; returns the output tensor.

    ``Dense(X, relu) -> BN -> Dropout -> Dense(X//2, relu) -> BN -> Dropout -> Dense(X//8, relu)
    -> BN -> Dropout -> Dense(1)`` (or ``Dense(n_bins, softmax)`` for ``output="distribution"``).
    Layer names ``{name}_fc{i}``, ``{name}_bn{i}``, ``{name}_do{i}`` (i = 0, 1, 2) and
    ``{name}_out``, exactly as the released ``fc_layers(..., name="head", batch_norm=2)``
    (``docs/released_code.md`` §6.1-6.2); every Dense uses ``he_normal`` kernels, BN uses the
    Keras defaults (momentum 0.99, epsilon 1e-3), a dropout rate of 0 omits that Dropout layer.

    Args:
        x: input tensor ``(batch, features)``.
        x_size: X, the width of the first layer (see :func:`fc3_sizes` for the other two).
        dropout: three dropout rates (default :data:`DROPOUT`; "(+do)": :data:`DROPOUT_PLUS`).
        name: layer-name prefix.
        output: ``"mos"`` (1 linear unit) or ``"distribution"`` (``n_bins`` softmax units).
        n_bins: number of score bins for ``output="distribution"``.
    """
    _check_output(output, n_bins)
    rates = _check_dropout(dropout)
    for i, (units, rate) in enumerate(zip(fc3_sizes(x_size), rates)):
        x = keras.layers.Dense(
            units, activation="relu", kernel_initializer="he_normal", name=f"{name}_fc{i}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        if rate > 0:
            x = keras.layers.Dropout(rate, name=f"{name}_do{i}")(x)
    return _output_layer(x, output, n_bins, f"{name}_out")


def _conv2d_bn(x, filters, kernel_size, name):
    """``Conv2D`` (no bias, same padding) -> ``BatchNormalization(scale=False)`` -> ReLU, named
    ``{name}_conv``, ``{name}_bn``, ``{name}`` (released ``conv2d_bn``, copied there from the
    Keras Inception-v3 code)."""
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=1, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(axis=-1, scale=False, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=name)(x)


def _inception_block(x, n_kernels):
    """The modified Inception module of Pool-3FC (§3.2.2, Fig. 6; released ``inception_block``).

    Columns (concatenated in this order, ``3 * n_kernels`` channels):
    1. ``branch_1x1``: 1x1 conv, ``n_kernels``;
    2. ``3x3_1x1``: 1x1 conv, ``n_kernels`` -> parallel ``3x3_1x3`` (1x3) and ``3x3_3x1`` (3x1),
       ``n_kernels // 2`` each -> ``branch_3x3`` (concat, ``n_kernels`` channels; the "3x3
       convolution" of the paper factorised as in Inception-v3);
    3. ``avg_pool_2d``: 3x3 average pooling, stride 1, same padding -> ``branch_pool`` 1x1 conv,
       ``n_kernels``.
    """
    half = max(1, n_kernels // 2)
    branch_1x1 = _conv2d_bn(x, n_kernels, (1, 1), "branch_1x1")

    branch_3x3 = _conv2d_bn(x, n_kernels, (1, 1), "3x3_1x1")
    branch_3x3_1 = _conv2d_bn(branch_3x3, half, (1, 3), "3x3_1x3")
    branch_3x3_2 = _conv2d_bn(branch_3x3, half, (3, 1), "3x3_3x1")
    branch_3x3 = keras.layers.Concatenate(axis=-1, name="branch_3x3")([branch_3x3_1, branch_3x3_2])

    branch_pool = keras.layers.AveragePooling2D(
        (3, 3), strides=(1, 1), padding="same", name="avg_pool_2d"
    )(x)
    branch_pool = _conv2d_bn(branch_pool, n_kernels, (1, 1), "branch_pool")
    return keras.layers.Concatenate(axis=-1, name="mixed_final")(
        [branch_1x1, branch_3x3, branch_pool]
    )


# --------------------------------------------------------------------------------------------
# input standardisation (not in the paper; see FeatureStandardization)
# --------------------------------------------------------------------------------------------
#: Name of the input standardisation layer of a head built with ``input_normalization=True``.
INPUT_NORM = "input_norm"


def _input_norm(inputs, enabled):
    return FeatureStandardization(name=INPUT_NORM)(inputs) if enabled else inputs


class _Moments:
    """Per-channel count, mean and sum of squared deviations in float64, merged chunk by chunk
    (Chan et al.'s pairwise update, so no catastrophic cancellation as in E[x^2] - E[x]^2)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x):
        x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{int(np.sum(~np.isfinite(x)))} non-finite feature values")
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        m2_b = np.square(x - mean_b).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.square(delta) * (self.n * n_b / n)
        self.n = n

    def result(self):
        return self.mean, np.sqrt(self.m2 / self.n)


def feature_statistics(features, ids=None, *, max_rows: Optional[int] = 2048, seed: int = 0,
                       chunk_bytes: int = 32 << 20):
    """Per-channel mean and (population) standard deviation of features, in float64.

    Args:
        features: an array ``(N, ..., C)`` (statistics over every axis but the last), or a feature
            store (a ``.h5`` path, a list / glob of shards, or an open
            :class:`~ku.data.store.FeatureStore`): statistics over the selected rows, *all* their
            stored augmentations and (wide features) all spatial positions.
        ids: store only: the image ids to use (e.g. the training split's); default every
            complete row.
        max_rows: store only: use at most this many rows (a seeded random subset, so a large
            store such as AVA's wide features is not read whole; 2,048 rows x 8 augmentations
            estimate a channel's mean and deviation to within a few percent of its deviation).
            ``None``: every row.
        seed: seed of that subset.
        chunk_bytes: read the store / process the array in chunks of about this many bytes.
    Returns:
        ``(mean, std)``, two float64 arrays ``(C,)``.
    Raises:
        ValueError naming the store file (or "array") for non-finite values or no data; the store's
        own errors for unknown ids or rows never extracted.
    """
    if isinstance(features, np.ndarray) or (
            not isinstance(features, (str, os.PathLike, list, tuple)) and not hasattr(features, "read")):
        x = np.asarray(features)
        if x.ndim < 2 or x.shape[0] == 0 or x.shape[-1] == 0:
            raise ValueError(f"feature_statistics: need an array (N, ..., C) with N, C >= 1, got "
                             f"shape {x.shape}")
        if ids is not None:
            raise ValueError("feature_statistics: ids only apply to a feature store, not an array")
        per_row = max(1, int(np.prod(x.shape[1:])) * 8)
        step = max(1, int(chunk_bytes) // per_row)
        moments = _Moments()
        try:
            for i in range(0, x.shape[0], step):
                moments.add(x[i:i + step])
        except ValueError as e:
            raise ValueError(f"feature_statistics: array: {e}") from None
        return moments.result()

    from ku.data.shards import open_store

    store = features if hasattr(features, "read") else open_store(features)
    try:
        if ids is None:
            rows = np.flatnonzero(store.complete_mask())
        else:
            ids = ids["image_id"].tolist() if hasattr(ids, "columns") else list(ids)
            rows = np.unique(store.index_of([str(i) for i in ids]))
        name = getattr(store, "path", getattr(store, "paths", "store"))
        if rows.size == 0:
            raise ValueError(f"feature_statistics: {name}: no rows to compute statistics on")
        store.check_complete(rows)
        if max_rows is not None and rows.size > int(max_rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, size=int(max_rows), replace=False))
        per_row = max(1, store.n_augmentations * int(np.prod(store.feature_shape)) * 8)
        step = max(1, int(chunk_bytes) // per_row)
        moments = _Moments()
        for i in range(0, rows.size, step):
            try:
                moments.add(store.read(rows[i:i + step], "all", check_complete=False))
            except ValueError as e:
                raise ValueError(f"feature_statistics: {name}, rows {rows[i]}..{rows[min(i + step, rows.size) - 1]}: "
                                 f"{e}") from None
        return moments.result()
    finally:
        if store is not features:
            store.close()


def _find_input_norm(model):
    for layer in model.layers:
        if isinstance(layer, FeatureStandardization):
            return layer
        if isinstance(layer, keras.Model):
            found = _find_input_norm(layer)
            if found is not None:
                return found
    return None


def adapt_head_input(model: keras.Model, features, ids=None, *, min_std: float = 1e-2,
                     scale: float = 1.0, **kwargs):
    """Set a head's input standardisation from the training data (before training).

    ``model`` must have a :class:`FeatureStandardization` layer (a head of this module built with
    ``input_normalization=True``; a head nested in an end-to-end model is found too). Its mean and
    inverse standard deviation are set from :func:`feature_statistics` of ``features`` (an array,
    or a feature store with the training ``ids``; ``kwargs`` go there). Use the *training* split
    only, so that validation and test images do not leak into the model. ``min_std`` and
    ``scale`` (the output deviation per channel): see :meth:`FeatureStandardization.set_statistics`.

    Returns:
        ``(mean, std)`` as computed (float64 ``(C,)``).
    Raises:
        ValueError: no such layer (naming the model), or the features' channel count differs from
            the head's input.
    """
    layer = _find_input_norm(model)
    if layer is None:
        raise ValueError(f"adapt_head_input: model {model.name!r} has no FeatureStandardization layer; "
                         "build the head with input_normalization=True")
    mean, std = feature_statistics(features, ids, **kwargs)
    channels = int(layer.mean.shape[0])
    if mean.shape != (channels,):
        raise ValueError(f"adapt_head_input: the features have {mean.shape[0]} channels, the input of "
                         f"model {model.name!r} has {channels}")
    layer.set_statistics(mean, std, min_std=min_std, scale=scale)
    return mean, std


def adapt_head_input_unit_norm(model: keras.Model, vectors):
    """:func:`adapt_head_input` with every channel of ``vectors`` ``(N, C)`` (or ``(N, ..., C)``,
    flattened to rows) centred and scaled to ``1 / sqrt(C)``: the standardised vector has a squared
    norm of 1 on average, like an L2-normalised one, so a paper's learning rate for FC layers on
    normalised features suits it (used with frozen random backbones by
    :func:`ku.models.apm.adapt_feature_normalization` and
    :func:`ku.models.theme_roi.adapt_feature_normalization`; not in the papers)."""
    x = np.asarray(vectors)
    x = x.reshape(-1, x.shape[-1])
    return adapt_head_input(model, x, scale=1.0 / np.sqrt(x.shape[1]))


def set_output_bias(layer, value, *, zero_kernel: bool = False) -> None:
    """Set a Dense ``layer``'s bias to ``value`` (broadcast to the bias shape, e.g. a mean score or
    a mean distribution) and, with ``zero_kernel``, its kernel to zero, so that the untrained
    layer outputs ``value`` (before its activation) for every input. Not in the papers: on a few
    hundred images the first epochs would otherwise be spent finding the offset (see
    :func:`ku.pipelines.mlsp.init_output_bias`, :func:`ku.models.apm.init_output_bias`)."""
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel) if zero_kernel else kernel,
                       np.broadcast_to(np.asarray(value, bias.dtype), bias.shape).copy()])


# --------------------------------------------------------------------------------------------
# heads
# --------------------------------------------------------------------------------------------
def single_1fc(n_features: int = 16928, output: str = "mos", n_bins: int = 10, name: str = "single_1fc",
               input_normalization: bool = False) -> keras.Model:
    """Single-1FC (Hosu et al. 2019 §3.2.1, Fig. 4(a)): one fully-connected layer on the narrow
    MLSP vector (concatenated GAPs), predicting the MOS.

    Not in the released code (``docs/released_code.md`` §6.4); built from the paper: a single
    ``Dense`` named ``head_out`` (``he_normal`` like the released output layers), linear 1 unit,
    or ``n_bins`` softmax units for ``output="distribution"``.

    ``input_normalization=True`` puts a :class:`FeatureStandardization` layer (``input_norm``)
    first, set before training by :func:`adapt_head_input` (not in the paper, see there).
    Input ``(batch, n_features)``; output ``(batch, 1)`` or ``(batch, n_bins)``.
    """
    n_features = _check_positive_int(n_features, "n_features")
    _check_output(output, n_bins)
    inputs = keras.Input((n_features,), name="features")
    outputs = _output_layer(_input_norm(inputs, input_normalization), output, n_bins, "head_out")
    return keras.Model(inputs, outputs, name=name)


def single_3fc(n_features: int = 16928, x_size: int = 2048, dropout: Sequence[float] = DROPOUT,
               output: str = "mos", n_bins: int = 10, name: str = "single_3fc",
               input_normalization: bool = False) -> keras.Model:
    """Single-3FC (Hosu et al. 2019 §3.2.1, Fig. 4(b)): the 3FC component (X = 2048) on the
    narrow MLSP vector; this is the released narrow head (``train_mlsp_narrow.ipynb``,
    ``docs/released_code.md`` §6.2).

    ``features (n_features) -> head_fc0 2048 -> head_bn0 -> head_do0 (0.25) -> head_fc1 1024 ->
    head_bn1 -> head_do1 (0.25) -> head_fc2 256 -> head_bn2 -> head_do2 (0.5) -> head_out``.
    37,044,737 parameters on 16,928 inputs (IRNv2). Use ``dropout=DROPOUT_PLUS`` for the paper's
    "Single-3FC (+do)" (Table 2).

    ``input_normalization=True`` puts a :class:`FeatureStandardization` layer (``input_norm``)
    first, set before training by :func:`adapt_head_input` (not in the paper, see there).
    Input ``(batch, n_features)``; output ``(batch, 1)`` or ``(batch, n_bins)``.
    """
    n_features = _check_positive_int(n_features, "n_features")
    inputs = keras.Input((n_features,), name="features")
    outputs = fc3(_input_norm(inputs, input_normalization), x_size, dropout, name="head", output=output, n_bins=n_bins)
    return keras.Model(inputs, outputs, name=name)


def multi_3fc(block_channels: Iterable[int], dropout: Sequence[float] = DROPOUT, output: str = "mos",
              n_bins: int = 10, name: str = "multi_3fc", input_normalization: bool = False) -> keras.Model:
    """Multi-3FC (Hosu et al. 2019 §3.2.1, Fig. 5): one 3FC per MLSP block, combined linearly.

    The input is the narrow MLSP vector (the concatenation of the N block GAPs, width
    ``sum(block_channels)``). A registered :class:`SplitFeatures` layer (``split_blocks``) cuts it
    into the N blocks; block ``i`` gets its own 3FC with X = b_i (widths ``b_i, b_i // 2,
    b_i // 8``, see :func:`fc3_sizes`; layers ``block{i}_fc0 .. block{i}_out``) predicting one
    score; the N scores are concatenated (``block_scores``) and ``head_out`` = ``Dense(1)``
    (linear, with bias) gives "the joint prediction ... their weighted sum" (Fig. 5). ``head_out``
    starts as the plain average of the block scores (kernel 1/N, bias 0).

    Not in the released code (``docs/released_code.md`` §6.4). For ``output="distribution"`` the
    per-block heads still predict one score each and only the combination layer becomes
    ``Dense(n_bins)`` + softmax over the N block scores (default initialisation).

    Block sizes: ``ku.backbones.mlsp_block_channels("inception_resnet_v2")`` (43 blocks, 16,928)
    or ``("inception_v3")`` (11 blocks, 10,048) -- the 43-block IRNv2 model is large, build it
    only when needed.

    ``input_normalization=True`` puts a :class:`FeatureStandardization` layer (``input_norm``)
    first, set before training by :func:`adapt_head_input` (not in the paper, see there).
    Input ``(batch, sum(block_channels))``; output ``(batch, 1)`` or ``(batch, n_bins)``.
    """
    try:
        sizes = [_check_positive_int(b, "block_channels[i]") for b in block_channels]
    except TypeError:
        raise ValueError(f"block_channels must be a sequence of ints, got {block_channels!r}") from None
    if not sizes:
        raise ValueError("block_channels must contain at least one block size")
    _check_output(output, n_bins)
    _check_dropout(dropout)
    inputs = keras.Input((sum(sizes),), name="features")
    blocks = SplitFeatures(sizes, name="split_blocks")(_input_norm(inputs, input_normalization))
    if len(sizes) == 1:
        blocks = [blocks] if not isinstance(blocks, (list, tuple)) else list(blocks)
    scores = [
        fc3(block, b, dropout, name=f"block{i}", output="mos")
        for i, (block, b) in enumerate(zip(blocks, sizes))
    ]
    joined = (
        keras.layers.Concatenate(axis=-1, name="block_scores")(scores) if len(scores) > 1 else scores[0]
    )
    if output == "mos":
        outputs = keras.layers.Dense(
            1,
            activation="linear",
            kernel_initializer=keras.initializers.Constant(1.0 / len(sizes)),
            bias_initializer="zeros",
            name="head_out",
        )(joined)
    else:
        outputs = keras.layers.Dense(n_bins, activation="softmax", name="head_out")(joined)
    return keras.Model(inputs, outputs, name=name)


def pool_3fc(input_shape: Sequence[Optional[int]] = (5, 5, 16928), n_kernels: int = 1024,
             x_size: int = 2048, dropout: Sequence[float] = DROPOUT, output: str = "mos", n_bins: int = 10,
             name: str = "pool_3fc", input_normalization: bool = False) -> keras.Model:
    """Pool-3FC (Hosu et al. 2019 §3.2.2, Fig. 6), the head on wide MLSP features, as released
    (``train_mlsp_wide.ipynb`` / ``predict_mlsp_wide.ipynb``, ``docs/released_code.md`` §6.3).

    ``(5, 5, b)`` -> modified Inception module with ``n_kernels`` (1024) kernels per column
    (``branch_1x1``; ``3x3_1x1`` -> ``3x3_1x3`` & ``3x3_3x1`` (512 each) -> ``branch_3x3``;
    ``avg_pool_2d`` -> ``branch_pool``; every conv: same padding, stride 1, no bias, BN without
    scale (no gamma), ReLU) -> ``mixed_final`` (3 * 1024 = 3072 channels) -> ``final_GAP``
    (global average pooling) -> 3FC. 63,828,481 parameters on ``(5, 5, 16928)``.

    Paper vs released code: Fig. 6 says the 3FC has X = 3072 (the pooled width); the released
    code feeds the 3072-d pooled vector into the 2048 / 1024 / 256 head. We default to the
    released ``x_size=2048``; pass ``x_size=3072`` for the paper's reading (3072 / 1536 / 384).
    The paper's "3x3 convolution" column is, in the code, a 1x1 followed by parallel 1x3 and 3x1
    convolutions of ``n_kernels // 2`` each (Inception-v3 style).

    Spatial dimensions may be ``None`` (the module keeps the size, GAP removes it).
    ``input_normalization=True`` puts a :class:`FeatureStandardization` layer (``input_norm``)
    first, set before training by :func:`adapt_head_input` (not in the paper, see there).
    Input ``(batch, H, W, b)``; output ``(batch, 1)`` or ``(batch, n_bins)``.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(f"input_shape must be (H, W, channels) with known channels, got {input_shape!r}")
    n_kernels = _check_positive_int(n_kernels, "n_kernels")
    _check_output(output, n_bins)
    _check_dropout(dropout)
    inputs = keras.Input(shape, name="features")
    x = _inception_block(_input_norm(inputs, input_normalization), n_kernels)
    x = keras.layers.GlobalAveragePooling2D(name="final_GAP")(x)
    outputs = fc3(x, x_size, dropout, name="head", output=output, n_bins=n_bins)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------------------------
# released weights (Keras 2 HDF5 weights files)
# --------------------------------------------------------------------------------------------
def _decode(values):
    out = []
    for v in np.atleast_1d(np.asarray(values)).tolist():
        out.append(v.decode("utf8") if isinstance(v, bytes) else str(v))
    return out


def _read_list_attr(group, key):
    """Keras 2 ``load_attributes_from_hdf5_group``: ``key`` or chunks ``key0, key1, ...``."""
    if key in group.attrs:
        values = group.attrs[key]
        return _decode(values) if np.size(values) else []
    if f"{key}0" in group.attrs:
        out, i = [], 0
        while f"{key}{i}" in group.attrs:
            out.extend(_decode(group.attrs[f"{key}{i}"]))
            i += 1
        return out
    return None


def _read_keras2_weights(path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"load_released_weights: {path!r} is not a readable HDF5 file ({err})") from None
    with f:
        group = f
        if _read_list_attr(f, "layer_names") is None and "model_weights" in f:
            group = f["model_weights"]  # a full Keras 2 model file (model.save)
        layer_names = _read_list_attr(group, "layer_names")
        if layer_names is None:
            raise ValueError(
                f"load_released_weights: {path!r} has no 'layer_names' attribute, so it is not a "
                "Keras 2 HDF5 weights file (for Keras 3 '.keras' / '.weights.h5' files use "
                "model.load_weights)"
            )
        layers = []
        for lname in layer_names:
            if lname not in group:
                raise ValueError(
                    f"load_released_weights: {path!r} lists layer {lname!r} but has no such group"
                )
            wnames = _read_list_attr(group[lname], "weight_names") or []
            if not wnames:
                continue
            try:
                arrays = [np.asarray(group[lname][w]) for w in wnames]
            except KeyError as err:
                raise ValueError(
                    f"load_released_weights: {path!r}, layer {lname!r}: missing weight dataset ({err})"
                ) from None
            layers.append((lname, wnames, arrays))
    return layers


def _weighted_layers(model):
    """Layers owning weights, in model order; nested models are flattened; the input
    standardisation (not in the released files) is left out."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_weighted_layers(layer))
        elif layer.weights and not isinstance(layer, FeatureStandardization):
            out.append(layer)
    return out


def _short(name):
    """``'head_bn0/moving_mean:0'`` -> ``'moving_mean'``."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _pair_weights(layer, file_name, wnames, arrays):
    """Match one file layer to one model layer; return ``(pairs, problems)``."""
    variables = list(layer.weights)
    if len(variables) != len(arrays):
        return None, [
            f"{layer.name!r} <- {file_name!r}: model has {len(variables)} weights "
            f"{[v.name for v in variables]}, file has {len(arrays)} {wnames}"
        ]
    file_short = [_short(w) for w in wnames]
    model_short = [_short(v.name) for v in variables]
    if sorted(file_short) == sorted(model_short) and len(set(file_short)) == len(file_short):
        lookup = dict(zip(file_short, zip(wnames, arrays)))
        ordered = [lookup[s] for s in model_short]
    else:  # names differ: by position, like Keras 2
        ordered = list(zip(wnames, arrays))
    problems = [
        f"{layer.name}/{v.name} {tuple(v.shape)} <- {file_name}/{w} {a.shape}"
        for v, (w, a) in zip(variables, ordered)
        if tuple(v.shape) != a.shape
    ]
    return [(v, a) for v, (_, a) in zip(variables, ordered)], problems


def load_released_weights(model: keras.Model, path, strict: bool = True) -> str:
    """Load a Keras 2 HDF5 *weights* file of the released ava-mlsp models into a ku head.

    The ava-mlsp ``models/<features>/model_best_weights.h5`` files (Keras 2.2.4
    ``save_weights``) hold the root attribute ``layer_names`` (bytes array, also accepted in the
    chunked form ``layer_names0, layer_names1, ...``) and, per layer, a group with the attribute
    ``weight_names`` and datasets ``<layer>/<weight_name>``, e.g. ``head_fc0/head_fc0/kernel:0``,
    ``head_bn0/head_bn0/{gamma,beta,moving_mean,moving_variance}:0`` (the Pool-3FC conv BNs have
    ``scale=False``, hence no gamma). A full Keras 2 model file (weights under ``model_weights``)
    is accepted as well. Kernel layouts of Dense/Conv2D are unchanged between Keras 2 (TF
    backend) and Keras 3.

    Matching: by layer name (the ku heads use the released names) when every weighted layer of
    ``model`` is found in the file; otherwise by the order of the weighted layers, which is what
    the released code did (``load_weights(by_name=False)``) and works because Keras 3 orders
    functional layers like Keras 2. Within a layer, weights are matched by their short names
    (``kernel``, ``gamma`` ...) or else by position. Nested sub-models of ``model`` are
    flattened, so a head nested in an end-to-end model can be loaded directly. A head built with
    ``input_normalization=True`` loads too: its :class:`FeatureStandardization` layer is not in
    the file and is reset to the identity (the released heads were trained on raw features).

    Nothing is assigned unless every layer and shape matches; otherwise a ``ValueError`` lists
    the mismatches (missing / unexpected layer names, weight counts, shapes).

    Args:
        model: the Keras 3 model (e.g. ``single_3fc()`` or ``pool_3fc()``).
        path: the ``.h5`` file.
        strict: with name matching, also fail when the file has weighted layers that ``model``
            lacks (otherwise they are skipped with a warning).

    Returns:
        ``"name"`` or ``"order"``: how layers were matched.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_released_weights: no such file {path!r}")
    file_layers = _read_keras2_weights(path)
    model_layers = _weighted_layers(model)
    by_file_name = {name: (wnames, arrays) for name, wnames, arrays in file_layers}
    model_names = [layer.name for layer in model_layers]
    missing = [n for n in model_names if n not in by_file_name]
    unexpected = [n for n, _, _ in file_layers if n not in set(model_names)]

    problems, assignments = [], []
    if not missing and (not unexpected or not strict):
        mode = "name"
        if unexpected:
            logger.warning("load_released_weights: %s: skipping file layers %s", path, unexpected)
        for layer in model_layers:
            wnames, arrays = by_file_name[layer.name]
            pairs, errs = _pair_weights(layer, layer.name, wnames, arrays)
            problems += errs
            assignments += pairs or []
    elif len(model_layers) == len(file_layers):
        mode = "order"
        logger.warning(
            "load_released_weights: %s: layer names differ (%d missing), matching %d layers by order",
            path, len(missing), len(model_layers),
        )
        for layer, (fname, wnames, arrays) in zip(model_layers, file_layers):
            pairs, errs = _pair_weights(layer, fname, wnames, arrays)
            problems += errs
            assignments += pairs or []
        if problems:
            problems.insert(0, f"layer names missing in the file: {missing}")
            problems.insert(1, f"file layers not in the model: {unexpected}")
    else:
        mode = None
        problems = [
            f"layer names missing in the file: {missing}",
            f"file layers not in the model: {unexpected}",
            f"cannot match by order either: the model has {len(model_layers)} weighted layers, "
            f"the file {len(file_layers)}",
        ]
    if problems:
        raise ValueError(
            f"load_released_weights: {path!r} does not fit model {model.name!r}"
            + (f" (matching by {mode})" if mode else "")
            + ":\n  "
            + "\n  ".join(problems)
        )
    for variable, array in assignments:
        variable.assign(array.astype(variable.dtype, copy=False))
    norm = _find_input_norm(model)
    if norm is not None:  # the released heads were trained on raw features
        norm.reset()
    logger.info("load_released_weights: %s -> %s: %d layers by %s", path, model.name, len(model_layers), mode)
    return mode
