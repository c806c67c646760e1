"""Per-interaction behaviour types (click / like / purchase ...) aligned with the records of a TFRecord set.

The types come from a column of the RecBole ``.inter`` file the set was built from
(:func:`peterrec.data.item_features.read_behaviour_column`); :func:`align_behaviours`
matches them to the set's records, and
:func:`peterrec.data.item_features.behaviours_for_set` caches the result in the set
(``behaviours-<key>.json`` / ``.npz``).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError
from peterrec.io import file_sha256, write_atomic

BEHAVIOURS_FILE = "behaviours"


@dataclasses.dataclass
class Behaviours:
    """Behaviour-type ids of every interaction of a TFRecord set, aligned with its records' ``items``.

    Attributes:
        field: the ``.inter`` column they come from.
        types: type tokens; id ``k`` is ``types[k]`` (frequency order, ties by first appearance).
        users: raw user ids, one per record.
        values: int32, the users' id sequences concatenated; ``row_splits`` int64 ``[len(users) + 1]``.
        stats: counts (``interactions`` per type).
    """

    field: str
    types: list
    users: list
    values: np.ndarray
    row_splits: np.ndarray
    stats: dict

    def type_id(self, token, flag="candidate_behaviour"):
        """The id of a type token (ConfigError naming ``--{flag}`` and the types otherwise)."""
        if token not in self.types:
            raise ConfigError(f"--{flag}: {token!r} is not a behaviour type of --behaviour_field {self.field} ({', '.join(self.types)})")
        return self.types.index(token)

    def of(self, user):
        """The id sequence of one user (numpy)."""
        k = self.users.index(user)
        return self.values[self.row_splits[k] : self.row_splits[k + 1]]

    def lookup_fn(self):
        """``record -> int32 [n]``: the behaviour ids of a parsed TFRecord record (for ``tf.data`` maps)."""
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(self.users), tf.range(len(self.users), dtype=tf.int64)), default_value=-1
        )
        values, splits = tf.constant(self.values, tf.int32), tf.constant(self.row_splits, tf.int64)

        def lookup(record):
            row = table.lookup(record["user"])
            tf.debugging.assert_non_negative(row, message="a record's user has no behaviour row")
            return values[splits[row] : splits[row + 1]]

        return lookup

    def save(self, directory, name=BEHAVIOURS_FILE):
        os.makedirs(directory, exist_ok=True)
        npz = os.path.join(directory, f"{name}.npz")
        write_atomic(npz, lambda stream: np.savez(stream, values=self.values, row_splits=self.row_splits), binary=True)
        payload = {"field": self.field, "types": self.types, "users": self.users, "stats": self.stats, "npz_sha256": file_sha256(npz)}
        path = os.path.join(directory, f"{name}.json")
        write_atomic(path, lambda stream: json.dump(payload, stream, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as stream:
            payload = json.load(stream)
        npz = path[: -len(".json")] + ".npz"
        if not os.path.isfile(npz) or file_sha256(npz) != payload["npz_sha256"]:
            raise DataError(f"{npz}: missing or modified")
        with np.load(npz) as data:
            return cls(payload["field"], payload["types"], payload["users"], data["values"], data["row_splits"], payload["stats"])


def align_behaviours(set_dir, vocab: Vocabulary, raw, field, data="--data"):
    """``Behaviours`` for the records of a TFRecord set from :func:`read_behaviour_column`'s ``raw``.

    Each record's items are a subsequence of the user's interactions in the
    file (the set's filters only drop interactions: consecutive repeats,
    k-core, too-short users); they are matched in order, by item id (and
    timestamp when the set has them), earliest first.

    Raises:
        DataError: a record's user or items are not in the file (the set was built from another file).
    """
    from peterrec.data import dataset

    counts = {}
    for _, _, kinds in raw.values():
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
    types = sorted(counts, key=lambda t: -counts[t])  # stable: ties keep first appearance
    type_ids = {t: k for k, t in enumerate(types)}
    users, chunks, splits = [], [], [0]
    for record in dataset._records(set_dir):
        user = record["user"].numpy().decode("utf-8")
        items, times = record["items"].numpy(), record["timestamps"].numpy()
        if user not in raw:
            raise DataError(f"{data}: user {user!r} of the TFRecord set {set_dir} is not in the file (built from another file?)")
        tokens, raw_times, kinds = raw[user]
        raw_ids = vocab.encode(tokens)[0]
        out, j = np.zeros(len(items), np.int32), 0
        for i, item in enumerate(items):
            while j < len(raw_ids) and not (raw_ids[j] == item and (not len(times) or raw_times is None or raw_times[j] == times[i])):
                j += 1
            if j == len(raw_ids):
                raise DataError(f"{data}: user {user!r}'s interactions in the TFRecord set {set_dir} do not match the file (built from another file?)")
            out[i] = type_ids[kinds[j]]
            j += 1
        users.append(user)
        chunks.append(out)
        splits.append(splits[-1] + len(out))
    values = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    stats = {"interactions": {t: int(np.sum(values == k)) for k, t in enumerate(types)}}
    return Behaviours(field, types, users, values, np.asarray(splits, np.int64), stats)
