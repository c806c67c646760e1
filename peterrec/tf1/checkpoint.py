"""Reading a TF1 NextItNet / GRec checkpoint: its variables, the architecture they imply, and which model wrote it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from peterrec.errors import PeterRecError
from peterrec.tf1.vocab import TF1_UNK_ID

HEAD_LOGITS = "logits"  # full softmax: 1x1 conv on ReLU(h)
HEAD_SOFTMAX = "softmax_w"  # sampled softmax: h W^T + b
EMBEDDING = "allitem_embeddings"
BLOCK_RE = re.compile(r"^nextitnet_residual_block(?P<type>[a-z]*)_layer_(?P<index>\d+)_(?P<dilation>\d+)/(?P<rest>.+)$")
_SLOT_RE = re.compile(r"(^|/)(Adam|Momentum|RMSProp|Adagrad|AdagradDA|Adadelta|Ftrl|ProximalAdagrad)\d*(_\d+)?$")
_STATE_RE = re.compile(r"^(beta1_power|beta2_power)(_\d+)?$|^global_step$")


class CheckpointError(PeterRecError, ValueError):
    """A TF1 checkpoint is missing, of another model, or does not fit the import."""


# --------------------------------------------------------------------------------------
# Checkpoint inspection
# --------------------------------------------------------------------------------------
def is_optimizer_variable(name):
    """Adam/Momentum/... slots, ``beta1_power``/``beta2_power`` and ``global_step``."""
    return bool(_SLOT_RE.search(name) or _STATE_RE.match(name))


def resolve_checkpoint(path):
    """A checkpoint prefix, or a directory with a ``checkpoint`` file -> the prefix.

    Raises:
        CheckpointError: nothing readable there.
    """
    import tensorflow as tf

    path = os.fspath(path)
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise CheckpointError(f"{path}: a directory without a 'checkpoint' file; pass the checkpoint prefix (e.g. {path}/model.ckpt)")
        return prefix
    if not os.path.exists(path + ".index"):
        hint = ""
        if path.endswith((".index", ".meta")) or ".data-" in path:
            bare = re.sub(r"(\.index|\.meta|\.data-.*)$", "", path)
            hint = f" (pass the prefix without the suffix, e.g. {bare})"
        raise CheckpointError(f"{path}: no TF checkpoint with this prefix ({path}.index not found){hint}")
    return path


@dataclass(frozen=True)
class TF1Checkpoint:
    """What :func:`inspect_checkpoint` reads from a TF1 checkpoint.

    Attributes:
        prefix: the checkpoint prefix.
        shapes: ``{name: shape}`` of every tensor.
        model_variables: names of the non-optimizer tensors, sorted.
        optimizer_variables: names of optimizer slots and state, sorted.
        vocabulary_size, channels, kernel_size, dilations: the architecture.
        head: ``"logits"`` (full softmax) or ``"softmax_w"`` (sampled softmax).
        block_type: the ``{type}`` of ``nextitnet_residual_block{type}_layer_{i}_{d}`` ("decoder").
    """

    prefix: str
    shapes: dict
    model_variables: tuple
    optimizer_variables: tuple
    vocabulary_size: int
    channels: int
    kernel_size: int
    dilations: tuple
    head: str
    block_type: str

    @property
    def loss(self):
        return "full_softmax" if self.head == HEAD_LOGITS else "sampled_softmax"

    def block_scope(self, index):
        return f"nextitnet_residual_block{self.block_type}_layer_{index}_{self.dilations[index]}"


def open_reader(prefix):
    import tensorflow as tf

    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{prefix}: cannot read the checkpoint: {message}") from None


def inspect_checkpoint(path):
    """Read the variable names and shapes of a TF1 NextItNet/GRec checkpoint.

    The architecture is inferred: ``vocabulary_size`` and ``channels`` from
    ``allitem_embeddings`` ``[V, C]``, ``kernel_size`` from the conv weights
    ``[1, k, C, C]``, the dilations from the block scopes
    ``nextitnet_residual_blockdecoder_layer_{i}_{d}``, the head from
    ``logits/*`` or ``softmax_w``/``softmax_b``. Every shape is checked.

    Raises:
        CheckpointError: unreadable, no NextItNet variables, inconsistent shapes.
    """
    prefix = resolve_checkpoint(path)
    shapes = {name: tuple(shape) for name, shape in open_reader(prefix).get_variable_to_shape_map().items()}
    model = tuple(sorted(n for n in shapes if not is_optimizer_variable(n)))
    optimizer = tuple(sorted(n for n in shapes if is_optimizer_variable(n)))

    def fail(message):
        raise CheckpointError(f"{prefix}: {message}")

    if EMBEDDING not in shapes:
        fail(f"no '{EMBEDDING}' variable: not a NextItNet/GRec checkpoint of the original code (it holds {preview(model)})")
    if "dec_pos/lookup_table_position" in shapes:
        fail("has positional embeddings (--has_positionalembedding, concatenated to the items); peterrec's backbone has none")
    emb = shapes[EMBEDDING]
    if len(emb) != 2:
        fail(f"'{EMBEDDING}' has shape {list(emb)}, expected [vocabulary_size, channels]")
    vocab_size, channels = emb
    blocks = {}
    types = set()
    for name in model:
        match = BLOCK_RE.match(name)
        if match:
            types.add(match["type"])
            blocks.setdefault(int(match["index"]), set()).add(int(match["dilation"]))
    if not blocks:
        fail("no residual blocks 'nextitnet_residual_blockdecoder_layer_{i}_{d}/...'")
    if len(types) != 1:
        fail(f"residual blocks of several types {sorted(types)}")
    if sorted(blocks) != list(range(len(blocks))):
        fail(f"residual block indices {sorted(blocks)} are not 0..{len(blocks) - 1}")
    for index, found in blocks.items():
        if len(found) != 1:
            fail(f"residual block {index} appears with several dilations {sorted(found)}")
    dilations = tuple(next(iter(blocks[i])) for i in range(len(blocks)))
    block_type = types.pop()
    conv0 = f"nextitnet_residual_block{block_type}_layer_0_{dilations[0]}/dilated_conv1/weight"
    if conv0 not in shapes or len(shapes[conv0]) != 4:
        fail(f"'{conv0}' missing or not of shape [1, k, C, C]")
    kernel_size = shapes[conv0][1]
    expected = {}
    for i, d in enumerate(dilations):
        scope = f"nextitnet_residual_block{block_type}_layer_{i}_{d}"
        for conv in ("dilated_conv1", "dilated_conv2"):
            expected[f"{scope}/{conv}/weight"] = (1, kernel_size, channels, channels)
            expected[f"{scope}/{conv}/bias"] = (channels,)
        for norm in ("layer_norm1", "layer_norm2"):
            expected[f"{scope}/{norm}/beta"] = (channels,)
            expected[f"{scope}/{norm}/gamma"] = (channels,)
    has_logits = "logits/weight" in shapes or "logits/bias" in shapes
    has_softmax = "softmax_w" in shapes or "softmax_b" in shapes
    if has_logits:
        head = HEAD_LOGITS
        expected["logits/weight"] = (1, 1, channels, vocab_size)
        expected["logits/bias"] = (vocab_size,)
    elif has_softmax:
        head = HEAD_SOFTMAX
    else:
        fail("no output head: neither 'logits/weight' (full softmax) nor 'softmax_w' (sampled softmax)")
    if has_softmax:  # GRec creates softmax_w/b even with a full-softmax head (then they stay untrained)
        expected["softmax_w"] = (vocab_size, channels)
        expected["softmax_b"] = (vocab_size,)
    missing = [n for n in expected if n not in shapes]
    if missing:
        fail(f"{len(missing)} expected variable(s) missing: {preview(missing)}")
    wrong = [f"{n} {list(shapes[n])} (expected {list(s)})" for n, s in expected.items() if shapes[n] != s]
    if wrong:
        fail(f"{len(wrong)} variable(s) of unexpected shape: {preview(wrong)}")
    return TF1Checkpoint(
        prefix=prefix,
        shapes=shapes,
        model_variables=model,
        optimizer_variables=optimizer,
        vocabulary_size=int(vocab_size),
        channels=int(channels),
        kernel_size=int(kernel_size),
        dilations=dilations,
        head=head,
        block_type=block_type,
    )


def preview(names, limit=12):
    names = list(names)
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------
# Which model wrote the checkpoint
# --------------------------------------------------------------------------------------
def backbone_evidence(ckpt, tf1_vocab=None, reader=None):
    """Facts of the checkpoint that rule a backbone out: ``{backbone: [reasons]}``.

    The two models use the same variable names, so the checks rest on what
    the original code creates and trains:

    * ``generator_peterrec_non.py`` (GRec) always creates ``softmax_w`` and
      ``softmax_b``; ``generator_recsys_cau.py`` (NextItNet) creates either
      ``logits/*`` or ``softmax_w``/``softmax_b``, never both.
    * GRec feeds id 0 as [MASK] at every step, so the Adam slots of embedding
      row 0 are non-zero. NextItNet never sees id 0 when trained on a file
      whose lines all have the same length (no post-padding); then a trained
      row 0 means GRec. (Checked only when the Adam slots are present.)
    """
    against = {"nextitnet": [], "grec": []}
    has_logits = "logits/weight" in ckpt.shapes
    has_softmax = "softmax_w" in ckpt.shapes
    if has_logits and not has_softmax:
        against["grec"].append(
            "it has a full-softmax 'logits' head and no 'softmax_w'/'softmax_b', which the GRec encoder "
            "(generator_peterrec_non.py) always creates; it was written by NextItNet (generator_recsys_cau.py)"
        )
    if has_logits and has_softmax:
        against["nextitnet"].append(
            "it has both 'logits' and 'softmax_w'; NextItNet creates only one of them, the GRec encoder creates "
            "softmax_w always"
        )
    slots = [f"{EMBEDDING}/Adam", f"{EMBEDDING}/Adam_1"]
    if all(slot in ckpt.shapes for slot in slots):
        if reader is None:
            reader = open_reader(ckpt.prefix)
        second = np.asarray(reader.get_tensor(slots[1]))
        row0_trained = bool(np.any(second[TF1_UNK_ID] != 0))
        any_trained = bool(np.any(second != 0))
        if any_trained and not row0_trained:
            against["grec"].append(
                "the embedding of id 0 never received a gradient (its Adam slots are zero), but the GRec encoder "
                "feeds id 0 as [MASK] at every step"
            )
        if row0_trained and tf1_vocab is not None and tf1_vocab.fixed_length:
            against["nextitnet"].append(
                f"the embedding of id 0 ([MASK]/<UNK>) was trained, but NextItNet never reads id 0 from "
                f"{tf1_vocab.path} (every line has {tf1_vocab.sequence_length} items, so nothing is post-padded "
                "with 0); the GRec encoder uses id 0 as [MASK]"
            )
    return against
