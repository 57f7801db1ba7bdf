"""Extract MLSP features (Hosu et al. 2019 §3.1) of a dataset into an HDF5 feature store.

Full-resolution images, 8 augmentations (87.5% corner crops x mirror), float16. Re-running
continues after the last complete row; --shard=k/n extracts one part into its own file and
--merge joins shard files into one store.

Examples:
  python scripts/extract_mlsp.py --ava_root=/data/AVA --pooling=wide --out=features/irnv2_wide.h5
  python scripts/extract_mlsp.py --ava_root=/data/AVA --shard=0/4 --out=features/irnv2_wide.h5
  python scripts/extract_mlsp.py --merge=features/irnv2_wide.shard-*.h5 --out=features/irnv2_wide.h5
"""
import glob
import sys
from pathlib import Path

from absl import app, flags

import train_mlsp  # noqa: F401  (defines the data flags: --ava_root, --labels_csv, --backbone, ...)

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output feature store (.h5). Default: "
                    "features/mlsp_<backbone>_<pooling>_<weights>_<data>.h5")
flags.DEFINE_string("shard", None, "k/n: extract only shard k (0-based) of n, into "
                    "<out>.shard-KK-of-NN.h5")
flags.DEFINE_string("merge", None, "Glob (or comma-separated list) of shard files to merge into "
                    "--out instead of extracting.")
flags.DEFINE_boolean("include_original", False, "Also store the uncropped image as a 9th "
                     "augmentation.")


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
    from ku.data.store import merge_stores, shard_path

    if FLAGS.merge:
        if not FLAGS.out:
            raise app.UsageError("--merge needs --out")
        parts = sorted(p for pat in FLAGS.merge.split(",") for p in glob.glob(pat))
        if not parts:
            raise app.UsageError(f"--merge={FLAGS.merge!r}: no files match")
        print(f"merging {len(parts)} shard(s) -> {merge_stores(parts, FLAGS.out)}")
        return
    import keras

    from ku.data.augment import hosu_augmentations
    from ku.extraction import extract_features
    from ku.models.mlsp import mlsp_extractor
    from ku.pipelines.mlsp import resolve_weights

    keras.utils.set_random_seed(FLAGS.seed)
    ids, data_name = train_mlsp.load_ids()
    pooling = FLAGS.pooling or "wide"
    w = resolve_weights(FLAGS.backbone, FLAGS.weights)
    wname = "imagenet" if w == "imagenet" else ("random" if w is None else Path(str(w)).stem)
    out = Path(FLAGS.out or f"features/mlsp_{FLAGS.backbone}_{pooling}_{wname}_{data_name}.h5")
    shard = parse_shard(FLAGS.shard) if FLAGS.shard else None
    if shard:
        out = shard_path(out, shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    extractor = mlsp_extractor(FLAGS.backbone, weights=w, pooling=pooling)
    report = extract_features(
        ids, out, extractor, augmentations=hosu_augmentations(FLAGS.include_original),
        shard=shard, attrs={"backbone": FLAGS.backbone, "weights": wname, "pooling": pooling},
        resume=FLAGS.resume, progress=FLAGS.verbose > 0)
    print(report.summary())
    for f in report.failed[:20]:
        print(f"  skipped {f['image_path']}: {f['error']}")


if __name__ == "__main__":
    sys.exit(app.run(main))
