"""The original code's item vocabulary, rebuilt from its data CSV, and its explicit mapping onto peterrec's ids."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from peterrec import features
from peterrec.errors import DataError

TF1_UNK = "<UNK>"
TF1_UNK_ID = 0
TF1_PAD_TOKEN = "0"
FINETUNE_SEPARATOR = ",,"
# TF1 ``VocabularyProcessor``'s tokenizer (tensorflow/contrib/learn/.../preprocessing/text.py).
TF1_TOKENIZER_RE = re.compile(r"[A-Z]{2,}(?![a-z])|[A-Z][a-z]+(?=[A-Z])|[\'\w\-]+", re.UNICODE)


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
