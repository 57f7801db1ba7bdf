"""Train and test APM (Murray & Gordo 2017) on whole images: [semantic stage] -> aesthetic
training -> [APM-m branch + late fusion] -> Table 1 metrics, plots and weights.

With no data flags it runs on the bundled demo set (built on first use) with small settings so
that it finishes in a few minutes on 2 CPU cores: images resized to a shorter side of 256 px
(the paper: 500, --shorter_side=500; at 128 px the demo's noise, JPEG and blur degradations are
mostly averaged away: ridge probe SRCC 0.42 vs 0.62 at 256, 2026-11-29), no semantic stage and
no APM-m branch (turn them on with --semantic_epochs / --apm_m_epochs). Without ImageNet weights
in the Keras cache the backbone is randomly initialised, announced loudly; then (demo defaults,
ku, not the paper) the backbone stays frozen and only the two FC layers are trained, on the SPP
vectors computed once (ku.models.apm.fit_apm_head: the same optimisation as training on the
images with a frozen backbone, seconds per epoch), after a feature standardisation fit on the
training images (ku.models.apm.adapt_feature_normalization), with Adam at 1e-4 for 20 epochs.
--train_backbone gives the paper's end-to-end training instead.

With --ava_root it reads AVA with the paper's split (official test list; 2,000 training images
held out for validation, section 4) and uses the paper's settings (section 3.4).

Examples:
  python scripts/train_apm.py
  python scripts/train_apm.py --semantic_epochs=1 --apm_m_epochs=1
  python scripts/train_apm.py --ava_root=/data/AVA --weights=imagenet --shorter_side=500
  TF_CONFIG=... python scripts/train_apm.py --ava_root=/data/AVA --strategy=multi_worker

Every stage (semantic, aesthetic, APM-m) checkpoints after each epoch into --work_dir
(semantic/, train/, apm_m/): re-running the same command continues an interrupted run.
"""
import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("ava_root", None, "AVA folder (AVA.txt, images/, aesthetics_image_lists/). "
                    "Default: the bundled demo set.")
flags.DEFINE_enum("backbone", "resnet101", ["resnet101", "resnet50", "vgg16"],
                  "Convolutional layers (paper 3.2: ResNet-101; VGG16 for the VGG rows of Table 1).")
flags.DEFINE_string("weights", "auto", "Backbone weights: 'imagenet' (error if unavailable), 'auto' "
                    "(ImageNet if available, else a random backbone, announced), 'none', or a path.")
flags.DEFINE_enum("variant", "dist", ["dist", "dist_eucl", "mean"], "Table 1 variant: dist = Huber "
                  "loss on 10 bins (eq. 1, sigma 3), dist_eucl = Euclidean loss, mean = 1 output.")
flags.DEFINE_integer("shorter_side", None, "Resize so the shorter side is this many pixels, aspect "
                     "kept (paper 3.4: 500; demo default 128 so that it runs on a CPU).")
flags.DEFINE_integer("batch_size", None, "Images per batch, over all replicas (batches group "
                     "similar aspect ratios). Default 16 (with --accumulate 8 on AVA = the paper's "
                     "128); with --strategy mirrored/multi_worker on AVA: 128, split between replicas.")
flags.DEFINE_integer("accumulate", None, "Gradient accumulation steps (paper 3.4 batch 128 = 16 x 8 "
                     "on one device; default 8 on AVA, 1 on the demo and under --strategy "
                     "mirrored/multi_worker, where Keras 3 cannot accumulate: raise --batch_size instead).")
flags.DEFINE_integer("epochs", None, "Aesthetic training epochs (default 30 on AVA; on the demo 20 "
                     "with the backbone frozen, 2 with --train_backbone).")
flags.DEFINE_float("learning_rate", None, "Learning rate (paper 3.4: SGD 1e-3, the default; 1e-4 "
                   "for Adam, the default with a frozen random backbone).")
