"""tf.data input pipelines over a TFRecord set: training windows and evaluation views.

Everything streams from the shards (interleave -> parse -> window -> shuffle
-> batch -> prefetch); memory does not grow with the size of the data.

Training windows
----------------
A training sequence of ``n`` items has targets at positions ``1 .. n-1``
(item ``t`` is predicted from items ``< t``). Windows of ``max_len`` inputs
end at label positions ``n, n - stride, n - 2*stride, ...``; each such window
carries loss only on its last ``stride`` positions, so every target is trained
exactly once per epoch and has at least ``max_len - stride`` items of context
(or all of its history when that is shorter). The first window that would
start at position 0 instead takes every remaining target. Windows are
right-padded with ``PAD_ID`` and padded positions carry no loss.

``pad_as_item=True`` reproduces the original instead: windows are left-padded
with the pad id and every position, pads included, carries loss.

Evaluation views
----------------
``valid`` and ``test`` rows hold the most recent ``max_len`` items of the
context (right-padded), its length and the single target:

* leave-one-out users (``ROLE_LOO``): valid = (items[:-2], items[-2]),
  test = (items[:-1], items[-1]); training uses items[:-2];
* random split: ``ROLE_VALID`` / ``ROLE_TEST`` users predict items[-1] from
  items[:-1]; ``ROLE_TRAIN`` users train on all of their items.

Cloze chunks (GRec-encoder pretraining) are in :mod:`peterrec.data.cloze`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from peterrec.data import tfrecord
from peterrec.data.tfrecord import graph_fn
from peterrec.errors import ConfigError
from peterrec.features import (
    ITEM_IDS,
    LABELS,
    LENGTHS,
    PAD_ID,
    ROLE_LOO,
    ROLE_NAMES,
    ROLE_TEST,
    ROLE_TRAIN,
    ROLE_VALID,
    SAMPLE_WEIGHT,
)

AUTOTUNE = tf.data.AUTOTUNE
EVAL_SPLITS = ("valid", "test")


# ---------------------------------------------------------------- window arithmetic
def window_bounds(n, max_len, stride):
    """Per-window ``(start, length, loss_from)`` for a sequence of ``n`` items (TF ops).

    ``start``: index of the first input item; ``length``: number of inputs;
    ``loss_from``: first window index that carries loss.
    """
    n = tf.cast(n, tf.int32)
    num_strided = tf.maximum(0, (n - max_len - 1 + stride - 1) // stride)
    k = tf.range(num_strided + 1)
    ends = n - k * stride  # exclusive end of the label positions
    starts = tf.maximum(0, ends - 1 - max_len)
    lengths = ends - 1 - starts
    loss_start = tf.where(k < num_strided, ends - stride, tf.ones_like(ends))  # first label position with loss
    loss_from = loss_start - 1 - starts
    keep = lengths > 0
    return tf.boolean_mask(starts, keep), tf.boolean_mask(lengths, keep), tf.boolean_mask(loss_from, keep)


def count_windows(n, max_len, stride):
    """Python twin of :func:`window_bounds`: number of windows of an ``n``-item sequence."""
    if n < 2:
        return 0
    return max(0, math.ceil((n - max_len - 1) / stride)) + 1


def _windows(items, max_len, stride, pad_as_item):
    starts, lengths, loss_from = window_bounds(tf.size(items), max_len, stride)
    last = tf.size(items) - 1
    j = tf.range(max_len + 1)[None, :]
    shift = (max_len - lengths)[:, None] if pad_as_item else tf.zeros_like(lengths)[:, None]
    real = (j >= shift) & (j - shift <= lengths[:, None])  # the window's inputs plus its last label
    pos = tf.clip_by_value(starts[:, None] + j - shift, 0, last)
    seq = tf.where(real, tf.gather(items, pos), tf.constant(PAD_ID, items.dtype))
    jj = j[:, :-1]
    inputs = seq[:, :-1]
    if pad_as_item:  # original layout: left pads, loss everywhere except where the window overlaps the next one
        weight = (starts[:, None] == 0) | (jj >= loss_from[:, None])
    else:
        weight = (jj < lengths[:, None]) & (jj >= loss_from[:, None])
        inputs = tf.where(jj < lengths[:, None], inputs, tf.constant(PAD_ID, items.dtype))
    return {ITEM_IDS: inputs, LABELS: seq[:, 1:], SAMPLE_WEIGHT: tf.cast(weight, tf.float32)}


# ---------------------------------------------------------------- views
def train_items(record):
    """The training part of a record's items (empty for valid/test users)."""
    items, role = record["items"], record["role"]
    n = tf.size(items)
    size = tf.case(
        [(tf.equal(role, ROLE_LOO), lambda: tf.maximum(n - 2, 0)), (tf.equal(role, ROLE_TRAIN), lambda: n)],
        default=lambda: tf.constant(0),
    )
    return items[:size]


