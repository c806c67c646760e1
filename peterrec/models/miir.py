"""MIIR (missing information imputation recommender, TempSDU/MIIR): one fused token grid of items × fields.

The network follows the PyTorch original (class ``MIIRS`` at HEAD,
``/work/shared/docs/other_models.md`` §4.2):

1. ``F = 1 + len(fields)`` fields: the item ID and the item-feature fields
   (:mod:`peterrec.data.item_features`). Value encoders ``[B, L, d]``: the
   ID's table ``[V, d]``; a categorical field's table (a multi-valued field
   is the *sum* of its values' rows, the original's multi-hot × table); a
   numeric field (``float``, or ``float_seq`` text vectors) ``Linear(width → d)``.
2. ``token(l, f) = value(l, f) + position(l) + field(f)`` (position table
   ``max_positions`` rows, from the left; no input LayerNorm or dropout),
   flattened position-major to ``[B, L·F, d]``.
3. ``num_layers`` post-LN Transformer encoder layers (PyTorch
   ``TransformerEncoderLayer``: ``x = LN(x + Drop(MHA(x)))``,
   ``x = LN(x + Drop(W2 Drop(GELU(W1 x))))``, LayerNorm ε 1e-5, dropout also
   on the attention probabilities; no final LayerNorm).
   * **DFSA** (``attention="dfsa"``, default): every token attends to every
     token of a real item, bidirectionally; the ``F`` tokens of a padded
     position are masked as keys.
   * **SFSA** (``attention="sfsa"``): token ``(l, f)`` attends only to the
     fields of its own item ``(l, ·)`` and to the same field at other
     positions ``(·, f)`` (:func:`sfsa_mask`), plus the padding mask.
4. Output heads on the un-flattened states: ID logits ``h · item_table^T``
   and categorical logits ``h · field_table^T`` (tied, as ``f98e26d``);
   numeric fields ``Linear(d → width)``.

Initialisation as the original: every parameter with >= 2 dims
Xavier-normal (tables, kernels, attention projections), biases 0.

Missing values: a masked or originally missing categorical value is the
field's "missing" row (``MISSING_VALUE``); a missing numeric value is a zero
vector through its ``Linear`` (the original uses the constant BERT('')).
A masked ID is ``MASK_ID`` (the original's id 1, "missing item"), whose
feature rows are all "missing", so a masked item loses all its fields.
"""

from __future__ import annotations


import keras
import numpy as np
import tensorflow as tf

from peterrec.data.item_features import CATEGORICAL, MISSING_VALUE
from peterrec.layers.item_features import ItemFeatureTables, embed_categorical
from peterrec.errors import ConfigError
from peterrec.features import PAD_ID

ATTENTIONS = ("dfsa", "sfsa")


def xavier_normal():
    """``torch.nn.init.xavier_normal_``: N(0, 2 / (fan_in + fan_out)), not truncated."""
    return keras.initializers.VarianceScaling(1.0, "fan_avg", "untruncated_normal")


def sfsa_mask(length, num_fields):
    """SFSA's ``[L·F, L·F]`` bool pattern (position-major tokens): ``(l, f)`` sees ``(l, ·)`` and ``(·, f)``."""
    token = np.arange(length * num_fields)
    position, field = token // num_fields, token % num_fields
    return (position[:, None] == position[None, :]) | (field[:, None] == field[None, :])


def attention_mask(real, num_fields, sparse):
    """``[B, L·F, L·F]`` bool: keys of real items (all their ``F`` tokens), and SFSA's pattern when ``sparse``."""
    keys = tf.repeat(tf.cast(real, tf.bool), num_fields, axis=1)  # [B, L*F]
    width = tf.shape(keys)[1]
    mask = tf.broadcast_to(keys[:, None, :], [tf.shape(keys)[0], width, width])
    if not sparse:
        return mask
    token = tf.range(width)
    position, field = token // num_fields, token % num_fields
    pattern = tf.equal(position[:, None], position[None, :]) | tf.equal(field[:, None], field[None, :])
    return mask & pattern[None]


