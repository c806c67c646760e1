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

The sequence filters are in :mod:`peterrec.data.filters`; role assignment, the
vocabulary pass, encoding and writing the set are in :mod:`peterrec.data.convert_write`.
"""

from __future__ import annotations

import hashlib
import heapq
import inspect
import itertools
import json
import logging
import math
import operator
import os
import shutil
from collections import Counter

from peterrec.data.convert_write import Source, write_set
from peterrec.data.filters import (
    attach_targets,
    check_skipped_share,
    count_short,
    dedup_sequence,
    initial_counts,
    k_core_filter,
    k_core_sequences,
)
from peterrec.data.formats.inter import read_user_targets
from peterrec.data.partition import Partition, iter_partition, partition_sequences, write_partition
from peterrec.data.readers import FORMATS, detect_format, read_sequences
from peterrec.data.synthetic import ensure_default
from peterrec.data.tfrecord import _sibling_path, check_output_dir, file_sha256, load_metadata
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError

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
        return write_set(data, output_dir, source, filters, notes, vocab=vocab, target_vocab=target_vocab, num_shards=num_shards,
                      split=split, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed, overwrite=overwrite,
                      max_skipped_share=max_skipped_share)
    scratch = _sibling_path(output_dir, "convert")
    os.makedirs(os.path.dirname(scratch), exist_ok=True)
    os.mkdir(scratch)
    try:
        source = _streamed(data, fmt, filters, target_map, scratch)
        return write_set(data, output_dir, source, filters, notes, vocab=vocab, target_vocab=target_vocab, num_shards=num_shards,
                      split=split, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed, overwrite=overwrite,
                      max_skipped_share=max_skipped_share)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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


def _in_memory(data: str, fmt: str, filters: dict, target_map: dict | None) -> Source:
    """Reads the whole file into memory and applies the filters."""
    sequences, read_stats = read_sequences(data, fmt, rating_threshold=filters["rating_threshold"])
    counts = initial_counts(read_stats)
    if target_map is not None:
        attach_targets(sequences, read_stats, target_map, counts)
    if filters["dedup"]:
        sequences = [dedup_sequence(sequence, counts) for sequence in sequences]
    sequences = k_core_sequences(sequences, filters["k_core"], counts)
    count_short(Counter(len(sequence.items) for sequence in sequences), filters["min_seq_len"], counts)
    kept = [sequence for sequence in sequences if len(sequence.items) >= filters["min_seq_len"]]
    return Source(lambda: kept, read_stats, counts)


def _streamed(data: str, fmt: str, filters: dict, target_map: dict | None, scratch: str) -> Source:
    """Out-of-core reading and filtering, with the in-memory path's results.

    Memory holds one partition of users, the item counts and one small buffer per partition, never
    the whole file: :func:`partition.partition_sequences` deals the interactions by a hash of the user
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
            sequence = dedup_sequence(sequence, pending)
        if filters["k_core"] > 0:
            item_counts.update(sequence.items)
        return sequence

    partitions, read_stats = partition_sequences(
        data, fmt, scratch, num_partitions, rating_threshold=filters["rating_threshold"], transform=transform
    )
    counts = initial_counts(read_stats)
    counts["duplicates_removed"] = pending["duplicates_removed"]
    if target_map is not None:
        counts["target_users_without_source"] = len(target_map) - len(targeted)
        read_stats["has_targets"] = True
    partitions = _k_core_partitions(partitions, filters["k_core"], item_counts, counts, scratch)
    count_short(sum((partition.lengths for partition in partitions), Counter()), filters["min_seq_len"], counts)
    min_length = filters["min_seq_len"]

    def merged():
        for _, sequence in heapq.merge(*map(iter_partition, partitions), key=operator.itemgetter(0)):
            if len(sequence.items) >= min_length:
                yield sequence

    return Source(merged, read_stats, counts, streaming={"partitions": num_partitions})


def _k_core_partitions(partitions: list[Partition], k: int, item_counts: Counter, counts: dict, scratch: str) -> list[Partition]:
    """:func:`k_core_sequences` as passes over the partitions: each round filters every partition by the
    previous round's item counts (rewriting it) until a round changes nothing."""
    if k <= 0:
        return partitions
    for round_ in itertools.count(1):
        changed, next_counts, rewritten = False, Counter(), []

        def filtered(partition):
            nonlocal changed
            for first, sequence in iter_partition(partition):
                kept = k_core_filter(sequence, item_counts, k)
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
    ensure_default(data)
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
    if options.get("split") != "random":  # a leave-one-out split does not depend on them: one set for every seed
        for name in ("seed", "valid_fraction", "test_fraction"):
            options.pop(name, None)
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
