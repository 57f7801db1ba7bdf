"""Type aliases shared by the modules of :mod:`ku.data`."""
from __future__ import annotations

import os
from typing import Union

#: a file or folder name: ``str`` or any ``os.PathLike`` (e.g. ``pathlib.Path``)
PathLike = Union[str, os.PathLike]
