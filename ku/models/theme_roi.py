"""Jia, Li, He 2019: theme-aware aesthetic distribution prediction on padded full-resolution photos.

Model (§III-A, §III-B, §III-D, Fig. 3)::

    image canvas (B, 800, 800, 3), 0..255  --preprocessing + Inception-v3 stem (3 convs)-->
    (B, 397, 397, 64) --RoiPooling2D over each image's box--> (B, 146, 146, 64)
    --rest of Inception-v3 (same layers, same weights; at 2x its usual resolution)-->
    (B, 17, 17, 2048) --global average pooling ("adaptive pooling")--> 2048
    theme index --ThemeEmbedding (one-hot x FC)--> 256
    concat (2304) --Dense(K) + softmax--> distribution over the K scores (10 AVA, 7 Photo.net)

Inception-v3's first max pooling (3 x 3, stride 2 after the third convolution, ``activation_2``
in a fresh Keras session) is the layer replaced; for a whole 147 x 147 map (a 299 x 299 image)
ROI pooling to 73 x 73 is exactly that max pooling, so with ``roi_size=73`` and unpadded 299 px
inputs the network is the plain Inception-v3.

Box mapping. Eq. 1 maps an input box to the feature map with ``round(x / tau)``; the stem's
stride is ``tau = 2``, but its valid convolutions also shrink the map: an ``h``-pixel image has
``(h - 3) // 2 - 1`` valid feature rows, while eq. 1 gives ``round((h - 1) / 2) + 1``, i.e. two to
three rows of padding at the bottom/right of the box. ``box_mapping="valid"`` (default) pools
exactly the image's valid feature region (the intent of §III-A, "ROI pooling cuts off the forward
propagation of features on padding regions"); ``"paper"`` uses eq. 1 with ``spatial_scale=0.5``
on the input box ``(0, 0, h - 1, w - 1)``.

Padding leak and exact masking. Even with the exact box, plain zero padding (the paper) leaks into
the pooled region: the preprocessing maps padded zeros to -1, batch norm adds offsets, and the
stem's convolutions at the image's right/bottom border read the padded area. ``masked=True``
rebuilds the stem with :func:`ku.models.masking.masked_model` (activations outside each image's
valid region set to zero after every layer before the ROI pooling, i.e. padding in the network's
input space after preprocessing); an image's prediction is then the same, to float32 precision,
in any canvas. Default: the paper's plain zero padding.

Training (§III-C, §IV-B): EMD loss with r = 2, SGD momentum 0.9, weight decay 1e-4, learning rate
1e-3 on the convolutional layers and 10x on the fully connected layers (``theme_fc``,
``distribution``), halved every 10 epochs, 30 epochs, batch 16, batch norm frozen
(:func:`jia_optimizer`, :func:`jia_lr_schedule`; the loop:
:func:`ku.training.train_theme_roi`). Evaluation (§IV-A): :func:`jia_tables`.
"""
from __future__ import annotations

import logging

import keras
import numpy as np

from ku.backbones import freeze_batch_norm
from ku.layers import AVA_N_THEMES, ImageBoxes, RoiAlign2D, RoiPooling2D, ThemeEmbedding

logger = logging.getLogger(__name__)

__all__ = [
    "theme_roi_model",
    "replaced_pool_layer",
    "stem_valid_sizes",
    "freeze_batch_norm",
    "jia_optimizer",
    "jia_lr_schedule",
    "predict_views",
    "visual_features_model",
    "view_features",
    "theme_roi_head_model",
    "adapt_feature_normalization",
    "jia_tables",
    "ablation_row",
    "JIA_ABLATIONS",
    "FC_LAYERS",
]

ROI_OPS = ("pool", "align")
#: deprecated ``pooling=`` values of :func:`theme_roi_model` -> ``roi_op``
POOLINGS = {"roi": "pool", "align": "align"}
BOX_MAPPINGS = ("valid", "paper")
#: Names of the fully connected layers trained at 10x the learning rate (§IV-B).
FC_LAYERS = ("theme_fc", "distribution")
#: Stride of Inception-v3's stem (tau of eq. 1).
STEM_STRIDE = 2

