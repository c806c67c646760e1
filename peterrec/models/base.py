"""What the zoo backbones share: masks, PyTorch-equivalent initialisers, the config contract.

Every backbone in :mod:`peterrec.models` maps right-padded item ids
``[batch, L]`` (``PAD_ID`` = 0) to hidden states ``[batch, L, C]`` where
position ``t`` depends only on the items at positions ``<= t`` (causal), so
:class:`~peterrec.tasks.next_item.NextItemTask` trains the next item at every
position and scores the last real one. Outputs at padded positions are 0.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from peterrec.features import PAD_ID


def padding_mask(item_ids, dtype="float32"):
    """``[B, L, 1]``: 1.0 at real items, 0.0 at ``PAD_ID``."""
    return ops.expand_dims(ops.cast(ops.not_equal(item_ids, PAD_ID), dtype), -1)


def last_positions(lengths):
    """``[B]`` int32: the last real position ``lengths - 1`` of each right-padded row (0 for an empty row)."""
    return ops.maximum(ops.cast(lengths, "int32") - 1, 0)


def last_index(lengths):
    """``[B, 2]`` int32 ``(row, lengths - 1)``: every row's last real position, as :meth:`ZooBackbone.hidden_at` takes it."""
    positions = last_positions(lengths)
    return tf.stack([tf.range(tf.shape(positions)[0], dtype=positions.dtype), positions], axis=1)


def query_prefix_mask(item_ids, index, dtype="float32"):
    """``[N, J]``: 1.0 where key position ``j <= t`` of row ``b`` holds a real item, for each query ``(b, t)`` of ``index [N, 2]``."""
    positions = ops.arange(ops.shape(item_ids)[1])
    causal = ops.expand_dims(positions, 0) <= ops.expand_dims(ops.cast(index[:, 1], positions.dtype), 1)
    return ops.cast(ops.logical_and(causal, ops.not_equal(tf.gather(item_ids, index[:, 0]), PAD_ID)), dtype)


def prefix_mask(item_ids, dtype="float32"):
    """``[B, T, J]``: 1.0 where key position ``j <= t`` (the prefix ending at query ``t``) holds a real item."""
    positions = ops.arange(ops.shape(item_ids)[1])
    causal = ops.cast(ops.expand_dims(positions, 0) <= ops.expand_dims(positions, 1), dtype)  # [T, J]
    real = ops.cast(ops.not_equal(item_ids, PAD_ID), dtype)  # [B, J]
    return ops.expand_dims(causal, 0) * ops.expand_dims(real, 1)


# PyTorch's initialisers, as RecBole's models use them.
def xavier_normal():
    """``torch.nn.init.xavier_normal_``: N(0, 2 / (fan_in + fan_out)), not truncated."""
    return keras.initializers.VarianceScaling(1.0, "fan_avg", "untruncated_normal")


def xavier_uniform():
    """``torch.nn.init.xavier_uniform_`` (= Keras' Glorot uniform)."""
    return keras.initializers.GlorotUniform()


def torch_linear_kernel():
    """PyTorch's default ``nn.Linear`` weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_uniform(fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default ``nn.Linear`` bias and every ``nn.GRU`` weight."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def normal(stddev):
    """``torch.nn.init.normal_(0, stddev)``."""
    return keras.initializers.RandomNormal(stddev=stddev)


class ZooBackbone(keras.Model):
    """Base of the zoo backbones (functional subclasses): the config is the constructor arguments.

    Subclasses list their constructor arguments in ``CONFIG_KEYS``, store each
    as an attribute and set ``item_embedding`` (the ``[V, embedding_dim]``
    input table that tied scoring reuses), ``vocabulary_size``,
    ``embedding_dim`` and ``output_dim``.
    """

    CONFIG_KEYS: tuple = ()
    causal = True  # position t sees items <= t only

    def keep_config(self, item_embedding, **settings):
        """Store the constructor settings (``CONFIG_KEYS``) as attributes, ``output_dim`` (= ``embedding_dim``)
        and the input table tied scoring reuses."""
        for key, value in settings.items():
            setattr(self, key, value)
        self.output_dim = self.embedding_dim
        self.item_embedding = item_embedding

    def hidden_at(self, item_ids, index, training=None):
        """Hidden states ``[N, C]`` at the positions ``index [N, 2]`` (``(row, position)`` pairs, int32 or int64).

        Equals ``tf.gather_nd(self(item_ids), index)``; NARM and STAMP override it
        to compute their all-prefix attention for these queries only (training
        asks for the positions that carry loss, scoring for the last one).
        """
        return tf.gather_nd(self(item_ids, training=training), index)

    def last_hidden(self, item_ids, lengths, training=None):
        """Hidden states ``[B, C]`` at each row's last real position (``lengths - 1``): what next-item scoring ranks."""
        return self.hidden_at(item_ids, last_index(lengths), training=training)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **{key: getattr(self, key) for key in self.CONFIG_KEYS}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
