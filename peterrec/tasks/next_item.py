"""Next-item task: the next item at every position (NextItNet and the causal models of peterrec.models)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from peterrec import losses
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, SAMPLE_WEIGHT
from peterrec.layers.initializers import conv_initializer
from peterrec.models.base import last_index
from peterrec.tasks.base import Task

LOSSES = ("full_softmax", "sampled_softmax", *losses.PAIRWISE)
OUTPUTS = ("dense", "tied")


@keras.saving.register_keras_serializable(package="peterrec")
class NextItemTask(Task):
    """A backbone plus the next-item output layer and loss.

    Output layer (``output``):

    * ``"dense"`` (NextItNet's): full softmax, BCE and BPR use logits =
      Dense(ReLU(h)), the original's 1x1 conv head; sampled softmax uses
      logits = h W^T + b with W ~ N(0, 0.01), b = 0.1 and no ReLU.
    * ``"tied"`` (RecBole's SASRec, NARM, STAMP, GRU4Rec): logits = h E^T
      with E the backbone's input item table (``item_embedding``); needs
      ``backbone.output_dim == embedding_dim``. No new weights.

    Losses (``loss``), each at every position with weight > 0:
    ``full_softmax`` (cross-entropy over all ids), ``sampled_softmax``
    (``num_sampled`` = ``sampled_fraction`` of the vocabulary, 20 % in the
    original; unigram sampler), ``bce`` (one uniform negative per position:
    -log s(pos) - log(1 - s(neg)), the original SASRec's) and ``bpr`` (one
    uniform negative: -log s(pos - neg)); see :mod:`peterrec.losses`.
    Reserved ids compete in training (as RecBole's padding id does) but never
    in evaluation or serving.

    Training batches hold ``item_ids``, ``labels`` (the next item at each
    position) and ``sample_weight`` ``[batch, length]``; evaluation batches
    hold ``item_ids``, ``lengths`` and ``labels`` ``[batch]`` and are scored at
    the last real position.

    Args:
        backbone: a sequence encoder returning ``[batch, length, C]``.
        loss: one of ``LOSSES``.
        item_counts: training count per id (sampled softmax's unigram sampler).
        sampled_fraction: share of the vocabulary drawn as negatives.
        output: "dense" (default, NextItNet) or "tied".
    """

    def __init__(self, backbone, loss="full_softmax", item_counts=None, sampled_fraction=0.2, output="dense", **kwargs):
        kwargs.setdefault("name", "next_item_task")
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.backbone = backbone
        self.loss_name = loss
        self.output_type = output
        self.sampled_fraction = float(sampled_fraction)
        vocab = backbone.vocabulary_size
        channels = getattr(backbone, "output_dim", backbone.embedding_dim)
        if output == "tied":
            if tuple(self.item_table.shape) != (vocab, channels):
                raise ValueError(
                    f"output='tied' needs the item table {tuple(self.item_table.shape)} to match "
                    f"[vocabulary_size, output_dim] = [{vocab}, {channels}]"
                )
        elif loss != "sampled_softmax":
            self.head = keras.layers.Dense(vocab, kernel_initializer=conv_initializer(), name="logits")
            self.head.build((None, channels))
        else:
            self.softmax_w = self.add_weight(
                shape=(vocab, channels),
                initializer=keras.initializers.RandomNormal(stddev=0.01),
                name="softmax_w",
            )
            self.softmax_b = self.add_weight(shape=(vocab,), initializer=keras.initializers.Constant(0.1), name="softmax_b")
        if loss == "sampled_softmax":
            counts = item_counts if item_counts is not None else [1] * vocab
            if len(counts) != vocab:
                raise ValueError(f"item_counts has {len(counts)} entries, vocabulary_size is {vocab}")
            self.unigrams = losses.unigram_counts(counts)
            self.num_sampled = max(1, int(self.sampled_fraction * vocab))
        if loss in losses.PAIRWISE:
            self.negative_seed = keras.random.SeedGenerator(name="negative_seed")
        self.built = True  # every weight exists now (the backbone is a built functional model)

    @property
    def item_table(self):
        """The backbone's input item table ``[V, C]`` (the tied output layer)."""
        return self.backbone.get_layer("item_embedding").embeddings

    def call(self, item_ids, training=None):
        return self.backbone(item_ids, training=training)

    def logits(self, hidden):
        """Scores over the whole vocabulary for hidden states ``[..., C]``."""
        if self.output_type == "tied":
            return ops.matmul(hidden, ops.transpose(ops.cast(self.item_table, hidden.dtype)))
        if self.loss_name != "sampled_softmax":
            return self.head(ops.relu(hidden))
        return ops.matmul(hidden, ops.transpose(self.softmax_w)) + self.softmax_b

    def item_scores(self, hidden, item_ids):
        """The logits of ``item_ids`` ``[N]`` only, for hidden states ``[N, C]`` (BCE/BPR)."""
        hidden = tf.cast(hidden, tf.float32)  # variables are float32 (also under mixed precision)
        if self.output_type == "tied":
            return tf.reduce_sum(hidden * tf.gather(self.item_table, item_ids), axis=-1)
        if self.loss_name != "sampled_softmax":
            kernel = tf.transpose(tf.gather(self.head.kernel, item_ids, axis=1))  # [N, C]
            return tf.reduce_sum(tf.nn.relu(hidden) * kernel, axis=-1) + tf.gather(self.head.bias, item_ids)
        return tf.reduce_sum(hidden * tf.gather(self.softmax_w, item_ids), axis=-1) + tf.gather(self.softmax_b, item_ids)

    # --- the training-loop contract -------------------------------------------------
    def loss_count(self, batch):
        """Number of positions that carry loss (the normaliser)."""
        return tf.reduce_sum(tf.cast(batch[SAMPLE_WEIGHT], tf.float32))

    def loss_sum(self, batch, training=True, static_shapes=False):
        """Sum of weighted losses. Only positions with weight > 0 reach the output
        layer (its matmul dominates the cost) unless ``static_shapes`` (XLA); a
        backbone with ``hidden_at`` (the zoo's) computes those positions only
        (NARM and STAMP: their all-prefix attention for those queries)."""
        labels, weights = batch[LABELS], batch[SAMPLE_WEIGHT]
        if static_shapes:
            return self.hidden_loss_sum(self(batch[ITEM_IDS], training=training), labels, weights)
        index = tf.where(weights > 0)  # [N, 2] (row, position), row-major as boolean_mask
        hidden = self.hidden_at(batch[ITEM_IDS], index, training=training)
        return self.hidden_loss_sum(hidden, tf.gather_nd(labels, index), tf.gather_nd(weights, index))

    def hidden_at(self, item_ids, index, training=None):
        """Hidden states ``[N, C]`` at the ``(row, position)`` pairs ``index [N, 2]``: the backbone's ``hidden_at``
        (the zoo's compute those positions only) or, otherwise (NextItNet), the full forward pass gathered there."""
        if hasattr(self.backbone, "hidden_at"):
            return self.backbone.hidden_at(item_ids, index, training=training)
        return tf.gather_nd(self(item_ids, training=training), index)

    def last_loss_sum(self, batch, training=True):
        """Sum of weighted losses of rows with one target each, at their last real position: ``item_ids [B, L]``,
        ``lengths``, ``labels`` and ``sample_weight`` ``[B]`` (CASR's generated samples). Equals :meth:`loss_sum` with
        the label and weight placed at ``lengths - 1`` (:meth:`hidden_at` there)."""
        hidden = self.hidden_at(batch[ITEM_IDS], last_index(batch[LENGTHS]), training=training)
        return self.hidden_loss_sum(hidden, batch[LABELS], tf.cast(batch[SAMPLE_WEIGHT], tf.float32))

    def hidden_loss_sum(self, hidden, labels, weights):
        """Sum of the losses of hidden states ``[..., C]`` with their next items and weights ``[...]``."""
        if self.loss_name == "full_softmax":
            return losses.weighted_softmax_ce_sum(self.logits(hidden), labels, weights)
        if self.loss_name == "sampled_softmax":
            if self.output_type == "tied":
                table, biases = self.item_table, tf.zeros([self.backbone.vocabulary_size], tf.float32)
            else:
                table, biases = self.softmax_w, self.softmax_b
            return losses.sampled_softmax_sum(table, biases, hidden, labels, weights, self.num_sampled, self.unigrams)
        channels = hidden.shape[-1]
        hidden, labels, weights = tf.reshape(hidden, [-1, channels]), tf.reshape(labels, [-1]), tf.reshape(weights, [-1])
        negatives = losses.uniform_negatives(labels, self.backbone.vocabulary_size, seed=self.negative_seed)
        positive, negative = self.item_scores(hidden, labels), self.item_scores(hidden, negatives)
        return losses.pairwise_sum(self.loss_name, positive, negative, weights)

    def uses_candidate_sampler(self):
        return self.loss_name == "sampled_softmax"

    def score_last(self, item_ids, lengths, training=False):
        """Logits ``[batch, V]`` at the last real position of each (right-padded) row (:meth:`hidden_at` there)."""
        return self.logits(self.hidden_at(item_ids, last_index(lengths), training=training))

    def eval_scores(self, batch):
        return self.score_last(batch[ITEM_IDS], batch[LENGTHS])

    def serve_scores(self, item_ids, lengths):
        """Scores the serving signature ranks (see peterrec.export)."""
        return self.score_last(item_ids, lengths)

    def get_config(self):
        config = {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "loss": self.loss_name,
            "sampled_fraction": self.sampled_fraction,
        }
        if self.output_type != "dense":  # NextItNet exports keep their exact config.json
            config["output"] = self.output_type
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
