"""Data-parallel training on ``tf.distribute``: one machine or several.

``get_strategy("default" | "mirrored" | "multi_worker")`` picks the engine:

* ``"default"``: TensorFlow's default strategy (one device, no distribution);
* ``"mirrored"``: ``tf.distribute.MirroredStrategy`` over the local GPUs (or the CPU);
* ``"multi_worker"``: ``tf.distribute.MultiWorkerMirroredStrategy``: synchronous data parallelism
  over the workers listed in the ``TF_CONFIG`` environment variable (all-reduce of the gradients
  by collective ops; gRPC between machines), e.g. for worker 1 of 2::

      TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                  "task": {"type": "worker", "index": 1}}'

  Every worker runs the same command; worker 0 (or the task of type ``"chief"``) is the chief.

Conventions in ku (what :func:`ku.training.train` does with a ``strategy``):

* The model and its optimizer are created under ``strategy.scope()`` (the caller builds the model
  there; ``train`` creates and compiles the optimizer there and refuses a model built outside).
* ``--batch_size`` is the **global** batch size (Hosu et al. 2019 §3.3: 128): each of the ``R``
  replicas gets ``1/R`` of every batch (:func:`per_replica_batch_size`), so the gradient step is
  that of the single-process batch and the paper's learning rate applies unchanged.
* Data: feature stores are sharded explicitly: every worker reads only its slice of every global
  batch (:func:`distribute_features`, ``ku.data.generators.feature_dataset(input_context=...)``);
  a ``FeatureSequence`` passed to ``train`` is converted to that (a Keras ``PyDataset`` cannot be
  split by ``MultiWorkerMirroredStrategy``). Other ``tf.data`` datasets get the ``DATA``
  auto-shard policy (:func:`with_data_sharding`).
* Files: only the chief writes into ``run_dir``; the other workers write the same files into a
  temporary directory that is deleted at the end (:func:`worker_dir`), the standard Keras
  multi-worker pattern (saving may involve collective ops, so every worker must save). Resuming
  needs ``run_dir`` on a file system all workers see; ``train`` checks that the workers agree on
  the epoch to resume from and fails with a clear message otherwise.

Keras 3 (3.15) + ``MultiWorkerMirroredStrategy``: ``Model.fit`` does not run out of the box
(keras-team/keras#20585). Two defects, both worked around here (:func:`prepare_model`,
:func:`patch_keras_for_multi_worker`):

1. ``fit``/``evaluate`` build the model from the first batch with ``strategy.reduce("MEAN",
   batch)``, which fails for multi-worker ``PerReplica`` values ("Attempt to convert a value
   (PerReplica ...) to a Tensor") -- and in any case consumes one pass over the data. ku builds from
   the dataset's ``element_spec`` instead (per model, no data read).
2. The logs of every step are reduced with ``strategy.reduce("MEAN", v, axis=0)``, which fails on
   the scalar loss ("Invalid reduction dimension 0 for input with 0 dimensions"); ku reduces
   them with ``axis=None`` (mean over replicas) in multi-worker mode only.

Also: by default Keras' BatchNormalization normalises every replica's slice with the slice's own
statistics and updates the moving statistics per replica (they drift apart between workers, and
training differs from the single-process batch). :func:`prepare_model` switches BatchNormalization
to ``synchronized=True`` (statistics of the global batch; exact single-process semantics), and
:class:`SyncBatchStatistics` averages all non-trainable float variables over the replicas before
every validation and at the end of training, so all workers hold identical weights in any case.
``Model.predict`` under ``MultiWorkerMirroredStrategy`` gathers the outputs of all workers
(``_multi_worker_concat``), so a full-set prediction on every worker returns each row once per
worker; :class:`ku.training.ValidationCorrelation` therefore predicts locally in multi-worker mode.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import types
import weakref
from pathlib import Path

import keras
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "STRATEGIES",
    "StrategyConfigError",
    "read_tf_config",
    "loopback_tf_configs",
    "get_strategy",
    "is_default",
    "is_multi_worker",
    "worker_info",
    "is_chief",
    "num_replicas",
    "per_replica_batch_size",
    "with_data_sharding",
    "distribute_features",
    "distribute_sequence",
    "worker_dir",
    "worker_run_dir",
    "scope",
    "distribute_input",
    "all_workers_agree",
    "barrier",
    "end_worker_process",
    "check_optimizer",
    "predict_locally",
    "sync_non_trainable",
    "SyncBatchStatistics",
    "prepare_model",
    "patch_keras_for_multi_worker",
]

STRATEGIES = ("default", "mirrored", "multi_worker")


class StrategyConfigError(ValueError):
    """Missing or malformed distribution settings (``TF_CONFIG``, strategy name)."""


# ---------------------------------------------------------------------------------------------
# TF_CONFIG and strategies

def read_tf_config(env=None) -> dict:
    """Parse and check ``TF_CONFIG`` (from ``env``, default ``os.environ``).

    Returns the dict (``cluster``: ``{"worker": ["host:port", ...], ["chief": [...]]}``, ``task``:
    ``{"type", "index"}``). Raises :class:`StrategyConfigError` naming what is wrong: unset, not
    JSON, no ``cluster``/``task``, a task type not in the cluster, an index out of range, an
    address that is not ``host:port``.
    """
    env = os.environ if env is None else env
    text = env.get("TF_CONFIG")
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text or not text.strip():
        raise StrategyConfigError("--strategy=multi_worker needs the environment variable TF_CONFIG "
                                  "(the cluster and this worker's task), " + example)
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise StrategyConfigError(f"TF_CONFIG is not valid JSON ({e}): {text[:200]!r}; " + example) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict) or not isinstance(cfg.get("task"), dict):
        raise StrategyConfigError(f"TF_CONFIG needs the keys 'cluster' and 'task' (objects): {text[:200]!r}; " + example)
    cluster, task = cfg["cluster"], cfg["task"]
    if not cluster.get("worker") and not cluster.get("chief"):
        raise StrategyConfigError(f"TF_CONFIG['cluster'] lists no 'worker' (or 'chief') addresses: {cluster!r}")
    for kind, addrs in cluster.items():
        if not isinstance(addrs, list) or not addrs:
            raise StrategyConfigError(f"TF_CONFIG['cluster'][{kind!r}] must be a non-empty list of 'host:port'")
        for a in addrs:
            host, sep, port = str(a).rpartition(":")
            if not sep or not host or not port.isdigit():
                raise StrategyConfigError(f"TF_CONFIG['cluster'][{kind!r}]: {a!r} is not 'host:port'")
    ttype, index = task.get("type"), task.get("index")
    if ttype not in cluster:
        raise StrategyConfigError(f"TF_CONFIG['task']['type']={ttype!r} is not in the cluster ({sorted(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[ttype]):
        raise StrategyConfigError(f"TF_CONFIG['task']['index']={index!r} out of range for "
                                  f"{len(cluster[ttype])} {ttype!r} task(s)")
    return cfg


def loopback_tf_configs(n_workers: int = 2, host: str = "127.0.0.1") -> list:
    """``TF_CONFIG`` values (JSON strings), one per worker, for a cluster of ``n_workers`` processes
    on this machine (free ports on ``host``, picked now): to try or test multi-worker training
    without a cluster, start the same command ``n_workers`` times, each with its own value::

        for i, cfg in enumerate(loopback_tf_configs(2)):
            subprocess.Popen([...,"--strategy=multi_worker"], env={**os.environ, "TF_CONFIG": cfg})

    (The ports are free when picked; start the workers right away.)"""
    import socket

    n = int(n_workers)
    if n < 1:
        raise ValueError(f"loopback_tf_configs: n_workers must be >= 1, got {n_workers!r}")
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    cluster = {"worker": [f"{host}:{p}" for p in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(n)]


def get_strategy(name="default", *, devices=None):
    """The ``tf.distribute`` strategy for ``--strategy=name`` (see the module docstring).

    Args:
        name: ``"default"``, ``"mirrored"`` or ``"multi_worker"``; a ``tf.distribute.Strategy``
            is returned unchanged; None means ``"default"``.
        devices: ``"mirrored"`` only: device names (default: all local GPUs, else the CPU).
    Create it at the start of the program, before other TensorFlow work (required by
    ``MultiWorkerMirroredStrategy``, which connects the workers here and waits for all of them).
    """
    import tensorflow as tf

    if name is None:
        name = "default"
    if isinstance(name, tf.distribute.Strategy):
        if isinstance(name, tf.distribute.MultiWorkerMirroredStrategy):
            patch_keras_for_multi_worker()
        return name
    if name not in STRATEGIES:
        raise StrategyConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    read_tf_config()  # a clear error before TensorFlow's own
    patch_keras_for_multi_worker()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    info = worker_info(strategy)
    logger.info("multi-worker strategy: task %s:%d of %d workers (chief: %s), %d replicas", info["task_type"],
                info["task_id"], info["num_workers"], info["is_chief"], strategy.num_replicas_in_sync)
    return strategy


def is_default(strategy) -> bool:
    """True for None and TensorFlow's default (non-distributing) strategy."""
    return strategy is None or type(strategy).__name__ == "_DefaultDistributionStrategy"