flags.DEFINE_boolean("train_backbone", None, "Fine-tune the backbone end to end (paper 3.4). Default: "
                     "on, except on the demo with a randomly initialised backbone: then it stays "
                     "frozen and the FC layers train on SPP vectors computed once (fit_apm_head).")
flags.DEFINE_boolean("feature_norm", None, "Standardise the SPP vector with the training images' "
                     "statistics before the FC layers (ku, not the paper: "
                     "ku.models.apm.adapt_feature_normalization). Default: on when the backbone is "
                     "frozen, off otherwise.")
flags.DEFINE_integer("decay_steps", 20000, "Divide the learning rate by 10 every this many "
                     "optimizer updates (paper 3.4: 20k iterations). 0 = constant.")
flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "sgd = paper (momentum 0.9, weight decay "
                  "5e-4); adam = Keras Adam. Default: sgd; adam with a frozen random backbone "
                  "(on the demo SGD at 1e-3 reached test SRCC 0.34 in 40 epochs, Adam 0.63 in 20).")
flags.DEFINE_integer("semantic_epochs", None, "Epochs of the semantic stage (paper 3.3: the student "
                     "learns the ImageNet ResNet-101's softmax, then its conv layers start the "
                     "aesthetic model). 0 = skip (demo default); AVA default 3.")
flags.DEFINE_string("teacher_weights", "auto", "Teacher classifier weights: 'imagenet', 'auto' "
                    "(random if unavailable, announced), 'none', or a path to the .h5 file.")
flags.DEFINE_integer("teacher_size", 224, "Square input side of the teacher (ImageNet: 224).")
flags.DEFINE_integer("apm_m_epochs", None, "Epochs of the APM-m stage (paper 4.1: global max "
                     "pooling branch, new FC at 10x the base rate 1e-4, late fusion fit on "
                     "validation). 0 = skip (demo default); AVA default 5.")
flags.DEFINE_enum("fusion_criterion", "huber", ["huber", "cdloss", "kl", "mse"],
                  "Validation criterion minimised by the APM-m fusion weight.")
flags.DEFINE_boolean("masked", True, "Exact padding masking (activations outside each image set "
                     "to zero after every layer). False = plain zero padding.")
flags.DEFINE_integer("fc_units", 4096, "Width of the first FC layer (paper 3.2: 4096).")
flags.DEFINE_integer("demo_images", 320, "Images in the demo set (25% of them are the test set).")
flags.DEFINE_string("work_dir", None, "Output folder (default runs/apm_<variant>_<data>): weights, "
                    "config.json, teacher cache, predictions, metrics and plots.")
flags.DEFINE_integer("seed", 0, "Seed of the split, the batch shuffling and the initial weights.")
flags.DEFINE_boolean("resume", True, "Continue the stages checkpointed in --work_dir (False: start over).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (ku.distribute): default = one device; mirrored = all local "
                  "GPUs; multi_worker = the workers in the TF_CONFIG environment variable (run the "
                  "same command on every worker; --work_dir on a shared file system to resume). "
                  "--batch_size is the global batch; every worker reads only its part of each batch.")
flags.DEFINE_integer("verbose", 1, "0 = quiet, 1 = progress bars.")

TABLE1 = {  # (backbone, variant, semantic, apm_m) -> Murray Table 1 row to print next to the run
    ("vgg16", "mean"): "VGG-ImN-mean",
    ("vgg16", "dist_eucl"): "VGG-ImN-dist-Eucl",
    ("vgg16", "dist"): "VGG-ImN-dist",
}


