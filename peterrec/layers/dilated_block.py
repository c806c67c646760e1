"""The NextItNet residual block ("block b" of the NextItNet paper)."""

from __future__ import annotations

import keras
from keras import ops

from peterrec.layers.initializers import conv_initializer  # noqa: F401  (re-exported)
from peterrec.layers.model_patch import ModelPatch


@keras.saving.register_keras_serializable(package="peterrec")
class DilatedResidualBlock(keras.layers.Layer):
    """Two dilated convolutions with LayerNorm and ReLU, plus the identity.

    ``out = x + ReLU(LN2(conv2(ReLU(LN1(conv1(x))))))`` where ``conv1`` has
    dilation ``d`` and ``conv2`` dilation ``2d`` (so ``[1, 4]`` blocks give the
    dilation sequence 1, 2, 4, 8). The residual add comes after the second
    ReLU and nothing follows it, exactly as in the original ``ops.py``.

    PeterRec model patches (``patch_mode``, section 4.2 of docs/peterrec.md):
    two :class:`~peterrec.layers.model_patch.ModelPatch` layers per block,
    ``MP(x) = x + W_up GELU(W_down x + b_down) + b_up``.

    * ``"serial"`` (``peter_2mp_serial``): each patch follows its conv,
      ``h = ReLU(LN1(MP1(conv1(x))))``, ``out = x + ReLU(LN2(MP2(conv2(h))))``.
      Since MP is close to the identity at initialisation (exactly the identity
      with ``patch_zero_init=True``), the patched block starts (almost) equal to
      the pretrained one.
    * ``"parallel"`` (``peter_2mp_parallel``): each patch reads its conv's
      input and is added to the conv output,
      ``h = ReLU(LN1(conv1(x) + MP1(x)))``, ``out = x + ReLU(LN2(conv2(h) + MP2(h)))``.
      Because MP contains the identity, each branch computes
      ``conv(.) + input + f(input)``: **at initialisation the parallel block is
      not the pretrained block**, even with ``patch_zero_init=True``. This is
      the original's design (the author confirmed the identity is intended,
      PeterRec issue #11) and is kept as is.
    * ``None``: no patch; the block, its weights and their paths are the plain
      NextItNet block.

    Args:
        channels: width C of the input, convolutions and output.
        dilation: dilation ``d`` of the first conv; the second uses ``2d``.
        kernel_size: conv kernel width k (3 in the original).
        causal: left-pad by ``(k-1)d`` (NextItNet) or pad both sides (GRec).
        dropout: dropout rate on the residual branch (0 = the original).
        epsilon: LayerNorm epsilon (1e-8 in the original).
        patch_mode: ``None``, ``"serial"`` or ``"parallel"``.
        patch_dim: patch bottleneck width h; defaults to ``channels // 4``
            (the original's ``C / (4 * cardinality)`` with cardinality 1).
        parallel_identity: keep the identity inside parallel patches
            (``conv(x) + x + f(x)``, the original). ``False`` computes
            ``conv(x) + f(x)``, which with ``patch_zero_init`` is exactly the
            pretrained block at initialisation (ours; see docs/fidelity.md).
        patch_zero_init: initialise each patch's up-projection to zeros (ours;
            the original uses truncated normal sd 0.02).

    Call arguments:
        x: float tensor ``[batch, length, channels]``.
        padding_mask: optional float ``[batch, length, 1]``, 0 at padding;
            the hidden state between the convs is zeroed there.
        training: enables dropout.

    Sublayers are named ``conv1``, ``ln1``, ``conv2``, ``ln2`` and, with
    patches, ``patch1`` and ``patch2`` (weights ``block_i/patch1/down/kernel``
    and so on): these names are the weight-loading contract (TF1 import,
    finetuning).

    Differences from the original (patches):
        * ``patch_zero_init`` is ours.
        * The original's ``cardinality`` > 1 (summed parallel bottlenecks) and
          the unused single-patch ``peter_mp_serial`` are not implemented.
        * In the parallel mode the padding mask (ours, see ``padding_mask``)
          is applied to ``h`` before both ``conv2`` and ``patch2`` read it.
    """

    PATCH_MODES = (None, "serial", "parallel")

    def __init__(
        self,
        channels,
        dilation,
        kernel_size=3,
        causal=True,
        dropout=0.0,
        epsilon=1e-8,
        patch_mode=None,
        patch_dim=None,
        patch_zero_init=False,
        parallel_identity=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if patch_mode not in self.PATCH_MODES:
            raise ValueError(f"patch_mode must be one of {list(self.PATCH_MODES)}, got {patch_mode!r}")
        self.channels = int(channels)
        self.dilation = int(dilation)
        self.kernel_size = int(kernel_size)
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.epsilon = float(epsilon)
        self.patch_mode = patch_mode
        if patch_mode is None:
            self.patch_dim = None if patch_dim is None else int(patch_dim)
        else:
            self.patch_dim = int(patch_dim) if patch_dim is not None else self.channels // 4
            if self.patch_dim <= 0:
                raise ValueError(f"patch_dim must be positive, got {self.patch_dim} (channels {self.channels})")
        self.patch_zero_init = bool(patch_zero_init)
        self.parallel_identity = bool(parallel_identity)
        padding = "causal" if causal else "same"
        self.conv1 = self._conv(dilation, padding, "conv1")
        self.ln1 = keras.layers.LayerNormalization(epsilon=epsilon, name="ln1")
        self.conv2 = self._conv(2 * dilation, padding, "conv2")
        self.ln2 = keras.layers.LayerNormalization(epsilon=epsilon, name="ln2")
        self.drop = keras.layers.Dropout(dropout, name="dropout") if dropout > 0 else None
        if patch_mode is None:
            self.patch1 = self.patch2 = None
        else:
            identity = patch_mode == "serial" or self.parallel_identity
            self.patch1 = ModelPatch(self.channels, self.patch_dim, self.patch_zero_init, identity, name="patch1")
            self.patch2 = ModelPatch(self.channels, self.patch_dim, self.patch_zero_init, identity, name="patch2")

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
        if self.patch_mode is not None:
            self.patch1.build(input_shape)
            self.patch2.build(input_shape)
        super().build(input_shape)

    def call(self, x, padding_mask=None, training=None):
        if self.patch_mode == "parallel":
            h = self.conv1(x) + self.patch1(x)
        elif self.patch_mode == "serial":
            h = self.patch1(self.conv1(x))
        else:
            h = self.conv1(x)
        h = ops.relu(self.ln1(h))
        if padding_mask is not None:
            h = h * padding_mask  # a non-causal conv2 must not read the pad positions
        if self.patch_mode == "parallel":
            h = self.conv2(h) + self.patch2(h)
        elif self.patch_mode == "serial":
            h = self.patch2(self.conv2(h))
        else:
            h = self.conv2(h)
        h = ops.relu(self.ln2(h))
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
            patch_mode=self.patch_mode,
            patch_dim=self.patch_dim,
            patch_zero_init=self.patch_zero_init,
            parallel_identity=self.parallel_identity,
        )
        return config