#: Jia et al. 2019 Tables III-V (AVA): SRCC of the mean, SRCC of the std, EMD (r = 1: Table I's
#: r = 1 value equals the Pad+ROI+Theme row) and KL.
JIA_ABLATIONS = {
    "Table III": {
        "Resize": (0.7026, 0.2709, 0.046, 0.108),
        "Resized Pad": (0.6894, 0.2927, 0.046, 0.107),
        "Random Crop": (0.6965, 0.2780, 0.046, 0.108),
        "Pad+ROI": (0.7438, 0.3424, 0.043, 0.098),
        "Pad+ROI+Theme": (0.7611, 0.6918, 0.041, 0.088),
    },
    "Table IV": {
        "400/73": (0.7189, 0.4667, 0.044, 0.102),
        "800/73": (0.7531, 0.6872, 0.042, 0.091),
        "800/146": (0.7611, 0.6918, 0.041, 0.088),
    },
    "Table V": {
        "Flip": (0.7553, 0.6707, 0.041, 0.090),
        "Flip+Crop": (0.7611, 0.6918, 0.041, 0.088),
    },
}
_ABLATION_COLUMNS = ("SRCC", "SRCC_std", "EMD_r1", "KL")


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def replaced_pool_layer(backbone: keras.Model):
    """Inception-v3's first max pooling (the layer ROI pooling replaces, §III-D) and the name of
    the layer feeding it (``"activation_2"`` in a fresh session; found by structure because
    Keras numbers auto-named layers per session)."""
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.MaxPooling2D):
            parent = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
            return layer, parent.name
    raise ValueError(f"replaced_pool_layer: model {backbone.name!r} has no MaxPooling2D layer")


