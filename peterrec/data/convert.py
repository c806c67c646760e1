"""Raw interaction file -> filtered, split, encoded TFRecord set.

:func:`convert` reads a file with :func:`peterrec.data.readers.read_sequences`,
applies the filters in a fixed order (rating threshold, consecutive
duplicates, iterative k-core, minimum sequence length), assigns each user a
role (``features.ROLE_*``), encodes items with a :class:`Vocabulary` and writes
the records with :func:`peterrec.data.tfrecord.write_tfrecord_set`, together
with ``vocab.json`` (and ``target_vocab.json`` for finetuning data).

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
from collections import Counter
from collections.abc import Sequence

import numpy as np

from peterrec import __version__, features
from peterrec.data.readers import FORMATS, UserSequence, detect_format, read_sequences, read_user_targets
from peterrec.data.tfrecord import check_output_dir, file_sha256, load_metadata, write_tfrecord_set
from peterrec.data.vocab import VOCAB_FILENAME, Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError

TARGET_VOCAB_FILENAME = "target_vocab.json"
SPLITS = ("loo", "random")
MIN_LENGTH = {"loo": 3, "random": 2}  # loo: train + valid + test item; random: history + target
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

    Returns:
        The metadata written to ``<output_dir>/metadata.json``.

    Raises:
        ConfigError: An option is out of range.
        DataError: The input is malformed, no user is left after the
            filters, more than ``max_skipped_share`` of the users are too
            short, or ``output_dir`` is not empty (without ``overwrite``).
    """
    min_length, notes = _check_options(split, valid_fraction, test_fraction, min_seq_len, k_core, num_shards)
    check_output_dir(output_dir, overwrite)
    sequences, read_stats = read_sequences(data, fmt, rating_threshold=rating_threshold)
    counts = _initial_counts(read_stats)
    if targets is not None:
        _attach_targets(sequences, read_stats, read_user_targets(targets), counts)
    sequences = _dedup(sequences, counts) if dedup else sequences
    sequences = _k_core(sequences, k_core, counts)
    sequences = _drop_short(sequences, min_length, counts)
    if not sequences:
        raise DataError(f"{data}: no user has {min_length} or more interactions after the filters (counts: {counts})")
    check_skipped_share(counts, max_skipped_share, data, min_length)
    roles = _assign_roles(len(sequences), split, valid_fraction, test_fraction, seed, data)
    item_vocab = vocab or _build_vocab([seq.items for seq in sequences], roles)
    target_vocab_ = _target_vocab(sequences, roles, target_vocab, read_stats, data)
    records = _encode(sequences, roles, item_vocab, target_vocab_, counts)
    filters = {"rating_threshold": rating_threshold, "dedup": dedup, "k_core": k_core, "min_seq_len": min_length,
               "min_seq_len_requested": min_seq_len}
    split_options = {"mode": split, "seed": seed, "valid_fraction": valid_fraction, "test_fraction": test_fraction}
    metadata = _metadata(data, read_stats, item_vocab, vocab is not None, filters, counts, split_options, sequences, roles)
    metadata["notes"] = notes
    assets = {VOCAB_FILENAME: item_vocab.save}
    if target_vocab_ is not None:
        metadata.update(target_vocab_size=target_vocab_.size, target_vocab_hash=target_vocab_.hash)
        metadata["target_pairs"] = {
            name: sum(len(r["targets"]) for r in records if r["role"] == role) for role, name in features.ROLE_NAMES.items()
        }
        assets[TARGET_VOCAB_FILENAME] = target_vocab_.save
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
    sequences: list[UserSequence],
    roles: np.ndarray,
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
        "length_histogram": _length_histogram(sequences, roles),
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


def _dedup(sequences: list[UserSequence], counts: dict) -> list[UserSequence]:
    """Drops consecutive repeats of the same item within each user."""
    result = []
    for sequence in sequences:
        items = sequence.items
        keep = [i for i in range(len(items)) if i == 0 or items[i] != items[i - 1]]
        counts["duplicates_removed"] += len(items) - len(keep)
        result.append(_select(sequence, keep) if len(keep) != len(items) else sequence)
    return result


