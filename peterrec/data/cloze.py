"""Cloze chunks for masked-item (GRec encoder, BERT4Rec-style) pretraining.

:func:`cloze_train_dataset` cuts each user's training items into
non-overlapping chunks of ``max_len`` counted from the end (the most recent
items form a full chunk; the oldest chunk holds the remainder), right-padded,
and masks each chunk with the original rule (:func:`mask_positions`). Every
training item is in exactly one chunk per epoch. The records, their order and
the batching are :mod:`peterrec.data.dataset`'s.
"""

from __future__ import annotations

import math

import tensorflow as tf

from peterrec.data.dataset import AUTOTUNE, _records, epoch_batches, epoch_steps, order_seed, train_items, training_lengths
from peterrec.data.tfrecord import graph_fn
from peterrec.features import ITEM_IDS, LABELS, MASK_ID, NUM_RESERVED, PAD_ID, SAMPLE_WEIGHT


def num_masked(length, mask_prob=0.3, max_predictions=30):
    """Python twin of the masking count: ``min(max_predictions, max(1, round(length * mask_prob)))``.

    ``round`` rounds half **away from zero**, as the original's Python 2 ``round``
    does (Python 3's ``round`` and ``tf.round`` round half to even, which masks
    one position fewer at 15, 35, 55, 75 and 95 items with ``mask_prob`` 0.3).
    The product is the same float64 product as the original's.
    """
    return min(int(max_predictions), max(1, round_half_away(length * mask_prob)))


def round_half_away(x):
    """Python 2's ``round`` for ``x >= 0``: ``floor(x)`` plus 1 when the fraction is at least one half."""
    whole = math.floor(x)
    return int(whole + (x - whole >= 0.5))


