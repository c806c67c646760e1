"""MIIR's two objectives (MII pretraining, recommendation finetuning), evaluation, serving and input pipelines.

Training chunks (``TrainDataset_MII`` / ``TrainDataset_MLM``): each user's
training items (``dataset.train_items``) cut into non-overlapping chunks of
``max_len`` items **counted from the oldest** (the last chunk may be
shorter), right-padded. Masks are drawn statelessly from ``(seed * 1000 +
epoch, user index)``, so an epoch is a function of the seed and resumes
exactly:

* ``"mii"``: every (real position, field) cell is masked with probability
  ``mask_prob`` (``cell_mask [B, L, F]``, field 0 = the item ID). A masked ID
  becomes ``MASK_ID``; a masked side field becomes "missing"; the other
  fields keep their values. Loss only on masked cells that are present
  (an originally missing field is an input, never a target).
* ``"rec"``: every real position is masked with probability ``mask_prob``;
  a masked item becomes ``MASK_ID`` and so loses all its fields
  (``item_ids``, ``labels``, ``sample_weight``).

Evaluation rows are ``dataset.eval_dataset``'s (the ``max_len`` items before
the target); the task puts ``MASK_ID`` after the last item
(``masked_item.end_mask``: a full row drops its oldest item), so the target
is a masked item with every field "missing", and scores the ID logits there.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from peterrec.data import dataset
from peterrec.data.item_features import PAD_VALUE
from peterrec.data.tfrecord import graph_fn
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, MASK_ID, PAD_ID, SAMPLE_WEIGHT
from peterrec.losses import softmax_ce
from peterrec.models.miir import MIIR  # noqa: F401  (registers MIIR)
from peterrec.tasks.masked_item import end_mask
from peterrec.tasks.base import Task

AUTOTUNE = tf.data.AUTOTUNE
CELL_MASK = "cell_mask"  # float32 [B, L, F]: 1 where a (position, field) cell is masked (MII)
STAGES = ("mii", "rec")


def chunks_from_start(items, max_len):
    """Non-overlapping chunks ``[k, max_len]`` of ``items`` counted from the oldest, right-padded, and their lengths."""
    n = tf.size(items)
    k = (n + max_len - 1) // max_len
    padded = tf.pad(items, [[0, k * max_len - n]], constant_values=PAD_ID)
    lengths = tf.minimum(max_len, n - tf.range(k) * max_len)
    return tf.reshape(padded, [k, max_len]), lengths


def mask_chunks(chunks, lengths, seed, *, stage, num_fields, mask_prob):
    """Masked training rows of ``chunks`` (see the module docstring)."""
    width = tf.shape(chunks)[1]
    real = tf.range(width)[None, :] < lengths[:, None]
    if stage == "mii":
        draws = tf.random.stateless_uniform(tf.concat([tf.shape(chunks), [num_fields]], 0), seed)
        cells = (draws < mask_prob) & real[..., None]
        return {ITEM_IDS: chunks, CELL_MASK: tf.cast(cells, tf.float32)}
    masked = (tf.random.stateless_uniform(tf.shape(chunks), seed) < mask_prob) & real
    return {
        ITEM_IDS: tf.where(masked, tf.constant(MASK_ID, chunks.dtype), chunks),
        LABELS: chunks,
        SAMPLE_WEIGHT: tf.cast(masked, tf.float32),
    }


def train_dataset(set_dir, *, stage, max_len, num_fields, mask_prob, batch_size, steps, seed, epoch=0, skip_steps=0,
                  shuffle_buffer=20000, input_context=None):
    """One epoch of ``steps`` batches of ``batch_size`` masked chunks (see the module docstring)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    epoch_seed = int(seed) * 1000 + int(epoch)
    num_pipelines = input_context.num_input_pipelines if input_context is not None else 1
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    ds = dataset._records(set_dir, shuffle_seed=epoch_seed, input_context=input_context)
    ds = ds.map(graph_fn(dataset.train_items), num_parallel_calls=AUTOTUNE).filter(graph_fn(lambda items: tf.size(items) >= 1)).enumerate()

    def rows(index, items):
        chunks, lengths = chunks_from_start(items, max_len)
        user_seed = tf.stack([tf.constant(epoch_seed, tf.int64), index * num_pipelines + pipeline_id])
        return mask_chunks(chunks, lengths, user_seed, stage=stage, num_fields=num_fields, mask_prob=mask_prob)

    ds = ds.map(graph_fn(rows), num_parallel_calls=AUTOTUNE).unbatch()
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False).repeat()
    return dataset.epoch_batches(ds, batch_size, steps, skip_steps, input_context)


def _per_sequence(losses, rows, batch):
    """``Σ_sequences (Σ cell losses / number of cells)`` for cell losses ``[N]`` of batch rows ``rows [N]``."""
    sums = tf.math.unsorted_segment_sum(losses, rows, batch)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(losses), rows, batch)
    return tf.reduce_sum(tf.math.divide_no_nan(sums, counts))