def paper_row(backbone, variant, semantic, apm_m):
    if backbone == "vgg16":
        return TABLE1.get((backbone, variant), "VGG-ImN-dist")
    if apm_m:
        return "APM (ResNet-AVA-dist-m)"
    return "ResNet-AVA-dist" if semantic else "ResNet-ImN-dist"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    demo = FLAGS.ava_root is None
    data_name = "demo" if demo else "ava"
    shorter = FLAGS.shorter_side or (256 if demo else 500)
    distributed = FLAGS.strategy != "default"
    if FLAGS.train_backbone is False and distributed:
        raise app.UsageError("--notrain_backbone trains the FC layers on stored SPP vectors in one "
                             "process; drop --strategy (or use --train_backbone)")
    if FLAGS.train_backbone is False and FLAGS.apm_m_epochs:
        raise app.UsageError("--apm_m_epochs trains on the images: use it with --train_backbone")
    if distributed and FLAGS.accumulate and FLAGS.accumulate > 1:
        raise SystemExit(f"error: --accumulate={FLAGS.accumulate} with --strategy={FLAGS.strategy}: "
                         "Keras 3 cannot accumulate gradients under tf.distribute; make --batch_size "
                         f"{FLAGS.accumulate}x larger instead (it is the global batch, split between "
                         "the replicas) and drop --accumulate")
    accumulate = FLAGS.accumulate or (1 if demo or distributed else 8)
    batch_size = FLAGS.batch_size or (128 if distributed and not demo else 16)
    sem_epochs = FLAGS.semantic_epochs if FLAGS.semantic_epochs is not None else (0 if demo else 3)
    m_epochs = FLAGS.apm_m_epochs if FLAGS.apm_m_epochs is not None else (0 if demo else 5)
    if FLAGS.variant == "mean" and m_epochs:
        raise app.UsageError("--apm_m_epochs needs a distribution variant (--variant=dist)")
    for name in ("batch_size", "epochs", "shorter_side"):
        v = getattr(FLAGS, name)
        if v is not None and v < (0 if name == "epochs" else 1):
            raise app.UsageError(f"--{name}={v}: must be positive")
    work = Path(FLAGS.work_dir or f"runs/apm_{FLAGS.variant}_{data_name}").expanduser()
    work.mkdir(parents=True, exist_ok=True)

    from ku import distribute

    # first: a multi-worker strategy connects to the other workers before any TensorFlow work
    try:
        strategy = distribute.get_strategy(FLAGS.strategy)
    except distribute.StrategyConfigError as e:
        raise SystemExit(f"error: {e}") from None
    from ku.pipelines.mlsp import resolve_weights

    weights = resolve_weights(FLAGS.backbone, FLAGS.weights)
    train_backbone = FLAGS.train_backbone
    if train_backbone is None:  # a random backbone on the demo stays frozen (module docstring)
        train_backbone = not (demo and weights is None and not distributed and not m_epochs)
    feature_norm = (not train_backbone) if FLAGS.feature_norm is None else FLAGS.feature_norm
    optimizer_kind = FLAGS.optimizer or ("sgd" if train_backbone else "adam")
    learning_rate = FLAGS.learning_rate or (1e-3 if optimizer_kind == "sgd" else 1e-4)
    epochs = FLAGS.epochs if FLAGS.epochs is not None else (
        30 if not demo else 2 if train_backbone else 20)
    # only the chief writes --work_dir; another worker writes a temporary copy (deleted at the end)
    out_dir, cleanup = distribute.worker_dir(work, strategy)
    try:
        run(work, out_dir, strategy, demo, data_name, shorter, epochs, batch_size, accumulate, sem_epochs,
            m_epochs, weights=weights, train_backbone=train_backbone, feature_norm=feature_norm,
            optimizer_kind=optimizer_kind, learning_rate=learning_rate)
    finally:
        cleanup()


