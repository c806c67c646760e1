"""Multi-worker helpers: which process is the chief, and how the workers agree to stop together.

Under ``MultiWorkerMirroredStrategy`` over a ``TF_CONFIG`` cluster, only the
chief writes into ``model_dir``; the other workers save into a temporary
directory of their own and resume from the chief's checkpoints. A stop flag
(SIGTERM/SIGINT on any worker) is all-reduced after every step, so all workers
save the same step and stop together (preemption).
"""

from __future__ import annotations

import tensorflow as tf


def _cluster(strategy):
    """The strategy's cluster resolver when it spans a multi-worker cluster, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None) or not resolver.cluster_spec().as_dict():
        return None
    return resolver


def is_multi_worker(strategy):
    """Whether the strategy is a ``MultiWorkerMirroredStrategy`` over a ``TF_CONFIG`` cluster (several processes)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and _cluster(strategy) is not None


def is_chief(strategy):
    """Whether this process writes the job's outputs (always, except non-chief multi-worker tasks)."""
    resolver = _cluster(strategy)
    if resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


class ClusterMixin:
    """:class:`~peterrec.training.Trainer`'s cross-worker agreement step (``self.strategy``)."""

    def _build_agree_step(self):
        """Multi-worker preemption: a ``tf.function`` that all-reduces a local stop flag, so every worker
        learns at the same step that one of them received SIGTERM/SIGINT (an equivalent of
        ``tf.distribute.experimental.PreemptionCheckpointHandler``, see docs/fidelity.md)."""
        strategy = self.strategy

        def replica_flag(flag):
            flag = tf.identity(flag)  # placed on the replica's device (a bare input has none: no all-reduce destination)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, flag)

        @tf.function(autograph=False)
        def agree(flag):
            return strategy.experimental_local_results(strategy.run(replica_flag, args=(flag,)))[0]

        return agree
