"""Jia, Li, He 2019 end to end: the theme-aware ROI model on padded full-resolution images.

    ids table --> canvas views (ku.data.canvas: padded canvas, 6 augmentations, §IV-B)
              --> theme_roi_model (ROI pooling / align over each image's box + theme embedding, §III)
              --> training (end to end, §IV-B; or, with a frozen backbone, the layers after the
                  pooling on every view's stored features: ku.training.fit_theme_roi_head)
              --> test on the mean over the test views --> Tables I, II, III layouts
              --> beside each model: the training-mean row and a ridge probe (ku.baselines)

With ``theme="both"`` it trains the theme and the theme-blind model (Table III "Pad+ROI+Theme"
and "Pad+ROI") sharing one cache of the frozen backbone's features. Every run resumes from its
folder in ``work_dir``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

#: roi_op -> the word in run folder and model names (kept from the first release: resumable)
_ROI_OP_NAME = {"pool": "roi", "align": "align"}
_MODE_LABEL = {"pad_roi": "Pad+ROI", "resize": "Resize", "resized_pad": "Resized Pad",
               "random_crop": "Random Crop"}


@dataclasses.dataclass
class ThemeRoiResult:
    """What :func:`run_theme_roi` produced."""

    table1: object  # pandas DataFrame: Table I layout (distribution metrics) with the paper's rows
    table2: object  # pandas DataFrame: Table II layout (mean / std.dev)
    table3: object  # pandas DataFrame: Table III layout (one row per variant)
    baselines: dict  # variant label -> DataFrame: training mean, ridge probe, the model
    y_true: dict  # variant label -> (N, K) test vote distributions
    y_pred: dict  # variant label -> (N, K) predicted distributions (mean over the test views)
    run_dirs: dict  # variant label -> its run folder (checkpoints, history.csv, test_predictions.npy)
    settings: dict
    seconds: dict  # variant label -> {"train_s", "test_s"}; "total" -> seconds of the whole run
    results_path: Path | None = None  # results.json (None on workers other than the chief)
    model_path: Path | None = None  # model.keras of the first variant (image -> distribution)
    model: object = None  # the first variant's trained keras model


def theme_roi_settings(*, dataset="demo", weights=None, mode="pad_roi", canvas=None, roi_size=None,
                       roi_op="pool", augment="flip_crop", masked=False, epochs=None,
                       halve_every=None, batch_size=None, train_backbone=None, feature_norm=None,
                       head_learning_rate=1e-3, distributed=False, echo=print) -> dict:
    """The settings of a run with the demo / paper defaults resolved (``weights`` already
    resolved: None = a random backbone)."""
    demo = dataset == "demo"
    if mode == "pad_roi":
        canvas = canvas or (320 if demo else 800)
        roi_size = roi_size or (73 if demo else 146)
    else:
        if canvas or roi_size:
            echo(f"note: --mode={mode} uses 299 x 299 inputs and a 73 x 73 ROI; --canvas/--roi_size ignored")
        canvas, roi_size = 299, 73
    s = {"mode": mode, "canvas": canvas, "roi_size": roi_size, "roi_op": roi_op,
         "augment": augment, "masked": masked, "demo": demo,
         "epochs": epochs or (2 if demo else 30),
         "halve_every": halve_every or (1 if demo else 10),
         "batch_size": batch_size or (8 if demo else 16),
         "train_backbone": train_backbone, "feature_norm": feature_norm,
         "head_learning_rate": head_learning_rate}
    if s["train_backbone"] is None:  # a random backbone on the demo stays frozen
        s["train_backbone"] = not (demo and weights is None and not distributed)
    if not s["train_backbone"] and distributed:
        raise ValueError("train_backbone=False trains on stored features in one process; "
                         "use the default strategy")
    if s["feature_norm"] is None:
        s["feature_norm"] = not s["train_backbone"]
    if epochs is None and demo and not s["train_backbone"]:
        s["epochs"] = 40
    return s


def run_theme_roi(ids, work_dir, *, dataset: str = "demo", n_themes: int | None = None,
                  n_bins: int | None = None, backbone_weights="auto", mode: str = "pad_roi",
                  canvas: int | None = None, roi_size: int | None = None, theme: str | None = None,
                  augment: str = "flip_crop", roi_op: str = "pool", masked: bool = False,
                  epochs: int | None = None, halve_every: int | None = None,
                  learning_rate: float = 1e-3, batch_size: int | None = None,
                  train_backbone: bool | None = None, feature_norm: bool | None = None,
                  head_learning_rate: float = 1e-3, seed: int = 0, resume: bool = True,
                  strategy="default", verbose: int = 1, echo=print) -> ThemeRoiResult:
    """Run Jia et al. 2019 on an ids table (``set``: training / validation / test; ``theme_index``).

    The defaults marked "demo" apply with ``dataset="demo"`` (small settings that run in minutes
    on a CPU); otherwise they are the paper's (§IV-B).

    Args:
      ids: the ids table (``load_demo(...)``, ``read_ava(..., split="hosu")``,
        ``read_photonet(..., split="jia")``).
      work_dir: where the runs go (one folder per variant; created, reused to resume).
      dataset: "demo", "ava" or "photonet" (7-point scale, no themes; §IV-G).
      n_themes: theme vocabulary size incl. the unknown index 0 (default: AVA
        ``len(ids.attrs["theme_vocabulary"]) + 1``, demo the largest ``theme_index`` + 1,
        Photo.net 1).
      n_bins: score bins (default 7 on Photo.net, else 10).
      backbone_weights: Inception-v3 weights, "imagenet" | "auto" | "none" | None | path
        (:func:`ku.pipelines.mlsp.resolve_weights`).
      mode: input transformation (Table III): "pad_roi", "resize", "resized_pad", "random_crop".
      canvas: canvas side for "pad_roi" (paper 800; demo 320).
      roi_size: ROI output side (paper 146; demo 73).
      theme: "on", "off" or "both" (default: both on the demo, on for AVA, off for Photo.net).
      augment: "flip_crop" (six views, Table V) or "flip".
      roi_op: "pool" (ROI max pooling, eqs. 1-3) or "align" (ROI align, the "Align" rows).
      masked: exact padding masking before the ROI operation (ku, not the paper).
      epochs: default 30 (demo 2 end to end, 40 with a frozen backbone).
      halve_every: halve the learning rate every N epochs (paper 10; demo 1).
      learning_rate: rate of the convolutional layers; FC layers get 10x (§IV-B).
      batch_size: global batch (paper 16; demo 8).
      train_backbone: fine-tune end to end (default: on, except on the demo with a random
        backbone and one device: then the layers after the pooling train on stored features).
      feature_norm: standardise the pooled features (default: on when the backbone is frozen).
      head_learning_rate: Adam rate of the frozen-backbone path.
      seed: seed of the shuffling and augmentation draws and the initial weights.
      resume: continue existing runs in ``work_dir``.
      strategy: ``tf.distribute`` strategy or "default" | "mirrored" | "multi_worker".
      verbose: 0 quiet, 1 progress bars.
      echo: where the progress and result text goes (``print``).
    Returns:
      :class:`ThemeRoiResult`.
    """
    from ku import distribute
    from ku.pipelines.mlsp import resolve_weights

    if roi_op not in _ROI_OP_NAME:
        raise ValueError(f"roi_op must be one of {tuple(_ROI_OP_NAME)}, got {roi_op!r}")
    strategy = distribute.get_strategy(strategy)
    chief = distribute.is_chief(strategy)
    demo = dataset == "demo"
    t_start = time.time()
    weights = resolve_weights("inception_v3", backbone_weights, echo=echo)
    settings = theme_roi_settings(
        dataset=dataset, weights=weights, mode=mode, canvas=canvas, roi_size=roi_size,
        roi_op=roi_op, augment=augment, masked=masked, epochs=epochs, halve_every=halve_every,
        batch_size=batch_size, train_backbone=train_backbone, feature_norm=feature_norm,
        head_learning_rate=head_learning_rate, distributed=not distribute.is_default(strategy),
        echo=echo)
    theme = theme or ("both" if demo else ("off" if dataset == "photonet" else "on"))
    if dataset == "photonet" and theme != "off":
        raise ValueError("Photo.net has no themes: use theme='off'")
    s = settings
    if demo:
        echo(f"DEMO settings (smaller than the paper's, to run in minutes on a CPU): canvas {s['canvas']} "
             f"(paper 800; larger demo images are scaled down to fit), ROI {s['roi_size']} (paper 146), "
             + (f"{s['epochs']} epochs with the lr halved every {s['halve_every']} "
                f"(paper 30 / 10)" if s["train_backbone"] else
                f"random backbone FROZEN, theme embedding and output layer trained on the stored "
                f"features of every view, {s['epochs']} epochs of Adam at "
                f"{s['head_learning_rate']:g} (paper: 30 epochs of SGD, end to end)")
             + f", batch {s['batch_size']} (paper 16).")
        echo(f"demo set: {len(ids)} images ({ids['set'].value_counts().to_dict()}), "
             f"{ids['theme_index'].nunique()} themes")
    if n_themes is None:
        n_themes = (1 if dataset == "photonet" else ids["theme_index"].max() + 1 if demo
                    else len(ids.attrs["theme_vocabulary"]) + 1)
    n_bins = n_bins or (7 if dataset == "photonet" else 10)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    from ku.evaluation import format_table
    from ku.models.theme_roi import ablation_row, ablation_table, jia_tables

    variants = {"on": [True], "off": [False], "both": [True, False]}[theme]
    results, seconds, probes, run_dirs, first_model, cache = {}, {}, {}, {}, None, {}
    for th in variants:
        label = _MODE_LABEL[mode] + ("+Theme" if th else "") + " (ku)"
        true, pred, secs, model, probe, run_dir = _run_variant(
            ids, th, n_themes, n_bins, weights, s, work_dir, echo, strategy, cache,
            learning_rate=learning_rate, seed=seed, resume=resume, verbose=verbose)
        results[label], seconds[label], probes[label], run_dirs[label] = (true, pred), secs, probe, run_dir
        if first_model is None:  # the one saved as model.keras; later variants are let go
            first_model = model
    first = next(iter(results))
    data_label = "Photo.net" if dataset == "photonet" else "AVA"
    t1, t2 = jia_tables(*results[first], label=first, dataset=data_label,
                        paper_rows=("Pad+ROI+Theme",) if data_label == "Photo.net" else
                        ("Pad+ROI+Theme", "Pad+ROI+Theme (Align)"),
                        extra_rows={k: v for k, v in results.items() if k != first})
    echo(f"\nTable I layout (distribution metrics, smaller is better) -- {data_label}"
         + (" DEMO set: not comparable with the paper's AVA numbers" if demo else ""))
    echo(format_table(t1, digits=4))
    echo("\nTable II layout (mean / std.dev from the predicted distributions)")
    echo(format_table(t2, digits=4))
    echo("\nTable III layout")
    t3 = ablation_table([ablation_row(*v, k) for k, v in results.items()], "Table III")
    echo(format_table(t3, digits=4))
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
    from ku.evaluation import mean_scores

    y_train = mean_scores(targets_from_ids(ids[ids["set"] == "training"]))
    baselines = {}
    for label, (true, pred) in results.items():
        probe, alpha = probes[label]
        base = baseline_table(mean_scores(true), mean_scores(pred), y_train, probe=probe, label=label,
                              probe_label=f"ridge probe on the features before training (alpha {alpha:g})")
        echo(f"\nWhat learning means for {label} (same {len(true)} test images; mean scores):")
        echo(format_table(base))
        baselines[label] = base
    total = time.time() - t_start
    echo(f"\ntime: {total:.0f} s in total; " + ", ".join(
        f"{k}: train {v['train_s']:.0f} s, test {v['test_s']:.0f} s" for k, v in seconds.items()))
    result = ThemeRoiResult(table1=t1, table2=t2, table3=t3, baselines=baselines,
                            y_true={k: v[0] for k, v in results.items()},
                            y_pred={k: v[1] for k, v in results.items()}, run_dirs=run_dirs,
                            settings=settings, seconds={**seconds, "total": total}, model=first_model)
    if not chief:  # the chief holds the same weights and writes the results
        return result
    result.results_path = work_dir / "results.json"
    with open(result.results_path, "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "weights": "imagenet" if weights == "imagenet" else str(weights),
                   "table1": t1.to_dict("records"), "table2": t2.to_dict("records"),
                   "seconds": seconds, "total_seconds": total}, f, indent=1, default=float)
    # the first variant (the paper's model: with the theme where there is one), image -> distribution
    result.model_path = work_dir / "model.keras"
    first_model.save(result.model_path)
    return result


def _run_variant(ids, theme, n_themes, n_bins, weights, s, work_dir, echo, strategy, cache, *,
                 learning_rate, seed, resume, verbose):
    """Train (resumable) and test one model; returns (test distributions, predictions, seconds,
    model, (probe, alpha), run folder). ``cache``: a dict shared by the variants of one run: the
    features of a frozen backbone (the same random backbone in both variants, checked by its
    weights' fingerprint)."""
    import keras

    from ku import distribute
    from ku.data.canvas import canvas_dataset, n_test_views, targets_from_ids
    from ku.models.theme_roi import predict_views, theme_roi_model
    from ku.training import train_theme_roi

    name = f"{s['mode']}_{s['canvas']}_{s['roi_size']}_{_ROI_OP_NAME[s['roi_op']]}_{s['augment']}" \
           f"{'_masked' if s['masked'] else ''}{'_fnorm' if s['feature_norm'] else ''}" \
           f"{'' if s['train_backbone'] else '_frozen'}" \
           f"_{'theme' if theme else 'notheme'}"
    run_dir = Path(work_dir) / name
    sets = {k: ids[ids["set"] == k] for k in ("training", "validation", "test")}
    for k, part in sets.items():
        if len(part) == 0:
            raise ValueError(f"no {k} images")
    t0 = time.time()
    keras.utils.set_random_seed(seed)  # the same initial weights on every worker and re-run
    with distribute.scope(strategy):  # variables mirrored on every replica
        model = theme_roi_model(weights=weights, canvas=s["canvas"], roi_size=s["roi_size"], theme=theme,
                                n_themes=int(n_themes), n_bins=n_bins, masked=s["masked"], roi_op=s["roi_op"],
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

    features = jia.visual_features_model(model)  # one model, so one traced predict function
    key = (weights_fingerprint(features), name.rsplit("_", 1)[0])
    if cache.get("key") != key:
        cache.clear()
        cache["key"] = key

        def probe_features(k):  # (N, C) float64, as predict_views: the mean over the "none" views
            x = jia.view_features(features, sets[k], batch_size=s["batch_size"], **{**common, "augment": "none"})
            return x.mean(axis=1, dtype=np.float64)

        if not s["train_backbone"]:
            echo(f"   features of every view ({s['augment']}) of the training and validation images")
            cache["views"] = {k: jia.view_features(features, sets[k], batch_size=s["batch_size"],
                                                   verbose=verbose, **common)
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
    train = canvas_dataset(sets["training"], training=True, batch_size=s["batch_size"], seed=seed, **common)
    val = canvas_dataset(sets["validation"], training=False, batch_size=s["batch_size"], **common)
    echo(f"\n== {name}: training on {len(sets['training'])} images ({model.count_params():,} parameters, "
         f"{s['epochs']} epochs" + ("" if s["train_backbone"] else
                                    ", backbone FROZEN: the layers after the pooling on stored view features")
         + f") -> {run_dir}")
    if s["train_backbone"]:
        train_theme_roi(model, train, val, run_dir=run_dir, epochs=s["epochs"], learning_rate=learning_rate,
                        halve_every=s["halve_every"], resume=resume, verbose=verbose,
                        strategy=strategy)
    else:  # the layers after the pooling on every view's stored features (the backbone is frozen)
        run_dir.mkdir(parents=True, exist_ok=True)
        th = {k: sets[k]["theme_index"].to_numpy(np.int32) if theme else None for k in ("training", "validation")}
        fit_theme_roi_head(model, cache["views"]["training"], targets_from_ids(sets["training"]),
                               th["training"], cache["views"]["validation"],
                               targets_from_ids(sets["validation"]), th["validation"], epochs=s["epochs"],
                               optimizer=lambda: keras.optimizers.Adam(s["head_learning_rate"]),
                               batch_size=s["batch_size"], seed=seed, verbose=verbose,
                               history_path=run_dir / "history.csv")
    t1 = time.time()
    echo(f"   testing on {len(sets['test'])} images (mean over the test views)")
    pred = predict_views(model, sets["test"], batch_size=s["batch_size"], seed=seed,
                         verbose=verbose, **common)
    true = targets_from_ids(sets["test"]).astype(np.float64)
    if distribute.is_chief(strategy):
        np.save(run_dir / "test_predictions.npy", pred)
    from ku.baselines import ridge_probe
    from ku.evaluation import mean_scores

    probe, alpha = ridge_probe(probe_x["training"], mean_scores(targets_from_ids(sets["training"])),
                               probe_x["test"])
    return true, pred, {"train_s": t1 - t0, "test_s": time.time() - t1}, model, (probe, alpha), run_dir
