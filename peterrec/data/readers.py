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
"""

from __future__ import annotations

import math
import os
import pickle
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from peterrec.errors import DataError

FORMATS = ("auto", "inter", "peterrec", "caser", "tfds", "ratings")
EXTENSIONS = {".inter": "inter", ".csv": "peterrec", ".txt": "caser", ".dat": "caser"}
PETERREC_PAD = "0"
FINETUNE_SEPARATOR = ",,"
_INTER_USER = "user_id"
_INTER_ITEM = "item_id"
_INTER_RATING = "rating"
_INTER_TIMESTAMP = "timestamp"
_CASER_COLUMNS = (2, 3, 4)
_BOM = "\ufeff"


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
    grouper = _Grouper(path, rating_threshold)
    return grouper.result(_read_into(path, fmt, grouper))


def _read_into(path: str, fmt: str, grouper: _Grouper) -> str:
    """Checks ``fmt`` and the file, feeds every interaction to ``grouper``; returns the resolved format."""
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt != "tfds" and not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    reader = {"inter": _read_inter, "peterrec": _read_peterrec, "caser": _read_caser, "tfds": _read_tfds, "ratings": _read_ratings}[fmt]
    reader(path, grouper)
    return fmt


class _Grouper:
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
            _user_sequence(user, entries, self.has_timestamps, self._targets.get(user)) for user, entries in self._users.items()
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


def _user_sequence(user: str, entries: list, has_timestamps: bool, targets: list[str] | None) -> UserSequence:
    """One user's ``(timestamp, item)`` entries in file order -> a stably time-sorted UserSequence."""
    if has_timestamps:
        entries.sort(key=lambda entry: entry[0])
    items = [item for _, item in entries]
    timestamps = [int(ts) for ts, _ in entries] if has_timestamps else None
    return UserSequence(user, items, timestamps, targets)


# ---------------------------------------------------------------- out-of-core grouping (external sort)
@dataclass
class Partition:
    """A temporary file of grouped users (see :func:`partition_sequences`).

    Attributes:
        path: The file: pickled chunks (lists) of ``(first, UserSequence)``,
            ascending ``first`` (the index of the user's first interaction
            or line in the input, i.e. the in-memory reader's user order).
        lengths: ``Counter`` of the users' sequence lengths.
    """

    path: str
    lengths: Counter


def write_partition(path: str, records: Iterable[tuple[int, UserSequence]], chunk_users: int = 256) -> Partition:
    """Writes ``(first, UserSequence)`` records (ascending ``first``) as a :class:`Partition`."""
    lengths: Counter = Counter()
    chunk: list = []
    with open(path, "wb") as stream:
        for record in records:
            chunk.append(record)
            lengths[len(record[1].items)] += 1
            if len(chunk) >= chunk_users:
                pickle.dump(chunk, stream, protocol=pickle.HIGHEST_PROTOCOL)
                chunk = []
        if chunk:
            pickle.dump(chunk, stream, protocol=pickle.HIGHEST_PROTOCOL)
    return Partition(path, lengths)


def iter_partition(partition: Partition | str) -> Iterator[tuple[int, UserSequence]]:
    """Yields the ``(first, UserSequence)`` records of a partition file, one chunk in memory at a time."""
    yield from (record for chunk in _load_chunks(partition.path if isinstance(partition, Partition) else partition) for record in chunk)


def _load_chunks(path: str) -> Iterator[list]:
    with open(path, "rb") as stream:
        while True:
            try:
                yield pickle.load(stream)
            except EOFError:
                return


