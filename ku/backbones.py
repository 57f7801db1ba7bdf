"""keras.applications backbones that take 0..255 RGB, and the MLSP tap points of Hosu et al. 2019.

Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
Features", CVPR 2019, §3.1: MLSP features pool the output of every inception module of
Inception-v3 (11 blocks, 10,048 channels) or InceptionResNet-v2 (43 blocks, 16,928 channels).
The exact layers are those of the released code (``docs/released_code.md`` §2):

* InceptionV3: the layers named exactly ``mixed0`` .. ``mixed10`` (the graph also contains the
  inner concatenations ``mixed9_0`` and ``mixed9_1``, which are *not* taps);
* InceptionResNetV2: every layer whose name contains ``mixed``, in model layer order:
  ``mixed_5b``, ``block35_{1..10}_mixed``, ``mixed_6a``, ``block17_{1..20}_mixed``, ``mixed_7a``,
  ``block8_{1..10}_mixed``. The ``block*_mixed`` layers are the branch concatenations inside
  each residual block (before the 1x1 up-projection and the residual addition).

ImageNet weights come from Keras' cache (``$KERAS_HOME/models`` or ``~/.keras/models``). Nothing
is downloaded when the file is already there; when it is missing, one download is attempted (with
a timeout) and, if that fails, :class:`WeightsUnavailableError` says which file to put where.
There is never a silent fall-back to random weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional

import keras

from ku.layers import ImagePreprocessing

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "DEFAULT_SEED",
    "WeightsUnavailableError",
    "BackboneMismatchError",
    "build_backbone",
    "check_same_backbone",
    "weights_fingerprint",
    "backbone_seed",
    "backbone_record",
    "backbone_record_path",
    "save_backbone_record",
    "load_backbone_record",
    "keras_cache_dir",
    "imagenet_weights_path",
    "mlsp_tap_names",
    "mlsp_block_channels",
]

logger = logging.getLogger(__name__)

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"

#: Seed of a randomly initialised backbone (``weights=None``) unless another one is given: the
#: same name, input shape and seed give the same weights in every process.
DEFAULT_SEED = 0


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in Keras' cache nor downloadable (e.g. an offline machine).

    Attributes:
        file_name: the Keras weight file name, e.g.
            ``inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5``.
        url: where Keras downloads it from.
        folder: the cache folder where an offline user can put the file.
    """

    def __init__(self, message, file_name=None, url=None, folder=None):
        super().__init__(message)
        self.file_name = file_name
        self.url = url
        self.folder = folder


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Attributes:
        constructor: name of the ``keras.applications`` constructor (e.g. ``"InceptionV3"``).
        module: ``keras.applications`` sub-module holding ``preprocess_input``.
        preprocessing: :class:`ku.layers.ImagePreprocessing` mode.
        weights_file: Keras' file name of the ImageNet weights without the classifier ("notop").
        weights_url: the URL Keras downloads ``weights_file`` from.
        weights_md5: the MD5 hash Keras checks the download against.
        taps: MLSP tap layers: a tuple of exact layer names, or a regular expression that is
            searched in every layer name (taps in model layer order).
        block_channels: channels of each tap (same order as ``taps``).
        min_size: smallest input side the network accepts.
        paper: where the tap definition comes from.
    """

    constructor: str
    module: str
    preprocessing: str
    weights_file: str
    weights_url: str
    weights_md5: str
    taps: object
    block_channels: tuple
    min_size: int
    paper: str = ""


_IRNV2_TAPS = tuple(
    ["mixed_5b"]
    + [f"block35_{i}_mixed" for i in range(1, 11)]
    + ["mixed_6a"]
    + [f"block17_{i}_mixed" for i in range(1, 21)]
    + ["mixed_7a"]
    + [f"block8_{i}_mixed" for i in range(1, 11)]
)
_IRNV2_CHANNELS = tuple([320] + [128] * 10 + [1088] + [384] * 20 + [2080] + [448] * 10)
_IV3_TAPS = tuple(f"mixed{i}" for i in range(11))
_IV3_CHANNELS = (256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048)


def _resnet_taps(blocks):
    return tuple(f"conv{s + 2}_block{b}_out" for s, n in enumerate(blocks) for b in range(1, n + 1))


def _resnet_channels(blocks):
    return tuple(256 * 2**s for s, n in enumerate(blocks) for _ in range(n))


def _keras_application(constructor, module, stem, md5, preprocessing, taps, block_channels, min_size,
                       paper) -> BackboneSpec:
    """A spec for ``keras.applications.<constructor>``; its notop weights file is
    ``<stem>_weights_tf_dim_ordering_tf_kernels_notop.h5`` in ``<module>/`` of Keras' bucket."""
    weights_file = f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return BackboneSpec(constructor=constructor, module=module, preprocessing=preprocessing,
                        weights_file=weights_file, weights_url=f"{_GCS}{module}/{weights_file}",
                        weights_md5=md5, taps=taps, block_channels=tuple(block_channels),
                        min_size=min_size, paper=paper)