def is_multi_worker(strategy) -> bool:
    """True for a ``MultiWorkerMirroredStrategy`` that spans more than one worker."""
    import tensorflow as tf

    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and bool(strategy.extended._in_multi_worker_mode()))


def worker_info(strategy=None) -> dict:
    """``{"task_type", "task_id", "num_workers", "is_chief"}`` of this process (one worker, chief,
    when not multi-worker). The chief is the ``"chief"`` task, or worker 0 when there is none."""
    if strategy is None or not is_multi_worker(strategy):
        return {"task_type": None, "task_id": 0, "num_workers": 1, "is_chief": True}
    resolver = strategy.cluster_resolver
    ttype, tid = resolver.task_type, int(resolver.task_id or 0)
    tasks = _task_names(strategy)
    chief = ttype == "chief" or (ttype == "worker" and tid == 0 and "chief:0" not in tasks)
    return {"task_type": ttype, "task_id": tid, "num_workers": len(tasks), "is_chief": chief}


def is_chief(strategy=None) -> bool:
    """True on the process that writes the run's files (always True without multi-worker)."""
    return worker_info(strategy)["is_chief"]


def num_replicas(strategy=None) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def per_replica_batch_size(global_batch_size: int, strategy=None) -> int:
    """Items per replica and step for a *global* batch size (the ``--batch_size`` flag). Replicas
    get ``numpy.array_split`` slices, so an indivisible size gives slices differing by one; the
    returned value is the larger. Raises ``ValueError`` when the batch is smaller than the number
    of replicas."""
    b, r = int(global_batch_size), num_replicas(strategy)
    if b < r:
        raise ValueError(f"global batch size {b} is smaller than the number of replicas ({r}); "
                         "--batch_size is the global batch size")
    if b % r:
        logger.warning("global batch size %d is not a multiple of %d replicas: slices of %d and %d",
                       b, r, b // r, b // r + 1)
    return -(-b // r)


def with_data_sharding(dataset, policy="data"):
    """``dataset`` with the ``tf.data`` auto-shard policy for multi-worker input (``"data"``: every
    worker reads all elements and keeps its part -- right for datasets that are not file-based;
    ``"file"``, ``"auto"``, ``"off"``)."""
    import tensorflow as tf

    policies = {"data": tf.data.experimental.AutoShardPolicy.DATA,
                "file": tf.data.experimental.AutoShardPolicy.FILE,
                "auto": tf.data.experimental.AutoShardPolicy.AUTO,
                "off": tf.data.experimental.AutoShardPolicy.OFF}
    if policy not in policies:
        raise ValueError(f"auto-shard policy must be one of {sorted(policies)}, got {policy!r}")
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = policies[policy]
    return dataset.with_options(opts)


def distribute_features(strategy, store_path, ids, targets=None, batch_size: int = 128, **kwargs):
    """A distributed dataset of feature-store batches: each input pipeline (worker) reads only
    its replicas' slices of every *global* batch of ``batch_size`` items
    (``feature_dataset(input_context=...)``); arguments as :func:`ku.data.generators.feature_dataset`
    (``store_path`` may be a list or glob of shards). Pass the result to ``model.fit``."""
    from ku.data.generators import feature_dataset

    per_replica_batch_size(batch_size, strategy)  # checks the size

    def dataset_fn(input_context):
        return feature_dataset(store_path, ids, targets, batch_size=batch_size,
                               input_context=input_context, **kwargs)

    return strategy.distribute_datasets_from_function(dataset_fn)


def distribute_sequence(seq, strategy):
    """:func:`distribute_features` with the settings of a
    :class:`~ku.data.generators.FeatureSequence` (store, ids, targets, global batch size,
    augmentation, shuffle, seed, current epoch, drop_remainder)."""
    if seq.part is not None:
        raise ValueError("distribute_sequence: the sequence already has a part; pass the whole sequence")
    return distribute_features(
        strategy, seq.store_path, seq.ids, seq.targets, batch_size=seq.batch_size,
        augmentation=seq.augmentation, shuffle=seq.shuffle, seed=seq.seed, epoch=seq.epoch,
        drop_remainder=seq.drop_remainder)


# ---------------------------------------------------------------------------------------------
# files

def worker_dir(path, strategy=None):
    """Where this worker writes the files meant for ``path``: ``path`` itself on the chief, a new
    temporary directory elsewhere. Returns ``(directory, cleanup)``; call ``cleanup()`` when done
    (removes the temporary directory; does nothing on the chief)."""
    path = Path(path)
    info = worker_info(strategy)
    if info["is_chief"]:
        return path, lambda: None
    tmp = Path(tempfile.mkdtemp(prefix=f"ku-{info['task_type']}{info['task_id']}-{path.name}-"))

    def cleanup():
        shutil.rmtree(tmp, ignore_errors=True)

    return tmp, cleanup


_RUN_FILES = ("*.json", "*.weights.h5", "*.csv")  # schedule state, best (and previous best), history


def worker_run_dir(run_dir, strategy=None, resume: bool = True):
    """The chief-only file pattern for a training run directory.

    Returns ``(shared, write_dir, finish)``: ``shared`` = ``run_dir``; ``write_dir`` = where this
    worker writes (``run_dir`` on the chief; a fresh temporary directory on the others, into which
    the run's files -- ``backup/`` and the top-level ``*.json``, ``*.weights.h5``, ``*.csv``
    (schedule state, best weights, history) -- are copied from ``run_dir`` when ``resume``);
    ``finish(result)`` points a :class:`ku.training.TrainingResult` back at ``run_dir``, deletes
    the temporary directory and returns the result (``finish(None)``: only deletes it).
    In multi-worker mode all workers first wait for each other (:func:`barrier`), so a worker
    never copies files that the chief is still writing at the end of a previous call.
    """
    run_dir = Path(run_dir)
    if is_multi_worker(strategy):
        # the chief may still be writing the previous call's files (its last checkpoint, final
        # weights) when another worker starts the next call and copies them: wait for all
        barrier(strategy)
    write_dir, cleanup = worker_dir(run_dir, strategy)
    if write_dir == run_dir:
        return run_dir, run_dir, lambda result: result
    if resume:
        if (run_dir / "backup").is_dir():
            shutil.copytree(run_dir / "backup", write_dir / "backup")
        for pattern in _RUN_FILES:
            for f in run_dir.glob(pattern):
                if f.is_file() and not f.name.startswith("."):  # not a writer's temporary file
                    shutil.copy2(f, write_dir / f.name)
    logger.info("worker %s writes its copy of %s into %s (deleted at the end)",
                worker_info(strategy)["task_id"], run_dir, write_dir)

    def finish(result):
        if result is None:
            cleanup()
            return None
        try:
            result.run_dir = run_dir
            best = run_dir / "best.weights.h5"
            result.best_weights_path = best if best.exists() else None
        finally:
            cleanup()
        return result

    return run_dir, write_dir, finish


def scope(strategy=None):
    """``strategy.scope()``, or a no-op context for None."""
    import contextlib

    return contextlib.nullcontext() if is_default(strategy) else strategy.scope()


def distribute_input(data, strategy):
    """Training / validation input of :func:`ku.training.train`, ready for ``strategy``:
    a :class:`~ku.data.generators.FeatureSequence` -> :func:`distribute_sequence` (explicit
    per-worker slices); a ``tf.data.Dataset`` -> ``DATA`` auto-sharding (unless it has a policy);
    arrays and distributed datasets unchanged (Keras shards arrays by ``DATA`` itself). Other
    ``PyDataset`` s cannot be split between workers: ``ValueError`` in multi-worker mode."""
    import tensorflow as tf

    from ku.data.generators import FeatureSequence

    if is_default(strategy) or data is None:
        return data
    if isinstance(data, FeatureSequence):
        return distribute_sequence(data, strategy)
    if isinstance(data, tf.data.Dataset):
        policy = data.options().experimental_distribute.auto_shard_policy
        if is_multi_worker(strategy) and policy == tf.data.experimental.AutoShardPolicy.AUTO:
            return with_data_sharding(data, "data")
        return data
    if isinstance(data, keras.utils.PyDataset) and is_multi_worker(strategy):
        raise ValueError(
            f"a {type(data).__name__} (keras.utils.PyDataset) cannot be split between workers by "
            "MultiWorkerMirroredStrategy; pass a ku FeatureSequence (converted automatically) or "
            "a tf.data.Dataset (e.g. ku.data.generators.feature_dataset)")
    return data


def check_optimizer(optimizer, strategy) -> None:
    """Raise ``ValueError`` for an optimizer Keras 3 cannot run under ``strategy``: gradient
    accumulation (``gradient_accumulation_steps``) fails inside ``tf.distribute`` replicas
    (``merge_call`` inside the optimizer's ``ops.cond``; Keras 3.15). The distributed equivalent
    is a larger *global* batch: the replicas together form it (e.g. the paper's 128 on 8 GPUs =
    16 each, no accumulation)."""
    steps = getattr(optimizer, "gradient_accumulation_steps", None)
    if not is_default(strategy) and steps and int(steps) > 1:
        raise ValueError(
            f"gradient accumulation ({int(steps)} steps) does not run under tf.distribute in Keras 3 "
            f"({type(strategy).__name__}); instead make the global batch size {int(steps)}x larger "
            "(--batch_size is split between the replicas) and turn accumulation off (--accumulate=1)")


def barrier(strategy) -> None:
    """Return only when every worker has called it (a collective; nothing in single-worker mode)."""
    all_workers_agree(strategy, 0, "the barrier")


def end_worker_process(strategy, status: int = 0) -> None:
    """The last call of a script run as one worker of a multi-worker strategy: wait for every
    worker (:func:`exit_handshake`), flush stdout / stderr / logging, and end the process with
    ``os._exit(status)``. Does nothing in single-worker mode, so a script can always call it.

    Why: a worker whose partner (the chief, which hosts TensorFlow's coordination service) has
    already exited can wait 0.5-2 minutes in TensorFlow's teardown at interpreter exit, after all
    its work is done (seen with TensorFlow 2.21 on two CPU workers on 127.0.0.1, 2026-11-30:
    ``scripts/train_theme_roi.py --strategy=multi_worker`` finished its work in 64 s and its
    non-chief process exited 30 s to 2 min 10 s later). Library code never calls this: only a
    script's ``main`` decides to end its process."""
    if not is_multi_worker(strategy):
        return
    from tensorflow.python.eager import context

    exit_handshake(context.context(), worker_info(strategy), _task_names(strategy))
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def _task_names(strategy) -> list:
    """Every training task of the cluster as ``"job:index"`` (the chief first, if any)."""
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return [f"{job}:{i}" for job in ("chief", "worker") for i in range(len(spec.get(job, [])))]


def exit_handshake(coordination, info: dict, tasks: list, *, timeout_s: float = 1800.0,
                   leave_timeout_s: float = 120.0) -> None:
    """Return when this worker may end its process without breaking another one's work.

    A collective barrier is not enough: a worker that has received everything it needs from the
    barrier's all-gather may exit while a partner is still fetching this worker's part from it
    (``UnavailableError: Collective ops is aborted by: Socket closed``: a two-worker test failed
    so once in a fresh-clone CI run, 2026-11-30).
    So, through TensorFlow's coordination service (``coordination``: ``tf``'s eager context,
    hosted by the chief's process):

    1. every worker waits at one barrier of the coordination service: after it, no worker runs a
       collective any more, so nobody needs another worker's buffers;
    2. every other worker tells the chief it is leaving (a key; the reply may never come, as the
       chief may end first) and returns; the chief returns when every other worker has said so
       (their barrier replies come from its process, so it must outlive them; after
       ``leave_timeout_s`` it warns and returns anyway).

    ``coordination``: an object with TensorFlow's eager-context methods ``wait_at_barrier``,
    ``set_config_key_value``, ``get_config_key_value``; ``info``: :func:`worker_info`;
    ``tasks``: every task's ``"job:index"``, e.g. ``["worker:0", "worker:1"]``. A barrier that
    fails (a worker died, or ``timeout_s`` passed) raises."""
    me = f"{info['task_type']}:{info['task_id']}"
    coordination.wait_at_barrier("ku/end_worker_process", int(timeout_s * 1000))
    if not info["is_chief"]:
        try:
            coordination.set_config_key_value(f"ku/leaving/{me}", "1")
        except Exception:  # noqa: BLE001  (the chief may end as soon as the key arrives, before it replies)
            pass
        return
    for task in tasks:
        if task != me:
            try:
                coordination.get_config_key_value(f"ku/leaving/{task}", int(leave_timeout_s * 1000))
            except Exception as e:  # noqa: BLE001  (the run's work is done: exit regardless)
                logging.getLogger(__name__).warning("end_worker_process: %s did not say it was leaving "
                                                    "(%s); the chief ends anyway", task, e)


def all_workers_agree(strategy, value, what: str = "value") -> None:
    """Raise ``RuntimeError`` unless every worker passes the same number ``value`` (a collective:
    all workers must call it). Used before resuming, to catch a ``run_dir`` that is not shared."""
    import tensorflow as tf

    if not is_multi_worker(strategy):
        return
    v = tf.constant([float(value)], tf.float64)

    def fn():
        return tf.distribute.get_replica_context().all_gather(v, axis=0)

    out = strategy.experimental_local_results(strategy.run(tf.function(fn)))[0].numpy()
    if not np.all(out == out[0]):
        raise RuntimeError(
            f"the workers disagree on {what}: {out.tolist()} (one per replica). For multi-worker "
            "resuming, run_dir must be on a file system that every worker sees (only the chief "
            "writes it); or start over with resume=False / --noresume")


def predict_locally(model, data, verbose: int = 0):
    """``model.predict(data)``, except for a model created under a multi-worker strategy: there
    ``predict`` would split ``data`` between the workers and gather every worker's rows (each
    row once per worker), so the batches of ``data`` are run through the model on this worker
    alone (a ``tf.function`` of ``model(x, training=False)``; all workers hold the same weights).
    ``data``: a finite ``tf.data.Dataset`` (or iterable) of input batches or ``(x, y)`` batches.
    Returns a numpy array (a list for several outputs, as ``predict``)."""
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None or not is_multi_worker(strategy):
        return model.predict(data, verbose=verbose)
    f = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    total = None
    if isinstance(data, tf.data.Dataset):
        n = int(data.cardinality())
        total = n if n >= 0 else None
    bar = keras.utils.Progbar(total) if verbose else None
    outs = []
    for batch in data:
        x = batch[0] if isinstance(batch, tuple) and len(batch) in (2, 3) else batch
        out = f(x)
        outs.append([np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out))
        if bar is not None:
            bar.add(1)
    if not outs:
        raise ValueError("predict_locally: the data gave no batches")
    if isinstance(outs[0], list):
        return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]
    return np.concatenate(outs)


def sync_non_trainable(model, strategy) -> int:
    """Average the model's non-trainable float variables (BatchNormalization moving statistics)
    over all replicas, in place (a collective). Returns the number of variables synchronised."""
    import tensorflow as tf

    if strategy is None or num_replicas(strategy) == 1:
        return 0
    variables = [v for v in model.non_trainable_variables
                 if "float" in str(v.dtype) and getattr(v, "aggregation", "none") in ("none", None)]
    if not variables:
        return 0
    cached = _SYNC_FNS.get(model)
    if cached is None or cached[0] is not strategy or cached[1] != len(variables):

        @tf.function
        def fn():
            ctx = tf.distribute.get_replica_context()
            values = [tf.identity(v.value) for v in variables]
            reduced = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, values)
            for v, r in zip(variables, reduced):
                v.assign(r)
            return tf.constant(0)

        cached = (strategy, len(variables), fn)
        _SYNC_FNS[model] = cached
    strategy.run(cached[2])
    return len(variables)


