"""The ``ku`` command line: ``ku predict``, ``ku evaluate``, ``ku export``.

Run as ``ku ...`` (console script) or ``python -m ku.cli ...``. ``ku --help`` and
``ku <command> --help`` explain every flag.

``ku predict``
    Score image files, folders (recursive; every extension of
    :data:`ku.data.images.IMAGE_EXTENSIONS`) and CSV files with an image-path column; write a CSV
    or JSON with ``image_id, image_path, mean_score`` and, for distribution models,
    ``std_score`` and ``dist_1 .. dist_K``. Unreadable images are skipped, listed at the end and
    written to ``<out>.errors.csv``. Images are read with :func:`ku.data.images.read_image`
    (OpenCV, EXIF orientation applied) and scored through the same graph as the SavedModel export
    (:mod:`ku.export`: size policy, input checks, outputs).
``ku evaluate``
    Paper metrics (:func:`ku.metrics.evaluate`: SRCC, PLCC, accuracy, MSE, ... and the
    distribution metrics when both files have distributions) of a predictions file against labels
    (an ids-table CSV or AVA's ``AVA.txt``), optionally next to the papers' numbers.
``ku export``
    Write a SavedModel (:func:`ku.export.export_saved_model`) that needs neither ku nor Keras.

Models (``--model``): a short name with ``--head-weights`` (the head's weights), or a ``.keras`` file of
a whole image model (image 0..255 -> score). ``--head-weights released`` with ``mlsp-pool3fc`` /
``mlsp-single3fc`` takes the paper's released head (:mod:`ku.models.released`: downloaded once into
Keras' cache, size and sha256 checked; offline, an error says what to download and where to put
it). Nothing else is downloaded: ImageNet backbone weights are taken from Keras' cache
(``~/.keras/models``) or from ``--backbone-weights PATH``, and a missing file is an error that
says which file to put where.

Exit status: :data:`EXIT_OK` (0) success; :data:`EXIT_FAILURE` (1) unexpected error;
:data:`EXIT_USAGE` (2) bad arguments or unusable inputs (the message names the argument, nothing
is scored); :data:`EXIT_SKIPPED` (3) ``ku predict`` finished but skipped one or more images (the
good ones are written).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_SKIPPED",
    "MODELS",
    "ModelSpec",
    "UsageError",
    "build_parser",
    "collect_images",
    "load_model",
    "predict_files",
    "read_predictions",
    "main",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3


class UsageError(ValueError):
    """A bad command-line argument; ``argument`` names it (e.g. ``"--out"``)."""

    def __init__(self, argument: str, message: str):
        self.argument = argument
        super().__init__(f"argument {argument}: {message}")


# --------------------------------------------------------------------------------------------
# models by short name
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model selectable by a short name (``ku predict --model <name> --head-weights <file>``).

    Attributes:
        family: :mod:`ku.export` family.
        build: ``build(args) -> keras.Model`` image model with the weights loaded.
        backbone: default backbone.
        description: one line for ``--help``.
    """

    family: str
    build: Callable
    backbone: Optional[str]
    description: str


def _mlsp_builder(head: str, pooling: str):
    def build(args):
        return _build_mlsp(args, head, pooling)

    return build


#: Short model names. The MLSP ones are Hosu et al. 2019's heads (Table 1) on an end-to-end
#: extractor; ``mlsp-pool3fc`` / ``mlsp-single3fc`` take the released ava-mlsp
#: ``model_best_weights.h5`` files (wide / narrow, InceptionResNet-v2).
MODELS = {
    "mlsp-pool3fc": ModelSpec("mlsp", _mlsp_builder("pool3fc", "wide"), "inception_resnet_v2",
                              "Hosu 2019 Pool-3FC on wide (5x5) MLSP features (released wide model)"),
    "mlsp-single3fc": ModelSpec("mlsp", _mlsp_builder("single3fc", "narrow"), "inception_resnet_v2",
                                "Hosu 2019 Single-3FC on narrow MLSP features (released narrow model)"),
    "mlsp-single3fc-do": ModelSpec("mlsp", _mlsp_builder("single3fc_do", "narrow"),
                                   "inception_resnet_v2", "Hosu 2019 Single-3FC (+do)"),
    "mlsp-single1fc": ModelSpec("mlsp", _mlsp_builder("single1fc", "narrow"), "inception_resnet_v2",
                                "Hosu 2019 Single-1FC on narrow MLSP features"),
    "mlsp-multi3fc": ModelSpec("mlsp", _mlsp_builder("multi3fc", "narrow"), "inception_resnet_v2",
                               "Hosu 2019 Multi-3FC on narrow MLSP features"),
}


def _register_keras_objects():
    """Import the modules that register ku's Keras objects (:data:`ku.KERAS_OBJECTS`: the modules
    of ``ku.layers``, ``ku.losses`` and ``ku.optimizers``), so ``.keras`` files load."""
    import ku

    ku.register_keras_objects()


def _backbone_weights(args, backbone):
    """Resolve --backbone-weights without any network access."""
    from ku.backbones import imagenet_weights_path

    value = args.backbone_weights
    if value.lower() in ("none", "random"):
        _echo(args, f"WARNING: --backbone-weights={value}: the {backbone} backbone is RANDOMLY "
                    "INITIALISED; scores are meaningless except for testing.")
        return None
    if value.lower() == "imagenet":
        return str(imagenet_weights_path(  # WeightsUnavailableError
            backbone, download=False, how_to_pass="--backbone-weights <path to the .h5 file>"))
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError("--backbone-weights", f"no such file: {value!r} (or use imagenet / none)")
    return str(path)


