"""Import a TF1 checkpoint of the original NextItNet / GRec-encoder code into peterrec.

The original code (``fajieyuan/SIGIR2020_peterrec``, TF 1.7) saves ``tf.train.Saver``
checkpoints; TF2 reads them with ``tf.train.load_checkpoint``. This module

1. rebuilds the original item vocabulary from the data CSV the model was
   trained on (:func:`read_tf1_vocabulary`: ``<UNK>`` = 0, then tokens in
   order of first appearance, the padding token ``"0"`` an ordinary entry);
2. maps those ids onto peterrec's ids explicitly (:class:`IdMapping`);
3. inspects the checkpoint (:func:`inspect_checkpoint`: channel width,
   kernel size, dilations, vocabulary size and head read from the variable
   names and shapes; optimizer slots skipped);
4. builds a :class:`~peterrec.tasks.next_item.NextItemTask` and assigns every
   Keras weight from exactly one checkpoint tensor, refusing a checkpoint with
   tensors it would not use (:func:`import_checkpoint`);
5. writes a normal export directory (:func:`export_tf1_checkpoint`).

See ``docs/tf1_import.md`` for the id mapping and the variable map.

Example (Python; the CLI is ``python -m pipelines.import_tf1``)::

    result = import_checkpoint("Models/model_nextitnet_transfer_pretrain.ckpt",
                               "Session/history_sequences_20181014_fajie_transfer_pretrain_small.csv",
                               "nextitnet")
    ids = result.mapping.encode_tf1_ids(tf1_ids)         # original ids -> peterrec ids
    logits = result.task.logits(result.task(ids))        # scores over peterrec ids
    result.mapping.logits_to_tf1(logits)                  # ... in the original's column order
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from peterrec import features
from peterrec.errors import ConfigError, DataError, PeterRecError, VocabularyError

TF1_UNK = "<UNK>"
TF1_UNK_ID = 0
TF1_PAD_TOKEN = "0"
FINETUNE_SEPARATOR = ",,"
BACKBONES = ("nextitnet", "grec")
HEAD_LOGITS = "logits"  # full softmax: 1x1 conv on ReLU(h)
HEAD_SOFTMAX = "softmax_w"  # sampled softmax: h W^T + b
EMBEDDING = "allitem_embeddings"
BLOCK_RE = re.compile(r"^nextitnet_residual_block(?P<type>[a-z]*)_layer_(?P<index>\d+)_(?P<dilation>\d+)/(?P<rest>.+)$")
# TF1 ``VocabularyProcessor``'s tokenizer (tensorflow/contrib/learn/.../preprocessing/text.py).
TF1_TOKENIZER_RE = re.compile(r"[A-Z]{2,}(?![a-z])|[A-Z][a-z]+(?=[A-Z])|[\'\w\-]+", re.UNICODE)
_SLOT_RE = re.compile(r"(^|/)(Adam|Momentum|RMSProp|Adagrad|AdagradDA|Adadelta|Ftrl|ProximalAdagrad)\d*(_\d+)?$")
_STATE_RE = re.compile(r"^(beta1_power|beta2_power)(_\d+)?$|^global_step$")


class CheckpointError(PeterRecError, ValueError):
    """A TF1 checkpoint is missing, of another model, or does not fit the import."""


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TF1Vocabulary:
    """The original code's item vocabulary, rebuilt from its data file.

    Attributes:
        tokens: token of each TF1 id; ``tokens[0] == "<UNK>"``.
        counts: occurrences of each token in the file (0 for ``<UNK>``).
        path: the CSV it was read from.
        sequence_length: the largest number of source fields on a line (the
            original's ``max_document_length``).
        fixed_length: every line has ``sequence_length`` non-empty fields, so
            the original never post-padded with id 0.
        finetune: the file has ``source,,targets`` lines (only sources count).
    """

    tokens: tuple
    counts: tuple
    path: str
    sequence_length: int
    fixed_length: bool
    finetune: bool
    sequences: tuple = field(repr=False, default=())

    @property
    def size(self):
        return len(self.tokens)

    @property
    def pad_id(self):
        """TF1 id of the padding token ``"0"``, or ``None`` if the file has none."""
        try:
            return self.tokens.index(TF1_PAD_TOKEN)
        except ValueError:
            return None

    def encode(self, sequence):
        """Raw tokens -> TF1 ids (unknown tokens -> 0, as ``VocabularyProcessor`` does)."""
        index = {token: i for i, token in enumerate(self.tokens)}
        return [index.get(token, TF1_UNK_ID) for token in sequence]


def read_tf1_vocabulary(path):
    """Rebuild the original vocabulary from a PeterRec/NextItNet CSV.

    Pretraining lines are ``item,item,...`` (left-padded with ``0``); finetuning
    lines are ``<source items>,,<targets>`` and only the source part counts (the
    original's finetune loader fits its vocabulary on the sources). Tokens get
    ids in order of first appearance (row-major, left to right), after
    ``<UNK>`` = 0; ``"0"`` is an ordinary token.

    Raises:
        DataError: the file is missing or empty, mixes pretraining and
            finetuning lines, or holds a token the original tokenizer would
            split or alter (then rows cannot be mapped back to raw ids).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the vocabulary CSV: {err}") from None
    lines = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no sequences (the file is empty)")
    finetune_lines = sum(FINETUNE_SEPARATOR in line for _, line in lines)
    if finetune_lines not in (0, len(lines)):
        raise DataError(
            f"{path}: {finetune_lines} of {len(lines)} lines contain ',,' (finetuning format) and the others do not; "
            "the original loaders need one format per file"
        )
    finetune = finetune_lines > 0
    index = {TF1_UNK: 0}
    counts = [0]
    sequences = []
    lengths = []
    for number, line in lines:
        source = line.split(FINETUNE_SEPARATOR)[0] if finetune else line
        fields = [f.strip() for f in source.split(",")]
        sequence = []
        for token in fields:
            if not token:
                continue
            if TF1_TOKENIZER_RE.findall(token) != [token]:
                raise DataError(
                    f"{path}:{number}: item id {token!r} is split by the original tokenizer into "
                    f"{TF1_TOKENIZER_RE.findall(token)}, so checkpoint rows cannot be mapped to raw ids"
                )
            if token not in index:
                index[token] = len(index)
                counts.append(0)
            counts[index[token]] += 1
            sequence.append(token)
        sequences.append(tuple(sequence))
        lengths.append((len(fields), len(sequence)))
    width = max(n_fields for n_fields, _ in lengths)
    return TF1Vocabulary(
        tokens=tuple(index),
        counts=tuple(counts),
        path=str(path),
        sequence_length=width,
        fixed_length=all(n_tokens == width for _, n_tokens in lengths),
        finetune=finetune,
        sequences=tuple(sequences),
    )


@dataclass(frozen=True)
class IdMapping:
    """TF1 ids <-> peterrec ids.

    * peterrec's :class:`~peterrec.data.vocab.Vocabulary` holds the real item
      tokens in TF1 order without ``"0"``: TF1 id ``j`` (``j >= 1``, ``j !=
      pad``) is peterrec id ``NUM_RESERVED + rank of j among them``.
    * ``PAD_ID`` <- the TF1 row of ``"0"`` (id 73 in the demo; row 0 if the
      file has no ``"0"``).
    * ``OOV_ID``, ``MASK_ID`` and ``SEP_ID`` <- TF1 row 0 (``<UNK>``, which the
      original uses as unknown, [MASK] and [CLS]/separator).

    Attributes:
        tf1: the TF1 vocabulary.
        vocab: peterrec's vocabulary (counts from the CSV).
        our_to_tf1: int array ``[vocab.size]``: the TF1 row of each peterrec id
            (rows of the embedding and of the output head are gathered with it).
        tf1_to_our: int array ``[tf1.size]``: the peterrec id of each TF1 id
            (``<UNK>`` -> ``OOV_ID``; use ``MASK_ID`` / ``SEP_ID`` for its other
            roles, they share its rows).
    """

    tf1: TF1Vocabulary
    vocab: object
    our_to_tf1: np.ndarray
    tf1_to_our: np.ndarray

    @property
    def pad_tf1_id(self):
        return int(self.our_to_tf1[features.PAD_ID])

    def encode_tf1_ids(self, tf1_ids):
        """TF1 ids (any shape) -> peterrec ids."""
        return self.tf1_to_our[np.asarray(tf1_ids, dtype=np.int64)]

    def logits_to_tf1(self, logits):
        """Scores over peterrec ids ``[..., vocab.size]`` -> the TF1 column order ``[..., tf1.size]``."""
        return np.take(np.asarray(logits), self.tf1_to_our, axis=-1)

    def to_json(self):
        return {
            "tf1_vocabulary_size": self.tf1.size,
            "tf1_unk_id": TF1_UNK_ID,
            "tf1_pad_token": TF1_PAD_TOKEN,
            "tf1_pad_id": self.tf1.pad_id,
            "reserved_rows": {
                "PAD_ID": self.pad_tf1_id,
                "OOV_ID": TF1_UNK_ID,
                "MASK_ID": TF1_UNK_ID,
                "SEP_ID": TF1_UNK_ID,
            },
            "items": "TF1 id j >= 1 other than tf1_pad_id -> NUM_RESERVED + its rank among those ids",
            "our_to_tf1": [int(i) for i in self.our_to_tf1],
        }


def build_id_mapping(tf1_vocab):
    """The explicit TF1 -> peterrec id mapping of :class:`IdMapping`."""
    from peterrec.data.vocab import Vocabulary

    pad = tf1_vocab.pad_id
    items = [j for j in range(1, tf1_vocab.size) if j != pad]
    vocab = Vocabulary([tf1_vocab.tokens[j] for j in items], [tf1_vocab.counts[j] for j in items])
    our_to_tf1 = np.zeros(vocab.size, dtype=np.int64)
    our_to_tf1[features.PAD_ID] = pad if pad is not None else TF1_UNK_ID
    for reserved in (features.OOV_ID, features.MASK_ID, features.SEP_ID):
        our_to_tf1[reserved] = TF1_UNK_ID
    our_to_tf1[features.NUM_RESERVED :] = items
    tf1_to_our = np.zeros(tf1_vocab.size, dtype=np.int64)
    tf1_to_our[TF1_UNK_ID] = features.OOV_ID
    if pad is not None:
        tf1_to_our[pad] = features.PAD_ID
    tf1_to_our[items] = np.arange(features.NUM_RESERVED, vocab.size)
    return IdMapping(tf1_vocab, vocab, our_to_tf1, tf1_to_our)


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


def _reader(prefix):
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
    shapes = {name: tuple(shape) for name, shape in _reader(prefix).get_variable_to_shape_map().items()}
    model = tuple(sorted(n for n in shapes if not is_optimizer_variable(n)))
    optimizer = tuple(sorted(n for n in shapes if is_optimizer_variable(n)))

    def fail(message):
        raise CheckpointError(f"{prefix}: {message}")

    if EMBEDDING not in shapes:
        fail(f"no '{EMBEDDING}' variable: not a NextItNet/GRec checkpoint of the original code (it holds {_preview(model)})")
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
        fail(f"{len(missing)} expected variable(s) missing: {_preview(missing)}")
    wrong = [f"{n} {list(shapes[n])} (expected {list(s)})" for n, s in expected.items() if shapes[n] != s]
    if wrong:
        fail(f"{len(wrong)} variable(s) of unexpected shape: {_preview(wrong)}")
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


def _preview(names, limit=12):
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
            reader = _reader(ckpt.prefix)
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


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    """A checkpoint imported into Keras.

    Attributes:
        task: the :class:`NextItemTask` holding the imported weights.
        mapping: the :class:`IdMapping` (``mapping.vocab`` is peterrec's vocabulary).
        checkpoint: the :class:`TF1Checkpoint`.
        backbone: ``"nextitnet"`` or ``"grec"``.
        variable_map: ``{tf1 name: keras weight path}`` for every tensor used.
        ignored: ``{tf1 name: reason}`` for non-optimizer tensors deliberately
            not imported (GRec's untrained ``softmax_w``/``b`` next to a
            ``logits`` head).
    """

    task: object
    mapping: IdMapping
    checkpoint: TF1Checkpoint
    backbone: str
    variable_map: dict
    ignored: dict

    def report(self):
        """The ``tf1_import`` section of the export's config.json."""
        ckpt = self.checkpoint
        return {
            "checkpoint": os.path.abspath(ckpt.prefix),
            "vocab_from": os.path.abspath(self.mapping.tf1.path),
            "backbone": self.backbone,
            "causal": self.backbone == "nextitnet",
            "head": ckpt.head,
            "loss": ckpt.loss,
            "channels": ckpt.channels,
            "kernel_size": ckpt.kernel_size,
            "dilations": list(ckpt.dilations),
            "tf1_sequence_length": self.mapping.tf1.sequence_length,
            "model_variables": len(ckpt.model_variables),
            "optimizer_variables_skipped": len(ckpt.optimizer_variables),
            "ignored_variables": dict(self.ignored),
            "variable_map": dict(self.variable_map),
            "transforms": {
                "dilated_conv*/weight": "[1, k, Cin, Cout] -> Conv1D kernel [k, Cin, Cout] (leading 1 dropped, taps unchanged)",
                "logits/weight": "[1, 1, C, V] -> Dense kernel [C, V], columns gathered with our_to_tf1",
                "allitem_embeddings, softmax_w, softmax_b, logits/bias": "rows gathered with our_to_tf1",
            },
            "id_mapping": self.mapping.to_json(),
            "mask_padding": False,
        }


def check_backbone(backbone):
    if backbone not in BACKBONES:
        raise ConfigError(f"--backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")


def import_checkpoint(checkpoint, vocab_from, backbone, *, verify_backbone=True):
    """Build a :class:`NextItemTask` holding the weights of a TF1 checkpoint.

    Args:
        checkpoint: the checkpoint prefix (``.../model_nextitnet_cloze``) or a
            directory with a ``checkpoint`` file.
        vocab_from: the data CSV the model was trained on (pretraining file,
            or a finetuning file with the same source sequences).
        backbone: ``"nextitnet"`` (causal convs) or ``"grec"`` (the GRec
            encoder: non-causal, "same" padding).
        verify_backbone: refuse a checkpoint that :func:`backbone_evidence`
            says was written by the other model.

    The backbone is ``NextItNetBackbone(..., causal=(backbone == "nextitnet"),
    mask_padding=False)`` (the original treats the pad token as an item); the
    task uses ``loss="full_softmax"`` for a ``logits`` head and
    ``"sampled_softmax"`` for ``softmax_w``/``softmax_b``.

    Raises:
        CheckpointError: unreadable checkpoint, wrong backbone, a tensor left
            unused or a Keras weight left unassigned (all listed).
        VocabularyError: the CSV's vocabulary size differs from the checkpoint's.
        DataError: the CSV cannot be parsed.
    """
    check_backbone(backbone)
    ckpt = inspect_checkpoint(checkpoint)
    tf1_vocab = read_tf1_vocabulary(vocab_from)
    if tf1_vocab.size != ckpt.vocabulary_size:
        raise VocabularyError(
            f"{vocab_from}: gives a vocabulary of {tf1_vocab.size} ids (<UNK> + {tf1_vocab.size - 1} tokens in order of "
            f"first appearance), but {ckpt.prefix} was trained with {ckpt.vocabulary_size} "
            f"('{EMBEDDING}' is {list(ckpt.shapes[EMBEDDING])}); pass the CSV the checkpoint was trained on"
        )
    reader = _reader(ckpt.prefix)
    if verify_backbone:
        reasons = backbone_evidence(ckpt, tf1_vocab, reader)[backbone]
        if reasons:
            other = "grec" if backbone == "nextitnet" else "nextitnet"
            raise CheckpointError(
                f"{ckpt.prefix} is not a {backbone} checkpoint: {'; '.join(reasons)}. "
                f"Use --backbone {other} (or --noverify_backbone to import it anyway)"
            )
    mapping = build_id_mapping(tf1_vocab)
    task = _build_task(ckpt, backbone, mapping.vocab.size)
    plan, ignored = _plan(task, ckpt)
    _check_coverage(task, ckpt, plan, ignored)
    gather = mapping.our_to_tf1
    values = []
    for name, weight, transform in plan:
        array = np.asarray(reader.get_tensor(name), dtype=np.float32)
        value = transform(array, gather)
        if tuple(value.shape) != tuple(weight.shape):
            raise CheckpointError(f"{ckpt.prefix}: '{name}' gives shape {list(value.shape)}, {weight.path} needs {list(weight.shape)}")
        values.append((weight, value))
    for weight, value in values:
        weight.assign(value.astype(weight.dtype))
    return ImportResult(
        task=task,
        mapping=mapping,
        checkpoint=ckpt,
        backbone=backbone,
        variable_map={name: weight.path for name, weight, _ in plan},
        ignored=ignored,
    )


def _build_task(ckpt, backbone, vocabulary_size):
    from peterrec.backbones.nextitnet import NextItNetBackbone
    from peterrec.tasks.next_item import NextItemTask

    model = NextItNetBackbone(
        vocabulary_size,
        ckpt.channels,
        list(ckpt.dilations),
        ckpt.kernel_size,
        causal=(backbone == "nextitnet"),
        dropout=0.0,
        mask_padding=False,
    )
    if backbone == "grec":
        from peterrec.tasks.masked_item import MaskedItemTask

        return MaskedItemTask(model, loss=ckpt.loss)  # end-mask scoring, like GRec pretraining exports
    return NextItemTask(model, loss=ckpt.loss)


def _squeeze_kernel(array, gather):
    return array[0]  # [1, k, Cin, Cout] -> [k, Cin, Cout]


def _same(array, gather):
    return array


def _rows(array, gather):
    return array[gather]


def _logits_kernel(array, gather):
    return array[0, 0][:, gather]  # [1, 1, C, V] -> [C, V], class columns permuted


def _plan(task, ckpt):
    """``[(tf1 name, keras variable, transform)]`` and the ignored tensors."""
    backbone = task.backbone
    plan = [(EMBEDDING, backbone.embedding.embeddings, _rows)]
    for i, block in enumerate(backbone.blocks):
        scope = ckpt.block_scope(i)
        for n, conv, norm in ((1, block.conv1, block.ln1), (2, block.conv2, block.ln2)):
            plan += [
                (f"{scope}/dilated_conv{n}/weight", conv.kernel, _squeeze_kernel),
                (f"{scope}/dilated_conv{n}/bias", conv.bias, _same),
                (f"{scope}/layer_norm{n}/gamma", norm.gamma, _same),
                (f"{scope}/layer_norm{n}/beta", norm.beta, _same),
            ]
    ignored = {}
    if ckpt.head == HEAD_LOGITS:
        plan += [("logits/weight", task.head.kernel, _logits_kernel), ("logits/bias", task.head.bias, _rows)]
        for name in ("softmax_w", "softmax_b"):
            if name in ckpt.shapes:
                ignored[name] = "created but not trained by the GRec encoder when it uses the full-softmax 'logits' head"
    else:
        plan += [("softmax_w", task.softmax_w, _rows), ("softmax_b", task.softmax_b, _rows)]
    return plan, ignored


def _check_coverage(task, ckpt, plan, ignored):
    """Every non-optimizer tensor used (or ignored by rule), every Keras weight assigned once."""
    used = [name for name, _, _ in plan]
    unused = sorted(set(ckpt.model_variables) - set(used) - set(ignored))
    absent = sorted(set(used) - set(ckpt.shapes))
    counts = {}
    for _, weight, _ in plan:
        counts[id(weight)] = counts.get(id(weight), 0) + 1
    unassigned = [w.path for w in task.weights if counts.get(id(w), 0) == 0]
    twice = [w.path for w in task.weights if counts.get(id(w), 0) > 1]
    problems = []
    if unused:
        problems.append(f"{len(unused)} checkpoint tensor(s) would not be used: {_preview(unused)}")
    if absent:
        problems.append(f"{len(absent)} tensor(s) needed but missing: {_preview(absent)}")
    if unassigned:
        problems.append(f"{len(unassigned)} Keras weight(s) would stay unassigned: {_preview(unassigned)}")
    if twice:
        problems.append(f"{len(twice)} Keras weight(s) assigned more than once: {_preview(twice)}")
    if problems:
        raise CheckpointError(f"{ckpt.prefix}: cannot import it exactly: {'; '.join(problems)}")


def export_tf1_checkpoint(checkpoint, vocab_from, backbone, model_dir, *, max_len=None, top_k=50, verify_backbone=True):
    """Import a TF1 checkpoint and write ``<model_dir>/export/<version>/``.

    Args:
        max_len: context length of the serving signature; ``None`` = the
            CSV's sequence length (9 in the demo).

    Returns:
        ``(export_dir, ImportResult)``. The export's config.json has
        ``kind: "tf1_import"`` and a ``tf1_import`` section
        (:meth:`ImportResult.report`).
    """
    from peterrec.export import export_model

    result = import_checkpoint(checkpoint, vocab_from, backbone, verify_backbone=verify_backbone)
    if max_len is None:
        max_len = result.mapping.tf1.sequence_length
    path = export_model(
        result.task,
        result.mapping.vocab,
        model_dir,
        max_len=int(max_len),
        top_k=top_k,
        extra_config={"tf1_import": result.report()},
        kind="tf1_import",
        layout="left",  # the original reads fixed-length rows left-padded with its pad item
        pad_tokens=("", TF1_PAD_TOKEN) if result.mapping.tf1.pad_id is not None else ("",),
    )
    return path, result
