"""Caser input pipelines over a TFRecord set: sliding windows, user ids, negatives, evaluation rows.

Training windows (caser_pytorch ``Interactions.to_sequence``)
-----------------------------------------------------------
Each user's training items (``dataset.train_items``: ``items[:-2]`` of a
leave-one-out user, every item of a ``ROLE_TRAIN`` user) are cut into **all**
sliding windows of ``L + T`` items, step 1, newest first: the first ``L``
items are the input, the last ``T`` the targets. A user with ``c < L + T``
training items gives **one** window, left-padded with ``PAD_ID``. So an epoch
has ``sum_u max(c_u - (L + T) + 1, 1)`` windows (:func:`count_windows`).
Targets that are padding (``c < T``) carry no loss (``sample_weight`` 0); the
original trains them as the pad item (docs/fidelity.md, Caser section).

Negatives
---------
Each window gets ``neg_samples`` items drawn uniformly, with replacement,
from the real items the user has **not** trained on (reserved ids are never
drawn). They are redrawn every epoch with the stateless seed
``(seed * 1000 + epoch, user index)``, so an epoch's batches are a function of
``(seed, epoch)`` and a resumed job (``skip_steps``) sees the same stream.
Drawing is exact and O(history) per user: a uniform rank ``r`` among the
allowed items is mapped to the ``r``-th allowed id with one ``searchsorted``
over the user's sorted training items (:func:`sample_negatives`).

Users
-----
Caser has a user embedding. :func:`scan_users` makes one streaming pass over
the set and indexes the users that have training items, in sorted order of
their raw ids, from 1 (:class:`CaserUsers`); index ``UNKNOWN_USER`` (0) is any
other user (random-split validation/test users, users of new data, serving),
whose user vector is zero (see ``peterrec.models.caser``).

Evaluation rows
---------------
:func:`eval_dataset` gives the rows of ``dataset.eval_dataset`` (the most
recent ``L`` context items, right-padded, ``lengths``, the single ``labels``
target) plus ``user_index``. With ``with_history=True`` each row also holds
``history`` (every context item, padded with ``PAD_ID``: Caser's metric set
removes them from the ranking) and ``holdout`` (the held-out items of the
split, the Caser metrics' targets).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from peterrec.data import dataset
from peterrec.data.tfrecord import graph_fn
from peterrec.errors import DataError
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, NUM_RESERVED, PAD_ID, SAMPLE_WEIGHT, USER_INDEX

AUTOTUNE = tf.data.AUTOTUNE
# USER_INDEX, int32 [batch]: 1.. for users with training items, UNKNOWN_USER otherwise
NEGATIVES = "negatives"  # int32 [batch, neg_samples]
HISTORY = "history"  # int32 [batch, H]: the evaluation context, PAD_ID-padded (excluded from Caser's ranking)
HOLDOUT = "holdout"  # int32 [batch, M]: the held-out items of the split, PAD_ID-padded
UNKNOWN_USER = 0


# ---------------------------------------------------------------- users
@dataclasses.dataclass
class CaserUsers:
    """The users of a TFRecord set that have training items.

    Attributes:
        tokens: raw user ids (bytes), sorted; ``tokens[i]`` has index ``i + 1``.
        max_train_length: the longest training history.
        max_distinct_items: most distinct real items one user trained on.
    """

    tokens: np.ndarray
    max_train_length: int
    max_distinct_items: int

    @property
    def size(self):
        """Rows of the user table: the indexed users plus ``UNKNOWN_USER``."""
        return len(self.tokens) + 1

    def table(self):
        """A lookup table raw user id -> index (``UNKNOWN_USER`` for any other id)."""
        keys = tf.constant(self.tokens if len(self.tokens) else np.array([b""], dtype=object), tf.string)
        values = tf.range(1, len(self.tokens) + 1, dtype=tf.int32) if len(self.tokens) else tf.constant([UNKNOWN_USER])
        return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=UNKNOWN_USER)

    def index(self, users):
        """Numpy lookup of raw ids (str or bytes) -> indices (for tests and tools)."""
        lookup = {token: i + 1 for i, token in enumerate(self.tokens)}
        return np.array([lookup.get(u.encode() if isinstance(u, str) else u, UNKNOWN_USER) for u in users], np.int32)


def _real_items(items):
    return tf.boolean_mask(items, items >= NUM_RESERVED)


def scan_users(set_dir, vocabulary_size=None):
    """One streaming pass over the set: the users with training items (O(users) memory).

    Raises:
        DataError: a raw user id occurs twice, or (given ``vocabulary_size``)
            a user trained on every real item, so no negative can be drawn.
    """

    def summary(record):
        items = dataset.train_items(record)
        return record["user"], tf.size(items), tf.size(tf.unique(_real_items(items)).y)

    chunks = list(dataset._records(set_dir).map(graph_fn(summary), num_parallel_calls=AUTOTUNE).batch(8192).as_numpy_iterator())
    users = np.concatenate([c[0] for c in chunks]) if chunks else np.array([], dtype=object)
    lengths = np.concatenate([c[1] for c in chunks]) if chunks else np.array([], np.int32)
    distinct = np.concatenate([c[2] for c in chunks]) if chunks else np.array([], np.int32)
    keep = lengths > 0
    tokens = np.sort(users[keep].astype(object))
    if len(tokens) > 1:
        dup = np.flatnonzero(tokens[1:] == tokens[:-1])
        if len(dup):
            raise DataError(f"{set_dir}: user {tokens[dup[0]].decode(errors='replace')!r} has more than one record")
    if vocabulary_size is not None and len(distinct) and distinct.max() >= vocabulary_size - NUM_RESERVED:
        worst = users[int(np.argmax(distinct))].decode(errors="replace")
        raise DataError(
            f"{set_dir}: user {worst!r} trained on all {vocabulary_size - NUM_RESERVED} items; "
            "Caser's negatives (items the user has not trained on) cannot be drawn"
        )
    return CaserUsers(
        tokens=tokens,
        max_train_length=int(lengths.max()) if len(lengths) else 0,
        max_distinct_items=int(distinct.max()) if len(distinct) else 0,
    )


# ---------------------------------------------------------------- windows and negatives
def count_windows(c, L, T):
    """Windows of a ``c``-item training history: ``max(c - (L + T) + 1, 1)``, 0 for an empty one."""
    return max(int(c) - (L + T) + 1, 1) if c > 0 else 0


def count_targets(c, L, T):
    """Real (non-padding) targets over the windows of a ``c``-item history."""
    if c <= 0:
        return 0
    return (c - (L + T) + 1) * T if c >= L + T else min(int(c), T)


def num_train_windows(metadata, L, T):
    return sum(users * count_windows(n, L, T) for n, users in dataset.training_lengths(metadata).items())


def num_train_targets(metadata, L, T):
    return sum(users * count_targets(n, L, T) for n, users in dataset.training_lengths(metadata).items())


def steps_per_epoch(metadata, L, T, batch_size):
    return max(1, math.ceil(num_train_windows(metadata, L, T) / batch_size))


def sample_negatives(train_items, shape, seed, vocabulary_size):
    """Uniform draws ``[shape]`` from the real ids ``[NUM_RESERVED, V)`` not in ``train_items``.

    Exact and O(len(train_items)): ``r`` uniform in ``[0, allowed)`` becomes
    the ``r``-th allowed id ``v = NUM_RESERVED + r`` plus the number of
    excluded ids below it, which is ``searchsorted(ex - arange, v, 'right')``
    for the sorted excluded ids ``ex``. The caller guarantees ``allowed >= 1``.
    """
    excluded = tf.sort(tf.unique(_real_items(tf.cast(train_items, tf.int32))).y)
    allowed = int(vocabulary_size) - NUM_RESERVED - tf.size(excluded)
    r = tf.random.stateless_uniform([tf.reduce_prod(shape)], seed=seed, minval=0, maxval=allowed, dtype=tf.int32)
    v = r + NUM_RESERVED
    shifted = excluded - tf.range(tf.size(excluded), dtype=tf.int32)
    return tf.reshape(v + tf.searchsorted(shifted, v, side="right", out_type=tf.int32), shape)


def user_windows(items, user_index, *, L, T, neg_samples, vocabulary_size, epoch_seed):
    """All windows of one user's training items (newest first), as a dict of ``[n, ...]`` tensors."""
    items = tf.cast(items, tf.int32)
    width = L + T
    c = tf.size(items)
    n = tf.maximum(c - width + 1, 1)
    padded = tf.concat([tf.fill([tf.maximum(width - c, 0)], PAD_ID), items], axis=0)
    starts = tf.size(padded) - width - tf.range(n)
    windows = tf.gather(padded, starts[:, None] + tf.range(width)[None, :])
    targets = windows[:, L:]
    seed = tf.stack([tf.cast(epoch_seed, tf.int64), tf.cast(user_index, tf.int64)])
    return {
        ITEM_IDS: windows[:, :L],
        LABELS: targets,
        SAMPLE_WEIGHT: tf.cast(targets >= NUM_RESERVED, tf.float32),
        NEGATIVES: sample_negatives(items, tf.stack([n, neg_samples]), seed, vocabulary_size),
        USER_INDEX: tf.fill([n], tf.cast(user_index, tf.int32)),
    }