def _load_head_weights(head_path: Path, build_head, feature_shape):
    """A head from ``--head-weights``: a ``.keras`` head model, Keras 3 ``.weights.h5`` or a Keras 2
    (released ava-mlsp) ``.h5`` weights file."""
    import keras

    from ku.models.heads import load_released_weights

    name = head_path.name.lower()
    if name.endswith(".keras"):
        _register_keras_objects()
        head = keras.models.load_model(head_path, compile=False)
        want = tuple(feature_shape)
        got = tuple(head.input_shape[1:]) if not isinstance(head.input_shape, list) else None
        if got is None or len(got) != len(want) or any(
                g is not None and g != w for g, w in zip(got, want)):
            raise UsageError("--head-weights", f"{str(head_path)!r} is a head on features {got}, but "
                                          f"this --model/--backbone gives features {want}")
        return head
    head = build_head()
    if name.endswith(".weights.h5"):
        try:
            head.load_weights(head_path)
        except Exception as e:  # noqa: BLE001 (name the file)
            raise UsageError("--head-weights", f"{str(head_path)!r} does not fit head {head.name!r} "
                                          f"(check --output / --n-bins / --backbone): "
                                          f"{_short_reason(e)}") from None
        return head
    if name.endswith((".h5", ".hdf5")):
        try:
            load_released_weights(head, head_path)
        except ValueError as e:
            raise UsageError("--head-weights", str(e)) from None
        return head
    raise UsageError("--head-weights", f"{str(head_path)!r}: expected a .keras, .weights.h5 or released "
                                  ".h5 file")


