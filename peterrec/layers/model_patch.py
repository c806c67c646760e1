"""PeterRec's model patch: a residual bottleneck adapter (``ops.get_mp`` of the original)."""

from __future__ import annotations

import keras

from peterrec.layers.initializers import conv_initializer


@keras.saving.register_keras_serializable(package="peterrec")
class ModelPatch(keras.layers.Layer):
    """Position-wise bottleneck with its own identity: ``x + W_up GELU(W_down x + b_down) + b_up``.

    The PeterRec "model patch" (MP). ``W_down`` maps the C channels to a
    bottleneck of width h and ``W_up`` maps back to C; the GELU is the tanh
    approximation and the identity term is *inside* the patch, as in the
    original (the author calls it a "ResNet design", PeterRec issue #11). Both
    projections act on each position independently (the original's 1x1
    convolutions).

    Args:
        channels: width C of the input and output.
        bottleneck: hidden width h (C // 4 in the original since 2020-09; C // 8 before).
        zero_init_up: initialise ``W_up`` to zeros, so that ``MP(x) == x`` exactly at
            initialisation. False (the default) is the original's truncated-normal
            (sd 0.02) initialisation, which makes ``MP(x)`` only approximately ``x``.

    Call arguments:
        x: float tensor ``[..., channels]``.

    Sublayers are the Dense layers ``down`` (kernel ``[C, h]``) and ``up``
    (kernel ``[h, C]``); weight paths look like ``block_3/patch1/down/kernel``.

    Example:
        >>> patch = ModelPatch(channels=8, bottleneck=2, zero_init_up=True)
        >>> x = np.ones((1, 4, 8), "float32")
        >>> bool(np.all(np.asarray(patch(x)) == x))
        True

    Differences from the original:
        * The original's ``mp_conv1_down_0`` / ``mp_conv1_up_0`` 1x1 convolutions
          store kernels as ``[1, 1, C_in, C_out]``; here they are Dense kernels
          ``[C_in, C_out]`` (drop the two leading ones to import).
        * ``cardinality`` (ResNeXt-style sum of parallel bottlenecks) is not
          implemented; every original script uses 1.
        * ``zero_init_up`` is ours (the original has no such option).
        * The original seeds every initialiser with op seed 1; here the seed
          comes from ``keras.utils.set_random_seed``.

    Reference: Yuan et al., "Parameter-Efficient Transfer from Sequential
    Behaviors for User Modeling and Recommendation", SIGIR 2020;
    github.com/fajieyuan/SIGIR2020_peterrec.
    """

    def __init__(self, channels, bottleneck, zero_init_up=False, identity=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.bottleneck = int(bottleneck)
        self.zero_init_up = bool(zero_init_up)
        self.identity = bool(identity)  # False: only the bottleneck (parallel placement without the original's identity)
        if self.channels <= 0 or self.bottleneck <= 0:
            raise ValueError(f"ModelPatch needs positive channels and bottleneck, got {channels} and {bottleneck}")
        # === Layers ===
        self.down = keras.layers.Dense(
            self.bottleneck, kernel_initializer=conv_initializer(), bias_initializer="zeros", name="down"
        )
        self.up = keras.layers.Dense(
            self.channels,
            kernel_initializer="zeros" if self.zero_init_up else conv_initializer(),
            bias_initializer="zeros",
            name="up",
        )

    def build(self, input_shape):
        if input_shape[-1] is not None and int(input_shape[-1]) != self.channels:
            raise ValueError(f"ModelPatch {self.name!r} expects {self.channels} channels, got input shape {input_shape}")
        self.down.build(input_shape)
        self.up.build(tuple(input_shape[:-1]) + (self.bottleneck,))
        super().build(input_shape)

    def call(self, x):
        delta = self.up(keras.activations.gelu(self.down(x), approximate=True))
        return x + delta if self.identity else delta

    def compute_output_shape(self, input_shape):
        return input_shape

    # === Config ===
    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, bottleneck=self.bottleneck, zero_init_up=self.zero_init_up, identity=self.identity)
        return config

