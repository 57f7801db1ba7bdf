"""ku's modules import only downwards: data and leaf helpers -> models -> training -> pipelines ->
command line / export (docs/design.md §4).

Every ``import`` / ``from ... import`` statement of every module under ``ku/`` is read with
:mod:`ast` -- also the ones inside functions (lazy imports) -- and the floor of the importing module
is compared with the floor of the imported one. Same-floor and downward imports are allowed; an
upward import fails with the module, the line and the imported name.

Floors (lowest first; a module's floor is that of the longest matching entry of :data:`FLOORS`;
a module under ``ku/`` that matches no entry fails, so a new top-level module must be placed):

floor 0, data and leaf helpers (what each imports from ku):
    ku (the package)       nothing at import time (its lazy attributes use importlib)
    ku.data                ku.data.* only
    ku.layers              ku.size_policy
    ku.losses, ku.metrics, ku.optimizers, ku.size_policy, ku.absl_app
                           nothing
    ku.image_modification  nothing (works on any Keras model it is given)
    ku.plots               ku.metrics
    ku.backbones           ku.data.durable, ku.layers.preprocessing
    ku.distribute          ku.data.generators
    ku.evaluation          ku.metrics, ku.data.shards
    ku.baselines           ku.metrics, ku.evaluation, ku.data.shards
    ku.extraction          ku.backbones, ku.data.* (ku.models.mlsp uses its resolve_min_side)
floor 1, ku.models         floor 0 (architecture only: no fitting code)
floor 2, ku.training       floors 0-1 (schedules, callbacks, the fitting core, the loops)
floor 3, ku.pipelines      floors 0-2 (whole runs: extraction, training, evaluation)
floor 4, ku.cli            floors 0-3 (the ``ku`` command)
         ku.export         only ku.size_policy, but it consumes trained models (SavedModel export)
                           at the end of the data flow: nothing in the library may depend on it

``scripts/`` sit on floor 4 too (they may import anything) and are not scanned.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KU = ROOT / "ku"

FLOORS = {
    "ku": 0,
    "ku.data": 0,
    "ku.layers": 0,
    "ku.losses": 0,
    "ku.metrics": 0,
    "ku.optimizers": 0,
    "ku.size_policy": 0,
    "ku.absl_app": 0,
    "ku.image_modification": 0,
    "ku.plots": 0,
    "ku.backbones": 0,
    "ku.distribute": 0,
    "ku.evaluation": 0,
    "ku.baselines": 0,
    "ku.extraction": 0,
    "ku.models": 1,
    "ku.training": 2,
    "ku.pipelines": 3,
    "ku.cli": 4,
    "ku.export": 4,
}
FLOOR_NAMES = {0: "data / leaf helpers", 1: "ku.models", 2: "ku.training", 3: "ku.pipelines",
               4: "command line / export"}


def floor(module: str, path: str = "") -> int:
    """The floor of a dotted ku module name (longest matching entry of :data:`FLOORS`)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOORS:
            return FLOORS[key]
    raise AssertionError(f"{path or module}: module {module!r} has no floor; add it to FLOORS "
                         "(tests/test_import_layering.py) and to the table in its docstring")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool = False):
    """``[(line, imported ku module, the statement's text)]`` of every ku import in ``source``
    (module-level and inside functions / classes / conditionals). ``from ku.x import y`` names
    ``ku.x.y`` when that is a module, else ``ku.x``; relative imports are resolved."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ku" or alias.name.startswith("ku."):
                    found.append((node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "ku" or target.startswith("ku.")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                name = sub if _is_module(sub) else target
                found.append((node.lineno, name, f"from {target} import {alias.name}"))
    return found


def upward_imports(source: str, module: str, path: str = "", is_package: bool = False):
    """Messages for every import in ``source`` (the text of ``module``) of a higher floor."""
    own = floor(module, path)
    out = []
    for line, name, text in imported_modules(source, module, is_package):
        theirs = floor(name, path)
        if theirs > own:
            out.append(f"{path or module}:{line}: {module} (floor {own}, {FLOOR_NAMES[own]}) imports "
                       f"{name} (floor {theirs}, {FLOOR_NAMES[theirs]}): `{text}`")
    return out


def ku_modules():
    return sorted(p for p in KU.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_ku_module_has_a_floor():
    missing = []
    for path in ku_modules():
        try:
            floor(module_name(path), str(path.relative_to(ROOT)))
        except AssertionError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_no_upward_imports():
    problems = []
    for path in ku_modules():
        problems += upward_imports(path.read_text(encoding="utf-8"), module_name(path),
                                   str(path.relative_to(ROOT)), is_package=path.name == "__init__.py")
    assert not problems, "upward imports (see the floors in tests/test_import_layering.py):\n" + \
        "\n".join(problems)


def test_models_hold_no_training_code():
    """The moved fitting functions are not reachable from ku.models any more."""
    for path in sorted((KU / "models").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for name in ("def fit_apm", "def train_student", "def train_theme_roi", "def fit_on_features",
                     "def fit_apm_head", "def fit_theme_roi_head", "class ThemeRoiTraining"):
            assert name not in text, f"{path.relative_to(ROOT)} defines {name[4:]} (it belongs to ku.training)"


# ---------------------------------------------------------------------------------------------
# the checker itself can fail

PLANTED = '''"""A model module."""
import numpy as np
from ku.layers import spp

def build():
    from ku.training import train  # lazy, still upward
    return train
'''


def test_a_planted_lazy_upward_import_is_caught():
    problems = upward_imports(PLANTED, "ku.models.planted", "ku/models/planted.py")
    assert len(problems) == 1, problems
    msg = problems[0]
    assert msg.startswith("ku/models/planted.py:6:"), msg
    assert "ku.training" in msg and "from ku.training import train" in msg and "floor 2" in msg


@pytest.mark.parametrize("source, module, expected", [
    ("import ku.pipelines.mlsp\n", "ku.training.features", ["ku.pipelines.mlsp"]),
    ("from ku import cli\n", "ku.data.readers", ["ku.cli"]),
    ("from ku.models import apm\n", "ku.metrics", ["ku.models.apm"]),
    ("from ..training import train\n", "ku.models.apm", ["ku.training"]),
    ("from . import heads\n", "ku.training", []),  # __init__ of ku.training: ku.training.heads
    ("from ku.models import apm\nfrom ku import metrics, __version__\n", "ku.training.apm", []),
    ("import keras\nfrom ku.training import train\n", "ku.pipelines.mlsp", []),
    ("from ku.export import guess_family\n", "ku.cli", []),
])
def test_floors_of_imports(source, module, expected):
    is_package = module == "ku.training"
    got = [m.split(" imports ")[1].split(" ")[0]
           for m in upward_imports(source, module, is_package=is_package)]
    assert got == expected
