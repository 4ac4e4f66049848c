"""Strategy construction for the training loop: one CPU, a multi-GPU host, several hosts, TPU.

Every training step goes through ``strategy.run``, so the loop is the same on one CPU, several
GPUs, several hosts or a TPU; only the strategy built here changes. The strategies are TF's own
(sources read: ``tensorflow/python/distribute/{mirrored_strategy,collective_all_reduce_strategy,
tpu_strategy}.py``):

* ``MirroredStrategy``: one process, one replica per local GPU; variables mirrored, gradients
  all-reduced (NCCL on GPUs; on CPU devices every cross-replica op goes through ``merge_call``).
* ``MultiWorkerMirroredStrategy``: one process per host, ``TF_CONFIG`` names the cluster and this
  host's task; collective all-reduce over gRPC. Worker 0 (or the ``chief`` task) is the chief.
* ``TPUStrategy``: replicas on TPU cores; every ``strategy.run`` is compiled with XLA.
"""

from __future__ import annotations

import json
import os
import tempfile

import ml_collections
import tensorflow as tf

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


class DistributeError(ValueError):
    """A strategy cannot be built from this configuration (the message says why)."""


def parse_tf_config(text: str | None = None) -> dict:
    """Parses and checks ``TF_CONFIG`` (default: the environment's) for multi-worker training.

    Returns:
      The parsed dict, with ``cluster`` (job name → list of ``host:port``) and ``task``
      (``type``, ``index``).

    Raises:
      DistributeError: missing, not JSON, or not describing this task within its cluster.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    example = (
        '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not text:
        raise DistributeError(
            "distribute.strategy='multi_worker_mirrored' needs the TF_CONFIG environment "
            f"variable on every host, e.g. TF_CONFIG='{example}' (index differs per host)."
        )
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({e}): {text!r}") from e
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError(f"TF_CONFIG needs a non-empty 'cluster' dict, e.g. {example}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise DistributeError(f"TF_CONFIG cluster job {job!r} must list host:port strings.")
        for address in addresses:
            host, sep, port = str(address).rpartition(":")
            if not sep or not host or not port.isdigit():
                raise DistributeError(
                    f"TF_CONFIG cluster job {job!r}: {address!r} is not host:port."
                )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError(f"TF_CONFIG needs 'task': {{'type': ..., 'index': ...}}: {example}")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise DistributeError(f"TF_CONFIG task type {kind!r} is not a job of the cluster.")
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise DistributeError(
            f"TF_CONFIG task index {index!r} is out of range for the {len(cluster[kind])} "
            f"{kind!r} address(es)."
        )
    if set(cluster) - {"worker", "chief"}:
        raise DistributeError(
            f"TF_CONFIG jobs {sorted(set(cluster) - {'worker', 'chief'})} are not supported by "
            "MultiWorkerMirroredStrategy (only 'chief' and 'worker')."
        )
    return tf_config


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    """Connects to ``tpu`` ('local' on a TPU VM, a name, or grpc://HOST:PORT) and initialises it."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu not in ("", "local"):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise DistributeError(
            f"No reachable TPU {tpu!r} ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "On a TPU VM use --config.distribute.tpu=local; otherwise give the TPU's name "
            "(with gcloud credentials) or grpc://HOST:8470."
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(config: ml_collections.ConfigDict) -> tf.distribute.Strategy:
    """Builds the strategy named by ``config.strategy`` (``config`` is ``config.distribute``).

    * ``auto``: ``tpu`` when ``config.tpu`` names one; ``mirrored`` over the local GPUs when
      there are several; else ``one_device``.
    * ``default``: TF's default (single-device) strategy; ``strategy.run`` calls the function
      directly.
    * ``one_device``: ``tf.distribute.OneDeviceStrategy`` on the first GPU, else the CPU.
    * ``mirrored``: ``tf.distribute.MirroredStrategy`` over all local GPUs (or the logical CPUs
      when there is no GPU: several logical CPUs are how the tests run two replicas).
    * ``multi_worker_mirrored``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster
      of ``TF_CONFIG`` (checked first, see `parse_tf_config`).
    * ``tpu``: ``tf.distribute.TPUStrategy`` on ``config.tpu``.

    Raises:
      DistributeError: unknown name, malformed ``TF_CONFIG`` or an unreachable TPU.
    """
    name, tpu = config.strategy, config.get("tpu", "")
    if name not in STRATEGIES:
        raise DistributeError(f"Unknown distribute.strategy {name!r}; choose from {STRATEGIES}.")
    if name == "auto":
        if tpu:
            name = "tpu"
        else:
            name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "one_device"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        # All local GPUs, else all logical CPUs (mirrored_strategy.all_local_devices).
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        parse_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if not tpu:
        raise DistributeError(
            "distribute.strategy='tpu' needs distribute.tpu: 'local' on a TPU VM, the TPU name, "
            "or grpc://HOST:8470."
        )
    return _tpu_strategy(tpu)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True in the process that writes the run's files (config, summaries, checkpoints, exports).

    Single-process strategies: always. MultiWorkerMirroredStrategy: the ``chief`` task, or worker
    0 when the cluster has no chief (TF's convention, ``multi_worker_util.is_chief``).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    kind, index = resolver.task_type, resolver.task_id
    if kind is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return kind == "chief" or (not has_chief and kind == "worker" and index == 0)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True when the replicas span several processes (collectives cross hosts)."""
    check = getattr(strategy.extended, "_in_multi_worker_mode", None)  # TF's own test of it
    return bool(check and check())


def worker_checkpoint_dir(strategy: tf.distribute.Strategy, chief_dir: str) -> str:
    """Where this process writes checkpoints: ``chief_dir`` on the chief, else a fresh temp dir.

    Every worker must save (saving reads sync-on-read variables with collectives), but only the
    chief's files are kept: non-chief workers write to a temporary directory that the caller
    deletes after each save, as TF Model Garden does (``orbit``/``official.core.train_lib``).
    """
    if is_chief(strategy):
        return chief_dir
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"tfsd_{resolver.task_type}{resolver.task_id}_ckpt_")
