"""The NextItNet residual block ("block b" of the NextItNet paper)."""

from __future__ import annotations

import keras
from keras import ops


def conv_initializer():
    """Truncated normal, sd 0.02: the original's initialiser for convs and embeddings."""
    return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="peterrec")
class DilatedResidualBlock(keras.layers.Layer):
    """Two dilated convolutions with LayerNorm and ReLU, plus the identity.

    ``out = x + ReLU(LN2(conv2(ReLU(LN1(conv1(x))))))`` where ``conv1`` has
    dilation ``d`` and ``conv2`` dilation ``2d`` (so ``[1, 4]`` blocks give the
    dilation sequence 1, 2, 4, 8). The residual add comes after the second
    ReLU and nothing follows it, exactly as in the original ``ops.py``.

    Args:
        channels: width C of the input, convolutions and output.
        dilation: dilation ``d`` of the first conv; the second uses ``2d``.
        kernel_size: conv kernel width k (3 in the original).
        causal: left-pad by ``(k-1)d`` (NextItNet) or pad both sides (GRec).
        dropout: dropout rate on the residual branch (0 = the original).
        epsilon: LayerNorm epsilon (1e-8 in the original).

    Call arguments:
        x: float tensor ``[batch, length, channels]``.
        padding_mask: optional float ``[batch, length, 1]``, 0 at padding;
            the hidden state between the convs is zeroed there.
        training: enables dropout.

    Sublayers are named ``conv1``, ``ln1``, ``conv2``, ``ln2``: these names are
    the weight-loading contract (TF1 import, finetuning).
    """

    def __init__(self, channels, dilation, kernel_size=3, causal=True, dropout=0.0, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.dilation = int(dilation)
        self.kernel_size = int(kernel_size)
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.epsilon = float(epsilon)
        padding = "causal" if causal else "same"
        self.conv1 = self._conv(dilation, padding, "conv1")
        self.ln1 = keras.layers.LayerNormalization(epsilon=epsilon, name="ln1")
        self.conv2 = self._conv(2 * dilation, padding, "conv2")
        self.ln2 = keras.layers.LayerNormalization(epsilon=epsilon, name="ln2")
        self.drop = keras.layers.Dropout(dropout, name="dropout") if dropout > 0 else None

    def _conv(self, dilation, padding, name):
        return keras.layers.Conv1D(
            self.channels,
            self.kernel_size,
            padding=padding,
            dilation_rate=dilation,
            kernel_initializer=conv_initializer(),
            bias_initializer="zeros",
            name=name,
        )

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.ln1.build(input_shape)
        self.conv2.build(input_shape)
        self.ln2.build(input_shape)
        super().build(input_shape)

    def call(self, x, padding_mask=None, training=None):
        h = ops.relu(self.ln1(self.conv1(x)))
        if padding_mask is not None:
            h = h * padding_mask  # a non-causal conv2 must not read the pad positions
        h = ops.relu(self.ln2(self.conv2(h)))
        if self.drop is not None:
            h = self.drop(h, training=training)
        return x + h

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            dilation=self.dilation,
            kernel_size=self.kernel_size,
            causal=self.causal,
            dropout=self.dropout,
            epsilon=self.epsilon,
        )
        return config