def count_chunks(n, max_len):
    """Number of cloze chunks of an ``n``-item training sequence."""
    return -(-int(n) // int(max_len)) if n > 0 else 0


def chunk_lengths(n, max_len):
    """Real lengths of the chunks of an ``n``-item sequence, oldest first (Python twin of :func:`_chunks`)."""
    k = count_chunks(n, max_len)
    return [min(max_len, n - (k - 1 - i) * max_len) for i in range(k)]


def _chunks(items, max_len):
    """Non-overlapping, right-padded chunks ``[k, max_len]`` of ``items`` cut from the end, and their lengths."""
    n = tf.size(items)
    num = (n + max_len - 1) // max_len
    ends = n - tf.reverse(tf.range(num), [0]) * max_len  # oldest chunk first
    starts = tf.maximum(ends - max_len, 0)
    lengths = ends - starts
    j = tf.range(max_len)[None, :]
    pos = tf.clip_by_value(starts[:, None] + j, 0, tf.maximum(n - 1, 0))
    chunks = tf.where(j < lengths[:, None], tf.gather(items, pos), tf.constant(PAD_ID, items.dtype))
    return chunks, lengths


def mask_positions(item_ids, lengths, seed, *, vocabulary_size, mask_prob=0.3, max_predictions=30):
    """Mask right-padded chunks with the original GRec/BERT rule (stateless, so reproducible).

    For a chunk with ``w`` real items, ``num_masked(w)`` positions are chosen
    uniformly among the ``w`` real positions (never the padding; the
    original also draws pads, see docs/fidelity.md). Each chosen position
    becomes ``MASK_ID`` with probability 0.8, keeps its item with
    probability 0.1, or becomes a uniformly random real item id in
    ``[NUM_RESERVED, vocabulary_size)`` with probability 0.1.

    Args:
        item_ids: int ``[N, L]`` chunks, right-padded with ``PAD_ID``.
        lengths: int ``[N]`` real items per chunk (each >= 1).
        seed: int ``[2]`` seed of ``tf.random.stateless_*``; the same seed
            and inputs give the same masks.
        vocabulary_size: number of ids including the reserved ones.
        mask_prob: share of the real positions to mask (0.3).
        max_predictions: most masked positions per chunk (30).

    Returns:
        ``{item_ids: masked input, labels: the original ids,
        sample_weight: 1.0 exactly at the chosen positions}``, all ``[N, L]``.
    """
    item_ids = tf.convert_to_tensor(item_ids)
    lengths = tf.cast(lengths, tf.int32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    shape = tf.shape(item_ids)
    real = tf.range(shape[1])[None, :] < lengths[:, None]
    # Uniform choice of n real positions: rank random keys, pads ranked last.
    keys = tf.where(real, tf.random.stateless_uniform(shape, seeds[0]), -1.0)
    rank = tf.argsort(tf.argsort(keys, axis=1, direction="DESCENDING", stable=True), axis=1, stable=True)
    product = tf.cast(lengths, tf.float64) * float(mask_prob)  # the original's float64 product
    whole = tf.floor(product)
    count = tf.cast(whole + tf.cast(product - whole >= 0.5, tf.float64), tf.int32)  # half away from zero (num_masked)
    count = tf.minimum(int(max_predictions), tf.maximum(1, count))
    chosen = real & (rank < count[:, None])
    # 80 % [MASK], 10 % keep, 10 % a random real item.
    u = tf.random.stateless_uniform(shape, seeds[1])
    random_ids = tf.random.stateless_uniform(shape, seeds[2], minval=NUM_RESERVED, maxval=int(vocabulary_size), dtype=tf.int32)
    replaced = tf.where(u < 0.8, tf.constant(MASK_ID, item_ids.dtype), tf.where(u < 0.9, item_ids, tf.cast(random_ids, item_ids.dtype)))
    return {
        ITEM_IDS: tf.where(chosen, replaced, item_ids),
        LABELS: item_ids,
        SAMPLE_WEIGHT: tf.cast(chosen, tf.float32),
    }


def cloze_train_dataset(
    set_dir,
    *,
    max_len,
    batch_size,
    steps,
    seed,
    epoch=0,
    skip_steps=0,
    vocabulary_size,
    mask_prob=0.3,
    max_predictions=30,
    shuffle="epoch",
    shuffle_buffer=20000,
    input_context=None,
):
    """One epoch of ``steps`` masked-chunk batches of exactly ``batch_size`` chunks (GRec pretraining).

    Each training sequence is cut by :func:`_chunks` and masked by
    :func:`mask_positions` with the stateless seed ``(seed * 1000 + epoch,
    user index)`` (the index of the user in the epoch's deterministic record
    order, times the number of input pipelines plus this pipeline's id), so
    an epoch's masks are a function of ``(seed, epoch)``: re-running gives
    the same batches, and ``skip_steps`` resumes the identical stream.
    Chunks are shuffled with ``seed * 1000 + epoch`` and repeated so the last
    batch is full, as in :func:`train_dataset`; ``shuffle="once"`` keeps the
    order of epoch 0 (the masks are still drawn anew every epoch, as the
    original's).
    """
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if max_predictions < 1:
        raise ValueError(f"max_predictions must be >= 1, got {max_predictions}")
    epoch_seed = int(seed) * 1000 + int(epoch)  # the masks
    shuffle_seed = order_seed(seed, epoch, shuffle)  # the order
    num_pipelines = input_context.num_input_pipelines if input_context is not None else 1
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    ds = _records(set_dir, shuffle_seed=shuffle_seed, input_context=input_context)
    ds = ds.map(graph_fn(train_items), num_parallel_calls=AUTOTUNE).filter(graph_fn(lambda items: tf.size(items) >= 1)).enumerate()

    def chunk_and_mask(index, items):
        chunks, lengths = _chunks(items, max_len)
        user_seed = tf.stack([tf.constant(epoch_seed, tf.int64), index * num_pipelines + pipeline_id])
        return mask_positions(
            chunks, lengths, user_seed, vocabulary_size=vocabulary_size, mask_prob=mask_prob, max_predictions=max_predictions
        )

    ds = ds.map(graph_fn(chunk_and_mask), num_parallel_calls=AUTOTUNE).unbatch()
    ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False).repeat()
    return epoch_batches(ds, batch_size, steps, skip_steps, input_context)


def num_cloze_chunks(metadata, max_len):
    """Cloze chunks per epoch, from the set's length histogram (mirrors :func:`num_train_windows`)."""
    return sum(users * count_chunks(n, max_len) for n, users in training_lengths(metadata).items())


def num_cloze_targets(metadata, max_len, mask_prob=0.3, max_predictions=30):
    """Masked positions (positions with loss) per epoch."""
    return sum(
        users * sum(num_masked(w, mask_prob, max_predictions) for w in chunk_lengths(n, max_len))
        for n, users in training_lengths(metadata).items()
    )


def cloze_steps_per_epoch(metadata, max_len, batch_size, shuffle="epoch"):
    return epoch_steps(num_cloze_chunks(metadata, max_len), batch_size, shuffle)
