"""Caser's training objective on the shared training loop (``peterrec.training.Trainer``).

Untied (the original, caser_pytorch ``train_caser.py``): each window scores
its ``T`` targets and ``neg_samples`` negatives with ``W2 . x + b2`` and the
loss is ``mean(-log s(pos)) + mean(-log(1 - s(neg)))`` (binary cross-entropy
with separate means for positives and negatives). On the loop's contract
(a per-batch sum divided by :meth:`CaserTask.loss_count`, the number of real
targets) each window's negatives are weighted by ``real targets / neg_samples``,
which is exactly the original's two means when no target is padding
(``T / neg_samples`` per negative).

Tied (RecBole): softmax cross-entropy of each real target over all real items.

Evaluation and serving rows are right-padded (``peterrec.data.dataset``);
:func:`left_align` turns them into Caser's left-padded ``[B, L]`` window of
the most recent ``L`` items. Serving has no user id: the user vector is zero
(``UNKNOWN_USER``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from peterrec import losses
from peterrec.data.caser_dataset import NEGATIVES, UNKNOWN_USER, USER_INDEX
from peterrec.eval.ranking import exclude_reserved
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, NUM_RESERVED, PAD_ID, SAMPLE_WEIGHT
from peterrec.models.caser import Caser  # noqa: F401  (registered: CaserTask.from_config rebuilds it)
from peterrec.tasks.base import Task


def left_align(item_ids, lengths, L):
    """Right-padded rows ``[B, W]`` with ``lengths`` -> their last ``L`` items, left-padded ``[B, L]``."""
    item_ids = tf.cast(item_ids, tf.int32)
    lengths = tf.cast(lengths, tf.int32)
    idx = lengths[:, None] - L + tf.range(L)[None, :]
    taken = tf.gather(item_ids, tf.clip_by_value(idx, 0, tf.maximum(tf.shape(item_ids)[1] - 1, 0)), batch_dims=1)
    return tf.where(idx >= 0, taken, PAD_ID)


@keras.saving.register_keras_serializable(package="peterrec")
class CaserTask(Task):
    """A :class:`peterrec.models.caser.Caser` network plus its loss (see the module docstring).

    Training batches (``caser_dataset.train_dataset``): ``item_ids [B, L]``
    (left-padded), ``labels``/``sample_weight [B, T]``, ``negatives [B, N]``,
    ``user_index [B]``. Evaluation batches: ``item_ids [B, L']`` right-padded,
    ``lengths``, ``labels [B]`` and ``user_index`` (absent: unknown user).

    Args:
        backbone: the Caser network.
        neg_samples: negatives per window (untied variant).
    """

    def __init__(self, backbone, neg_samples=3, **kwargs):
        kwargs.setdefault("name", "caser_task")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.neg_samples = int(neg_samples)

    def call(self, inputs, training=None):
        """``{"item_ids": [B, L] left-padded, "user_index": [B]}`` -> the network's ``x``."""
        return self.backbone(inputs, training=training)

    # --- the training-loop contract -------------------------------------------------
    def loss_count(self, batch):
        """Number of real (non-padding) targets: the normaliser."""
        return tf.reduce_sum(tf.cast(batch[SAMPLE_WEIGHT], tf.float32))

    def loss_sum(self, batch, training=True, static_shapes=False):
        x = self({ITEM_IDS: batch[ITEM_IDS], USER_INDEX: batch[USER_INDEX]}, training=training)
        labels = tf.cast(batch[LABELS], tf.int32)
        weights = tf.cast(batch[SAMPLE_WEIGHT], tf.float32)
        if self.backbone.tied:
            logits = exclude_reserved(self.backbone.score_all(x))  # [B, V]
            safe = tf.where(weights > 0, labels, NUM_RESERVED)  # padded targets: any real id, weight 0
            per_target = tf.broadcast_to(logits[:, None, :], [tf.shape(labels)[0], tf.shape(labels)[1], tf.shape(logits)[1]])
            return losses.weighted_softmax_ce_sum(per_target, safe, weights)
        negatives = tf.cast(batch[NEGATIVES], tf.int32)
        scores = self.backbone.score_items(x, tf.concat([labels, negatives], axis=1))
        num_targets = tf.shape(labels)[1]
        positive = tf.nn.softplus(-scores[:, :num_targets])  # -log sigmoid(s)
        negative = tf.nn.softplus(scores[:, num_targets:])  # -log(1 - sigmoid(s))
        negative_weight = tf.reduce_sum(weights, axis=1, keepdims=True) / float(self.neg_samples)
        return tf.reduce_sum(positive * weights) + tf.reduce_sum(negative * negative_weight)

    def uses_candidate_sampler(self):
        return False

    def score_rows(self, item_ids, lengths, user_ids=None, training=False):
        """Scores ``[B, V]`` of right-padded rows (their last ``L`` items) for ``user_ids`` (default: unknown)."""
        window = left_align(item_ids, lengths, self.backbone.L)
        if user_ids is None:
            user_ids = tf.fill(tf.shape(window)[:1], UNKNOWN_USER)
        return self.backbone.score_all(self({ITEM_IDS: window, USER_INDEX: user_ids}, training=training))

    def eval_scores(self, batch):
        return self.score_rows(batch[ITEM_IDS], batch[LENGTHS], batch.get(USER_INDEX))

    def serve_scores(self, item_ids, lengths):
        """The serving signature's scores: no user id, so the user vector is zero."""
        return self.score_rows(item_ids, lengths)

    def get_config(self):
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "neg_samples": self.neg_samples,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