def stem_valid_sizes(sizes, backbone: keras.Model | None = None) -> np.ndarray:
    """Valid feature sizes ``(N, 2)`` before the ROI pooling for images of ``sizes`` (N, 2).

    Inception-v3's stem (3x3/2 valid, 3x3 valid, 3x3 same): ``(n - 3) // 2 - 1`` per axis. With a
    ``backbone`` the mapping is read from its layers (:func:`ku.models.masking.valid_output_sizes`).
    """
    sizes = np.atleast_2d(np.asarray(sizes, dtype=np.int64))
    if backbone is None:
        return np.maximum((sizes - 3) // 2 - 1, 0)
    from ku.models.masking import valid_output_sizes

    _, stem_name = replaced_pool_layer(backbone)
    return valid_output_sizes(backbone, sizes, output=stem_name)


def theme_roi_model(weights=None, canvas=800, roi_size=146, theme=True, n_themes=AVA_N_THEMES,
                    n_bins=10, masked=False, roi_op="pool", box_mapping="valid", theme_dim=256,
                    sampling_ratio=2, freeze_bn=True, backbone=None, name=None,
                    feature_normalization=False, pooling=None) -> keras.Model:
    """The theme-aware ROI model of Jia et al. 2019 (module docstring; §III, Fig. 3).

    Args:
        weights: Inception-v3 weights: ``"imagenet"``, None (random) or a file
            (:func:`ku.backbones.build_backbone`); every layer except the replaced max pooling
            keeps them.
        canvas: canvas side (int or (h, w)) of the ``image`` input; None accepts any size (e.g.
            an image in a canvas of exactly its own size).
        roi_size: ROI pooling output side (146 in the paper, 73 = Inception-v3's own size).
        theme: add the theme input and :class:`ThemeEmbedding` (False: the no-theme variant,
            Table III "Pad+ROI").
        n_themes: theme vocabulary size incl. the unknown index 0 (AVA 1,397 + 1).
        n_bins: K, 10 on AVA, 7 on Photo.net.
        masked: exact padding masking before the ROI pooling (module docstring; default: the
            paper's plain zero padding).
        roi_op: ``"pool"`` (max ROI pooling, eqs. 1-3) or ``"align"`` (ROI align, the "Align" rows
            of Tables I/II; inclusive-pixel boxes, ``aligned=False``, ``sampling_ratio`` samples).
        box_mapping: ``"valid"`` or ``"paper"`` (module docstring).
        theme_dim: theme feature size (256).
        freeze_bn: freeze all batch-norm layers (§IV-B).
        backbone: an already built ``build_backbone("inception_v3", ...)`` model to take the
            layers from (its layers are *shared*, not copied); default: build one.
        name: model name.
        feature_normalization: put a :class:`ku.layers.FeatureStandardization` layer
            (``feature_norm``, the identity until set) between the global average pooling and the
            output layer; set it from the training images' pooled features with
            :func:`adapt_feature_normalization` before training. Not in the paper: with
            ImageNet weights the pooled features are of order 0.1-1 and the output layer learns
            from them directly, but a randomly initialised Inception-v3 with frozen batch norm
            (the demo without ImageNet weights) gives pooled features of ~1e-4 that differ by
            ~1e-5 between images, which the output layer cannot use in a few hundred steps: the
            model then learns the theme alone. :func:`adapt_feature_normalization` scales every
            channel to ``1 / sqrt(C)`` (unit norm on average): unit-variance channels with the
            paper's output learning rate (1e-2) made the softmax collapse on the demo set
            (2026-11-29: KL 21.6). :func:`ku.pipelines.theme_roi.run_theme_roi` turns it on with a
            frozen backbone (the demo without ImageNet weights:
            :func:`ku.training.fit_theme_roi_head`).
        pooling: deprecated name of ``roi_op`` (``"roi"`` = ``"pool"``, ``"align"``); warns.

    Returns:
        ``keras.Model`` with inputs ``image`` (B, H, W, 3) float 0..255, ``valid_size`` (B, 2)
        int32 (height, width of each image at the top-left of its canvas) and, with ``theme``,
        ``theme`` (B,) int32; output ``distribution`` (B, n_bins), softmax. Images whose valid
        size is below Inception-v3's 75 px are upscaled in the canvas first (ku's size policy,
        :class:`ku.layers.MinSideUpscale`, layer ``min_side_upscale``; on a fixed canvas only as
        far as it fits).
    """
    from ku.backbones import build_backbone

    if pooling is not None:
        import warnings

        warnings.warn("theme_roi_model(pooling=...) is deprecated, use roi_op='pool' | 'align'",
                      DeprecationWarning, stacklevel=2)
        roi_op = POOLINGS.get(pooling, pooling)
    if roi_op not in ROI_OPS:
        raise ValueError(f"theme_roi_model: roi_op must be one of {ROI_OPS}, got {roi_op!r}")
    if box_mapping not in BOX_MAPPINGS:
        raise ValueError(f"theme_roi_model: box_mapping must be one of {BOX_MAPPINGS}, got {box_mapping!r}")
    if not isinstance(roi_size, int) or roi_size < 1:
        raise ValueError(f"theme_roi_model: roi_size must be a positive int, got {roi_size!r}")
    if not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"theme_roi_model: n_bins must be an int >= 2, got {n_bins!r}")
    if canvas is None:
        shape = (None, None, 3)
    else:
        ch, cw = (canvas, canvas) if isinstance(canvas, int) else tuple(int(c) for c in canvas)
        if min(ch, cw) < 75:
            raise ValueError(f"theme_roi_model: canvas sides must be >= 75 (Inception-v3), got {canvas!r}")
        shape = (ch, cw, 3)
    bb = backbone if backbone is not None else build_backbone("inception_v3", weights=weights,
                                                              input_shape=(None, None, 3))
    pool_layer, stem_name = replaced_pool_layer(bb)

    image_in = keras.Input(shape, name="image")
    sizes_in = keras.Input((2,), dtype="int32", name="valid_size")
    # ku's size policy (ku.size_policy): images below Inception-v3's 75 px are upscaled in the
    # canvas (as far as a fixed canvas allows), so the stem never runs out of pixels
    from ku.layers import MinSideUpscale

    image, sizes = MinSideUpscale(75, name="min_side_upscale")([image_in, sizes_in])
    if masked:
        from ku.models.masking import masked_model

        stem = masked_model(bb, outputs=[stem_name], name="masked_stem")
        feats, feat_sizes = stem._run_through_graph([image, sizes], operation_fn=lambda op: op)
    else:
        from ku.layers import MapValidSize
        from ku.models.masking import size_mapping

        stem = keras.Model(bb.inputs, bb.get_layer(stem_name).output)
        feats = stem._run_through_graph(image, operation_fn=lambda op: op)
        feat_sizes = sizes
        for layer, geometry in size_mapping(bb, stem_name):
            feat_sizes = MapValidSize(**geometry, name=f"{layer.name}_valid_size")(feat_sizes)

    if box_mapping == "valid":
        boxes, scale = ImageBoxes("pixels", name="roi_boxes")(feat_sizes), 1.0
    else:
        boxes, scale = ImageBoxes("pixels", name="roi_boxes")(sizes), 1.0 / STEM_STRIDE
    if roi_op == "pool":
        pooled = RoiPooling2D(roi_size, scale, mode="max", name="roi_pooling")([feats, boxes])
    else:
        pooled = RoiAlign2D(roi_size, scale, sampling_ratio=sampling_ratio, aligned=False,
                            name="roi_align")([feats, boxes])

    tail = keras.Model(pool_layer.output, bb.outputs[0])
    visual = tail._run_through_graph(pooled, operation_fn=lambda op: op)
    visual = keras.layers.GlobalAveragePooling2D(name="adaptive_avg_pool")(visual)
    if feature_normalization:
        from ku.layers import FeatureStandardization

        visual = FeatureStandardization(name="feature_norm")(visual)
    inputs = [image_in, sizes_in]
    if theme:
        theme_in = keras.Input((), dtype="int32", name="theme")
        inputs.append(theme_in)
        theme_feat = ThemeEmbedding(n_themes, theme_dim, name="theme_fc")(theme_in)
        visual = keras.layers.Concatenate(name="visual_theme")([visual, theme_feat])
    out = keras.layers.Dense(n_bins, activation="softmax", name="distribution")(visual)
    if name is None:
        name = f"jia_{'theme_' if theme else ''}{'roi' if roi_op == 'pool' else roi_op}{roi_size}"
    model = keras.Model(inputs, out, name=name)
    if freeze_bn:
        freeze_batch_norm(model)
    return model


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def jia_optimizer(learning_rate=1e-3, momentum=0.9, weight_decay=1e-4, fc_multiplier=10.0):
    """SGD of §IV-B: momentum 0.9, weight decay 1e-4 (L2, added to the gradient), ``learning_rate``
    on the convolutional layers and ``fc_multiplier`` times it on the FC layers :data:`FC_LAYERS`
    (:class:`ku.optimizers.LayerwiseSGD`)."""
    from ku.optimizers import LayerwiseSGD

    return LayerwiseSGD(learning_rate, momentum=momentum, weight_decay=weight_decay,
                        lr_multipliers={r"^(%s)/" % "|".join(FC_LAYERS): float(fc_multiplier)})


