"""ku: image aesthetics assessment in Keras 3 / TensorFlow 2.

Faithful, tested reproductions of
  * Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
    Features", CVPR 2019 (MLSP features + heads),
  * Murray & Gordo, "A deep architecture for unified aesthetic prediction", 2017 (APM),
  * Jia, Li, He, "Theme-aware aesthetic distribution prediction with full-resolution photographs",
    2019 (padded full-resolution ROI pooling + theme embeddings).

``import ku`` is cheap: it imports neither TensorFlow nor Keras. Sub-packages are imported on use
(``ku.metrics``, ``ku.data.readers`` stay TensorFlow-free; ``ku.layers``, ``ku.models.*`` import
Keras). Attribute access such as ``ku.layers.SpatialPyramidPooling`` after a plain ``import ku``
imports the sub-package then.

Loading ku's ``.keras`` files: :func:`load_model` imports every module that defines a ku Keras
object and calls ``keras.models.load_model``. Plain ``keras.models.load_model`` works too after
``import ku``: ku puts a light stand-in for each of its serialisable classes (:data:`KERAS_OBJECTS`)
into Keras' registry of custom objects as soon as Keras is imported (at once when Keras is already
imported, otherwise by a one-shot import hook on ``keras``); a stand-in imports its module when
Keras first deserialises it, and that module's ``register_keras_serializable`` decorator then
replaces it by the real class. Nothing else happens on import: no logging configuration, no global
seeds, no downloads.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

__all__ = ["KERAS_OBJECTS", "load_model", "register_keras_objects", "__version__"]

#: ku's serialisable Keras objects (all registered under the package ``"ku"``, i.e. as
#: ``"ku>ClassName"``): defining module -> class names. ``tests/test_lazy_import.py`` checks this
#: table against what the modules actually register.
KERAS_OBJECTS = {
    "ku.layers.area_pooling_2d": ("AreaPooling2D",),
    "ku.layers.distribution_mean": ("DistributionMean",),
    "ku.layers.feature_standardization": ("FeatureStandardization",),
    "ku.layers.image_boxes": ("ImageBoxes",),
    "ku.layers.image_preprocessing": ("ImagePreprocessing",),
    "ku.layers.l1_normalization": ("L1Normalization",),
    "ku.layers.map_valid_size": ("MapValidSize",),
    "ku.layers.mask_aware_average_pooling_2d": ("MaskAwareAveragePooling2D",),
    "ku.layers.min_side_upscale": ("MinSideUpscale",),
    "ku.layers.roi_align_2d": ("RoiAlign2D",),
    "ku.layers.roi_pooling_2d": ("RoiPooling2D",),
    "ku.layers.spatial_pyramid_pooling": ("SpatialPyramidPooling",),
    "ku.layers.split_features": ("SplitFeatures",),
    "ku.layers.theme_embedding": ("ThemeEmbedding",),
    "ku.layers.valid_region_mask": ("ValidRegionMask",),
    "ku.losses.cd": ("CDLoss",),
    "ku.losses.cross_entropy": ("SoftCrossEntropy",),
    "ku.losses.emd": ("EMDLoss",),
    "ku.losses.euclidean": ("EuclideanLoss",),
    "ku.losses.huber_bin": ("HuberBinLoss",),
    "ku.losses.kl_divergence": ("KLDivergenceLoss",),
    "ku.optimizers.layerwise_adam": ("LayerwiseAdam",),
    "ku.optimizers.layerwise_sgd": ("LayerwiseSGD",),
}

_SUBPACKAGES = ("backbones", "cli", "data", "distribute", "evaluation", "export", "extraction",
                "image_modification", "layers", "losses", "metrics", "models", "optimizers",
                "pipelines", "plots", "training")


class _LazyKerasClass:
    """Stand-in for a ku class in Keras' custom-object registry until its module is imported.

    Keras' deserialiser only needs ``from_config``; the stand-in imports ``module`` (whose
    decorator registers the real class in its place) and delegates to the real class.
    """

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def resolve(self):
        """The real class (imports its module)."""
        return getattr(importlib.import_module(self.module), self.name)

    def from_config(self, config, *args, **kwargs):
        return self.resolve().from_config(config, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self):
        return f"<lazy ku Keras class {self.module}.{self.name}>"


def _add_stand_ins(keras_module) -> None:
    """Put a stand-in for every ku class into Keras' registry (real classes are kept)."""
    registry = keras_module.saving.get_custom_objects()
    for module, names in KERAS_OBJECTS.items():
        for name in names:
            registry.setdefault(f"ku>{name}", _LazyKerasClass(module, name))


class _KerasImportHook(importlib.abc.MetaPathFinder):
    """One-shot: when ``keras`` is imported, add ku's stand-ins once its module has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        _remove_hook()
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _add_stand_ins(module)

        spec.loader.exec_module = exec_then_register  # the same loader object (resources etc.)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _KerasImportHook)]


def _install() -> None:
    keras_module = sys.modules.get("keras")
    if keras_module is not None and hasattr(keras_module, "saving"):
        _add_stand_ins(keras_module)
    elif not any(isinstance(f, _KerasImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())


def register_keras_objects() -> None:
    """Import every module that defines a ku Keras object (registers the real classes; imports
    Keras / TensorFlow)."""
    for module in KERAS_OBJECTS:
        importlib.import_module(module)


def load_model(path, **kwargs):
    """``keras.models.load_model(path, **kwargs)`` with ku's Keras objects registered.

    Args:
        path: a ``.keras`` file (or legacy ``.h5``) saved from a ku model.
        **kwargs: passed on (``compile=False``, ``custom_objects``, ``safe_mode``).

    Returns:
        the ``keras.Model``.
    """
    register_keras_objects()
    import keras

    return keras.models.load_model(path, **kwargs)


def __getattr__(name):  # PEP 562: ``ku.layers`` etc. after a plain ``import ku``
    if name in _SUBPACKAGES:
        return importlib.import_module(f"ku.{name}")
    raise AttributeError(f"module 'ku' has no attribute {name!r}")


_install()