class _PartitionGrouper(_Grouper):
    """A :class:`_Grouper` that hash-partitions the interactions by user into temporary files instead of
    holding them (memory: one small buffer per partition)."""

    def __init__(self, path: str, rating_threshold: float | None, directory: str, num_partitions: int):
        super().__init__(path, rating_threshold)
        self.raw_paths = [os.path.join(directory, f"raw-{index:05d}.pkl") for index in range(num_partitions)]
        self._streams = []
        self._buffers: list[list] = [[] for _ in range(num_partitions)]
        self._flush_rows = max(256, 131072 // num_partitions)  # ~130k buffered rows in all
        self._index = 0  # file order of the stored rows: a user's first row orders the users
        self.sequences = False  # whole sequences (PeterRec lines) instead of interactions
        self.has_targets = False

    def __enter__(self):
        self._streams = [open(path, "wb") for path in self.raw_paths]
        return self

    def __exit__(self, *exc):
        for stream in self._streams:
            stream.close()
        return False

    def _put(self, user: str, row: tuple) -> None:
        part = zlib.crc32(user.encode("utf-8")) % len(self._buffers)
        buffer = self._buffers[part]
        buffer.append(row)
        self._index += 1
        if len(buffer) >= self._flush_rows:
            self._flush(part)

    def _flush(self, part: int) -> None:
        pickle.dump(self._buffers[part], self._streams[part], protocol=pickle.HIGHEST_PROTOCOL)
        self._buffers[part] = []

    def _store(self, user: str, timestamp: float | None, item: str) -> None:
        self._put(user, (self._index, user, timestamp, item))

    def add_sequence(self, user: str, items: list[str], targets: list[str] | None) -> None:
        self.sequences = True
        self.has_targets = self.has_targets or targets is not None
        self._put(user, (self._index, user, items, targets))
        self.interactions += len(items)

    def finish(self) -> None:
        for part, buffer in enumerate(self._buffers):
            if buffer:
                self._flush(part)

    def group(self, raw_path: str) -> Iterator[tuple[int, UserSequence]]:
        """The users of one raw partition file, grouped and time-sorted, ascending first row."""
        if self.sequences:
            for chunk in _load_chunks(raw_path):
                yield from ((index, UserSequence(user, items, None, targets)) for index, user, items, targets in chunk)
            return
        users: dict[str, tuple[int, list]] = {}
        for chunk in _load_chunks(raw_path):
            for index, user, timestamp, item in chunk:
                entry = users.get(user)
                if entry is None:
                    users[user] = entry = (index, [])
                entry[1].append((timestamp, item))
        for user, (first, entries) in users.items():  # insertion order: ascending first row
            yield first, _user_sequence(user, entries, self.has_timestamps, None)


def partition_sequences(
    path: str,
    fmt: str,
    directory: str,
    num_partitions: int,
    *,
    rating_threshold: float | None = None,
    transform=None,
) -> tuple[list[Partition], dict]:
    """Reads an interaction file out of core: like :func:`read_sequences`, but the users end up grouped
    in ``num_partitions`` temporary files under ``directory`` (an external sort by user).

    One pass over the file deals each interaction (or PeterRec line) by a hash of its user id into a
    raw partition file; then each raw partition (small enough for memory) is grouped by user and
    stably time-sorted exactly as :func:`read_sequences` does, and written back as a
    :class:`Partition`. Merging the partitions by ``first`` gives :func:`read_sequences`' user order.

    Args:
        path: The interaction file.
        fmt: A file format of ``FORMATS`` (not ``"tfds"``).
        directory: An existing directory for the temporary files (the caller removes it).
        num_partitions: How many partitions (>= 1).
        rating_threshold: As :func:`read_sequences`.
        transform: Optional ``(first, UserSequence) -> UserSequence or None`` applied to every grouped
            user before it is written (None drops the user).

    Returns:
        ``(partitions, stats)``; ``stats`` as :func:`read_sequences`.

    Raises:
        DataError: As :func:`read_sequences`.
    """
    grouper = _PartitionGrouper(path, rating_threshold, directory, num_partitions)
    with grouper:
        fmt = _read_into(path, fmt, grouper)
        grouper.finish()
    partitions, users = [], [0]

    def grouped(raw_path):
        for first, sequence in grouper.group(raw_path):
            users[0] += 1
            sequence = sequence if transform is None else transform(first, sequence)
            if sequence is not None:
                yield first, sequence

    for index, raw_path in enumerate(grouper.raw_paths):
        partitions.append(write_partition(os.path.join(directory, f"users-{index:05d}.pkl"), grouped(raw_path)))
        os.remove(raw_path)
    return partitions, grouper.stats(fmt, users[0], grouper.has_targets)


def _iter_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, text)`` for the non-blank lines of a UTF-8 file.

    A UTF-8 byte order mark and ``\\r\\n`` line endings are accepted.

    Raises:
        DataError: A line is not valid UTF-8.
    """
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
            if number == 1 and text.startswith(_BOM):
                text = text[len(_BOM):]
            text = text.rstrip("\n").rstrip("\r")
            if text.strip():
                yield number, text


def _parse_number(value: str, column: str, where: str) -> float:
    """Parses a finite float, naming ``where`` (file:line) and the column on error."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise DataError(f"{where}: column {column!r} must be a finite number, got {value!r}")
    return number


