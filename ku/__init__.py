"""ku: image aesthetics assessment in Keras 3 / TensorFlow 2.

Faithful, tested reproductions of
  * Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
    Features", CVPR 2019 (MLSP features + heads),
  * Murray & Gordo, "A deep architecture for unified aesthetic prediction", 2017 (APM),
  * Jia, Li, He, "Theme-aware aesthetic distribution prediction with full-resolution photographs",
    2019 (padded full-resolution ROI pooling + theme embeddings).

Importing ``ku`` registers ku's Keras objects (layers, losses, optimizers), so that
``keras.models.load_model`` reads ku's ``.keras`` files without ``custom_objects``; this imports
Keras / TensorFlow (a few seconds). Nothing else happens on import: no logging configuration, no
global seeds, no downloads. Other sub-packages (``ku.data``, ``ku.metrics``, ``ku.training``, ...)
are imported on use.
"""

__version__ = "0.1.0"

# Registration of ku's serialisable Keras objects (the reason for these imports).
from ku import layers as _layers  # noqa: E402,F401
from ku import losses as _losses  # noqa: E402,F401
from ku import optimizers as _optimizers  # noqa: E402,F401
from ku.models import apm as _apm  # noqa: E402,F401
from ku.models import heads as _heads  # noqa: E402,F401
from ku.models import masking as _masking  # noqa: E402,F401
from ku.models import theme_roi as _theme_roi  # noqa: E402,F401
