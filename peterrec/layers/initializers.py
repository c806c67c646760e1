"""Initialisers shared by the NextItNet layers, patches and heads."""

import keras


def conv_initializer():
    """Truncated normal, sd 0.02: the original's initialiser for convs and embeddings."""
    return keras.initializers.TruncatedNormal(stddev=0.02)
