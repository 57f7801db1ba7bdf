"""Writes the notebooks of this folder from the cell lists below (outputs stripped).

Edit here, then run ``python notebooks/_build.py``; the tests execute the .ipynb files
(tests/test_notebooks.py) with KU_NOTEBOOK_FAST=1.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''import os, time
from pathlib import Path
import numpy as np
import pandas as pd
import keras

# FAST=1 (the test suite) runs a tiny configuration: minutes, not seconds, on a 2-core CPU
# (2026-11-29, on a busy machine, load average 8-10: 00 in 172 s, 01 in 139 s, 02 in 238 s,
# 03 in 478 s; an idle machine is faster); the default is the full demo run.
# Nothing here downloads anything except ImageNet weights when they are missing
# (and then ku says so and uses a randomly initialised backbone).
FAST = os.environ.get("KU_NOTEBOOK_FAST", "0") == "1"
WORK = Path(os.environ.get("KU_NOTEBOOK_WORKDIR", Path.home() / ".cache" / "ku" / "notebooks"))
WORK.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)
print("FAST" if FAST else "full demo configuration", "| work dir:", WORK)'''


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


NOTEBOOKS = {}

NOTEBOOKS["00_quickstart"] = [
    md('''
# ku quickstart

`ku` reproduces three image-aesthetics papers in Keras 3 / TensorFlow 2:
Hosu et al. 2019 (MLSP features), Murray & Gordo 2017 (APM) and Jia, Li, He 2019 (theme-aware ROI
pooling). This notebook scores images with an MLSP model in five cells, on the bundled demo set
(a small AVA-format dataset that ku generates from scikit-image's photos, so nothing has to be
downloaded).'''),
    code(SETUP),
    md('''## Data
`load_demo()` writes the demo set once (AVA layout: `AVA.txt`, `challenges.txt`, `images/`, the
official-test-list file) and reads it with the same reader as real AVA (`ku.data.readers.read_ava`).
One row per image: path, mean opinion score (MOS), vote distribution, theme, split.'''),
    code('''from ku.data.demo import load_demo
ids = load_demo(n_images=40 if FAST else 240, seed=0, root=WORK / "demo", val_fraction=0.15)
print(ids["set"].value_counts().to_dict())
ids[["image_id", "mos", "std", "theme", "set"]].head()'''),
    code('''import matplotlib.pyplot as plt
from ku.data.images import read_image
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, (_, row) in zip(axes, ids.sort_values("mos").iloc[:: max(1, len(ids) // 4)].iterrows()):
    ax.imshow(read_image(row["image_path"])); ax.set_title(f"MOS {row['mos']:.2f}"); ax.axis("off")
plt.show()'''),
    md('''## Train and test a model
`run_mlsp` does the Hosu et al. pipeline: extract MLSP features of every image with 8
augmentations into an HDF5 store, train a head with the paper's schedule, test by averaging the 8
augmentations. Here: Inception-v3, narrow (global average pooled) features, Single-1FC (FAST) or
InceptionResNet-v2 wide features with Pool-3FC (full).'''),
    code('''from ku.pipelines.mlsp import run_mlsp
from ku.evaluation import format_table
cfg = dict(backbone="inception_v3", features="narrow", head="single1fc", batch_size=8, max_epochs=2) if FAST \\
    else dict(backbone="inception_resnet_v2", features="wide", head="pool3fc", batch_size=16, max_epochs=12)
result = run_mlsp(ids, WORK / "quickstart", verbose=0, **cfg)
print(format_table(result.table))'''),
    code('''from ku.plots import scatter_predictions
scatter_predictions(result.y_true, result.y_pred, title="test set: predicted vs true MOS", threshold=5)
plt.show()'''),
    md('''## Score your own images
The trained head plus the feature extractor make one Keras model that takes an image of any size
(0..255 RGB) and returns its MOS. `ku predict` (command line) and `ku export` (SavedModel that
takes JPEG/PNG bytes) do the same outside Python.'''),
    code('''from ku.models.mlsp import mlsp_extractor, mlsp_end_to_end
from ku.pipelines.mlsp import resolve_weights
from ku.backbones import check_same_backbone
from ku.data.store import FeatureStore
head = keras.models.load_model(result.run_dir / "head.keras")
# The head only makes sense on the backbone its training features came from: ImageNet weights, or
# (offline) the same seeded random network, which build_backbone gives in every process (seed 0).
extractor = mlsp_extractor(cfg["backbone"], weights=resolve_weights(cfg["backbone"], "auto"), features=cfg["features"])
with FeatureStore(result.store_path) as store:
    check_same_backbone(store.attrs, extractor)  # raises BackboneMismatchError for another backbone
model = mlsp_end_to_end(extractor, head)
image = read_image(ids["image_path"].iloc[0])
print("image", image.shape, "-> predicted MOS", float(model.predict(image[None].astype("float32"), verbose=0).ravel()[0]))'''),
]

NOTEBOOKS["01_mlsp_hosu2019"] = [
    md('''
# Hosu et al. 2019: multi-level spatially pooled (MLSP) features

*Effective Aesthetics Prediction with Multi-level Spatially Pooled Features*, CVPR 2019.

**The idea.** Aesthetics depends on low-level detail and on composition, so instead of the last
layer of an ImageNet network, MLSP pools the output of *every* inception block: 43 blocks
(16,928 channels) of InceptionResNet-v2. *Narrow* features average each block globally (1x1);
*wide* features resize each block to 5x5 with area interpolation. Features come from the
full-resolution image (no resizing to 299x299), with 8 augmentations stored once (4 corner crops
of 87.5%, each mirrored), so training a head on them is cheap. Best result (Table 3): Pool-3FC on
wide IRNv2 features, SRCC 0.756 on AVA.

This notebook runs each step on the bundled demo set (FAST: a tiny configuration).'''),
    code(SETUP),
    code('''from ku.data.demo import load_demo
ids = load_demo(n_images=32 if FAST else 240, seed=0, root=WORK / "demo", val_fraction=0.2 if FAST else 0.15)
BACKBONE, FEATURES, HEAD = ("inception_v3", "narrow", "single3fc") if FAST else ("inception_resnet_v2", "wide", "pool3fc")
ids.groupby("set")["mos"].describe()'''),
    md('''## 1. The backbone and its taps
`build_backbone` wraps `keras.applications` so the model takes 0..255 RGB of any size and
preprocesses inside. Without ImageNet weights in Keras' cache (`~/.keras/models/`) the demo uses a
randomly initialised network and says so; the numbers below are then not comparable to the paper.'''),
    code('''from ku.backbones import mlsp_tap_names, mlsp_block_channels
from ku.pipelines.mlsp import resolve_weights
weights = resolve_weights(BACKBONE, "auto")
taps = mlsp_tap_names(BACKBONE)
print(len(taps), "taps,", sum(mlsp_block_channels(BACKBONE)), "channels; first/last:", taps[:3], taps[-2:])'''),
    code('''from ku.models.mlsp import mlsp_extractor
extractor = mlsp_extractor(BACKBONE, weights=weights, features=FEATURES)
print(extractor.name, "output", extractor.output_shape)'''),
    md('''## 2. Wide pooling is OpenCV's area interpolation
`AreaPooling2D` resizes a feature map to 5x5 exactly like `cv2.resize(..., INTER_AREA)`; here on
a random 37x29 map.'''),
    code('''import cv2
from ku.layers import AreaPooling2D
fmap = np.random.default_rng(0).normal(size=(1, 37, 29, 4)).astype("float32")
ours = np.asarray(AreaPooling2D((5, 5))(fmap))[0]
ref = np.stack([cv2.resize(fmap[0, :, :, c], (5, 5), interpolation=cv2.INTER_AREA) for c in range(4)], -1)
print("largest difference to cv2.INTER_AREA:", float(np.abs(ours - ref).max()))'''),
    md('''## 3. Extract the features with 8 augmentations into an HDF5 store
Resumable: re-running continues after the last complete row; a killed run leaves only complete
rows. One corrupt image is reported and skipped.'''),
    code('''from ku.extraction import extract_features
from ku.data.store import FeatureStore
store_path = WORK / f"hosu_{BACKBONE}_{FEATURES}.h5"
t = time.time()
report = extract_features(ids, store_path, extractor, attrs={"backbone": BACKBONE, "pooling": FEATURES}, progress=False)
print(report.summary(), f"({time.time() - t:.0f} s)")
with FeatureStore(store_path) as store:
    print("store:", store.feature_shape, "x", store.n_augmentations, "augmentations; attrs:",
          {k: store.attrs[k] for k in ("backbone", "pooling")})'''),
    md('''## 4. Heads and training
Heads of Table 1: Single-1FC, Single-3FC, Multi-3FC, Pool-3FC. Training: MSE on the MOS, Adam
1e-4, lr / 10 every 20 epochs or after 5 without validation improvement, best weights reloaded at
each change (shortened for the demo). Each epoch draws one of the 8 augmentations per image.'''),
    code('''from ku.pipelines.mlsp import build_head, init_output_bias
from ku.data.generators import FeatureSequence
from ku.training import train, paper_schedule, recalibrate_batch_norm
with FeatureStore(store_path) as store:
    feature_shape = tuple(store.feature_shape)
sets = {s: ids[ids["set"] == s] for s in ("training", "validation", "test")}
head = build_head(HEAD, feature_shape, backbone=BACKBONE)
init_output_bias(head, float(sets["training"]["mos"].mean()))
print(HEAD, f"{head.count_params():,} parameters")
train_seq = FeatureSequence(store_path, sets["training"], sets["training"]["mos"].to_numpy("float32"), batch_size=8 if FAST else 16, seed=0)
val_seq = FeatureSequence(store_path, sets["validation"], sets["validation"]["mos"].to_numpy("float32"), batch_size=16, augmentation=0)
schedule = paper_schedule(stage_epochs=2 if FAST else 6, patience=1 if FAST else 3)
result = train(head, train_seq, val_seq, run_dir=WORK / f"hosu_run_{HEAD}", schedule=schedule,
               max_epochs=2 if FAST else 12, verbose=0)
# not in the paper: BatchNormalization statistics of the training features (PreciseBN), since the
# moving averages need more steps than the demo gives (ku.training.batch_norm)
recalibrate_batch_norm(head, train_seq)
train_seq.close(); val_seq.close()
result.history.tail()'''),
    code('''from ku.plots import training_curves
import matplotlib.pyplot as plt
training_curves(result.history); plt.show()'''),
    md('''## 5. Test: average over the 8 stored augmentations, next to the paper
The paper's rows are AVA (19,928 test images, ImageNet backbone); the demo row is a few dozen
generated images.'''),
    code('''from ku.evaluation import predict_augmented, report_table, format_table
test_ids = sets["test"]["image_id"].astype(str).tolist()
y_pred = np.ravel(predict_augmented(head, store_path, test_ids))
y_true = sets["test"]["mos"].to_numpy(float)
table = report_table(y_true, y_pred, paper_rows=("Pool-3FC (*)", "Single-3FC (*)"), label=f"ku {HEAD} {FEATURES} (demo)")
print(format_table(table))'''),
    code('''from ku.plots import scatter_predictions
scatter_predictions(y_true, y_pred, title="demo test set", threshold=5); plt.show()'''),
    md('''## 6. One model for any image
`mlsp_end_to_end` joins extractor and head; its prediction on an image equals the two-stage
pipeline on the uncropped image.'''),
    code('''from ku.models.mlsp import mlsp_end_to_end
from ku.data.images import read_image
model = mlsp_end_to_end(extractor, head)
img = read_image(sets["test"]["image_path"].iloc[0]).astype("float32")
two_stage = head.predict(extractor.predict(img[None], verbose=0), verbose=0)
print("end-to-end", float(model.predict(img[None], verbose=0).ravel()[0]), "two-stage", float(two_stage.ravel()[0]))'''),
]

NOTEBOOKS["02_apm_murray2017"] = [
    md('''
# Murray & Gordo 2017: a deep architecture for unified aesthetic prediction (APM)

**The idea.** Aesthetics needs the whole image, at its own aspect ratio: cropping or warping to
224x224 changes composition. APM runs ResNet-101's convolutional layers on the whole image
(shorter side 500), pools the last feature map with an *adaptive* 3x3 spatial pyramid (the cells
scale with each image, so every image gives 2048 x 9 = 18,432 values), L2-normalises, and predicts
the 10-bin vote distribution with two FC layers and a Huber loss per bin (eq. 1). Extras: a
*semantic* pre-training stage (the network first learns an ImageNet teacher's softmax), an APM-m
global-max branch fused late, and gradient-descent *image modification* with heat maps.

Batches of different-sized images are padded; ku masks the padding exactly (activations outside
each image are zero after every layer), so an image's prediction is the same in any batch.'''),
    code(SETUP),
    code('''from ku.data.demo import load_demo
ids = load_demo(n_images=40 if FAST else 240, seed=0, root=WORK / "demo", split="murray")
parts = {s: ids[ids.set == s].reset_index(drop=True) for s in ("training", "validation", "test")}
# FAST (the test suite's smoke run): VGG16, the smallest APM backbone, on tiny images;
# full: the paper's ResNet-101.
BACKBONE, SHORTER, EPOCHS = ("vgg16", 64, 1) if FAST else ("resnet101", 128, 2)
print({k: len(v) for k, v in parts.items()}, BACKBONE, f"shorter side {SHORTER}px (paper: 500)")'''),
    md('''## 1. Adaptive spatial pyramid pooling over each image's valid region
Bin `i` of `l` over a valid extent `n` covers `[floor(i n / l), ceil((i + 1) n / l))`; values
outside the valid region (padding) are never read.'''),
    code('''from ku.layers import SpatialPyramidPooling
fmap = np.random.default_rng(0).normal(size=(2, 9, 12, 4)).astype("float32")
sizes = np.array([[9, 12], [5, 7]], "int32")          # second map: valid region 5x7, rest is padding
spp = SpatialPyramidPooling(levels=(3,), l2_normalize=True)
v = np.asarray(spp([fmap, sizes]))
fmap2 = fmap.copy(); fmap2[1, 5:] = 99; fmap2[1, :, 7:] = 99   # garbage in the padding
print("output", v.shape, "| L2 norms", np.linalg.norm(v, axis=1).round(6),
      "| padding ignored:", np.array_equal(v, np.asarray(spp([fmap2, sizes]))))'''),
    md('''## 2. The model, with exact masking
Without ImageNet weights (offline: put `resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5` in
`~/.keras/models/`) the backbone is random, announced loudly.'''),
    code('''from ku.models import apm
from ku.pipelines.mlsp import resolve_weights
weights = resolve_weights(BACKBONE, "auto")
model = apm.apm_model(BACKBONE, weights=weights, variant="dist", fc_units=256 if FAST else 4096)
print(model.name, f"{model.count_params():,} parameters; SPP vector", model.get_layer("apm_spp").output.shape[-1])'''),
    code('''from ku.data.aspect_batches import load_image
imgs = [load_image(p, shorter_side=SHORTER) for p in parts["test"].image_path[:3]]
alone = apm.predict_images(model, imgs)["distribution"]
H = max(i.shape[0] for i in imgs); W = max(i.shape[1] for i in imgs)
canvas = np.zeros((len(imgs), H, W, 3), "float32")
for b, im in enumerate(imgs):
    canvas[b, :im.shape[0], :im.shape[1]] = im
padded = np.asarray(model([canvas, np.array([i.shape[:2] for i in imgs], "int32")], training=False))
print("image sizes", [i.shape[:2] for i in imgs], "| padded batch vs alone, largest difference:",
      float(np.abs(padded - alone).max()))'''),
    md('''## 3. Semantic pre-training (§3.3), then aesthetic training (§3.4)
The student learns the teacher's softmax (cached once per image), then its convolutional weights
start the aesthetic model. Batches group images of similar aspect ratio.'''),
    code('''from ku.models import semantic
from ku.training import fit_apm, train_student
teacher_weights = "imagenet" if weights == "imagenet" else None   # no ImageNet -> random teacher (demo only)
sem_ids = parts["training"].iloc[:16] if FAST else parts["training"]
targets, failed = semantic.teacher_targets(sem_ids, WORK / "teacher.h5", weights=teacher_weights,
                                           image_size=64 if FAST else 224, verbose=0)
# A second run reads the cached targets instead of building the teacher, which would leave the
# random generators elsewhere: re-seed, so both runs train the same student and give the same numbers.
keras.utils.set_random_seed(1)
student = semantic.student_model(BACKBONE, weights)
train_student(student, sem_ids, targets, shorter_side=SHORTER, batch_size=8, epochs=1, verbose=0)
print("copied", apm.copy_backbone_weights(student, model), "layers from the student")'''),
    code('''y_train = apm.apm_targets(parts["training"], "dist")
apm.init_output_bias(model, y_train.mean(axis=0))
hist = fit_apm(model, parts["training"], parts["validation"], variant="dist", shorter_side=SHORTER,
               batch_size=8, epochs=EPOCHS, verbose=0)
pd.DataFrame(hist.history)'''),
    md('''## 4. APM-m: a global-max branch and late fusion (§4.1)
New FC layers train at 10x the base rate (`ku.optimizers.LayerwiseSGD`); the fusion weight is fit
on the validation set.'''),
    code('''from ku.data.aspect_batches import aspect_batches
model_m = apm.apm_model(backbone_model=model.get_layer("backbone"), variant="dist", global_max_branch=True,
                        fc_units=256 if FAST else 4096)
for name in ("apm_fc1", "apm_fc2"):
    model_m.get_layer(name).set_weights(model.get_layer(name).get_weights())
apm.init_output_bias(model_m, y_train.mean(axis=0))
fit_apm(model_m, parts["training"], parts["validation"], shorter_side=SHORTER, batch_size=8, epochs=1,
        optimizer=apm.apm_optimizer("sgd", 1e-4, lr_multipliers={apm.new_layer_pattern(): 10.0}), verbose=0)
val_out, _ = apm.predict_batches(model_m, aspect_batches(parts["validation"], 8, shorter_side=SHORTER))
w, _ = apm.fit_fusion_weight(val_out["distribution"], val_out["max_distribution"], apm.apm_targets(parts["validation"]))
print(f"fusion weight of the SPP branch: {w:.2f}")'''),
    md('''## 5. Test, in the layout of Table 1'''),
    code('''from ku import metrics
test = aspect_batches(parts["test"], 8, shorter_side=SHORTER)
out, rows = apm.predict_batches(model_m, test)
dist_true = apm.apm_targets(test.ids.iloc[rows], "dist")
dist_pred = apm.fuse_distributions(out["distribution"], out["max_distribution"], w)
row = metrics.evaluate(None, None, dist_true=dist_true, dist_pred=dist_pred).assign(model="ku APM-m (demo)")
ref = metrics.paper_results(); ref = ref[ref.source.str.startswith("Murray")]
cols = ["model", "KL", "CDLoss", "MSE", "SRCC", "accuracy"]
pd.concat([row[cols], ref[cols]], ignore_index=True)'''),
    code('''from ku import plots
import matplotlib.pyplot as plt
plots.scatter_predictions(apm.predicted_mean(dist_true), apm.predicted_mean(dist_pred), threshold=5, title="APM-m, demo test")
plots.distributions(dist_true, dist_pred, max_items=4); plt.show()'''),
    md('''## 6. Image modification (§4.3)
Gradient descent on the pixels (model fixed, bounded steps) towards a distribution one bin better;
the heat map shows where the pixels changed most.'''),
    code('''from ku.image_modification import modify_image, plot_modification
res = modify_image(model, imgs[0], target="better", n_steps=3 if FAST else 20)
print(f"distance to target: {res.distances[0]:.4f} -> {res.distances[-1]:.4f}; mean {res.mean_before:.2f} -> {res.mean_after:.2f}")
plot_modification(res); plt.show()'''),
]

NOTEBOOKS["03_theme_roi_jia2019"] = [
    md('''
# Jia, Li, He 2019: theme-aware aesthetic distributions from full-resolution photos

**The idea.** Resizing or cropping a photo to 299x299 destroys detail and composition. Jia et al.
zero-pad every photo into one large canvas (800x800 on AVA), image at the top-left, and replace
Inception-v3's first max pooling with **ROI pooling** over the image's box (output 146x146, twice
the usual 73), so the rest of the network sees the photo whole and never the padding. The photo's
**theme** (its AVA challenge, 1,397 of them) goes through a 256-d embedding that is concatenated
with the 2048-d visual vector before a softmax over the 10 score bins; the loss is EMD (r = 2).
Table II: SRCC 0.7611 on AVA. In the demo set, themes change what scores well, so a theme-aware
model has something to learn.'''),
    code(SETUP),
    code('''from ku.data.demo import load_demo
ids = load_demo(n_images=40 if FAST else 240, seed=0, root=WORK / "demo", val_fraction=0.2 if FAST else 0.15)
CANVAS, ROI, EPOCHS = (160, 36, 1) if FAST else (320, 73, 2)
sets = {k: ids[ids["set"] == k] for k in ("training", "validation", "test")}
from PIL import Image
from ku.data.demo import THEMES
THEME_NAME = {int(i): THEMES[int(c)][0] for i, c in zip(ids.theme_index, ids.theme)}   # index -> AVA challenge name
print({k: len(v) for k, v in sets.items()}, "| themes:", sorted(THEME_NAME.values()), f"| canvas {CANVAS} (paper 800), ROI {ROI} (paper 146)")
big = sum(max(Image.open(p).size) > CANVAS for p in ids.image_path)
print(f"{big} of {len(ids)} images are larger than the {CANVAS}x{CANVAS} canvas: scaled down to fit (area, aspect kept)")'''),
    md('''## 1. ROI pooling (eqs. 1-3)
The box is mapped onto the feature map by rounding (eq. 1); bin `m` of the output spans
`floor(m rho) .. ceil((m + 1) rho)` (eqs. 2-3); max pooling. Values outside the box never matter.'''),
    code('''from ku.layers import RoiPooling2D
fmap = np.random.default_rng(0).normal(size=(1, 12, 16, 2)).astype("float32")
box = np.array([[0, 0, 7, 9]], "float32")              # y1, x1, y2, x2 in input pixels (inclusive)
pool = RoiPooling2D(output_size=(3, 3), spatial_scale=1.0)
out = np.asarray(pool([fmap, box]))
fmap2 = fmap.copy(); fmap2[:, 8:] = 99; fmap2[:, :, 10:] = 99   # garbage outside the box
print(out.shape, "| outside the box ignored:", np.array_equal(out, np.asarray(pool([fmap2, box]))))'''),
    md('''## 2. The padded-canvas pipeline and the six augmentations
Original, mirrored, and four corner crops keeping the aspect ratio (1/8 cut off); one drawn per
step in training, all six averaged at test time.'''),
    code('''import matplotlib.pyplot as plt
from ku.data.canvas import canvas_dataset
ds = canvas_dataset(sets["training"], canvas=CANVAS, training=True, batch_size=4, seed=0, log_resized=False)
inputs, dist = next(iter(ds))
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
for ax, img, size, th in zip(axes, inputs["image"].numpy(), inputs["valid_size"].numpy(), inputs["theme"].numpy()):
    ax.imshow(img.astype("uint8")); ax.axis("off")
    ax.set_title(f"{THEME_NAME.get(int(th), 'unknown theme')}\\nimage {int(size[0])} x {int(size[1])} on {CANVAS} x {CANVAS}", fontsize=9)
fig.tight_layout()
plt.show()'''),
    md('''## 3. The model: Inception-v3 with ROI pooling, theme embedding, softmax
All layers other than the replaced pooling keep `keras.applications`' weights. Without ImageNet
weights offline (`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5` in `~/.keras/models/`)
the backbone is random, announced loudly.'''),
    code('''from ku.models.theme_roi import theme_roi_model, predict_views, jia_tables
from ku.training import train_theme_roi
from ku.data.canvas import targets_from_ids
from ku.pipelines.mlsp import resolve_weights
weights = resolve_weights("inception_v3", "auto")
def build(theme):
    keras.utils.set_random_seed(0)
    model = theme_roi_model(weights=weights, canvas=CANVAS, roi_size=ROI, theme=theme, n_themes=int(ids.theme_index.max()) + 1)
    prior = targets_from_ids(sets["training"]).mean(axis=0)          # demo only: start at the mean distribution
    dense = model.get_layer("distribution"); k, _ = dense.get_weights()
    dense.set_weights([k, np.log(np.maximum(prior, 1e-6)).astype("float32")])
    return model
models = {theme: build(theme) for theme in (True, False)}
print(f"{models[True].count_params():,} parameters (with the theme), {models[False].count_params():,} without")'''),
    md('''## 4. Train with and without the theme (EMD r = 2, SGD momentum 0.9, FC layers at 10x lr)'''),
    code('''results = {}
for theme, model in models.items():
    common = dict(canvas=CANVAS, theme=theme, log_resized=False)   # the count was printed above
    train = canvas_dataset(sets["training"], training=True, batch_size=8, seed=0, **common)
    val = canvas_dataset(sets["validation"], training=False, batch_size=8, **common)
    train_theme_roi(model, train, val, run_dir=WORK / f"jia_{'theme' if theme else 'notheme'}", epochs=EPOCHS,
                    halve_every=1, verbose=0)
    results[theme] = predict_views(model, sets["test"], batch_size=8, **common)
true = targets_from_ids(sets["test"]).astype("float64")
t1, t2 = jia_tables(true, results[True], label="ku Pad+ROI+Theme (demo)",
                    extra_rows={"ku Pad+ROI (demo)": (true, results[False])})
t2'''),
    code('''t1'''),
    md('''## 5. Does the theme help here?
With a random backbone and a couple of epochs the visual features learn little, so any gain comes
from the theme offsets; on AVA the paper reports a gain of about 0.01 SRCC (Table III).'''),
    code('''from ku import plots
from ku.evaluation import mean_scores
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, (theme, pred) in zip(axes, results.items()):
    plots.scatter_predictions(mean_scores(true), mean_scores(pred), ax=ax, threshold=5,
                              title="with theme" if theme else "without theme")
plt.show()
plots.distributions(true, results[True], max_items=4); plt.show()'''),
]


def main(names=None):
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        for i, cell in enumerate(cells):  # stable ids: a rebuild changes only what was edited
            cell["id"] = f"{name[:2]}-{i:02d}"
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print("wrote", HERE / f"{name}.ipynb")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