def _short_reason(e: Exception) -> str:
    """First line of an exception plus a line naming shapes, if any (Keras' load errors print
    whole arrays)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = lines[:1] + [ln for ln in lines[1:] if "shape" in ln][:1]
    return f"{type(e).__name__}: " + " ".join(ln[:300] for ln in keep)


def _released_weights(args, backbone) -> Path:
    """``--head-weights released``: the ava-mlsp file of ``--model`` from Keras' cache, downloaded and
    checked (:mod:`ku.models.released`) when missing."""
    from ku.models.released import RELEASED, ReleasedWeightsError, released_weights_path

    if args.model not in RELEASED:
        raise UsageError("--head-weights", f"no released weights for --model {args.model} (released: "
                                      f"{', '.join(RELEASED)})")
    if backbone != RELEASED[args.model].backbone:
        raise UsageError("--backbone", f"the released {args.model} was trained on "
                                       f"{RELEASED[args.model].backbone}, not {backbone}")
    try:
        return released_weights_path(args.model, echo=lambda text: _echo(args, text))
    except ReleasedWeightsError as e:
        raise UsageError("--head-weights", f"released weights: {e}") from None


def _build_mlsp(args, head_name, pooling):
    from ku.backbones import (BackboneMismatchError, build_backbone, check_same_backbone,
                              mlsp_block_channels)
    from ku.models.mlsp import mlsp_end_to_end, mlsp_extractor
    from ku.pipelines.mlsp import build_head

    backbone = args.backbone or MODELS[args.model].backbone
    if not args.head_weights:
        raise UsageError("--head-weights", f"--model {args.model} needs --head-weights <head weights file> "
                                      "(.keras head, .weights.h5, a released ava-mlsp .h5, or "
                                      "'released' for mlsp-pool3fc / mlsp-single3fc)")
    if args.head_weights.lower() == "released":
        head_path = _released_weights(args, backbone)
    else:
        head_path = Path(args.head_weights).expanduser()
    if not head_path.is_file():
        raise UsageError("--head-weights", f"no such file: {args.head_weights!r}")
    channels = sum(mlsp_block_channels(backbone))
    feature_shape = (5, 5, channels) if pooling == "wide" else (channels,)
    output = args.output or "mos"
    n_bins = args.n_bins or 10

    def new_head():
        return build_head(head_name, feature_shape, backbone=backbone, output=output, n_bins=n_bins)

    head = _load_head_weights(head_path, new_head, feature_shape)
    record = _backbone_record(head_path, "--head-weights")
    weights = _backbone_weights(args, backbone)
    seed = _backbone_seed(args, record, random=weights is None)
    extractor = mlsp_extractor(backbone, features=pooling, backbone_model=build_backbone(
        backbone, weights=weights, seed=seed))
    if record is not None:
        try:
            check_same_backbone(record, extractor, what=f"--head-weights {str(head_path)!r}")
        except BackboneMismatchError as e:
            raise UsageError("--backbone-weights/--backbone-seed", str(e)) from None
    model = mlsp_end_to_end(extractor, head, name=f"{args.model}_{backbone}")
    model.ku_seed, model.ku_weights = extractor.ku_seed, extractor.ku_weights
    return model


def _backbone_record(path: Path, flag: str):
    """The backbone record saved next to a head / model file (``<stem>.backbone.json``), or None."""
    from ku.backbones import load_backbone_record

    try:
        return load_backbone_record(path)
    except ValueError as e:
        raise UsageError(flag, str(e)) from None


def _backbone_seed(args, record, random: bool) -> int:
    """--backbone-seed, else the seed the head's backbone record names, else ku's default. The
    seed only matters for a random backbone (--backbone-weights none): refused otherwise."""
    from ku.backbones import DEFAULT_SEED

    if args.backbone_seed is not None:
        if not random:
            raise UsageError("--backbone-seed", "only applies with --backbone-weights none (a "
                                                "random backbone); other weights replace it")
        return args.backbone_seed
    if random and record is not None and record.get("backbone_seed") is not None:
        seed = int(record["backbone_seed"])
        _echo(args, f"ku: random backbone seeded with {seed}, the seed recorded with the head")
        return seed
    return DEFAULT_SEED


def load_model(args):
    """``(keras.Model, family)`` for parsed ``--model`` / ``--head-weights`` / ... arguments.

    Raises:
        UsageError: naming the argument (unknown name, missing or unfitting file).
        ku.backbones.WeightsUnavailableError: ImageNet weights not in Keras' cache.
    """
    import keras

    spec = MODELS.get(args.model)
    if spec is not None:
        model = spec.build(args)
        return model, (args.family or spec.family)
    if args.backbone_seed is not None:
        raise UsageError("--backbone-seed", "applies to a short --model with --backbone-weights "
                                            "none; a .keras model holds its backbone's weights")
    path = Path(args.model).expanduser()
    if path.name.lower().endswith(".weights.h5"):
        raise UsageError("--model", f"{args.model!r} is a weights file: pass it as --head-weights "
                                    f"with a short --model ({', '.join(MODELS)})")
    if not path.name.lower().endswith((".keras", ".h5", ".hdf5")):
        raise UsageError("--model", f"unknown model {args.model!r}; choose a short name "
                                    f"({', '.join(MODELS)}) or a .keras file")
    if not path.is_file():
        raise UsageError("--model", f"no such file: {args.model!r}")
    _register_keras_objects()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 (name the file)
        raise UsageError("--model", f"cannot load {str(path)!r}: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}") from None
    shape = model.input_shape
    first = shape[0] if isinstance(shape, list) else shape
    if len(first) != 4 or first[-1] != 3:
        raise UsageError("--model", f"{str(path)!r} takes input {shape}, not images (batch, height, "
                                    "width, 3); for a head trained on features use --model "
                                    "mlsp-<head> --head-weights <head file>")
    if args.head_weights:
        try:
            model.load_weights(Path(args.head_weights).expanduser())
        except Exception as e:  # noqa: BLE001
            raise UsageError("--head-weights", f"cannot load {args.head_weights!r} into {model.name!r}: "
                                          f"{_short_reason(e)}") from None
    record = _backbone_record(path, "--model")
    if record is not None and not args.head_weights:  # which backbone, for the export's metadata
        model.ku_seed = record.get("backbone_seed")
        model.ku_weights = record.get("weights")
    from ku.export import guess_family

    return model, (args.family or guess_family(model))


def _module_for(args, model, family):
    from ku.export import make_scoring_module

    kw = dict(family=family, n_bins=None, score_range=args.score_range, max_side=args.max_side,
              small_images=args.small_images)
    if args.min_side is not None:
        kw["min_side"] = None if args.min_side == 0 else args.min_side
    try:
        return make_scoring_module(model, **kw)
    except ValueError as e:
        raise UsageError("--score-range/--min-side/--max-side", str(e)) from None


# --------------------------------------------------------------------------------------------
# inputs and outputs
# --------------------------------------------------------------------------------------------
def collect_images(inputs: Sequence[str], path_column: str = "image_path",
                   id_column: str = "image_id", theme_column: Optional[str] = None) -> list:
    """Expand files, folders (recursive) and CSV files into ``[(image_id, path, theme), ...]``.

    A CSV needs ``path_column`` (relative paths are resolved against the CSV's folder);
    ``id_column`` is used when present, else the file name without extension; ``theme_column``
    when given and present (else theme 0). Duplicate paths are kept once, in order.

    Raises:
        UsageError: an input that does not exist, a CSV without the path column, an empty folder.
    """
    import pandas as pd

    from ku.data.images import list_images

    items, seen = [], set()

    def add(image_id, path, theme=0):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            items.append((str(image_id), str(path), int(theme)))

    for inp in inputs:
        p = Path(inp).expanduser()
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise UsageError("INPUTS", f"folder {inp!r} holds no images (extensions: see "
                                           "ku.data.images.IMAGE_EXTENSIONS)")
            for f in found:
                add(f.stem, f)
        elif p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
            try:
                df = pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",", dtype=str)
            except Exception as e:  # noqa: BLE001
                raise UsageError("INPUTS", f"cannot read CSV {inp!r}: {e}") from None
            if path_column not in df.columns:
                raise UsageError("--path-column", f"CSV {inp!r} has no column {path_column!r} "
                                                  f"(columns: {list(df.columns)})")
            for row, (_, r) in enumerate(df.iterrows(), start=2):
                raw = r[path_column]
                if not isinstance(raw, str) or not raw.strip():
                    raise UsageError("INPUTS", f"{inp}, line {row}: empty {path_column!r}")
                f = Path(raw).expanduser()
                f = f if f.is_absolute() else p.parent / f
                image_id = r[id_column] if id_column in df.columns and isinstance(
                    r[id_column], str) else f.stem
                theme = 0
                if theme_column and theme_column in df.columns and isinstance(r[theme_column], str):
                    try:
                        theme = int(float(r[theme_column]))
                    except ValueError:
                        raise UsageError("--theme-column", f"{inp}, line {row}: theme "
                                                           f"{r[theme_column]!r} is not an integer") from None
                add(image_id, f, theme)
        elif p.is_file():
            add(p.stem, p)
        else:
            raise UsageError("INPUTS", f"no such file or folder: {inp!r}")
    return items


def _check_out(path: str, flag: str, suffixes=(".csv", ".json")) -> Path:
    p = Path(path).expanduser()
    if suffixes and p.suffix.lower() not in suffixes:
        raise UsageError(flag, f"{path!r} must end with {' or '.join(suffixes)}")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise UsageError(flag, f"folder {str(parent)!r} does not exist")
    if p.is_dir():
        raise UsageError(flag, f"{path!r} is a folder")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(flag, f"cannot write {path!r} (permission denied)")
    return p


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class _Progress:
    """One progress line on stderr for ``ku predict``: done/total, skipped, rate, elapsed, ETA.

    On a terminal the line is rewritten after every image; otherwise one line every 10% or every
    30 s. The rate reads ``images/s`` from 1 image/s up and ``s/image`` below, never "0.0
    images/s". An image that takes longer than ``slow`` seconds gets its own line with its time
    and size (large photos at full resolution can take minutes on a CPU).
    """

    def __init__(self, total, enabled=True, stream=None, slow=10.0, already=0,
                 label="ku predict"):
        self.total, self.enabled, self.label = total, enabled and total > 0, label
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start, self.last_decile, self.last_time = time.time(), -1, time.time()
        self.slow, self.already = slow, already

    def line(self, done, skipped, now=None):
        elapsed = (now or time.time()) - self.start
        new = done - self.already
        if new > 0 and elapsed > 0:
            per = elapsed / new
            rate = f"{1 / per:.1f} images/s" if per <= 1 else f"{per:.1f} s/image"
            eta = f", ETA {_clock(per * (self.total - done))}"
        else:
            rate, eta = "-- images/s", ""
        return (f"{self.label}: {done}/{self.total} images ({100 * done // self.total}%), "
                f"{skipped} skipped, {rate}, elapsed {_clock(elapsed)}{eta}")

    def image_time(self, path, seconds, size=None):
        """Report an image slower than ``self.slow`` seconds."""
        if self.enabled and seconds > self.slow:
            shape = f" ({size[0]}x{size[1]} px)" if size else ""
            self.stream.write(("\n" if self.tty else "") + f"{self.label}: {path}{shape} took "
                              f"{seconds:.1f} s\n")
            self.stream.flush()

    def update(self, done, skipped):
        if not self.enabled:
            return
        now = time.time()
        text = self.line(done, skipped, now)
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done == self.total else ""))
        else:
            decile = 10 * done // self.total
            if decile == self.last_decile and now - self.last_time < 30 and done != self.total:
                return
            self.last_decile, self.last_time = decile, now
            self.stream.write(text + "\n")
        self.stream.flush()


def _error_text(e: Exception) -> str:
    """A one-line reason for the errors file."""
    from ku.data.images import ImageReadError

    if isinstance(e, ImageReadError):
        return e.reason
    if isinstance(e, FileNotFoundError):
        return "file not found"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "assertion failed" in ln:
            return ln
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def _output_columns(module) -> list:
    cols = ["image_id", "image_path", "mean_score"]
    if getattr(module, "_scores", None) is not None:
        cols += ["std_score"] + [f"dist_{k}" for k in range(1, int(module.n_outputs) + 1)]
    return cols


def _score_one(module, path, theme, max_pixels):
    """Read, size (ku.size_policy, resized on uint8) and score one image -> (outputs, (h, w))."""
    import tensorflow as tf

    from ku.data.images import ImageReadError, read_image
    from ku.export import _resize_to
    from ku.size_policy import SizePolicyError, policy_size

    if not os.path.isfile(path):  # FIFOs, devices: never opened (they can block forever)
        if os.path.exists(path):
            raise ImageReadError(path, "not a regular file (e.g. a named pipe or a device); skipped")
    img = read_image(path, max_pixels=max_pixels)  # the pixel limit is checked from the header
    h, w = img.shape[:2]
    try:
        new = policy_size(h, w, min_side=module.min_side, max_side=module.max_side,
                          small_images=module.small_images, max_aspect=module.max_aspect)
    except SizePolicyError as e:
        raise ImageReadError(path, str(e)) from None
    x = _resize_to(tf.constant(img[None]), tf.constant(new, tf.int32))  # float32 at the new size
    args = [x]
    if module.takes_theme:
        args.append(tf.constant([theme], tf.int64))
    return module.predict_images(*args), (h, w)


def predict_files(module, items, *, max_pixels=None, progress=True, on_row=None, done=(),
                  label="ku predict", stop: Optional[Callable[[], bool]] = None):
    """Score ``items`` (from :func:`collect_images`) one image at a time, skipping bad ones.

    Each image is read with :func:`ku.data.images.read_image` (pixel limit checked from the
    header before decoding), sized by ku's size policy (:mod:`ku.size_policy`: resized on uint8,
    with the same TensorFlow op as the exported ``serving_default``) and scored with
    ``module.predict_images``. Non-regular files (named pipes, devices) are skipped and reported.

    Args:
        module: a :class:`ku.export.ScoringModule`.
        items: ``[(image_id, path, theme), ...]``.
        max_pixels: refuse images with more pixels (None: no limit).
        progress: progress line on stderr (rate, elapsed, ETA; slow images reported).
        on_row: called with each scored row (a dict) as soon as it is scored (``ku predict``
            appends it to the output file).
        done: image paths (``str``) already scored by an earlier run; skipped.
        label: prefix of the progress line.
        stop: called before each image; when it returns True, ``KeyboardInterrupt`` is raised
            there (between images, never inside a TensorFlow call).

    Returns:
        ``(predictions, errors)``: a DataFrame (``image_id, image_path, mean_score`` and, for
        distribution models, ``std_score, dist_1 .. dist_K``) of the images scored now and a
        DataFrame ``image_id, image_path, error`` of the skipped images.
    """
    import pandas as pd

    done = set(done)
    rows, errors = [], []
    bar = _Progress(len(items), enabled=progress, already=sum(str(p) in done for _, p, _ in items),
                    label=label)
    for i, (image_id, path, theme) in enumerate(items):
        if stop is not None and stop():
            raise KeyboardInterrupt
        if str(path) in done:
            continue
        t0 = time.time()
        try:
            out, size = _score_one(module, path, theme, max_pixels)
        except Exception as e:  # noqa: BLE001 (batch work: skip and report)
            errors.append({"image_id": image_id, "image_path": str(path), "error": _error_text(e)})
        else:
            row = {"image_id": image_id, "image_path": str(path),
                   "mean_score": float(out["mean_score"].numpy()[0])}
            if "distribution" in out:
                row["std_score"] = float(out["std_score"].numpy()[0])
                for k, v in enumerate(out["distribution"].numpy()[0], start=1):
                    row[f"dist_{k}"] = float(v)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            bar.image_time(path, time.time() - t0, size)
        bar.update(i + 1, len(errors))
    cols = _output_columns(module)
    return (pd.DataFrame(rows, columns=cols),
            pd.DataFrame(errors, columns=["image_id", "image_path", "error"]))


class _RowJournal:
    """Rows of ``ku predict`` appended to a CSV as they are scored (flushed after each row), so
    that an interrupted run (Ctrl-C, SIGKILL, a hung file) keeps what it scored, and a re-run of
    the same command continues where it stopped.

    The journal is the ``--out`` CSV itself (for ``.json`` outputs ``<out>.part.csv``, turned
    into the JSON at the end). ``<out>.ku-run.json`` records the model and settings; a journal
    written with other ones is started afresh, never mixed. A last line cut short by a kill is
    dropped on resume.
    """

    def __init__(self, out: Path, columns, run_info: dict):
        self.out, self.columns = out, list(columns)
        self.path = out if out.suffix.lower() == ".csv" else out.with_name(out.name + ".part.csv")
        self.stamp = out.with_name(out.name + ".ku-run.json")
        self.run_info = run_info
        self.done = self._resume()
        self.file = open(self.path, "a", encoding="utf-8", newline="")
        if self.file.tell() == 0:
            self._write_line(self.columns)

    def _resume(self) -> dict:
        import pandas as pd

        try:
            same = (self.path.is_file() and self.stamp.is_file()
                    and json.loads(self.stamp.read_text()) == self.run_info)
        except (OSError, ValueError):
            same = False
        if not same:
            if self.path.exists():
                self.path.unlink()
            self.stamp.write_text(json.dumps(self.run_info, indent=1))
            return {}
        data = self.path.read_bytes()
        keep = data[:data.rfind(b"\n") + 1]  # a line cut short by a kill is dropped
        if len(keep) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
        if not keep:
            return {}
        import io

        df = pd.read_csv(io.BytesIO(keep), dtype={"image_id": str, "image_path": str})
        if list(df.columns) != self.columns:
            self.path.unlink()
            return {}
        return {str(p): r for p, r in zip(df["image_path"], df.to_dict("records"))}

    def _write_line(self, values):
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self.file.write(buf.getvalue())
        self.file.flush()

    def add(self, row: dict):
        self._write_line([repr(row[c]) if isinstance(row[c], float) else row[c] for c in self.columns])

    def close(self):
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def finish(self, items):
        """All images done: write ``--out`` in input order (atomic replace), drop the journal."""
        import pandas as pd

        self.close()
        df = pd.read_csv(self.path, dtype={"image_id": str, "image_path": str})
        order = {str(p): k for k, (_, p, _) in enumerate(items)}
        df = df[df["image_path"].isin(order)]
        df = df.iloc[sorted(range(len(df)), key=lambda k: order[df["image_path"].iloc[k]])]
        _write_predictions(df.reset_index(drop=True), self.out)
        if self.path != self.out:
            self.path.unlink()
        return df


def _write_predictions(df, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".json":
        dist_cols = [c for c in df.columns if c.startswith("dist_")]
        records = []
        for r in df.to_dict("records"):
            rec = {k: r[k] for k in ("image_id", "image_path", "mean_score", "std_score") if k in r}
            if dist_cols:
                rec["distribution"] = [r[c] for c in dist_cols]
            records.append(rec)
        text = json.dumps(records, indent=1)
    else:
        import io

        buf = io.StringIO()
        df.to_csv(buf, index=False)
        text = buf.getvalue()
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_predictions(path) -> "pandas.DataFrame":  # noqa: F821
    """Read a ``ku predict`` output (CSV or JSON) as a DataFrame with ``image_id``,
    ``mean_score`` and, when present, ``dist_1 .. dist_K``.

    Also accepted: any CSV with an ``image_id`` (or ``image_path``) column and a ``mean_score``,
    ``mos``, ``score`` or ``prediction`` column.

    Raises:
        UsageError: (``--predictions``) unreadable file or missing columns.
    """
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError("--predictions", f"no such file: {str(path)!r}")
    try:
        if p.suffix.lower() == ".json":
            records = json.loads(p.read_text())
            rows = []
            for r in records:
                r = dict(r)
                for k, v in enumerate(r.pop("distribution", None) or [], start=1):
                    r[f"dist_{k}"] = v
                rows.append(r)
            df = pd.DataFrame(rows)
        else:
            df = pd.read_csv(p, dtype={"image_id": str})
    except Exception as e:  # noqa: BLE001
        raise UsageError("--predictions", f"cannot read {str(path)!r}: {e}") from None
    if "image_id" not in df.columns:
        if "image_path" not in df.columns:
            raise UsageError("--predictions", f"{str(path)!r} needs an image_id or image_path "
                                              f"column (columns: {list(df.columns)})")
        df["image_id"] = [Path(str(x)).stem for x in df["image_path"]]
    for name in ("mean_score", "mos", "score", "prediction"):
        if name in df.columns:
            df = df.rename(columns={name: "mean_score"}) if name != "mean_score" else df
            break
    else:
        raise UsageError("--predictions", f"{str(path)!r} needs a mean_score (or mos / score) "
                                          f"column (columns: {list(df.columns)})")
    df["image_id"] = df["image_id"].astype(str)
    return df


def _read_labels(path, args):
    from ku.data import readers

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError("--labels", f"no such file: {str(path)!r}")
    try:
        if p.suffix.lower() == ".txt":
            df = readers.read_ava(p.parent, ava_file=p.name, challenges_file=None, test_list=None,
                                  split=None, check_files=False)
        else:
            df = readers.read_label_csv(p, check_files=False, id_column=args.id_column)
    except (ValueError, KeyError) as e:
        raise UsageError("--labels", str(e)) from None
    df["image_id"] = df["image_id"].astype(str)
    return df


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def _echo(args, text, err=True):
    if not getattr(args, "quiet", False) or not err:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


@contextlib.contextmanager
def _interrupt_between_images():
    """While scoring, a first SIGINT (Ctrl-C) only sets a flag that :func:`predict_files` checks
    between images: a ``KeyboardInterrupt`` raised in the middle of a TensorFlow call could leave
    the runtime in a state that crashed the process at exit (seen as a segmentation fault, with
    exit status -11 instead of 130). A second SIGINT interrupts at once. Yields the flag's reader;
    off the main thread (where signals cannot be handled) it never stops."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hit = []
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if hit:  # the second Ctrl-C: the user does not want to wait for the current image
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        hit.append(signum)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)


