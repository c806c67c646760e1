"""Evaluation inside the training loop: mean rank metrics over a finite dataset, and the monitor's direction."""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from peterrec.eval import ranking
from peterrec.features import LABELS


def monitor_mode(monitor):
    """"min" for a loss (a metric name ending in "loss"), else "max"."""
    return "min" if monitor.endswith("loss") else "max"


def monitor_sign(monitor):
    return -1.0 if monitor_mode(monitor) == "min" else 1.0


def evaluate(scorer, dataset_fn, strategy=None, *, protocol="full", num_negatives=99, ks=ranking.DEFAULT_KS, seed=0, log_loss=False):
    """Mean rank metrics of ``scorer.eval_scores`` over a finite dataset.

    Args:
        scorer: object with ``eval_scores(batch) -> [batch, V]`` scores.
        dataset_fn: ``input_context -> tf.data.Dataset`` of evaluation rows, or such a dataset already
            distributed by ``strategy`` (e.g. one kept to evaluate every epoch without rebuilding it).
        protocol: "full" (rank over every non-reserved id) or "sampled"
            (rank among the target and ``num_negatives`` uniform negatives).
        log_loss: also report ``log_loss``, the mean softmax cross-entropy of the
            target over the real ids (full protocol only).
    """
    if log_loss and protocol != "full":
        raise ValueError("log_loss needs the full protocol")
    strategy = strategy or tf.distribute.get_strategy()
    names = _metric_names(ks, log_loss)
    dataset = strategy.distribute_datasets_from_function(dataset_fn) if callable(dataset_fn) else dataset_fn
    step = _eval_step(scorer, strategy, protocol, num_negatives, tuple(ks), seed, log_loss)
    # One trace for every batch size: traced from the dataset's spec (batch dimension None), the first full batch
    # and the last partial one both dispatch to it (tracing from values traces the model twice).
    step.get_concrete_function(dataset.element_spec, tf.TensorSpec([], tf.int32))
    total, count = np.zeros(len(names)), 0.0
    for i, batch in enumerate(dataset):
        sums, n = step(batch, tf.constant(i, tf.int32))
        total += sums.numpy()
        count += float(n)
    return ranking.summarise(dict(zip(names, total)), count) | {"users": int(count)}


_EVAL_STEPS = weakref.WeakKeyDictionary()  # scorer -> {settings: tf.function}, so each epoch reuses one trace


def _metric_names(ks, log_loss):
    return ranking.metric_names(ks) + (["log_loss"] if log_loss else [])


def _eval_step(scorer, strategy, protocol, num_negatives, ks, seed, log_loss=False):
    cache = _EVAL_STEPS.setdefault(scorer, {})
    key = (id(strategy), protocol, num_negatives, ks, seed, log_loss)
    if key not in cache:
        cache[key] = _build_eval_step(scorer, strategy, protocol, num_negatives, ks, seed, log_loss)
    return cache[key]


def _build_eval_step(scorer, strategy, protocol, num_negatives, ks, seed, log_loss):
    names = _metric_names(ks, log_loss)

    def metric_sums(batch, batch_index):
        scores = ranking.exclude_reserved(scorer.eval_scores(batch))
        targets = batch[LABELS]
        if protocol == "sampled":
            ranks = ranking.sampled_ranks(scores, targets, num_negatives, seed=tf.stack([seed, batch_index]))
        else:
            ranks = ranking.target_ranks(scores, targets)
        values = ranking.rank_metrics(ranks, ks)
        if log_loss:
            values["log_loss"] = ranking.log_loss(scores, targets)
        return tf.stack([tf.reduce_sum(values[n]) for n in names])

    def replica_step(batch, batch_index):
        # The last global batch can leave a replica with no rows; convs reject empty batches.
        size = tf.size(batch[LABELS])
        sums = tf.cond(size > 0, lambda: metric_sums(batch, batch_index), lambda: tf.zeros([len(names)]))
        return sums, tf.cast(size, tf.float32)

    @tf.function(reduce_retracing=True, autograph=False)
    def step(batch, batch_index):
        sums, count = strategy.run(replica_step, args=(batch, batch_index))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None),
        )

    return step
