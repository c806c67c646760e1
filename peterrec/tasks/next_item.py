"""Next-item pretraining task: NextItNet's objective at every position."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from peterrec import losses
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, SAMPLE_WEIGHT
from peterrec.layers.dilated_block import conv_initializer

LOSSES = ("full_softmax", "sampled_softmax")


@keras.saving.register_keras_serializable(package="peterrec")
class NextItemTask(keras.Model):
    """A backbone plus the next-item output head and loss.

    Full softmax (``loss="full_softmax"``): logits = Dense(ReLU(h)), the
    original's 1x1 conv head. Sampled softmax: logits = h W^T + b with W
    ~ N(0, 0.01), b = 0.1 and no ReLU, trained with ``num_sampled`` =
    ``sampled_fraction`` of the vocabulary (20 % in the original).

    Training batches hold ``item_ids``, ``labels`` (the next item at each
    position) and ``sample_weight`` ``[batch, length]``; evaluation batches
    hold ``item_ids``, ``lengths`` and ``labels`` ``[batch]`` and are scored at
    the last real position.

    Args:
        backbone: a sequence encoder returning ``[batch, length, C]``.
        loss: "full_softmax" or "sampled_softmax".
        item_counts: training count per id (sampled softmax's unigram sampler).
        sampled_fraction: share of the vocabulary drawn as negatives.
    """

    def __init__(self, backbone, loss="full_softmax", item_counts=None, sampled_fraction=0.2, **kwargs):
        kwargs.setdefault("name", "next_item_task")
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.backbone = backbone
        self.loss_name = loss
        self.sampled_fraction = float(sampled_fraction)
        vocab = backbone.vocabulary_size
        channels = getattr(backbone, "output_dim", backbone.embedding_dim)
        if loss == "full_softmax":
            self.head = keras.layers.Dense(vocab, kernel_initializer=conv_initializer(), name="logits")
            self.head.build((None, channels))
        else:
            self.softmax_w = self.add_weight(
                shape=(vocab, channels),
                initializer=keras.initializers.RandomNormal(stddev=0.01),
                name="softmax_w",
            )
            self.softmax_b = self.add_weight(shape=(vocab,), initializer=keras.initializers.Constant(0.1), name="softmax_b")
            counts = item_counts if item_counts is not None else [1] * vocab
            if len(counts) != vocab:
                raise ValueError(f"item_counts has {len(counts)} entries, vocabulary_size is {vocab}")
            self.unigrams = losses.unigram_counts(counts)
            self.num_sampled = max(1, int(self.sampled_fraction * vocab))

    def call(self, item_ids, training=None):
        return self.backbone(item_ids, training=training)

    def logits(self, hidden):
        """Scores over the whole vocabulary for hidden states ``[..., C]``."""
        if self.loss_name == "full_softmax":
            return self.head(ops.relu(hidden))
        return ops.matmul(hidden, ops.transpose(self.softmax_w)) + self.softmax_b

    # --- the training-loop contract -------------------------------------------------
    def loss_count(self, batch):
        """Number of positions that carry loss (the normaliser)."""
        return tf.reduce_sum(tf.cast(batch[SAMPLE_WEIGHT], tf.float32))

    def loss_sum(self, batch, training=True, static_shapes=False):
        """Sum of weighted losses. Only positions with weight > 0 reach the output
        layer (its matmul dominates the cost) unless ``static_shapes`` (XLA)."""
        hidden = self(batch[ITEM_IDS], training=training)
        labels, weights = batch[LABELS], batch[SAMPLE_WEIGHT]
        if not static_shapes:
            keep = weights > 0
            hidden, labels, weights = tf.boolean_mask(hidden, keep), tf.boolean_mask(labels, keep), tf.boolean_mask(weights, keep)
        if self.loss_name == "full_softmax":
            return losses.weighted_softmax_ce_sum(self.logits(hidden), labels, weights)
        return losses.sampled_softmax_sum(self.softmax_w, self.softmax_b, hidden, labels, weights, self.num_sampled, self.unigrams)

    def uses_candidate_sampler(self):
        return self.loss_name == "sampled_softmax"

    def score_last(self, item_ids, lengths, training=False):
        """Logits ``[batch, V]`` at the last real position of each (right-padded) row."""
        hidden = self(item_ids, training=training)
        last = tf.gather(hidden, tf.maximum(tf.cast(lengths, tf.int32) - 1, 0), axis=1, batch_dims=1)
        return self.logits(last)

    def eval_scores(self, batch):
        return self.score_last(batch[ITEM_IDS], batch[LENGTHS])

    def serve_scores(self, item_ids, lengths):
        """Scores the serving signature ranks (see peterrec.export)."""
        return self.score_last(item_ids, lengths)

    def get_config(self):
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "loss": self.loss_name,
            "sampled_fraction": self.sampled_fraction,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
