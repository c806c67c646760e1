"""Raw interaction file -> filtered, split, encoded TFRecord set.

:func:`convert` reads a file with :func:`peterrec.data.readers.read_sequences`,
applies the filters in a fixed order (rating threshold, consecutive
duplicates, iterative k-core, minimum sequence length), assigns each user a
role (``features.ROLE_*``), encodes items with a :class:`Vocabulary` and writes
the records with :func:`peterrec.data.tfrecord.write_tfrecord_set`, together
with ``vocab.json`` (and ``target_vocab.json`` for finetuning data).

Large files convert out of core (``streaming``; automatic from
``STREAMING_THRESHOLD_BYTES``): the reader's per-line parsing feeds
hash-partitioned temporary files instead of memory, each partition is grouped
by user on its own, k-core runs as extra passes over the partitions, and the
kept users are merged back in the in-memory reader's order, so both paths
write the same set (see :func:`_streamed`).

The vocabulary's ``counts`` are counted over training positions only
(``items[:-2]`` of leave-one-out users, all items of ``ROLE_TRAIN`` users), so
popularity baselines and samplers never see evaluation targets.

:func:`resolve_data` lets a training job accept either a TFRecord set or a
raw file, converting the latter once into a content-addressed cache
directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import heapq
import itertools
import operator
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from peterrec import __version__, features
from peterrec.data.readers import (
    FORMATS,
    Partition,
    UserSequence,
    detect_format,
    iter_partition,
    partition_sequences,
    read_sequences,
    read_user_targets,
    write_partition,
)
from peterrec.data.tfrecord import _sibling_path, check_output_dir, file_sha256, load_metadata, write_tfrecord_set
from peterrec.data.vocab import VOCAB_FILENAME, Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError

TARGET_VOCAB_FILENAME = "target_vocab.json"
SPLITS = ("loo", "random")
MIN_LENGTH = {"loo": 3, "random": 2}  # loo: train + valid + test item; random: history + target
STREAMING_FORMATS = ("inter", "peterrec", "caser", "ratings")
STREAMING_THRESHOLD_BYTES = 64 << 20  # convert(streaming=None) streams files at least this large
STREAM_PARTITION_BYTES = 8 << 20  # input bytes per temporary partition (~300k interactions, ~100 MB grouped in memory)
MAX_PARTITIONS = 512  # open files while partitioning
_log = logging.getLogger(__name__)


def convert(
    data: str,
    fmt: str,
    output_dir: str,
    *,
    vocab: Vocabulary | None = None,
    num_shards: int = 8,
    split: str = "loo",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    min_seq_len: int = 3,
    k_core: int = 0,
    dedup: bool = False,
    rating_threshold: float | None = None,
    target_vocab: Vocabulary | None = None,
    targets: str | None = None,
    overwrite: bool = False,
    max_skipped_share: float = 0.5,
    streaming: bool | None = None,
) -> dict:
    """Converts an interaction file into a TFRecord set.

    Args:
        data: Interaction file (or TFDS name with ``fmt="tfds"``).
        fmt: Reader format, one of ``readers.FORMATS``.
        output_dir: Directory of the new TFRecord set.
        vocab: Encode with this item vocabulary (unknown items become
            ``OOV_ID`` and are counted) instead of building one; it is saved
            unchanged.
        num_shards: Number of TFRecord shards.
        split: ``"loo"`` (every user is ``ROLE_LOO``) or ``"random"`` (users
            get ``ROLE_TRAIN``/``VALID``/``TEST`` by a seeded permutation).
        valid_fraction: Share of validation users (``split="random"``).
        test_fraction: Share of test users (``split="random"``).
        seed: Seed of the random split.
        min_seq_len: Users with fewer items are skipped and counted. Raised
            to 3 for ``loo`` and 2 for ``random`` (noted in the metadata).
        k_core: Iteratively drop items and users with fewer than ``k_core``
            interactions (0 = off).
        dedup: Drop consecutive repeats of the same item by a user.
        rating_threshold: Keep interactions with rating >= this.
        target_vocab: Encode finetuning targets with this vocabulary instead
            of building one.
        targets: A RecBole file of per-user finetuning targets (``user_id`` +
            ``item_id`` or ``label``, see ``readers.read_user_targets``); each
            user's targets are stored with their source sequence. Users of
            this file without a source sequence are counted
            (``target_users_without_source``).
        overwrite: Replace an existing non-empty ``output_dir``.
        max_skipped_share: Fail when ``min_seq_len`` skips more than this
            share of the users left by the other filters (1 = never).
        streaming: Convert out of core (see :func:`_streamed`): True forces
            it, False forbids it, None (default) streams files of
            ``STREAMING_THRESHOLD_BYTES`` or more. Both paths write the same
            set (byte-identical shards) for the same options.

    Returns:
        The metadata written to ``<output_dir>/metadata.json``.

    Raises:
        ConfigError: An option is out of range, or ``streaming=True`` for a
            TFDS dataset.
        DataError: The input is malformed, no user is left after the
            filters, more than ``max_skipped_share`` of the users are too
            short, or ``output_dir`` is not empty (without ``overwrite``).
    """
    min_length, notes = _check_options(split, valid_fraction, test_fraction, min_seq_len, k_core, num_shards)
    check_output_dir(output_dir, overwrite)
    target_map = read_user_targets(targets) if targets is not None else None
    filters = {"rating_threshold": rating_threshold, "dedup": dedup, "k_core": k_core, "min_seq_len": min_length,
               "min_seq_len_requested": min_seq_len}
    if not _use_streaming(data, fmt, streaming):
        source = _in_memory(data, fmt, filters, target_map)
        return _write(data, output_dir, source, filters, notes, vocab=vocab, target_vocab=target_vocab, num_shards=num_shards,
                      split=split, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed, overwrite=overwrite,
                      max_skipped_share=max_skipped_share)
    scratch = _sibling_path(output_dir, "convert")
    os.makedirs(os.path.dirname(scratch), exist_ok=True)
    os.mkdir(scratch)
    try:
        source = _streamed(data, fmt, filters, target_map, scratch)
        return _write(data, output_dir, source, filters, notes, vocab=vocab, target_vocab=target_vocab, num_shards=num_shards,
                      split=split, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed, overwrite=overwrite,
                      max_skipped_share=max_skipped_share)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclasses.dataclass
class _Source:
    """Filtered users, ready to encode: ``sequences()`` iterates the kept users (reader order) and may be
    called more than once; ``counts`` holds every filter count, ``read_stats`` the reader's stats."""

    sequences: Callable[[], Iterable[UserSequence]]
    read_stats: dict
    counts: dict
    streaming: dict | None = None


