"""Exact padding masking for functional (keras.applications) backbones.

Both full-resolution papers batch images of different sizes by zero-padding them into one canvas,
image at the top-left: Murray & Gordo 2017 §3.2 (adaptive SPP sees each image whole) and Jia, Li,
He 2019 §III-A (800x800 canvas, ROI pooling over the image's box). Plain zero padding is not
neutral: after the first layer, biases, batch norm and the preprocessing offset make the padded
area non-zero, and every later convolution at the image's right and bottom border reads it
(measured in ``docs/design.md`` §3: up to 0.57 relative difference for ResNet-101).

:func:`masked_model` rebuilds a functional model so that this cannot happen:

* every tensor that a spatial layer (convolution, pooling, zero padding) reads is first multiplied
  by the mask of its image's *valid region*, so everything outside the image is exactly zero --
  equivalent to setting activations outside the valid region to zero after every layer, because
  all other layers (batch norm, activations, additions, concatenations, scaling) act position by
  position; the first mask follows the preprocessing layer, so the padding is zero in the
  network's input space, exactly like the convolutions' own zero padding;
* each image's valid size follows each layer's geometry: ``ZeroPadding2D`` adds its pads, a
  ``valid`` convolution/pooling gives ``floor((n - d*(k-1) - 1) / s) + 1``, ``same`` gives
  ``ceil(n / s)``;
* ``same`` average pooling becomes mask-aware (sum over valid positions / number of valid
  positions), which is what the unpadded image gets, since Keras' ``same`` average pooling does not
  count its own padding.

With that, an image's features inside its valid region are the same, to float32 precision,
whether it is alone or padded into a larger canvas with other images (tested for ResNet, VGG,
Inception-v3 and InceptionResNet-v2). Layers whose padding would depend on the canvas size
(``same`` convolutions or max pooling with stride > 1 and kernel > 1) cannot be exact; they raise
unless ``exact=False``. None of ku's backbones has one.

The rebuilt model shares its layers (and so its weights) with the original.
"""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

# The masking layers live in ku.layers; they stay importable from here (an older import path).
from ku.layers import MapValidSize, MaskAwareAveragePooling2D, ValidRegionMask, valid_mask
from ku.layers._utils import int_pair as _pair

__all__ = [
    "ValidRegionMask",
    "MapValidSize",
    "MaskAwareAveragePooling2D",
    "masked_model",
    "valid_output_sizes",
    "valid_mask",
    "layer_geometry",
    "size_mapping",
]

# Layers that act on each spatial position independently (their output at a position depends only
# on their inputs at that position); the valid size passes through unchanged.
_POSITIONWISE = {
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "BatchNormalization", "LayerNormalization", "GroupNormalization",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "Identity",
    "Rescaling", "Normalization", "ImagePreprocessing", "CustomScaleLayer",
}
_CONV = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D"}
_POOL = {"MaxPooling2D", "AveragePooling2D"}


def layer_geometry(layer, exact: bool = True):
    """How a layer maps valid sizes: :class:`MapValidSize` arguments, or None (position-wise).

    Raises ValueError (naming the layer) for layers that cannot be masked exactly when ``exact``,
    and for unknown layer types when ``exact``.
    """
    kind = type(layer).__name__
    if kind in _POSITIONWISE:
        return None
    if kind == "ZeroPadding2D":
        return dict(pads=layer.padding)
    if kind in _CONV or kind in _POOL:
        k = layer.kernel_size if kind in _CONV else layer.pool_size
        k, s = _pair(k), _pair(layer.strides)
        d = _pair(getattr(layer, "dilation_rate", 1))
        padding = layer.padding.lower()
        if exact and padding == "same" and max(s) > 1 and max(k) > 1:
            raise ValueError(
                f"masked_model: layer {layer.name!r} ({kind}, kernel {k}, strides {s}, 'same') pads "
                "differently in a canvas than in the unpadded image, so masking cannot be exact; "
                "pass exact=False to accept the difference")
        if exact and padding == "same" and kind == "MaxPooling2D" and max(k) > 1:
            raise ValueError(
                f"masked_model: layer {layer.name!r} is 'same' max pooling, which would read the "
                "zeros of the mask as values; pass exact=False to accept the difference")
        return dict(kernel_size=k, strides=s, padding=padding, dilation_rate=d)
    if exact:
        raise ValueError(
            f"masked_model: don't know how layer {layer.name!r} of type {kind} maps spatial "
            "positions; ku knows Conv2D/DepthwiseConv2D/SeparableConv2D, Max/AveragePooling2D, "
            "ZeroPadding2D and position-wise layers. Pass exact=False to treat it as position-wise")
    return None