def _check_token(token: str, what: str, where: str) -> str:
    """Rejects empty tokens (the empty string is never a valid id)."""
    if not token:
        raise DataError(f"{where}: empty {what}")
    return token


def read_user_targets(path: str) -> dict[str, list[str]]:
    """Reads per-user target tokens from a RecBole file (finetuning targets).

    The file has a ``user_id`` column and either ``item_id`` (target-domain
    items, e.g. ``Data/synthetic/target.inter``) or ``label`` (a user-profile
    class, e.g. ``Data/synthetic/profile.inter``); rows are sorted stably by
    ``timestamp`` when that column exists.

    Returns:
        ``{user: [target tokens]}`` in order of first appearance.

    Raises:
        DataError: missing file, no usable columns, malformed lines (file:line).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    lines = _iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a RecBole header line and targets)")
    header_line, header = first
    value_name = _INTER_ITEM if _INTER_ITEM in [f.split(":", 1)[0].strip() for f in header.split("\t")] else "label"
    columns = _parse_inter_header(f"{path}:{header_line}", header, required=(_INTER_USER, value_name))
    user_col, value_col, time_col = columns[_INTER_USER], columns[value_name], columns.get(_INTER_TIMESTAMP)
    declared = header.split("\t")[value_col].split(":", 1)
    if len(declared) == 2 and declared[1].strip() != "token":
        raise DataError(
            f"{path}:{header_line}: column {declared[0].strip()!r} is typed {declared[1].strip()!r}; targets must be single tokens "
            f"('{value_name}:token', one {value_name} per line: write a user with several on several lines)"
        )
    rows: dict[str, list[tuple[float, str]]] = {}
    for number, text in lines:
        where, fields = _inter_fields(path, number, text, header, header_line, len(columns))
        when = 0.0 if time_col is None else _parse_number(fields[time_col], _INTER_TIMESTAMP, where)
        rows.setdefault(_check_token(fields[user_col], "user_id", where), []).append((when, _check_token(fields[value_col], value_name, where)))
    if not rows:
        raise DataError(f"{path}: header only, no targets")
    return {user: [token for _, token in sorted(entries, key=lambda e: e[0])] for user, entries in rows.items()}


def _parse_inter_header(where: str, header: str, required: tuple = (_INTER_USER, _INTER_ITEM)) -> dict[str, int]:
    """Maps the column names of a RecBole header to their positions.

    Raises:
        DataError: Duplicate names, or a ``required`` column missing.
    """
    names = [field.split(":", 1)[0].strip() for field in header.split("\t")]
    columns: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in columns:
            raise DataError(f"{where}: duplicate column {name!r} in header {header!r}")
        columns[name] = position
    missing = [name for name in required if name not in columns]
    if missing:
        hint = "; it has a single column: RecBole files are tab-separated" if len(names) == 1 else ""
        raise DataError(
            f"{where}: header {header!r} lacks the column(s) {', '.join(missing)} "
            f"(expected e.g. 'user_id:token<TAB>item_id:token<TAB>timestamp:float'){hint}"
        )
    return columns


def _inter_fields(path: str, number: int, text: str, header: str, header_line: int, num_columns: int) -> tuple[str, list[str]]:
    """``("path:line", tab-separated fields)`` of one ``.inter`` data line, checked against the header."""
    where = f"{path}:{number}"
    _check_not_header(text, header, header_line, where)
    fields = text.split("\t")
    if len(fields) != num_columns:
        raise DataError(f"{where}: expected {num_columns} tab-separated columns as in the header, got {len(fields)}")
    return where, fields


def _check_not_header(text: str, header: str, header_line: int, where: str) -> None:
    """Rejects a data line that repeats the header (files concatenated with their headers)."""
    if text.lstrip(_BOM) == header:
        raise DataError(f"{where}: repeats the header of line {header_line} (were two files concatenated?)")


def _read_inter(path: str, grouper: _Grouper) -> None:
    """Reads a RecBole ``.inter`` file into ``grouper``."""
    lines = _iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a RecBole header line and interactions)")
    header_line, header = first
    columns = _parse_inter_header(f"{path}:{header_line}", header)
    user_col, item_col = columns[_INTER_USER], columns[_INTER_ITEM]
    rating_col, time_col = columns.get(_INTER_RATING), columns.get(_INTER_TIMESTAMP)
    grouper.set_columns(has_timestamps=time_col is not None, has_ratings=rating_col is not None, where=f"the header {header!r}")
    for number, text in lines:
        where, fields = _inter_fields(path, number, text, header, header_line, len(columns))
        grouper.lines_read += 1
        grouper.add(
            _check_token(fields[user_col], "user_id", where),
            _check_token(fields[item_col], "item_id", where),
            None if time_col is None else _parse_number(fields[time_col], _INTER_TIMESTAMP, where),
            None if rating_col is None else _parse_number(fields[rating_col], _INTER_RATING, where),
        )
    if grouper.lines_read == 0:
        raise DataError(f"{path}: header only, no interactions")


def _split_peterrec_tokens(part: str, what: str, where: str) -> list[str]:
    """Splits a comma-separated PeterRec token list, validating each token."""
    tokens = part.split(",")
    for token in tokens:
        _check_token(token, what, where)
        if any(char.isspace() for char in token):
            raise DataError(f"{where}: {what} {token!r} contains whitespace")
    return tokens


def _strip_padding(tokens: list[str]) -> list[str]:
    """Drops the leading ``"0"`` padding tokens of a PeterRec sequence."""
    start = 0
    while start < len(tokens) and tokens[start] == PETERREC_PAD:
        start += 1
    return tokens[start:]


def _mixed_lines_message(where: str, first_line: int, finetune: bool) -> str:
    """Message for a line whose ",," presence differs from the first line's."""
    if finetune:
        return (
            f"{where}: finetuning line without {FINETUNE_SEPARATOR!r} (line {first_line} is "
            "'<source items>,,<target items>', so every line must be)"
        )
    return f"{where}: {FINETUNE_SEPARATOR!r} in a pretraining file (line {first_line} has none; a finetuning file needs it on every line)"