def _use_streaming(data: str, fmt: str, streaming: bool | None) -> bool:
    """Whether to convert out of core (``streaming`` None: by file size)."""
    if streaming is False:
        return False
    resolved = detect_format(data) if fmt == "auto" and os.path.isfile(data) else fmt
    if resolved == "tfds" and streaming:
        raise ConfigError(f"{data}: --streaming: TFDS datasets are read through tensorflow_datasets, not streamed; "
                          "convert without --streaming")
    if resolved not in STREAMING_FORMATS or not os.path.isfile(data):
        return False  # an unknown format or a missing file: the reader names the problem
    return bool(streaming) or os.path.getsize(data) >= STREAMING_THRESHOLD_BYTES


def _in_memory(data: str, fmt: str, filters: dict, target_map: dict | None) -> _Source:
    """Reads the whole file into memory and applies the filters."""
    sequences, read_stats = read_sequences(data, fmt, rating_threshold=filters["rating_threshold"])
    counts = _initial_counts(read_stats)
    if target_map is not None:
        _attach_targets(sequences, read_stats, target_map, counts)
    if filters["dedup"]:
        sequences = [_dedup(sequence, counts) for sequence in sequences]
    sequences = _k_core(sequences, filters["k_core"], counts)
    _count_short(Counter(len(sequence.items) for sequence in sequences), filters["min_seq_len"], counts)
    kept = [sequence for sequence in sequences if len(sequence.items) >= filters["min_seq_len"]]
    return _Source(lambda: kept, read_stats, counts)


