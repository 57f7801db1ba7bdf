"""Score images with a trained MLSP head: image (any size) -> backbone -> MLSP -> head -> MOS.

The head is a `.keras` file written by scripts/train_mlsp.py (runs/.../head.keras) or a released
ava-mlsp `model_best_weights.h5` (--released). Images are scored at full resolution, as in the
released predict_mlsp_wide notebook, under ku's size policy (docs/bad_input.md "Size policy", the
same as `ku predict`): more than --max_pixels pixels (read from the header) -> skipped; a shorter
side below the backbone's 75 px -> upscaled (aspect kept; strips longer than 20x their width are
skipped). Unreadable images and non-regular files (named pipes, devices) are reported and skipped.

Each score is appended to --out as soon as it is computed, so an interrupted run (Ctrl-C, a kill)
keeps what it scored; running the same command again continues where it stopped (the settings
are recorded in <out>.ku-run.json; other settings start afresh).

Example:
  python scripts/predict_mlsp.py --head_path=runs/pool3fc_wide_demo/run_pool3fc_wide_mos/head.keras \
      --images=photos/ --out=scores.csv
"""
import os
import sys
from pathlib import Path

from absl import app, flags

from ku import absl_app

FLAGS = flags.FLAGS
flags.DEFINE_string("head_path", None, "Trained head (.keras) or released weights (.h5 with "
                    "--released; without --head_path, --released downloads them).")
flags.DEFINE_enum("released", None, ["single3fc", "pool3fc"], "The released ava-mlsp head (narrow "
                  "= single3fc, wide = pool3fc): --head_path is its model_best_weights.h5, or, "
                  "without --head_path, the file is downloaded once into Keras' cache (~/.keras/"
                  "models) and checked by size and sha256.")
flags.DEFINE_string("images", None, "An image file, a folder (searched recursively) or a CSV with "
                    "an image_path column.")
flags.DEFINE_string("out", "predictions.csv", "Output CSV: image_path, mos.")
flags.DEFINE_enum("backbone", "inception_resnet_v2", ["inception_resnet_v2", "inception_v3"],
                  "Backbone the head was trained on.")
flags.DEFINE_string("backbone_weights", "imagenet", "Backbone weights: imagenet | auto | none | path.")
flags.DEFINE_string("weights", None, "Deprecated: use --backbone_weights.")
flags.DEFINE_integer("seed", 0, "Seed (only matters for a random backbone).")
flags.DEFINE_integer("max_pixels", 50_000_000, "Skip (and report) images with more pixels than "
                     "this (read from the header, before decoding); 0 = no limit.", lower_bound=0)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ku import absl_app

    absl_app.deprecated_flag(FLAGS, "weights", "backbone_weights")
    for name in ("head_path", "images"):
        if not getattr(FLAGS, name) and not (name == "head_path" and FLAGS.released):
            raise app.UsageError(f"--{name} is required")
    # cheap checks first (before TensorFlow is imported and the backbone built)
    if FLAGS.head_path:
        head_path = Path(FLAGS.head_path)
    else:  # --released without a file: Keras' cache, downloaded and checked when missing
        from ku.models.released import ReleasedWeightsError, released_weights_path

        try:
            head_path = released_weights_path(f"mlsp-{FLAGS.released}", echo=print)
        except ReleasedWeightsError as e:
            raise SystemExit(f"error: --released={FLAGS.released}: {e}")
    if not head_path.is_file():
        raise app.UsageError(f"--head_path={head_path}: no such file")
    src = Path(FLAGS.images)
    if not src.exists():
        raise app.UsageError(f"--images={src}: no such file or folder")
    absl_app.check_writable(FLAGS.out, "out")
    import pandas as pd

    if src.is_file() and src.suffix.lower() == ".csv":
        try:
            table = pd.read_csv(src)
        except (ValueError, UnicodeError, OSError) as e:
            raise SystemExit(f"error: --images={src}: cannot read the CSV: {e}")
        if "image_path" not in table.columns:
            raise SystemExit(f"error: --images={src}: no 'image_path' column (columns: {list(table.columns)})")
    import keras

    import ku.layers  # noqa: F401  (registers ku layers for load_model)
    import ku.models.heads as heads
    from ku.backbones import BACKBONES
    from ku.cli import _RowJournal, predict_resumable
    from ku.data.images import list_images
    from ku.export import make_scoring_module
    from ku.models.mlsp import mlsp_end_to_end, mlsp_extractor
    from ku.pipelines.mlsp import resolve_weights

    keras.utils.set_random_seed(FLAGS.seed)
    if src.is_dir():
        paths = list_images(src)
    elif src.suffix.lower() == ".csv":
        paths = [Path(str(p)) for p in table["image_path"]]
    else:
        paths = [src]
    try:
        if FLAGS.released:
            head = heads.pool_3fc() if FLAGS.released == "pool3fc" else heads.single_3fc()
            heads.load_released_weights(head, head_path)
        else:
            head = keras.models.load_model(head_path)
    except Exception as e:  # not a Keras file, truncated, wrong released layout, ...
        raise SystemExit(f"error: --head_path={head_path}: cannot load the head: {type(e).__name__}: {e}")
    features = "wide" if len(head.input_shape) == 4 else "narrow"
    extractor = mlsp_extractor(FLAGS.backbone, weights=resolve_weights(FLAGS.backbone, FLAGS.backbone_weights),
                               features=features)
    try:
        model = mlsp_end_to_end(extractor, head)
    except ValueError as e:  # the head was trained on other features (names both shapes)
        raise SystemExit(f"error: --head_path={head_path}: {e} (check --backbone)")
    # the size policy of `ku predict` and the export: min side of the backbone, upscaled
    module = make_scoring_module(model, family="mlsp", min_side=BACKBONES[FLAGS.backbone].min_size)
    items = [(p.stem, str(p), 0) for p in paths]
    run_info = {"script": "predict_mlsp", "head_path": str(head_path.absolute()),
                "released": FLAGS.released, "backbone": FLAGS.backbone, "weights": FLAGS.backbone_weights,
                "seed": FLAGS.seed, "max_pixels": FLAGS.max_pixels}
    Path(FLAGS.out).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
    journal = _RowJournal(Path(FLAGS.out).expanduser(), ["image_path", "mos"], run_info)
    n_done = sum(p in journal.done for _, p, _ in items)
    if n_done:
        print(f"{n_done} image(s) already scored in {FLAGS.out} by an earlier run; continuing")
    errors = predict_resumable(
        module, items, journal, max_pixels=FLAGS.max_pixels or None, label="predict_mlsp", where=FLAGS.out,
        on_row=lambda r: journal.add({"image_path": r["image_path"], "mos": r["mean_score"]}))
    if errors is None:
        return 130
    preds = journal.finish(items)
    print(f"wrote {len(preds)} prediction(s) to {FLAGS.out}")
    if len(errors):
        print(f"{len(errors)} unreadable image(s) skipped:")
        for _, r in errors.iterrows():
            print(f"  {r['image_path']}: {r['error']}")


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)
