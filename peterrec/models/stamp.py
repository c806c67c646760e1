"""STAMP: short-term attention/memory priority over item embeddings (RecBole 1.2.1)."""

from __future__ import annotations

import keras
from keras import ops

from peterrec.features import PAD_ID
from peterrec.models.base import ZooBackbone, gather_last, normal, padding_mask, prefix_mask, up_to_last_mask


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

    def call(self, x, item_ids):
        real = ops.cast(ops.not_equal(item_ids, PAD_ID), x.dtype)
        counts = ops.maximum(ops.cumsum(real, axis=1), 1.0)
        m_s = ops.cumsum(x, axis=1) / ops.expand_dims(counts, -1)  # [B, T, D]
        query = self.w2(x) + self.w3(m_s) + self.b_a  # [B, T, D]
        gates = ops.sigmoid(ops.expand_dims(self.w1(x), 1) + ops.expand_dims(query, 2))  # [B, T, I, D]
        alpha = ops.squeeze(self.w0(gates), -1) * prefix_mask(item_ids, x.dtype)  # [B, T, I]
        return ops.matmul(alpha, x) + m_s

    def last(self, x, item_ids, lengths):
        """``m_a`` of the last real position only, ``[B, D]``: ``call(...)`` gathered at ``lengths - 1``."""
        prefix = up_to_last_mask(item_ids, lengths, x.dtype)  # [B, I]
        m_s = ops.sum(x * ops.expand_dims(prefix, -1), axis=1) / ops.maximum(ops.sum(prefix, axis=1, keepdims=True), 1.0)
        query = self.w2(gather_last(x, lengths)) + self.w3(m_s) + self.b_a  # [B, D]
        gates = ops.sigmoid(self.w1(x) + ops.expand_dims(query, 1))  # [B, I, D]
        alpha = ops.squeeze(self.w0(gates), -1) * prefix  # [B, I]
        return ops.squeeze(ops.matmul(ops.expand_dims(alpha, 1), x), 1) + m_s

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

    def last_hidden(self, item_ids, lengths, training=None):
        """The output at ``lengths - 1`` only (one attention query instead of one per prefix)."""
        x = self.item_embedding(item_ids)
        x = x * padding_mask(item_ids, x.dtype)
        x_t = gather_last(x, lengths)
        out = self.get_layer("mlp_a")(self.get_layer("attention").last(x, item_ids, lengths)) * self.get_layer("mlp_b")(x_t)
        return out * gather_last(padding_mask(item_ids, out.dtype), lengths)
