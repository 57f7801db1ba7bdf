"""The bundled demo set: a small, deterministic, AVA-format dataset with known ground truth.

AVA and ImageNet cannot be downloaded here, so scripts, notebooks and tests run on this set. It
is generated (in a few seconds) from real photographs shipped with scikit-image
(``skimage.data``), degraded in known ways with known strengths, and rated by simulated voters
whose scores follow a written-down model. Everything is seeded: the same ``(n_images, seed)``
gives byte-identical files.

Layout (exactly AVA's, see :func:`ku.data.readers.read_ava`)::

    <root>/AVA.txt                                   index, id, 10 vote counts, tag1, tag2, challenge
    <root>/challenges.txt, tags.txt                  id name
    <root>/aesthetics_image_lists/generic_test.jpgl  test ids (12.5% of the images)
    <root>/images/<id>.jpg                           JPEG quality 92; grey sources stay 1-channel
    <root>/demo_truth.csv                            per-image ground truth (below)
    <root>/DEMO_COMPLETE.json                        completion marker, written last

Generation of image ``i`` (its own RNG ``default_rng([seed, 1, i])``, so image ``i`` does not
depend on ``n_images``):

1. **Source**: one of :data:`SOURCES` (13 photos, 8 colour + 5 grey), cycled in a seeded
   order. Each source has a fixed *appeal* offset (content preference of the simulated voters,
   -1.0 for "brick" to +1.25 for "chelsea"; about a third of the score variance by default).
2. **Geometry**: aspect ratio from {1, 5:4, 4:3, 3:2, 8:5, 16:9}, landscape with p = 0.65; short
   side ~ U(200, 330) px for 90% of the images and U(330, 560) for 10%, long side <= 800, both
   limited by what the source can give without upscaling (short side >= 200 always). A random
   crop of the source with that aspect (between the target size and the largest such crop) is
   resized with ``cv2.INTER_AREA``. Mean side ~ 330 px (the demo extraction runs a CNN on 8 crops
   of every image on CPU, so total pixels are kept small). ``image_scale < 1`` renders the same
   crop smaller (sides ``round(side * image_scale)``; the MLSP demo uses 0.85).
3. **Theme** (AVA challenge): "Free Study" (generic, p = 0.4) or one of four special challenges
   (p = 0.15 each): "Motion Blur", "High Key", "Low Key", "Soft Focus". Each special challenge has
   a *signature* degradation (motion blur, overexposure, underexposure, Gaussian blur).
4. **Degradation** (one per image): in a special challenge the signature one with p = 0.5;
   otherwise ``none`` with p = 0.2 or one of the 7 types with p = 0.8 / 7 each. Strength
   ``s ~ U(0.15, 1)`` (0 for ``none``). Parameters as functions of ``s``:

   ============== =====================================================================
   gaussian_blur  sigma = 0.6 + 4.4 s px
   motion_blur    line kernel of length 3 + 27 s px, random angle
   noise          additive Gaussian, sigma = 4 + 36 s (0..255 scale)
   jpeg           JPEG re-compression at quality round(60 - 55 s)
   underexposure  -(0.5 + 2.5 s) stops (gain in linear light, gamma 2.2)
   overexposure   +(0.5 + 2.0 s) stops (clipped: highlights blow out)
   low_contrast   contrast around the mean scaled by 1 - 0.85 s
   ============== =====================================================================

5. **Latent score** (1..10 scale), the sum of what the pixels show and, scaled by
   ``theme_effects`` (0 by default), what the challenge rewards::

       content = 6.0 + appeal[source] - w_generic[degradation] * s
       theme   = offset[theme] - (w[theme][degradation] - w_generic[degradation]) * s
                 - 0.5 * [special theme and degradation != its signature]
       latent  = clip(content + theme_effects * theme + e, 1.5, 9.5),   e ~ N(0, 0.25^2)

   Generic weights ``w_generic`` (:data:`GENERIC_WEIGHTS`): blur 3.2, motion blur 3.0, noise 2.6,
   JPEG 2.4, under- 2.6, overexposure 2.8, low contrast 2.0. Challenges change what is rewarded
   (:data:`THEME_WEIGHTS`; negative weight = reward, as in Jia et al. 2019 §I: "theme 'Motion Blur'
   prefers blurred images"): Motion Blur rewards motion blur (-1.5); High Key rewards
   overexposure (-1.2), punishes underexposure (4.0) and tolerates low contrast (1.0); Low Key
   rewards underexposure (-1.2) and punishes overexposure (4.0); Soft Focus rewards Gaussian blur
   (-1.0) and punishes noise (3.5). The 0.5 "off topic" penalty applies to entries of a special
   challenge that lack its signature, and each challenge has its own mean (:data:`THEME_OFFSETS`:
   Free Study 0, Motion Blur +0.6, High Key -0.5, Low Key +0.5, Soft Focus -0.6; AVA's
   challenges differ in mean score too).

   ``theme_effects=0`` (the default; MLSP and APM, which do not see the theme) makes every score
   a function of the pixels plus noise; ``theme_effects=1`` is the full theme model (the score of
   a "Motion Blur" entry rises with its blur). The images are byte-identical for every value:
   only the votes change. Share of the MOS variance explained (R^2 of a linear fit) and oracle
   correlations, from :func:`score_report` (320 images, seed 0, test set of 80):

   ============== ============ ============ ============= =================== =================
   theme_effects  content R^2  theme adds   noise (e,     oracle test SRCC    oracle test SRCC
                                            votes)        without the theme   with the theme
   ============== ============ ============ ============= =================== =================
   0 (default)    0.947        --           0.053         0.975               0.975
   0.5 (themed)   0.637        0.311        0.052         0.828               0.977
   1              0.244        0.726        0.030         0.478               0.985
   ============== ============ ============ ============= =================== =================

   The oracles know each image's source, degradation type and strength, and predict ``content``
   (without the theme) or ``content + theme_effects * theme``. With the default, everything but
   the 5% noise is visible in the pixels; ``scripts/train_theme_roi.py`` uses 0.5, where the theme
   holds about a third of the variance on top of the content.

6. **Votes**: ``n ~ U{100..250}`` voters, each score drawn from a normal around ``latent`` with
   standard deviation ``vote_sd ~ U(1.1, 1.7)``, discretised to 1..10 (``P(k)`` = normal mass in
   ``[k - 0.5, k + 0.5]``, tails folded into 1 and 10), i.e. a multinomial histogram.

``demo_truth.csv`` records per image: ``image_id, source, grey, tag, theme, theme_name,
degradation, strength, param_name, param, content, theme_term, latent, vote_sd, n_votes, height,
width, test`` (``theme_term`` is ``theme`` above, before scaling by ``theme_effects``).

**Test set**: 25% of the images (80 of the default 320), so that a test SRCC of 0.7 is known to
about +-0.15 (95% interval) rather than the +-0.3 of 30 images.

The set is cached in ``$KU_CACHE_DIR/demo-v2-n<N>-s<seed>`` (``...-t<theme_effects>`` when the
theme model is on, ``...-z<image_scale>`` for smaller renderings; default ``~/.cache/ku``). It is
built in a hidden sibling folder and renamed into place after the completion marker is written,
so an interrupted build never looks complete and is simply rebuilt.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from ku.data._typing import PathLike

__all__ = [
    "DEMO_VERSION",
    "SOURCES",
    "THEMES",
    "DEGRADATIONS",
    "GENERIC_WEIGHTS",
    "THEME_WEIGHTS",
    "THEME_OFFSETS",
    "N_IMAGES",
    "cache_dir",
    "demo_dir",
    "make_demo_set",
    "load_demo",
    "degrade",
    "score_report",
]

log = logging.getLogger(__name__)


DEMO_VERSION = 2
MARKER = "DEMO_COMPLETE.json"
_OUR_NAMES = {"AVA.txt", "challenges.txt", "tags.txt", "aesthetics_image_lists", "images",
              "demo_truth.csv", "README.txt", MARKER}

#: (name, skimage.data loader name, appeal offset, semantic tag id); grey sources are 2-D.
SOURCES: tuple[tuple[str, str, float, int], ...] = (
    ("astronaut", "astronaut", 1.0, 6),
    ("coffee", "coffee", 0.75, 8),
    ("chelsea", "chelsea", 1.25, 2),
    ("rocket", "rocket", 0.5, 9),
    ("motorcycle", "stereo_motorcycle", 0.0, 9),
    ("immunohistochemistry", "immunohistochemistry", -0.5, 7),
    ("hubble_deep_field", "hubble_deep_field", 0.75, 3),
    ("retina", "retina", -0.75, 7),
    ("coins", "coins", -0.25, 8),
    ("camera", "camera", 0.0, 4),
    ("moon", "moon", 0.25, 3),
    ("brick", "brick", -1.0, 1),
    ("grass", "grass", -0.75, 5),
)

TAGS = {1: "Abstract", 2: "Animals", 3: "Astronomy", 4: "Black and White", 5: "Nature",
        6: "Portraiture", 7: "Science", 8: "Still Life", 9: "Transportation"}

#: challenge id -> (name, probability, signature degradation or None)
THEMES: dict[int, tuple[str, float, str | None]] = {
    1001: ("Free Study", 0.40, None),
    1002: ("Motion Blur", 0.15, "motion_blur"),
    1003: ("High Key", 0.15, "overexposure"),
    1004: ("Low Key", 0.15, "underexposure"),
    1005: ("Soft Focus", 0.15, "gaussian_blur"),
}

DEGRADATIONS = ("gaussian_blur", "motion_blur", "noise", "jpeg", "underexposure", "overexposure",
                "low_contrast")

#: degradation -> score penalty per unit strength, outside any challenge (what the pixels show).
GENERIC_WEIGHTS = _GENERIC = {"none": 0.0, "gaussian_blur": 3.2, "motion_blur": 3.0, "noise": 2.6, "jpeg": 2.4,
            "underexposure": 2.6, "overexposure": 2.8, "low_contrast": 2.0}

#: challenge id -> {degradation: penalty per unit strength} (negative = reward).
THEME_WEIGHTS: dict[int, dict[str, float]] = {
    1001: dict(_GENERIC),
    1002: {**_GENERIC, "motion_blur": -1.5},
    1003: {**_GENERIC, "overexposure": -1.2, "underexposure": 4.0, "low_contrast": 1.0},
    1004: {**_GENERIC, "underexposure": -1.2, "overexposure": 4.0},
    1005: {**_GENERIC, "gaussian_blur": -1.0, "noise": 3.5},
}

#: challenge id -> mean score offset of its entries (scaled by ``theme_effects``).
THEME_OFFSETS: dict[int, float] = {1001: 0.0, 1002: 0.6, 1003: -0.5, 1004: 0.5, 1005: -0.6}

BASE_SCORE = 6.0
OFF_TOPIC_PENALTY = 0.5
JPEG_QUALITY = 92
TEST_FRACTION = 0.25
#: default number of images of the demo set
N_IMAGES = 320
_ASPECTS = (1.0, 1.25, 4 / 3, 1.5, 1.6, 16 / 9)
_MIN_SIDE, _MAX_SIDE = 200, 800


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$KU_CACHE_DIR`` or ``~/.cache/ku`` (read at call time)."""
    return Path(os.environ.get("KU_CACHE_DIR", os.path.join("~", ".cache", "ku"))).expanduser()