_SYNC_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> compiled sync


class SyncBatchStatistics(keras.callbacks.Callback):
    """Average BatchNormalization moving statistics (all non-trainable float variables) over the
    replicas before every validation (``on_test_begin``) and when training ends, so that every
    worker validates and saves the same model. Callback order: put it first."""

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_test_begin(self, logs=None):
        sync_non_trainable(self.model, self.strategy)

    def on_epoch_end(self, epoch, logs=None):
        sync_non_trainable(self.model, self.strategy)

    def on_train_end(self, logs=None):
        sync_non_trainable(self.model, self.strategy)


# ---------------------------------------------------------------------------------------------
# Keras 3 + MultiWorkerMirroredStrategy

def _first_spec(spec):
    import tensorflow as tf

    def first(s):
        comps = getattr(s, "_value_specs", None)  # PerReplicaSpec -> the first replica's spec
        return comps[0] if comps else s

    return tf.nest.map_structure(first, spec, expand_composites=False)


def _symbolic_build_from_spec(self, iterator=None, data_batch=None):
    """Replacement of ``TensorFlowTrainer._maybe_symbolic_build`` (per model): builds from the
    dataset's element spec, no ``strategy.reduce`` of a real batch (keras-team/keras#20585)."""
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        dataset = getattr(iterator, "_distributed_dataset", None)
        spec = getattr(dataset, "element_spec", None)
        if spec is None:  # fall back to Keras' own code path
            return type(self)._maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)
        data_batch = _first_spec(spec)
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def prepare_model(model, strategy, sync_batch_norm=None):
    """Make ``model`` ready for distributed ``fit``/``evaluate`` under ``strategy``.

    Checks that it was created under ``strategy.scope()``; replaces its build step (see the module
    docstring); and with ``sync_batch_norm`` (default True; remembered on the model, so a call
    before :func:`ku.training.train` decides) sets ``synchronized=True`` on every
    ``BatchNormalization`` layer when there is more than one replica: batch statistics are then
    all-reduced over the replicas, so every replica normalises with the statistics of the whole
    global batch -- the batch the paper trained on (Hosu et al. 2019 §3.3: 128 on one GPU) --
    instead of its slice, and the moving statistics stay identical on all workers. Cost: two
    all-reduces of ``channels`` floats per BatchNormalization layer and step.
    Returns the model.
    """
    if is_default(strategy):
        return model
    own = getattr(model, "_distribute_strategy", None)
    if own is not strategy:
        raise ValueError(
            f"model {model.name!r} was not created under this strategy's scope; build it inside "
            "`with strategy.scope():` (ku.distribute.get_strategy) so that its variables are "
            "mirrored on every replica")
    model._maybe_symbolic_build = types.MethodType(_symbolic_build_from_spec, model)
    if sync_batch_norm is None:
        sync_batch_norm = getattr(model, "_ku_sync_batch_norm", True)
    model._ku_sync_batch_norm = bool(sync_batch_norm)
    if num_replicas(strategy) > 1:
        bns = [layer for layer in model._flatten_layers(include_self=False)
               if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in bns:
            layer.synchronized = bool(sync_batch_norm)
        if bns:
            logger.info("%s: %d BatchNormalization layers, synchronized=%s over %d replicas", model.name,
                        len(bns), bool(sync_batch_norm), num_replicas(strategy))
    if is_multi_worker(strategy):
        patch_keras_for_multi_worker()
    return model


_PATCHED = {}


def patch_keras_for_multi_worker() -> bool:
    """Make Keras' per-step log reduction work under multi-worker ``MultiWorkerMirroredStrategy``
    (mean over replicas with ``axis=None``; Keras uses ``axis=0``, which fails on scalars).
    Changes nothing for other strategies; idempotent. Returns True when the patch is active."""
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:  # another backend / Keras version: nothing to patch
        return False
    if _PATCHED.get("reduce") is not None:
        return True
    original = tf_trainer.reduce_per_replica
    multi = getattr(tf_trainer, "_collective_all_reduce_multi_worker", None)
    if multi is None:
        return False

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi(strategy):
            import tensorflow as tf

            def mean(v):
                if isinstance(v, tf.distribute.DistributedValues) or isinstance(v, tf.Tensor):
                    return strategy.reduce("MEAN", v, axis=None)
                return v

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica
    _PATCHED["reduce"] = original
    logger.debug("patched keras.src.backend.tensorflow.trainer.reduce_per_replica for multi-worker")
    return True