@keras.saving.register_keras_serializable(package="peterrec")
class MIIRTask(Task):
    """MIIR with its training objective (``stage``), evaluation and serving.

    ``stage="mii"`` (``Pretrain.py``): per masked, present cell: ID softmax
    CE over all ids; a ``token`` field softmax CE over its values (the
    original's ``-log Σ onehot·softmax``); a ``token_seq`` field BCE on
    sigmoid logits summed over its values; numeric fields the squared error
    summed over their dimensions. ``stage="rec"`` (``Train.py``): ID softmax CE
    at the masked positions. Both: per sequence, the summed loss over its
    masked cells divided by their number; ``loss_count`` is the number of
    sequences, so the loop's mean is the original's ``Σ_sequences / batch_size``.
    Evaluation and serving: ID logits at the end mask (``context_slots = 1``).
    """

    context_slots = 1

    def __init__(self, backbone, stage="rec", **kwargs):
        kwargs.setdefault("name", "miir_task")
        super().__init__(**kwargs)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.backbone = backbone
        self.stage = stage
        self.built = True

    def call(self, item_ids, training=None):
        return self.backbone.encode(item_ids, training=training)

    def loss_count(self, batch):
        return tf.cast(tf.shape(batch[ITEM_IDS])[0], tf.float32)

    def loss_sum(self, batch, training=True, static_shapes=False):
        if self.stage == "rec":
            return self._rec_loss(batch, training)
        return self._mii_loss(batch, training)

    def _rec_loss(self, batch, training):
        hidden = self.backbone.encode(batch[ITEM_IDS], training=training)[:, :, 0]  # the ID field
        cells = tf.where(batch[SAMPLE_WEIGHT] > 0)  # [N, 2]: gather before the output matmul
        logits = self.backbone.id_logits(tf.gather_nd(hidden, cells))
        labels = tf.gather_nd(tf.cast(batch[LABELS], tf.int32), cells)
        ce = softmax_ce(labels, logits)
        return _per_sequence(ce, tf.cast(cells[:, 0], tf.int32), tf.shape(hidden)[0])

    def mii_cells(self, batch):
        """``{field: [N, 2] (row, position)}``: the masked cells that carry loss (real, and present for side fields)."""
        ids = tf.cast(batch[ITEM_IDS], tf.int32)
        cell_mask = tf.cast(batch[CELL_MASK], tf.bool) & tf.not_equal(ids, PAD_ID)[..., None]
        looked_up = self.backbone.features(ids)
        out = {"item_id": tf.where(cell_mask[..., 0])}
        for j, spec in enumerate(self.backbone.feature_spec, start=1):
            present = looked_up[spec["name"]][1] > 0
            out[spec["name"]] = tf.where(cell_mask[..., j] & present)
        return out

    def _mii_loss(self, batch, training):
        ids = tf.cast(batch[ITEM_IDS], tf.int32)
        cell_mask = tf.cast(batch[CELL_MASK], tf.bool) & tf.not_equal(ids, PAD_ID)[..., None]  # padding stays padding
        inputs = tf.where(cell_mask[..., 0], MASK_ID, ids)
        hidden = self.backbone.encode(inputs, field_mask=tf.cast(cell_mask[..., 1:], tf.float32), training=training)
        looked_up = self.backbone.features(ids)
        losses, rows = [], []
        for j, (name, cells) in enumerate(self.mii_cells(batch).items()):
            h = tf.gather_nd(hidden[:, :, j], cells)
            if j == 0:
                loss = softmax_ce(tf.gather_nd(ids, cells), self.backbone.id_logits(h))
            else:
                spec = self.backbone.feature_spec[j - 1]
                values = tf.gather_nd(looked_up[name][0], cells)
                output = tf.cast(self.backbone.field_output(name, h), tf.float32)  # float32 losses under --mixed_precision
                if spec["kind"] == "token":
                    loss = softmax_ce(values, output)
                elif spec["kind"] == "token_seq":
                    target = tf.reduce_max(tf.one_hot(values, spec["size"]) * tf.cast(values != PAD_VALUE, tf.float32)[..., None], axis=1)
                    loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=output), axis=-1)
                else:
                    loss = tf.reduce_sum(tf.square(output - tf.cast(tf.reshape(values, tf.shape(output)), tf.float32)), axis=-1)
            losses.append(loss)
            rows.append(tf.cast(cells[:, 0], tf.int32))
        return _per_sequence(tf.concat(losses, 0), tf.concat(rows, 0), tf.shape(ids)[0])

    def uses_candidate_sampler(self):
        return False

    def score_last(self, item_ids, lengths, training=False):
        """ID logits ``[B, V]`` of the masked item after each row's last real item."""
        ids, position = end_mask(tf.cast(item_ids, tf.int32), lengths)
        hidden = self.backbone.encode(ids, training=training)[:, :, 0]
        return self.backbone.id_logits(tf.gather(hidden, position, axis=1, batch_dims=1))

    def eval_scores(self, batch):
        return self.score_last(batch[ITEM_IDS], batch[LENGTHS])

    def serve_scores(self, item_ids, lengths):
        return self.score_last(item_ids, lengths)

    def get_config(self):
        return {"name": self.name, "backbone": keras.saving.serialize_keras_object(self.backbone), "stage": self.stage}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

