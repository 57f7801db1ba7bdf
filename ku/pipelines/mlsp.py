"""Hosu et al. 2019 end to end: extract MLSP features, train a head, test with 8-augmentation averages.

    ids table --> mlsp_extractor --> extract_features (HDF5 store, 8 augmentations, §3.1)
              --> head (Single-1FC / Single-3FC / Multi-3FC / Pool-3FC, §3.2)
              --> train (MSE, Adam, staged learning rate, §3.3)
              --> predict_augmented (mean over the stored augmentations) --> metrics (§4)

Every step resumes: the store continues after its last complete row, training continues from
``run_dir/backup``. Nothing here downloads anything except ImageNet weights when asked for.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

HEADS = ("single1fc", "single3fc", "single3fc_do", "multi3fc", "pool3fc")

#: marks a deprecated keyword that was not given (None is a value: a random backbone)
_UNSET = object()

#: the ridge probe holds at most this many feature values (float32) of training images in memory
PROBE_VALUES = 4e8


def resolve_weights(backbone: str, weights, *, echo=print):
    """Turn ``weights`` ("imagenet" | "auto" | "none" | None | path) into what build_backbone takes.

    ``"auto"`` uses ImageNet weights when they are available (Keras cache or downloadable) and
    otherwise a randomly initialised backbone, saying so loudly: the demo must run offline, but a
    random backbone is never used without telling the user. ``"imagenet"`` fails with
    :class:`ku.backbones.WeightsUnavailableError` (naming the file and the cache folder) instead.
    """
    from ku.backbones import WeightsUnavailableError, imagenet_weights_path

    if weights is None or str(weights).lower() in ("none", "random"):
        return None
    if str(weights).lower() == "auto":
        try:
            imagenet_weights_path(backbone)
            return "imagenet"
        except WeightsUnavailableError as e:
            echo("WARNING: ImageNet weights are not available, so this run uses a RANDOMLY "
                 "INITIALISED backbone: features carry no ImageNet knowledge and the numbers are "
                 "not comparable with the paper.\n" + str(e))
            return None
    return weights


def build_head(name: str, feature_shape, *, backbone: str = "inception_resnet_v2",
               output: str = "mos", n_bins: int = 10, x_size: int | None = None,
               input_normalization: bool = False):
    """One of the heads of Hosu et al. 2019 Table 1 for features of ``feature_shape``.

    ``input_normalization=True`` puts a per-channel standardisation first (set it with
    :func:`ku.models.heads.adapt_head_input` before training; not in the paper, see
    :class:`ku.layers.FeatureStandardization`).
    """
    from ku.backbones import mlsp_block_channels
    from ku.models import heads

    name = name.lower().replace("-", "").replace("_", "")
    kw = dict(output=output, n_bins=n_bins, input_normalization=input_normalization)
    if name == "pool3fc":
        if len(feature_shape) != 3:
            raise ValueError(f"head 'pool3fc' needs wide features (H, W, C), got {feature_shape}")
        return heads.pool_3fc(tuple(feature_shape), x_size=x_size or 2048, **kw)
    if len(feature_shape) != 1:
        raise ValueError(f"head {name!r} needs narrow features (C,), got {feature_shape}; "
                         "use --features=narrow or --head=pool3fc")
    if name == "single1fc":
        return heads.single_1fc(feature_shape[0], **kw)
    if name == "single3fc":
        return heads.single_3fc(feature_shape[0], x_size=x_size or 2048, **kw)
    if name == "single3fcdo":
        return heads.single_3fc(feature_shape[0], x_size=x_size or 2048,
                                dropout=heads.DROPOUT_PLUS, **kw)
    if name == "multi3fc":
        return heads.multi_3fc(mlsp_block_channels(backbone), **kw)
    raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")


def init_output_bias(model, value: float, *, zero_kernel: bool = True):
    """Start a MOS head at the training mean: the final 1-unit Dense gets bias ``value`` and (with
    ``zero_kernel``) a zero kernel, so the untrained head predicts exactly ``value``.

    Not in the paper (which trains ~1,800 steps per epoch on AVA, so the output finds the mean
    within the first epoch). With a few hundred images there are only a handful of steps per
    epoch: a zero-initialised bias (MOS ~5.5 away) would spend them all on the offset, and the
    he_normal output kernel adds a random term of variance ~2 (256 unit-variance inputs) to every
    prediction, larger than the scores' own spread on AVA-like data (~0.5-1.5), which the first
    epochs then spend undoing. A zero kernel still learns at once (its gradient is the error times
    the last hidden layer); the layers below start learning from the second step. Measured on
    planted features with 160 steps: test SRCC of Single-1FC 0.42 -> 0.93, Single-3FC 0.29 -> 0.73.
    """
    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense) or last.units != 1 or not last.use_bias:
        raise ValueError(f"{model.name}: last layer is not a 1-unit Dense with bias ({last.name})")
    from ku.models.heads import set_output_bias

    set_output_bias(last, value, zero_kernel=zero_kernel)


@dataclasses.dataclass
class MlspResult:
    """What :func:`run_mlsp` produced."""

    table: object  # pandas DataFrame: this run next to the paper's Table 3
    y_true: np.ndarray
    y_pred: np.ndarray
    test_ids: list
    store_path: Path
    run_dir: Path
    seconds: dict
    failed: list


def run_mlsp(ids, work_dir, *, backbone="inception_resnet_v2", backbone_weights="auto",
             features="wide", head="pool3fc", batch_size=128, max_epochs=60, schedule=None, seed=0,
             target="mos", loss=None, resume=True, verbose=1, echo=print, paper_rows=None,
             strategy=None, jit_compile="auto", precise_bn=True, weights=_UNSET, pooling=_UNSET):
    """Run Hosu et al. 2019 on an ids table (``set`` column: training / validation / test).

    Args:
      ids: the ids table of :mod:`ku.data.readers` (e.g. ``read_ava(...)`` or ``load_demo()``).
      work_dir: folder for the feature store, the run and the plots (created; reused to resume).
      backbone: "inception_resnet_v2" (paper's best, marked (*) in Table 3) or "inception_v3".
      backbone_weights: "auto" | "imagenet" | None | path (see :func:`resolve_weights`).
      features: "wide" (5x5 area pooling) or "narrow" (global average pooling), §3.1.
      head: one of :data:`HEADS` (§3.2, Table 1).
      batch_size: 128 on features (§3.3).
      max_epochs: upper bound; the staged schedule (§3.3) usually stops earlier.
      schedule: a :class:`ku.training.StagedLearningRate` (default: the paper's).
      target: "mos" (MSE, the paper) or "distribution" (softmax over the bins, EMD loss).
      strategy: ``tf.distribute`` strategy or "default" | "mirrored" | "multi_worker"
        (:mod:`ku.distribute`); ``batch_size`` is then the global batch size. With several
        workers every worker runs this function: the feature store must exist and be complete
        (run ``scripts/extract_mlsp.py`` first, e.g. in shards, and merge), ``work_dir`` must be
        a folder all workers share, and only the chief writes the run's files.
      jit_compile: XLA for the head's training steps. ``"auto"``: on with the default strategy
        (stored features have one shape, so XLA compiles once; Pool-3FC steps ~1.7x faster on a
        2-core CPU), otherwise Keras' own choice. ``True`` / ``False`` force it.
      precise_bn: after training, set the head's BatchNormalization statistics to those of the
        training features (one seeded augmentation per image; :func:`ku.training.recalibrate_batch_norm`,
        not in the paper). The moving averages (momentum 0.99) need thousands of steps to forget
        their start, which AVA gives and a few hundred images do not: on the demo set this took
        the test SRCC of the same trained Pool-3FC head from 0.691 to 0.723 (2026-11-30). On AVA
        the change is small; ``False`` keeps the released code's behaviour.
      weights, pooling: deprecated names of ``backbone_weights`` and ``features``; they warn.
    Returns:
      :class:`MlspResult`.
    """
    from ku.data.readers import distributions
    from ku.data.generators import FeatureSequence
    from ku.data.store import FeatureStore
    from ku.evaluation import predict_augmented, report_table, mean_scores
    from ku.extraction import extract_features
    from ku.models.heads import adapt_head_input
    from ku.models.mlsp import mlsp_end_to_end, mlsp_extractor
    from ku import distribute
    from ku.training import train

    backbone_weights = _deprecated("weights", "backbone_weights", weights, backbone_weights)
    features = _deprecated("pooling", "features", pooling, features)
    strategy = distribute.get_strategy(strategy)
    multi_worker = distribute.is_multi_worker(strategy)
    chief = distribute.is_chief(strategy)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    w = resolve_weights(backbone, backbone_weights, echo=echo)
    wname = "imagenet" if w == "imagenet" else ("random" if w is None else Path(str(w)).stem)
    store_path = work_dir / f"mlsp_{backbone}_{features}_{wname}_aug8.h5"

    t = time.time()
    if multi_worker:  # every worker would write the same store: extraction comes first
        with FeatureStore(store_path) if store_path.exists() else _missing_store(store_path) as store:
            failed_rows = np.flatnonzero(store.failed_mask())
            if store.n_complete + failed_rows.size < store.n_rows:
                raise ValueError(f"{store_path} is incomplete ({store.n_complete} of {store.n_rows} rows); "
                                 "finish the extraction (scripts/extract_mlsp.py) before a multi-worker run")
            failed = [{"image_id": str(store.ids[r]), "image_path": "", "error": "extraction failed"}
                      for r in failed_rows]
        report = None
        echo(f"[1/3] multi-worker run: using the extracted features {store_path}")
    extractor = None if multi_worker else mlsp_extractor(backbone, weights=w, features=features)
    if not multi_worker:
        echo(f"[1/3] extracting {features} MLSP features of {len(ids)} images x 8 augmentations "
         f"({backbone}, weights={wname}) -> {store_path}")
        report = extract_features(ids, store_path, extractor, attrs={
            "backbone": backbone, "weights": wname, "pooling": features}, resume=resume,
            progress=verbose > 0)
        failed = report.failed
        echo("      " + report.summary())
    seconds["extract"] = time.time() - t

    with FeatureStore(store_path) as store:
        ok = set(np.asarray(store.ids)[store.complete_mask()])
        feature_shape = tuple(store.feature_shape)
        store_attrs = dict(store.attrs)
    usable = ids[ids["image_id"].astype(str).isin(ok)]
    sets = {s: usable[usable["set"] == s] for s in ("training", "validation", "test")}
    for s, part in sets.items():
        if len(part) == 0:
            raise ValueError(f"no usable {s} images (after dropping {len(failed)} failed)")

    if target == "mos":
        targets = {s: part["mos"].to_numpy(np.float32) for s, part in sets.items()}
        loss = loss or "mse"
    elif target == "distribution":
        targets = {s: distributions(part).astype(np.float32) for s, part in sets.items()}
        loss = loss or "emd"
    else:
        raise ValueError(f"target must be 'mos' or 'distribution', got {target!r}")
    n_bins = targets["training"].shape[1] if target == "distribution" else 10

    t = time.time()
    with distribute.scope(strategy):  # variables mirrored on every replica
        model = build_head(head, feature_shape, backbone=backbone, output=target, n_bins=n_bins,
                           input_normalization=True)
    # features of any scale (e.g. a random backbone's, ~1e-5) reach the paper's layers standardised
    adapt_head_input(model, store_path, sets["training"]["image_id"].astype(str).tolist(), seed=seed)
    if target == "mos":
        init_output_bias(model, float(np.mean(targets["training"])))
    echo(f"[2/3] training {head} ({model.count_params():,} parameters) on "
         f"{len(sets['training'])} images, validating on {len(sets['validation'])}")
    # workers=2: Keras' ordered enqueuer reads the next batches while a step runs (same batches as
    # one worker); with one worker each epoch could wait ~7 s for TensorFlow to start its iterator
    train_seq = FeatureSequence(store_path, sets["training"], targets["training"],
                                batch_size=batch_size, augmentation="random", seed=seed, workers=2)
    # Validation: one fixed augmentation per image, identical every epoch (deterministic).
    val_seq = FeatureSequence(store_path, sets["validation"], targets["validation"],
                              batch_size=batch_size, augmentation=0)
    if loss != "mse":
        from ku.losses import get_loss

        loss = get_loss(loss)
    run_dir = work_dir / f"run_{head}_{features}_{target}"
    try:
        train(model, train_seq, val_seq, run_dir=run_dir, loss=loss, schedule=schedule,
              max_epochs=max_epochs, resume=resume, verbose=verbose, shuffle=False,
              strategy=strategy,
              jit_compile=(distribute.is_default(strategy) or "auto") if jit_compile == "auto"
              else jit_compile)
    finally:  # release the read handles: a later extraction may reopen the store for writing
        train_seq.close()
        val_seq.close()
    test_model = model
    if not distribute.is_default(strategy):  # predict_on_batch would gather every worker's copy
        import keras

        test_model = keras.models.clone_model(model)  # outside the scope: a local model
        test_model.set_weights(model.get_weights())
    if precise_bn:
        from ku.training import recalibrate_batch_norm

        # one seeded augmentation per training image; at most ~20k images (AVA: a seeded subset)
        bn_seq = FeatureSequence(store_path, sets["training"], targets["training"], batch_size=batch_size,
                                 augmentation="random", seed=seed + 1, shuffle=True)
        try:
            n = recalibrate_batch_norm(test_model, bn_seq, max_batches=max(1, 20_000 // batch_size))
        finally:
            bn_seq.close()
        echo(f"      BatchNormalization statistics of {n} layers set from the training features (precise_bn)")
    seconds["train"] = time.time() - t

    t = time.time()
    echo(f"[3/3] testing on {len(sets['test'])} images (mean over all stored augmentations)")
    test_ids = sets["test"]["image_id"].astype(str).tolist()
    y_pred = predict_augmented(test_model, store_path, test_ids, batch_size=batch_size)
    y_pred = mean_scores(y_pred) if np.ndim(y_pred) == 2 and y_pred.shape[1] > 1 else np.ravel(y_pred)
    y_true = sets["test"]["mos"].to_numpy(float)
    seconds["test"] = time.time() - t
    rows = paper_rows if paper_rows is not None else (
        ("Pool-3FC (*)",) if backbone == "inception_resnet_v2" else ("Pool-3FC",))
    label = f"ku {head} {features} ({backbone}, {wname}) on this data"
    table = report_table(y_true, y_pred, paper_rows=rows, label=label)
    # what learning means on this split: the training mean and a ridge probe on the same features
    t = time.time()
    from ku.baselines import ridge_probe, store_features, with_baselines

    y_train = sets["training"]["mos"].to_numpy(float)
    # at most PROBE_VALUES feature values in memory: on AVA the probe sees a seeded subset
    n_probe = int(min(len(y_train), max(3, PROBE_VALUES // int(np.prod(feature_shape)))))
    pick = np.sort(np.random.default_rng(seed).choice(len(y_train), n_probe, replace=False))
    train_ids = sets["training"]["image_id"].astype(str).to_numpy()[pick].tolist()
    probe, alpha = ridge_probe(store_features(store_path, train_ids), y_train[pick],
                               store_features(store_path, test_ids))
    table = with_baselines(
        table, y_true, y_pred, y_train, probe=probe,
        probe_label=f"ridge probe on the stored features ({n_probe} training images, alpha {alpha:g})")
    seconds["baselines"] = time.time() - t
    if chief:  # the other workers hold the same weights
        from ku.backbones import save_backbone_record

        test_model.save(run_dir / "head.keras")
        save_backbone_record(run_dir / "head.keras", store_attrs)  # which backbone the head needs
        # the whole image -> score model, self-contained (`ku predict --model run_dir/model.keras`)
        if extractor is None:
            extractor = mlsp_extractor(backbone, weights=w, features=features)
        mlsp_end_to_end(extractor, test_model).save(run_dir / "model.keras")
        save_backbone_record(run_dir / "model.keras", store_attrs)
        (run_dir / "seconds.json").write_text(json.dumps(seconds, indent=1))
    return MlspResult(table=table, y_true=y_true, y_pred=np.asarray(y_pred), test_ids=test_ids,
                      store_path=store_path, run_dir=run_dir, seconds=seconds,
                      failed=failed)


def _deprecated(old: str, new: str, old_value, new_value):
    """``new_value``, or ``old_value`` given under the deprecated keyword ``old`` (a warning)."""
    if old_value is _UNSET:
        return new_value
    import warnings

    warnings.warn(f"run_mlsp({old}=...) is deprecated, use {new}=", DeprecationWarning, stacklevel=3)
    return old_value


def _missing_store(path):
    raise FileNotFoundError(f"feature store {path} does not exist; a multi-worker run reads features "
                            f"extracted before: scripts/extract_mlsp.py --out={path} with the same "
                            "data flags, --backbone, --features and --backbone_weights (in shards, then --merge)")
