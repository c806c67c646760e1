"""Out-of-core grouping of an interaction file (an external sort by user) for streaming conversion.

:func:`partition_sequences` reads like :func:`peterrec.data.readers.read_sequences`, but deals the
users into temporary :class:`Partition` files instead of memory.
"""

from __future__ import annotations

import os
import pickle
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from peterrec.data.readers import Grouper, UserSequence, read_into, user_sequence


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


class _PartitionGrouper(Grouper):
    """A :class:`Grouper` that hash-partitions the interactions by user into temporary files instead of
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
            yield first, user_sequence(user, entries, self.has_timestamps, None)


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
        fmt = read_into(path, fmt, grouper)
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
