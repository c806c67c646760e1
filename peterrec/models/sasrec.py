"""SASRec: causal self-attention over item + learned position embeddings (RecBole 1.2.1 semantics)."""

from __future__ import annotations

import math

import keras
from keras import ops

from peterrec.models.base import ZooBackbone, normal, padding_mask


@keras.saving.register_keras_serializable(package="peterrec")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned ``[max_positions, C]`` table: ``x[:, t] + P[t]`` (t counted from the left).

    Positions beyond ``max_positions - 1`` reuse the last row (the serving
    signature adds one free slot after a full ``max_len`` row; its output is
    never read by a causal model).
    """

    def __init__(self, max_positions, embeddings_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.max_positions = int(max_positions)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.max_positions, input_shape[-1]), initializer=self.embeddings_initializer, name="embeddings"
        )
        super().build(input_shape)

    def call(self, x):
        positions = ops.minimum(ops.arange(ops.shape(x)[1]), self.max_positions - 1)
        return x + ops.expand_dims(ops.cast(ops.take(self.embeddings, positions, axis=0), x.dtype), 0)

    def get_config(self):
        return super().get_config() | {
            "max_positions": self.max_positions,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


@keras.saving.register_keras_serializable(package="peterrec")
class SASRecBlock(keras.layers.Layer):
    """One causal transformer layer.

    ``pre_ln=False`` (RecBole's BERT layer, post-LN)::

        x = LN1(x + Dropout(MHA(x, x)));  x = LN2(x + Dropout(W2 GELU(W1 x)))

    ``pre_ln=True`` (the original SASRec, ``kang205/SASRec`` ``model.py``)::

        q = LN1(x);  x = q + MHA(q, x);  h = LN2(x);  x = h + Dropout(W2 Dropout(ReLU(W1 h)))

    The attention is ``keras.layers.MultiHeadAttention`` with a causal mask
    and dropout on the attention probabilities.

    Args:
        hidden_size: width C of the input and output.
        num_heads: attention heads (must divide ``hidden_size``).
        inner_size: width of the feed-forward layer.
        hidden_dropout: dropout on the residual branches.
        attn_dropout: dropout on the attention probabilities.
        pre_ln: the original's pre-LN layer (see above) instead of RecBole's post-LN one.
        layer_norm_eps: LayerNorm epsilon (1e-12 RecBole, 1e-8 original).
        activation: feed-forward activation ("gelu" RecBole, "relu" original).
        kernel_initializer: initialiser of every kernel (biases 0).
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        inner_size,
        hidden_dropout=0.5,
        attn_dropout=0.5,
        pre_ln=False,
        layer_norm_eps=1e-12,
        activation="gelu",
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.inner_size = int(inner_size)
        self.hidden_dropout = float(hidden_dropout)
        self.attn_dropout = float(attn_dropout)
        self.pre_ln = bool(pre_ln)
        self.layer_norm_eps = float(layer_norm_eps)
        self.activation = activation
        self.kernel_initializer = keras.initializers.get(kernel_initializer or normal(0.02))
        init = lambda: keras.initializers.get(keras.initializers.serialize(self.kernel_initializer))  # noqa: E731  (fresh draws per weight)
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, self.hidden_size // num_heads, dropout=self.attn_dropout, kernel_initializer=init(), name="attention"
        )
        self.ln1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_eps, name="ln1")
        self.ln2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_eps, name="ln2")
        self.ffn_in = keras.layers.Dense(self.inner_size, activation=activation, kernel_initializer=init(), name="ffn_in")
        self.ffn_out = keras.layers.Dense(self.hidden_size, kernel_initializer=init(), name="ffn_out")
        self.dropout = keras.layers.Dropout(self.hidden_dropout, name="dropout")

    def build(self, input_shape):
        self.attention.build(input_shape, input_shape)
        self.ln1.build(input_shape)
        self.ln2.build(input_shape)
        self.ffn_in.build(input_shape)
        self.ffn_out.build((*input_shape[:-1], self.inner_size))
        super().build(input_shape)

    def call(self, x, training=None):
        if not self.pre_ln:
            attended = self.attention(x, x, use_causal_mask=True, training=training)
            x = self.ln1(x + self.dropout(attended, training=training))
            return self.ln2(x + self.dropout(self.ffn_out(self.ffn_in(x)), training=training))
        queries = self.ln1(x)
        x = queries + self.attention(queries, x, use_causal_mask=True, training=training)
        h = self.ln2(x)
        inner = self.dropout(self.ffn_in(h), training=training)
        return h + self.dropout(self.ffn_out(inner), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "inner_size": self.inner_size,
            "hidden_dropout": self.hidden_dropout,
            "attn_dropout": self.attn_dropout,
            "pre_ln": self.pre_ln,
            "layer_norm_eps": self.layer_norm_eps,
            "activation": self.activation,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@keras.saving.register_keras_serializable(package="peterrec")
class SASRecBackbone(ZooBackbone):
    """SASRec encoder: item ids ``[batch, L]`` -> hidden ``[batch, L, embedding_dim]``, causal.

    RecBole 1.2.1 (default, ``pre_ln=False``): ``E[item] + P[position]`` ->
    LayerNorm (eps 1e-12) -> dropout -> ``num_layers`` post-LN transformer
    layers (:class:`SASRecBlock`, GELU feed-forward of ``inner_size``);
    every weight N(0, 0.02), biases 0, LayerNorm 1/0. Positions count from
    the first (oldest) slot of the right-padded row, as RecBole's.

    ``pre_ln=True`` is the original SASRec (``kang205/SASRec``): the item
    embedding is scaled by ``sqrt(embedding_dim)``, no input LayerNorm,
    pre-LN layers with a ReLU feed-forward, a final LayerNorm, LayerNorm eps
    1e-8 and Glorot-uniform weights. Combine it with ``--loss bce`` (one
    negative per position) and ``--inner_size <embedding_dim>`` to match the
    original; its attention has no output projection, Keras' has one.

    Padding: a position attends to itself and earlier positions only, so
    right padding never changes a real position; outputs at padded positions
    are set to 0.

    Args:
        vocabulary_size: number of ids, reserved ids included.
        embedding_dim: hidden size (RecBole's ``hidden_size``), 64.
        max_positions: rows of the position table (RecBole's ``MAX_ITEM_LIST_LENGTH``, = ``--max_len``).
        num_layers: transformer layers (2).
        num_heads: attention heads (2).
        inner_size: feed-forward width (256).
        hidden_dropout: dropout on the embeddings and residual branches (0.5).
        attn_dropout: dropout on the attention probabilities (0.5).
        pre_ln: the original SASRec's layer layout (see above).

    Reference: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018;
    RecBole ``recbole/model/sequential_recommender/sasrec.py``.
    """

    CONFIG_KEYS = (
        "vocabulary_size",
        "embedding_dim",
        "max_positions",
        "num_layers",
        "num_heads",
        "inner_size",
        "hidden_dropout",
        "attn_dropout",
        "pre_ln",
    )

    def __init__(
        self,
        vocabulary_size,
        embedding_dim=64,
        max_positions=50,
        num_layers=2,
        num_heads=2,
        inner_size=256,
        hidden_dropout=0.5,
        attn_dropout=0.5,
        pre_ln=False,
        **kwargs,
    ):
        # === Layers ===
        init = (lambda: keras.initializers.GlorotUniform()) if pre_ln else (lambda: normal(0.02))
        eps = 1e-8 if pre_ln else 1e-12
        embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, embeddings_initializer=init(), name="item_embedding")
        positions = PositionEmbedding(max_positions, embeddings_initializer=init(), name="position_embedding")
        scale = keras.layers.Rescaling(math.sqrt(embedding_dim), name="embedding_scale") if pre_ln else None
        input_norm = None if pre_ln else keras.layers.LayerNormalization(epsilon=eps, name="embedding_norm")
        input_dropout = keras.layers.Dropout(hidden_dropout, name="embedding_dropout")
        blocks = [
            SASRecBlock(
                embedding_dim,
                num_heads,
                inner_size,
                hidden_dropout=hidden_dropout,
                attn_dropout=attn_dropout,
                pre_ln=pre_ln,
                layer_norm_eps=eps,
                activation="relu" if pre_ln else "gelu",
                kernel_initializer=init(),
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(epsilon=eps, name="final_norm") if pre_ln else None

        # === Functional model ===
        item_ids = keras.Input(shape=(None,), dtype="int32", name="item_ids")
        x = embedding(item_ids)
        if scale is not None:
            x = scale(x)
        x = positions(x)
        if input_norm is not None:
            x = input_norm(x)
        x = input_dropout(x)
        for block in blocks:
            x = block(x)
        if final_norm is not None:
            x = final_norm(x)
        x = x * padding_mask(item_ids, x.dtype)
        kwargs.setdefault("name", "sasrec_backbone")
        super().__init__(inputs=item_ids, outputs=x, **kwargs)

        # === Config ===
        self.vocabulary_size = int(vocabulary_size)
        self.embedding_dim = self.output_dim = int(embedding_dim)
        self.max_positions = int(max_positions)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.inner_size = int(inner_size)
        self.hidden_dropout = float(hidden_dropout)
        self.attn_dropout = float(attn_dropout)
        self.pre_ln = bool(pre_ln)
        self.item_embedding = embedding
        self.blocks = blocks
