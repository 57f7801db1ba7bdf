"""Where ku's Keras layers live: one public layer per module of ``ku/layers``, named after the
class in snake case; older import paths still work as re-exports, but nothing in ku uses them;
registering ku's Keras objects imports no model module."""
from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import pytest

import ku

KU = pathlib.Path(ku.__file__).parent

#: older import path -> names it still provides (the same objects as ``ku.layers``'s)
OLD_PATHS = {
    "ku.layers.roi_pooling": ("RoiPooling2D", "RoiAlign2D", "ImageBoxes", "image_boxes",
                              "roi_bin_bounds"),
    "ku.layers.area_pooling": ("AreaPooling2D", "area_weights"),
    "ku.layers.spp": ("SpatialPyramidPooling", "spp_bin_bounds", "SPP_MODES"),
    "ku.layers.min_side": ("MinSideUpscale",),
    "ku.layers.preprocessing": ("ImagePreprocessing", "PREPROCESSING_MODES"),
    "ku.models.masking": ("ValidRegionMask", "MapValidSize", "MaskAwareAveragePooling2D",
                          "valid_mask"),
    "ku.models.heads": ("SplitFeatures", "FeatureStandardization"),
    "ku.models.apm": ("L1Normalization", "DistributionMean"),
}


def snake_case(name: str) -> str:
    """``RoiPooling2D`` -> ``roi_pooling_2d``, ``L1Normalization`` -> ``l1_normalization``."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    s = re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()
    return re.sub(r"(?<=[a-z])(\dd)$", r"_\1", s)


def test_snake_case():
    assert [snake_case(n) for n in ("RoiPooling2D", "MaskAwareAveragePooling2D", "L1Normalization",
                                    "ImageBoxes", "ThemeEmbedding")] == [
        "roi_pooling_2d", "mask_aware_average_pooling_2d", "l1_normalization", "image_boxes",
        "theme_embedding"]


def _registered_layers():
    ku.register_keras_objects()
    return {k.split(">", 1)[1]: v for k, v in keras.saving.get_custom_objects().items()
            if k.startswith("ku>") and isinstance(v, type) and issubclass(v, keras.layers.Layer)}


def test_every_registered_layer_is_in_its_own_module_of_ku_layers():
    import ku.layers

    layers = _registered_layers()
    assert len(layers) >= 15
    for name, cls in layers.items():
        assert cls.__module__ == f"ku.layers.{snake_case(name)}", (name, cls.__module__)
        assert getattr(ku.layers, name) is cls, f"ku.layers does not export {name}"
        assert name in ku.layers.__all__


def test_one_public_class_per_layer_module():
    for path in sorted((KU / "layers").glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = importlib.import_module(f"ku.layers.{path.stem}")
        own = [n for n, obj in vars(module).items() if inspect.isclass(obj)
               and not n.startswith("_") and obj.__module__ == module.__name__]
        assert len(own) <= 1, f"{path.name} defines {own}"


def test_keras_objects_table_names_no_model_module():
    assert not [m for m in ku.KERAS_OBJECTS if not m.startswith(("ku.layers.", "ku.losses.",
                                                                   "ku.optimizers."))]


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_import_paths_still_work(old):
    import ku.layers

    module = importlib.import_module(old)
    for name in OLD_PATHS[old]:
        assert getattr(module, name) is getattr(ku.layers, name), f"{old}.{name}"


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_no_module_of_ku_uses_an_old_import_path():
    moved = {n for names in OLD_PATHS.values() for n in names}
    found = []
    for path in sorted(KU.rglob("*.py")):
        for module, names in _imports(path):
            if module in OLD_PATHS and (module.startswith("ku.layers.") or set(names) & moved):
                found.append(f"{path.relative_to(KU.parent)}: {module} {names}")
    assert not found, "\n".join(found)


def test_registering_keras_objects_imports_no_model_module():
    code = textwrap.dedent("""
        import sys
        import ku
        from ku.cli import _register_keras_objects
        _register_keras_objects()
        import keras
        cls = keras.saving.get_registered_object("ku>MapValidSize")
        assert cls.__module__ == "ku.layers.map_valid_size", cls.__module__
        print(sorted(m for m in sys.modules if m.startswith("ku.models")))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


#: every name ``ku.losses`` / ``ku.optimizers`` exported when each was one module
LOSS_NAMES = ("EMDLoss", "HuberBinLoss", "CDLoss", "KLDivergenceLoss", "SoftCrossEntropy",
              "EuclideanLoss", "emd_loss", "huber_bin_loss", "cd_loss", "kl_divergence_loss",
              "soft_cross_entropy", "euclidean_loss", "get_loss", "LOSS_NAMES")
OPTIMIZER_NAMES = ("LayerwiseAdam", "LayerwiseSGD", "lr_factors")


@pytest.mark.parametrize("package,names", [("ku.losses", LOSS_NAMES),
                                           ("ku.optimizers", OPTIMIZER_NAMES)])
def test_losses_and_optimizers_one_registered_class_per_module(package, names):
    module = importlib.import_module(package)
    assert set(names) <= set(module.__all__)
    for name in names:
        assert hasattr(module, name), f"{package}.{name}"
    ku.register_keras_objects()
    kind = keras.losses.Loss if package == "ku.losses" else keras.optimizers.Optimizer
    classes = {k.split(">", 1)[1]: v for k, v in keras.saving.get_custom_objects().items()
               if k.startswith("ku>") and isinstance(v, type) and issubclass(v, kind)}
    assert len(classes) == (6 if package == "ku.losses" else 2)
    modules = [cls.__module__ for cls in classes.values()]
    assert len(set(modules)) == len(modules), modules
    for name, cls in classes.items():
        assert cls.__module__.startswith(f"{package}.") and getattr(module, name) is cls, name
    # a module of the package named like one of its exported functions would be shadowed
    for path in (KU / package.split(".")[1]).glob("*.py"):
        assert path.stem not in names, f"{path.name} is shadowed by {package}.{path.stem}"
