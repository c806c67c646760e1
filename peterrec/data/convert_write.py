"""Writing a converted TFRecord set: roles, the vocabulary pass, encoding and the set itself.

:func:`write_set` takes the filtered users of :func:`peterrec.data.convert.convert` (a
:class:`Source`), assigns each user a role (``features.ROLE_*``), builds the vocabularies in one
pass over the users (:class:`_Scan`; ``counts`` over training positions only, see
:func:`training_items`) and writes the records in a second pass with
:func:`peterrec.data.tfrecord.write_tfrecord_set`, together with ``vocab.json`` (and
``target_vocab.json`` for finetuning data).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from peterrec import __version__, features
from peterrec.data.filters import check_skipped_share
from peterrec.data.readers import UserSequence
from peterrec.data.tfrecord import file_sha256, write_tfrecord_set
from peterrec.data.vocab import VOCAB_FILENAME, Vocabulary
from peterrec.errors import DataError

TARGET_VOCAB_FILENAME = "target_vocab.json"
_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Source:
    """Filtered users, ready to encode: ``sequences()`` iterates the kept users (reader order) and may be
    called more than once; ``counts`` holds every filter count, ``read_stats`` the reader's stats."""

    sequences: Callable[[], Iterable[UserSequence]]
    read_stats: dict
    counts: dict
    streaming: dict | None = None


def write_set(data: str, output_dir: str, source: Source, filters: dict, notes: list[str], *, vocab, target_vocab, num_shards,
           split, valid_fraction, test_fraction, seed, overwrite, max_skipped_share) -> dict:
    """Assigns roles, builds the vocabularies (one pass) and writes the set (a second pass)."""
    counts, read_stats = source.counts, source.read_stats
    if not counts["users_kept"]:
        raise DataError(f"{data}: no user has {filters['min_seq_len']} or more interactions after the filters (counts: {counts})")
    check_skipped_share(counts, max_skipped_share, data, filters["min_seq_len"])
    roles = _assign_roles(counts["users_kept"], split, valid_fraction, test_fraction, seed, data)
    if target_vocab is not None and not read_stats["has_targets"]:
        raise DataError(f"{data}: a target vocabulary was given but the file has no targets (no ',,' lines)")
    scan = _scan(source.sequences(), roles, read_stats["has_targets"])
    item_vocab = vocab or scan.vocabulary("items")
    counts["oov_interactions"] = scan.oov("items", item_vocab)
    target_vocab_ = None
    if read_stats["has_targets"]:
        target_vocab_ = target_vocab or scan.vocabulary("targets")
        counts["target_interactions"] = sum(scan.counts["targets"].values())
        counts["target_oov_interactions"] = scan.oov("targets", target_vocab_)
    split_options = {"mode": split}
    if split == "random":  # leave-one-out depends on none of them (one cached set serves every seed)
        split_options |= {"seed": seed, "valid_fraction": valid_fraction, "test_fraction": test_fraction}
    metadata = _metadata(data, read_stats, item_vocab, vocab is not None, filters, counts, split_options, roles, scan.histogram())
    metadata["notes"] = notes
    if source.streaming is not None:
        metadata["streaming"] = source.streaming
    assets = {VOCAB_FILENAME: item_vocab.save}
    if target_vocab_ is not None:
        metadata.update(target_vocab_size=target_vocab_.size, target_vocab_hash=target_vocab_.hash)
        metadata["target_pairs"] = {name: scan.target_pairs[role] for role, name in features.ROLE_NAMES.items()}
        assets[TARGET_VOCAB_FILENAME] = target_vocab_.save
    records = _encode(source.sequences(), roles, item_vocab, target_vocab_)
    written = write_tfrecord_set(records, output_dir, num_shards, metadata, overwrite=overwrite, assets=assets)
    _log.info("converted %s -> %s: %s", data, output_dir, json.dumps(counts))
    return written


def _metadata(
    data: str,
    read_stats: dict,
    vocab: Vocabulary,
    vocab_given: bool,
    filters: dict,
    counts: dict,
    split_options: dict,
    roles: np.ndarray,
    histogram: dict,
) -> dict:
    """Returns the metadata.json content (without shards and target vocab)."""
    is_tfds = read_stats["format"] == "tfds"
    return {
        "schema_version": 1,
        "peterrec_version": __version__,
        "vocab_size": vocab.size,
        "vocab_hash": vocab.hash,
        "vocab_source": "given" if vocab_given else "built",
        "reserved": dict(features.RESERVED_IDS),
        "source_file": data if is_tfds else os.path.abspath(data),
        "source_sha256": None if is_tfds else file_sha256(data),
        "format": read_stats["format"],
        "has_timestamps": read_stats["has_timestamps"],
        "has_targets": read_stats["has_targets"],
        "filters": filters,
        "counts": counts,
        "split": split_options,
        "roles": {name: int(np.count_nonzero(roles == role)) for role, name in features.ROLE_NAMES.items()},
        "length_histogram": histogram,
    }


