"""STAMP: short-term attention/memory priority over item embeddings (RecBole 1.2.1)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from peterrec.features import PAD_ID
from peterrec.models.base import ZooBackbone, normal, padding_mask, prefix_mask, query_prefix_mask


@keras.saving.register_keras_serializable(package="peterrec")
class STAMPAttention(keras.layers.Layer):
    """STAMP's attention memory ``m_a`` for every prefix at once.

    For each position t (the prefix ``items[:t+1]`` with last item ``x_t``)::

        m_s_t = mean of x_i over i <= t          (cumulative mean)
        alpha_ti = w0 . sigmoid(W1 x_i + W2 x_t + W3 m_s_t + b_a)   for i <= t, else 0
        m_a_t = sum_i alpha_ti x_i + m_s_t

    No softmax (as RecBole). Position t's result equals RecBole's forward on
    the prefix ``items[:t+1]`` with a zero padding row.

    Call arguments: ``x [B, L, D]`` (item embeddings, 0 at padding), ``item_ids [B, L]``.
    Returns ``m_a [B, L, D]``.
    """

    def __init__(self, embedding_dim, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        dense = lambda units, name: keras.layers.Dense(units, use_bias=False, kernel_initializer=normal(0.05), name=name)  # noqa: E731
        self.w1, self.w2, self.w3 = (dense(self.embedding_dim, name) for name in ("w1", "w2", "w3"))
        self.w0 = dense(1, "w0")

    def build(self, x_shape, item_ids_shape=None):
        for layer in (self.w1, self.w2, self.w3, self.w0):
            layer.build(x_shape)
        self.b_a = self.add_weight(shape=(self.embedding_dim,), initializer="zeros", name="b_a")
        self.built = True

    @staticmethod
    def memory(x, item_ids):
        """``m_s [B, T, D]``: the mean of the real item embeddings ``x_i``, ``i <= t``."""
        real = ops.cast(ops.not_equal(item_ids, PAD_ID), x.dtype)
        counts = ops.maximum(ops.cumsum(real, axis=1), 1.0)
        return ops.cumsum(x, axis=1) / ops.expand_dims(counts, -1)

    def call(self, x, item_ids):
        m_s = self.memory(x, item_ids)  # [B, T, D]
        query = self.w2(x) + self.w3(m_s) + self.b_a  # [B, T, D]
        gates = ops.sigmoid(ops.expand_dims(self.w1(x), 1) + ops.expand_dims(query, 2))  # [B, T, I, D]
        alpha = ops.squeeze(self.w0(gates), -1) * prefix_mask(item_ids, x.dtype)  # [B, T, I]
        return ops.matmul(alpha, x) + m_s

    def at(self, x, item_ids, index):
        """``m_a`` of the queries ``index [N, 2]`` (``(row, position)``) only, ``[N, D]``: ``call(...)`` gathered there."""
        rows = index[:, 0]
        m_s = tf.gather_nd(self.memory(x, item_ids), index)  # [N, D]
        query = self.w2(tf.gather_nd(x, index)) + self.w3(m_s) + ops.cast(self.b_a, x.dtype)  # [N, D]; outside __call__: no autocast
        gates = ops.sigmoid(tf.gather(self.w1(x), rows) + ops.expand_dims(query, 1))  # [N, I, D]
        alpha = ops.squeeze(self.w0(gates), -1) * query_prefix_mask(item_ids, index, x.dtype)  # [N, I]
        return tf.einsum("ni,nid->nd", alpha, tf.gather(x, rows)) + m_s

    def compute_output_shape(self, x_shape, item_ids_shape=None):
        return x_shape

    def get_config(self):
        return super().get_config() | {"embedding_dim": self.embedding_dim}


@keras.saving.register_keras_serializable(package="peterrec")
class STAMPBackbone(ZooBackbone):
    """STAMP encoder: item ids ``[batch, L]`` -> session vectors ``[batch, L, embedding_dim]``, causal.

    As RecBole's STAMP: ``x = E[item]`` (N(0, 0.002)); for the prefix ending
    at t, ``h_s = tanh(MLP_A(m_a_t))`` with ``m_a`` from
    :class:`STAMPAttention`, ``h_t = tanh(MLP_B(x_t))``, output ``h_s * h_t``
    (no final sigmoid), scored against the item table (tied). Linear
    weights N(0, 0.05), biases 0.

    Args:
        vocabulary_size: number of ids, reserved ids included.
        embedding_dim: item embedding and output width (64).

    Reference: Liu et al., "STAMP: Short-Term Attention/Memory Priority Model
    for Session-based Recommendation", KDD 2018; RecBole ``sequential_recommender/stamp.py``.
    """

    CONFIG_KEYS = ("vocabulary_size", "embedding_dim")

    def __init__(self, vocabulary_size, embedding_dim=64, **kwargs):
        # === Layers ===
        embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, embeddings_initializer=normal(0.002), name="item_embedding")
        attention = STAMPAttention(embedding_dim, name="attention")
        mlp_a = keras.layers.Dense(embedding_dim, activation="tanh", kernel_initializer=normal(0.05), name="mlp_a")
        mlp_b = keras.layers.Dense(embedding_dim, activation="tanh", kernel_initializer=normal(0.05), name="mlp_b")

        # === Functional model ===
        item_ids = keras.Input(shape=(None,), dtype="int32", name="item_ids")
        x = embedding(item_ids)
        mask = padding_mask(item_ids, x.dtype)
        x = x * mask
        out = mlp_a(attention(x, item_ids)) * mlp_b(x) * mask
        kwargs.setdefault("name", "stamp_backbone")
        super().__init__(inputs=item_ids, outputs=out, **kwargs)

        # === Config ===
        self.vocabulary_size = int(vocabulary_size)
        self.embedding_dim = self.output_dim = int(embedding_dim)
        self.item_embedding = embedding

    def hidden_at(self, item_ids, index, training=None):
        """The outputs at ``index [N, 2]`` only (N attention queries instead of one per prefix)."""
        x = self.item_embedding(item_ids)
        mask = padding_mask(item_ids, x.dtype)
        x = x * mask
        out = self.get_layer("mlp_a")(self.get_layer("attention").at(x, item_ids, index)) * self.get_layer("mlp_b")(tf.gather_nd(x, index))
        return out * tf.gather_nd(mask, index)