def _read_peterrec(path: str, grouper: _Grouper) -> None:
    """Reads a PeterRec pretraining or finetuning CSV into ``grouper``."""
    grouper.set_columns(has_timestamps=False, has_ratings=False, where="the PeterRec format")
    finetune_line: int | None = None  # the first line; finetune: whether it has ",,"
    finetune = False
    for number, text in _iter_lines(path):
        where = f"{path}:{number}"
        parts = text.split(FINETUNE_SEPARATOR)
        if len(parts) > 2:
            raise DataError(f"{where}: more than one {FINETUNE_SEPARATOR!r} (expected '<source items>,,<target items>')")
        if finetune_line is None:
            finetune_line, finetune = number, len(parts) == 2
        elif finetune != (len(parts) == 2):
            raise DataError(_mixed_lines_message(where, finetune_line, finetune))
        items = _strip_padding(_split_peterrec_tokens(parts[0], "item", where))
        targets = _split_peterrec_tokens(parts[1], "target", where) if finetune else None
        grouper.lines_read += 1
        grouper.add_sequence(f"line-{number}", items, targets)
    if grouper.lines_read == 0:
        raise DataError(f"{path}: empty file (expected one comma-separated item sequence per line)")


def _read_caser(path: str, grouper: _Grouper) -> None:
    """Reads a whitespace-separated ``user item [rating [timestamp]]`` file."""
    width = None
    for number, text in _iter_lines(path):
        where = f"{path}:{number}"
        fields = text.split()
        if width is None:
            if len(fields) not in _CASER_COLUMNS:
                raise DataError(f"{where}: expected 2, 3 or 4 whitespace-separated columns (user item [rating [timestamp]]), got {len(fields)}")
            width, first_line = len(fields), number
            grouper.set_columns(has_timestamps=width == 4, has_ratings=width >= 3, where=f"{path} ({width} columns)")
        elif len(fields) != width:
            raise DataError(f"{where}: expected {width} whitespace-separated columns as on line {first_line}, got {len(fields)}")
        grouper.lines_read += 1
        grouper.add(
            fields[0],
            fields[1],
            _parse_number(fields[3], "timestamp", where) if width == 4 else None,
            _parse_number(fields[2], "rating", where) if width >= 3 else None,
        )
    if width is None:
        raise DataError(f"{path}: empty file (expected 'user item [rating [timestamp]]' lines)")