def run(work, out_dir, strategy, demo, data_name, shorter, epochs, batch_size, accumulate, sem_epochs,
        m_epochs, *, weights, train_backbone, feature_norm, optimizer_kind, learning_rate):
    """The stages; ``work``: the run's folder, ``out_dir``: where this worker writes (``work`` on
    the chief, a temporary folder on the other workers)."""
    import keras
    import numpy as np
    import pandas as pd

    from ku import distribute, metrics, plots
    from ku.data.aspect_batches import aspect_batches
    from ku.models import apm, semantic
    from ku.training import fit_apm, fit_apm_head, train_student

    chief = distribute.is_chief(strategy)
    t0 = time.time()
    seconds = {}
    if demo:
        from ku.data.demo import load_demo

        ids = load_demo(n_images=FLAGS.demo_images, seed=FLAGS.seed, split="murray")
        print(f"demo set: {len(ids)} images; shorter side {shorter}px (paper: 500), {epochs} epochs")
    else:
        from ku.data.readers import read_ava

        ids = read_ava(FLAGS.ava_root, split="murray", seed=FLAGS.seed)
    parts = {s: ids[ids.set == s].reset_index(drop=True) for s in ("training", "validation", "test")}
    print("split: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))

    arch = dict(backbone=FLAGS.backbone, variant=FLAGS.variant, masked=FLAGS.masked,
                fc_units=FLAGS.fc_units, global_max_branch=False, feature_normalization=feature_norm)
    keras.utils.set_random_seed(FLAGS.seed)  # the same initial weights on every worker and re-run
    with distribute.scope(strategy):  # variables mirrored on every replica
        model = apm.apm_model(weights=weights, **arch)
    n_params = model.count_params()
    print(f"{model.name}: {n_params:,} parameters, SPP vector "
          f"{model.get_layer('apm_spp').output.shape[-1]:,}-d, masking {'on' if FLAGS.masked else 'off'}; "
          + ("backbone fine-tuned end to end" if train_backbone else
             "backbone FROZEN, FC layers trained on SPP vectors computed once")
          + (", SPP vector standardised (training statistics)" if feature_norm else "")
          + f"; {optimizer_kind} lr {learning_rate:g}, {epochs} epochs"
          + (f"; {strategy.num_replicas_in_sync} replicas, global batch {batch_size}"
             if not distribute.is_default(strategy) else ""))

    def optimizer(lr, multipliers=None):  # a factory: fit creates it under the strategy's scope
        return lambda: apm.apm_optimizer(optimizer_kind, lr, decay_steps=FLAGS.decay_steps or None,
                                         lr_multipliers=multipliers,
                                         gradient_accumulation_steps=accumulate if accumulate > 1 else None)

    fit_kw = dict(strategy=strategy, resume=FLAGS.resume, verbose=FLAGS.verbose)

    # ---- semantic stage (3.3)
    if sem_epochs:
        t = time.time()
        tw = FLAGS.teacher_weights
        if str(tw).lower() == "auto":
            try:
                semantic._teacher_weights_path(download=True, timeout=30)
                tw = "imagenet"
            except Exception as e:
                print("WARNING: the ImageNet ResNet-101 classifier is not available, so the "
                      "semantic teacher is RANDOMLY INITIALISED: its targets carry no semantics.\n" + str(e))
                tw = None
        elif str(tw).lower() == "none":
            tw = None
        targets, failed = semantic.teacher_targets(  # a local teacher on every worker
            parts["training"], out_dir / f"teacher_{FLAGS.teacher_size}.h5", weights=tw,
            image_size=FLAGS.teacher_size, verbose=FLAGS.verbose)
        with distribute.scope(strategy):
            student = semantic.student_model(FLAGS.backbone, weights, masked=FLAGS.masked)
        train_student(student, parts["training"], targets, shorter_side=shorter,
                               batch_size=batch_size, epochs=sem_epochs, seed=FLAGS.seed,
                               optimizer=optimizer(learning_rate), run_dir=work / "semantic",
                               **fit_kw)
        n = apm.copy_backbone_weights(student, model)
        print(f"semantic stage: {sem_epochs} epochs; {n} convolutional layers copied into {model.name}")
        del student
        seconds["semantic"] = time.time() - t

    # ---- what learning means: the features of the network before aesthetic training, for a
    # ridge probe beside the trained model (ku.baselines)
    # (every worker computes them when they set the feature standardisation: same statistics)
    t = time.time()
    probe_features = {}
    if chief or feature_norm:
        spp = apm.spp_features_model(model)
        for s in ("training", "validation", "test") if not train_backbone else ("training", "test"):
            if len(parts[s]):
                out, rows = apm.predict_batches(spp, aspect_batches(parts[s], batch_size, shorter_side=shorter))
                probe_features[s] = (next(iter(out.values())), rows)
        del spp
    seconds["spp_features"] = time.time() - t

    # ---- aesthetic training (3.4)
    t = time.time()
    y_train = apm.apm_targets(parts["training"], FLAGS.variant)
    if feature_norm:
        apm.adapt_feature_normalization(model, probe_features["training"][0])
    apm.init_output_bias(model, y_train.mean(axis=0))
    if train_backbone:
        fit_apm(model, parts["training"], parts["validation"], variant=FLAGS.variant,
                    shorter_side=shorter, batch_size=batch_size, epochs=epochs,
                    optimizer=optimizer(learning_rate), seed=FLAGS.seed, run_dir=work / "train", **fit_kw)
        history = pd.read_csv(out_dir / "train" / "history.csv") if chief else pd.DataFrame()
    else:  # the FC layers on the SPP vectors computed once (the backbone is frozen)
        (work / "train").mkdir(parents=True, exist_ok=True)
        x_tr, r_tr = probe_features["training"]
        x_val, r_val = probe_features.get("validation", (None, None))
        fit_apm_head(model, x_tr, y_train[r_tr], x_val,
                         None if x_val is None else apm.apm_targets(parts["validation"], FLAGS.variant)[r_val],
                         variant=FLAGS.variant, batch_size=batch_size, epochs=epochs,
                         optimizer=optimizer(learning_rate), seed=FLAGS.seed, verbose=FLAGS.verbose,
                         history_path=work / "train" / "history.csv")
        history = pd.read_csv(work / "train" / "history.csv")
    seconds["train"] = time.time() - t

    # ---- APM-m (4.1)
    fusion_weight = None
    if m_epochs:
        t = time.time()
        with distribute.scope(strategy):
            model_m = apm.apm_model(backbone_model=model.get_layer("backbone"),
                                    **{**arch, "global_max_branch": True})
        for name in ("apm_fc1", "apm_fc2"):
            model_m.get_layer(name).set_weights(model.get_layer(name).get_weights())
        apm.init_output_bias(model_m, y_train.mean(axis=0))
        fit_apm(model_m, parts["training"], parts["validation"], shorter_side=shorter,
                    batch_size=batch_size, epochs=m_epochs, seed=FLAGS.seed + 1,
                    optimizer=optimizer(learning_rate / 10, {apm.new_layer_pattern(): 10.0}),
                    run_dir=work / "apm_m", **fit_kw)
        if chief:
            hist_m = pd.read_csv(out_dir / "apm_m" / "history.csv")
            history = pd.concat([history, hist_m.add_prefix("apm_m_")], axis=1)
        model = model_m
        val_out, _ = apm.predict_batches(model, aspect_batches(parts["validation"], batch_size,
                                                               shorter_side=shorter))
        fusion_weight, _ = apm.fit_fusion_weight(val_out["distribution"], val_out["max_distribution"],
                                                 apm.apm_targets(parts["validation"]),
                                                 criterion=FLAGS.fusion_criterion)
        print(f"APM-m late fusion weight (SPP branch) fit on validation: {fusion_weight:.2f}")
        seconds["apm_m"] = time.time() - t

    if not chief:  # the chief, holding the same weights, tests and writes the results
        print(f"worker {distribute.worker_info(strategy)['task_id']}: training done; the chief "
              "writes the results")
        return

    # ---- test (section 4)
    t = time.time()
    test = aspect_batches(parts["test"], batch_size, shorter_side=shorter)
    out, rows = apm.predict_batches(model, test)
    test_ids = test.ids.iloc[rows].reset_index(drop=True)
    dist_true = apm.apm_targets(test_ids, "dist")
    if FLAGS.variant == "mean":
        y_pred = out["mean"][:, 0].astype(np.float64)
        row = metrics.evaluate(apm.predicted_mean(dist_true), y_pred)
        dist_pred = None
    else:
        if fusion_weight is not None:
            dist_pred = apm.fuse_distributions(out["distribution"], out["max_distribution"], fusion_weight)
        else:
            dist_pred = apm.normalize_distribution(out["distribution"])
        y_pred = apm.predicted_mean(dist_pred)
        row = metrics.evaluate(None, None, dist_true=dist_true, dist_pred=dist_pred)
    seconds["test"] = time.time() - t
    ref_name = paper_row(FLAGS.backbone, FLAGS.variant, bool(sem_epochs), bool(m_epochs))
    ref = metrics.paper_results()
    ref = ref[ref.source.str.startswith("Murray")]
    cols = ["KL", "CDLoss", "MSE", "SRCC", "accuracy"]
    table = pd.concat([row.reindex(columns=cols).assign(model=f"ku {model.name} ({data_name}, N={len(test_ids)})"),
                       ref[["model", *cols]]], ignore_index=True)[["model", *cols]]
    table["accuracy"] = 100 * table["accuracy"]
    print(f"\nMurray & Gordo 2017 Table 1 layout (closest paper row: {ref_name}); accuracy in %:")
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))
    from ku.baselines import baseline_table, ridge_probe
    from ku.evaluation import format_table

    (x_train, train_rows), (x_test, test_rows) = probe_features["training"], probe_features["test"]
    y_train = apm.predicted_mean(apm.apm_targets(parts["training"].iloc[train_rows], "dist"))
    probe, alpha = ridge_probe(x_train, y_train, x_test)
    probe = pd.Series(probe, index=test_rows).reindex(rows).to_numpy()
    base = baseline_table(apm.predicted_mean(dist_true), y_pred, y_train, probe=probe,
                          label=f"ku {model.name}",
                          probe_label=f"ridge probe on the SPP features before training (alpha {alpha:g})")
    print(f"\nWhat learning means (same {len(test_ids)} test images; mean scores):")
    print(format_table(base))
    base.to_csv(work / "baselines.csv", index=False)
    if demo and weights is None:
        print("(a randomly initialised backbone: compare the model with the rows above, not with the paper)")

    # ---- files
    table.to_csv(work / "metrics.csv", index=False)
    history.to_csv(work / "history.csv", index=False)
    pred = pd.DataFrame({"image_id": test_ids.image_id, "mos": apm.predicted_mean(dist_true),
                         "predicted_mean": y_pred})
    if dist_pred is not None:
        for k in range(dist_pred.shape[1]):
            pred[f"pred_{k + 1}"] = dist_pred[:, k]
    pred.to_csv(work / "test_predictions.csv", index=False)
    plots.scatter_predictions(pred.mos, pred.predicted_mean, threshold=5.0, path=work / "scatter.png",
                              title=f"{model.name} on {data_name} test")
    if len(history):
        plots.training_curves(history, path=work / "training_curves.png")
    if dist_pred is not None:
        plots.distributions(dist_true, dist_pred, path=work / "distributions.png")
    model.save_weights(work / "apm.weights.h5")
    config = {**arch, "global_max_branch": bool(m_epochs), "shorter_side": shorter,
              "train_backbone": bool(train_backbone), "optimizer": optimizer_kind,
              "learning_rate": learning_rate, "epochs": epochs,
              "fusion_weight": fusion_weight, "weights_file": "apm.weights.h5"}
    (work / "config.json").write_text(json.dumps(config, indent=2))
    apm.apm_inference_model(model, fusion_weight).save(work / "model.keras")  # image -> distribution, mean
    seconds["total"] = time.time() - t0
    print(f"\nwrote {work}/: metrics.csv, test_predictions.csv, history.csv, scatter.png, "
          f"training_curves.png{', distributions.png' if dist_pred is not None else ''}, "
          f"apm.weights.h5, config.json, model.keras")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    from ku.cli import model_commands

    print("\n" + model_commands(work / "model.keras"))


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)