#: name -> :class:`BackboneSpec`. The first two are the paper's (Hosu 2019 §3.1); the others
#: are available for other pooling schemes (Murray & Gordo 2017 use ResNet-101); their "taps"
#: (every residual block output / every VGG block's pooling output) are ku's choice, not a paper's.
BACKBONES = {
    "inception_resnet_v2": _keras_application(
        "InceptionResNetV2", "inception_resnet_v2", "inception_resnet_v2",
        "d19885ff4a710c122648d3b5c3b684e4", "tf", _IRNV2_TAPS, _IRNV2_CHANNELS, 75,
        "Hosu et al. 2019 §3.1: 43 blocks, 16,928 channels (released code: names containing 'mixed')"),
    "inception_v3": _keras_application(
        "InceptionV3", "inception_v3", "inception_v3", "bcbd6486424b2319ff4ef7d526e38f63", "tf",
        _IV3_TAPS, _IV3_CHANNELS, 75, "Hosu et al. 2019 §3.1: 11 blocks mixed0..mixed10, 10,048 channels"),
    "resnet50": _keras_application(
        "ResNet50", "resnet", "resnet50", "4d473c1dd8becc155b73f8504c6f6626", "caffe",
        _resnet_taps((3, 4, 6, 3)), _resnet_channels((3, 4, 6, 3)), 32,
        "ku extension: residual block outputs"),
    "resnet101": _keras_application(
        "ResNet101", "resnet", "resnet101", "88cf7a10940856eca736dc7b7e228a21", "caffe",
        _resnet_taps((3, 4, 23, 3)), _resnet_channels((3, 4, 23, 3)), 32,
        "ku extension: residual block outputs (Murray & Gordo 2017 use ResNet-101)"),
    "vgg16": _keras_application(
        "VGG16", "vgg16", "vgg16", "6d6bbae143d832006294945121d1f1fc", "caffe",
        tuple(f"block{i}_pool" for i in range(1, 6)), (64, 128, 256, 512, 512), 32,
        "ku extension: VGG block outputs"),
}


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def keras_cache_dir() -> Path:
    """Folder where Keras keeps downloaded application weights: ``$KERAS_HOME/models``, else
    ``~/.keras/models`` (read at call time, so a changed ``KERAS_HOME`` is honoured)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(os.path.expanduser(home)) / "models"


def _candidate_files(file_name: str):
    """Cache locations Keras itself would use (its /tmp fall-back for read-only homes too)."""
    primary = keras_cache_dir() / file_name
    fallback = Path(tempfile.gettempdir()) / ".keras" / "models" / file_name
    return [primary] if fallback == primary else [primary, fallback]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, target: Path, md5: str, timeout: float) -> None:
    """Download ``url`` to ``target`` atomically (temp file + rename), check the MD5."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        got = _md5(Path(tmp))
        if got != md5:
            raise OSError(f"MD5 mismatch for {url}: got {got}, expected {md5}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_weights_file(file_name: str, url: str, md5: str, *, what: str, download: bool = True,
                        timeout: float = 30.0, how_to_pass: str = "weights='<path to the .h5 file>'",
                        extra_help: str = "") -> Path:
    """Local path of a Keras weights file, from Keras' cache or downloaded once (MD5 checked).

    The cache is checked first (``keras_cache_dir()``, then Keras' ``/tmp/.keras/models``
    fall-back), so no network access happens when the file is present; a download goes to the
    first writable one.

    Raises:
        WeightsUnavailableError: not cached and the download is disabled or failed; the message
            names ``what``, the file, the URL, the MD5 and the folder to put the file in.
    """
    for path in _candidate_files(file_name):
        if path.is_file():
            logger.debug("using cached weights %s", path)
            return path
    target = keras_cache_dir() / file_name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(target.parent, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # Keras' own fall-back for read-only homes
        target = _candidate_files(file_name)[-1]
    reason = "download disabled (download=False)"
    if download:
        logger.info("downloading %s to %s", url, target)
        try:
            _download(url, target, md5, timeout)
            return target
        except Exception as e:  # URLError/timeouts (OSError), http.client errors, MD5 mismatch
            reason = f"download failed: {type(e).__name__}: {e}"
    folder = keras_cache_dir()
    raise WeightsUnavailableError(
        f"{what} are not available ({reason}).\n"
        f"  file:   {file_name}\n"
        f"  url:    {url}\n"
        f"  md5:    {md5}\n"
        f"  folder: {folder}\n"
        f"On an offline machine, download the file elsewhere and copy it to "
        f"{folder / file_name}{extra_help}, or pass {how_to_pass}.",
        file_name=file_name,
        url=url,
        folder=str(folder),
    )


def imagenet_weights_path(name: str, download: bool = True, timeout: float = 30.0,
                          how_to_pass: str = "weights='<path to the .h5 file>'") -> Path:
    """Local path of a backbone's ImageNet "notop" weights, downloading them if allowed
    (:func:`cached_weights_file`).

    Args:
        name: a key of :data:`BACKBONES`.
        download: allow one download when the file is not cached.
        timeout: socket timeout of that download, seconds.
        how_to_pass: how the caller takes a weights file, for the error message (the command line
            passes ``"--backbone-weights <path to the .h5 file>"``).

    Raises:
        WeightsUnavailableError: not cached and the download is disabled or failed; the message
            names the file, the URL and the folder to put it in.
    """
    spec = _spec(name)
    return cached_weights_file(
        spec.weights_file, spec.weights_url, spec.weights_md5,
        what=f"ImageNet weights for backbone {name!r}", download=download, timeout=timeout,
        how_to_pass=how_to_pass, extra_help=" (the folder follows $KERAS_HOME, default ~/.keras)")


def freeze_batch_norm(model: keras.Model) -> int:
    """Freeze every ``BatchNormalization`` layer of ``model`` (parameters and statistics; Keras 3
    runs a non-trainable BN in inference mode). Both whole-image papers do this on their
    ImageNet backbones: Murray & Gordo 2017 §3.4 (batches of 16 images of different sizes) and Jia
    et al. 2019 §IV-B ("we fix the parameters of BN layer on pre-trained models"). Returns the
    number of layers frozen."""
    n = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            n += 1
    return n


def _load_weights(model: keras.Model, path: Path, what: str) -> None:
    try:
        model.load_weights(str(path))
    except Exception as e:  # h5py / shape errors: name the file
        raise ValueError(
            f"Could not load {what} weights from {path}: {type(e).__name__}: {e}. "
            "Expected a Keras weights file (.h5 in the keras.applications layout, or .weights.h5 "
            "saved from a ku backbone of the same architecture); a truncated download also "
            "fails here - delete the file and retry."
        ) from e


# ---------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _seeded_initializers(seed: int):
    """Keras draws the seed of every initializer built without one from Python's ``random``
    (``keras.random.make_default_seed``): seed it for the block, then restore its state, so the
    weights are reproducible and no global random state changes."""
    state = random.getstate()
    random.seed(int(seed))
    try:
        yield
    finally:
        random.setstate(state)


def build_backbone(
    name: str,
    weights="imagenet",
    input_shape=(None, None, 3),
    *,
    seed: int = DEFAULT_SEED,
    download: bool = True,
    timeout: float = 30.0,
) -> keras.Model:
    """A keras.applications network (``include_top=False``) that takes 0..255 RGB images.

    The model is one flat functional graph: ``Input -> ImagePreprocessing(mode) -> the
    keras.applications layers``, with all of Keras' layer names kept, so MLSP taps can be found
    with ``model.get_layer(name)`` (see :func:`mlsp_tap_names`).

    Args:
        name: a key of :data:`BACKBONES` (``"inception_resnet_v2"``, ``"inception_v3"``,
            ``"resnet50"``, ``"resnet101"``, ``"vgg16"``).
        weights: ``"imagenet"`` (from Keras' cache, downloaded once if possible, else
            :class:`WeightsUnavailableError`), a path to a ``.h5`` / ``.weights.h5`` file, or
            ``None`` for random initialisation.
        input_shape: ``(H, W, 3)``; ``None`` sides accept any image size (MLSP extracts at the
            original resolution, Hosu et al. §3.1). Inception networks need sides >= 75 px.
        seed: initialisation seed (all weights, also those a weights file then replaces): a
            random backbone (``weights=None``) with the same name and seed is the same network in
            every process, so features stored from it can be scored again
            (:func:`check_same_backbone`). The model records it as ``model.ku_seed``.
        download: allow a download when the ImageNet file is not cached.
        timeout: socket timeout in seconds for that download.

    Returns:
        ``keras.Model`` named like the keras.applications model (e.g. ``"inception_v3"``).

    Raises:
        ValueError: unknown name, bad input shape, or a weights file that does not load.
        FileNotFoundError: ``weights`` is a path that does not exist.
        WeightsUnavailableError: ImageNet weights neither cached nor downloadable.
    """
    spec = _spec(name)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"build_backbone: input_shape must be (H, W, 3), got {input_shape!r}")
    for side in input_shape[:2]:
        if side is not None and side < spec.min_size:
            raise ValueError(
                f"build_backbone: {name} needs input sides >= {spec.min_size}, got {input_shape!r}"
            )

    # Resolve the weights before building anything (fail fast, no silent fall-back).
    if weights is None:
        weights_path, what = None, None
    elif isinstance(weights, str) and weights == "imagenet":
        weights_path, what = imagenet_weights_path(name, download, timeout), "ImageNet"
    elif isinstance(weights, (str, os.PathLike)):
        weights_path, what = Path(weights).expanduser(), "user"
        if not weights_path.is_file():
            raise FileNotFoundError(f"build_backbone: weights file {weights_path} does not exist")
        if not weights_path.name.endswith((".h5", ".hdf5")):
            raise ValueError(
                f"build_backbone: weights file {weights_path} must be a .h5 or .weights.h5 file"
            )
    else:
        raise ValueError(
            f"build_backbone: weights must be 'imagenet', None or a file path, got {weights!r}"
        )

    inputs = keras.Input(shape=input_shape, name="image")
    x = ImagePreprocessing(spec.preprocessing, name="preprocessing")(inputs)
    constructor = getattr(keras.applications, spec.constructor)
    with _seeded_initializers(seed):
        app = constructor(include_top=False, weights=None, input_tensor=x)
    # keras.applications keeps the source inputs as a list; re-wrap for a single-tensor input.
    model = keras.Model(inputs, app.output, name=app.name)
    if weights_path is not None:
        _load_weights(model, weights_path, what)
    model.ku_seed = int(seed)
    model.ku_weights = "random" if weights_path is None else (
        "imagenet" if what == "ImageNet" else str(weights_path))
    return model


