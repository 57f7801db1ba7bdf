"""ku: image aesthetics assessment in Keras 3 / TensorFlow 2.

Faithful, tested reproductions of
  * Hosu, Goldluecke, Saupe, "Effective Aesthetics Prediction with Multi-level Spatially Pooled
    Features", CVPR 2019 (MLSP features + heads),
  * Murray & Gordo, "A deep architecture for unified aesthetic prediction", 2017 (APM),
  * Jia, Li, He, "Theme-aware aesthetic distribution prediction with full-resolution photographs",
    2019 (padded full-resolution ROI pooling + theme embeddings).

Importing ``ku`` has no side effects: no logging configuration, no global seeds, no downloads.
Sub-packages are imported on use (``ku.metrics``, ``ku.losses``, ``ku.data``, ``ku.layers``, ...).
"""

__version__ = "0.1.0"