def _streamed(data: str, fmt: str, filters: dict, target_map: dict | None, scratch: str) -> _Source:
    """Out-of-core reading and filtering, with the in-memory path's results.

    Memory holds one partition of users, the item counts and one small buffer per partition, never
    the whole file: :func:`readers.partition_sequences` deals the interactions by a hash of the user
    into ``~size / STREAM_PARTITION_BYTES`` temporary files under ``scratch`` and groups each one
    (targets attached and duplicates dropped on the way); every k-core round is one more pass that
    rewrites the partitions; the kept users are read back merged by their first line
    (:func:`heapq.merge`), i.e. in the in-memory reader's order, so the roles, the vocabulary and
    the shards come out the same. A ``targets`` file is read into memory (it is per user, small).
    """
    num_partitions = min(MAX_PARTITIONS, max(1, math.ceil(os.path.getsize(data) / STREAM_PARTITION_BYTES)))
    pending = {"duplicates_removed": 0}
    targeted: set = set()
    item_counts: Counter = Counter()

    def transform(first, sequence):
        if target_map is not None:
            sequence.targets = target_map.get(sequence.user, [])
            if sequence.user in target_map:
                targeted.add(sequence.user)
        if filters["dedup"]:
            sequence = _dedup(sequence, pending)
        if filters["k_core"] > 0:
            item_counts.update(sequence.items)
        return sequence

    partitions, read_stats = partition_sequences(
        data, fmt, scratch, num_partitions, rating_threshold=filters["rating_threshold"], transform=transform
    )
    counts = _initial_counts(read_stats)
    counts["duplicates_removed"] = pending["duplicates_removed"]
    if target_map is not None:
        counts["target_users_without_source"] = len(target_map) - len(targeted)
        read_stats["has_targets"] = True
    partitions = _k_core_partitions(partitions, filters["k_core"], item_counts, counts, scratch)
    _count_short(sum((partition.lengths for partition in partitions), Counter()), filters["min_seq_len"], counts)
    min_length = filters["min_seq_len"]

    def merged():
        for _, sequence in heapq.merge(*map(iter_partition, partitions), key=operator.itemgetter(0)):
            if len(sequence.items) >= min_length:
                yield sequence

    return _Source(merged, read_stats, counts, streaming={"partitions": num_partitions})


def _k_core_partitions(partitions: list[Partition], k: int, item_counts: Counter, counts: dict, scratch: str) -> list[Partition]:
    """:func:`_k_core` as passes over the partitions: each round filters every partition by the
    previous round's item counts (rewriting it) until a round changes nothing."""
    if k <= 0:
        return partitions
    for round_ in itertools.count(1):
        changed, next_counts, rewritten = False, Counter(), []

        def filtered(partition):
            nonlocal changed
            for first, sequence in iter_partition(partition):
                kept = _k_core_filter(sequence, item_counts, k)
                if kept is not sequence:
                    changed = True
                    counts["kcore_removed_interactions"] += len(sequence.items) - len(kept.items)
                    if not kept.items:
                        counts["kcore_removed_users"] += 1
                        continue
                next_counts.update(kept.items)
                yield first, kept

        for index, partition in enumerate(partitions):
            rewritten.append(write_partition(os.path.join(scratch, f"kcore{round_}-{index:05d}.pkl"), filtered(partition)))
            os.remove(partition.path)
        partitions, item_counts = rewritten, next_counts
        if not changed:
            return partitions
    raise AssertionError("unreachable")


