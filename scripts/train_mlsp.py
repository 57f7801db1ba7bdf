"""Train a Hosu et al. 2019 head on MLSP features: extract (resumable) -> train -> test.

With no data flags it runs on the bundled demo set (built on first use). With --ava_root it reads
AVA (AVA.txt, challenges.txt, images/, aesthetics_image_lists/generic_test.jpgl) and uses the
paper's split (official test list; the rest 95% training / 5% validation).

Examples:
  python scripts/train_mlsp.py --head=single3fc --features=narrow
  python scripts/train_mlsp.py --head=pool3fc --ava_root=/data/AVA --backbone_weights=imagenet
"""
import os
import sys
from pathlib import Path

from absl import app, flags

from ku import absl_app

FLAGS = flags.FLAGS
flags.DEFINE_string("ava_root", None, "AVA folder (AVA.txt, images/, aesthetics_image_lists/). "
                    "Default: the bundled demo set.")
flags.DEFINE_string("labels_csv", None, "A plain CSV of labels instead of AVA (columns image_id, "
                    "mos, set; see ku.data.readers.read_label_csv).")
flags.DEFINE_string("images_dir", None, "Image folder for --labels_csv (default: next to it).")
flags.DEFINE_enum("head", "pool3fc", ["single1fc", "single3fc", "single3fc_do", "multi3fc", "pool3fc"],
                  "Head of Table 1 (paper 3.2). single3fc_do = Single-3FC (+do), dropout .5/.5/.75.")
flags.DEFINE_enum("features", None, ["wide", "narrow"], "MLSP features: wide = 5x5 area resize, "
                  "narrow = global average (paper 3.1). Default: wide for pool3fc, else narrow.")
flags.DEFINE_enum("pooling", None, ["wide", "narrow"], "Deprecated: use --features.")
flags.DEFINE_enum("backbone", "inception_resnet_v2", ["inception_resnet_v2", "inception_v3"],
                  "ImageNet backbone whose inception blocks are tapped (paper 3.1).")
flags.DEFINE_string("backbone_weights", "auto", "Backbone weights: 'imagenet' (error if "
                    "unavailable), 'auto' (ImageNet if available, else a random backbone, announced), "
                    "'none', or a path to a weights file.")
flags.DEFINE_string("weights", None, "Deprecated: use --backbone_weights.")
flags.DEFINE_enum("target", "mos", ["mos", "distribution"], "Predict the MOS with MSE (paper) or "
                  "the 10-bin distribution with a softmax output and EMD loss.")
flags.DEFINE_integer("batch_size", None, "Batch size on features (paper 3.3: 128; demo: 16, "
                     "since 128 gives the demo only 2 steps per epoch).")
flags.DEFINE_integer("max_epochs", None, "Upper bound on epochs; the staged schedule (lr 1e-4, /10 "
                     "every 20 epochs or after 5 without improvement, stop below 1e-6) usually stops "
                     "first. Default: 60 (AVA), 12 (demo set: two stages of 6; a third stage at lr 1e-6 "
                     "only let the BatchNormalization averages catch up, which --precise_bn does at once).")
flags.DEFINE_integer("stage_epochs", None, "Epochs per learning-rate stage (paper: 20; demo: 6).")
flags.DEFINE_integer("patience", None, "Epochs without improvement before the lr drops (paper: 5; "
                     "demo: 3).")
flags.DEFINE_boolean("precise_bn", True, "After training, set the head's BatchNormalization statistics "
                     "from the training features (PreciseBN; not in the paper: its moving averages need "
                     "more steps than a small set gives). --noprecise_bn keeps the released behaviour.")
flags.DEFINE_integer("demo_images", 320, "Images in the demo set (25% of them are the test set).")
flags.DEFINE_float("demo_image_scale", 0.85, "Demo set rendered at this fraction of its image sizes "
                   "(0.5..1; same crops, scores and splits): 8 crops of every image go through the "
                   "backbone, and 0.85 (28% fewer pixels) keeps the demo under 10 minutes on 2 cores.")
flags.DEFINE_float("val_fraction", None, "Validation share of the non-test images (paper: 0.05; "
                   "demo: 0.15, since 5% of the demo set is ~10 images).")
flags.DEFINE_string("work_dir", None, "Where the feature store, run and plots go "
                    "(default runs/<head>_<data>). Re-running continues an interrupted run.")
flags.DEFINE_boolean("resume", True, "Continue an existing store/run in --work_dir.")
flags.DEFINE_integer("seed", 0, "Seed of the split and the augmentation draws.")
flags.DEFINE_integer("verbose", 1, "0 = quiet, 1 = progress bars.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (ku.distribute): default = one device; mirrored = all "
                  "local GPUs; multi_worker = the workers in the TF_CONFIG environment variable "
                  "(run the same command on every worker; extract the features first). "
                  "--batch_size is the global batch size.")


def fail(message):
    """Stop with ``error: message`` on stderr and exit status 2 (``ku.absl_app.run``; no
    traceback, no flag help)."""
    raise SystemExit(f"error: {message}")


def map_deprecated_flags():
    """--weights -> --backbone_weights, --pooling -> --features (warned; ku.absl_app)."""
    from ku import absl_app

    absl_app.deprecated_flag(FLAGS, "weights", "backbone_weights")
    absl_app.deprecated_flag(FLAGS, "pooling", "features")


