"""Item vocabulary: raw token <-> integer id, with the reserved ids of features.py.

Ids ``0 .. NUM_RESERVED - 1`` are the reserved ids (``PAD_ID``, ``OOV_ID``,
``MASK_ID``, ``SEP_ID``); item token ``tokens[i]`` gets id
``NUM_RESERVED + i``. Reserved ids are never looked up by string, so an item
whose raw token happens to be ``"[PAD]"`` is an ordinary item.

A vocabulary is saved as ``vocab.json`` with a SHA-256 ``hash`` over the
reserved token names and the item tokens (not the counts). Loading
recomputes the hash, so a vocabulary edited by hand is refused; TFRecord
sets and exports store the hash to prove they were encoded with the same
vocabulary.

Example:
    >>> vocab = Vocabulary.build([["a", "b", "a"], ["c", "a"]])
    >>> vocab.tokens
    ['a', 'b', 'c']
    >>> vocab.encode(["a", "zzz"])[0].tolist(), vocab.encode(["a", "zzz"])[1]
    ([4, 1], 1)

Differences from the original: PeterRec's ``VocabularyProcessor`` maps
unknown, padding, separator and mask all to id 0 and orders by first
appearance; peterrec has one id per role and orders by frequency by default.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

from peterrec import features
from peterrec.errors import ConfigError, DataError, VocabularyError

VOCAB_FILENAME = "vocab.json"
VOCAB_FORMAT = "peterrec.vocabulary"
VOCAB_VERSION = 1
ORDERS = ("frequency", "first")


def vocabulary_hash(tokens: Sequence[str]) -> str:
    """Returns the SHA-256 hex digest identifying a vocabulary.

    Args:
        tokens: The item tokens, in id order (reserved names are prepended).

    Returns:
        64 hex characters over ``RESERVED_TOKENS + tokens`` (JSON-encoded, so
        no separator ambiguity).
    """
    payload = json.dumps(list(features.RESERVED_TOKENS) + list(tokens), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Vocabulary:
    """An immutable mapping between raw item tokens and integer ids.

    Args:
        tokens: Item tokens; ``tokens[i]`` gets id ``NUM_RESERVED + i``.
            Must be unique non-empty strings.
        counts: Optional training count of each token (same length as
            ``tokens``); defaults to zeros. Popularity baselines and
            samplers read them from :attr:`counts`.

    Raises:
        DataError: A token is empty or not a string.
        VocabularyError: Duplicate tokens, or ``counts`` of the wrong length
            or negative.
    """

    def __init__(self, tokens: Sequence[str], counts: Sequence[int] | None = None):
        self._tokens = list(tokens)
        self._index = _index_tokens(self._tokens)
        self._counts = _full_counts(counts, len(self._tokens))
        self._hash = vocabulary_hash(self._tokens)

    @property
    def size(self) -> int:
        """Number of ids: ``NUM_RESERVED + len(tokens)``."""
        return features.NUM_RESERVED + len(self._tokens)

    @property
    def tokens(self) -> list[str]:
        """The item tokens in id order (do not modify)."""
        return self._tokens

    @property
    def counts(self) -> np.ndarray:
        """Read-only int64 array of length :attr:`size`; 0 for reserved ids."""
        return self._counts

    @property
    def hash(self) -> str:
        """SHA-256 hex digest of the reserved names and the tokens."""
        return self._hash

    def __len__(self) -> int:
        return self.size

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._tokens == other._tokens and np.array_equal(self._counts, other._counts)

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, hash={self._hash[:12]})"

    def id_of(self, token: str) -> int:
        """Returns the id of ``token``, or ``OOV_ID`` if it is not an item."""
        return self._index.get(token, features.OOV_ID)

    def encode(self, tokens: Iterable[str]) -> tuple[np.ndarray, int]:
        """Maps tokens to ids.

        Args:
            tokens: Raw item tokens.

        Returns:
            ``(ids, num_oov)``: int64 ids (unknown tokens become ``OOV_ID``)
            and how many tokens were unknown.
        """
        tokens = list(tokens)
        ids = np.fromiter((self._index.get(token, features.OOV_ID) for token in tokens), dtype=np.int64, count=len(tokens))
        return ids, int(np.count_nonzero(ids == features.OOV_ID))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Maps ids back to tokens; reserved ids give ``RESERVED_TOKENS`` names.

        Raises:
            VocabularyError: An id is negative or ``>= size``.
        """
        names = []
        for value in ids:
            index = int(value)
            if not 0 <= index < self.size:
                raise VocabularyError(f"id {index} is out of range for a vocabulary of size {self.size}")
            names.append(features.RESERVED_TOKENS[index] if index < features.NUM_RESERVED else self._tokens[index - features.NUM_RESERVED])
        return names

    def to_json(self) -> dict:
        """Returns the JSON-serialisable form written by :meth:`save`."""
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "size": self.size,
            "hash": self._hash,
            "reserved": list(features.RESERVED_TOKENS),
            "tokens": self._tokens,
            "counts": self._counts[features.NUM_RESERVED:].tolist(),
        }

    def save(self, path: str) -> str:
        """Writes the vocabulary as JSON, atomically (temp file + ``os.replace``).

        Args:
            path: Target file, or an existing directory (then
                ``<path>/vocab.json`` is written).

        Returns:
            The path of the written file.
        """
        if os.path.isdir(path):
            path = os.path.join(path, VOCAB_FILENAME)
        absolute = os.path.abspath(path)
        temp_path = os.path.join(os.path.dirname(absolute), f".{os.path.basename(absolute)}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(temp_path, "x", encoding="utf-8") as stream:
                json.dump(self.to_json(), stream, ensure_ascii=False)
            os.replace(temp_path, path)
        except BaseException:
            if os.path.exists(temp_path):
                os.remove(temp_path)
            raise
        return path

    @classmethod
    def load(cls, path_or_dir: str) -> Vocabulary:
        """Loads a vocabulary saved by :meth:`save`.

        Args:
            path_or_dir: A ``vocab.json`` file, or a directory holding one (a
                TFRecord set or an export version), or an export root / model
                directory whose newest numbered export version holds one.

        Raises:
            VocabularyError: The file is missing or invalid, or its stored
                hash differs from the recomputed one (edited by hand).
        """
        path = _resolve_vocab_path(path_or_dir)
        data = _read_json(path)
        try:
            vocab = cls(data["tokens"], data["counts"])
        except (DataError, VocabularyError, TypeError, ValueError) as err:
            raise VocabularyError(f"{path}: invalid vocabulary: {err}") from None
        if data["reserved"] != list(features.RESERVED_TOKENS):
            raise VocabularyError(f"{path}: reserved tokens {data['reserved']} differ from {list(features.RESERVED_TOKENS)}")
        if data["hash"] != vocab.hash:
            raise VocabularyError(
                f"{path}: vocabulary hash mismatch (stored {data['hash']}, computed {vocab.hash}); the file was edited by hand "
                "or is corrupt; regenerate it with pipelines.convert"
            )
        return vocab

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], order: str = "frequency") -> Vocabulary:
        """Builds a vocabulary from token sequences.

        Args:
            sequences: Token sequences (e.g. each user's items).
            order: ``"frequency"`` (most frequent first, ties by first
                appearance) or ``"first"`` (first-appearance order, as in the
                original PeterRec code).

        Returns:
            A vocabulary whose counts are the token counts in ``sequences``.

        Raises:
            ConfigError: Unknown ``order``.
            DataError: An empty token.
        """
        if order not in ORDERS:
            raise ConfigError(f"order={order!r} is not one of {', '.join(ORDERS)}")
        counts: dict[str, int] = {}
        for sequence in sequences:
            for token in sequence:
                counts[token] = counts.get(token, 0) + 1
        tokens = list(counts)
        if order == "frequency":
            tokens.sort(key=lambda token: -counts[token])  # stable: ties keep first appearance
        return cls(tokens, [counts[token] for token in tokens])