def predict_resumable(module, items, journal, *, on_row=None, label="ku predict", where=None, **kwargs):
    """:func:`predict_files` into a row journal (rows already in it are skipped), safe to stop:
    Ctrl-C stops between images (:func:`_interrupt_between_images`), closes the journal and says
    where the scores so far are. Returns the errors DataFrame, or None when interrupted (exit 130).
    ``kwargs`` go to :func:`predict_files`."""
    try:
        with _interrupt_between_images() as stop:
            _, errors = predict_files(module, items, on_row=on_row or journal.add, done=journal.done,
                                      label=label, stop=stop, **kwargs)
    except KeyboardInterrupt:
        journal.close()
        print(f"\n{label}: interrupted; the scores so far are in {where or journal.path}; run the "
              "same command again to continue", file=sys.stderr)
        return None
    return errors


def _cmd_predict(args) -> int:
    from ku.size_policy import DEFAULT_MAX_PIXELS

    out = _check_out(args.out, "--out")
    items = collect_images(args.inputs, path_column=args.path_column, id_column=args.id_column,
                           theme_column=args.theme_column)
    if not items:
        raise UsageError("INPUTS", "no images given (the CSV inputs have no rows)")
    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)
    model, family = load_model(args)
    module = _module_for(args, model, family)
    run_info = {"model": args.model, "weights": args.head_weights, "backbone": args.backbone,
                "backbone_weights": args.backbone_weights,
                "backbone_seed": getattr(model, "ku_seed", None), "family": family,
                "model_name": model.name, "min_side": module.min_side, "max_side": module.max_side,
                "small_images": module.small_images, "max_pixels": max_pixels,
                "score_range": args.score_range, "n_bins": args.n_bins, "output": args.output}
    journal = _RowJournal(out, _output_columns(module), run_info)
    n_done = sum(str(p) in journal.done for _, p, _ in items)
    _echo(args, f"ku predict: scoring {len(items) - n_done} image(s) with {model.name} ({family})"
                + (f"; {n_done} already in {journal.path} from an earlier run" if n_done else ""))
    errors = predict_resumable(module, items, journal, max_pixels=max_pixels, progress=not args.quiet,
                               label="ku predict", where=journal.path)
    if errors is None:
        return 130
    preds = journal.finish(items)
    err_path = out.with_name(out.name + ".errors.csv")
    if len(errors):
        errors.to_csv(err_path, index=False)
    elif err_path.exists():
        err_path.unlink()  # a stale list from an earlier run would mislead
    print(f"wrote {len(preds)} prediction(s) to {out}")
    if len(errors):
        print(f"skipped {len(errors)} unreadable image(s) (listed in {err_path}):")
        for _, r in errors.head(50).iterrows():
            print(f"  {r['image_path']}: {r['error']}")
        if len(errors) > 50:
            print(f"  ... and {len(errors) - 50} more")
        return EXIT_SKIPPED
    return EXIT_OK


