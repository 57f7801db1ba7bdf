"""Keras' own layer contract for every registered ku layer.

Each layer listed in ``ku.KERAS_OBJECTS`` goes through ``keras.src.testing.TestCase.run_layer_test``
(Keras 3's harness for its own layers): ``get_config`` / ``from_config`` and JSON serialisation
round trip, build, symbolic call (declared output shape and dtype), eager call (the same dtype),
one compiled training step, and the ``mixed_float16`` check (the dtype the layer declares
symbolically must be the dtype it returns). Shapes are tiny; the numerics are tested against
references in each layer's own test module.

A layer that is registered but has no case here fails :func:`test_every_registered_layer_has_a_case`;
one whose docstring has no runnable ``Example:`` block fails :func:`test_docstring_example_runs`.
"""
from __future__ import annotations

import importlib
import re
import textwrap

import keras
import numpy as np
import pytest
from keras.src.testing import TestCase

import ku

_TC = TestCase()  # run_layer_test only needs the assertion methods


def _sizes(*rows):
    return np.array(rows, dtype="int32")


def _features(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# name -> (keyword arguments of run_layer_test). Input data are given explicitly where the
# layer needs valid values (sizes, boxes, theme indices); shapes stay tiny.
CASES = {
    "AreaPooling2D": dict(
        init_kwargs={"output_size": (2, 3)}, input_shape=(2, 5, 7, 3),
        expected_output_shape=(2, 2, 3, 3), expected_output_dtype="float32"),
    "MinSideUpscale": dict(
        init_kwargs={"min_side": 4}, input_data=_features((2, 6, 5, 3)),
        expected_output_shape=(2, None, None, 3), expected_output_dtype="float32"),
    "MinSideUpscale[padded]": dict(
        init_kwargs={"min_side": 4}, input_data=(_features((2, 6, 5, 3)), _sizes((6, 5), (2, 3))),
        expected_output_shape=[(2, 6, 5, 3), (2, 2)],
        expected_output_dtype=["float32", "int32"]),
    "ImagePreprocessing": dict(
        init_kwargs={"mode": "caffe"}, input_shape=(2, 4, 4, 3),
        expected_output_shape=(2, 4, 4, 3), expected_output_dtype="float32"),
    "RoiPooling2D": dict(
        init_kwargs={"output_size": (2, 2), "spatial_scale": 0.5},
        input_data=(_features((2, 6, 6, 3)), np.array([[0, 0, 9, 11], [2, 1, 7, 5]], "float32")),
        expected_output_shape=(2, 2, 2, 3), expected_output_dtype="float32"),
    "RoiPooling2D[K boxes]": dict(
        init_kwargs={"output_size": 2, "mode": "average"},
        input_data=(_features((2, 6, 6, 3)), np.tile(np.array([[[0, 0, 5, 5], [1, 2, 3, 4]]],
                                                               "float32"), (2, 1, 1))),
        expected_output_shape=(2, 2, 2, 2, 3), expected_output_dtype="float32"),
    "RoiAlign2D": dict(
        init_kwargs={"output_size": (3, 2), "spatial_scale": 0.5, "aligned": True},
        input_data=(_features((2, 6, 6, 3)), np.array([[0, 0, 12, 12], [2, 1, 7, 5]], "float32")),
        expected_output_shape=(2, 3, 2, 3), expected_output_dtype="float32"),
    "ImageBoxes": dict(
        init_kwargs={"convention": "pixels"}, input_data=_sizes((6, 5), (2, 3)),
        expected_output_shape=(2, 4), expected_output_dtype="float32"),
    "SpatialPyramidPooling": dict(
        init_kwargs={"levels": (1, 2)}, input_data=(_features((2, 6, 5, 3)), _sizes((6, 5), (3, 2))),
        expected_output_shape=(2, 15), expected_output_dtype="float32"),
    "ThemeEmbedding": dict(
        init_kwargs={"n_themes": 5, "dim": 4}, input_data=np.array([0, 1, 4, 7], "int32"),
        expected_output_shape=(4, 4), expected_output_dtype="float32",
        expected_num_trainable_weights=2),
    "L1Normalization": dict(
        init_kwargs={}, input_data=np.abs(_features((2, 5))),
        expected_output_shape=(2, 5), expected_output_dtype="float32"),
    "DistributionMean": dict(
        init_kwargs={}, input_data=np.full((2, 5), 0.2, "float32"),
        expected_output_shape=(2, 1), expected_output_dtype="float32"),
    "SplitFeatures": dict(
        init_kwargs={"sizes": [2, 3]}, input_shape=(2, 5),
        expected_output_shape=[(2, 2), (2, 3)], expected_output_dtype=["float32", "float32"]),
    "FeatureStandardization": dict(
        init_kwargs={}, input_shape=(2, 4),
        expected_output_shape=(2, 4), expected_output_dtype="float32",
        expected_num_trainable_weights=0, expected_num_non_trainable_weights=2),
    "ValidRegionMask": dict(
        init_kwargs={}, input_data=(_features((2, 5, 6, 3)), _sizes((5, 6), (2, 3))),
        expected_output_shape=(2, 5, 6, 3), expected_output_dtype="float32"),
    "MapValidSize": dict(
        init_kwargs={"kernel_size": 3, "strides": 2, "padding": "valid"},
        input_data=_sizes((9, 7), (3, 2)),
        expected_output_shape=(2, 2), expected_output_dtype="int32"),
    "MaskAwareAveragePooling2D": dict(
        init_kwargs={"pool_size": 3, "strides": 2},
        input_data=(_features((2, 5, 6, 3)), _sizes((5, 6), (2, 3))),
        expected_output_shape=(2, 3, 3, 3), expected_output_dtype="float32"),
}

# Cases without the harness' training step, and why:
NO_TRAINING = {
    # int32 sizes out: a training step on ``sum(output)`` has nothing to differentiate
    "MapValidSize": "integer output",
    # a list of outputs: the harness feeds ``(x, y)`` through a Python generator, and
    # tf.data's generator signature rejects a ``list`` inside ``y`` (Keras' own
    # ``keras.layers.Multiply`` fails the same way with a list input); a gradient through them
    # is checked by test_gradient_through_list_outputs instead
    "SplitFeatures": "list output",
    "MinSideUpscale[padded]": "list output",
}


def _layer_class(name):
    for module, names in ku.KERAS_OBJECTS.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise KeyError(name)


def registered_layers():
    """Names of the registered ku classes that are Keras layers (imports their modules)."""
    names = []
    for module, classes in ku.KERAS_OBJECTS.items():
        mod = importlib.import_module(module)
        for name in classes:
            cls = keras.saving.get_registered_object(f"ku>{name}")
            assert cls is getattr(mod, name), f"ku>{name} is not registered by {module}"
            if isinstance(cls, type) and issubclass(cls, keras.layers.Layer):
                names.append(name)
    return names


def test_every_registered_layer_has_a_case():
    layers = set(registered_layers())
    covered = {case.split("[")[0] for case in CASES}
    assert layers - covered == set(), f"registered layers without a contract case: {layers - covered}"
    assert covered - layers == set(), f"cases for classes that are not registered layers: {covered - layers}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_layer_test(case):
    name = case.split("[")[0]
    kwargs = dict(CASES[case])
    _TC.run_layer_test(_layer_class(name), run_training_check=case not in NO_TRAINING, **kwargs)


def test_symbolic_dtype_is_declared():
    """The two layers whose declared symbolic dtype once differed from what they return:
    MapValidSize returns int32 sizes, ImageBoxes float32 boxes (also under mixed precision)."""
    from ku.layers import ImageBoxes, MapValidSize

    expected = {MapValidSize: "int32", ImageBoxes: "float32"}
    for cls, dtype in expected.items():
        for policy in (None, "mixed_float16"):
            for input_dtype in ("int32", "float32"):
                layer = cls(dtype=policy)
                symbolic = layer(keras.Input((2,), dtype=input_dtype)).dtype
                eager = keras.ops.convert_to_numpy(layer(_sizes((6, 5)).astype(input_dtype))).dtype
                assert symbolic == eager.name == dtype, (cls.__name__, policy, input_dtype,
                                                         symbolic, eager)


@pytest.mark.parametrize("case", sorted(c for c, why in NO_TRAINING.items() if why == "list output"))
def test_gradient_through_list_outputs(case):
    """For the cases without the harness' training step: a gradient reaches a scale applied to
    the float input through the layer's float outputs, and it is finite and non-zero."""
    from grads import gradient

    name = case.split("[")[0]
    layer = _layer_class(name)(**CASES[case]["init_kwargs"])
    data = CASES[case].get("input_data")
    if data is None:
        data = _features(CASES[case]["input_shape"])

    def loss(scale):
        first = keras.ops.convert_to_tensor(data[0] if isinstance(data, tuple) else data)
        outputs = layer((first * scale, *data[1:])) if isinstance(data, tuple) else layer(first * scale)
        return sum(keras.ops.sum(keras.ops.square(o)) for o in outputs
                   if keras.backend.is_float_dtype(keras.backend.standardize_dtype(o.dtype)))

    grad = gradient(loss, np.float32(1.5))
    assert np.isfinite(grad) and grad != 0.0


#: the ``Example:`` block of a docstring: a fenced ``python`` code block (keras-hub style)
_EXAMPLE = re.compile(r"\n[ ]*Example:[ ]*\n\s*```python\n(.*?)\n[ ]*```", re.S)


@pytest.mark.parametrize("name", sorted(registered_layers()))
def test_docstring_example_runs(name):
    """Every registered layer's docstring shows a short usage example, and the example runs."""
    doc = _layer_class(name).__doc__ or ""
    match = _EXAMPLE.search(doc)
    assert match, f"{name}: the docstring has no Example: block with a ```python code block"
    exec(compile(textwrap.dedent(match.group(1)), f"<{name} docstring example>", "exec"), {})
