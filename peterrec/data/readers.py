"""Readers that turn raw interaction files into per-user item sequences.

Supported formats (``fmt``):

* ``"inter"``: a RecBole atomic ``.inter`` file. Tab-separated, with a typed
  header such as ``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``.
  ``user_id`` and ``item_id`` are required; ``rating`` and ``timestamp`` are
  optional; other columns are ignored. Ids may contain spaces.
* ``"peterrec"``: the PeterRec / NextItNet CSV. One user per line, items
  comma-separated, oldest first, left-padded with the literal token ``0``.
  Finetuning lines are ``<source items>,,<target items>``.
* ``"caser"``: whitespace-separated ``user item [rating [timestamp]]`` lines
  (2, 3 or 4 columns, the same on every line).
* ``"tfds"``: a TensorFlow Datasets name such as ``movielens/100k-ratings``
  (needs the optional ``tensorflow_datasets`` package).
* ``"ratings"``: a ratings CSV ``user,item,rating,timestamp`` (the Amazon 2014
  ``ratings_<Category>.csv`` files; an optional header line), never auto-detected
  (``.csv`` is the PeterRec format).
* ``"auto"``: pick by file extension (see :func:`detect_format`).

Every reader groups interactions by user (users in order of first
appearance) and sorts each user's items stably by timestamp, so items with
equal timestamps keep their file order. This module never imports
TensorFlow at import time.

Each format's reader is in :mod:`peterrec.data.formats` (``inter``,
``peterrec_csv``, ``caser``, ``tfds``, ``ratings``); the out-of-core variant of
:func:`read_sequences` is :func:`peterrec.data.partition.partition_sequences`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from peterrec.data.formats.caser import read_caser
from peterrec.data.formats.inter import read_inter
from peterrec.data.formats.peterrec_csv import read_peterrec
from peterrec.data.formats.ratings import read_ratings
from peterrec.data.formats.tfds import read_tfds
from peterrec.errors import DataError

FORMATS = ("auto", "inter", "peterrec", "caser", "tfds", "ratings")
EXTENSIONS = {".inter": "inter", ".csv": "peterrec", ".txt": "caser", ".dat": "caser"}


@dataclass
class UserSequence:
    """The interactions of one user, oldest first.

    Attributes:
        user: Raw user id (``"line-<n>"`` for formats without user ids).
        items: Raw item tokens, oldest first.
        timestamps: Timestamps in seconds, aligned with ``items``, or ``None``
            when the format has none.
        targets: Target tokens of a PeterRec finetuning line (the part after
            ``",,"``), else ``None``.
    """

    user: str
    items: list[str]
    timestamps: list[int] | None
    targets: list[str] | None = None


def detect_format(path: str) -> str:
    """Returns the reader format of ``path`` from its extension.

    Args:
        path: Path of an interaction file.

    Returns:
        ``"inter"`` for ``.inter``, ``"peterrec"`` for ``.csv`` and
        ``"caser"`` for ``.txt`` / ``.dat``.

    Raises:
        DataError: The extension is not known.
    """
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        known = ", ".join(f"{ext} ({name})" for ext, name in EXTENSIONS.items())
        raise DataError(
            f"{path}: cannot detect the format from the extension {extension!r}; known extensions: {known}; "
            f"or pass the format explicitly (one of {', '.join(FORMATS[1:])})"
        )
    return EXTENSIONS[extension]


def read_sequences(path: str, fmt: str, *, rating_threshold: float | None = None) -> tuple[list[UserSequence], dict]:
    """Reads an interaction file into per-user sequences.

    Args:
        path: The file (or, for ``fmt="tfds"``, the dataset name).
        fmt: One of ``FORMATS``; ``"auto"`` detects it from the extension.
        rating_threshold: If set, keep only interactions whose rating is
            ``>=`` this value. The format must have ratings.

    Returns:
        ``(sequences, stats)``: users in order of first appearance, each
        sorted stably by timestamp; ``stats`` holds ``format``,
        ``lines_read`` (data lines, header excluded), ``interactions``
        (kept), ``rating_filtered``, ``users``, ``has_timestamps``,
        ``has_ratings`` and ``has_targets``.

    Raises:
        DataError: The file is missing or malformed (the message names the
            file and line), or ``rating_threshold`` is set for data without
            ratings.
    """
    grouper = Grouper(path, rating_threshold)
    return grouper.result(read_into(path, fmt, grouper))


def read_into(path: str, fmt: str, grouper: Grouper) -> str:
    """Checks ``fmt`` and the file, feeds every interaction to ``grouper``; returns the resolved format."""
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt != "tfds" and not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    reader = {"inter": read_inter, "peterrec": read_peterrec, "caser": read_caser, "tfds": read_tfds, "ratings": read_ratings}[fmt]
    reader(path, grouper)
    return fmt


class Grouper:
    """Collects interactions by user and applies the rating threshold."""

    def __init__(self, path: str, rating_threshold: float | None):
        self.path = path
        self.rating_threshold = rating_threshold
        self.lines_read = 0
        self.interactions = 0
        self.rating_filtered = 0
        self.has_timestamps = False
        self.has_ratings = False
        self._users: dict[str, list[tuple[float | None, str]]] = {}
        self._targets: dict[str, list[str]] = {}

    def set_columns(self, *, has_timestamps: bool, has_ratings: bool, where: str) -> None:
        """Declares which optional columns the source has.

        Args:
            has_timestamps: Whether interactions carry timestamps.
            has_ratings: Whether interactions carry ratings.
            where: What to name in the error (e.g. the header).

        Raises:
            DataError: A rating threshold is set but there are no ratings.
        """
        self.has_timestamps = has_timestamps
        self.has_ratings = has_ratings
        if self.rating_threshold is not None and not has_ratings:
            raise DataError(f"{self.path}: rating_threshold={self.rating_threshold} was given but {where} has no rating column")

    def add(self, user: str, item: str, timestamp: float | None = None, rating: float | None = None) -> None:
        """Adds one interaction (dropped if its rating is under the threshold).

        Timestamps are sorted at full precision and stored truncated to
        whole seconds.
        """
        if self.rating_threshold is not None and rating is not None and rating < self.rating_threshold:
            self.rating_filtered += 1
            return
        self._store(user, timestamp, item)
        self.interactions += 1

    def _store(self, user: str, timestamp: float | None, item: str) -> None:
        self._users.setdefault(user, []).append((timestamp, item))

    def add_sequence(self, user: str, items: list[str], targets: list[str] | None) -> None:
        """Adds a whole ordered sequence (formats without timestamps)."""
        self._users[user] = [(None, item) for item in items]
        self.interactions += len(items)
        if targets is not None:
            self._targets[user] = targets

    def result(self, fmt: str) -> tuple[list[UserSequence], dict]:
        """Returns the grouped, stably time-sorted sequences and the stats."""
        sequences = [
            user_sequence(user, entries, self.has_timestamps, self._targets.get(user)) for user, entries in self._users.items()
        ]
        return sequences, self.stats(fmt, len(sequences), bool(self._targets))

    def stats(self, fmt: str, users: int, has_targets: bool) -> dict:
        """The stats dict of :func:`read_sequences`."""
        return {
            "format": fmt,
            "lines_read": self.lines_read,
            "interactions": self.interactions,
            "rating_filtered": self.rating_filtered,
            "users": users,
            "has_timestamps": self.has_timestamps,
            "has_ratings": self.has_ratings,
            "has_targets": has_targets,
        }


def user_sequence(user: str, entries: list, has_timestamps: bool, targets: list[str] | None) -> UserSequence:
    """One user's ``(timestamp, item)`` entries in file order -> a stably time-sorted UserSequence."""
    if has_timestamps:
        entries.sort(key=lambda entry: entry[0])
    items = [item for _, item in entries]
    timestamps = [int(ts) for ts, _ in entries] if has_timestamps else None
    return UserSequence(user, items, timestamps, targets)
