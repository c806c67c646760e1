"""NextItNet: a stack of dilated causal residual blocks over item embeddings."""

from __future__ import annotations

import keras
from keras import ops

from peterrec.features import PAD_ID
from peterrec.layers.dilated_block import DilatedResidualBlock, conv_initializer

DEFAULT_DILATIONS = (1, 4, 1, 4, 1, 4, 1, 4)


def receptive_field(dilations, kernel_size=3):
    """Number of input positions one output position can see (121 by default)."""
    return 1 + (kernel_size - 1) * sum(d + 2 * d for d in dilations)


@keras.saving.register_keras_serializable(package="peterrec")
class NextItNetBackbone(keras.Model):
    """NextItNet encoder: item ids ``[batch, length]`` -> hidden ``[batch, length, C]``.

    Faithful to the official TF1 code (see docs/fidelity.md): truncated-normal
    (sd 0.02) item embeddings, no positional embedding, one
    :class:`DilatedResidualBlock` per entry of ``dilations`` (each block holds
    two convs with dilations ``d`` and ``2d``), no final normalisation.

    Args:
        vocabulary_size: number of item ids including the reserved ids.
        embedding_dim: channel width C (64 in the demo, 256 in the paper).
        dilations: first dilation of each block; ``[1, 4] * 4`` = 1, 2, 4, 8 x 4.
        kernel_size: conv width (3).
        causal: True for NextItNet; False gives the GRec encoder's "same" convs.
        dropout: dropout on the input embeddings and residual branches (0 = original).
        mask_padding: zero the embeddings and block outputs at ``PAD_ID``
            positions, so padding never changes a real position's output.
            False reproduces the original, where the pad token is an ordinary item.

    Call arguments:
        item_ids: int tensor ``[batch, length]``; padding is ``PAD_ID``
            (right-padding for causal models).

    Example:
        >>> backbone = NextItNetBackbone(vocabulary_size=100, embedding_dim=8, dilations=[1, 2])
        >>> backbone(np.array([[5, 6, 7, 0]])).shape
        (1, 4, 8)

    Reference: Yuan et al., "A Simple Convolutional Generative Network for
    Next Item Recommendation", WSDM 2019; github.com/fajieyuan/nextitnet.
    """

    def __init__(
        self,
        vocabulary_size,
        embedding_dim=64,
        dilations=DEFAULT_DILATIONS,
        kernel_size=3,
        causal=True,
        dropout=0.0,
        mask_padding=True,
        **kwargs,
    ):
        # === Layers ===
        embedding = keras.layers.Embedding(
            vocabulary_size, embedding_dim, embeddings_initializer=conv_initializer(), name="item_embedding"
        )
        blocks = [
            DilatedResidualBlock(embedding_dim, d, kernel_size, causal=causal, dropout=dropout, name=f"block_{i}")
            for i, d in enumerate(dilations)
        ]
        input_dropout = keras.layers.Dropout(dropout, name="embedding_dropout") if dropout > 0 else None

        # === Functional model ===
        item_ids = keras.Input(shape=(None,), dtype="int32", name="item_ids")
        x = embedding(item_ids)
        mask = ops.expand_dims(ops.cast(ops.not_equal(item_ids, PAD_ID), x.dtype), -1) if mask_padding else None
        if input_dropout is not None:
            x = input_dropout(x)
        for block in blocks:
            x = block(x * mask, padding_mask=mask) if mask is not None else block(x)
        if mask is not None:
            x = x * mask
        kwargs.setdefault("name", "nextitnet_backbone")
        super().__init__(inputs=item_ids, outputs=x, **kwargs)

        # === Config ===
        self.vocabulary_size = int(vocabulary_size)
        self.embedding_dim = int(embedding_dim)
        self.dilations = [int(d) for d in dilations]
        self.kernel_size = int(kernel_size)
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.mask_padding = bool(mask_padding)
        self.embedding = embedding
        self.blocks = blocks

    @property
    def receptive_field(self):
        return receptive_field(self.dilations, self.kernel_size)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "dilations": list(self.dilations),
            "kernel_size": self.kernel_size,
            "causal": self.causal,
            "dropout": self.dropout,
            "mask_padding": self.mask_padding,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