def train_windows(set_dir, users: CaserUsers, *, L, T, neg_samples, vocabulary_size, seed, epoch=0, input_context=None):
    """The finite, unshuffled stream of one epoch's windows (records in the epoch's file order)."""
    epoch_seed = int(seed) * 1000 + int(epoch)
    table = users.table()
    ds = dataset._records(set_dir, shuffle_seed=epoch_seed, input_context=input_context)
    ds = ds.map(graph_fn(lambda r: (dataset.train_items(r), table.lookup(r["user"]))), num_parallel_calls=AUTOTUNE)
    ds = ds.filter(graph_fn(lambda items, user: tf.size(items) >= 1))
    windows = lambda items, user: user_windows(  # noqa: E731
        items, user, L=L, T=T, neg_samples=neg_samples, vocabulary_size=vocabulary_size, epoch_seed=epoch_seed
    )
    return ds.map(graph_fn(windows), num_parallel_calls=AUTOTUNE).unbatch()


def train_dataset(
    set_dir,
    users: CaserUsers,
    *,
    L,
    T,
    neg_samples,
    vocabulary_size,
    batch_size,
    steps,
    seed,
    epoch=0,
    skip_steps=0,
    shuffle_buffer=20000,
    input_context=None,
):
    """One epoch of ``steps`` batches of exactly ``batch_size`` windows (see the module docstring).

    Batches: ``item_ids [B, L]`` (left-padded), ``labels`` and
    ``sample_weight [B, T]``, ``negatives [B, neg_samples]``, ``user_index
    [B]``. Shuffled with ``seed * 1000 + epoch`` and repeated so the last
    batch is full, as ``dataset.train_dataset``; ``skip_steps`` skips the
    batches a resumed job already trained on.
    """
    epoch_seed = int(seed) * 1000 + int(epoch)
    ds = train_windows(
        set_dir, users, L=L, T=T, neg_samples=neg_samples, vocabulary_size=vocabulary_size, seed=seed, epoch=epoch,
        input_context=input_context,
    )
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False).repeat()
    return dataset.epoch_batches(ds, batch_size, steps, skip_steps, input_context)