def _share(num_users: int, fraction: float) -> int:
    """Number of users for a split fraction: rounded, at least 1 if fraction > 0."""
    return 0 if fraction <= 0 else max(1, math.floor(num_users * fraction + 0.5))


def _assign_roles(num_users: int, split: str, valid_fraction: float, test_fraction: float, seed: int, data: str) -> np.ndarray:
    """Returns one ``features.ROLE_*`` per user."""
    if split == "loo":
        return np.full(num_users, features.ROLE_LOO, dtype=np.int64)
    num_test, num_valid = _share(num_users, test_fraction), _share(num_users, valid_fraction)
    if num_test + num_valid >= num_users:
        raise DataError(
            f"{data}: {num_users} users kept is too few for valid_fraction={valid_fraction} and "
            f"test_fraction={test_fraction} (at least one training user is needed)"
        )
    order = np.random.default_rng(seed).permutation(num_users)
    roles = np.full(num_users, features.ROLE_TRAIN, dtype=np.int64)
    roles[order[:num_test]] = features.ROLE_TEST
    roles[order[num_test:num_test + num_valid]] = features.ROLE_VALID
    return roles


def training_items(items: Sequence[str], role: int) -> Sequence[str]:
    """Returns the items of a user that are training positions for its role.

    Args:
        items: The user's items, oldest first.
        role: The user's ``features.ROLE_*``.

    Returns:
        ``items[:-2]`` for ``ROLE_LOO``, all items for ``ROLE_TRAIN`` and
        nothing for validation or test users.
    """
    if role == features.ROLE_LOO:
        return items[:-2]
    return items if role == features.ROLE_TRAIN else []


class _Scan:
    """One pass over the kept users: token counts (all positions, in first-appearance order) and
    training counts of items and targets, the length histogram and target pairs per role."""

    def __init__(self):
        self.counts = {"items": Counter(), "targets": Counter()}
        self.train_counts = {"items": Counter(), "targets": Counter()}
        self.lengths = {name: Counter() for name in features.ROLE_NAMES.values()}
        self.target_pairs = Counter()

    def add(self, sequence: UserSequence, role: int, has_targets: bool) -> None:
        self.counts["items"].update(sequence.items)
        self.train_counts["items"].update(training_items(sequence.items, role))
        self.lengths[features.ROLE_NAMES[role]][len(sequence.items)] += 1
        if has_targets:
            targets = sequence.targets or []
            self.counts["targets"].update(targets)
            if role in (features.ROLE_LOO, features.ROLE_TRAIN):  # every target of a loo user is training
                self.train_counts["targets"].update(targets)
            self.target_pairs[role] += len(targets)

    def vocabulary(self, kind: str) -> Vocabulary:
        """A frequency-ordered vocabulary (ties by first appearance, as ``Vocabulary.build``) whose counts are training counts."""
        counts, train_counts = self.counts[kind], self.train_counts[kind]
        tokens = sorted(counts, key=lambda token: -counts[token])  # stable: the Counter keeps first-appearance order
        return Vocabulary(tokens, [train_counts[token] for token in tokens])

    def oov(self, kind: str, vocab: Vocabulary) -> int:
        """How many of the tokens are not in ``vocab``."""
        return sum(count for token, count in self.counts[kind].items() if token not in vocab)

    def histogram(self) -> dict[str, dict[str, int]]:
        """``{role name: {str(length): users}}`` for every role."""
        return {name: {str(length): count[length] for length in sorted(count)} for name, count in self.lengths.items()}


def _scan(sequences: Iterable[UserSequence], roles: np.ndarray, has_targets: bool) -> _Scan:
    scan = _Scan()
    for sequence, role in zip(sequences, roles.tolist()):
        scan.add(sequence, role, has_targets)
    return scan


def _encode(sequences: Iterable[UserSequence], roles: np.ndarray, vocab: Vocabulary, target_vocab: Vocabulary | None) -> Iterator[dict]:
    """Yields the TFRecord records of the users (OOV tokens become ``OOV_ID``; counted by :class:`_Scan`)."""
    for sequence, role in zip(sequences, roles.tolist()):
        targets = None if target_vocab is None else target_vocab.encode(sequence.targets or [])[0]
        yield {"user": sequence.user, "items": vocab.encode(sequence.items)[0], "timestamps": sequence.timestamps, "role": role,
               "targets": targets}
