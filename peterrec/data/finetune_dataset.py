"""tf.data pipelines for finetuning: one example per (user, target) pair.

Records of a finetuning TFRecord set (``pipelines.convert --targets`` or a
PeterRec ``src,,targets`` CSV) hold the user's source sequence (``items``,
encoded with the pretrained backbone's vocabulary) and their targets
(``targets``, encoded with the target vocabulary). Each row is the most recent
``context_len`` source items (right-padded), their count and one target:
``{item_ids [context_len], lengths, labels}``. Separator tokens are added by
the task (the original's ``[src, 0]`` / ``[0, src, 0]`` layouts), so the
same rows serve causal and non-causal backbones.

Roles: ``ROLE_TRAIN`` (and ``ROLE_LOO``) users' pairs train; ``ROLE_VALID`` and
``ROLE_TEST`` users' pairs evaluate (a seeded split by user).
"""

from __future__ import annotations

import tensorflow as tf

from peterrec.data import tfrecord
from peterrec.data.dataset import AUTOTUNE, _records, epoch_batches, epoch_steps, order_seed, per_replica_batch_size
from peterrec.data.tfrecord import graph_fn
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, PAD_ID, ROLE_LOO, ROLE_TEST, ROLE_TRAIN, ROLE_VALID

SPLIT_ROLES = {"train": (ROLE_TRAIN, ROLE_LOO), "valid": (ROLE_VALID,), "test": (ROLE_TEST,)}


def _pairs(record, context_len):
    items = record["items"][-context_len:]
    length = tf.size(items)
    padded = tf.ensure_shape(tf.pad(items, [[0, context_len - length]], constant_values=PAD_ID), [context_len])
    targets = record["targets"]
    n = tf.size(targets)
    return {
        ITEM_IDS: tf.repeat(padded[None, :], n, axis=0),
        LENGTHS: tf.fill([n], length),
        LABELS: targets,
        "user": tf.fill([n], record["user"]),
    }


def _role_filter(split):
    roles = tf.constant(SPLIT_ROLES[split], tf.int32)
    return lambda r: tf.reduce_any(tf.equal(r["role"], roles)) & (tf.size(r["items"]) > 0)


def pair_dataset(set_dir, split, *, context_len, batch_size, shuffle_seed=None, input_context=None):
    """Unbatched (user, target) rows of ``split`` ("train", "valid" or "test")."""
    if split not in SPLIT_ROLES:
        raise ValueError(f"split must be one of {tuple(SPLIT_ROLES)}, got {split!r}")
    ds = _records(set_dir, shuffle_seed=shuffle_seed, input_context=input_context).filter(graph_fn(_role_filter(split)))
    return ds.map(graph_fn(lambda r: _pairs(r, context_len)), num_parallel_calls=AUTOTUNE).unbatch()


def train_pairs(set_dir, *, context_len, batch_size, steps, seed, epoch=0, skip_steps=0, shuffle="epoch", shuffle_buffer=20000,
                input_context=None):
    """One epoch of exactly ``steps`` batches of training pairs (seeded by ``seed`` and ``epoch``; ``shuffle="once"``:
    the same order every epoch, as the original's one permutation, see :func:`~peterrec.data.dataset.order_seed`)."""
    epoch_seed = order_seed(seed, epoch, shuffle)
    ds = pair_dataset(set_dir, "train", context_len=context_len, batch_size=batch_size, shuffle_seed=epoch_seed, input_context=input_context)
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False).repeat()
    return epoch_batches(ds, batch_size, steps, skip_steps, input_context)


def eval_pairs(set_dir, split, *, context_len, batch_size, input_context=None):
    ds = pair_dataset(set_dir, split, context_len=context_len, batch_size=batch_size, input_context=input_context)
    return ds.batch(per_replica_batch_size(batch_size, input_context)).prefetch(AUTOTUNE)


def num_pairs(metadata, split):
    """Number of (user, target) pairs of ``split`` from the set's metadata."""
    pairs = metadata.get("target_pairs")
    if pairs is None:
        raise ValueError("this TFRecord set has no finetuning targets (metadata.json lacks target_pairs)")
    names = {"train": ("train", "loo"), "valid": ("valid",), "test": ("test",)}[split]
    return sum(int(pairs.get(name, 0)) for name in names)


def steps_per_epoch(metadata, batch_size, shuffle="epoch"):
    """``ceil(pairs / batch_size)``, or with ``shuffle="once"`` the original's count (last partial batch dropped)."""
    return epoch_steps(num_pairs(metadata, "train"), batch_size, shuffle)


def set_metadata(set_dir):
    return tfrecord.load_metadata(set_dir)
