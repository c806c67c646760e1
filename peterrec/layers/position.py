"""Learned positional embeddings concatenated to the item embeddings (GRec's optional input)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="peterrec")
class ConcatPositionEmbedding(keras.layers.Layer):
    """``[x, P[0..T-1]]`` along channels: ``[B, T, C]`` -> ``[B, T, C + dim]``.

    As the original GRec encoder's ``--has_positionalembedding``: a learned
    ``[max_positions, dim]`` table concatenated, not added, to the item
    embeddings, initialised as the original's (``tf.get_variable`` without an
    initializer: Glorot uniform, fan-in ``max_positions``, fan-out ``dim``).
    Position 0 is the first column of the input; positions beyond
    ``max_positions - 1`` reuse the last row.
    """

    def __init__(self, max_positions, dim, **kwargs):
        super().__init__(**kwargs)
        self.max_positions = int(max_positions)
        self.dim = int(dim)

    def build(self, input_shape):
        self.table = self.add_weight(shape=(self.max_positions, self.dim), initializer=keras.initializers.GlorotUniform(), name="embeddings")
        super().build(input_shape)

    def call(self, x):
        length = ops.shape(x)[1]
        positions = ops.minimum(ops.arange(length), self.max_positions - 1)
        pos = ops.take(self.table, positions, axis=0)
        pos = ops.broadcast_to(ops.expand_dims(pos, 0), (ops.shape(x)[0], length, self.dim))
        return ops.concatenate([x, ops.cast(pos, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.dim)

    def get_config(self):
        return super().get_config() | {"max_positions": self.max_positions, "dim": self.dim}