# ---------------------------------------------------------------- evaluation
def eval_dataset(set_dir, split, users: CaserUsers, *, L, batch_size, with_history=False, input_context=None):
    """Evaluation rows of ``split`` with ``user_index`` (and ``history``/``holdout``, see the module docstring)."""
    table = users.table()
    if not with_history:
        ds = dataset.eval_dataset(set_dir, split, max_len=L, batch_size=batch_size, input_context=input_context)
        return ds.map(graph_fn(lambda b: {**b, USER_INDEX: table.lookup(b["user"])}))
    if split not in dataset.EVAL_SPLITS:
        raise ValueError(f"split must be one of {dataset.EVAL_SPLITS}, got {split!r}")

    def row(record):
        context, target = dataset._eval_context(record, split)
        recent = context[-L:]
        length = tf.size(recent)
        return {
            ITEM_IDS: tf.ensure_shape(tf.pad(recent, [[0, L - length]], constant_values=PAD_ID), [L]),
            LENGTHS: length,
            LABELS: target,
            USER_INDEX: table.lookup(record["user"]),
            HISTORY: context,
            HOLDOUT: target[None],
        }

    ds = dataset._records(set_dir, input_context=input_context).map(graph_fn(row), num_parallel_calls=AUTOTUNE)
    ds = ds.filter(graph_fn(lambda r: r[LABELS] >= 0))
    return ds.padded_batch(dataset.per_replica_batch_size(batch_size, input_context), padding_values=PAD_ID).prefetch(AUTOTUNE)