def _write(data: str, output_dir: str, source: _Source, filters: dict, notes: list[str], *, vocab, target_vocab, num_shards,
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
    split_options = {"mode": split, "seed": seed, "valid_fraction": valid_fraction, "test_fraction": test_fraction}
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


def _check_options(
    split: str, valid_fraction: float, test_fraction: float, min_seq_len: int, k_core: int, num_shards: int
) -> tuple[int, list[str]]:
    """Validates the options; returns the effective min_seq_len and notes."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}={value} must be in [0, 1)")
    if split == "random" and valid_fraction + test_fraction >= 1.0:
        raise ConfigError(f"valid_fraction + test_fraction = {valid_fraction + test_fraction} leaves no training users")
    for name, value, lowest in (("min_seq_len", min_seq_len, 1), ("k_core", k_core, 0), ("num_shards", num_shards, 1)):
        if value < lowest:
            raise ConfigError(f"{name}={value} must be >= {lowest}")
    notes = []
    min_length = max(min_seq_len, MIN_LENGTH[split])
    if min_length != min_seq_len:
        notes.append(f"min_seq_len raised from {min_seq_len} to {min_length}: split '{split}' needs {min_length} items per user")
    return min_length, notes


def check_skipped_share(counts: dict, max_share: float, data: str, min_length: int) -> None:
    """Raises DataError when the users skipped as too short are more than ``max_share`` of those the length filter saw."""
    if not 0.0 <= max_share <= 1.0:
        raise ConfigError(f"--max_skipped_share: must be in [0, 1], got {max_share}")
    skipped = counts["users_skipped_short"]
    seen = skipped + counts["users_kept"]
    if seen and skipped / seen > max_share:
        raise DataError(
            f"{data}: {skipped} of {seen} users ({skipped / seen:.1%}) have fewer than {min_length} interactions and would be "
            f"skipped, more than --max_skipped_share {max_share:g}; check the file's format and columns, lower --min_seq_len, "
            "or raise --max_skipped_share if that is expected"
        )


def _initial_counts(read_stats: dict) -> dict:
    """Returns the counts dict, starting from the reader's stats."""
    return {
        "lines_read": read_stats["lines_read"],
        "users_read": read_stats["users"],
        "interactions_read": read_stats["interactions"] + read_stats["rating_filtered"],
        "rating_filtered": read_stats["rating_filtered"],
        "duplicates_removed": 0,
        "kcore_removed_interactions": 0,
        "kcore_removed_users": 0,
        "users_skipped_short": 0,
        "short_removed_interactions": 0,
        "users_kept": 0,
        "interactions": 0,
        "oov_interactions": 0,
        "target_interactions": 0,
        "target_oov_interactions": 0,
    }


def _attach_targets(sequences: list[UserSequence], read_stats: dict, target_map: dict, counts: dict) -> None:
    """Stores each user's targets from a separate targets file on their sequence."""
    users = set()
    for sequence in sequences:
        sequence.targets = target_map.get(sequence.user, [])
        users.add(sequence.user)
    counts["target_users_without_source"] = sum(1 for user in target_map if user not in users)
    read_stats["has_targets"] = True


def _select(sequence: UserSequence, keep: Sequence[int]) -> UserSequence:
    """Returns ``sequence`` with only the item positions in ``keep``."""
    timestamps = None if sequence.timestamps is None else [sequence.timestamps[i] for i in keep]
    return dataclasses.replace(sequence, items=[sequence.items[i] for i in keep], timestamps=timestamps)


def _dedup(sequence: UserSequence, counts: dict) -> UserSequence:
    """Drops consecutive repeats of the same item by one user (counted in ``duplicates_removed``)."""
    items = sequence.items
    keep = [i for i in range(len(items)) if i == 0 or items[i] != items[i - 1]]
    counts["duplicates_removed"] += len(items) - len(keep)
    return _select(sequence, keep) if len(keep) != len(items) else sequence


def _k_core_filter(sequence: UserSequence, item_counts: Counter, k: int) -> UserSequence:
    """One k-core round for one user: keeps items with ``k`` or more interactions, and nothing when
    fewer than ``k`` remain; returns ``sequence`` itself when nothing changes."""
    keep = [i for i, item in enumerate(sequence.items) if item_counts[item] >= k]
    if len(keep) < k:
        keep = []
    return sequence if len(keep) == len(sequence.items) else _select(sequence, keep)


def _k_core(sequences: list[UserSequence], k: int, counts: dict) -> list[UserSequence]:
    """Iteratively drops items and users with fewer than ``k`` interactions."""
    if k <= 0:
        return sequences
    current = sequences
    changed = True
    while changed:
        item_counts = Counter(item for sequence in current for item in sequence.items)
        result = [_k_core_filter(sequence, item_counts, k) for sequence in current]
        changed = any(new is not old for new, old in zip(result, current))
        counts["kcore_removed_interactions"] += sum(len(old.items) - len(new.items) for new, old in zip(result, current))
        current = result
    kept = [sequence for sequence, original in zip(current, sequences) if sequence.items or not original.items]
    counts["kcore_removed_users"] += len(sequences) - len(kept)
    return kept


def _count_short(lengths: Counter, min_length: int, counts: dict) -> None:
    """Counts the users skipped for fewer than ``min_length`` items and the kept ones (``lengths``: users per length)."""
    kept = {length: users for length, users in lengths.items() if length >= min_length}
    counts["users_skipped_short"] += sum(lengths.values()) - sum(kept.values())
    counts["short_removed_interactions"] += sum(length * users for length, users in lengths.items() if length < min_length)
    counts["users_kept"] = sum(kept.values())
    counts["interactions"] = sum(length * users for length, users in kept.items())


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


def resolve_data(data: str, fmt: str, tfrecord_root: str, **convert_kwargs) -> str:
    """Returns a TFRecord set for ``data``, converting a raw file once.

    Args:
        data: A TFRecord set directory (has ``metadata.json``), a raw
            interaction file, or a TFDS name (``fmt="tfds"``).
        fmt: Format of a raw file (see ``readers.FORMATS``).
        tfrecord_root: Where converted sets are cached, as
            ``<root>/<file stem>-<12 hex>``; the hex is a SHA-256 over the
            file bytes, the convert options and the vocabulary hashes.
        **convert_kwargs: Keyword arguments of :func:`convert` (not
            ``output_dir``); ``overwrite=True`` forces a fresh conversion.

    Returns:
        The TFRecord set directory.

    Raises:
        VocabularyError: ``data`` is a set encoded with another vocabulary
            than ``vocab`` / ``target_vocab`` (both hashes are named).
        DataError, ConfigError: As :func:`convert`.
    """
    if os.path.isdir(data):
        metadata = load_metadata(data)
        _check_set_vocab(data, metadata, "vocab_hash", convert_kwargs.get("vocab"))
        _check_set_vocab(data, metadata, "target_vocab_hash", convert_kwargs.get("target_vocab"))
        return data
    if fmt != "tfds" and not os.path.isfile(data):
        raise DataError(f"{data}: no such file or TFRecord set directory")
    options = _cache_options(data, fmt, convert_kwargs)
    set_dir = os.path.join(tfrecord_root, f"{source_stem(data, fmt)}-{_cache_key(data, fmt, options, convert_kwargs)}")
    overwrite = bool(convert_kwargs.pop("overwrite", False))
    if not overwrite and _is_valid_set(set_dir):
        _log.info("reusing converted data %s for %s", set_dir, data)
        metadata = load_metadata(set_dir)
        check_skipped_share(metadata["counts"], convert_kwargs.get("max_skipped_share", 0.5), data, metadata["filters"]["min_seq_len"])
        return set_dir
    try:
        convert(data, fmt, set_dir, overwrite=overwrite or os.path.exists(set_dir), **convert_kwargs)
    except DataError:
        if _is_valid_set(set_dir):  # converted concurrently by another job
            return set_dir
        raise
    return set_dir


def _check_set_vocab(set_dir: str, metadata: dict, key: str, vocab: Vocabulary | None) -> None:
    """Raises VocabularyError if ``vocab`` is given and its hash differs from the set's."""
    if vocab is not None and metadata.get(key) != vocab.hash:
        raise VocabularyError(
            f"{set_dir}: the TFRecord set was encoded with a different vocabulary "
            f"({key} {metadata.get(key)} in metadata.json, given vocabulary {vocab.hash})"
        )


def _cache_options(data: str, fmt: str, convert_kwargs: dict) -> dict:
    """Returns every convert option (defaults filled in) that shapes the output."""
    bound = inspect.signature(convert).bind_partial(data, fmt, "", **convert_kwargs)
    bound.apply_defaults()
    options = dict(bound.arguments)
    for name in ("data", "output_dir", "vocab", "target_vocab", "overwrite", "max_skipped_share", "streaming"):  # not the output's shape
        options.pop(name)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    options["fmt"] = detect_format(data) if fmt == "auto" else fmt
    return options


def _cache_key(data: str, fmt: str, options: dict, convert_kwargs: dict) -> str:
    """Returns 12 hex of SHA-256(file bytes + options JSON + vocabulary hashes)."""
    vocab_hashes = [convert_kwargs[name].hash if convert_kwargs.get(name) is not None else "" for name in ("vocab", "target_vocab")]
    extra = json.dumps(options, sort_keys=True).encode("utf-8") + "".join(vocab_hashes).encode("ascii")
    if options.get("targets"):
        extra += file_sha256(options["targets"]).encode("ascii")
    if fmt == "tfds":
        return hashlib.sha256(data.encode("utf-8") + extra).hexdigest()[:12]
    return file_sha256(data, extra)[:12]


def source_stem(data: str, fmt: str) -> str:
    """Returns the directory-name stem of a source: file stem, or the TFDS name with "/" -> "_"."""
    if fmt == "tfds":
        return data.replace("/", "_").replace(":", "_")
    return os.path.splitext(os.path.basename(data))[0]


def _is_valid_set(set_dir: str) -> bool:
    """Whether ``set_dir`` is a complete TFRecord set."""
    try:
        load_metadata(set_dir)
    except DataError:
        return False
    return True
