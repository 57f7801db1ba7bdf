"""Extract MLSP features (Hosu et al. 2019 §3.1) of a dataset into an HDF5 feature store.

Full-resolution images, 8 augmentations (87.5% corner crops x mirror), float16. Re-running
continues after the last complete row; --shard=k/n extracts one part into its own file and
--merge joins shard files into one store.

Examples:
  python scripts/extract_mlsp.py --ava_root=/data/AVA --features=wide --out=features/irnv2_wide.h5
  python scripts/extract_mlsp.py --ava_root=/data/AVA --shard=0/4 --out=features/irnv2_wide.h5
  python scripts/extract_mlsp.py --merge=features/irnv2_wide.shard-*.h5 --out=features/irnv2_wide.h5
"""
import glob
import sys
from pathlib import Path

from absl import app, flags

from ku import absl_app

import train_mlsp  # noqa: F401  (defines the data flags: --ava_root, --labels_csv, --backbone, ...)

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output feature store (.h5). Default: "
                    "features/mlsp_<backbone>_<features>_<weights>_<data>.h5")
flags.DEFINE_string("shard", None, "k/n: extract only shard k (0-based) of n, into "
                    "<out>.shard-KK-of-NN.h5")
flags.DEFINE_string("merge", None, "Glob (or comma-separated list) of shard files to merge into "
                    "--out instead of extracting.")
flags.DEFINE_boolean("include_original", False, "Also store the uncropped image as a 9th "
                     "augmentation.")
flags.DEFINE_integer("max_pixels", 50_000_000, "Skip (and report) images with more pixels than "
                     "this instead of running out of memory; 0 = no limit (the paper's full "
                     "resolution). Refused by the file header, before decoding.", lower_bound=0)
flags.DEFINE_integer("flush_every", 16, "Images per write to the store (features, then their "
                     "'complete' flags). A killed run loses at most this many images' work.",
                     lower_bound=1)


def parse_shard(text):
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise app.UsageError(f"--shard={text!r}: expected k/n, e.g. 0/4") from None
    if not 0 <= k < n:
        raise app.UsageError(f"--shard={text!r}: need 0 <= k < n")
    return k, n


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.merge:
        if not FLAGS.out:
            raise app.UsageError("--merge needs --out")
        parts = sorted(p for pat in FLAGS.merge.split(",") for p in glob.glob(pat))
        if not parts:
            raise app.UsageError(f"--merge={FLAGS.merge!r}: no files match")
        absl_app.check_writable(FLAGS.out, "out")
        from ku.data.store import merge_stores

        try:
            print(f"merging {len(parts)} shard(s) -> {merge_stores(parts, FLAGS.out)}")
        except (ValueError, OSError) as e:
            train_mlsp.fail(str(e))
        return
    train_mlsp.map_deprecated_flags()
    # cheap checks first: a bad flag must not cost a backbone build or a dataset scan
    shard = parse_shard(FLAGS.shard) if FLAGS.shard else None
    train_mlsp.check_data_flags()
    absl_app.check_writable(FLAGS.out or "features/store.h5", "out")
    ids, data_name = train_mlsp.load_ids()  # bad labels stop here, before TensorFlow is imported
    import keras

    from ku.data.augment import hosu_augmentations
    from ku.data.store import shard_path
    from ku.extraction import extract_features
    from ku.models.mlsp import mlsp_extractor
    from ku.pipelines.mlsp import resolve_weights

    keras.utils.set_random_seed(FLAGS.seed)
    features = FLAGS.features or "wide"
    w = resolve_weights(FLAGS.backbone, FLAGS.backbone_weights)
    wname = "imagenet" if w == "imagenet" else ("random" if w is None else Path(str(w)).stem)
    out = Path(FLAGS.out or f"features/mlsp_{FLAGS.backbone}_{features}_{wname}_{data_name}.h5")
    if shard:
        out = shard_path(out, shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    extractor = mlsp_extractor(FLAGS.backbone, weights=w, features=features)
    try:
        report = extract_features(
            ids, out, extractor, augmentations=hosu_augmentations(FLAGS.include_original),
            shard=shard, attrs={"backbone": FLAGS.backbone, "weights": wname, "pooling": features},
            resume=FLAGS.resume, progress=FLAGS.verbose > 0, max_pixels=FLAGS.max_pixels or None,
            flush_every=FLAGS.flush_every)
    except (ValueError, OSError) as e:  # a store made with other settings, a full disk (names the file)
        train_mlsp.fail(str(e))
    print(report.summary())
    for f in report.failed[:20]:
        print(f"  skipped {f['image_path']}: {f['error']}")
    if len(report.failed) > 20:
        print(f"  ... and {len(report.failed) - 20} more (the store's 'failed' flags list them all)")


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)