@keras.saving.register_keras_serializable(package="peterrec")
class FusionLayer(keras.layers.Layer):
    """PyTorch's post-LN ``TransformerEncoderLayer`` (GELU, dropout everywhere, LayerNorm ε 1e-5)."""

    def __init__(self, hidden_size, num_heads, inner_size, dropout=0.5, **kwargs):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ConfigError(f"--num_heads: {num_heads} does not divide --embedding_dim {hidden_size}")
        self.hidden_size, self.num_heads, self.inner_size, self.dropout_rate = int(hidden_size), int(num_heads), int(inner_size), float(dropout)
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, self.hidden_size // self.num_heads, dropout=self.dropout_rate,
            kernel_initializer=xavier_normal(), bias_initializer="zeros", name="attention",
        )
        self.ffn_in = keras.layers.Dense(self.inner_size, kernel_initializer=xavier_normal(), name="ffn_in")
        self.ffn_out = keras.layers.Dense(self.hidden_size, kernel_initializer=xavier_normal(), name="ffn_out")
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-5, name="ln1")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-5, name="ln2")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")

    def build(self, input_shape=None):
        shape = (None, None, self.hidden_size)
        self.attention.build(shape, shape)
        self.ffn_in.build(shape)
        self.ffn_out.build((None, None, self.inner_size))
        self.ln1.build(shape)
        self.ln2.build(shape)
        self.built = True

    def call(self, x, mask, training=None):
        attended = self.attention(x, x, attention_mask=mask, training=training)
        x = self.ln1(x + self.dropout(attended, training=training))
        inner = self.dropout(tf.nn.gelu(self.ffn_in(x), approximate=False), training=training)
        return self.ln2(x + self.dropout(self.ffn_out(inner), training=training))

    def get_config(self):
        return super().get_config() | {
            "hidden_size": self.hidden_size, "num_heads": self.num_heads, "inner_size": self.inner_size, "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="peterrec")
class MIIR(keras.Model):
    """The MIIR network (see the module docstring).

    Args:
        vocabulary_size: item ids including the reserved ones.
        feature_spec: ``ItemFeatures.spec()`` of the side fields (their tables
            are non-trainable weights: ``model.features.assign(item_features)``).
        embedding_dim: d (64). num_layers: encoder layers (3). num_heads: 4.
        inner_size: feed-forward width (256). dropout: 0.5.
        max_positions: rows of the position table (100).
        attention: "dfsa" (default) or "sfsa".

    ``encode(item_ids, field_mask=None)`` returns ``[B, L, F, d]``;
    ``field_mask [B, L, F-1]`` (1 = masked) turns side-field cells "missing".
    """

    def __init__(
        self,
        vocabulary_size,
        feature_spec=(),
        embedding_dim=64,
        num_layers=3,
        num_heads=4,
        inner_size=256,
        dropout=0.5,
        max_positions=100,
        attention="dfsa",
        **kwargs,
    ):
        kwargs.setdefault("name", "miir")
        super().__init__(**kwargs)
        if attention not in ATTENTIONS:
            raise ConfigError(f"--attention: {attention!r} is not one of {', '.join(ATTENTIONS)}")
        self.vocabulary_size, self.feature_spec = int(vocabulary_size), [dict(s) for s in feature_spec]
        self.embedding_dim, self.num_layers, self.num_heads = int(embedding_dim), int(num_layers), int(num_heads)
        self.inner_size, self.dropout, self.max_positions, self.attention = int(inner_size), float(dropout), int(max_positions), attention
        d = self.embedding_dim
        self.num_fields = 1 + len(self.feature_spec)
        self.item_embedding = keras.layers.Embedding(self.vocabulary_size, d, embeddings_initializer=xavier_normal(), name="item_embedding")
        self.item_embedding.build((None,))
        self.features = ItemFeatureTables(self.feature_spec, self.vocabulary_size, name="item_features")
        self.field_tables, self.numeric_in, self.numeric_out = {}, {}, {}
        for s in self.feature_spec:
            name = s["name"]
            if s["kind"] in CATEGORICAL:
                self.field_tables[name] = self.add_weight(shape=(s["size"], d), initializer=xavier_normal(), name=f"{name}_embedding")
            else:
                self.numeric_in[name] = keras.layers.Dense(d, kernel_initializer=xavier_normal(), name=f"{name}_in")
                self.numeric_in[name].build((None, s["width"]))
                self.numeric_out[name] = keras.layers.Dense(s["width"], kernel_initializer=xavier_normal(), name=f"{name}_out")
                self.numeric_out[name].build((None, d))
        self.position_embedding = self.add_weight(shape=(self.max_positions, d), initializer=xavier_normal(), name="position_embedding")
        self.field_embedding = self.add_weight(shape=(self.num_fields, d), initializer=xavier_normal(), name="field_embedding")
        self.fusion = [FusionLayer(d, self.num_heads, self.inner_size, self.dropout, name=f"fusion_{i}") for i in range(self.num_layers)]
        for layer in self.fusion:
            layer.build()
        self.built = True

    @property
    def field_names(self):
        """The F fields: ``"item_id"`` then the side fields."""
        return ["item_id"] + [s["name"] for s in self.feature_spec]

    def _values(self, item_ids, field_mask):
        """Value embeddings ``[B, L, F, d]``."""
        looked_up = self.features(item_ids)
        parts = [self.item_embedding(item_ids)]
        for j, s in enumerate(self.feature_spec):
            values, _ = looked_up[s["name"]]
            masked = None if field_mask is None else tf.cast(field_mask[..., j], tf.bool)
            if s["kind"] in CATEGORICAL:
                table = self.field_tables[s["name"]]
                embedded = embed_categorical(table, values, s["kind"])
                if masked is not None:
                    embedded = tf.where(masked[..., None], tf.broadcast_to(table[MISSING_VALUE], tf.shape(embedded)), embedded)
            else:
                numbers = tf.reshape(values, tf.concat([tf.shape(item_ids), [s["width"]]], 0))
                if masked is not None:
                    numbers = tf.where(masked[..., None], tf.zeros_like(numbers), numbers)
                embedded = self.numeric_in[s["name"]](numbers)
            parts.append(tf.cast(embedded, parts[0].dtype))  # float32 tables, the compute dtype under --mixed_precision
        return tf.stack(parts, axis=2)

    def encode(self, item_ids, field_mask=None, training=None):
        """Hidden states ``[B, L, F, d]`` of right-padded ``item_ids`` ``[B, L]`` (PAD_ID = padding)."""
        item_ids = tf.cast(item_ids, tf.int32)
        batch, length = tf.shape(item_ids)[0], tf.shape(item_ids)[1]
        positions = tf.minimum(tf.range(length), self.max_positions - 1)
        tokens = self._values(item_ids, field_mask)
        tokens += tf.cast(tf.gather(self.position_embedding, positions)[None, :, None, :] + self.field_embedding[None, None, :, :], tokens.dtype)
        x = tf.reshape(tokens, [batch, length * self.num_fields, self.embedding_dim])
        mask = attention_mask(tf.not_equal(item_ids, PAD_ID), self.num_fields, self.attention == "sfsa")
        for layer in self.fusion:
            x = layer(x, mask, training=training)
        return tf.reshape(x, [batch, length, self.num_fields, self.embedding_dim])

    def id_logits(self, hidden):
        """``[N, V]`` scores of every item id for ID-field states ``[N, d]`` (tied)."""
        return tf.matmul(hidden, tf.cast(self.item_embedding.embeddings, hidden.dtype), transpose_b=True)

    def field_output(self, name, hidden):
        """A side field's output for its states ``[N, d]``: logits over its values, or the predicted numbers."""
        if name in self.field_tables:
            return tf.matmul(hidden, tf.cast(self.field_tables[name], hidden.dtype), transpose_b=True)
        return self.numeric_out[name](hidden)

    def call(self, item_ids, training=None):
        return self.encode(item_ids, training=training)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "feature_spec": self.feature_spec,
            "embedding_dim": self.embedding_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "inner_size": self.inner_size,
            "dropout": self.dropout,
            "max_positions": self.max_positions,
            "attention": self.attention,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
