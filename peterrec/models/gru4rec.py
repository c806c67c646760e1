"""GRU4Rec: a GRU over item embeddings (RecBole 1.2.1 semantics)."""

from __future__ import annotations

import keras

from peterrec.models.base import ZooBackbone, padding_mask, torch_linear_kernel, torch_uniform, xavier_normal, xavier_uniform


def gru_layers(hidden_size, num_layers, first_initializer=None):
    """``num_layers`` stacked ``keras.layers.GRU`` as RecBole's ``nn.GRU(bias=False, batch_first=True)``.

    Keras' ``reset_after=True`` GRU is PyTorch's formulation. Weights are
    U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's default) unless ``first_initializer``
    (a zero-argument factory) replaces both matrices of the first layer.
    No mask is passed: a GRU is causal, so right padding never reaches a real position.
    """
    layers = []
    for i in range(num_layers):
        make = first_initializer if (i == 0 and first_initializer is not None) else (lambda: torch_uniform(hidden_size))
        layers.append(
            keras.layers.GRU(
                hidden_size,
                use_bias=False,
                return_sequences=True,
                kernel_initializer=make(),
                recurrent_initializer=make(),
                name=f"gru_{i}",
            )
        )
    return layers


def encode(item_ids, embedding, dropout, grus):
    """``E[item]`` with padding rows zeroed -> ``dropout`` -> the stacked ``grus``; returns ``(h, mask)``.

    ``h`` is ``[batch, L, hidden_size]``, ``mask`` the ``[batch, L, 1]`` padding mask (GRU4Rec and NARM).
    """
    x = embedding(item_ids)
    mask = padding_mask(item_ids, x.dtype)
    x = dropout(x * mask)
    for gru in grus:
        x = gru(x)
    return x, mask


@keras.saving.register_keras_serializable(package="peterrec")
class GRU4RecBackbone(ZooBackbone):
    """GRU4Rec encoder: item ids ``[batch, L]`` -> hidden ``[batch, L, embedding_dim]``, causal.

    As RecBole's GRU4Rec: ``E[item]`` (xavier normal) -> dropout ->
    ``num_layers`` GRUs without bias (first layer xavier uniform, the others
    PyTorch's default) -> ``Dense(embedding_dim)`` with bias (PyTorch's
    default initialisation). The output at position t is the user state after
    item t; a next-item task scores it against the item table (tied).

    Args:
        vocabulary_size: number of ids, reserved ids included.
        embedding_dim: item embedding width and output width (64).
        hidden_size: GRU state width (128).
        num_layers: stacked GRU layers (1).
        embedding_dropout: dropout on the input embeddings (RecBole's ``dropout_prob``, 0.3).

    Reference: Hidasi et al., "Session-based Recommendations with Recurrent
    Neural Networks", ICLR 2016; RecBole ``sequential_recommender/gru4rec.py``.
    """

    CONFIG_KEYS = ("vocabulary_size", "embedding_dim", "hidden_size", "num_layers", "embedding_dropout")

    def __init__(self, vocabulary_size, embedding_dim=64, hidden_size=128, num_layers=1, embedding_dropout=0.3, **kwargs):
        # === Layers ===
        embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, embeddings_initializer=xavier_normal(), name="item_embedding")
        dropout = keras.layers.Dropout(embedding_dropout, name="embedding_dropout")
        grus = gru_layers(hidden_size, num_layers, first_initializer=xavier_uniform)
        projection = keras.layers.Dense(
            embedding_dim, kernel_initializer=torch_linear_kernel(), bias_initializer=torch_uniform(hidden_size), name="projection"
        )

        # === Functional model ===
        item_ids = keras.Input(shape=(None,), dtype="int32", name="item_ids")
        x, mask = encode(item_ids, embedding, dropout, grus)
        x = projection(x) * mask
        kwargs.setdefault("name", "gru4rec_backbone")
        super().__init__(inputs=item_ids, outputs=x, **kwargs)

        # === Config ===
        self.keep_config(embedding, vocabulary_size=int(vocabulary_size), embedding_dim=int(embedding_dim), hidden_size=int(hidden_size),
                         num_layers=int(num_layers), embedding_dropout=float(embedding_dropout))
