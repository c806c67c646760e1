"""CASR stage 2: counterfactual sequences from the *training* prefixes of a TFRecord set.

A training prefix is the context of one training target: for a user whose
training items are ``T`` (leave-one-out: all but the last two items), the
prefixes are ``T[max(0, t - max_len):t]`` for ``t = 1 .. len(T) - 1`` (RecBole's
augmentation, the contexts of the targets ``T[t]``). Validation and test
targets never enter a prefix.

Each prefix is *selected* with probability ``sample`` and then yields
``n_per_seq`` candidates. A candidate replaces the item at the intervention
position ``k`` (:func:`intervention_positions`; never padding) by a real item
``i'`` that is neither the original item nor one of the user's held-out
(validation/test) targets, and is labelled with the frozen sampler's top-1
``y' = argmax S(s')`` over the real items minus the held-out targets:

* ``heuristic``: ``i'`` uniform or popularity-weighted (training counts);
* ``learning`` (data-oriented): :func:`boundary_search` moves the embedding
  at ``k`` towards the sampler's decision boundary (CW-style hinge with
  margin ``kappa`` + L2 closeness, ``iters`` normalised gradient steps),
  then :func:`map_back` draws ``i'`` from a softmax over item similarities at
  temperature ``tao``;
* ``ad`` (model-oriented) happens in the anchor's training step
  (:func:`adversarial_samples`, called by
  :class:`peterrec.augment.task.CounterfactualTask`); stage 2 only selects
  and stores its prefixes.

Every random draw of a candidate comes from stateless uniforms keyed by
``(seed, user index)``, so the same seed gives the same samples whatever the
batch size. The sampler is only read: its weights never change.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time

from absl import logging
import numpy as np
import tensorflow as tf

from peterrec.augment.counterfactual import (
    HELDOUT, MAX_HELDOUT, POSITIONS_KEY, candidates, intervention_positions, min_prefix_length, sampler_labels,
)
from peterrec.data import dataset, tfrecord
from peterrec.data.tfrecord import graph_fn
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, PAD_ID, ROLE_TRAIN, SAMPLE_WEIGHT

SAMPLER_TOP1 = "sampler_top1"  # ad rows: the frozen sampler's top-1 on the original prefix (stage 2)
LENGTH_BUCKET = 8  # generated rows are batched with prefixes of similar length (items per bucket)


# ------------------------------------------------------------------ prefixes of a TFRecord set
def heldout_items(record):
    """The record's items after its training part (leave-one-out: validation and test target), padded with -1."""
    held = record["items"][tf.size(dataset.train_items(record)) :][:MAX_HELDOUT]
    return tf.pad(held, [[0, MAX_HELDOUT - tf.size(held)]], constant_values=-1)


def _user_prefixes(user_index, record, *, max_len, seed, sample, n_per_seq, intervention):
    items = dataset.train_items(record)
    n = tf.size(items)
    ends = tf.range(1, tf.maximum(n, 1))  # prefix ends t: the context of target items[t]
    num = tf.size(ends)
    starts = tf.maximum(ends - max_len, 0)
    lengths = ends - starts
    j = tf.range(max_len)[None, :]
    index = tf.minimum(starts[:, None] + j, tf.maximum(n - 1, 0))
    ids = tf.where(j < lengths[:, None], tf.gather(items, index), tf.constant(PAD_ID, items.dtype))
    # selection and candidate draws from separate streams: the same prefixes are selected whatever the method
    select_seed, draw_seed = tf.unstack(tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), user_index]), 2))
    selected = (tf.random.stateless_uniform([num], seed=select_seed) < sample) & (lengths >= min_prefix_length(intervention))
    rep = lambda x: tf.repeat(x, n_per_seq, axis=0)  # noqa: E731
    flat_u = tf.random.stateless_uniform([num * n_per_seq, intervention.uniforms], seed=draw_seed)
    rows_lengths = rep(lengths)
    return {
        "user": tf.fill([num * n_per_seq], record["user"]),
        "user_index": tf.fill([num * n_per_seq], user_index),
        "prefix_end": rep(ends),
        "candidate": tf.tile(tf.range(n_per_seq), [num]),
        ITEM_IDS: rep(ids),
        LENGTHS: rows_lengths,
        POSITIONS_KEY: intervention_positions(rows_lengths, intervention, flat_u[:, 0]),
        HELDOUT: tf.tile(heldout_items(record)[None, :], [num * n_per_seq, 1]),
        "u_label": flat_u[:, 1],
        "u_replace": flat_u[:, 2],
        "selected": rep(selected),
    }


def read_records(set_dir):
    """A set's parsed records in manifest order (deterministic)."""
    files = tfrecord.shard_files(set_dir)
    return tf.data.Dataset.from_tensor_slices(files).flat_map(tf.data.TFRecordDataset).map(tfrecord.parse_example)


