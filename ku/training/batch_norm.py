"""Precise BatchNormalization statistics after a short training run: :func:`recalibrate_batch_norm`.

Keras' BatchNormalization keeps an exponential moving average of the batch statistics (momentum
0.99). After ``n`` training steps the moving mean still holds ``0.99 ** n`` of its starting value
(0): 12% after 210 steps, the whole of the demo's Pool-3FC run. On AVA (~1,800 steps an epoch,
Hosu et al. 2019 §3.3) the average has long forgotten its start; on a few hundred images it has
not, so the head predicts from statistics that are neither its data's nor current. Wu & Johnson
("Rethinking 'Batch' in BatchNorm", 2021, §3) call this the inaccuracy of EMA statistics and
replace them by the population statistics computed after training ("PreciseBN").

Here the population statistics are those each layer sees *at inference* (Dropout off, the layers
above already recalibrated): the layers are taken in dependency order, those that do not depend on
each other in one pass. Not in the paper nor in its released code (``docs/released_code.md``):
:func:`ku.pipelines.mlsp.run_mlsp` applies it to the best weights (``precise_bn=True``).
"""
from __future__ import annotations

import keras
import numpy as np

from ku.training.validation import _is_indexable_dataset

__all__ = ["recalibrate_batch_norm"]


def _trainable_batch_norms(model) -> list:
    """The trainable BatchNormalization layers of a functional ``model`` (top level); nested
    models with such layers are refused (their inputs are not reachable as tensors here)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable:
                out.append(layer)
        elif isinstance(layer, keras.Model) and layer.trainable and any(
                isinstance(sub, keras.layers.BatchNormalization) and sub.trainable
                for sub in layer._flatten_layers(include_self=False)):
            raise ValueError(f"recalibrate_batch_norm: {model.name} nests the model {layer.name!r} with "
                             "trainable BatchNormalization layers; recalibrate that model on its own inputs "
                             "or freeze it (ku.backbones.freeze_batch_norm)")
    return out


def _batches(data, batch_size):
    """``x`` batches of ``data``: an array (or tuple ``(x, ...)`` of arrays), a
    ``keras.utils.PyDataset`` / ``Sequence`` or an iterable of ``x`` or ``(x, y[, w])`` batches."""
    if isinstance(data, (tuple, list)) and data and hasattr(data[0], "shape") and \
            not isinstance(data[0], keras.utils.PyDataset):
        data = data[0]
    if hasattr(data, "shape") and not isinstance(data, keras.utils.PyDataset):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
        return
    items = (data[i] for i in range(len(data))) if _is_indexable_dataset(data) else iter(data)
    for batch in items:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def recalibrate_batch_norm(model, data, *, batch_size: int = 32, max_batches: int | None = None) -> int:
    """Set the moving mean and variance of every trainable BatchNormalization layer of ``model`` to
    the statistics of its inputs over ``data`` in inference mode (PreciseBN; module docstring).

    Each layer's statistics are taken over all axes but the last (batch and, for feature maps,
    the spatial positions), as BatchNormalization computes them in training; the variance is the
    population (biased) variance, as Keras' training step uses. Layers whose inputs depend on
    another recalibrated layer are done after it, so every layer is set for the inputs it will
    see at test time. Frozen layers (``trainable=False``, e.g. a frozen ImageNet backbone's) are
    left alone.

    Args:
        model: a functional Keras model (e.g. a head of :mod:`ku.models.heads`) whose trainable
            BatchNormalization layers are at its top level, and have axis -1.
        data: training inputs: an array ``(N, ...)``, ``(x, y)`` arrays, a
            ``keras.utils.PyDataset`` (e.g. :class:`ku.data.generators.FeatureSequence`) or an
            iterable of ``x`` or ``(x, y[, w])`` batches; read once per dependency level (twice
            to five times for ku's heads), so it must give the same batches each time (a
            ``FeatureSequence`` with ``augmentation="random"`` draws per epoch: do not call
            ``on_epoch_end`` in between).
        batch_size: batch size for array inputs.
        max_batches: use only the first ``max_batches`` batches (e.g. on AVA, where a few hundred
            batches estimate the statistics well).
    Returns:
        the number of layers recalibrated.
    Raises:
        ValueError: for nested models with trainable BatchNormalization layers, a layer that is
            not on axis -1, or ``data`` that gives no batches.
    """
    layers = _trainable_batch_norms(model)
    for layer in layers:
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            raise ValueError(f"recalibrate_batch_norm: {layer.name} normalises axis {layer.axis}, "
                             "only the last axis is supported")
    upstream = {layer.name: {u.name for u in keras.Model(model.inputs, layer.input).layers
                             if isinstance(u, keras.layers.BatchNormalization) and u.trainable}
                for layer in layers}
    done: set = set()
    while len(done) < len(layers):
        level = [la for la in layers if la.name not in done and upstream[la.name] <= done]
        probe = keras.Model(model.inputs, [la.input for la in level])
        sums = [np.zeros(la.input.shape[-1], np.float64) for la in level]
        squares = [np.zeros_like(s) for s in sums]
        counts = [0] * len(level)
        for i, x in enumerate(_batches(data, int(batch_size))):
            if max_batches is not None and i >= max_batches:
                break
            outs = probe.predict_on_batch(x)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for k, h in enumerate(outs):
                h = np.asarray(keras.ops.convert_to_numpy(h), np.float64).reshape(-1, sums[k].size)
                sums[k] += h.sum(axis=0)
                squares[k] += np.square(h).sum(axis=0)
                counts[k] += h.shape[0]
        if not counts[0]:
            raise ValueError("recalibrate_batch_norm: data gave no batches")
        for la, s, q, n in zip(level, sums, squares, counts):
            mean = s / n
            la.moving_mean.assign(mean.astype(np.float32))
            la.moving_variance.assign(np.maximum(q / n - np.square(mean), 0.0).astype(np.float32))
            done.add(la.name)
    return len(layers)
