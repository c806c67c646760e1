"""The filters of :func:`peterrec.data.convert.convert` and their counts.

In the fixed order: rating threshold (applied by the readers), consecutive duplicates
(:func:`dedup_sequence`), iterative k-core (:func:`k_core_sequences`; :func:`k_core_filter` is one
round for one user), minimum sequence length (:func:`count_short`, :func:`check_skipped_share`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from peterrec.data.readers import UserSequence
from peterrec.errors import ConfigError, DataError


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


def initial_counts(read_stats: dict) -> dict:
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


def attach_targets(sequences: list[UserSequence], read_stats: dict, target_map: dict, counts: dict) -> None:
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


def dedup_sequence(sequence: UserSequence, counts: dict) -> UserSequence:
    """Drops consecutive repeats of the same item by one user (counted in ``duplicates_removed``)."""
    items = sequence.items
    keep = [i for i in range(len(items)) if i == 0 or items[i] != items[i - 1]]
    counts["duplicates_removed"] += len(items) - len(keep)
    return _select(sequence, keep) if len(keep) != len(items) else sequence


def k_core_filter(sequence: UserSequence, item_counts: Counter, k: int) -> UserSequence:
    """One k-core round for one user: keeps items with ``k`` or more interactions, and nothing when
    fewer than ``k`` remain; returns ``sequence`` itself when nothing changes."""
    keep = [i for i, item in enumerate(sequence.items) if item_counts[item] >= k]
    if len(keep) < k:
        keep = []
    return sequence if len(keep) == len(sequence.items) else _select(sequence, keep)


def k_core_sequences(sequences: list[UserSequence], k: int, counts: dict) -> list[UserSequence]:
    """Iteratively drops items and users with fewer than ``k`` interactions."""
    if k <= 0:
        return sequences
    current = sequences
    changed = True
    while changed:
        item_counts = Counter(item for sequence in current for item in sequence.items)
        result = [k_core_filter(sequence, item_counts, k) for sequence in current]
        changed = any(new is not old for new, old in zip(result, current))
        counts["kcore_removed_interactions"] += sum(len(old.items) - len(new.items) for new, old in zip(result, current))
        current = result
    kept = [sequence for sequence, original in zip(current, sequences) if sequence.items or not original.items]
    counts["kcore_removed_users"] += len(sequences) - len(kept)
    return kept


def count_short(lengths: Counter, min_length: int, counts: dict) -> None:
    """Counts the users skipped for fewer than ``min_length`` items and the kept ones (``lengths``: users per length)."""
    kept = {length: users for length, users in lengths.items() if length >= min_length}
    counts["users_skipped_short"] += sum(lengths.values()) - sum(kept.values())
    counts["short_removed_interactions"] += sum(length * users for length, users in lengths.items() if length < min_length)
    counts["users_kept"] = sum(kept.values())
    counts["interactions"] = sum(length * users for length, users in kept.items())
