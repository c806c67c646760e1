"""NextItNet: a stack of dilated causal residual blocks over item embeddings."""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import ops

from peterrec.features import PAD_ID
from peterrec.layers.dilated_block import DilatedResidualBlock
from peterrec.layers.initializers import conv_initializer
from peterrec.layers.position import ConcatPositionEmbedding

DEFAULT_DILATIONS = (1, 4, 1, 4, 1, 4, 1, 4)
FINETUNE_MODES = ("peterrec", "fineall", "finelast", "scratch", "frozen")
PATCH_KEYS = ("patch_mode", "patch_dim", "patch_zero_init", "parallel_identity")


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
        patch_mode: ``None`` (plain NextItNet), ``"serial"`` or ``"parallel"``:
            add two PeterRec model patches to every block (see
            :class:`DilatedResidualBlock`; serial starts at, parallel does not
            start at, the pretrained function).
        patch_dim: patch bottleneck width; ``embedding_dim // 4`` by default.
        patch_zero_init: zero-initialise the patches' up-projections, so a
            serial-patched backbone loaded with :meth:`load_pretrained`
            computes exactly the pretrained function (ours; the original uses
            truncated normal sd 0.02, which is only approximately so).
        parallel_identity: ``False`` drops the identity inside parallel patches
            (``conv(x) + f(x)`` instead of the original ``conv(x) + x + f(x)``).
        max_positions: if > 0, a learned ``[max_positions, C]`` positional
            table is concatenated to the item embeddings (the original GRec's
            ``--has_positionalembedding``), so the blocks are ``2C`` wide
            (``output_dim``). 0 (default) = no positional embedding.

    Finetuning (PeterRec, docs/peterrec.md section 4.3): build the patched
    backbone, copy the pretrained weights with :meth:`load_pretrained` (every
    weight but the patches), then choose the trained weights with
    :meth:`set_finetune_mode` *before* compiling.

    Call arguments:
        item_ids: int tensor ``[batch, length]``; padding is ``PAD_ID``
            (right-padding for causal models).

    Example:
        >>> backbone = NextItNetBackbone(vocabulary_size=100, embedding_dim=8, dilations=[1, 2])
        >>> backbone(np.array([[5, 6, 7, 0]])).shape
        (1, 4, 8)
        >>> patched = NextItNetBackbone(vocabulary_size=100, embedding_dim=8, dilations=[1, 2], patch_mode="serial")
        >>> patched.load_pretrained(backbone)[:2]
        ['block_0/patch1/down/kernel', 'block_0/patch1/down/bias']
        >>> patched.set_finetune_mode("peterrec")

    Differences from the original: ``patch_zero_init`` and the finetune modes
    other than ``"peterrec"`` and ``"fineall"`` are ours; the original selects
    the trained variables by name (``"mp"`` in the name) instead of by layer.

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
        patch_mode=None,
        patch_dim=None,
        patch_zero_init=False,
        parallel_identity=True,
        max_positions=0,
        **kwargs,
    ):
        # === Layers ===
        embedding = keras.layers.Embedding(
            vocabulary_size, embedding_dim, embeddings_initializer=conv_initializer(), name="item_embedding"
        )
        positions = ConcatPositionEmbedding(max_positions, embedding_dim, name="position_embedding") if max_positions else None
        width = embedding_dim * (2 if positions is not None else 1)
        blocks = [
            DilatedResidualBlock(
                width,
                d,
                kernel_size,
                causal=causal,
                dropout=dropout,
                patch_mode=patch_mode,
                patch_dim=patch_dim,
                patch_zero_init=patch_zero_init,
                parallel_identity=parallel_identity,
                name=f"block_{i}",
            )
            for i, d in enumerate(dilations)
        ]
        input_dropout = keras.layers.Dropout(dropout, name="embedding_dropout") if dropout > 0 else None

        # === Functional model ===
        item_ids = keras.Input(shape=(None,), dtype="int32", name="item_ids")
        x = embedding(item_ids)
        mask = ops.expand_dims(ops.cast(ops.not_equal(item_ids, PAD_ID), x.dtype), -1) if mask_padding else None
        if positions is not None:
            x = positions(x)
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
        self.patch_mode = patch_mode
        self.patch_dim = blocks[0].patch_dim if blocks else patch_dim
        self.patch_zero_init = bool(patch_zero_init)
        self.parallel_identity = bool(parallel_identity)
        self.max_positions = int(max_positions)
        self.output_dim = width
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
            "patch_mode": self.patch_mode,
            "patch_dim": self.patch_dim,
            "patch_zero_init": self.patch_zero_init,
            "parallel_identity": self.parallel_identity,
            "max_positions": self.max_positions,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # === Finetuning ===
    def load_pretrained(self, source):
        """Copy pretrained weights into this backbone, matching them by weight path.

        Args:
            source: another backbone or Keras layer (typically an unpatched
                one, e.g. rebuilt from a pretraining export), a dict
                ``{path: array}``, or the path of a ``.weights.h5`` file
                written by ``save_weights`` of an unpatched backbone whose
                other settings equal this one's (vocabulary, width, dilations,
                kernel size, causality).

        Every weight of ``source`` must exist here with the same shape, and is
        copied; this backbone's other weights (the patches) keep their
        initial values, as in the original (a ``Saver`` over the variables
        without ``"mp"`` in their names).

        Returns:
            the list of this backbone's weight paths that were not loaded.

        Raises:
            ValueError: a shape differs (the message names the path), or some
                weights of ``source`` have no counterpart here (listed).
                Nothing is assigned when an error is raised.
        """
        if isinstance(source, (str, os.PathLike)):
            source = self._unpatched_twin_from_file(os.fspath(source))
        if isinstance(source, dict):
            values = {str(path): value for path, value in source.items()}
        elif hasattr(source, "weights"):
            values = {}
            for weight in source.weights:
                if weight.path in values:
                    raise ValueError(f"load_pretrained: source has two weights with path {weight.path!r}")
                values[weight.path] = weight
        else:
            raise TypeError(f"load_pretrained: source must be a model, a dict or a file path, got {type(source).__name__}")

        own = {weight.path: weight for weight in self.weights}
        unused = sorted(path for path in values if path not in own)
        if unused:
            raise ValueError(
                f"load_pretrained: {len(unused)} source weight(s) have no counterpart in {self.name!r}: {unused}"
            )
        arrays = {}
        for path, value in values.items():
            array = np.asarray(keras.ops.convert_to_numpy(value))
            if tuple(array.shape) != tuple(own[path].shape):
                raise ValueError(
                    f"load_pretrained: shape mismatch for {path!r}: source {tuple(array.shape)}, "
                    f"{self.name!r} expects {tuple(own[path].shape)}"
                )
            arrays[path] = array
        for path, array in arrays.items():
            own[path].assign(array.astype(own[path].dtype))
        return [weight.path for weight in self.weights if weight.path not in arrays]

    def _unpatched_twin_from_file(self, filepath):
        """An unpatched copy of this backbone's architecture holding ``filepath``'s weights."""
        config = self.get_config()
        config.update(patch_mode=None, patch_dim=None, patch_zero_init=False, parallel_identity=True)
        twin = type(self).from_config(config)
        try:
            twin.load_weights(filepath)
        except Exception as error:  # Keras raises several types; say which file and why
            raise ValueError(
                f"load_pretrained: could not load {filepath!r} into an unpatched {type(self).__name__} "
                f"with this backbone's settings: {error}"
            ) from error
        return twin

    def set_finetune_mode(self, mode):
        """Choose which weights training updates (sets the sublayers' ``trainable`` flags).

        Args:
            mode: one of

                * ``"peterrec"``: only the model patches and every block's
                  ``ln2`` (gamma and beta) are trained; the item embedding,
                  the convolutions and ``ln1`` are frozen (original
                  ``var_list``, docs/peterrec.md section 4.3). Needs
                  ``patch_mode``.
                * ``"fineall"``: everything is trained (the "FineAll" baseline).
                * ``"scratch"``: everything is trained (same flags as
                  ``"fineall"``; the caller simply loads no pretrained weights).
                * ``"finelast"``: only the last residual block is trained.
                * ``"frozen"``: nothing is trained.

        Call it before ``compile`` (Keras reads the flags when it builds the
        train step). The new task-side weights (target table, head) are not
        part of the backbone and are unaffected.

        Raises:
            ValueError: unknown ``mode``, or ``"peterrec"`` on an unpatched backbone.
        """
        if mode not in FINETUNE_MODES:
            raise ValueError(f"Unknown finetune mode {mode!r}; expected one of {list(FINETUNE_MODES)}")
        if mode == "peterrec" and self.patch_mode is None:
            raise ValueError("set_finetune_mode('peterrec') needs a patched backbone (patch_mode 'serial' or 'parallel')")
        _set_trainable(self, True)  # start from everything trainable
        if mode in ("fineall", "scratch"):
            return None
        if mode == "frozen":
            _set_trainable(self, False)
            return None
        if mode == "finelast":
            for layer in self.layers:
                if layer is not self.blocks[-1]:
                    _set_trainable(layer, False)
            return None
        # peterrec
        for layer in self.layers:
            if not any(layer is block for block in self.blocks):
                _set_trainable(layer, False)
        for block in self.blocks:
            for layer in (block.conv1, block.ln1, block.conv2):
                _set_trainable(layer, False)
        return None


def _set_trainable(layer, value):
    """``layer.trainable = value`` on ``layer`` and every layer nested in it.

    Setting the flag on the top layer alone is not enough: on the TensorFlow
    backend ``layer.trainable = value`` returns early when the layer's own flag
    already equals ``value``, leaving differently-flagged sublayers unchanged.
    """
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):
        sublayer.trainable = value
