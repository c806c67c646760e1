"""ATRank's task (loss, AUC pairs, full ranking, serving) and its input pipelines over a TFRecord set.

Training rows (``atrank/build_dataset.py``): for every training position
``i >= 1`` of a user (``dataset.train_items``), the history is the items
before ``i`` (the most recent ``max_len``), the time bucket of history item
``j`` is ``time_bucket(day(i) − day(j) + 1)`` and the candidates are the
positive ``items[i]`` (label 1) and one negative (label 0) drawn uniformly
from the real items **not anywhere in the user's sequence**, fixed for the
whole run (stateless seed ``(seed, hash(user))``). Both rows of a position
travel together (``candidates [B, 2]``, ``candidate_labels [B, 2]``);
batches are cut to their longest history, as the original pads each batch
to its own maximum.

Evaluation rows: the most recent ``max_len`` items before the split's target
(``dataset._eval_context``), their time buckets relative to the target's
day, the target (``labels``) and one negative not in the user's sequence
(``negative``, its own stateless seed) for the AUC.

Multi-behaviour ATRank: with ``behaviour_fn`` (``record -> int32 [n]``,
``behaviours.Behaviours.lookup_fn``: each interaction's behaviour-type
id) the rows also carry ``behaviours`` ``[B, T]`` aligned with the history
(0 in padded slots; masks come from the lengths).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from peterrec.data import caser_dataset, dataset
from peterrec.data.tfrecord import graph_fn
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, PAD_ID
from peterrec.models.atrank import SECONDS_PER_DAY, ATRank, time_bucket  # noqa: F401  (registers ATRank)
from peterrec.eval.popularity import PopularityScorer
from peterrec.tasks.base import Task

AUTOTUNE = tf.data.AUTOTUNE
TIME_BUCKETS = "time_buckets"  # int32 [B, T]
CANDIDATES = "candidates"  # int32 [B, 2]: positive, negative
CANDIDATE_LABELS = "candidate_labels"  # float32 [B, 2]: 1, 0
NEGATIVE = "negative"  # int32 [B]: an evaluation row's negative
BEHAVIOURS = "behaviours"  # int32 [B, T]: the history's behaviour-type ids (multi-behaviour)
HISTORY_KEYS = (ITEM_IDS, TIME_BUCKETS, BEHAVIOURS)
_EVAL_SEED_OFFSET = {"valid": 1, "test": 2}


def _days(record):
    """Day numbers of the record's items (zeros when the set has no timestamps)."""
    times = record["timestamps"]
    n = tf.size(record["items"])
    return tf.cond(tf.size(times) > 0, lambda: times // SECONDS_PER_DAY, lambda: tf.zeros([n], tf.int64))


def _user_seed(record, seed):
    return tf.stack([tf.constant(int(seed), tf.int64), tf.strings.to_hash_bucket_fast(record["user"], 2**62)])


def _histories(items, days, ends, width, kinds=None):
    """Right-padded histories ``[N, width]`` of the items before each index in ``ends``, their lengths and time buckets
    (and, given per-item ``kinds``, their behaviour ids as a fourth value)."""
    ends = tf.cast(ends, tf.int32)
    start = tf.maximum(ends - width, 0)
    length = ends - start
    j = tf.range(width)[None, :]
    real = j < length[:, None]
    idx = tf.clip_by_value(start[:, None] + j, 0, tf.maximum(tf.size(items) - 1, 0))
    history = tf.where(real, tf.gather(items, idx), PAD_ID)
    delta = tf.gather(days, ends)[:, None] - tf.gather(days, idx) + 1
    buckets = tf.where(real, time_bucket(delta), 0)
    if kinds is None:
        return history, length, buckets
    return history, length, buckets, tf.where(real, tf.gather(kinds, idx), 0)


def user_examples(record, *, max_len, vocabulary_size, seed, behaviour_fn=None):
    """All training rows of one user record (see the module docstring)."""
    items, days = record["items"], _days(record)
    n = tf.size(dataset.train_items(record))
    ends = tf.range(1, tf.maximum(n, 1))
    kinds = None if behaviour_fn is None else behaviour_fn(record)
    history, length, buckets, *behaviours = _histories(items, days, ends, max_len, kinds)
    negatives = caser_dataset.sample_negatives(items, tf.shape(ends), _user_seed(record, seed), vocabulary_size)
    positives = tf.gather(items, ends)
    count = tf.size(ends)
    row = {
        ITEM_IDS: history,
        LENGTHS: length,
        TIME_BUCKETS: buckets,
        CANDIDATES: tf.stack([positives, negatives], axis=1),
        CANDIDATE_LABELS: tf.tile(tf.constant([[1.0, 0.0]]), [count, 1]),
    }
    return row | ({BEHAVIOURS: behaviours[0]} if behaviours else {})


def trim(batch):
    """Cut a batch's history columns to its longest history (at least 1)."""
    width = tf.maximum(tf.reduce_max(batch[LENGTHS]), 1)
    return {key: value[:, :width] if key in HISTORY_KEYS else value for key, value in batch.items()}


def train_dataset(set_dir, *, max_len, batch_size, steps, seed, vocabulary_size, epoch=0, skip_steps=0, shuffle_buffer=20000, input_context=None,
                  behaviour_fn=None, length_bucket=0):
    """One epoch of ``steps`` batches of ``batch_size // 2`` positions (each a positive and a negative row).

    Shuffled with ``seed * 1000 + epoch`` and repeated so the last batch is
    full, as ``dataset.train_dataset``; ``skip_steps`` resumes mid-epoch.
    ``length_bucket > 0``: a batch holds positions whose history lengths lie in
    the same band of that many items (:func:`peterrec.data.dataset.by_length`),
    so it is cut close to each row's own length; 0: random batches (the original).
    """
    epoch_seed = int(seed) * 1000 + int(epoch)
    ds = dataset._records(set_dir, shuffle_seed=epoch_seed, input_context=input_context)
    ds = ds.filter(graph_fn(lambda r: tf.size(dataset.train_items(r)) >= 2))
    ds = ds.map(graph_fn(lambda r: user_examples(r, max_len=max_len, vocabulary_size=vocabulary_size, seed=seed, behaviour_fn=behaviour_fn)),
                num_parallel_calls=AUTOTUNE)
    ds = ds.unbatch()
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False).repeat()
    batch = dataset.by_length(lambda row: row[LENGTHS], max_len, length_bucket) if length_bucket else None
    ds = dataset.epoch_batches(ds, max(1, batch_size // 2), steps, skip_steps, input_context, batch=batch)
    return ds.map(graph_fn(trim))


def eval_row(record, split, *, max_len, vocabulary_size, seed, behaviour_fn=None):
    context, target = dataset._eval_context(record, split)
    items, days = record["items"], _days(record)
    end = tf.size(context)
    kinds = None if behaviour_fn is None else behaviour_fn(record)
    history, length, buckets, *behaviours = _histories(items, days, end[None], max_len, kinds)
    negative = caser_dataset.sample_negatives(items, [1], _user_seed(record, int(seed) + _EVAL_SEED_OFFSET[split]), vocabulary_size)
    row = {
        ITEM_IDS: history[0],
        LENGTHS: length[0],
        TIME_BUCKETS: buckets[0],
        LABELS: target,
        NEGATIVE: negative[0],
        "user": record["user"],
    }
    return row | ({BEHAVIOURS: behaviours[0][0]} if behaviours else {})


def eval_dataset(set_dir, split, *, max_len, batch_size, seed, vocabulary_size, input_context=None, behaviour_fn=None, length_bucket=0):
    """Evaluation rows of ``split`` (see the module docstring), batched and cut to the longest history.

    ``length_bucket > 0``: rows batched with others of similar history length (as :func:`train_dataset`;
    the metrics are means over rows, so only the cost changes).
    """
    if split not in dataset.EVAL_SPLITS:
        raise ValueError(f"split must be one of {dataset.EVAL_SPLITS}, got {split!r}")
    ds = dataset._records(set_dir, input_context=input_context)
    ds = ds.map(graph_fn(lambda r: eval_row(r, split, max_len=max_len, vocabulary_size=vocabulary_size, seed=seed, behaviour_fn=behaviour_fn)),
                num_parallel_calls=AUTOTUNE)
    ds = ds.filter(graph_fn(lambda row: row[LABELS] >= 0))
    size = dataset.per_replica_batch_size(batch_size, input_context)
    if length_bucket:
        ds = dataset.by_length(lambda row: row[LENGTHS], max_len, length_bucket, drop_remainder=False)(ds, size)
    else:
        ds = ds.batch(size)
    return ds.map(graph_fn(trim)).prefetch(AUTOTUNE)


def pair_ids(batch):
    """``[B, 2]``: each evaluation row's target and negative."""
    return tf.stack([tf.cast(batch[LABELS], tf.int32), tf.cast(batch[NEGATIVE], tf.int32)], axis=1)


class PopularityPairs(PopularityScorer):
    """The popularity baseline, also scoring ATRank's AUC pairs (training counts)."""

    def pair_scores(self, batch):
        return tf.gather(self.counts, pair_ids(batch))


@keras.saving.register_keras_serializable(package="peterrec")
class ATRankTask(Task):
    """ATRank trained with the original's pointwise loss, scored for AUC, full ranking and serving.

    Loss (``atrank/train.py``): ``mean sigmoid-CE(logit, y) + reg_rate *
    (l2(u) + l2(e_c))`` with ``l2(x) = ½ Σ x²`` over the whole batch, on
    activations. ``loss_sum`` returns ``Σ CE + N · reg_rate · ½ Σ(u² + e_c²)``
    and ``loss_count`` the number ``N`` of logits, so the loop's
    ``loss_sum / N`` is the original's loss.

    Serving receives item ids only: every time bucket is 0 there (and, multi-behaviour,
    every history item has the candidate's behaviour type).
    """

    def __init__(self, backbone, reg_rate=5e-5, **kwargs):
        kwargs.setdefault("name", "atrank_task")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.reg_rate = float(reg_rate)
        self.built = True

    def call(self, batch, training=None):
        return self.backbone(batch[ITEM_IDS], batch[LENGTHS], batch[TIME_BUCKETS], batch[CANDIDATES], batch.get(BEHAVIOURS), training=training)

    def loss_count(self, batch):
        return tf.cast(tf.size(batch[CANDIDATE_LABELS]), tf.float32)

    def loss_sum(self, batch, training=True, static_shapes=False):
        encoded, mask = self.backbone.encode(batch[ITEM_IDS], batch[LENGTHS], batch[TIME_BUCKETS], batch.get(BEHAVIOURS), training=training)
        logits, u, e = self.backbone.score_candidates(encoded, mask, batch[CANDIDATES], training=training)
        labels = tf.cast(batch[CANDIDATE_LABELS], tf.float32)
        ce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        if not self.reg_rate:
            return ce
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_count = self.loss_count(batch) * replicas  # the all-reduced count when replicas get equal batches
        l2 = 0.5 * (tf.reduce_sum(tf.square(tf.cast(u, tf.float32))) + tf.reduce_sum(tf.square(tf.cast(e, tf.float32))))
        return ce + global_count * self.reg_rate * l2

    def uses_candidate_sampler(self):
        return False

    def pair_scores(self, batch):
        """Logits ``[B, 2]`` of each evaluation row's target and negative (the AUC pairs)."""
        encoded, mask = self.backbone.encode(batch[ITEM_IDS], batch[LENGTHS], batch[TIME_BUCKETS], batch.get(BEHAVIOURS))
        return self.backbone.score_candidates(encoded, mask, pair_ids(batch))[0]

    def eval_scores(self, batch):
        """Logits ``[B, V]`` of every id (self-attention once per row, candidates in chunks)."""
        encoded, mask = self.backbone.encode(batch[ITEM_IDS], batch[LENGTHS], batch[TIME_BUCKETS], batch.get(BEHAVIOURS))
        return self.backbone.score_all(encoded, mask)

    def serve_scores(self, item_ids, lengths):
        """The serving signature's scores: item ids only, so every time bucket is 0."""
        item_ids = tf.cast(item_ids, tf.int32)
        encoded, mask = self.backbone.encode(item_ids, lengths, tf.zeros_like(item_ids))
        return self.backbone.score_all(encoded, mask)

    def get_config(self):
        return {"name": self.name, "backbone": keras.saving.serialize_keras_object(self.backbone), "reg_rate": self.reg_rate}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
