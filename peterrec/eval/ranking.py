"""Rank-based metrics: HR@k, NDCG@k and MRR@k from the rank of the target.

One tie rule everywhere: the rank of a target is the number of candidates
that score strictly higher **plus** the number of other candidates that score
exactly the same (ties count against the target). Ranks are 0-based, so a
target alone at the top has rank 0. Excluded ids (the reserved ids) never
compete.

* ``HR@k  = 1[rank < k]``
* ``NDCG@k = 1[rank < k] / log2(rank + 2)``
* ``MRR@k = 1[rank < k] / (rank + 1)``
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from peterrec.features import NUM_RESERVED
from peterrec.losses import softmax_ce

DEFAULT_KS = (5, 10, 20)
NEG_INF = -3.0e38


def metric_names(ks=DEFAULT_KS):
    return [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]


def exclude_reserved(scores, num_reserved=NUM_RESERVED):
    """Set the scores of ids ``< num_reserved`` to a value below every real score."""
    scores = tf.cast(scores, tf.float32)
    vocab = tf.shape(scores)[-1]
    keep = tf.range(vocab) >= num_reserved
    return tf.where(keep, scores, tf.fill(tf.shape(scores), NEG_INF))


def target_ranks(scores, targets):
    """0-based rank of ``targets`` ``[B]`` among the columns of ``scores`` ``[B, V]`` (ties against it)."""
    scores = tf.cast(scores, tf.float32)
    target_score = tf.gather(scores, tf.cast(targets, tf.int32), axis=1, batch_dims=1)[:, None]
    not_lower = tf.reduce_sum(tf.cast(scores >= target_score, tf.int32), axis=1)
    return not_lower - 1  # the target itself is counted once


def rank_metrics(ranks, ks=DEFAULT_KS):
    """Per-example metric values ``{name: float32 [B]}`` for 0-based ranks."""
    ranks = tf.cast(ranks, tf.float32)
    out = {}
    for k in ks:
        hit = tf.cast(ranks < k, tf.float32)
        out[f"hr@{k}"] = hit
        out[f"ndcg@{k}"] = hit / (tf.math.log(ranks + 2.0) / np.log(2.0))
        out[f"mrr@{k}"] = hit / (ranks + 1.0)
    return out


def log_loss(scores, targets):
    """Per-example softmax cross-entropy ``[B]`` of ``targets`` over the columns of ``scores``
    (ids set to ``NEG_INF`` by :func:`exclude_reserved` get probability 0)."""
    return softmax_ce(targets, scores)


def sampled_ranks(scores, targets, num_negatives=99, seed=(0, 0), num_reserved=NUM_RESERVED):
    """Rank of the target among itself and ``num_negatives`` uniform negatives.

    Negatives are drawn uniformly (with replacement, never the target) from
    the real ids ``[num_reserved, V)`` with a stateless seed, so the same
    batch always gets the same negatives. Ties count against the target.
    """
    scores = tf.cast(scores, tf.float32)
    batch = tf.shape(scores)[0]
    vocab = tf.shape(scores)[1]
    targets = tf.cast(targets, tf.int32)
    draws = tf.random.stateless_uniform(
        [batch, num_negatives], seed=seed, minval=num_reserved, maxval=vocab - 1, dtype=tf.int32
    )
    negatives = draws + tf.cast(draws >= targets[:, None], tf.int32)  # skip the target, stay uniform
    neg_scores = tf.gather(scores, negatives, axis=1, batch_dims=1)
    target_score = tf.gather(scores, targets, axis=1, batch_dims=1)[:, None]
    return tf.reduce_sum(tf.cast(neg_scores >= target_score, tf.int32), axis=1)


def summarise(sums, count):
    """Turn metric sums (``{name: float}``) and an example count into means."""
    count = max(float(count), 1.0)
    return {name: float(value) / count for name, value in sums.items()}
