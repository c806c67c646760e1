"""Run a next-item model from given input embeddings (for gradients w.r.t. the inputs).

Every causal backbone peterrec builds (NextItNet and the zoo models of
:mod:`peterrec.models`) is a functional Keras model whose first layer is the
``keras.layers.Embedding`` named ``item_embedding``; the item ids also feed
the padding masks after it. :func:`embeddings_input` swaps that one layer's
output for a given tensor while the backbone runs on the same ids, so:

* masks, positions and padding behave exactly as on the ids;
* a ``tf.GradientTape`` that watches only the given embeddings differentiates
  the model's scores w.r.t. its *input* embeddings and never touches (or
  records reads of) the model's variables;
* nothing in the backbone files changes: the override is an instance
  attribute set for the duration of the call (while tracing, inside a
  ``tf.function``) and removed afterwards, also on errors.

The override is not thread-safe: do not call the same backbone from another
thread while it is active.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from peterrec.errors import ConfigError

EMBEDDING_LAYER = "item_embedding"


def item_embedding_layer(backbone):
    """The backbone's input item table layer (``item_embedding``); ConfigError when it has none."""
    try:
        return backbone.get_layer(EMBEDDING_LAYER)
    except ValueError:
        raise ConfigError(
            f"{type(backbone).__name__} has no {EMBEDDING_LAYER!r} layer: it cannot be run from input embeddings"
        ) from None


def item_table(task):
    """The ``[V, D]`` input item table of a next-item task's backbone."""
    return item_embedding_layer(task.backbone).embeddings


@contextlib.contextmanager
def embeddings_input(backbone, embeddings):
    """While active, ``backbone(item_ids)`` uses ``embeddings`` ``[B, L, D]`` as its item embeddings.

    ``embeddings`` must have the shape the lookup of ``item_ids`` would give.
    """
    layer = item_embedding_layer(backbone)
    if "call" in vars(layer):
        raise RuntimeError(f"{backbone.name}: an embeddings override is already active")

    def call(inputs, *args, **kwargs):
        return tf.cast(embeddings, layer.compute_dtype)

    layer.call = call
    try:
        yield
    finally:
        del layer.call


def replace_at(item_ids, positions, table, vectors):
    """Item embeddings of ``item_ids`` ``[B, L]`` with row ``b``'s position ``positions[b]`` set to ``vectors[b]``."""
    looked_up = tf.gather(table, item_ids)
    at = tf.one_hot(positions, tf.shape(item_ids)[1], on_value=True, off_value=False, dtype=tf.bool)[:, :, None]
    return tf.where(at, tf.cast(vectors, looked_up.dtype)[:, None, :], looked_up)


def hidden_states(backbone, item_ids, embeddings, training=False):
    """``backbone``'s hidden states ``[B, L, C]`` for ``item_ids`` with ``embeddings`` ``[B, L, D]`` as its input embeddings."""
    with embeddings_input(backbone, embeddings):
        return backbone(item_ids, training=training)


def last_logits(task, item_ids, lengths, embeddings=None, training=False):
    """The task's logits ``[B, V]`` at the last real position, optionally from given input embeddings."""
    if embeddings is None:
        return task.score_last(item_ids, lengths, training=training)
    with embeddings_input(task.backbone, embeddings):
        return task.score_last(item_ids, lengths, training=training)