_TFDS_USER_KEYS = ("user_id",)
_TFDS_ITEM_KEYS = ("item_id", "movie_id", "bucketized_item_id")
_TFDS_RATING_KEYS = ("user_rating", "rating")
_TFDS_TIME_KEYS = ("timestamp",)


def _first_key(keys: tuple[str, ...], available: dict[str, Any]) -> str | None:
    """Returns the first of ``keys`` present in ``available``."""
    return next((key for key in keys if key in available), None)


def _as_token(value: Any) -> str:
    """Converts a TFDS feature value (bytes or number) to a token string."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_tfds(name: str, grouper: _Grouper) -> None:
    """Reads the ``train`` split of a TensorFlow Datasets interaction dataset."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DataError(f"{name}: format 'tfds' needs tensorflow_datasets; install it with: pip install -e .[tfds]") from None
    try:
        dataset = tfds.load(name, split="train")
    except Exception as err:  # tfds raises many types (DatasetNotFoundError, download errors)
        raise DataError(f"{name}: cannot load the TFDS dataset: {err}") from None
    spec = dataset.element_spec
    user_key, item_key = _first_key(_TFDS_USER_KEYS, spec), _first_key(_TFDS_ITEM_KEYS, spec)
    if user_key is None or item_key is None:
        raise DataError(f"{name}: TFDS features {sorted(spec)} lack a user id {_TFDS_USER_KEYS} or item id {_TFDS_ITEM_KEYS}")
    rating_key, time_key = _first_key(_TFDS_RATING_KEYS, spec), _first_key(_TFDS_TIME_KEYS, spec)
    grouper.set_columns(has_timestamps=time_key is not None, has_ratings=rating_key is not None, where=f"TFDS dataset {name}")
    for row in tfds.as_numpy(dataset):
        grouper.lines_read += 1
        grouper.add(
            _as_token(row[user_key]),
            _as_token(row[item_key]),
            None if time_key is None else float(row[time_key]),
            None if rating_key is None else float(row[rating_key]),
        )


_RATINGS_COLUMNS = 4


def _read_ratings(path: str, grouper: _Grouper) -> None:
    """Reads a ``user,item,rating,timestamp`` CSV (Amazon 2014 ``ratings_*.csv``); a first line whose
    rating and timestamp are not numbers is a header."""
    grouper.set_columns(has_timestamps=True, has_ratings=True, where="the ratings format")
    for index, (number, text) in enumerate(_iter_lines(path)):
        where = f"{path}:{number}"
        fields = text.split(",")
        if len(fields) != _RATINGS_COLUMNS:
            raise DataError(f"{where}: expected 4 comma-separated columns user,item,rating,timestamp, got {len(fields)}")
        if index == 0 and not _is_number(fields[2]) and not _is_number(fields[3]):
            continue  # header
        grouper.lines_read += 1
        grouper.add(
            _check_token(fields[0].strip(), "user", where),
            _check_token(fields[1].strip(), "item", where),
            _parse_number(fields[3], "timestamp", where),
            _parse_number(fields[2], "rating", where),
        )
    if grouper.lines_read == 0:
        raise DataError(f"{path}: no interactions (expected 'user,item,rating,timestamp' lines)")


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