def check_data_flags():
    """Cheap checks of the data flags (before any import of TensorFlow)."""
    if FLAGS.ava_root and FLAGS.labels_csv:
        raise app.UsageError("give --ava_root or --labels_csv, not both")
    if FLAGS.ava_root and not Path(FLAGS.ava_root).is_dir():
        raise app.UsageError(f"--ava_root={FLAGS.ava_root}: no such folder")
    if FLAGS.labels_csv and not Path(FLAGS.labels_csv).is_file():
        raise app.UsageError(f"--labels_csv={FLAGS.labels_csv}: no such file")
    if FLAGS.images_dir and not Path(FLAGS.images_dir).is_dir():
        raise app.UsageError(f"--images_dir={FLAGS.images_dir}: no such folder")


def load_ids():
    """The ids table selected by the data flags, and a short name of the data. Bad label files
    stop the script with the reader's message (file and line), without a traceback."""
    check_data_flags()
    try:
        ids, name = _load_ids()
    except (ValueError, FileNotFoundError, UnicodeError) as e:
        fail(str(e))
    if len(ids) == 0:
        missing = ids.attrs.get("missing", [])
        fail(f"no usable images in the {name} labels ({len(missing)} listed images are missing on disk"
             + (f", e.g. id {missing[0]!r}" if missing else "") + ")")
    return ids, name


def _load_ids():
    from ku.data import readers

    if FLAGS.ava_root:
        root = Path(FLAGS.ava_root)
        return readers.read_ava(root, seed=FLAGS.seed, val_fraction=FLAGS.val_fraction or 0.05), "ava"
    if FLAGS.labels_csv:
        path = Path(FLAGS.labels_csv)
        return readers.read_label_csv(path, images_dir=FLAGS.images_dir or path.parent), path.stem
    from ku.data.demo import load_demo

    return load_demo(n_images=FLAGS.demo_images, seed=FLAGS.seed, image_scale=FLAGS.demo_image_scale,
                     val_fraction=FLAGS.val_fraction or 0.15), "demo"


def run(head=None, features=None):
    map_deprecated_flags()
    check_data_flags()  # cheap checks before TensorFlow is imported
    if FLAGS.work_dir:
        absl_app.check_writable(FLAGS.work_dir, "work_dir", folder=True)
    from ku import plots
    from ku.evaluation import format_table
    from ku.pipelines.mlsp import run_mlsp
    from ku.training import paper_schedule

    import keras

    from ku import distribute

    # first: a multi-worker strategy connects to the other workers before any TensorFlow work
    try:
        strategy = distribute.get_strategy(FLAGS.strategy)
    except distribute.StrategyConfigError as e:
        fail(str(e))
    chief = distribute.is_chief(strategy)
    # The script owns the process: seed every generator once, so a random backbone (no ImageNet
    # weights) and the head's initialisation are the same on every run -- a re-run then resumes
    # the feature store instead of finding features of a different random network.
    keras.utils.set_random_seed(FLAGS.seed)
    head = head or FLAGS.head
    features = features or FLAGS.features or ("wide" if head == "pool3fc" else "narrow")
    ids, data_name = load_ids()
    demo = data_name == "demo"
    counts = ids["set"].value_counts().to_dict()
    print(f"data: {data_name}, {len(ids)} images {counts}")
    schedule = paper_schedule(
        stage_epochs=FLAGS.stage_epochs or (6 if demo else 20),
        patience=FLAGS.patience or (3 if demo else 5))
    work_dir = Path(FLAGS.work_dir or f"runs/{head}_{features}_{data_name}")
    if demo and not FLAGS.stage_epochs:
        print("demo set: shortened schedule (12 epochs in stages of 6, patience 3, batch 16; "
              "paper: 60 in stages of 20, 5, 128)")
    res = run_mlsp(ids, work_dir, backbone=FLAGS.backbone, backbone_weights=FLAGS.backbone_weights,
                   features=features, head=head,
                   batch_size=FLAGS.batch_size or (16 if demo else 128),
                   max_epochs=FLAGS.max_epochs or (12 if demo else 60), schedule=schedule,
                   seed=FLAGS.seed, target=FLAGS.target, resume=FLAGS.resume,
                   verbose=FLAGS.verbose, precise_bn=FLAGS.precise_bn,
                   **({} if FLAGS.strategy == "default" else {"strategy": strategy}))
    print()
    print(format_table(res.table))
    if not chief:  # the chief writes the plots
        distribute.end_worker_process(strategy)  # (waits for the chief, then ends this process)
        return res
    scatter = work_dir / "scatter_test.png"
    plots.scatter_predictions(res.y_true, res.y_pred, threshold=5.0, path=scatter,
                              title=f"{head} on {data_name} (test set)")
    curves = work_dir / "training_curves.png"
    import pandas as pd

    plots.training_curves(pd.read_csv(res.run_dir / "history.csv"), path=curves)
    print(f"\nplots: {scatter}, {curves}")
    from ku.cli import model_commands

    print("\n" + model_commands(res.run_dir / "model.keras"))
    print("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()))
    if res.failed:
        print(f"{len(res.failed)} image(s) could not be read and were skipped, e.g. "
              f"{res.failed[0]['image_path']}: {res.failed[0]['error']}")
    distribute.end_worker_process(strategy)  # multi-worker: all workers leave together, at once
    return res


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run()


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)