def masked_model(model: keras.Model, *, outputs: Sequence[str] | None = None, exact: bool = True,
                 name: str | None = None) -> keras.Model:
    """Rebuild a functional image model so that zero padding never leaks (module docstring).

    Args:
        model: a functional model with one image input (B, H, W, 3), e.g.
            :func:`ku.backbones.build_backbone` (0..255 RGB, preprocessing inside).
        outputs: layer names whose outputs to return (e.g. ``["activation_2"]``, Inception-v3
            before its first max pooling, Jia et al. §III-D); default the model's outputs.
        exact: raise for layers that cannot be masked exactly (see module docstring).
        name: the new model's name (default ``<model.name>_masked``).

    Returns:
        ``keras.Model`` with inputs ``[images (B, H, W, 3), valid_sizes (B, 2) int32]`` (each
        image at the top-left of the canvas; ``valid_sizes[b] = (height, width)`` in pixels) and
        outputs ``[features_1, sizes_1, features_2, sizes_2, ...]``: each requested feature map
        (zero outside the valid region) and its valid sizes (B, 2) int32. Layers (and weights) are
        shared with ``model``.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise TypeError(f"masked_model: model must be a functional keras.Model, got {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError(f"masked_model: model must have one 4-D image input, got {model.inputs}")
    if outputs is not None:
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        targets = []
        for n in names:
            try:
                targets.append(model.get_layer(n).output)
            except ValueError:
                raise ValueError(f"masked_model: model {model.name!r} has no layer {n!r}") from None
        model = keras.Model(model.inputs, targets, name=model.name)

    image_in = model.inputs[0]
    images = keras.Input(shape=tuple(image_in.shape[1:]), dtype=image_in.dtype, name="image")
    sizes_in = keras.Input(shape=(2,), dtype="int32", name="valid_size")
    size_of = {id(images): sizes_in}   # tensor id -> its valid sizes
    clean = {id(images): images}       # tensor id -> the masked version of it
    counter = [0]

    def uid(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def masked(t):
        if id(t) not in clean:
            m = ValidRegionMask(name=uid("valid_mask"))([t, size_of[id(t)]])
            size_of[id(m)] = size_of[id(t)]
            clean[id(t)] = clean[id(m)] = m
        return clean[id(t)]

    def call(layer, *args, **kwargs):
        tensors = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        sizes = next((size_of[id(t)] for t in tensors if id(t) in size_of), None)
        if sizes is None:
            return layer(*args, **kwargs)
        geometry = layer_geometry(layer, exact)
        if geometry is None:
            out = layer(*args, **kwargs)
            new_sizes = sizes
        else:
            x = masked(args[0])
            kind = type(layer).__name__
            if kind == "AveragePooling2D" and layer.padding.lower() == "same":
                out = MaskAwareAveragePooling2D(layer.pool_size, layer.strides,
                                                name=uid(f"{layer.name}_maskaware"))([x, sizes])
            else:
                out = layer(x, *args[1:], **kwargs)
            new_sizes = MapValidSize(**geometry, name=uid(f"{layer.name}_size"))(sizes)
        for o in keras.tree.flatten(out):
            if isinstance(o, keras.KerasTensor) and len(o.shape) == 4:
                size_of[id(o)] = new_sizes
        return out

    results = model._run_through_graph(images, operation_fn=lambda op: op, call_fn=call)
    flat = []
    for t in keras.tree.flatten(results):
        flat += [masked(t), size_of[id(t)]]
    return keras.Model([images, sizes_in], flat, name=name or f"{model.name}_masked")


def size_mapping(model: keras.Model, output=None) -> list:
    """The spatial layers between a model's input and ``output``, as ``(layer, geometry)`` pairs.

    ``geometry`` holds the :class:`MapValidSize` arguments of the layer (:func:`layer_geometry`);
    position-wise layers are left out. The walk follows each layer's first input back to the
    input (all inputs of a multi-input layer share their valid size), and the pairs are returned
    in input-to-output order, so applying them in turn maps input sizes to ``output``'s sizes.

    Args:
        model: a functional model.
        output: a layer name, a tensor of the model's graph, or None for the model's output.
    """
    if output is None:
        t = model.outputs[0]
    elif isinstance(output, str):
        t = model.get_layer(output).output
    else:
        t = output
    chain = []
    while True:
        history = t._keras_history
        layer = history.operation
        if type(layer).__name__ == "InputLayer":
            return chain[::-1]
        geometry = layer_geometry(layer, exact=False)
        if geometry is not None:
            chain.append((layer, geometry))
        t = layer._inbound_nodes[history.node_index].input_tensors[0]


def valid_output_sizes(model: keras.Model, sizes, *, output: str | None = None) -> np.ndarray:
    """Valid sizes (N, 2) of images of ``sizes`` (N, 2) at a model's output (or layer ``output``).

    The numpy twin of the size mapping inside :func:`masked_model` (and the spatial output shape of
    each image run alone).
    """
    out = np.atleast_2d(np.asarray(sizes, dtype=np.int64))
    for _, geometry in size_mapping(model, output):
        out = MapValidSize(**geometry).map_numpy(out)
    return out
