"""Jia, Li, He 2019: theme-aware ROI model on padded full-resolution images: train -> test -> tables.

With no arguments it runs on the bundled demo set, end to end, twice: with and without the theme
input (Table III's "Pad+ROI+Theme" and "Pad+ROI"), and prints both rows in the layout of Tables I
and II next to the paper's numbers. The demo's themes change what scores well (e.g. motion blur
is rewarded in "Motion Blur"), so the theme can help; the script says whether it did and by how
much. To stay within a few minutes on two CPU cores the demo defaults are smaller than the paper's:
a 320 x 320 canvas (images larger than that are scaled down to fit; the paper: 800) with a 73 x 73
ROI output (paper: 146), batch 8 (paper: 16), and the output layer's bias starts at the log of the
training images' mean distribution (not in the paper).

Without ImageNet weights in Keras' cache the backbone is randomly initialised, announced loudly
(``--backbone_weights=imagenet`` makes that an error instead). Then (demo defaults, ku, not the paper) the
random backbone stays frozen: the pooled features of every training view (the six augmentations)
are computed once and shared by both runs, the visual features are standardised with the training
statistics to unit norm on average (ku.models.theme_roi.adapt_feature_normalization), and the
theme embedding and output layer train on them for 40 epochs of Adam at 1e-3
(ku.training.fit_theme_roi_head; with a frozen backbone the same optimisation as training
on the images). The test runs the whole model on every test view. --train_backbone gives the
paper's end-to-end recipe (2 epochs on the demo, the lr halved every epoch; paper: 30, halved
every 10).

Examples:
  python scripts/train_theme_roi.py
  python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --backbone_weights=imagenet
  python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --mode=resize --theme=off
  python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --canvas=400 --roi_size=73
  python scripts/train_theme_roi.py --dataset=photonet --photonet_labels=/data/pn/labels.txt
  TF_CONFIG=... python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --strategy=multi_worker
"""
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "demo", ["demo", "ava", "photonet"],
                  "demo = the bundled demo set; ava = --ava_root; photonet = --photonet_labels "
                  "(7-point scale, no themes; Jia IV-G).")
flags.DEFINE_string("ava_root", None, "AVA folder (AVA.txt, challenges.txt, images/, "
                    "aesthetics_image_lists/generic_test.jpgl).")
flags.DEFINE_string("photonet_labels", None, "Photo.net label file (ku.data.readers.read_photonet).")
flags.DEFINE_string("photonet_images", None, "Photo.net image folder (default: images/ next to the labels).")
flags.DEFINE_enum("mode", "pad_roi", ["pad_roi", "resize", "resized_pad", "random_crop"],
                  "Input transformation (Table III): pad_roi = padded full resolution + ROI pooling "
                  "(the paper's model); resize = 340x340 then random 299 crop, 20 test views; "
                  "resized_pad = scaled into a 299 canvas, padded; random_crop = random 299 crops of "
                  "the original, 20 test views.")
flags.DEFINE_integer("canvas", None, "Canvas side for --mode=pad_roi (paper: 800; Table IV: 400). "
                     "Default: 800, demo 320.")
flags.DEFINE_integer("roi_size", None, "ROI pooling output side (paper: 146; 73 = Inception-v3's "
                     "own size, Table IV). Default: 146, demo 73. Other modes use 73.")
flags.DEFINE_enum("theme", None, ["on", "off", "both"], "Theme input (III-B): on, off (Pad+ROI) "
                  "or both (two runs, printed side by side). Default: both on the demo, on for AVA, "
                  "off for Photo.net (no themes).")
flags.DEFINE_enum("augment", "flip_crop", ["flip_crop", "flip"], "Training augmentation (IV-B, "
                  "Table V): flip_crop = original, mirrored and four 7/8 corner crops, one drawn per "
                  "step, all six averaged at test time; flip = original and mirrored only.")
flags.DEFINE_enum("roi_op", "pool", ["pool", "align"], "ROI pooling (eqs. 1-3) or ROI align "
                  "(the 'Align' rows of Tables I/II).")
flags.DEFINE_enum("pooling", None, ["roi", "align"], "Deprecated: use --roi_op (roi = pool).")
flags.DEFINE_boolean("masked", False, "Exact padding masking before the ROI pooling (ku; the "
                     "paper uses plain zero padding).")
flags.DEFINE_string("backbone_weights", "auto", "Inception-v3 weights: 'imagenet' (error if "
                    "unavailable), 'auto' (ImageNet if available, else random, announced), 'none', or a file.")
flags.DEFINE_string("weights", None, "Deprecated: use --backbone_weights.")
flags.DEFINE_integer("epochs", None, "Epochs (IV-B: 30, lr halved every 10). Default: 30, demo 2.")
flags.DEFINE_integer("halve_every", None, "Halve the learning rate every N epochs (paper: 10; "
                     "demo default: 1).")