def demo_dir(n_images: int = N_IMAGES, seed: int = 0, theme_effects: float = 0.0,
             image_scale: float = 1.0) -> Path:
    """Default location of the demo set:
    ``cache_dir()/demo-v2-n<N>-s<seed>[-t<theme_effects>][-z<image_scale>]``."""
    suffix = f"-t{float(theme_effects):g}" if theme_effects else ""
    suffix += f"-z{float(image_scale):g}" if float(image_scale) != 1.0 else ""
    return cache_dir() / f"demo-v{DEMO_VERSION}-n{int(n_images)}-s{int(seed)}{suffix}"


# --------------------------------------------------------------------------------------------
# degradations
# --------------------------------------------------------------------------------------------
def _motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    size = length if length % 2 == 1 else length + 1
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2.0
    dx, dy = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    half = (length - 1) / 2.0
    # anti-aliased line: sample densely along the segment
    for t in np.linspace(-half, half, 4 * length + 1):
        x, y = c + t * dx, c + t * dy
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for xx, yy, wgt in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                            (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            if 0 <= xx < size and 0 <= yy < size:
                k[yy, xx] += wgt
    return k / k.sum()


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def degrade(image: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> tuple[np.ndarray, str, float]:
    """Apply degradation ``kind`` of ``strength`` in [0, 1] to a uint8 image (HW or HWC).

    Returns ``(image, param_name, param)`` (the physical parameter, see the module docstring).
    """
    s = float(strength)
    im = image
    if kind == "none":
        return im.copy(), "", 0.0
    if kind == "gaussian_blur":
        sigma = 0.6 + 4.4 * s
        return cv2.GaussianBlur(im, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT), "sigma_px", sigma
    if kind == "motion_blur":
        length = int(round(3 + 27 * s))
        k = _motion_kernel(length, float(rng.uniform(0, 180)))
        return cv2.filter2D(im, -1, k, borderType=cv2.BORDER_REFLECT), "length_px", float(length)
    if kind == "noise":
        sigma = 4 + 36 * s
        return _to_u8(im.astype(np.float32) + rng.normal(0, sigma, im.shape).astype(np.float32)), "sigma", sigma
    if kind == "jpeg":
        q = int(round(60 - 55 * s))
        ok, enc = cv2.imencode(".jpg", im if im.ndim == 2 else im[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        out = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)
        return (out if im.ndim == 2 else out[:, :, ::-1]), "quality", float(q)
    if kind in ("underexposure", "overexposure"):
        stops = -(0.5 + 2.5 * s) if kind == "underexposure" else (0.5 + 2.0 * s)
        lin = (im.astype(np.float32) / 255.0) ** 2.2 * (2.0 ** stops)
        return _to_u8(np.clip(lin, 0, 1) ** (1 / 2.2) * 255.0), "stops", stops
    if kind == "low_contrast":
        f = 1 - 0.85 * s
        x = im.astype(np.float32)
        return _to_u8(x.mean() + (x - x.mean()) * f), "contrast_factor", f
    raise ValueError(f"unknown degradation {kind!r}; one of {('none',) + DEGRADATIONS}")


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def _load_sources() -> dict[str, np.ndarray]:
    import skimage.data as skd

    out = {}
    for name, loader, _, _ in SOURCES:
        im = getattr(skd, loader)()
        if loader == "stereo_motorcycle":
            im = im[0]
        im = np.asarray(im)
        if im.ndim == 3 and im.shape[2] == 4:
            im = im[:, :, :3]
        out[name] = np.ascontiguousarray(im.astype(np.uint8))
    return out


def _geometry(rng: np.random.Generator, src_hw: tuple[int, int]) -> tuple[int, int, tuple[int, int, int, int]]:
    """Target (h, w) and crop box (y, x, ch, cw) without upscaling."""
    H0, W0 = src_hw
    a = float(rng.choice(_ASPECTS))
    landscape = rng.random() < 0.65
    short = rng.uniform(200, 330) if rng.random() < 0.9 else rng.uniform(330, 560)
    # largest crop of this aspect / orientation: long side along W (landscape) or H (portrait)
    long_src, short_src = (W0, H0) if landscape else (H0, W0)
    max_long = min(long_src, short_src * a)
    if max_long / a < _MIN_SIDE:  # aspect too elongated for this source: flatten it
        a = max(1.0, max_long / _MIN_SIDE)
        max_long = min(long_src, short_src * a)
    long_ = min(short * a, _MAX_SIDE, max_long)
    short_t = max(_MIN_SIDE, int(round(long_ / a)))
    long_t = max(short_t, int(round(long_)))
    # crop: long side between the target and the largest possible
    c_long = rng.uniform(long_t, max(long_t, max_long))
    c_short = min(c_long / (long_t / short_t), short_src)
    c_long, c_short = int(round(min(c_long, long_src))), int(round(c_short))
    if landscape:
        ch, cw, h, w = c_short, c_long, short_t, long_t
    else:
        ch, cw, h, w = c_long, c_short, long_t, short_t
    y = int(rng.integers(0, H0 - ch + 1))
    x = int(rng.integers(0, W0 - cw + 1))
    return h, w, (y, x, ch, cw)


def _vote_histogram(latent: float, sd: float, n: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.special import ndtr  # standard normal CDF

    edges = np.arange(1.5, 10.0, 1.0)  # 1.5 .. 9.5
    cdf = ndtr((edges - latent) / sd)
    p = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    p = np.clip(p, 0, None)
    return rng.multinomial(n, p / p.sum())


def _generate(root: Path, n_images: int, seed: int, theme_effects: float, image_scale: float) -> None:
    t0 = time.perf_counter()
    sources = _load_sources()
    g = np.random.default_rng([int(seed), 0])
    ids = (g.choice(900000, size=n_images, replace=False) + 100000).astype(int)
    n_test = int(round(TEST_FRACTION * n_images))
    test_ids = set(ids[np.sort(g.choice(n_images, size=n_test, replace=False))].tolist()) if n_test else set()
    src_order = g.permutation(len(SOURCES))
    theme_ids = list(THEMES)
    theme_p = np.array([THEMES[t][1] for t in theme_ids])

    (root / "images").mkdir(parents=True)
    (root / "aesthetics_image_lists").mkdir()
    ava_lines, truth = [], []
    for i in range(n_images):
        rng = np.random.default_rng([int(seed), 1, i])
        name, _, appeal, tag = SOURCES[int(src_order[i % len(SOURCES)])]
        src = sources[name]
        grey = src.ndim == 2
        h, w, (y, x, ch, cw) = _geometry(rng, src.shape[:2])
        im = cv2.resize(src[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA)
        theme = int(theme_ids[int(rng.choice(len(theme_ids), p=theme_p))])
        signature = THEMES[theme][2]
        if signature is not None and rng.random() < 0.5:
            kind = signature
        elif rng.random() < 0.2:
            kind = "none"
        else:
            kind = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
        strength = 0.0 if kind == "none" else float(rng.uniform(0.15, 1.0))
        if image_scale == 1.0:
            im, pname, pval = degrade(im, kind, strength, rng)
        else:  # the same crop rendered smaller, degraded with the same parameters (a copy of the
            # generator); the full-size image is degraded too, only so that ``rng`` then draws
            # the same scores as at scale 1 (noise fields draw one number per pixel)
            small = cv2.resize(src[y:y + ch, x:x + cw], (max(1, int(round(w * image_scale))),
                                                         max(1, int(round(h * image_scale)))),
                               interpolation=cv2.INTER_AREA)
            degraded = degrade(small, kind, strength, copy.deepcopy(rng))
            degrade(im, kind, strength, rng)
            im, pname, pval = degraded
        off_topic = OFF_TOPIC_PENALTY if (signature is not None and kind != signature) else 0.0
        content = BASE_SCORE + appeal - GENERIC_WEIGHTS[kind] * strength
        theme_term = (THEME_OFFSETS[theme] - (THEME_WEIGHTS[theme][kind] - GENERIC_WEIGHTS[kind]) * strength
                      - off_topic)
        latent = float(np.clip(content + theme_effects * theme_term + rng.normal(0, 0.25), 1.5, 9.5))
        sd = float(rng.uniform(1.1, 1.7))
        n_votes = int(rng.integers(100, 251))
        votes = _vote_histogram(latent, sd, n_votes, rng)
        ok, enc = cv2.imencode(".jpg", im if grey else im[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for demo image {i}")
        enc.tofile(str(root / "images" / f"{ids[i]}.jpg"))
        tag2 = 4 if grey and tag != 4 else 0
        ava_lines.append(" ".join(map(str, [i + 1, ids[i], *votes.tolist(), tag, tag2, theme])))
        truth.append(dict(image_id=str(ids[i]), source=name, grey=int(grey), tag=tag, theme=theme,
                          theme_name=THEMES[theme][0], degradation=kind, strength=round(strength, 6),
                          param_name=pname, param=round(float(pval), 6), content=round(content, 6),
                          theme_term=round(theme_term, 6), latent=round(latent, 6),
                          vote_sd=round(sd, 6), n_votes=n_votes, height=im.shape[0], width=im.shape[1],
                          test=int(ids[i] in test_ids)))

    def write(path, text):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)

    write(root / "AVA.txt", "\n".join(ava_lines) + "\n")
    write(root / "challenges.txt", "".join(f"{k} {v[0]}\n" for k, v in THEMES.items()))
    write(root / "tags.txt", "".join(f"{k} {v}\n" for k, v in TAGS.items()))
    write(root / "aesthetics_image_lists" / "generic_test.jpgl",
          "".join(f"{j}\n" for j in ids if j in test_ids))
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(truth[0]), lineterminator="\n")
    wr.writeheader()
    wr.writerows(truth)
    write(root / "demo_truth.csv", buf.getvalue())
    write(root / "README.txt",
          f"ku demo set v{DEMO_VERSION}: {n_images} images, seed {seed}, theme_effects {theme_effects:g}, "
          f"image_scale {image_scale:g}, "
          "AVA layout. Generated by "
          "ku.data.demo (see its module docstring for the score model); ground truth in demo_truth.csv.\n")
    log.info("demo set n=%d seed=%d theme_effects=%g generated in %.1fs", n_images, seed, theme_effects,
             time.perf_counter() - t0)


def _marker_params(root: Path) -> dict | None:
    try:
        with open(root / MARKER, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _wanted(n_images: int, seed: int, theme_effects: float = 0.0, image_scale: float = 1.0) -> dict:
    wanted = {"version": DEMO_VERSION, "n_images": int(n_images), "seed": int(seed),
              "theme_effects": float(theme_effects)}
    if float(image_scale) != 1.0:  # (sets at scale 1 keep the marker they had before the option)
        wanted["image_scale"] = float(image_scale)
    return wanted


def _clean_stale(root: Path) -> None:
    """Remove hidden build folders of this root left by processes that no longer run."""
    if os.name != "posix" or not root.parent.is_dir():
        return
    prefix = f".{root.name}.building-"
    for e in root.parent.iterdir():
        if e.name.startswith(prefix) or e.name.startswith(f".{root.name}.old-"):
            try:
                pid = int(e.name.rsplit("-", 2)[-2])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(e, ignore_errors=True)
            except (ValueError, IndexError, PermissionError, OSError):
                pass


def make_demo_set(root: PathLike | None = None, n_images: int = N_IMAGES, seed: int = 0,
                  force: bool = False, theme_effects: float = 0.0, image_scale: float = 1.0) -> Path:
    """Build (or reuse) the demo set and return its folder (AVA layout, see the module docstring).

    Args:
        root: folder of the dataset itself; default :func:`demo_dir` ``(n_images, seed)``.
        n_images: number of images (>= 8).
        seed: generator seed.
        force: rebuild even if a complete set is there.
        theme_effects: strength of the challenges' effect on the scores (module docstring, step 5):
            0 = scores from the pixels only (default), 1 = the full theme model. Images are
            byte-identical for every value.
        image_scale: every image rendered at this fraction of its size (0.5 .. 1; the same crop
            of the same source, resized to ``round(side * image_scale)``, then degraded): fewer
            pixels for the demos that run a CNN on 8 crops of every image at full resolution
            (the MLSP demo uses 0.85: 28% fewer pixels). Scores, themes, degradations and splits
            are those of ``image_scale=1``.
    Returns:
        ``pathlib.Path`` of the folder, usable as ``read_ava(root)``.
    Raises:
        FileExistsError: ``root`` exists, is not a demo set (complete or interrupted) and is not
            empty (never deletes foreign files).
    """
    n_images, seed, theme_effects, image_scale = int(n_images), int(seed), float(theme_effects), float(image_scale)
    if n_images < 8:
        raise ValueError(f"n_images must be >= 8, got {n_images}")
    if not 0.5 <= image_scale <= 1.0:
        raise ValueError(f"image_scale must be in [0.5, 1], got {image_scale}")
    if not np.isfinite(theme_effects) or theme_effects < 0:
        raise ValueError(f"theme_effects must be a finite number >= 0, got {theme_effects}")
    root = Path(root).expanduser() if root is not None else demo_dir(n_images, seed, theme_effects, image_scale)
    root = root.absolute()
    wanted = _wanted(n_images, seed, theme_effects, image_scale)
    if not force and _marker_params(root) == wanted:
        return root
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"demo root {str(root)!r} exists and is not a folder")
        foreign = [p.name for p in root.iterdir() if p.name not in _OUR_NAMES]
        if foreign:
            raise FileExistsError(f"demo root {str(root)!r} contains files that are not part of a demo set "
                                  f"({foreign[:3]}); refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.building-{token}"
    try:
        _generate(tmp, n_images, seed, theme_effects, image_scale)
        with open(tmp / MARKER, "w", encoding="utf-8") as f:  # written last
            json.dump(wanted, f)
        old = None
        if not force and _marker_params(root) == wanted:
            # another process finished the same set meanwhile (and may be reading it): keep
            # theirs, never move a complete set away from under a reader
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        if root.exists():
            old = root.parent / f".{root.name}.old-{token}"
            os.rename(root, old)
        try:
            os.rename(tmp, root)
        except OSError:
            if _marker_params(root) == wanted:  # a concurrent build won the race
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_demo(n_images: int = N_IMAGES, seed: int = 0, split: str | None = "hosu",
              root: PathLike | None = None, theme_effects: float = 0.0, image_scale: float = 1.0,
              **kwargs):
    """Build/reuse the demo set and read it with :func:`ku.data.readers.read_ava`.

    ``kwargs`` go to ``read_ava`` (e.g. ``vocabulary``, ``val_fraction``). For ``split="murray"``
    the default ``n_validation`` is 5% of the training images (2,000 would exceed the demo set).
    """
    from ku.data.readers import read_ava

    path = make_demo_set(root=root, n_images=n_images, seed=seed, theme_effects=theme_effects,
                         image_scale=image_scale)
    if split == "murray":
        kwargs.setdefault("n_validation", 0.05)
    return read_ava(path, split=split, seed=seed, **kwargs)


def score_report(root: PathLike) -> dict:
    """Where the scores of a demo set come from, read back from its files.

    Returns a dict with the share of the MOS variance explained (R^2 of a linear fit) by
    ``content`` alone (``content_r2``; all a model that does not see the theme can reach) and by
    ``content + theme_effects * theme_term`` (``full_r2``); ``theme_adds = full_r2 - content_r2``,
    ``noise = 1 - full_r2`` (latent noise and vote sampling). ``oracle_srcc`` /
    ``oracle_theme_srcc``: test-set SRCC of oracles that know each image's source, degradation
    type and strength, without / with the theme.
    """
    import pandas as pd
    from scipy.stats import pearsonr, spearmanr

    from ku.data.readers import read_ava

    root = Path(root)
    te = float((_marker_params(root) or {}).get("theme_effects", 0.0))
    df = read_ava(root, split=None)
    truth = pd.read_csv(root / "demo_truth.csv", dtype={"image_id": str})
    m = df[["image_id", "mos"]].merge(truth, on="image_id", validate="1:1")
    mos = m["mos"].to_numpy(float)
    content = m["content"].to_numpy(float)
    full = content + te * m["theme_term"].to_numpy(float)
    test = m["test"].to_numpy(bool)
    content_r2 = float(pearsonr(content, mos)[0] ** 2)
    full_r2 = float(pearsonr(full, mos)[0] ** 2)
    return {
        "n_images": len(m), "n_test": int(test.sum()), "theme_effects": te,
        "content_r2": content_r2, "full_r2": full_r2, "theme_adds": full_r2 - content_r2,
        "noise": 1.0 - full_r2,
        "oracle_srcc": float(spearmanr(content[test], mos[test])[0]),
        "oracle_theme_srcc": float(spearmanr(full[test], mos[test])[0]),
    }