def _cmd_evaluate(args) -> int:
    import numpy as np
    import pandas as pd

    from ku.data.readers import dist_columns
    from ku.evaluation import format_table
    from ku.metrics import evaluate, paper_results

    if args.out:
        _check_out(args.out, "--out", suffixes=(".csv",))
    preds = read_predictions(args.predictions)
    labels = _read_labels(args.labels, args)
    labelled = set(labels["image_id"])  # before --ids / --set
    if args.ids:
        from ku.data.readers import read_ava_test_list

        p = Path(args.ids).expanduser()
        if not p.is_file():
            raise UsageError("--ids", f"no such file: {args.ids!r}")
        keep = set(read_ava_test_list(p))
        labels = labels[labels["image_id"].isin(keep)]
    if args.set:
        if "set" not in labels.columns:
            raise UsageError("--set", f"labels {args.labels!r} have no 'set' column")
        labels = labels[labels["set"] == args.set]
    dup = preds["image_id"][preds["image_id"].duplicated()]
    if len(dup):
        raise UsageError("--predictions", f"duplicate image ids, e.g. {dup.iloc[0]!r}")
    merged = labels.merge(preds, on="image_id", how="inner", suffixes=("_true", ""))
    n_pred_only = len(set(preds["image_id"]) - labelled)
    n_excluded = len((set(preds["image_id"]) & labelled) - set(labels["image_id"]))
    n_label_only = len(labels) - len(merged)
    if merged.empty:
        raise UsageError("--predictions", f"no image id of {args.predictions!r} is in "
                                          f"{args.labels!r} (e.g. {preds['image_id'].iloc[:3].tolist()})")
    y_true = merged["mos"].to_numpy(float)
    y_pred = merged["mean_score"].to_numpy(float)
    ok = np.isfinite(y_true) & np.isfinite(y_pred)
    merged, y_true, y_pred = merged[ok], y_true[ok], y_pred[ok]
    dist_true = dist_pred = None
    tcols = [c for c in dist_columns(labels) if f"{c}_true" in merged.columns]
    pcols = dist_columns(preds)
    if tcols and len(tcols) == len(pcols):
        dt = merged[[f"{c}_true" for c in tcols]].to_numpy(float)
        if np.all(np.isfinite(dt)):
            dist_true, dist_pred = dt, merged[pcols].to_numpy(float)
    table = evaluate(y_true, y_pred, threshold=args.threshold, dist_true=dist_true,
                     dist_pred=dist_pred)
    table.insert(0, "N", len(y_true))
    table.insert(0, "model", args.label or Path(args.predictions).stem)
    if args.compare:
        ref = paper_results()
        names = ref["model"].tolist() if args.compare == ["all"] else args.compare
        unknown = [n for n in names if n not in set(ref["model"])]
        if unknown:
            raise UsageError("--compare", f"no paper row {unknown[0]!r}; available: "
                                          f"{ref['model'].tolist()}")
        rows = ref[ref["model"].isin(names)].drop(columns=["source", "dataset"])
        table = pd.concat([table, rows], ignore_index=True)
    table = table.dropna(axis=1, how="all")
    excluded = f", {n_excluded} excluded by --ids/--set" if n_excluded else ""
    print(f"{len(y_true)} images evaluated ({n_label_only} labelled images without prediction, "
          f"{n_pred_only} predictions without label{excluded})")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(format_table(table))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return EXIT_OK