# ---------------------------------------------------------------------------------------------
# Which backbone made the features
# ---------------------------------------------------------------------------------------------
class BackboneMismatchError(ValueError):
    """A head is paired with a backbone other than the one its training features came from."""


def weights_fingerprint(model) -> str:
    """sha256 over a model's weight shapes and values, in order (identifies a backbone or an
    extractor: :mod:`ku.extraction` stores it as the feature store attribute
    ``extractor_sha256``)."""
    import numpy as np

    h = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def backbone_seed(model) -> Optional[int]:
    """The initialisation seed of a ku backbone (:func:`build_backbone` records it as
    ``model.ku_seed``; :func:`ku.models.mlsp.mlsp_extractor` passes it on to the extractor), or
    None when ``model`` does not say (a model loaded from a ``.keras`` file, a plain callable)."""
    seed = getattr(model, "ku_seed", None)
    return None if seed is None else int(seed)


#: The keys of a backbone record: what identifies the backbone a head's features came from.
BACKBONE_RECORD_KEYS = ("backbone", "weights", "backbone_seed", "extractor_sha256")


def backbone_record(store_attrs) -> dict:
    """The backbone record of a feature store's attributes: ``backbone``, ``weights``,
    ``backbone_seed`` and ``extractor_sha256`` (those present), as plain JSON values."""
    import numpy as np

    out = {}
    for key in BACKBONE_RECORD_KEYS:
        if key in store_attrs:
            v = store_attrs[key]
            v = v.item() if isinstance(v, np.generic) else v
            out[key] = v.decode() if isinstance(v, bytes) else v
    return out


