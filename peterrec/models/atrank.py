"""ATRank (Zhou et al., AAAI 2018): time-aware multi-space self-attention and a candidate-conditioned user vector.

The network follows the TensorFlow original (``jinze1994/ATRank``
``atrank/model.py``; ``/work/shared/docs/other_models.md`` §5):

1. candidate ``e_c = item_emb[c] ⊕ field_emb[f(c)] ...`` (the original: one
   category field; here any categorical fields of the item-feature tables,
   a multi-valued field is the sum of its values' rows), width ``H``;
   item bias ``b_c`` (zero-initialised);
2. history ``h_j = Dense_H(item_emb ⊕ field_embs ⊕ one_hot(time_bucket_j))``
   (bias, no activation); time buckets of ``Δ = day(target) − day(j) + 1``:
   ``#{g in 2, 4, ..., 4096 : Δ >= g}``, 13 values (:func:`time_bucket`);
3. ``num_layers`` self-attention blocks (:class:`ATRankBlock`: ReLU-projected
   Q, K, V, "multiple latent spaces", ``num_heads`` heads, key and query
   masking by the history length, residual + LayerNorm(ε 1e-8), bottleneck
   FFN ``H → H/4 (ReLU) → H``, residual + LayerNorm); no positional encoding,
   no causal mask;
4. ``num_layers`` vanilla-attention blocks (same structure, own weights):
   the candidate embedding queries the encoded history, giving the user
   vector ``u`` for *this* candidate;
5. ``logit = b_c + u · e_c``.

**Multi-behaviour ATRank** (``behaviours``: the type names, the original's
``multi/model.py``): every history item carries a behaviour type ``k_j``
and each type has its own projection,
``h_j = Dense^{(k_j)}_H(item_emb ⊕ field_embs ⊕ behaviour_emb[k_j] ⊕ one_hot(time_bucket_j))``,
before the shared self-attention. The candidate goes through the projection
of one type (``candidate_behaviour``, an index into ``behaviours``) with
zeros in the behaviour and time slots:
``e_c = Dense^{(t)}_H(item_emb ⊕ field_embs ⊕ 0 ⊕ 0)``
(``candidate_projection="type"``, the original), or stays the
single-behaviour ``item_emb ⊕ field_embs`` (``"none"``). Weight mapping to
the single-behaviour model (one type, ``candidate_projection="none"``: the
same outputs): ``behaviour_projection_0`` kernel = ``history_projection``
kernel with ``behaviour_dim`` zero rows inserted after the first ``H`` rows
(the behaviour slot), same bias; every other weight is shared by name.

Padded history slots never change the output: every mask comes from the
lengths, never from the item ids (item 0 may be real in other data).
:meth:`ATRank.score_candidates` scores ``C`` candidates per user with the
self-attention computed once; :meth:`ATRank.score_all` scores the whole
vocabulary in chunks of ``candidate_chunk`` (full ranking).

Initialisers are TF1's defaults: Glorot-uniform for tables and kernels,
zero biases. The task and input pipelines are in ``peterrec.tasks.atrank``;
``ATRankConfig``, ``build_atrank_job`` and ``run_atrank`` (``peterrec.recipes.atrank``)
make it a training job.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from peterrec.data.item_features import CATEGORICAL
from peterrec.layers.item_features import ItemFeatureTables, embed_categorical
from peterrec.errors import ConfigError

TIME_BOUNDARIES = tuple(2**k for k in range(1, 13))  # 2, 4, ..., 4096 (days)
NUM_TIME_BUCKETS = len(TIME_BOUNDARIES) + 1  # 13
SECONDS_PER_DAY = 86400
MASK_VALUE = -(2.0**32) + 1.0  # the original's score for a padded key
CANDIDATE_PROJECTIONS = ("type", "none")


def time_bucket(delta_days):
    """ATRank's bucket of ``Δ = day(target) − day(item) + 1``: ``#{g in (2, 4, ..., 4096) : Δ >= g}`` (0..12).

    Works on numpy arrays and TF tensors (int).
    """
    if isinstance(delta_days, (np.ndarray, int, np.integer, list)):
        delta = np.asarray(delta_days)
        return (delta[..., None] >= np.asarray(TIME_BOUNDARIES)).sum(-1).astype(np.int32)
    delta = tf.cast(delta_days, tf.int64)
    return tf.reduce_sum(tf.cast(delta[..., None] >= tf.constant(TIME_BOUNDARIES, tf.int64), tf.int32), axis=-1)


@keras.saving.register_keras_serializable(package="peterrec")
class ATRankBlock(keras.layers.Layer):
    """ATRank's multi-head attention + feed-forward block (self- or vanilla attention).

    ``call(queries [B, Tq, H], keys [B, Tk, H], query_mask [B, Tq], key_mask [B, Tk])``; queries (and
    their mask) may be ``[1, Tq, ...]``, the same for every row (projected once)::

        Q, K, V = ReLU(Dense(queries)), ReLU(Dense(keys)), ReLU(Dense(keys))   # H each
        A = softmax(Q_h K_h^T / sqrt(H / heads), padded keys -> -2^32 + 1) * query_mask
        x = LN(concat_h(dropout(A) V_h) + queries)          # no output projection
        y = LN(Dense_H(ReLU(Dense_{H/4}(x))) + x)

    The attention rows are also multiplied by the key mask after the softmax,
    which changes nothing when a row has a real key and gives 0 (not the
    padded slots' mean) for an empty history.
    """

    def __init__(self, hidden_size, num_heads, dropout=0.0, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.hidden_size, self.num_heads = int(hidden_size), int(num_heads)
        self.dropout_rate, self.epsilon = float(dropout), float(epsilon)
        H = self.hidden_size
        dense = lambda units, name, activation=None: keras.layers.Dense(  # noqa: E731
            units, activation=activation, kernel_initializer="glorot_uniform", bias_initializer="zeros", name=name
        )
        self.query, self.key, self.value = dense(H, "query", "relu"), dense(H, "key", "relu"), dense(H, "value", "relu")
        self.ffn_in, self.ffn_out = dense(max(H // 4, 1), "ffn_in", "relu"), dense(H, "ffn_out")
        self.ln1 = keras.layers.LayerNormalization(epsilon=self.epsilon, name="ln1")
        self.ln2 = keras.layers.LayerNormalization(epsilon=self.epsilon, name="ln2")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")

    def build(self, input_shape=None):
        H = self.hidden_size
        for layer in (self.query, self.key, self.value, self.ffn_in, self.ln1, self.ln2):
            layer.build((None, H))
        self.ffn_out.build((None, max(H // 4, 1)))
        self.built = True

    def _heads(self, x):
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads, self.hidden_size // self.num_heads])
        return tf.transpose(x, [0, 2, 1, 3])  # [B, h, T, d]

    def call(self, queries, keys, query_mask, key_mask, training=None):
        q, k, v = self._heads(self.query(queries)), self._heads(self.key(keys)), self._heads(self.value(keys))
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.hidden_size // self.num_heads)  # [B, h, Tq, Tk]
        keys_real = tf.cast(key_mask, scores.dtype)[:, None, None, :]
        scores = tf.where(keys_real > 0, scores, tf.cast(MASK_VALUE, scores.dtype))
        probs = tf.nn.softmax(scores, axis=-1) * keys_real
        probs *= tf.cast(query_mask, scores.dtype)[:, None, :, None]
        probs = self.dropout(probs, training=training)
        out = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])
        shape = tf.shape(out)  # queries may be [1, Tq, H], shared by every row of keys
        out = tf.reshape(out, [shape[0], shape[1], self.hidden_size])
        x = self.ln1(out + queries)
        return self.ln2(self.ffn_out(self.ffn_in(x)) + x)

    def get_config(self):
        return super().get_config() | {
            "hidden_size": self.hidden_size, "num_heads": self.num_heads, "dropout": self.dropout_rate, "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="peterrec")
class ATRank(keras.Model):
    """The ATRank network (see the module docstring).

    Args:
        vocabulary_size: item ids including the reserved ones.
        feature_spec: ``ItemFeatures.spec()`` of the categorical fields the
            model embeds (their tables are non-trainable weights; load them
            with ``model.features.assign(item_features)``).
        embedding_dim: item embedding width (64).
        field_dim: embedding width of each categorical field (64).
        num_heads: attention heads (8); must divide ``H = embedding_dim +
            len(fields) * field_dim``.
        num_layers: self-attention blocks and vanilla-attention blocks (1 each).
        dropout: on the attention probabilities (0.0).
        time_depth: one-hot width of the time buckets: 13 (every bucket), or
            12, the TF original's, where bucket 12 (Δ >= 4096 days) is all zeros.
        candidate_chunk: candidates scored at once in :meth:`score_all`.
    """

    def __init__(
        self,
        vocabulary_size,
        feature_spec=(),
        embedding_dim=64,
        field_dim=64,
        num_heads=8,
        num_layers=1,
        dropout=0.0,
        time_depth=NUM_TIME_BUCKETS,
        candidate_chunk=512,
        behaviours=(),
        behaviour_dim=16,
        candidate_behaviour=0,
        candidate_projection="type",
        **kwargs,
    ):
        kwargs.setdefault("name", "atrank")
        super().__init__(**kwargs)
        self.feature_spec = [dict(s) for s in feature_spec]
        for s in self.feature_spec:
            if s["kind"] not in CATEGORICAL:
                raise ConfigError(f"--item_fields: ATRank embeds categorical fields only; {s['name']!r} is {s['kind']}")
        self.vocabulary_size, self.embedding_dim, self.field_dim = int(vocabulary_size), int(embedding_dim), int(field_dim)
        self.num_heads, self.num_layers, self.dropout = int(num_heads), int(num_layers), float(dropout)
        self.time_depth, self.candidate_chunk = int(time_depth), int(candidate_chunk)
        self.hidden_size = self.embedding_dim + len(self.feature_spec) * self.field_dim
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"--num_heads: {self.num_heads} does not divide the hidden width {self.hidden_size} "
                f"(= --embedding_dim {self.embedding_dim} + {len(self.feature_spec)} fields x --field_dim {self.field_dim})"
            )
        self.item_embedding = keras.layers.Embedding(self.vocabulary_size, self.embedding_dim, embeddings_initializer="glorot_uniform", name="item_embedding")
        self.item_embedding.build((None,))
        self.features = ItemFeatureTables(self.feature_spec, self.vocabulary_size, name="item_features")
        self.field_tables = [
            self.add_weight(shape=(s["size"], self.field_dim), initializer="glorot_uniform", name=f"{s['name']}_embedding")
            for s in self.feature_spec
        ]
        self.item_bias = self.add_weight(shape=(self.vocabulary_size,), initializer="zeros", name="item_bias")
        self.behaviours = [str(b) for b in behaviours]
        self.behaviour_dim, self.candidate_behaviour = int(behaviour_dim), int(candidate_behaviour)
        self.candidate_projection = str(candidate_projection)
        if self.behaviours:
            if not 0 <= self.candidate_behaviour < len(self.behaviours):
                raise ConfigError(f"--candidate_behaviour: index {self.candidate_behaviour} is not one of the {len(self.behaviours)} behaviour types")
            if self.candidate_projection not in CANDIDATE_PROJECTIONS:
                raise ConfigError(f"--candidate_projection: {self.candidate_projection!r} is not one of {', '.join(CANDIDATE_PROJECTIONS)}")
            self.behaviour_embedding = self.add_weight(
                shape=(len(self.behaviours), self.behaviour_dim), initializer="glorot_uniform", name="behaviour_embedding"
            )
            self.behaviour_projections = []
            for k in range(len(self.behaviours)):
                layer = keras.layers.Dense(self.hidden_size, kernel_initializer="glorot_uniform", name=f"behaviour_projection_{k}")
                layer.build((None, self.hidden_size + self.behaviour_dim + self.time_depth))
                self.behaviour_projections.append(layer)
        else:
            self.history_projection = keras.layers.Dense(self.hidden_size, kernel_initializer="glorot_uniform", name="history_projection")
            self.history_projection.build((None, self.hidden_size + self.time_depth))
        self.self_blocks = [ATRankBlock(self.hidden_size, self.num_heads, self.dropout, name=f"self_attention_{i}") for i in range(self.num_layers)]
        self.vanilla_blocks = [ATRankBlock(self.hidden_size, self.num_heads, self.dropout, name=f"vanilla_attention_{i}") for i in range(self.num_layers)]
        for block in self.self_blocks + self.vanilla_blocks:
            block.build()
        self.built = True

    # ------------------------------------------------------------ parts
    def item_vectors(self, item_ids):
        """``e = item_emb ⊕ field embeddings`` ``[..., H]``."""
        ids = tf.cast(item_ids, tf.int32)
        parts = [self.item_embedding(ids)]
        looked_up = self.features(ids)
        for spec, table in zip(self.feature_spec, self.field_tables):
            parts.append(tf.cast(embed_categorical(table, looked_up[spec["name"]][0], spec["kind"]), parts[0].dtype))
        return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]

    def candidate_vectors(self, item_ids):
        """The candidate embedding ``e_c`` ``[..., H]``: ``item_vectors``, or (multi-behaviour, ``candidate_projection="type"``)
        their projection by the candidate type's Dense with zeros in the behaviour and time slots."""
        e = self.item_vectors(item_ids)
        if not self.behaviours or self.candidate_projection == "none":
            return e
        zeros = tf.zeros(tf.concat([tf.shape(e)[:-1], [self.behaviour_dim + self.time_depth]], 0), e.dtype)
        return self.behaviour_projections[self.candidate_behaviour](tf.concat([e, zeros], axis=-1))

    def _project_history(self, vectors, time, behaviours):
        """``Dense(item ⊕ fields ⊕ time)`` (single behaviour) or each position's type projection of
        ``item ⊕ fields ⊕ behaviour_emb ⊕ time``; ``behaviours`` None: every position is the candidate type (serving)."""
        if not self.behaviours:
            return self.history_projection(tf.concat([vectors, time], axis=-1))
        if behaviours is None:
            behaviours = tf.fill(tf.shape(vectors)[:-1], self.candidate_behaviour)
        behaviours = tf.clip_by_value(tf.cast(behaviours, tf.int32), 0, len(self.behaviours) - 1)  # padded slots: any type (masked)
        x = tf.concat([vectors, tf.gather(self.behaviour_embedding, behaviours), time], axis=-1)
        if len(self.behaviour_projections) == 1:
            return self.behaviour_projections[0](x)
        select = tf.one_hot(behaviours, len(self.behaviours), dtype=x.dtype)  # [B, T, K]
        return tf.add_n([layer(x) * select[..., k : k + 1] for k, layer in enumerate(self.behaviour_projections)])

    def encode(self, item_ids, lengths, time_buckets, behaviours=None, training=None):
        """The self-attention part: ``(encoded history [B, T, H], key mask [B, T])`` (once per user).

        ``behaviours`` int ``[B, T]``: the history's behaviour-type ids (multi-behaviour only).
        """
        item_ids = tf.cast(item_ids, tf.int32)
        mask = tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(item_ids)[1], dtype=tf.float32)
        vectors = self.item_vectors(item_ids)
        time = tf.one_hot(tf.cast(time_buckets, tf.int32), self.time_depth, dtype=vectors.dtype)  # depth 12: bucket 12 -> zeros
        h = self._project_history(vectors, time, behaviours)
        for block in self.self_blocks:
            h = block(h, h, mask, mask, training=training)
        return h, mask

    def score_candidates(self, encoded, mask, candidates, training=None):
        """``(logits [B, C], u [B, C, H], e_c [B, C, H])`` for ``candidates`` ``[B, C]``, or ``[C]``: the same for
        every row (their embeddings and query projections are then computed once, not per row; e_c is ``[1, C, H]``)."""
        candidates = tf.cast(candidates, tf.int32)
        if candidates.shape.rank == 1:
            candidates = candidates[None, :]
        e = self.candidate_vectors(candidates)
        u = e
        ones = tf.ones(tf.shape(candidates), tf.float32)
        for block in self.vanilla_blocks:
            u = block(u, encoded, ones, mask, training=training)
        return tf.gather(self.item_bias, candidates) + tf.cast(tf.reduce_sum(u * e, axis=-1), tf.float32), u, e  # float32 logits

    def score_all(self, encoded, mask):
        """Logits ``[B, V]`` of every id, ``candidate_chunk`` candidates at a time (inference)."""
        chunk = max(1, min(self.candidate_chunk, self.vocabulary_size))
        num_chunks = -(-self.vocabulary_size // chunk)
        ids = tf.minimum(tf.reshape(tf.range(num_chunks * chunk), [num_chunks, chunk]), self.vocabulary_size - 1)
        batch = tf.shape(encoded)[0]

        def one(chunk_ids):
            return tf.broadcast_to(self.score_candidates(encoded, mask, chunk_ids)[0], [batch, chunk])

        scores = tf.map_fn(one, ids, fn_output_signature=tf.TensorSpec([None, chunk], tf.float32))  # [n, B, chunk]
        scores = tf.reshape(tf.transpose(scores, [1, 0, 2]), [batch, num_chunks * chunk])
        return scores[:, : self.vocabulary_size]

    def call(self, item_ids, lengths, time_buckets, candidates, behaviours=None, training=None):
        encoded, mask = self.encode(item_ids, lengths, time_buckets, behaviours, training=training)
        return self.score_candidates(encoded, mask, candidates, training=training)[0]

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "feature_spec": self.feature_spec,
            "embedding_dim": self.embedding_dim,
            "field_dim": self.field_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "time_depth": self.time_depth,
            "candidate_chunk": self.candidate_chunk,
        } | ({
            "behaviours": self.behaviours,
            "behaviour_dim": self.behaviour_dim,
            "candidate_behaviour": self.candidate_behaviour,
            "candidate_projection": self.candidate_projection,
        } if self.behaviours else {})

    @classmethod
    def from_config(cls, config):
        return cls(**config)
