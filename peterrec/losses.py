"""Losses shared by the tasks: weighted full softmax, sampled softmax, and BCE / BPR with negatives.

Every loss returns the *sum* of the per-position losses times their weights;
the training loop divides by the all-reduced sum of weights, so the loss is
the same mean whatever the number of replicas.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from peterrec.errors import ConfigError
from peterrec.features import NUM_RESERVED

PAIRWISE = ("bce", "bpr")


@tf.custom_gradient
def _fused_softmax_ce(labels, logits):
    """``[N]`` CE of ``logits [N, V]`` (float32) at ``labels [N]`` (int32), keeping ``exp(logits - max)`` for the gradient."""
    top = tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
    exp = tf.exp(logits - top)
    total = tf.reduce_sum(exp, axis=-1)
    ce = tf.math.log(total) + top[:, 0] - tf.gather(logits, labels, batch_dims=1)

    def grad(upstream):
        cells = tf.stack([tf.range(tf.shape(labels)[0]), labels], axis=1)
        return None, tf.tensor_scatter_nd_sub(exp * (upstream / total)[:, None], cells, upstream)

    return ce, grad


def softmax_ce(labels, logits):
    """Per-position ``CE(softmax(logits), labels)``: what ``tf.nn.sparse_softmax_cross_entropy_with_logits`` gives.

    Computed in float32 by ``log Σ exp(l - max) + max - l[label]``, with
    ``softmax - one_hot`` as a custom gradient from the forward's ``exp``:
    on the 2-core CPU a training step of the full-softmax zoo models is
    12-20 % faster than with TF's fused kernel (``benchmarks/results/seed_speed.md``).
    A label outside ``[0, V)`` raises (on CPU) as TF's kernel does.

    Args:
        labels: int ``[...]``.
        logits: float ``[..., V]``.
    Returns:
        float32 ``[...]``.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    flat = _fused_softmax_ce(tf.reshape(labels, [-1]), tf.reshape(logits, [-1, tf.shape(logits)[-1]]))
    return tf.reshape(flat, tf.shape(labels))


def weighted_softmax_ce_sum(logits, labels, weights):
    """Sum over positions of ``weights * CE(softmax(logits), labels)`` (:func:`softmax_ce`).

    Args:
        logits: float ``[..., V]``.
        labels: int ``[...]``.
        weights: float ``[...]``.
    """
    return tf.reduce_sum(softmax_ce(labels, logits) * tf.cast(weights, tf.float32))


def unigram_counts(counts, smoothing=1.0):
    """Sampler weights from item counts: ``count + smoothing`` for every id.

    The smoothing lets items never seen in training be drawn as negatives, and
    keeps the expected count of a reserved label (PAD under ``--pad_as_item``,
    OOV under ``--vocab_from``) above 0, where the log-Q correction would be
    ``log 0``. Reserved ids have count 0, so they are drawn rarely.
    """
    return (np.asarray(counts, dtype=np.float64) + smoothing).tolist()


def sampled_softmax_sum(weights, biases, hidden, labels, sample_weight, num_sampled, unigrams, seed=None):
    """Sampled softmax over a unigram candidate distribution built from item counts.

    Uses ``tf.nn.sampled_softmax_loss`` (unique candidates shared by the
    batch, accidental hits removed, log-Q correction) with
    ``tf.random.fixed_unigram_candidate_sampler`` instead of TF's default
    log-uniform sampler, which assumes frequency-sorted ids. The candidate
    sampler has no XLA kernel: never call this inside a jit-compiled function.

    Args:
        weights: ``[V, C]`` output embeddings; biases: ``[V]``.
        hidden: ``[..., C]``; labels, sample_weight: ``[...]``.
        num_sampled: negatives per batch.
        unigrams: python list of length V with the sampling weight of each id.
    """
    c = hidden.shape[-1]
    flat_h = tf.reshape(tf.cast(hidden, tf.float32), [-1, c])
    flat_y = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
    flat_w = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    sampled = tf.random.fixed_unigram_candidate_sampler(
        true_classes=flat_y,
        num_true=1,
        num_sampled=num_sampled,
        unique=True,
        range_max=len(unigrams),
        unigrams=unigrams,
        seed=seed,
    )
    loss = tf.nn.sampled_softmax_loss(
        weights=weights,
        biases=biases,
        labels=flat_y,
        inputs=flat_h,
        num_sampled=num_sampled,
        num_classes=len(unigrams),
        sampled_values=sampled,
        remove_accidental_hits=True,
    )
    return tf.reduce_sum(loss * flat_w)


def uniform_negatives(labels, vocabulary_size, seed=None, num_reserved=NUM_RESERVED):
    """One negative id per label, uniform over the real ids ``[num_reserved, V)`` minus the label.

    Args:
        labels: int ``[...]``; a reserved label (OOV, PAD) excludes nothing.
        vocabulary_size: V.
        seed: a ``keras.random.SeedGenerator`` (or int) for ``keras.random.uniform``
            (works in XLA-compiled steps).
    """
    labels = tf.cast(labels, tf.int32)
    is_real = tf.cast(labels >= num_reserved, tf.int32)
    choices = tf.maximum(vocabulary_size - num_reserved - is_real, 1)
    u = keras.random.uniform(tf.shape(labels), seed=seed)
    draw = tf.minimum(tf.cast(u * tf.cast(choices, tf.float32), tf.int32), choices - 1) + num_reserved
    return draw + is_real * tf.cast(draw >= labels, tf.int32)  # skip the label, stay uniform


def pairwise_sum(loss, positive, negative, weights):
    """Sum over positions of ``weights * loss(positive score, negative score)``.

    ``bce``: ``-log sigmoid(s+) - log(1 - sigmoid(s-))`` (SASRec's original
    loss, Caser's); ``bpr``: ``-log sigmoid(s+ - s-)`` (RecBole's BPR).
    Both through ``softplus`` (stable for large scores).
    """
    positive, negative = tf.cast(positive, tf.float32), tf.cast(negative, tf.float32)
    if loss == "bce":
        per_position = tf.nn.softplus(-positive) + tf.nn.softplus(negative)
    elif loss == "bpr":
        per_position = tf.nn.softplus(negative - positive)
    else:
        raise ValueError(f"pairwise loss must be one of {PAIRWISE}, got {loss!r}")
    return tf.reduce_sum(per_position * tf.cast(weights, tf.float32))


def check_jit_compatible(loss, jit_compile, strategy="auto"):
    """Refuse the sampled softmax where the step is XLA-compiled: ``--jit_compile`` or ``--strategy tpu``."""
    if jit_compile and loss == "sampled_softmax":
        raise ConfigError(
            "--loss sampled_softmax cannot be combined with --jit_compile: TensorFlow's candidate "
            "samplers have no XLA kernel. Use --loss full_softmax with --jit_compile, or drop --jit_compile."
        )
    if strategy == "tpu" and loss == "sampled_softmax":
        raise ConfigError(
            "--loss sampled_softmax cannot be combined with --strategy tpu: TPU steps are XLA-compiled and TensorFlow's "
            "candidate samplers have no XLA kernel. Use --loss full_softmax on TPU."
        )