def _eval_context(record, split):
    """(context, target) of a record for ``split``; target -1 when the record has none."""
    items, role = record["items"], record["role"]
    n = tf.size(items)
    eval_role = ROLE_VALID if split == "valid" else ROLE_TEST
    holdout = 2 if split == "valid" else 1
    is_loo = tf.equal(role, ROLE_LOO)
    use = (is_loo & (n > holdout)) | (tf.equal(role, eval_role) & (n > 1))
    cut = tf.where(is_loo, n - holdout, n - 1)
    cut = tf.clip_by_value(cut, 0, tf.maximum(n - 1, 0))
    target = tf.where(use, tf.gather(items, cut), -1)
    return items[:cut], target


def _eval_row(record, split, max_len):
    context, target = _eval_context(record, split)
    context = context[-max_len:]
    length = tf.size(context)
    padded = tf.pad(context, [[0, max_len - length]], constant_values=PAD_ID)
    return {ITEM_IDS: tf.ensure_shape(padded, [max_len]), LENGTHS: length, LABELS: target, "user": record["user"]}


# ---------------------------------------------------------------- datasets
def _records(set_dir, files=None, shuffle_seed=None, input_context=None):
    files = list(files or tfrecord.shard_files(set_dir))
    if shuffle_seed is not None:
        files = [files[i] for i in np.random.default_rng(shuffle_seed).permutation(len(files))]
    ds = tf.data.Dataset.from_tensor_slices(files)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    # Disjoint data per input pipeline (worker): whole files when every worker gets at least one,
    # else every n-th record (fewer files than workers would leave a worker with nothing).
    by_file = pipelines > 1 and len(files) >= pipelines
    if by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    ds = ds.interleave(
        tf.data.TFRecordDataset, cycle_length=min(8, len(files)), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    if pipelines > 1 and not by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    return ds.map(tfrecord.parse_example, num_parallel_calls=AUTOTUNE)


def per_replica_batch_size(batch_size, input_context=None):
    """The batch each replica gets of a global ``batch_size`` (ConfigError if it does not divide)."""
    if input_context is None:
        return batch_size
    replicas = input_context.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(f"--batch_size {batch_size} (and --eval_batch_size) must be divisible by the {replicas} replicas in sync")
    return batch_size // replicas


def epoch_batches(ds, batch_size, steps, skip_steps=0, input_context=None, batch=None):
    """One epoch of ``steps`` global steps from a repeated stream ``ds``, for this input pipeline.

    ``batch(ds, per_replica_batch_size)`` batches the stream (default: ``ds.batch(..., drop_remainder=True)``).

    Each replica consumes one per-replica batch per step, and a pipeline feeds
    ``num_replicas_in_sync / num_input_pipelines`` replicas (e.g. both GPUs of
    a Mirrored worker), so it yields that many batches per step. Every
    pipeline yields the same number of batches, so workers run equal step
    counts (the collectives would hang otherwise).
    """
    per_pipeline = 1
    if input_context is not None:
        per_pipeline = max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
    size = per_replica_batch_size(batch_size, input_context)
    ds = batch(ds, size) if batch is not None else ds.batch(size, drop_remainder=True)
    return ds.take(steps * per_pipeline).skip(skip_steps * per_pipeline).prefetch(AUTOTUNE)


def by_length(length_fn, max_len, width=8, pad_to_boundary=False, drop_remainder=True):
    """A ``batch`` argument of :func:`epoch_batches`: batches of rows whose ``length_fn(row)`` lies in the same
    band of ``width`` (1..width, width+1..2*width, ... up to ``max_len``), so a batch's longest row is close to its
    others (random batches of variable-length rows are padded to their longest, mostly to the long tail).

    ``pad_to_boundary``: variable-length rows are padded to their band's upper bound (a few shapes, for XLA);
    otherwise to the batch's longest. ``drop_remainder=False`` (evaluation): each band's last partial batch too.
    """
    boundaries = list(range(width + 1, max_len + 1, width)) + [max_len + 1]

    def batch(ds, size):
        return ds.bucket_by_sequence_length(
            length_fn, boundaries, [size] * (len(boundaries) + 1), pad_to_bucket_boundary=pad_to_boundary, drop_remainder=drop_remainder,
        )

    return batch


SHUFFLES = ("epoch", "once")


def order_seed(seed, epoch, shuffle="epoch"):
    """Seed of an epoch's data order: ``seed * 1000 + epoch`` (``"epoch"``: a new order every epoch), or
    ``seed * 1000`` for every epoch (``"once"``: the original's one permutation, reused by every epoch)."""
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
    return int(seed) * 1000 + (int(epoch) if shuffle == "epoch" else 0)


def epoch_steps(examples, batch_size, shuffle="epoch"):
    """Training steps per epoch over ``examples`` rows: ``ceil(examples / batch_size)`` (``"epoch"``: the last
    batch is filled from the next pass), or the original's count (``"once"``: batch ``b`` is used only while
    ``(b + 1) * batch_size < examples``, so the last partial batch is dropped, and the last full one when the
    batch size divides the examples); at least 1."""
    examples, batch_size = int(examples), int(batch_size)
    if shuffle == "once":
        return max(1, (examples - 1) // batch_size)
    return max(1, math.ceil(examples / batch_size))


def train_dataset(
    set_dir,
    *,
    max_len,
    stride,
    batch_size,
    steps,
    seed,
    epoch=0,
    skip_steps=0,
    pad_as_item=False,
    shuffle="epoch",
    shuffle_buffer=20000,
    input_context=None,
):
    """One epoch of ``steps`` training batches of exactly ``batch_size`` windows.

    The windows are shuffled with ``seed * 1000 + epoch`` (``shuffle="once"``: the same order every epoch,
    :func:`order_seed`) and repeated so the last batch is full (a few windows of the next pass fill it; with
    :func:`epoch_steps` ``"once"`` the epoch ends before the last partial batch); ``skip_steps``
    skips the batches a resumed job already trained on.
    """
    epoch_seed = order_seed(seed, epoch, shuffle)
    ds = _records(set_dir, shuffle_seed=epoch_seed, input_context=input_context)
    ds = ds.map(graph_fn(train_items), num_parallel_calls=AUTOTUNE).filter(graph_fn(lambda items: tf.size(items) >= 2))
    # map + unbatch, not flat_map(from_tensor_slices): the same windows in the same order without a dataset per user
    ds = ds.map(graph_fn(lambda items: _windows(items, max_len, stride, pad_as_item)), num_parallel_calls=AUTOTUNE).unbatch()
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False).repeat()
    return epoch_batches(ds, batch_size, steps, skip_steps, input_context)


def eval_dataset(set_dir, split, *, max_len, batch_size, input_context=None):
    """Rows ``{item_ids [L], lengths, labels, user}`` of the users that have a ``split`` target."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    ds = _records(set_dir, input_context=input_context)
    ds = ds.map(graph_fn(lambda r: _eval_row(r, split, max_len)), num_parallel_calls=AUTOTUNE)
    ds = ds.filter(graph_fn(lambda row: row[LABELS] >= 0))
    return ds.batch(per_replica_batch_size(batch_size, input_context)).prefetch(AUTOTUNE)


# ---------------------------------------------------------------- counts from metadata
def training_lengths(metadata):
    """Histogram ``{train_length: users}`` of the training views, from the set's metadata."""
    hist = {}
    for role, table in metadata.get("length_histogram", {}).items():
        for length, users in table.items():
            n = int(length)
            if role == ROLE_NAMES[ROLE_LOO]:
                n -= 2
            elif role != ROLE_NAMES[ROLE_TRAIN]:
                continue
            hist[n] = hist.get(n, 0) + int(users)
    return hist


def num_train_windows(metadata, max_len, stride):
    return sum(users * count_windows(n, max_len, stride) for n, users in training_lengths(metadata).items())


def num_train_targets(metadata):
    return sum(users * max(n - 1, 0) for n, users in training_lengths(metadata).items())


def steps_per_epoch(metadata, max_len, stride, batch_size, shuffle="epoch"):
    return epoch_steps(num_train_windows(metadata, max_len, stride), batch_size, shuffle)