def _k_core(sequences: list[UserSequence], k: int, counts: dict) -> list[UserSequence]:
    """Iteratively drops items and users with fewer than ``k`` interactions."""
    if k <= 0:
        return sequences
    current = sequences
    changed = True
    while changed:
        item_counts = Counter(item for sequence in current for item in sequence.items)
        changed = False
        result = []
        for sequence in current:
            keep = [i for i, item in enumerate(sequence.items) if item_counts[item] >= k]
            if len(keep) < k:
                keep = []
            if len(keep) != len(sequence.items):
                changed = True
                counts["kcore_removed_interactions"] += len(sequence.items) - len(keep)
                sequence = _select(sequence, keep)
            result.append(sequence)
        current = result
    kept = [sequence for sequence, original in zip(current, sequences) if sequence.items or not original.items]
    counts["kcore_removed_users"] += len(sequences) - len(kept)
    return kept


def _drop_short(sequences: list[UserSequence], min_length: int, counts: dict) -> list[UserSequence]:
    """Skips (and counts) users with fewer than ``min_length`` items."""
    kept = [sequence for sequence in sequences if len(sequence.items) >= min_length]
    counts["users_skipped_short"] += len(sequences) - len(kept)
    counts["short_removed_interactions"] += sum(len(s.items) for s in sequences) - sum(len(s.items) for s in kept)
    counts["users_kept"] = len(kept)
    counts["interactions"] = sum(len(sequence.items) for sequence in kept)
    return kept


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


def _build_vocab(token_lists: Sequence[Sequence[str]], roles: np.ndarray) -> Vocabulary:
    """Builds a frequency-ordered vocabulary whose counts are training counts."""
    tokens = Vocabulary.build(token_lists).tokens
    train_counts = Counter(token for seq, role in zip(token_lists, roles) for token in training_items(seq, role))
    return Vocabulary(tokens, [train_counts[token] for token in tokens])


def _target_vocab(
    sequences: list[UserSequence], roles: np.ndarray, target_vocab: Vocabulary | None, read_stats: dict, data: str
) -> Vocabulary | None:
    """Returns the target vocabulary of finetuning data (None if no targets).

    Built target vocabularies count the targets of users whose targets are
    used for training (``ROLE_LOO`` and ``ROLE_TRAIN``).
    """
    if not read_stats["has_targets"]:
        if target_vocab is not None:
            raise DataError(f"{data}: a target vocabulary was given but the file has no targets (no ',,' lines)")
        return None
    if target_vocab is not None:
        return target_vocab
    target_lists = [sequence.targets or [] for sequence in sequences]
    train_roles = np.where(roles == features.ROLE_LOO, features.ROLE_TRAIN, roles)  # every target of a loo user is training
    return _build_vocab(target_lists, train_roles)


def _encode(
    sequences: list[UserSequence], roles: np.ndarray, vocab: Vocabulary, target_vocab: Vocabulary | None, counts: dict
) -> list[dict]:
    """Encodes the sequences into TFRecord records, counting OOV tokens."""
    records = []
    for sequence, role in zip(sequences, roles):
        items, oov = vocab.encode(sequence.items)
        counts["oov_interactions"] += oov
        record = {"user": sequence.user, "items": items, "timestamps": sequence.timestamps, "role": int(role), "targets": None}
        if target_vocab is not None:
            record["targets"], target_oov = target_vocab.encode(sequence.targets or [])
            counts["target_interactions"] += len(record["targets"])
            counts["target_oov_interactions"] += target_oov
        records.append(record)
    return records


def _length_histogram(sequences: list[UserSequence], roles: np.ndarray) -> dict[str, dict[str, int]]:
    """Returns ``{role name: {str(length): users}}`` for every role."""
    histogram: dict[str, Counter] = {name: Counter() for name in features.ROLE_NAMES.values()}
    for sequence, role in zip(sequences, roles):
        histogram[features.ROLE_NAMES[int(role)]][len(sequence.items)] += 1
    return {name: {str(length): count[length] for length in sorted(count)} for name, count in histogram.items()}


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
    for name in ("data", "output_dir", "vocab", "target_vocab", "overwrite", "max_skipped_share"):  # not the output's shape
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
