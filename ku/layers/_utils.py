"""Small helpers shared by several ku layers (and the size mapping of :mod:`ku.models.masking`)."""
from __future__ import annotations

import numpy as np


def int_pair(v):
    """An int or a pair of ints (height, width) -> a tuple of two Python ints (no checks)."""
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)