def jia_lr_schedule(initial_lr=1e-3, factor=0.5, every=10):
    """``lr(epoch) = initial_lr * factor ** (epoch // every)`` (§IV-B: "divided by 2 every 10
    epochs"), as a ``keras.callbacks.LearningRateScheduler`` function ``(epoch, lr) -> lr``. A pure
    function of the epoch, so a resumed run gets the right rate."""
    if not initial_lr > 0 or not 0 < factor <= 1 or int(every) < 1:
        raise ValueError(f"jia_lr_schedule: bad arguments initial_lr={initial_lr}, factor={factor}, every={every}")

    def schedule(epoch, lr=None):
        return float(initial_lr * factor ** (int(epoch) // int(every)))

    return schedule


# ---------------------------------------------------------------------------------------------
# prediction and evaluation
# ---------------------------------------------------------------------------------------------
def predict_views(model, ids, *, mode="pad_roi", canvas=800, augment="flip_crop", batch_size=16,
                  seed=0, n_random=20, theme=None, verbose=0, log_resized=True) -> np.ndarray:
    """Test-time prediction: the mean of the model's distributions over each image's test views
    (§IV-B "In the test stage, we average results on all the augmented images"; 20 random views
    for the ``resize`` / ``random_crop`` ablations, §IV-D). Returns ``(N, K)`` float64."""
    from ku.data.canvas import n_test_views, evaluation_views

    if theme is None:
        theme = any(getattr(t, "name", "") == "theme" for t in model.inputs)
    n_views = n_test_views(mode, augment, n_random)
    ds = evaluation_views(ids, mode=mode, canvas=canvas, augment=augment, batch_size=batch_size, seed=seed,
                    theme=theme, n_random=n_random, log_resized=log_resized)
    from ku.distribute import predict_locally

    p = np.asarray(predict_locally(model, ds, verbose=verbose), dtype=np.float64)
    if p.shape[0] != len(ids) * n_views:
        raise RuntimeError(f"predict_views: got {p.shape[0]} predictions for {len(ids)} images x {n_views} views")
    return p.reshape(len(ids), n_views, -1).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# the head on stored features (a frozen backbone)
# ---------------------------------------------------------------------------------------------
VISUAL_POOL = "adaptive_avg_pool"
#: The layers after ``adaptive_avg_pool`` (trained by :func:`ku.training.fit_theme_roi_head`).
HEAD_LAYERS = ("feature_norm", "theme_fc", "visual_theme", "distribution")


def visual_features_model(model) -> keras.Model:
    """The model's inputs -> its pooled visual features ``(B, 2048)`` (the output of
    ``adaptive_avg_pool``, before ``feature_norm`` and the theme), weights shared."""
    return keras.Model(model.inputs, model.get_layer(VISUAL_POOL).output, name=f"{model.name}_visual")


def view_features(model, ids, *, mode="pad_roi", canvas=800, augment="flip_crop", batch_size=16,
                  theme=None, verbose=0, log_resized=True) -> np.ndarray:
    """Pooled visual features of every test view of every image (:func:`visual_features_model`
    on :func:`ku.data.canvas.evaluation_views`): ``(N, V, C)`` float32, ``V`` =
    :func:`ku.data.canvas.n_test_views` (6 for ``flip_crop``: original, mirrored, four corner
    crops). ``model``: the theme-ROI model or its :func:`visual_features_model`; pass the latter
    when calling this several times (every new Keras model traces its own predict function)."""
    from ku.data.canvas import evaluation_views, n_test_views
    from ku.distribute import predict_locally

    if theme is None:
        theme = any(getattr(t, "name", "") == "theme" for t in model.inputs)
    n_views = n_test_views(mode, augment)
    ds = evaluation_views(ids, mode=mode, canvas=canvas, augment=augment, batch_size=batch_size,
                          theme=theme, log_resized=log_resized)
    features = model if model.layers[-1].name == VISUAL_POOL else visual_features_model(model)
    x = np.asarray(predict_locally(features, ds, verbose=verbose), np.float32)
    if x.shape[0] != len(ids) * n_views:
        raise RuntimeError(f"view_features: got {x.shape[0]} rows for {len(ids)} images x {n_views} views")
    return x.reshape(len(ids), n_views, -1)


def adapt_feature_normalization(model, features) -> None:
    """Set the ``feature_norm`` layer (``theme_roi_model(feature_normalization=True)``) from the
    training images' pooled features ``(N, C)`` or ``(N, V, C)``: each channel centred and
    scaled to ``1 / sqrt(C)``, so the visual vector has a squared norm of 1 on average (ku, not
    the paper; the same reasoning as :func:`ku.models.apm.adapt_feature_normalization`: a
    randomly initialised Inception-v3 gives features with one dominant direction, and unit-scale
    channels with the paper's 10x FC learning rate made the softmax collapse)."""
    from ku.models.heads import adapt_head_input_unit_norm

    adapt_head_input_unit_norm(model, features)


def theme_roi_head_model(model) -> keras.Model:
    """The layers after ``adaptive_avg_pool`` as a model of their own, weights shared:
    ``[visual features (B, C)[, theme (B,) int32]] -> distribution (B, K)``."""
    width = int(model.get_layer(VISUAL_POOL).output.shape[-1])
    visual = keras.Input((width,), name="visual_features")
    x, inputs = visual, [visual]
    names = {layer.name for layer in model.layers}
    if "feature_norm" in names:
        x = model.get_layer("feature_norm")(x)
    if "theme_fc" in names:
        theme = keras.Input((), dtype="int32", name="theme")
        inputs.append(theme)
        x = model.get_layer("visual_theme")([x, model.get_layer("theme_fc")(theme)])
    out = model.get_layer("distribution")(x)
    return keras.Model(inputs, out, name=f"{model.name}_head")


def jia_tables(dist_true, dist_pred, *, label="ku (this run)", paper_rows=("Pad+ROI+Theme", "Pad+ROI+Theme (Align)"),
               extra_rows=None, dataset="AVA"):
    """Tables I and II of Jia et al. (§IV-A, §IV-C) for a run, next to the paper's numbers.

    Table I: Euclidean, KL, JS, chi2, EMD (r = 2), EMD (r = 1), cosine distance of the
    distributions (smaller is better). Table II: SRCC / PLCC of the mean, SRCC / PLCC of the
    standard deviation, MSE of the mean. Metric definitions: :mod:`ku.metrics`.

    Args:
        dist_true, dist_pred: ``(N, K)`` normalised distributions.
        label: name of this run's row.
        paper_rows: rows of :func:`ku.metrics.paper_results` (Jia's "Ours" rows by default).
        dataset: ``"AVA"`` (Tables I/II) or ``"Photo.net"`` (Table VI) paper rows.
        extra_rows: optional ``{label: (dist_true, dist_pred)}`` more runs (e.g. the no-theme
            model).
    Returns:
        ``(table1, table2)`` pandas DataFrames, runs first.
    """
    import pandas as pd

    from ku import metrics

    t1_cols = ["Euclidean", "KL", "JS", "chi2", "EMD_r2", "EMD_r1", "cosine"]
    t2_cols = ["SRCC", "PLCC", "SRCC_std", "PLCC_std", "MSE"]
    runs = {label: (dist_true, dist_pred), **(extra_rows or {})}
    rows = []
    for name, (t, p) in runs.items():
        r = metrics.evaluate(None, None, dist_true=t, dist_pred=p).iloc[0].to_dict()
        rows.append({"model": name, "source": "this run", "N": len(np.asarray(t)), **r})
    ref = metrics.paper_results()
    for name in paper_rows or ():
        hit = ref[(ref["model"] == name) & ref["source"].str.startswith("Jia") & (ref["dataset"] == dataset)]
        if hit.empty:
            raise ValueError(f"jia_tables: no Jia paper row named {name!r}")
        for _, r in hit.iterrows():
            rows.append({"model": name, "source": r["source"], "N": np.nan, **r.to_dict()})
    df = pd.DataFrame(rows)
    base = ["model", "source", "N"]
    return df[base + t1_cols].reset_index(drop=True), df[base + t2_cols].reset_index(drop=True)


def ablation_row(dist_true, dist_pred, label) -> dict:
    """One row in the layout of Tables III-V: SRCC (mean), SRCC (std.dev), EMD (r = 1), KL."""
    from ku import metrics

    r = metrics.evaluate(None, None, dist_true=dist_true, dist_pred=dist_pred).iloc[0]
    return {"model": label, **{c: float(r[c]) for c in _ABLATION_COLUMNS}}


def ablation_table(rows, table="Table III"):
    """This run's :func:`ablation_row` rows followed by the paper's rows of ``table``
    (:data:`JIA_ABLATIONS`)."""
    import pandas as pd

    if table not in JIA_ABLATIONS:
        raise ValueError(f"ablation_table: table must be one of {sorted(JIA_ABLATIONS)}, got {table!r}")
    out = [{**r, "source": "this run"} for r in rows]
    out += [{"model": k, "source": f"Jia 2019 {table}", **dict(zip(_ABLATION_COLUMNS, v))}
            for k, v in JIA_ABLATIONS[table].items()]
    return pd.DataFrame(out, columns=["model", "source", *_ABLATION_COLUMNS])
