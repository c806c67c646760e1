"""NARM: GRU encoder with global (last state) and local (attention) session features (RecBole 1.2.1)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from peterrec.models.base import ZooBackbone, padding_mask, prefix_mask, query_prefix_mask, xavier_normal
from peterrec.models.gru4rec import encode, gru_layers


@keras.saving.register_keras_serializable(package="peterrec")
class NARMAttention(keras.layers.Layer):
    """NARM's local encoder for every prefix at once.

    For each query position t (the prefix ``items[:t+1]``, whose last state
    is ``h_t``)::

        alpha_tj = v . sigmoid(A1 h_j + A2 h_t)    for j <= t with item_j != PAD, else 0
        c_local_t = sum_j alpha_tj h_j

    No softmax (as RecBole). ``[B, L, L, H]`` gates are computed once instead
    of one pass per prefix; position t's result equals RecBole's forward on
    the prefix ``items[:t+1]``.

    Call arguments: ``hidden [B, L, H]`` (GRU outputs), ``item_ids [B, L]``.
    Returns ``c_local [B, L, H]``.
    """

    def __init__(self, hidden_size, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = int(hidden_size)
        self.a_1 = keras.layers.Dense(self.hidden_size, use_bias=False, kernel_initializer=xavier_normal(), name="a_1")
        self.a_2 = keras.layers.Dense(self.hidden_size, use_bias=False, kernel_initializer=xavier_normal(), name="a_2")
        self.v_t = keras.layers.Dense(1, use_bias=False, kernel_initializer=xavier_normal(), name="v_t")

    def build(self, hidden_shape, item_ids_shape=None):
        self.a_1.build(hidden_shape)
        self.a_2.build(hidden_shape)
        self.v_t.build(hidden_shape)
        self.built = True

    def call(self, hidden, item_ids):
        keys = self.a_1(hidden)  # [B, J, H]
        query = self.a_2(hidden)  # [B, T, H]
        gates = ops.sigmoid(ops.expand_dims(keys, 1) + ops.expand_dims(query, 2))  # [B, T, J, H]
        alpha = ops.squeeze(self.v_t(gates), -1) * prefix_mask(item_ids, hidden.dtype)  # [B, T, J]
        return ops.matmul(alpha, hidden)

    def at(self, hidden, item_ids, index):
        """``c_local`` of the queries ``index [N, 2]`` (``(row, position)``) only, ``[N, H]``: ``call(...)`` gathered there."""
        rows = index[:, 0]
        query = self.a_2(tf.gather_nd(hidden, index))  # [N, H]
        gates = ops.sigmoid(tf.gather(self.a_1(hidden), rows) + ops.expand_dims(query, 1))  # [N, J, H]
        alpha = ops.squeeze(self.v_t(gates), -1) * query_prefix_mask(item_ids, index, hidden.dtype)  # [N, J]
        return tf.einsum("nj,njh->nh", alpha, tf.gather(hidden, rows))

    def compute_output_shape(self, hidden_shape, item_ids_shape=None):
        return hidden_shape

    def get_config(self):
        return super().get_config() | {"hidden_size": self.hidden_size}


@keras.saving.register_keras_serializable(package="peterrec")
class NARMBackbone(ZooBackbone):
    """NARM encoder: item ids ``[batch, L]`` -> session vectors ``[batch, L, embedding_dim]``, causal.

    As RecBole's NARM: ``E[item]`` -> dropout -> GRU (no bias) giving ``h``;
    for every prefix ending at t, ``c_global = h_t`` and ``c_local`` from
    :class:`NARMAttention`; ``[c_local, c_global]`` -> dropout ->
    ``Dense(embedding_dim, no bias)`` (the paper's bilinear decoder ``h^T B
    E[i]`` written as a projection before a dot product with the item table:
    score with tied output). Embeddings and dense kernels xavier normal, GRU
    weights PyTorch's default U(-1/sqrt(H), 1/sqrt(H)).

    Args:
        vocabulary_size: number of ids, reserved ids included.
        embedding_dim: item embedding and output width (64).
        hidden_size: GRU and attention width (128).
        num_layers: stacked GRU layers (1).
        embedding_dropout: dropout on the input embeddings (0.25).
        hidden_dropout: dropout on ``[c_local, c_global]`` (0.5).

    Reference: Li et al., "Neural Attentive Session-based Recommendation",
    CIKM 2017; RecBole ``sequential_recommender/narm.py``.
    """

    CONFIG_KEYS = ("vocabulary_size", "embedding_dim", "hidden_size", "num_layers", "embedding_dropout", "hidden_dropout")

    def __init__(
        self, vocabulary_size, embedding_dim=64, hidden_size=128, num_layers=1, embedding_dropout=0.25, hidden_dropout=0.5, **kwargs
    ):
        # === Layers ===
        embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, embeddings_initializer=xavier_normal(), name="item_embedding")
        input_dropout = keras.layers.Dropout(embedding_dropout, name="embedding_dropout")
        grus = gru_layers(hidden_size, num_layers)
        attention = NARMAttention(hidden_size, name="attention")
        context_dropout = keras.layers.Dropout(hidden_dropout, name="context_dropout")
        projection = keras.layers.Dense(embedding_dim, use_bias=False, kernel_initializer=xavier_normal(), name="projection")

        # === Functional model ===
        item_ids = keras.Input(shape=(None,), dtype="int32", name="item_ids")
        h, mask = encode(item_ids, embedding, input_dropout, grus)
        context = ops.concatenate([attention(h, item_ids), h], axis=-1)  # [c_local, c_global]
        x = projection(context_dropout(context)) * mask
        kwargs.setdefault("name", "narm_backbone")
        super().__init__(inputs=item_ids, outputs=x, **kwargs)

        # === Config ===
        self.keep_config(embedding, vocabulary_size=int(vocabulary_size), embedding_dim=int(embedding_dim), hidden_size=int(hidden_size),
                         num_layers=int(num_layers), embedding_dropout=float(embedding_dropout), hidden_dropout=float(hidden_dropout))

    def hidden_at(self, item_ids, index, training=None):
        """The outputs at ``index [N, 2]`` only (the GRU still runs over every row; the attention has N queries)."""
        x = self.item_embedding(item_ids)
        h = self.get_layer("embedding_dropout")(x * padding_mask(item_ids, x.dtype), training=training)
        for i in range(self.num_layers):
            h = self.get_layer(f"gru_{i}")(h, training=training)
        context = ops.concatenate([self.get_layer("attention").at(h, item_ids, index), tf.gather_nd(h, index)], axis=-1)
        out = self.get_layer("projection")(self.get_layer("context_dropout")(context, training=training))
        return out * tf.gather_nd(padding_mask(item_ids, out.dtype), index)