def training_prefixes(set_dir, *, max_len, seed, sample, n_per_seq, intervention, batch_size, by_length=False):
    """Batches of the selected candidate rows of a set's training prefixes (see the module docstring).

    ``by_length``: a batch holds prefixes of similar length (bands of :data:`LENGTH_BUCKET` items), its
    ``item_ids`` cut to its band's upper bound, so the sampler runs over each prefix's own length, not ``max_len``.
    """
    ds = read_records(set_dir).enumerate()
    build = lambda u, r: _user_prefixes(  # noqa: E731
        u, r, max_len=max_len, seed=seed, sample=sample, n_per_seq=n_per_seq, intervention=intervention
    )
    ds = ds.map(graph_fn(build)).unbatch().filter(graph_fn(lambda row: row["selected"]))
    if not by_length:
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    ds = dataset.by_length(lambda row: row[LENGTHS], max_len, LENGTH_BUCKET, drop_remainder=False)(ds, batch_size)

    def cut(batch):
        width = tf.minimum(-(-tf.reduce_max(batch[LENGTHS]) // LENGTH_BUCKET) * LENGTH_BUCKET, max_len)
        return {**batch, ITEM_IDS: batch[ITEM_IDS][:, :width]}

    return ds.map(graph_fn(cut)).prefetch(tf.data.AUTOTUNE)


def count_prefixes(metadata, max_len, intervention):
    """``(prefixes, eligible)``: training prefixes of a set and those long enough for the intervention."""
    shortest = min_prefix_length(intervention)
    total = eligible = 0
    for n, users in dataset.training_lengths(metadata).items():
        total += users * max(n - 1, 0)
        eligible += users * sum(1 for t in range(1, n) if min(t, max_len) >= shortest)
    return total, eligible


# ------------------------------------------------------------------ the job: write the generated set
TSV_COLUMNS = (
    "user", "prefix_end", "position", "position_from_end", "old_item", "new_item", "label",
    "sampler_top1_before", "sampler_top1_after", "flipped", "margin", "original", "generated",
)


def generate(
    sampler,
    set_dir,
    output_dir,
    vocab,
    *,
    max_len,
    seed,
    sample,
    n_per_seq,
    intervention,
    batch_size=256,
    num_shards=4,
    tsv_path=None,
    inspect_rows=1000,
    metadata_extra=None,
    verbose=1,
):
    """Generate the counterfactual samples of a set's training prefixes into a TFRecord set.

    ``heuristic`` / ``learning``: each kept candidate is a record with
    ``items`` = the counterfactual prefix and ``targets`` = ``[label]``;
    ``ad``: each selected candidate row is stored as is (``items`` = the
    original prefix, ``targets`` = the sampler's top-1 on it, then its
    held-out ids) for the anchor's training step. Records have role ``ROLE_TRAIN``. The first
    ``inspect_rows`` samples go to ``tsv_path`` (original next to generated).
    Both files are written atomically.

    Returns:
        statistics: ``prefixes``, ``eligible``, ``selected`` (candidate rows
        processed), ``generated`` (records written), ``generated_share``
        (generated / training prefixes), ``flip_rate`` (share of processed
        candidates whose sampler top-1 changed; None for ``ad``) and ``seconds``.
    """
    t0 = time.perf_counter()
    metadata = tfrecord.load_metadata(set_dir)
    prefixes, eligible = count_prefixes(metadata, max_len, intervention)
    batches = training_prefixes(
        set_dir, max_len=max_len, seed=seed, sample=sample, n_per_seq=n_per_seq, intervention=intervention, batch_size=batch_size,
        by_length=True,
    )
    popularity = tf.constant(np.asarray(vocab.counts, np.float32))
    if intervention.method == "ad":  # the in-step search needs the sampler's top-1 on the original prefix: computed once here
        step = tf.function(lambda b: sampler_labels(sampler, b[ITEM_IDS], b[LENGTHS], b[HELDOUT])[1], reduce_retracing=True, autograph=False)
    else:
        step = tf.function(lambda b: candidates(sampler, b, intervention, popularity), reduce_retracing=True, autograph=False)
    stats = {"selected": 0, "generated": 0, "flipped": 0}
    rows = []  # heap of (-key, row): the inspect_rows samples that come first in (user, prefix end, candidate) order
    tokens = np.asarray(["[PAD]", "[OOV]", "[MASK]", "[SEP]", *vocab.tokens], dtype=object)

    def records():
        expected = max(1, math.ceil(eligible * min(sample, 1.0) * n_per_seq / batch_size))
        for number, batch in enumerate(batches):
            ids, lengths, held = batch[ITEM_IDS].numpy(), batch[LENGTHS].numpy(), batch[HELDOUT].numpy()
            users = batch["user"].numpy()
            stats["selected"] += len(lengths)
            if intervention.method == "ad":
                top1 = step(batch).numpy()
                for b in range(len(lengths)):
                    stats["generated"] += 1
                    yield {"user": users[b].decode(), "items": ids[b, : lengths[b]], "role": ROLE_TRAIN,
                           "targets": [top1[b], *held[b][held[b] >= 0]]}
                continue
            out = {k: v.numpy() for k, v in step(batch).items()}
            stats["flipped"] += int(out["flipped"].sum())
            positions = batch[POSITIONS_KEY].numpy()
            order = np.stack([batch["user_index"].numpy(), batch["prefix_end"].numpy(), batch["candidate"].numpy()], axis=1)
            for b in np.flatnonzero(out["keep"]):
                stats["generated"] += 1
                key = tuple(int(v) for v in order[b])
                if inspect_rows and (len(rows) < inspect_rows or key < tuple(-k for k in rows[0][0])):
                    n, k = lengths[b], positions[b]
                    row = (
                        users[b].decode(), key[1], int(k) + 1, int(n - k), tokens[out["old_item"][b]],
                        tokens[out["new_item"][b]], tokens[out["label"][b]], tokens[out["top1_before"][b]],
                        tokens[out["top1_after"][b]], int(out["flipped"][b]), f"{out['margin'][b]:.4f}",
                        " ".join(tokens[ids[b, :n]]), " ".join(tokens[out[ITEM_IDS][b, :n]]),
                    )
                    (heapq.heappush if len(rows) < inspect_rows else heapq.heapreplace)(rows, (tuple(-k for k in key), row))
                yield {"user": users[b].decode(), "items": out[ITEM_IDS][b, : lengths[b]], "role": ROLE_TRAIN, "targets": [out["label"][b]]}
            if verbose and (number + 1) % 20 == 0:
                logging.info(f"casr generation: batch {number + 1} of ~{expected}, {stats['generated']} samples")

    payload = {
        "kind": "casr_generated",
        "method": intervention.method,
        "intervention": dataclasses.asdict(intervention),
        "vocab_hash": vocab.hash,
        "vocab_size": vocab.size,
        "max_len": int(max_len),
        **(metadata_extra or {}),
    }
    tfrecord.write_tfrecord_set(records(), output_dir, num_shards, payload, overwrite=True, assets={"vocab.json": vocab.save})
    processed = max(stats["selected"], 1)
    result = {
        "prefixes": prefixes,
        "eligible": eligible,
        "selected": stats["selected"],
        "generated": stats["generated"],
        "generated_share": stats["generated"] / max(prefixes, 1),
        "flip_rate": None if intervention.method == "ad" else stats["flipped"] / processed,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if intervention.method != "ad" and tsv_path:
        write_tsv(tsv_path, TSV_COLUMNS, [row for _, row in sorted(rows, reverse=True)])
    return result


def write_tsv(path, columns, rows):
    """A tab-separated file with a header, written atomically."""
    from peterrec.io import write_atomic

    def fill(f):
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(str(v) for v in row) + "\n")

    write_atomic(path, fill, encoding="utf-8")


# ------------------------------------------------------------------ stage 3: the generated stream
def generated_count(set_dir):
    """Records in a generated set."""
    return sum(shard["records"] for shard in tfrecord.load_metadata(set_dir)["shards"])


def generated_row(record, *, max_len, beta, method, pad=True):
    """One stage-3 row of a generated record (see :func:`generated_batches`); ``pad=False`` keeps the prefix's own length."""
    items = record["items"][-max_len:]
    n = tf.size(items)
    ids = tf.ensure_shape(tf.pad(items, [[0, max_len - n]], constant_values=PAD_ID), [max_len]) if pad else items
    if method == "ad":
        held = record["targets"][1 : 1 + MAX_HELDOUT]
        return {ITEM_IDS: ids, LENGTHS: n, HELDOUT: tf.pad(held, [[0, MAX_HELDOUT - tf.size(held)]], constant_values=-1),
                SAMPLER_TOP1: record["targets"][0]}
    return {ITEM_IDS: ids, LENGTHS: n, LABELS: record["targets"][0], SAMPLE_WEIGHT: tf.constant(beta, tf.float32)}


def generated_batches(set_dir, *, max_len, beta, method, batch_size, steps, seed, epoch=0, skip_steps=0, input_context=None):
    """One epoch of ``steps`` batches of ``batch_size`` generated rows (shuffled with ``seed * 1000 + epoch``, repeated).

    heuristic / learning rows: ``item_ids``, ``lengths``, ``labels`` (the
    sampler's label of the last position) and ``sample_weight`` (``beta``),
    trained at the last real position only; ad rows: ``item_ids``,
    ``lengths``, ``heldout`` and ``sampler_top1`` (the frozen sampler's
    top-1 on the original prefix, computed once in stage 2). A batch holds
    prefixes of similar length (buckets of :data:`LENGTH_BUCKET` items) padded
    to their bucket's upper bound, not to ``max_len``: a generated row carries one
    target, so its cost is its own length (the anchor's attention over a
    prefix grows with its square).
    """
    epoch_seed = int(seed) * 1000 + int(epoch)
    ds = read_records(set_dir)
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = ds.map(graph_fn(lambda r: generated_row(r, max_len=max_len, beta=beta, method=method, pad=False)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(20000, seed=epoch_seed, reshuffle_each_iteration=False).repeat()
    batch = dataset.by_length(lambda row: tf.size(row[ITEM_IDS]), max_len, LENGTH_BUCKET, pad_to_boundary=True)
    return dataset.epoch_batches(ds, batch_size, steps, skip_steps, input_context, batch=batch)