def _index_tokens(tokens: list[str]) -> dict[str, int]:
    """Returns ``token -> id`` after validating the tokens."""
    index: dict[str, int] = {}
    for position, token in enumerate(tokens):
        if not isinstance(token, str) or not token:
            raise DataError(f"item token #{position} is {token!r}; item tokens must be non-empty strings")
        if token in index:
            raise VocabularyError(f"duplicate item token {token!r} (positions {index[token] - features.NUM_RESERVED} and {position})")
        index[token] = features.NUM_RESERVED + position
    return index


def _full_counts(counts: Sequence[int] | None, num_tokens: int) -> np.ndarray:
    """Returns the read-only int64 counts over all ids (0 for reserved ids)."""
    full = np.zeros(features.NUM_RESERVED + num_tokens, dtype=np.int64)
    if counts is not None:
        values = np.asarray(counts, dtype=np.int64)
        if values.shape != (num_tokens,):
            raise VocabularyError(f"counts has shape {values.shape}, expected ({num_tokens},) (one per token)")
        if np.any(values < 0):
            raise VocabularyError("counts must be non-negative")
        full[features.NUM_RESERVED:] = values
    full.flags.writeable = False
    return full


def _resolve_vocab_path(path_or_dir: str) -> str:
    """``vocab.json`` of a file, a directory, or the newest numbered version under ``[<dir>/export/]``."""
    if not os.path.isdir(path_or_dir):
        return path_or_dir
    direct = os.path.join(path_or_dir, VOCAB_FILENAME)
    if os.path.isfile(direct):
        return direct
    for root in (path_or_dir, os.path.join(path_or_dir, "export")):
        if os.path.isdir(root):
            versions = sorted(int(name) for name in os.listdir(root) if name.isdigit())
            if versions:
                return os.path.join(root, str(versions[-1]), VOCAB_FILENAME)
    return direct


def _read_json(path: str) -> dict:
    """Reads a vocab.json and checks its keys."""
    if not os.path.isfile(path):
        raise VocabularyError(f"{path}: vocabulary file not found (expected a vocab.json or a directory containing one)")
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VocabularyError(f"{path}: not a valid vocabulary JSON file: {err}") from None
    required = ("format", "hash", "reserved", "tokens", "counts")
    if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT or any(key not in data for key in required):
        raise VocabularyError(f"{path}: not a peterrec vocabulary (needs format={VOCAB_FORMAT!r} and keys {', '.join(required)})")
    return data