def backbone_record_path(model_path) -> Path:
    """Where the backbone record of a saved head or model lives: ``run/head.keras`` ->
    ``run/head.backbone.json`` (next to it, same stem)."""
    p = Path(model_path)
    stem = p.name[: -len(".weights.h5")] if p.name.endswith(".weights.h5") else p.stem
    return p.with_name(stem + ".backbone.json")


def save_backbone_record(model_path, store_attrs) -> Path:
    """Write the backbone record of the features ``model_path`` (a head, or a model built on it)
    was trained on next to it (:func:`backbone_record_path`), so that whoever loads the file can
    pair it with the same backbone: ``ku predict --head-weights head.keras`` checks it with
    :func:`check_same_backbone` and takes the recorded seed for ``--backbone-weights none``.

    Args:
        model_path: the saved ``.keras`` / ``.weights.h5`` file.
        store_attrs: the feature store's attributes (``FeatureStore.attrs``) or a dict with the
            keys of :data:`BACKBONE_RECORD_KEYS`.
    Returns:
        the path of the JSON file written (atomically and durably).
    """
    import json

    from ku.data.durable import atomic_write

    path = backbone_record_path(model_path)
    atomic_write(path, json.dumps(backbone_record(store_attrs), indent=1) + "\n",
                 what="backbone record")
    return path


