"""Pick a ``tf.distribute`` strategy by name (one code path for all of them)."""

from __future__ import annotations

import tensorflow as tf

from peterrec.errors import ConfigError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def get_strategy(name="auto", tpu=None, tf_config=None):
    """Return the strategy for ``--strategy``.

    ``auto``: Mirrored on more than one GPU, the default strategy otherwise.
    ``multiworker`` needs the cluster description ``tf_config`` (the
    ``TF_CONFIG`` JSON, passed in by the pipeline); ``tpu`` needs a TPU
    reachable by ``TPUClusterResolver(tpu)``.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(tf.config.list_logical_devices("GPU")) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not tf_config:
            raise ConfigError("--strategy multiworker needs the TF_CONFIG environment variable describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError, RuntimeError) as err:
        raise ConfigError(f"--strategy tpu: no TPU found ({err}); pass --tpu <name or grpc address>") from err
    return tf.distribute.TPUStrategy(resolver)