flags.DEFINE_float("learning_rate", 1e-3, "Rate of the convolutional layers; FC layers get 10x (IV-B).")
flags.DEFINE_integer("batch_size", None, "Batch size over all replicas (paper: 16; demo default: 8).")
flags.DEFINE_integer("demo_images", 320, "Images in the demo set (25% of them are the test set).")
flags.DEFINE_boolean("train_backbone", None, "Fine-tune the backbone end to end (IV-B). Default: on, "
                     "except on the demo with a randomly initialised backbone: then it stays frozen "
                     "and the theme embedding and output layer train on the pooled features of "
                     "every training view, computed once (ku.training.fit_theme_roi_head), "
                     "40 epochs of Adam at 1e-3.")
flags.DEFINE_boolean("feature_norm", None, "Standardise the pooled visual features with the training "
                     "images' statistics before the output layer, scaled to unit norm on average "
                     "(ku, not the paper; ku.models.theme_roi.adapt_feature_normalization). "
                     "Default: on when the backbone is frozen, off otherwise.")
flags.DEFINE_float("demo_theme_effects", 0.5, "How much the demo's challenges change the scores "
                   "(ku.data.demo: 0 = scores from the pixels only, 1 = the full theme model).")
flags.DEFINE_string("work_dir", None, "Where the runs go (default runs/theme_roi_<dataset>_<mode>). "
                    "Re-running continues interrupted runs.")
flags.DEFINE_boolean("resume", True, "Continue existing runs in --work_dir.")
flags.DEFINE_integer("seed", 0, "Seed of the split, shuffling and augmentation draws.")
flags.DEFINE_integer("verbose", 1, "0 = quiet, 1 = progress bars.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (ku.distribute): default = one device; mirrored = all local "
                  "GPUs; multi_worker = the workers in the TF_CONFIG environment variable (run the "
                  "same command on every worker; --work_dir on a shared file system to resume). "
                  "--batch_size is the global batch, split between the replicas.")


def fail(message):
    raise SystemExit(f"error: {message}")


def load_ids():
    from ku.data.demo import load_demo
    from ku.data.readers import read_ava, read_photonet

    if FLAGS.dataset == "demo":
        return load_demo(n_images=FLAGS.demo_images, seed=0, val_fraction=0.15,
                         theme_effects=FLAGS.demo_theme_effects)
    if FLAGS.dataset == "ava":
        return read_ava(FLAGS.ava_root, split="hosu", seed=FLAGS.seed)
    return read_photonet(FLAGS.photonet_labels, FLAGS.photonet_images, split="jia", seed=FLAGS.seed)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    from ku import absl_app

    absl_app.deprecated_flag(FLAGS, "weights", "backbone_weights")
    absl_app.deprecated_flag(FLAGS, "pooling", "roi_op", {"roi": "pool"})
    for name in ("canvas", "roi_size", "epochs", "halve_every", "batch_size", "demo_images"):
        value = getattr(FLAGS, name)
        if value is not None and value < 1:
            fail(f"--{name}={value}: must be a positive integer")
    if not FLAGS.learning_rate > 0:
        fail(f"--learning_rate={FLAGS.learning_rate}: must be positive")
    if FLAGS.dataset == "photonet" and FLAGS.theme not in (None, "off"):
        fail("Photo.net has no themes: use --theme=off")
    if FLAGS.dataset == "ava" and not FLAGS.ava_root:
        fail("--dataset=ava needs --ava_root")
    if FLAGS.dataset == "photonet" and not FLAGS.photonet_labels:
        fail("--dataset=photonet needs --photonet_labels")
    from ku import distribute

    # first: a multi-worker strategy connects to the other workers before any TensorFlow work
    try:
        strategy = distribute.get_strategy(FLAGS.strategy)
    except distribute.StrategyConfigError as e:
        fail(str(e))
    if FLAGS.train_backbone is False and not distribute.is_default(strategy):
        fail("--notrain_backbone trains on stored features in one process; drop --strategy")
    ids = load_ids()
    for k in ("training", "validation", "test"):
        if not (ids["set"] == k).any():
            fail(f"no {k} images")
    from ku.pipelines.theme_roi import run_theme_roi

    res = run_theme_roi(
        ids, Path(FLAGS.work_dir or f"runs/theme_roi_{FLAGS.dataset}_{FLAGS.mode}"),
        dataset=FLAGS.dataset, backbone_weights=FLAGS.backbone_weights, mode=FLAGS.mode,
        canvas=FLAGS.canvas, roi_size=FLAGS.roi_size, theme=FLAGS.theme, augment=FLAGS.augment,
        roi_op=FLAGS.roi_op, masked=FLAGS.masked, epochs=FLAGS.epochs,
        halve_every=FLAGS.halve_every, learning_rate=FLAGS.learning_rate,
        batch_size=FLAGS.batch_size, train_backbone=FLAGS.train_backbone,
        feature_norm=FLAGS.feature_norm, seed=FLAGS.seed, resume=FLAGS.resume, strategy=strategy,
        verbose=FLAGS.verbose)
    if res.model_path is not None:  # the chief wrote the model
        from ku.cli import model_commands

        print("\n" + model_commands(res.model_path))
    distribute.end_worker_process(strategy)  # multi-worker: all workers leave together, at once


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)
