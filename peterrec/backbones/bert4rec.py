"""BERT4Rec's encoder: bidirectional self-attention over item + learned position embeddings.

The example of docs/adding_a_model.md: a non-causal ``[B, L, C]`` encoder that
the ``bert4rec`` recipe (peterrec/recipes/bert4rec.py) trains on the GRec cloze
layout with :class:`~peterrec.tasks.masked_item.MaskedItemTask` (masked items,
scored with the end mask, as Sun et al. 2019 append ``[mask]`` to predict the
next item).
"""

from __future__ import annotations

import keras
from keras import ops

from peterrec.features import PAD_ID
from peterrec.models.base import ZooBackbone, normal, padding_mask
from peterrec.models.sasrec import PositionEmbedding


@keras.saving.register_keras_serializable(package="peterrec")
class BidirectionalBlock(keras.layers.Layer):
    """A post-LN transformer layer whose attention sees every real item (padding keys are masked).

    ``x = LN1(x + Dropout(MHA(x, x, mask)));  x = LN2(x + Dropout(W2 GELU(W1 x)))``
    """

    def __init__(self, hidden_size, num_heads, inner_size, hidden_dropout=0.2, attn_dropout=0.2, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_heads, self.inner_size = int(hidden_size), int(num_heads), int(inner_size)
        self.hidden_dropout, self.attn_dropout = float(hidden_dropout), float(attn_dropout)
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, self.hidden_size // num_heads, dropout=self.attn_dropout, kernel_initializer=normal(0.02), name="attention"
        )
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-12, name="ln1")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-12, name="ln2")
        self.ffn_in = keras.layers.Dense(self.inner_size, activation="gelu", kernel_initializer=normal(0.02), name="ffn_in")
        self.ffn_out = keras.layers.Dense(self.hidden_size, kernel_initializer=normal(0.02), name="ffn_out")
        self.dropout = keras.layers.Dropout(self.hidden_dropout, name="dropout")

    def build(self, x_shape, item_ids_shape=None):
        self.attention.build(x_shape, x_shape)
        for layer in (self.ln1, self.ln2, self.ffn_in):
            layer.build(x_shape)
        self.ffn_out.build((*x_shape[:-1], self.inner_size))
        super().build(x_shape)

    def call(self, x, item_ids, training=None):
        real = ops.not_equal(item_ids, PAD_ID)  # [B, S]
        mask = ops.logical_and(ops.expand_dims(real, 1), ops.expand_dims(ops.ones_like(real), 2))  # [B, T, S]
        attended = self.attention(x, x, attention_mask=mask, training=training)
        x = self.ln1(x + self.dropout(attended, training=training))
        return self.ln2(x + self.dropout(self.ffn_out(self.ffn_in(x)), training=training))

    def compute_output_shape(self, x_shape, item_ids_shape=None):
        return x_shape

    def get_config(self):
        return super().get_config() | {
            "hidden_size": self.hidden_size, "num_heads": self.num_heads, "inner_size": self.inner_size,
            "hidden_dropout": self.hidden_dropout, "attn_dropout": self.attn_dropout,
        }


@keras.saving.register_keras_serializable(package="peterrec")
class BERT4RecBackbone(ZooBackbone):
    """Item ids ``[batch, L]`` (right-padded) -> hidden ``[batch, L, embedding_dim]``, bidirectional.

    ``E[item] + P[position]`` -> LayerNorm -> dropout -> ``num_layers``
    :class:`BidirectionalBlock` layers; weights N(0, 0.02); outputs at padded
    positions are 0. Defaults are RecBole 1.2.1's BERT4Rec (2 layers, 2 heads,
    inner 256, dropout 0.2).

    Reference: Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional
    Encoder Representations from Transformer", CIKM 2019.
    """

    CONFIG_KEYS = (
        "vocabulary_size", "embedding_dim", "max_positions", "num_layers", "num_heads", "inner_size", "hidden_dropout", "attn_dropout",
    )
    causal = False

    def __init__(self, vocabulary_size, embedding_dim=64, max_positions=50, num_layers=2, num_heads=2, inner_size=256,
                 hidden_dropout=0.2, attn_dropout=0.2, **kwargs):
        embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, embeddings_initializer=normal(0.02), name="item_embedding")
        blocks = [
            BidirectionalBlock(embedding_dim, num_heads, inner_size, hidden_dropout, attn_dropout, name=f"block_{i}")
            for i in range(num_layers)
        ]
        item_ids = keras.Input(shape=(None,), dtype="int32", name="item_ids")
        x = PositionEmbedding(max_positions, embeddings_initializer=normal(0.02), name="position_embedding")(embedding(item_ids))
        x = keras.layers.Dropout(hidden_dropout, name="embedding_dropout")(
            keras.layers.LayerNormalization(epsilon=1e-12, name="embedding_norm")(x)
        )
        for block in blocks:
            x = block(x, item_ids)
        x = x * padding_mask(item_ids, x.dtype)
        kwargs.setdefault("name", "bert4rec_backbone")
        super().__init__(inputs=item_ids, outputs=x, **kwargs)
        self.keep_config(
            embedding, vocabulary_size=int(vocabulary_size), embedding_dim=int(embedding_dim), max_positions=int(max_positions),
            num_layers=int(num_layers), num_heads=int(num_heads), inner_size=int(inner_size), hidden_dropout=float(hidden_dropout),
            attn_dropout=float(attn_dropout),
        )
