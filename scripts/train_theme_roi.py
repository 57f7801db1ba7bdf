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
(``--weights=imagenet`` makes that an error instead). Then (demo defaults, ku, not the paper) the
random backbone stays frozen: the pooled features of every training view (the six augmentations)
are computed once and shared by both runs, the visual features are standardised with the training
statistics to unit norm on average (ku.models.theme_roi.adapt_feature_normalization), and the
theme embedding and output layer train on them for 40 epochs of Adam at 1e-3
(ku.models.theme_roi.fit_theme_roi_head; with a frozen backbone the same optimisation as training
on the images). The test runs the whole model on every test view. --train_backbone gives the
paper's end-to-end recipe (2 epochs on the demo, the lr halved every epoch; paper: 30, halved
every 10).

Examples:
  python scripts/train_theme_roi.py
  python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --weights=imagenet
  python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --mode=resize --theme=off
  python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --canvas=400 --roi_size=73
  python scripts/train_theme_roi.py --dataset=photonet --photonet_labels=/data/pn/labels.txt
  TF_CONFIG=... python scripts/train_theme_roi.py --dataset=ava --ava_root=/data/AVA --strategy=multi_worker
"""
import json
import sys
import time
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
flags.DEFINE_enum("pooling", "roi", ["roi", "align"], "ROI pooling (eqs. 1-3) or ROI align "
                  "(the 'Align' rows of Tables I/II).")
flags.DEFINE_boolean("masked", False, "Exact padding masking before the ROI pooling (ku; the "
                     "paper uses plain zero padding).")
flags.DEFINE_string("weights", "auto", "Inception-v3 weights: 'imagenet' (error if unavailable), "
                    "'auto' (ImageNet if available, else random, announced), 'none', or a file.")
flags.DEFINE_integer("epochs", None, "Epochs (IV-B: 30, lr halved every 10). Default: 30, demo 2.")
flags.DEFINE_integer("halve_every", None, "Halve the learning rate every N epochs (paper: 10; "
                     "demo default: 1).")
flags.DEFINE_float("learning_rate", 1e-3, "Rate of the convolutional layers; FC layers get 10x (IV-B).")
flags.DEFINE_integer("batch_size", None, "Batch size over all replicas (paper: 16; demo default: 8).")
flags.DEFINE_integer("demo_images", 320, "Images in the demo set (25% of them are the test set).")
flags.DEFINE_boolean("train_backbone", None, "Fine-tune the backbone end to end (IV-B). Default: on, "
                     "except on the demo with a randomly initialised backbone: then it stays frozen "
                     "and the theme embedding and output layer train on the pooled features of "
                     "every training view, computed once (ku.models.theme_roi.fit_theme_roi_head), "
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


def load_ids(echo):
    from ku.data.demo import load_demo
    from ku.data.readers import read_ava, read_photonet

    if FLAGS.dataset == "demo":
        ids = load_demo(n_images=FLAGS.demo_images, seed=0, val_fraction=0.15,
                        theme_effects=FLAGS.demo_theme_effects)
        echo(f"demo set: {len(ids)} images ({ids['set'].value_counts().to_dict()}), "
             f"{ids['theme_index'].nunique()} themes")
        return ids, ids["theme_index"].max() + 1
    if FLAGS.dataset == "ava":
        if not FLAGS.ava_root:
            fail("--dataset=ava needs --ava_root")
        ids = read_ava(FLAGS.ava_root, split="hosu", seed=FLAGS.seed)
        return ids, len(ids.attrs["theme_vocabulary"]) + 1
    if not FLAGS.photonet_labels:
        fail("--dataset=photonet needs --photonet_labels")
    ids = read_photonet(FLAGS.photonet_labels, FLAGS.photonet_images, split="jia", seed=FLAGS.seed)
    return ids, 1


def run_variant(ids, theme, n_themes, n_bins, weights, settings, work_dir, echo, strategy, cache):
    """Train (resumable) and test one model; returns (test distributions, predictions, seconds).
    ``cache``: a dict shared by the variants of one run: the features of a frozen backbone
    (the same random backbone in both variants, checked by its weights' fingerprint)."""
    import keras
    import numpy as np

    from ku import distribute
    from ku.data.canvas import canvas_dataset, n_test_views, targets_from_ids
    from ku.models.theme_roi import predict_views, theme_roi_model
    from ku.training import train_theme_roi

    s = settings
    name = f"{s['mode']}_{s['canvas']}_{s['roi_size']}_{s['pooling']}_{s['augment']}" \
           f"{'_masked' if s['masked'] else ''}{'_fnorm' if s['feature_norm'] else ''}" \
           f"{'' if s['train_backbone'] else '_frozen'}" \
           f"_{'theme' if theme else 'notheme'}"
    run_dir = Path(work_dir) / name
    sets = {k: ids[ids["set"] == k] for k in ("training", "validation", "test")}
    for k, part in sets.items():
        if len(part) == 0:
            fail(f"no {k} images")
    t0 = time.time()
    keras.utils.set_random_seed(FLAGS.seed)  # the same initial weights on every worker and re-run
    with distribute.scope(strategy):  # variables mirrored on every replica
        model = theme_roi_model(weights=weights, canvas=s["canvas"], roi_size=s["roi_size"], theme=theme,
                                n_themes=int(n_themes), n_bins=n_bins, masked=s["masked"], pooling=s["pooling"],
                                feature_normalization=s["feature_norm"])
    if s["demo"]:
        # ku, not the paper: start the softmax at the training images' mean vote distribution.
        # AVA gives ~1,800 steps per epoch to find it; the demo gives ~20.
        prior = targets_from_ids(sets["training"]).mean(axis=0)
        dense = model.get_layer("distribution")
        kernel, _ = dense.get_weights()
        dense.set_weights([kernel, np.log(np.maximum(prior, 1e-6)).astype(np.float32)])
    common = dict(mode=s["mode"], canvas=s["canvas"], augment=s["augment"], theme=theme,
                  log_resized=not s["demo"])
    # the pooled visual features before training, one view per image, feed the ridge probe
    # beside the model (ku.baselines), with the one-hot theme for the theme model; with a frozen
    # backbone also every view of the training and validation images (the head trains on them)
    from ku.backbones import weights_fingerprint
    from ku.models import theme_roi as jia
    from ku.training import fit_theme_roi_head

    key = (weights_fingerprint(jia.visual_features_model(model)), name.rsplit("_", 1)[0])
    if cache.get("key") != key:
        cache.clear()
        cache["key"] = key

        def probe_features(k):  # (N, C) float64, as predict_views: the mean over the "none" views
            x = jia.view_features(model, sets[k], batch_size=s["batch_size"], **{**common, "augment": "none"})
            return x.mean(axis=1, dtype=np.float64)

        if not s["train_backbone"]:
            echo(f"   features of every view ({s['augment']}) of the training and validation images")
            cache["views"] = {k: jia.view_features(model, sets[k], batch_size=s["batch_size"],
                                                   verbose=FLAGS.verbose, **common)
                              for k in ("training", "validation")}
        # where the probe's view is the original alone (pad_roi, resized_pad), it is view 0 of
        # every augmentation set (ku.data.canvas), already among the stored views
        reuse = "views" in cache and n_test_views(s["mode"], "none") == 1
        cache["probe"] = {"training": cache["views"]["training"][:, 0].astype(np.float64) if reuse
                          else probe_features("training"), "test": probe_features("test")}
    probe_x = dict(cache["probe"])
    if s["feature_norm"]:
        jia.adapt_feature_normalization(model, cache["views"]["training"] if "views" in cache
                                        else probe_x["training"])
    if theme:
        for k in probe_x:
            probe_x[k] = np.concatenate(
                [probe_x[k], np.eye(int(n_themes))[sets[k]["theme_index"].to_numpy(int)]], axis=1)
    train = canvas_dataset(sets["training"], training=True, batch_size=s["batch_size"], seed=FLAGS.seed, **common)
    val = canvas_dataset(sets["validation"], training=False, batch_size=s["batch_size"], **common)
    echo(f"\n== {name}: training on {len(sets['training'])} images ({model.count_params():,} parameters, "
         f"{s['epochs']} epochs" + ("" if s["train_backbone"] else
                                    ", backbone FROZEN: the layers after the pooling on stored view features")
         + f") -> {run_dir}")
    if s["train_backbone"]:
        train_theme_roi(model, train, val, run_dir=run_dir, epochs=s["epochs"], learning_rate=FLAGS.learning_rate,
                        halve_every=s["halve_every"], resume=FLAGS.resume, verbose=FLAGS.verbose,
                        strategy=strategy)
    else:  # the layers after the pooling on every view's stored features (the backbone is frozen)
        run_dir.mkdir(parents=True, exist_ok=True)
        th = {k: sets[k]["theme_index"].to_numpy(np.int32) if theme else None for k in ("training", "validation")}
        fit_theme_roi_head(model, cache["views"]["training"], targets_from_ids(sets["training"]),
                               th["training"], cache["views"]["validation"],
                               targets_from_ids(sets["validation"]), th["validation"], epochs=s["epochs"],
                               optimizer=lambda: keras.optimizers.Adam(s["head_learning_rate"]),
                               batch_size=s["batch_size"], seed=FLAGS.seed, verbose=FLAGS.verbose,
                               history_path=run_dir / "history.csv")
    t1 = time.time()
    echo(f"   testing on {len(sets['test'])} images (mean over the test views)")
    pred = predict_views(model, sets["test"], batch_size=s["batch_size"], seed=FLAGS.seed,
                         verbose=FLAGS.verbose, **common)
    true = targets_from_ids(sets["test"]).astype(np.float64)
    if distribute.is_chief(strategy):
        np.save(run_dir / "test_predictions.npy", pred)
    from ku.baselines import ridge_probe
    from ku.evaluation import mean_scores

    probe, alpha = ridge_probe(probe_x["training"], mean_scores(targets_from_ids(sets["training"])),
                               probe_x["test"])
    return true, pred, {"train_s": t1 - t0, "test_s": time.time() - t1}, model, (probe, alpha)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    for name in ("canvas", "roi_size", "epochs", "halve_every", "batch_size", "demo_images"):
        value = getattr(FLAGS, name)
        if value is not None and value < 1:
            fail(f"--{name}={value}: must be a positive integer")
    if not FLAGS.learning_rate > 0:
        fail(f"--learning_rate={FLAGS.learning_rate}: must be positive")
    from ku import distribute
    from ku.pipelines.mlsp import resolve_weights

    # first: a multi-worker strategy connects to the other workers before any TensorFlow work
    try:
        strategy = distribute.get_strategy(FLAGS.strategy)
    except distribute.StrategyConfigError as e:
        fail(str(e))
    chief = distribute.is_chief(strategy)
    echo = print
    demo = FLAGS.dataset == "demo"
    t_start = time.time()
    weights = resolve_weights("inception_v3", FLAGS.weights, echo=echo)
    if FLAGS.mode == "pad_roi":
        canvas = FLAGS.canvas or (320 if demo else 800)
        roi_size = FLAGS.roi_size or (73 if demo else 146)
    else:
        canvas, roi_size = 299, 73
        if FLAGS.canvas or FLAGS.roi_size:
            echo(f"note: --mode={FLAGS.mode} uses 299 x 299 inputs and a 73 x 73 ROI; --canvas/--roi_size ignored")
    theme = FLAGS.theme or ("both" if demo else ("off" if FLAGS.dataset == "photonet" else "on"))
    if FLAGS.dataset == "photonet" and theme != "off":
        fail("Photo.net has no themes: use --theme=off")
    settings = {"mode": FLAGS.mode, "canvas": canvas, "roi_size": roi_size, "pooling": FLAGS.pooling,
                "augment": FLAGS.augment, "masked": FLAGS.masked, "demo": demo,
                "epochs": FLAGS.epochs or (2 if demo else 30),
                "halve_every": FLAGS.halve_every or (1 if demo else 10),
                "batch_size": FLAGS.batch_size or (8 if demo else 16),
                "train_backbone": FLAGS.train_backbone, "feature_norm": FLAGS.feature_norm,
                "head_learning_rate": 1e-3}
    if settings["train_backbone"] is None:  # a random backbone on the demo stays frozen (docstring)
        settings["train_backbone"] = not (demo and weights is None and distribute.is_default(strategy))
    if not settings["train_backbone"] and not distribute.is_default(strategy):
        fail("--notrain_backbone trains on stored features in one process; drop --strategy")
    if settings["feature_norm"] is None:
        settings["feature_norm"] = not settings["train_backbone"]
    if FLAGS.epochs is None and demo and not settings["train_backbone"]:
        settings["epochs"] = 40
    if demo:
        echo(f"DEMO settings (smaller than the paper's, to run in minutes on a CPU): canvas {canvas} "
             f"(paper 800; larger demo images are scaled down to fit), ROI {roi_size} (paper 146), "
             + (f"{settings['epochs']} epochs with the lr halved every {settings['halve_every']} "
                f"(paper 30 / 10)" if settings["train_backbone"] else
                f"random backbone FROZEN, theme embedding and output layer trained on the stored "
                f"features of every view, {settings['epochs']} epochs of Adam at "
                f"{settings['head_learning_rate']:g} (paper: 30 epochs of SGD, end to end)")
             + f", batch {settings['batch_size']} (paper 16).")
    ids, n_themes = load_ids(echo)
    n_bins = 7 if FLAGS.dataset == "photonet" else 10
    work_dir = Path(FLAGS.work_dir or f"runs/theme_roi_{FLAGS.dataset}_{FLAGS.mode}")
    work_dir.mkdir(parents=True, exist_ok=True)

    from ku.models.theme_roi import ablation_row, ablation_table, format_table, jia_tables

    variants = {"on": [True], "off": [False], "both": [True, False]}[theme]
    results, seconds, probes, first_model, cache = {}, {}, {}, None, {}
    for th in variants:
        label = {"pad_roi": "Pad+ROI", "resize": "Resize", "resized_pad": "Resized Pad",
                 "random_crop": "Random Crop"}[FLAGS.mode] + ("+Theme" if th else "") + " (ku)"
        true, pred, secs, model, probe = run_variant(ids, th, n_themes, n_bins, weights, settings, work_dir,
                                                     echo, strategy, cache)
        results[label], seconds[label], probes[label] = (true, pred), secs, probe
        if first_model is None:  # the one saved as model.keras; later variants are let go
            first_model = model
    first = next(iter(results))
    dataset = "Photo.net" if FLAGS.dataset == "photonet" else "AVA"
    t1, t2 = jia_tables(*results[first], label=first, dataset=dataset,
                        paper_rows=("Pad+ROI+Theme",) if dataset == "Photo.net" else
                        ("Pad+ROI+Theme", "Pad+ROI+Theme (Align)"),
                        extra_rows={k: v for k, v in results.items() if k != first})
    echo(f"\nTable I layout (distribution metrics, smaller is better) -- {dataset}"
         + (" DEMO set: not comparable with the paper's AVA numbers" if demo else ""))
    echo(format_table(t1))
    echo("\nTable II layout (mean / std.dev from the predicted distributions)")
    echo(format_table(t2))
    echo("\nTable III layout")
    echo(format_table(ablation_table([ablation_row(*v, k) for k, v in results.items()], "Table III")))
    if len(results) == 2:
        srcc = (t2.iloc[1]["SRCC"], t2.iloc[0]["SRCC"])
        srcc_std = (t2.iloc[1]["SRCC_std"], t2.iloc[0]["SRCC_std"])
        emd = (t1.iloc[1]["EMD_r1"], t1.iloc[0]["EMD_r1"])
        better = [srcc[1] > srcc[0], emd[1] < emd[0]]
        verdict = "helped" if all(better) else ("did not help" if not any(better) else "helped on one of the two")
        echo(f"\nTheme effect (no theme -> theme): SRCC(mean) {srcc[0]:.4f} -> {srcc[1]:.4f} "
             f"({srcc[1] - srcc[0]:+.4f}), SRCC(std) {srcc_std[0]:.4f} -> {srcc_std[1]:.4f}, EMD(r=1) "
             f"{emd[0]:.4f} -> {emd[1]:.4f} ({emd[1] - emd[0]:+.4f}): the theme {verdict} "
             f"(SRCC of the mean, EMD r=1) on {len(results[first][0])} test images.")
    from ku.baselines import baseline_table
    from ku.data.canvas import targets_from_ids
    from ku.evaluation import format_table as format_scores
    from ku.evaluation import mean_scores

    y_train = mean_scores(targets_from_ids(ids[ids["set"] == "training"]))
    for label, (true, pred) in results.items():
        probe, alpha = probes[label]
        base = baseline_table(mean_scores(true), mean_scores(pred), y_train, probe=probe, label=label,
                              probe_label=f"ridge probe on the features before training (alpha {alpha:g})")
        echo(f"\nWhat learning means for {label} (same {len(true)} test images; mean scores):")
        echo(format_scores(base))
    total = time.time() - t_start
    echo(f"\ntime: {total:.0f} s in total; " + ", ".join(
        f"{k}: train {v['train_s']:.0f} s, test {v['test_s']:.0f} s" for k, v in seconds.items()))
    if not chief:  # the chief holds the same weights and writes the results
        return
    with open(work_dir / "results.json", "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "weights": "imagenet" if weights == "imagenet" else str(weights),
                   "table1": t1.to_dict("records"), "table2": t2.to_dict("records"),
                   "seconds": seconds, "total_seconds": total}, f, indent=1, default=float)
    # the first variant (the paper's model: with the theme where there is one), image -> distribution
    first_model.save(work_dir / "model.keras")
    from ku.cli import model_commands

    echo("\n" + model_commands(work_dir / "model.keras"))


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)
