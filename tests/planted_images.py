"""Images whose score is a known visible property, for the planted-signal tests of the
end-to-end models (APM: tests/test_planted_apm.py, theme-ROI: tests/test_planted_theme_roi.py).

Each image is a smooth random colour texture of random size and aspect ratio (so that aspect
ratio batches and padded canvases are exercised) whose *brightness* ``b ~ U(0.15, 0.85)`` sets
the content score ``5.5 + CONTENT_GAIN * (b - 0.5)`` (3.5 .. 7.5). Optionally every image has a
theme (1..4) that adds :data:`THEME_OFFSETS` to its score, a property the pixels do not show.
The vote distribution over the scores 1..10 is a discretised normal around the score
(standard deviation 1.2), as AVA-format ``dist_1 .. dist_10`` columns.
"""
import math

import numpy as np
import pandas as pd
from PIL import Image

CONTENT_GAIN = 5.7
#: score offset of themes 1..4 (theme-ROI test): a standard deviation of ~1.1 next to the
#: content score's ~1.15, so a theme-blind model can explain about half of the variance.
THEME_OFFSETS = np.array([-1.5, -0.5, 0.5, 1.5])
VOTE_STD = 1.2
ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3))


def _texture(rng, h, w):
    """Smooth random RGB texture in [-1, 1]: bilinear upsampling of a coarse noise grid."""
    coarse = rng.uniform(-1, 1, size=(4, 4, 3)).astype(np.float32)
    img = Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.float32) / 127.5 - 1.0


def _distribution(mean, k=10, std=VOTE_STD):
    edges = np.arange(1, k) + 0.5
    cdf = [0.5 * (1.0 + math.erf((e - mean) / (std * math.sqrt(2.0)))) for e in edges]
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def make_planted_set(folder, n, *, seed=0, short_side=(64, 80), themes=False, n_train=None,
                     n_val=0):
    """Write ``n`` PNG images into ``folder`` and return their ids table.

    Columns: ``image_id``, ``image_path``, ``brightness``, ``content`` (the score the pixels
    show), ``theme_index`` (1..4, or 0 without ``themes``), ``mos`` (content + theme offset),
    ``dist_1 .. dist_10``, ``set`` (the first ``n_train`` rows "training", the next ``n_val``
    "validation", the rest "test").
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        s = int(rng.integers(short_side[0], short_side[1] + 1))
        a, b_ = ASPECTS[int(rng.integers(len(ASPECTS)))]
        h, w = (s, s * a // b_) if a >= b_ else (s * b_ // a, s)
        brightness = float(rng.uniform(0.15, 0.85))
        pixels = 255.0 * np.clip(brightness + 0.12 * _texture(rng, h, w), 0.0, 1.0)
        path = folder / f"planted_{i:04d}.png"
        Image.fromarray(pixels.round().astype(np.uint8)).save(path)
        content = 5.5 + CONTENT_GAIN * (brightness - 0.5)
        theme = int(rng.integers(1, 5)) if themes else 0
        mos = content + (THEME_OFFSETS[theme - 1] if themes else 0.0)
        rows.append({"image_id": f"planted_{i:04d}", "image_path": str(path), "brightness": brightness,
                     "content": content, "theme_index": theme, "mos": mos,
                     **{f"dist_{k + 1}": p for k, p in enumerate(_distribution(mos))}})
    table = pd.DataFrame(rows)
    n_train = n - n_val if n_train is None else n_train
    table["set"] = ["training"] * n_train + ["validation"] * n_val + ["test"] * (n - n_train - n_val)
    return table
