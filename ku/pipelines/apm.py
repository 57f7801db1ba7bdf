"""Murray & Gordo 2017 (APM) end to end on whole images:

    ids table --> [semantic stage: a student learns an ImageNet teacher's softmax, §3.3]
              --> aesthetic training of the SPP model (§3.2, §3.4; or, with a frozen backbone,
                  the FC layers on SPP vectors computed once: ku.training.fit_apm_head)
              --> [APM-m branch + late fusion fit on validation, §4.1]
              --> test (Table 1 metrics, §4) beside the training-mean row and a ridge probe
              --> metrics.csv, baselines.csv, test_predictions.csv, history.csv, plots,
                  apm.weights.h5, config.json, model.keras

Every stage checkpoints after each epoch into ``work_dir`` (semantic/, train/, apm_m/): calling
:func:`run_apm` again with the same arguments continues an interrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

#: (backbone, variant) -> Murray Table 1 row printed next to a VGG16 run
TABLE1 = {
    ("vgg16", "mean"): "VGG-ImN-mean",
    ("vgg16", "dist_eucl"): "VGG-ImN-dist-Eucl",
    ("vgg16", "dist"): "VGG-ImN-dist",
}


def paper_row(backbone: str, variant: str, semantic: bool, apm_m: bool) -> str:
    """The Murray & Gordo 2017 Table 1 row closest to a run with these settings."""
    if backbone == "vgg16":
        return TABLE1.get((backbone, variant), "VGG-ImN-dist")
    if apm_m:
        return "APM (ResNet-AVA-dist-m)"
    return "ResNet-AVA-dist" if semantic else "ResNet-ImN-dist"


@dataclasses.dataclass
class ApmResult:
    """What :func:`run_apm` produced. On a worker other than the chief (multi-worker runs) only
    ``work_dir``, ``settings`` and ``seconds`` are set: the chief tests and writes the files."""

    work_dir: Path
    settings: dict  # the resolved settings (as in config.json)
    seconds: dict  # seconds per stage: semantic, spp_features, train, apm_m, test, total
    table: object = None  # pandas DataFrame: this run next to Murray Table 1 (accuracy in %)
    baselines: object = None  # pandas DataFrame: training mean, ridge probe, the model
    history: object = None  # pandas DataFrame: the training history (APM-m columns "apm_m_...")
    y_true: np.ndarray | None = None  # test mean scores (from the vote distributions)
    y_pred: np.ndarray | None = None  # predicted mean scores
    dist_true: np.ndarray | None = None  # (N, 10) test vote distributions
    dist_pred: np.ndarray | None = None  # (N, 10) predicted distributions (None for "mean")
    test_ids: list | None = None
    fusion_weight: float | None = None  # APM-m late fusion weight of the SPP branch
    plots: dict = dataclasses.field(default_factory=dict)  # name -> path of the .png files
    checkpoints: dict = dataclasses.field(default_factory=dict)  # stage -> its run folder
    weights_path: Path | None = None  # apm.weights.h5
    model_path: Path | None = None  # model.keras: image -> distribution, mean
    model: object = None  # the trained keras model (APM-m with its branch when trained)


def check_apm_args(*, variant="dist", train_backbone=None, apm_m_epochs=None, accumulate=None,
                   distributed=False, batch_size=None, epochs=None, shorter_side=None):
    """ValueError for settings :func:`run_apm` cannot run (before any TensorFlow work)."""
    if train_backbone is False and distributed:
        raise ValueError("train_backbone=False trains the FC layers on stored SPP vectors in one "
                         "process; use the default strategy (or train_backbone=True)")
    if train_backbone is False and apm_m_epochs:
        raise ValueError("apm_m_epochs trains on the images: use it with train_backbone=True")
    if distributed and accumulate and accumulate > 1:
        raise ValueError(f"accumulate={accumulate} under a tf.distribute strategy: Keras 3 cannot "
                         "accumulate gradients there; make batch_size larger instead")
    if variant == "mean" and apm_m_epochs:
        raise ValueError("apm_m_epochs needs a distribution variant (variant='dist')")
    for name, v in (("batch_size", batch_size), ("epochs", epochs), ("shorter_side", shorter_side)):
        if v is not None and v < (0 if name == "epochs" else 1):
            raise ValueError(f"{name}={v}: must be positive")


def run_apm(ids, work_dir, *, demo: bool = False, data_name: str | None = None,
            backbone: str = "resnet101", backbone_weights="auto", variant: str = "dist",
            shorter_side: int | None = None, batch_size: int | None = None,
            accumulate: int | None = None, epochs: int | None = None,
            learning_rate: float | None = None, train_backbone: bool | None = None,
            feature_norm: bool | None = None, decay_steps: int = 20000,
            optimizer: str | None = None, semantic_epochs: int | None = None,
            teacher_weights="auto", teacher_size: int = 224, apm_m_epochs: int | None = None,
            fusion_criterion: str = "huber", masked: bool = True, fc_units: int = 4096,
            seed: int = 0, resume: bool = True, strategy="default", verbose: int = 1,
            echo=print) -> ApmResult:
    """Run APM (Murray & Gordo 2017) on an ids table (``set``: training / validation / test).

    The defaults marked "demo" depend on ``demo`` (the bundled demo set: small settings that run
    in minutes on a CPU) and otherwise are the paper's (§3.4).

    Args:
      ids: the ids table of :mod:`ku.data.readers` (``read_ava(..., split="murray")`` or
        ``load_demo(..., split="murray")``).
      work_dir: output folder (created; reused to resume).
      demo: the ids are the bundled demo set (demo defaults, and a random backbone stays frozen).
      data_name: short name of the data in labels (default "demo" / "ava").
      backbone: "resnet101" (§3.2), "resnet50" or "vgg16" (Table 1's VGG rows).
      backbone_weights: "imagenet" | "auto" | "none" | None | path
        (:func:`ku.pipelines.mlsp.resolve_weights`).
      variant: "dist" (Huber loss on 10 bins, eq. 1), "dist_eucl" or "mean" (Table 1).
      shorter_side: resize the shorter side to this (paper 500; demo 256).
      batch_size: global batch (default 16; 128 under a distributed strategy on AVA).
      accumulate: gradient accumulation steps (default 8 on AVA with one device, else 1).
      epochs: aesthetic epochs (30; demo: 20 with a frozen backbone, 2 end to end).
      learning_rate: default 1e-3 for SGD, 1e-4 for Adam.
      train_backbone: fine-tune end to end (default: on, except on the demo with a random
        backbone, one device and no APM-m stage: then the FC layers train on stored SPP vectors).
      feature_norm: standardise the SPP vector (default: on when the backbone is frozen).
      decay_steps: divide the learning rate by 10 every this many updates (0: constant).
      optimizer: "sgd" (paper) or "adam" (default with a frozen backbone).
      semantic_epochs: epochs of the semantic stage (§3.3; 0 skips; default 3, demo 0).
      teacher_weights: "imagenet" | "auto" | "none" | path of the teacher classifier.
      teacher_size: square input side of the teacher.
      apm_m_epochs: epochs of the APM-m stage (§4.1; 0 skips; default 5, demo 0).
      fusion_criterion: validation criterion of the late fusion weight.
      masked: exact padding masking.
      fc_units: width of the first FC layer (4096).
      seed: seed of the batch shuffling and the initial weights.
      resume: continue the stages checkpointed in ``work_dir``.
      strategy: ``tf.distribute`` strategy or "default" | "mirrored" | "multi_worker"
        (:mod:`ku.distribute`); create it before other TensorFlow work.
      verbose: 0 quiet, 1 progress bars.
      echo: where the progress and result text goes (``print``).
    Returns:
      :class:`ApmResult`.
    """
    from ku import distribute
    from ku.pipelines.mlsp import resolve_weights

    data_name = data_name or ("demo" if demo else "ava")
    strategy = distribute.get_strategy(strategy)
    distributed = not distribute.is_default(strategy)
    check_apm_args(variant=variant, train_backbone=train_backbone, apm_m_epochs=apm_m_epochs,
                   accumulate=accumulate, distributed=distributed, batch_size=batch_size,
                   epochs=epochs, shorter_side=shorter_side)
    shorter = shorter_side or (256 if demo else 500)
    accumulate = accumulate or (1 if demo or distributed else 8)
    batch_size = batch_size or (128 if distributed and not demo else 16)
    sem_epochs = semantic_epochs if semantic_epochs is not None else (0 if demo else 3)
    m_epochs = apm_m_epochs if apm_m_epochs is not None else (0 if demo else 5)
    work = Path(work_dir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    weights = resolve_weights(backbone, backbone_weights, echo=echo)
    if train_backbone is None:  # a random backbone on the demo stays frozen (fit_apm_head)
        train_backbone = not (demo and weights is None and not distributed and not m_epochs)
    feature_norm = (not train_backbone) if feature_norm is None else feature_norm
    optimizer_kind = optimizer or ("sgd" if train_backbone else "adam")
    learning_rate = learning_rate or (1e-3 if optimizer_kind == "sgd" else 1e-4)
    epochs = epochs if epochs is not None else (30 if not demo else 2 if train_backbone else 20)
    if demo:
        echo(f"demo set: {len(ids)} images; shorter side {shorter}px (paper: 500), {epochs} epochs")
    settings = dict(
        backbone=backbone, variant=variant, masked=masked, fc_units=fc_units, weights=weights,
        train_backbone=bool(train_backbone), feature_norm=feature_norm, optimizer=optimizer_kind,
        learning_rate=learning_rate, epochs=epochs, shorter_side=shorter, batch_size=batch_size,
        accumulate=accumulate, semantic_epochs=sem_epochs, apm_m_epochs=m_epochs,
        decay_steps=decay_steps, teacher_weights=teacher_weights, teacher_size=teacher_size,
        fusion_criterion=fusion_criterion, seed=seed, resume=resume, verbose=verbose,
        demo=demo, data_name=data_name)
    # only the chief writes work_dir; another worker writes a temporary copy (deleted at the end)
    out_dir, cleanup = distribute.worker_dir(work, strategy)
    try:
        return _run(ids, work, out_dir, strategy, settings, echo)
    finally:
        cleanup()


def _run(ids, work, out_dir, strategy, s, echo) -> ApmResult:
    """The stages; ``work``: the run's folder, ``out_dir``: where this worker writes (``work`` on
    the chief, a temporary folder on the other workers)."""
    import keras
    import pandas as pd

    from ku import distribute, metrics, plots
    from ku.data.aspect_batches import aspect_batches
    from ku.models import apm, semantic
    from ku.training import fit_apm, fit_apm_head, train_student

    chief = distribute.is_chief(strategy)
    t0 = time.time()
    seconds = {}
    weights, train_backbone, feature_norm = s["weights"], s["train_backbone"], s["feature_norm"]
    shorter, batch_size, accumulate = s["shorter_side"], s["batch_size"], s["accumulate"]
    variant, seed, verbose = s["variant"], s["seed"], s["verbose"]
    sem_epochs, m_epochs, learning_rate = s["semantic_epochs"], s["apm_m_epochs"], s["learning_rate"]
    demo, data_name = s["demo"], s["data_name"]
    parts = {k: ids[ids.set == k].reset_index(drop=True) for k in ("training", "validation", "test")}
    echo("split: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))

    arch = dict(backbone=s["backbone"], variant=variant, masked=s["masked"], fc_units=s["fc_units"],
                global_max_branch=False, feature_normalization=feature_norm)
    keras.utils.set_random_seed(seed)  # the same initial weights on every worker and re-run
    with distribute.scope(strategy):  # variables mirrored on every replica
        model = apm.apm_model(weights=weights, **arch)
    n_params = model.count_params()
    echo(f"{model.name}: {n_params:,} parameters, SPP vector "
         f"{model.get_layer('apm_spp').output.shape[-1]:,}-d, masking {'on' if s['masked'] else 'off'}; "
         + ("backbone fine-tuned end to end" if train_backbone else
            "backbone FROZEN, FC layers trained on SPP vectors computed once")
         + (", SPP vector standardised (training statistics)" if feature_norm else "")
         + f"; {s['optimizer']} lr {learning_rate:g}, {s['epochs']} epochs"
         + (f"; {strategy.num_replicas_in_sync} replicas, global batch {batch_size}"
            if not distribute.is_default(strategy) else ""))

    def optimizer(lr, multipliers=None):  # a factory: fit creates it under the strategy's scope
        return lambda: apm.apm_optimizer(s["optimizer"], lr, decay_steps=s["decay_steps"] or None,
                                         lr_multipliers=multipliers,
                                         gradient_accumulation_steps=accumulate if accumulate > 1 else None)

    fit_kw = dict(strategy=strategy, resume=s["resume"], verbose=verbose)
    checkpoints = {}

    # ---- semantic stage (3.3)
    if sem_epochs:
        t = time.time()
        tw = s["teacher_weights"]
        if str(tw).lower() == "auto":
            try:
                semantic._teacher_weights_path(download=True, timeout=30)
                tw = "imagenet"
            except Exception as e:
                echo("WARNING: the ImageNet ResNet-101 classifier is not available, so the "
                     "semantic teacher is RANDOMLY INITIALISED: its targets carry no semantics.\n" + str(e))
                tw = None
        elif str(tw).lower() == "none":
            tw = None
        targets, failed = semantic.teacher_targets(  # a local teacher on every worker
            parts["training"], out_dir / f"teacher_{s['teacher_size']}.h5", weights=tw,
            image_size=s["teacher_size"], verbose=verbose)
        with distribute.scope(strategy):
            student = semantic.student_model(s["backbone"], weights, masked=s["masked"])
        train_student(student, parts["training"], targets, shorter_side=shorter,
                               batch_size=batch_size, epochs=sem_epochs, seed=seed,
                               optimizer=optimizer(learning_rate), run_dir=work / "semantic",
                               **fit_kw)
        checkpoints["semantic"] = work / "semantic"
        n = apm.copy_backbone_weights(student, model)
        echo(f"semantic stage: {sem_epochs} epochs; {n} convolutional layers copied into {model.name}")
        del student
        seconds["semantic"] = time.time() - t

    # ---- what learning means: the features of the network before aesthetic training, for a
    # ridge probe beside the trained model (ku.baselines)
    # (every worker computes them when they set the feature standardisation: same statistics)
    t = time.time()
    probe_features = {}
    if chief or feature_norm:
        spp = apm.spp_features_model(model)
        for k in ("training", "validation", "test") if not train_backbone else ("training", "test"):
            if len(parts[k]):
                out, rows = apm.predict_batches(spp, aspect_batches(parts[k], batch_size, shorter_side=shorter))
                probe_features[k] = (next(iter(out.values())), rows)
        del spp
    seconds["spp_features"] = time.time() - t

    # ---- aesthetic training (3.4)
    t = time.time()
    y_train = apm.apm_targets(parts["training"], variant)
    if feature_norm:
        apm.adapt_feature_normalization(model, probe_features["training"][0])
    apm.init_output_bias(model, y_train.mean(axis=0))
    if train_backbone:
        fit_apm(model, parts["training"], parts["validation"], variant=variant,
                    shorter_side=shorter, batch_size=batch_size, epochs=s["epochs"],
                    optimizer=optimizer(learning_rate), seed=seed, run_dir=work / "train", **fit_kw)
        history = pd.read_csv(out_dir / "train" / "history.csv") if chief else pd.DataFrame()
    else:  # the FC layers on the SPP vectors computed once (the backbone is frozen)
        (work / "train").mkdir(parents=True, exist_ok=True)
        x_tr, r_tr = probe_features["training"]
        x_val, r_val = probe_features.get("validation", (None, None))
        fit_apm_head(model, x_tr, y_train[r_tr], x_val,
                         None if x_val is None else apm.apm_targets(parts["validation"], variant)[r_val],
                         variant=variant, batch_size=batch_size, epochs=s["epochs"],
                         optimizer=optimizer(learning_rate), seed=seed, verbose=verbose,
                         history_path=work / "train" / "history.csv")
        history = pd.read_csv(work / "train" / "history.csv")
    checkpoints["train"] = work / "train"
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
                    batch_size=batch_size, epochs=m_epochs, seed=seed + 1,
                    optimizer=optimizer(learning_rate / 10, {apm.new_layer_pattern(): 10.0}),
                    run_dir=work / "apm_m", **fit_kw)
        checkpoints["apm_m"] = work / "apm_m"
        if chief:
            hist_m = pd.read_csv(out_dir / "apm_m" / "history.csv")
            history = pd.concat([history, hist_m.add_prefix("apm_m_")], axis=1)
        model = model_m
        val_out, _ = apm.predict_batches(model, aspect_batches(parts["validation"], batch_size,
                                                               shorter_side=shorter))
        fusion_weight, _ = apm.fit_fusion_weight(val_out["distribution"], val_out["max_distribution"],
                                                 apm.apm_targets(parts["validation"]),
                                                 criterion=s["fusion_criterion"])
        echo(f"APM-m late fusion weight (SPP branch) fit on validation: {fusion_weight:.2f}")
        seconds["apm_m"] = time.time() - t

    if not chief:  # the chief, holding the same weights, tests and writes the results
        echo(f"worker {distribute.worker_info(strategy)['task_id']}: training done; the chief "
             "writes the results")
        return ApmResult(work_dir=work, settings=s, seconds=seconds, checkpoints=checkpoints)

    # ---- test (section 4)
    t = time.time()
    test = aspect_batches(parts["test"], batch_size, shorter_side=shorter)
    out, rows = apm.predict_batches(model, test)
    test_ids = test.ids.iloc[rows].reset_index(drop=True)
    dist_true = apm.apm_targets(test_ids, "dist")
    if variant == "mean":
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
    ref_name = paper_row(s["backbone"], variant, bool(sem_epochs), bool(m_epochs))
    ref = metrics.paper_results()
    ref = ref[ref.source.str.startswith("Murray")]
    cols = ["KL", "CDLoss", "MSE", "SRCC", "accuracy"]
    table = pd.concat([row.reindex(columns=cols).assign(model=f"ku {model.name} ({data_name}, N={len(test_ids)})"),
                       ref[["model", *cols]]], ignore_index=True)[["model", *cols]]
    table["accuracy"] = 100 * table["accuracy"]
    echo(f"\nMurray & Gordo 2017 Table 1 layout (closest paper row: {ref_name}); accuracy in %:")
    echo(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))
    from ku.baselines import baseline_table, ridge_probe
    from ku.evaluation import format_table

    (x_train, train_rows), (x_test, test_rows) = probe_features["training"], probe_features["test"]
    y_train = apm.predicted_mean(apm.apm_targets(parts["training"].iloc[train_rows], "dist"))
    probe, alpha = ridge_probe(x_train, y_train, x_test)
    probe = pd.Series(probe, index=test_rows).reindex(rows).to_numpy()
    base = baseline_table(apm.predicted_mean(dist_true), y_pred, y_train, probe=probe,
                          label=f"ku {model.name}",
                          probe_label=f"ridge probe on the SPP features before training (alpha {alpha:g})")
    echo(f"\nWhat learning means (same {len(test_ids)} test images; mean scores):")
    echo(format_table(base))
    base.to_csv(work / "baselines.csv", index=False)
    if demo and weights is None:
        echo("(a randomly initialised backbone: compare the model with the rows above, not with the paper)")

    # ---- files
    table.to_csv(work / "metrics.csv", index=False)
    history.to_csv(work / "history.csv", index=False)
    pred = pd.DataFrame({"image_id": test_ids.image_id, "mos": apm.predicted_mean(dist_true),
                         "predicted_mean": y_pred})
    if dist_pred is not None:
        for k in range(dist_pred.shape[1]):
            pred[f"pred_{k + 1}"] = dist_pred[:, k]
    pred.to_csv(work / "test_predictions.csv", index=False)
    paths = {"scatter": work / "scatter.png"}
    plots.scatter_predictions(pred.mos, pred.predicted_mean, threshold=5.0, path=paths["scatter"],
                              title=f"{model.name} on {data_name} test")
    if len(history):
        paths["training_curves"] = work / "training_curves.png"
        plots.training_curves(history, path=paths["training_curves"])
    if dist_pred is not None:
        paths["distributions"] = work / "distributions.png"
        plots.distributions(dist_true, dist_pred, path=paths["distributions"])
    model.save_weights(work / "apm.weights.h5")
    config = {**arch, "global_max_branch": bool(m_epochs), "shorter_side": shorter,
              "train_backbone": bool(train_backbone), "optimizer": s["optimizer"],
              "learning_rate": learning_rate, "epochs": s["epochs"],
              "fusion_weight": fusion_weight, "weights_file": "apm.weights.h5"}
    (work / "config.json").write_text(json.dumps(config, indent=2))
    apm.apm_inference_model(model, fusion_weight).save(work / "model.keras")  # image -> distribution, mean
    seconds["total"] = time.time() - t0
    echo(f"\nwrote {work}/: metrics.csv, test_predictions.csv, history.csv, scatter.png, "
         f"training_curves.png{', distributions.png' if dist_pred is not None else ''}, "
         f"apm.weights.h5, config.json, model.keras")
    echo("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return ApmResult(work_dir=work, settings=s, seconds=seconds, table=table, baselines=base,
                     history=history, y_true=apm.predicted_mean(dist_true), y_pred=np.asarray(y_pred),
                     dist_true=dist_true, dist_pred=dist_pred,
                     test_ids=test_ids.image_id.astype(str).tolist(), fusion_weight=fusion_weight,
                     plots=paths, checkpoints=checkpoints, weights_path=work / "apm.weights.h5",
                     model_path=work / "model.keras", model=model)