def load_backbone_record(model_path) -> Optional[dict]:
    """The record :func:`save_backbone_record` wrote next to ``model_path``, or None when there is
    none. Raises ``ValueError`` naming the file when it is not a JSON object."""
    import json

    path = backbone_record_path(model_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"backbone record {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError(f"backbone record {str(path)!r} must be a JSON object, got "
                         f"{type(record).__name__}")
    return record


def check_same_backbone(store_attrs, extractor, what: str = "the head") -> None:
    """Refuse to pair ``what`` (trained on the features of a store) with another backbone.

    Args:
        store_attrs: the feature store's attributes (``FeatureStore.attrs``, or a backbone record
            from :func:`load_backbone_record`): ``backbone``, ``weights``, ``backbone_seed`` and
            ``extractor_sha256`` (the weights fingerprint written at extraction).
        extractor: the extractor (or whole model) that will compute the features now.
        what: what was trained on the stored features, for the message.

    Raises:
        BackboneMismatchError: the fingerprints differ; the message names the store's backbone,
            weights and seed, the seed of ``extractor`` (when known), and how to get the same
            backbone back.
    """
    want = store_attrs.get("extractor_sha256")
    if want is None:
        logger.warning("check_same_backbone: the store records no extractor_sha256; not checked")
        return
    got = weights_fingerprint(extractor)
    if got == want:
        return
    seed = store_attrs.get("backbone_seed")
    seed_text = "not recorded" if seed is None else str(int(seed))
    weights = store_attrs.get("weights", "unknown")
    if str(weights) in ("random", "none", "None"):
        how = (f"build it with weights=None, seed={seed_text} (ku predict / ku export: "
               f"--backbone-weights none --backbone-seed {seed_text})" if seed is not None else
               f"build it with weights=None and the seed it had (ku's default seed is "
               f"{DEFAULT_SEED}; the store does not record it)")
    else:
        how = f"build it with the same weights ({weights})"
    now_seed = backbone_seed(extractor)
    now = "" if now_seed is None else f"seed {now_seed}, "
    raise BackboneMismatchError(
        f"{what} was trained on features of backbone {store_attrs.get('backbone')!r} "
        f"(weights {weights!r}, seed {seed_text}, weights sha256 {str(want)[:12]}...), but "
        f"{getattr(extractor, 'name', 'this extractor')!r} has other weights ({now}sha256 "
        f"{got[:12]}...): its scores would be meaningless. Pair it with the same backbone: {how}.")


# ---------------------------------------------------------------------------------------------
# MLSP taps
# ---------------------------------------------------------------------------------------------
def mlsp_tap_names(name: str, model: Optional[keras.Model] = None) -> list:
    """Names of the layers whose outputs form the MLSP features (Hosu et al. 2019 §3.1).

    Without ``model`` the names are the known ones of the keras.applications graph. With a
    model they are looked up in it (InceptionResNetV2: every layer whose name contains
    ``"mixed"``, in model layer order, as the released code did; the others: the exact names),
    and a missing layer raises ``ValueError``.

    Returns:
        list of str: 43 names for ``"inception_resnet_v2"``, 11 (``mixed0`` .. ``mixed10``) for
        ``"inception_v3"``.
    """
    spec = _spec(name)
    expected = list(spec.taps)
    if model is None:
        return expected
    layer_names = [layer.name for layer in model.layers]
    if name == "inception_resnet_v2":
        found = [n for n in layer_names if "mixed" in n]
        if found != expected:
            raise ValueError(
                f"mlsp_tap_names: model {model.name!r} does not look like keras' "
                f"InceptionResNetV2: found {len(found)} layers containing 'mixed', expected 43 "
                f"({expected[:2]} ... {expected[-1:]})"
            )
        return found
    present = set(layer_names)
    missing = [n for n in expected if n not in present]
    if missing:
        raise ValueError(
            f"mlsp_tap_names: model {model.name!r} lacks the {name} tap layers {missing[:5]}"
            + (" ..." if len(missing) > 5 else "")
        )
    return expected


def mlsp_block_channels(name: str) -> list:
    """Channels of each MLSP tap (e.g. the block sizes ``b_i`` of the Multi-3FC head, Hosu
    et al. 2019 §3.2.1 / Fig. 5). Sums: 16,928 (InceptionResNetV2), 10,048 (InceptionV3)."""
    return list(_spec(name).block_channels)