def _cmd_export(args) -> int:
    from ku.export import export_saved_model

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise UsageError("--out", f"{args.out!r} exists and is not an empty folder (add "
                                  "--overwrite to replace it)")
    anc = out.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError("--out", f"cannot create {args.out!r}: {str(anc)!r} is "
                                  f"{'not a folder' if not anc.is_dir() else 'not writable'}")
    from ku.size_policy import DEFAULT_MAX_PIXELS

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)
    model, family = load_model(args)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)  # missing parent folders
    kw = dict(family=family, score_range=args.score_range, max_side=args.max_side,
              small_images=args.small_images, overwrite=args.overwrite, max_pixels=max_pixels)
    if args.min_side is not None:
        kw["min_side"] = None if args.min_side == 0 else args.min_side
    try:
        path = export_saved_model(model, out, **kw)
    except ValueError as e:
        raise UsageError("--out/--score-range/--min-side/--max-side", str(e)) from None
    meta = json.loads((path / "assets.extra" / "ku_export.json").read_text())
    limit = f"{meta['max_pixels']:,}" if meta.get("max_pixels") else "none"
    print(f"exported {model.name} ({family}) to {path}: signatures {', '.join(meta['signatures'])}; "
          f"outputs {', '.join(meta['outputs'])}; pixel limit {limit}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------
def _int_at_least(minimum: int, what: str):
    """An argparse ``type``: an integer >= ``minimum``, else an error saying ``expected <what>``."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _add_model_args(p):
    from ku.export import family_names

    g = p.add_argument_group("model")
    names = "\n".join(f"  {k}: {v.description}" for k, v in MODELS.items())
    g.add_argument("--model", required=True, metavar="NAME|FILE",
                   help="a short name (with --head-weights) or a .keras file of a whole image model "
                        "(image 0..255 -> score). Short names: " + ", ".join(MODELS))
    g.add_argument("--head-weights", "--head_weights", dest="head_weights", metavar="FILE",
                   help="weights of the head for a short --model: a .keras head (e.g. "
                        "runs/.../head.keras from scripts/train_mlsp.py), a .weights.h5 file, a "
                        "released ava-mlsp model_best_weights.h5, or 'released' (mlsp-pool3fc / "
                        "mlsp-single3fc: the paper's released file, downloaded once from the "
                        "ava-mlsp repository into Keras' cache and checked by size and sha256). "
                        "For a .keras --model: optional weights to load into it.")
    g.add_argument("--weights", dest="deprecated_weights", metavar="FILE",
                   help="deprecated: use --head-weights (the same meaning)")
    g.add_argument("--backbone", choices=["inception_resnet_v2", "inception_v3"],
                   help="backbone of a short --model (default: the one of the released model, "
                        "inception_resnet_v2)")
    g.add_argument("--backbone-weights", default="imagenet", metavar="imagenet|none|FILE",
                   help="backbone weights of a short --model: 'imagenet' from Keras' cache "
                        "(~/.keras/models or $KERAS_HOME/models; never downloaded, an error says "
                        "which file to put there), 'none' (random, for tests only) or a .h5 / "
                        ".weights.h5 file (default: imagenet)")
    g.add_argument("--backbone-seed", type=_non_negative_int, metavar="N",
                   help="seed of the random backbone of --backbone-weights none (default: the "
                        "seed recorded next to a --head-weights head as <stem>.backbone.json, else 0); "
                        "a head trained on a random backbone is refused with any other")
    g.add_argument("--output", choices=["mos", "distribution"],
                   help="what a weights-only head predicts (default mos; ignored for .keras "
                        "files, which know)")
    g.add_argument("--n-bins", type=_positive_int,
                   help="number of score bins of a --output=distribution head (default 10, AVA)")
    g.add_argument("--family", choices=family_names(),
                   help="model family for the export/scoring graph (default: the short name's; "
                        "for .keras files guessed from the model: a theme input or ROI pooling -> "
                        "theme_roi, an apm_spp layer -> apm, else mlsp)")
    g = p.add_argument_group("scoring")
    g.add_argument("--score-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="values of the first and last bin of a distribution model, for the mean "
                        "and standard deviation (default: 1 .. K, e.g. AVA 1..10)")
    g.add_argument("--min-side", type=_non_negative_int,
                   help="images with a shorter side are upscaled to it (default: the backbone's "
                        "minimum, 75 px for Inception, 32 for APM's ResNet; 0 = never); images "
                        "more than 20 times longer than wide (or the reverse) are refused instead")
    g.add_argument("--max-side", type=_positive_int,
                   help="downscale images whose longer side exceeds this (area resize; bounds "
                        "memory; default: full resolution as in the papers)")
    g.add_argument("--small-images", choices=["upscale", "error"], default="upscale",
                   help="below --min-side: upscale (default) or refuse the image")
    p.epilog = "short model names:\n" + names


# command -> (one-line help, description)
_COMMAND_HELP = {
    "predict": ("score images -> CSV/JSON",
                "Score images (files, folders searched recursively, CSVs with an image-path column) "
                "and write mean score, standard deviation and distribution (where the model has "
                "one). Unreadable images are skipped, listed at the end and written to "
                "<out>.errors.csv; the exit status is then 3."),
    "evaluate": ("paper metrics of a predictions file",
                 "SRCC, PLCC, accuracy, MSE, MAE, RMSE of predictions against labels (and KL, JS, "
                 "chi2, EMD, ... when both have distributions), matched by image id."),
    "export": ("write a SavedModel (no ku needed)",
               "Write a TensorFlow SavedModel with signatures serving_default (encoded JPEG/PNG "
               "bytes of any size -> mean_score[, std_score, distribution]) and predict_images "
               "(float32 [batch, h, w, 3] 0..255); loads with tf.saved_model.load or TF Serving "
               "without ku."),
}


def _add_max_pixels(p, effect: str):
    """``--max-pixels N`` (predict and export): ``effect`` with more than N pixels."""
    p.add_argument("--max-pixels", type=_non_negative_int, metavar="N",
                   help=f"{effect} with more than N pixels, read from the file header before "
                        "decoding (default 50,000,000; 0 = no limit). Size policy: docs/bad_input.md")


def build_parser() -> argparse.ArgumentParser:
    """The ``ku`` argument parser (subcommands predict, evaluate, export)."""
    from ku import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ku", formatter_class=fmt,
        description="Image aesthetics with ku: score images, evaluate predictions, export models.",
        epilog="exit status: 0 ok; 1 unexpected error; 2 bad arguments or unusable inputs (nothing "
               "scored); 3 ku predict skipped some images (the others are written).\n"
               "Run 'ku <command> --help' for the flags of a command.")
    parser.add_argument("--version", action="version", version=f"ku {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages and show TensorFlow's own log lines (silenced by "
                             "default; TF_CPP_MIN_LOG_LEVEL, when set, is always honoured)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    parsers = {name: sub.add_parser(name, formatter_class=fmt, help=short, description=long)
               for name, (short, long) in _COMMAND_HELP.items()}

    p = parsers["predict"]
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="image files, folders (recursive; .jpg .jpeg .png .bmp .tif .tiff .webp "
                        "...) and/or .csv files with a --path-column")
    p.add_argument("--out", default="predictions.csv", metavar="FILE",
                   help="output .csv (columns image_id, image_path, mean_score[, std_score, "
                        "dist_1..dist_K]) or .json (a list of records with 'distribution' as a "
                        "list); default predictions.csv")
    p.add_argument("--path-column", default="image_path",
                   help="image-path column of CSV inputs (relative paths: from the CSV's folder; "
                        "default image_path)")
    p.add_argument("--id-column", default="image_id",
                   help="image-id column of CSV inputs (default image_id; otherwise the file name "
                        "without extension is the id)")
    p.add_argument("--theme-column", default="theme_index",
                   help="theme-index column of CSV inputs, for theme models (default theme_index; "
                        "0 = unknown theme when absent)")
    _add_max_pixels(p, "skip images")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress counter on stderr")
    _add_model_args(p)

    p = parsers["evaluate"]
    p.add_argument("--predictions", required=True, metavar="FILE",
                   help="ku predict output (.csv or .json), or any CSV with image_id (or "
                        "image_path) and mean_score (or mos / score) columns")
    p.add_argument("--labels", required=True, metavar="FILE",
                   help="an ids-table CSV (image_id, mos[, dist_1..dist_K, set]) or AVA's "
                        "AVA.txt (vote counts per line)")
    p.add_argument("--id-column", default="image_id", help="id column of a labels CSV")
    p.add_argument("--ids", metavar="FILE",
                   help="evaluate only these ids (one per line, e.g. AVA's generic_test.jpgl)")
    p.add_argument("--set", choices=["training", "validation", "test"],
                   help="evaluate only labels of this 'set' (CSV labels)")
    p.add_argument("--threshold", type=float, default=5.0,
                   help="binary accuracy boundary: high quality above it (AVA: 5, default)")
    p.add_argument("--compare", nargs="+", metavar="MODEL",
                   help="paper rows to print below (names of ku.metrics.paper_results(), e.g. "
                        "'Pool-3FC (*)', or 'all')")
    p.add_argument("--label", help="name of this row (default: the predictions file name)")
    p.add_argument("--out", metavar="FILE.csv", help="also write the table as CSV")

    p = parsers["export"]
    p.add_argument("--out", required=True, metavar="DIR", help="SavedModel folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    _add_max_pixels(p, "serving_default refuses images")
    _add_model_args(p)
    for p in sub.choices.values():
        _add_verbose(p)
    return parser


def _add_verbose(p):
    """``--verbose`` after the command too (``ku predict ... --verbose``)."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="as 'ku --verbose': debug messages and TensorFlow's log lines")


_COMMANDS = {"predict": _cmd_predict, "evaluate": _cmd_evaluate, "export": _cmd_export}


def _import_tensorflow(verbose: bool) -> None:
    """Import TensorFlow, silencing its C++ log lines unless ``verbose``: ``TF_CPP_MIN_LOG_LEVEL=2``
    (when the user has not set it) and, since a few lines are printed while TensorFlow loads,
    before its logging is set up (e.g. oneDNN's notice), standard error goes to /dev/null during
    ``import tensorflow``. Python exceptions still propagate."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no file descriptor 2 (embedded interpreters)
        import tensorflow  # noqa: F401
        return
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


#: Commands that need TensorFlow (imported, quietly unless --verbose, before they run).
_TF_COMMANDS = ("predict", "export")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``ku`` command line; returns the exit status (see the module docstring).

    Arguments are parsed before anything heavy is imported: ``--help``, ``--version`` and usage
    errors never import TensorFlow or Keras.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse error (2, message already printed)
        return int(e.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    prog = f"ku {args.command}"
    if getattr(args, "deprecated_weights", None) is not None:
        if args.head_weights is not None:
            print(f"{prog}: error: argument --weights: the deprecated name of --head-weights; "
                  "give only --head-weights", file=sys.stderr)
            return EXIT_USAGE
        print(f"{prog}: warning: --weights is deprecated, use --head-weights", file=sys.stderr)
        args.head_weights = args.deprecated_weights
    try:
        if args.command in _TF_COMMANDS:
            _import_tensorflow(args.verbose)
        return _COMMANDS[args.command](args)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001
        from ku.backbones import WeightsUnavailableError

        if isinstance(e, WeightsUnavailableError):
            print(f"{prog}: error: argument --backbone-weights: {e}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(e, (FileNotFoundError, NotADirectoryError, PermissionError)):
            print(f"{prog}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        logger.exception("%s failed", prog)
        print(f"{prog}: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE


def model_commands(model_path, images: str = "photos/") -> str:
    """The exact ``ku predict`` and ``ku export`` commands for a saved image -> score model; the
    training scripts print them after writing ``model.keras``."""
    model_path = Path(model_path)
    out = model_path.parent
    return (f"wrote the whole image -> score model: {model_path}\n"
            f"  score images:  ku predict {images} --model {model_path} --out {out / 'scores.csv'}\n"
            f"  export:        ku export --model {model_path} --out {out / 'exported'}")


if __name__ == "__main__":
    sys.exit(main())
