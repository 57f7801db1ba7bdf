"""The heads released with Hosu et al. 2019 (github.com/subpic/ava-mlsp), downloaded and verified.

Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
Features", CVPR 2019, Table 3: the two InceptionResNet-v2 models marked (*), trained on AVA:

==================  ===========================  ============================  ===============
name                released folder              head (ku.models.heads)        MLSP features
==================  ===========================  ============================  ===============
``mlsp-pool3fc``    ``irnv2_mlsp_wide_orig``     :func:`pool_3fc` (5x5x16928)  wide
``mlsp-single3fc``  ``irnv2_mlsp_narrow_orig``   :func:`single_3fc` (16928)    narrow
==================  ===========================  ============================  ===============

Each is a Keras 2 ``model_best_weights.h5`` stored with Git LFS in the ava-mlsp repository.
:func:`released_weights_path` returns the cached file, or downloads it from the repository's LFS
media URL to ``<file>.part`` (resumed with an HTTP ``Range`` request after an interruption,
retried), checks its size and sha256 and only then renames it into Keras' cache folder
(``$KERAS_HOME/models`` or ``~/.keras/models``, beside the ImageNet weights). Offline, after a
checksum mismatch (the download is deleted, never cached) or when the retries run out,
:class:`ReleasedWeightsError` says which URL to download, its size and sha256, and the exact path
to put it at. The base URL can be replaced (argument ``base_url`` or the environment variable
``KU_RELEASED_BASE_URL``), e.g. for a mirror.

:func:`released_head` loads the file into ku's head (:func:`ku.models.heads.load_released_weights`);
:func:`released_model` adds the MLSP extractor (image of any size, 0..255 RGB -> MOS).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

__all__ = [
    "RELEASED",
    "ReleasedWeights",
    "ReleasedWeightsError",
    "download_verified",
    "released_weights_path",
    "released_head",
    "released_model",
]

logger = logging.getLogger(__name__)

#: Git LFS media URL of the ava-mlsp repository (default branch).
DEFAULT_BASE_URL = "https://media.githubusercontent.com/media/subpic/ava-mlsp/master/models/"
#: Environment variable that replaces :data:`DEFAULT_BASE_URL`.
BASE_URL_ENV = "KU_RELEASED_BASE_URL"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ReleasedWeights:
    """One released ava-mlsp weights file.

    Attributes:
        name: ku's short model name (``ku predict --model <name> --head-weights released``).
        folder: the model's folder in the ava-mlsp repository (``models/<folder>/``).
        head: ku head builder name (``"pool3fc"`` or ``"single3fc"``).
        features: the kind of MLSP features it reads (``"wide"`` / ``"narrow"``); ``pooling``
            is its deprecated name (warns).
        size: file size in bytes (from the repository's Git LFS pointer).
        sha256: sha256 of the file (the LFS object id).
        file_name: file name in the repository.
    """

    name: str
    folder: str
    head: str
    features: str
    size: int
    sha256: str
    file_name: str = "model_best_weights.h5"

    @property
    def backbone(self) -> str:
        return "inception_resnet_v2"

    @property
    def pooling(self) -> str:
        """Deprecated name of :attr:`features`."""
        import warnings

        warnings.warn("ReleasedWeights.pooling is deprecated, use .features", DeprecationWarning, stacklevel=2)
        return self.features

    def url(self, base_url: Optional[str] = None) -> str:
        base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        return base.rstrip("/") + f"/{self.folder}/{self.file_name}"

    def cache_path(self) -> Path:
        from ku.backbones import keras_cache_dir

        return keras_cache_dir() / f"ava-mlsp_{self.folder}_{self.file_name}"


#: The released models by ku's short name.
RELEASED = {
    "mlsp-pool3fc": ReleasedWeights(
        "mlsp-pool3fc", "irnv2_mlsp_wide_orig", "pool3fc", "wide", 255_383_120,
        "47f9a29caed163d9dea2ed15b75aada4477cdb76bc2eac9c55f21dd3573a7a90"),
    "mlsp-single3fc": ReleasedWeights(
        "mlsp-single3fc", "irnv2_mlsp_narrow_orig", "single3fc", "narrow", 148_210_528,
        "0121f3235245df3db37e82fc3e5a84e22aaa731f24b3ffd3ea63d421c2b60102"),
}


class ReleasedWeightsError(RuntimeError):
    """A released weights file is neither cached nor downloadable (offline, checksum mismatch,
    interrupted too often). The message says what to download and where to put it.

    Attributes:
        url, path, size, sha256: what to download, where to put it, and how to check it.
    """

    def __init__(self, message, url=None, path=None, size=None, sha256=None):
        super().__init__(message)
        self.url, self.path, self.size, self.sha256 = url, path, size, sha256


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _instructions(url, target, size, sha256) -> str:
    return (f"  download: {url}\n"
            f"  size:     {size:,} bytes\n"
            f"  sha256:   {sha256}\n"
            f"  put it at {target}\n"
            f"(the folder follows $KERAS_HOME, default ~/.keras; check with "
            f"'sha256sum {Path(target).name}')")


def _fetch(url, part: Path, size: int, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (a ``Range`` request when ``part`` has bytes)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "ku"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
        resumed = have > 0 and r.status == 206
        if have and not resumed:
            logger.info("%s: the server does not resume; downloading from the start", url)
        with open(part, "ab" if resumed else "wb") as out:
            for chunk in iter(lambda: r.read(_CHUNK), b""):
                out.write(chunk)
                if out.tell() > size:
                    break


def download_verified(url: str, target, *, size: int, sha256: str, timeout: float = 60.0,
                      retries: int = 3, wait: float = 1.0,
                      echo: Optional[Callable[[str], None]] = None) -> Path:
    """Download ``url`` to ``target`` through ``<target>.part``, resuming and retrying, and keep
    it only when its size and sha256 match.

    Args:
        url: http(s) URL.
        target: final path (its folder is created).
        size: expected size in bytes.
        sha256: expected sha256 (hex).
        timeout: socket timeout, seconds.
        retries: further attempts after a failed or interrupted one (each resumes the ``.part``).
        wait: seconds before the first retry (doubled each time).
        echo: progress messages (default: ``logging`` at INFO).

    Returns:
        ``target`` (a ``pathlib.Path``).

    Raises:
        ReleasedWeightsError: attempts exhausted (the ``.part`` is kept for the next call to
            resume) or a complete download with the wrong sha256 (deleted, not cached).
    """
    echo = echo or logger.info
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    reason = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(wait * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size:
            echo(f"downloading {url} ({size / 1e6:.1f} MB" + (f", resuming at {have:,} bytes"
                                                               if have else "") + f") -> {part}")
            try:
                _fetch(url, part, size, timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = f"{type(e).__name__}: {e}"
                logger.warning("download attempt %d of %d failed: %s", attempt + 1, retries + 1,
                               reason)
                continue
        got = part.stat().st_size
        if got < size:
            reason = f"interrupted at {got:,} of {size:,} bytes"
            continue
        digest = _sha256(part) if got == size else None
        if digest != sha256:
            part.unlink()
            raise ReleasedWeightsError(
                f"the download of {url} does not match its checksum (size {got:,} bytes, "
                f"expected {size:,}; sha256 {digest}, expected {sha256}); it was deleted and not "
                f"cached. Download the file by hand:\n"
                + _instructions(url, target, size, sha256),
                url=url, path=str(target), size=size, sha256=sha256)
        os.replace(part, target)
        echo(f"saved {target} (sha256 verified)")
        return target
    kept = f" ({part.stat().st_size:,} bytes kept in {part}; the next call resumes)" \
        if part.exists() else ""
    raise ReleasedWeightsError(
        f"could not download {url} after {retries + 1} attempt(s): {reason}{kept}. On an offline "
        f"machine download it elsewhere:\n" + _instructions(url, target, size, sha256),
        url=url, path=str(target), size=size, sha256=sha256)


def _spec(name: str) -> ReleasedWeights:
    if isinstance(name, ReleasedWeights):
        return name
    try:
        return RELEASED[name]
    except KeyError:
        raise ValueError(f"no released model {name!r}; choose one of {sorted(RELEASED)}") from None


def released_weights_path(name, *, download: bool = True, base_url: Optional[str] = None,
                          timeout: float = 60.0, retries: int = 3, wait: float = 1.0,
                          echo: Optional[Callable[[str], None]] = None) -> Path:
    """Path of a released ``model_best_weights.h5`` in Keras' cache, downloaded if needed.

    A cached file is used when its size and sha256 match (no network access then).

    Args:
        name: a key of :data:`RELEASED` (``"mlsp-pool3fc"``, ``"mlsp-single3fc"``) or a
            :class:`ReleasedWeights`.
        download: allow the download (else a missing file is an error saying what to get).
        base_url: replaces :data:`DEFAULT_BASE_URL` (also ``$KU_RELEASED_BASE_URL``).
        timeout, retries, wait, echo: see :func:`download_verified`.

    Raises:
        ValueError: unknown name.
        ReleasedWeightsError: not cached and not downloadable, a wrong download, or a cached file
            with the wrong size / sha256 (left in place, named in the message).
    """
    spec = _spec(name)
    target, url = spec.cache_path(), spec.url(base_url)
    if target.is_file():
        got = target.stat().st_size
        digest = _sha256(target) if got == spec.size else None
        if digest == spec.sha256:
            return target
        raise ReleasedWeightsError(
            f"{target} is not the released {spec.name} file (size {got:,} bytes, sha256 {digest}); "
            f"delete it (ku then downloads it again) or replace it:\n"
            + _instructions(url, target, spec.size, spec.sha256),
            url=url, path=str(target), size=spec.size, sha256=spec.sha256)
    if not download:
        raise ReleasedWeightsError(
            f"the released {spec.name} weights are not in Keras' cache and the download is "
            f"disabled:\n" + _instructions(url, target, spec.size, spec.sha256),
            url=url, path=str(target), size=spec.size, sha256=spec.sha256)
    return download_verified(url, target, size=spec.size, sha256=spec.sha256, timeout=timeout,
                             retries=retries, wait=wait, echo=echo)


def released_head(name, path=None, **kwargs):
    """ku's head with the released weights of ``name`` loaded (Hosu et al. 2019, Table 3 (*)).

    Args:
        name: ``"mlsp-pool3fc"`` (wide, input ``(None, 5, 5, 16928)``) or ``"mlsp-single3fc"``
            (narrow, input ``(None, 16928)``); output ``(None, 1)``, the MOS.
        path: a local copy of the ``.h5`` (skips the cache and the download).
        **kwargs: passed to :func:`released_weights_path` (``download``, ``base_url``, ...).

    Returns:
        ``keras.Model``.
    """
    from ku.models import heads

    spec = _spec(name)
    path = Path(path) if path is not None else released_weights_path(spec, **kwargs)
    head = heads.pool_3fc() if spec.head == "pool3fc" else heads.single_3fc()
    heads.load_released_weights(head, path)
    return head


def released_model(name, backbone_weights="imagenet", path=None, **kwargs):
    """The whole released model: InceptionResNet-v2 MLSP extractor + :func:`released_head`.

    Args:
        name: see :func:`released_head`.
        backbone_weights: ``"imagenet"`` (Keras' cache; as trained) or a weights file; ``None``
            gives a random backbone (tests only).
        path, **kwargs: see :func:`released_head`.

    Returns:
        ``keras.Model``: images ``(B, H, W, 3)`` 0..255 RGB of any size (>= 75 px) -> ``(B, 1)``.
    """
    from ku.models.mlsp import mlsp_end_to_end, mlsp_extractor

    spec = _spec(name)
    head = released_head(spec, path=path, **kwargs)
    extractor = mlsp_extractor(spec.backbone, weights=backbone_weights, features=spec.features)
    return mlsp_end_to_end(extractor, head, name=spec.name.replace("-", "_"))
