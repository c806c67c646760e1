"""Pick a ``tf.distribute`` strategy by name (one training loop for all of them).

``--strategy``:

* ``auto``: a TPU when one is named (``--tpu`` or ``TPU_NAME``) or attached
  (a Cloud TPU VM's local devices), Mirrored on more than one GPU, the
  default strategy otherwise;
* ``default``: no distribution (one device);
* ``mirrored``: every local GPU (synchronous, all-reduce);
* ``multiworker``: ``MultiWorkerMirroredStrategy`` over the cluster that
  ``TF_CONFIG`` describes (every worker runs the same command with its own
  ``task``; the chief is ``chief:0``, or ``worker:0`` when there is no chief);
* ``tpu``: ``TPUStrategy`` on ``--tpu`` (a name or ``grpc://`` address;
  empty on a TPU VM).

A parameter-server strategy needs ``ClusterCoordinator.schedule`` (a second,
asynchronous loop) and is deliberately not offered; see the README.
"""

from __future__ import annotations

import contextlib
import json
import os

import keras
import tensorflow as tf

from peterrec.errors import ConfigError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
# Task types of a synchronous multi-worker cluster (an "evaluator" or "ps" task would need another loop).
WORKER_TYPES = ("chief", "worker")


def get_strategy(name="auto", tpu=None, tf_config=None):
    """Return the strategy for ``--strategy`` (see the module docstring).

    Args:
        name: one of :data:`STRATEGIES`.
        tpu: ``--tpu``: a TPU name or ``grpc://host:port``.
        tf_config: the ``TF_CONFIG`` JSON text (the pipelines pass the
            environment variable) for ``multiworker``.

    Raises:
        ConfigError: an unknown name, ``multiworker`` without or with a
            malformed ``TF_CONFIG``, ``tpu`` with no TPU reachable.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if tpu or os.environ.get("TPU_NAME") or tf.config.list_physical_devices("TPU"):
            return _tpu_strategy(tpu)
        return tf.distribute.MirroredStrategy() if len(tf.config.list_logical_devices("GPU")) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver(tf_config))
    return _tpu_strategy(tpu)


def parse_tf_config(tf_config):
    """Check a ``TF_CONFIG`` JSON text; returns ``(cluster, task_type, task_index, rpc_layer)``.

    Expected: ``{"cluster": {"worker": ["host:port", ...], ["chief": [...]]},
    "task": {"type": "worker", "index": 0}}``.
    """
    if not tf_config:
        raise ConfigError(
            "--strategy multiworker needs the TF_CONFIG environment variable describing the cluster, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(tf_config)
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError("TF_CONFIG: 'cluster' must map task types to lists of 'host:port' addresses")
    for job, addresses in cluster.items():
        if job not in WORKER_TYPES:
            raise ConfigError(
                f"TF_CONFIG: cluster task type {job!r} is not supported; MultiWorkerMirroredStrategy uses "
                f"{' and '.join(WORKER_TYPES)} (no parameter servers or evaluators)"
            )
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ConfigError(f"TF_CONFIG: cluster[{job!r}] must be a non-empty list of 'host:port' strings, got {addresses!r}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError("TF_CONFIG: 'task' must be {\"type\": ..., \"index\": ...} naming this process's place in the cluster")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ConfigError(f"TF_CONFIG: task type {task_type!r} is not in the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise ConfigError(f"TF_CONFIG: task index {index!r} is out of range for {len(cluster[task_type])} {task_type} address(es)")
    return cluster, task_type, index, config.get("rpc_layer") or "grpc"


def cluster_resolver(tf_config):
    """A cluster resolver for a checked ``TF_CONFIG`` text (the environment variable need not be set)."""
    cluster, task_type, index, rpc_layer = parse_tf_config(tf_config)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=index, rpc_layer=rpc_layer
    )


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, OSError, tf.errors.OpError, RuntimeError) as err:  # OSError: a URLError for an unknown name
        raise ConfigError(f"--strategy tpu: no TPU found ({err}); pass --tpu <name or grpc://address>") from err
    return tf.distribute.TPUStrategy(resolver)


# ---------------------------------------------------------------- mixed precision
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def precision_policy(mixed_precision, strategy=None):
    """The Keras dtype policy for ``--mixed_precision``: None (float32) when off.

    ``mixed_float16`` on GPUs (tensor cores; the loop scales the loss),
    ``mixed_bfloat16`` on TPUs and CPUs (float32's range, so no loss scaling;
    CPUs without bfloat16 units emulate it, see docs/fidelity.md). A policy
    name (``"mixed_float16"``, ``"mixed_bfloat16"``) picks that one.
    """
    if not mixed_precision:
        return None
    if isinstance(mixed_precision, str):
        if mixed_precision not in MIXED_POLICIES:
            raise ConfigError(f"mixed precision policy {mixed_precision!r} is not one of {', '.join(MIXED_POLICIES)}")
        return mixed_precision
    if isinstance(strategy, tf.distribute.TPUStrategy) or not tf.config.list_logical_devices("GPU"):
        return "mixed_bfloat16"
    return "mixed_float16"


@contextlib.contextmanager
def dtype_policy(policy):
    """Build layers under the Keras dtype policy ``policy`` (None: leave it), then restore the previous one."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
