"""Item side information: per-field vocabularies and per-item tables aligned to the item vocabulary.

The files are read by :func:`~peterrec.data.item_sources.read_item_sources` (RecBole
atomic ``.item`` files, :mod:`peterrec.data.item_atomic`; Amazon 2014 meta JSON,
:mod:`peterrec.data.item_meta`); the tables inside a Keras model are
:class:`peterrec.layers.item_features.ItemFeatureTables`. Per-interaction behaviour types
are read here (:func:`read_behaviour_column`) and held by
:class:`peterrec.data.behaviours.Behaviours`.

Tables (:class:`ItemFeatures`): every field gets its own value vocabulary
with two reserved ids, ``PAD_VALUE`` 0 (padding) and ``MISSING_VALUE`` 1 (a
first-class "missing"), real values from 2 in frequency order (ties by first
appearance, so ids are reproducible). Each table has one row per item id of
the :class:`~peterrec.data.vocab.Vocabulary` (reserved item ids included):
``token`` int32 ``[V]``, ``token_seq`` int32 ``[V, K]`` (0-padded, a
missing row is ``[1, 0, ...]``), ``float`` float32 ``[V]``, ``float_seq``
float32 ``[V, D]`` (0 where missing), plus ``present`` bool ``[V, F]``.
The pad item's row holds ``PAD_VALUE``; the other reserved items
(OOV, MASK, SEP) and items without features hold "missing".

Saved as ``<name>.npz`` + ``<name>.json`` (fields, kinds, value
vocabularies, the item vocabulary hash, counts, the npz's sha256), written
atomically; :func:`for_set` caches them inside a TFRecord set directory
(``item_features-<key>.json``, keyed by the side files' bytes, the field
selection and the vocabulary hash) and exports carry ``item_features.json`` /
``.npz``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from peterrec import features
from peterrec.data.behaviours import BEHAVIOURS_FILE, Behaviours, align_behaviours
from peterrec.data.formats.inter import inter_fields, parse_inter_header
from peterrec.data.formats.lines import iter_lines, parse_number
from peterrec.data.item_atomic import RawItemFeatures
from peterrec.data.item_sources import read_item_sources, split_paths
from peterrec.data.synthetic import ensure_default
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError

PAD_VALUE = 0
MISSING_VALUE = 1
FIRST_VALUE = 2
CATEGORICAL = ("token", "token_seq")
FILE_NAME = "item_features"
FORMAT = "peterrec.item_features"
MAX_SEQ_VALUES = 64  # token_seq values kept per item (more are counted as truncated)
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- tables
@dataclasses.dataclass
class ItemFeatures:
    """Per-item feature tables aligned to an item vocabulary (see the module docstring).

    Attributes:
        fields: field names, in order.
        kinds: ``{field: kind}``.
        values: ``{field: [value tokens]}`` for categorical fields (``values[f][i]`` has id ``FIRST_VALUE + i``).
        tables: ``{field: np.ndarray}`` with one row per item id.
        present: bool ``[V, F]``.
        vocab_hash: the item vocabulary's hash.
        stats: counts (feature rows, rows of unknown items, missing shares, ...).
    """

    fields: list
    kinds: dict
    values: dict
    tables: dict
    present: np.ndarray
    vocab_hash: str
    stats: dict

    @property
    def num_items(self):
        return int(self.present.shape[0])

    def size(self, field):
        """Rows of a categorical field's embedding table (values + pad + missing)."""
        return FIRST_VALUE + len(self.values[field])

    def width(self, field):
        """Values per item (token_seq), numbers per item (float_seq), else 1."""
        table = self.tables[field]
        return int(table.shape[1]) if table.ndim == 2 else 1

    def spec(self):
        """``[{name, kind, size, width}]``: what a model needs to hold these tables (JSON-able)."""
        return [
            {"name": f, "kind": self.kinds[f], "size": self.size(f) if self.kinds[f] in CATEGORICAL else 0, "width": self.width(f)}
            for f in self.fields
        ]

    @property
    def hash(self):
        """sha256 over the fields, value vocabularies and tables (identifies the features a model was trained on)."""
        digest = hashlib.sha256(json.dumps([self.fields, self.kinds, self.values, self.vocab_hash], sort_keys=True).encode())
        for f in self.fields:
            digest.update(np.ascontiguousarray(self.tables[f]).tobytes())
        digest.update(np.ascontiguousarray(self.present).tobytes())
        return digest.hexdigest()

    @classmethod
    def build(cls, raw: RawItemFeatures, vocab: Vocabulary, max_seq_values=MAX_SEQ_VALUES):
        """Tables for ``vocab`` from raw values; feature rows of items outside ``vocab`` are counted and dropped."""
        size = vocab.size
        known = {item: values for item, values in raw.rows.items() if item in vocab}
        fields = list(raw.kinds)
        tables, values, present = {}, {}, np.zeros((size, len(fields)), bool)
        stats = {
            "feature_rows": len(raw.rows),
            "feature_rows_unknown_items": len(raw.rows) - len(known),
            "items": size - features.NUM_RESERVED,
            "items_without_features": sum(1 for t in vocab.tokens if not raw.rows.get(t)),
            "missing_share": {},
            "truncated_values": {},
            "sources": {os.path.basename(p): s for p, s in raw.stats.items()},
        }
        ids = {item: vocab.id_of(item) for item in known}
        for j, field in enumerate(fields):
            kind = raw.kinds[field]
            have = {ids[item]: row[field] for item, row in known.items() if field in row}
            rows = np.fromiter(have, dtype=np.int64, count=len(have))
            present[rows, j] = True
            if kind in CATEGORICAL:
                counts = {}
                for value in have.values():
                    for token in [value] if kind == "token" else value:
                        counts[token] = counts.get(token, 0) + 1
                tokens = sorted(counts, key=lambda t: -counts[t])  # stable: ties keep first appearance
                index = {t: FIRST_VALUE + i for i, t in enumerate(tokens)}
                values[field] = tokens
                if kind == "token":
                    table = np.full(size, MISSING_VALUE, np.int32)
                    for row, token in have.items():
                        table[row] = index[token]
                    table[features.PAD_ID] = PAD_VALUE
                else:
                    width = max(1, min(max_seq_values, max((len(v) for v in have.values()), default=1)))
                    table = np.zeros((size, width), np.int32)
                    table[:, 0] = MISSING_VALUE
                    truncated = 0
                    for row, tokens_ in have.items():
                        truncated += max(0, len(tokens_) - width)
                        kept = [index[t] for t in tokens_[:width]]
                        table[row, : len(kept)] = kept
                    table[features.PAD_ID] = PAD_VALUE
                    stats["truncated_values"][field] = truncated
            else:
                width = 1 if kind == "float" else len(next(iter(have.values()), np.zeros(1)))
                table = np.zeros((size,) if kind == "float" else (size, width), np.float32)
                for row, value in have.items():
                    table[row] = value
            tables[field] = table
            stats["missing_share"][field] = round(1.0 - float(present[features.NUM_RESERVED:, j].mean()) if size > features.NUM_RESERVED else 0.0, 4)
        return cls(fields, dict(raw.kinds), values, tables, present, vocab.hash, stats)

    def discard(self, share, seed):
        """A copy with each present (item, field) cell dropped to "missing" with probability ``share``
        (MIIR's "discard" setting, drawn once with ``seed``)."""
        if not 0.0 <= share < 1.0:
            raise ConfigError(f"--discard_share: must be in [0, 1), got {share}")
        if share == 0.0:
            return self
        drop = self.present & (np.random.default_rng([int(seed), 7]).random(self.present.shape) < share)
        tables = {}
        for j, field in enumerate(self.fields):
            table = self.tables[field].copy()
            rows = drop[:, j]
            if self.kinds[field] == "token":
                table[rows] = MISSING_VALUE
            elif self.kinds[field] == "token_seq":
                table[rows] = PAD_VALUE
                table[rows, 0] = MISSING_VALUE
            else:
                table[rows] = 0.0
            tables[field] = table
        stats = dict(self.stats, discarded={"share": share, "seed": int(seed), "cells": int(drop.sum())})
        return dataclasses.replace(self, tables=tables, present=self.present & ~drop, stats=stats)

    def standardized(self):
        """A copy whose scalar ``float`` fields are z-scored over their present items (missing stays 0)."""
        tables, scales = dict(self.tables), {}
        for j, field in enumerate(self.fields):
            if self.kinds[field] != "float" or not self.present[:, j].any():
                continue
            values = self.tables[field][self.present[:, j]]
            mean, std = float(values.mean()), float(values.std()) or 1.0
            tables[field] = np.where(self.present[:, j], (self.tables[field] - mean) / std, 0.0).astype(np.float32)
            scales[field] = {"mean": mean, "std": std}
        if not scales:
            return self
        return dataclasses.replace(self, tables=tables, stats=dict(self.stats, standardized=scales))

    # ------------------------------------------------------------ persistence
    def save(self, directory, name=FILE_NAME):
        """Write ``<name>.npz`` then ``<name>.json`` (each atomically); returns the json path."""
        os.makedirs(directory, exist_ok=True)
        arrays = {f"table_{i}": self.tables[f] for i, f in enumerate(self.fields)} | {"present": self.present}
        npz = os.path.join(directory, f"{name}.npz")
        _atomic_write(npz, lambda stream: np.savez(stream, **arrays), binary=True)
        payload = {
            "format": FORMAT,
            "version": 1,
            "fields": [{"name": f, "kind": self.kinds[f]} for f in self.fields],
            "values": self.values,
            "vocab_hash": self.vocab_hash,
            "num_items": self.num_items,
            "hash": self.hash,
            "npz_sha256": _sha256(npz),
            "stats": self.stats,
        }
        path = os.path.join(directory, f"{name}.json")
        _atomic_write(path, lambda stream: json.dump(payload, stream, indent=1, sort_keys=True, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path, vocab: Vocabulary | None = None):
        """Load from a ``.json`` path or a directory holding ``item_features.json``.

        Raises:
            DataError: a missing, corrupt or modified file.
            VocabularyError: the tables belong to another item vocabulary than ``vocab``.
        """
        if os.path.isdir(path):
            path = os.path.join(path, f"{FILE_NAME}.json")
        try:
            with open(path, encoding="utf-8") as stream:
                payload = json.load(stream)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read item features: {err}") from None
        if payload.get("format") != FORMAT:
            raise DataError(f"{path}: not a peterrec item-features file")
        npz = path[: -len(".json")] + ".npz"
        if not os.path.isfile(npz) or _sha256(npz) != payload["npz_sha256"]:
            raise DataError(f"{npz}: missing or modified (its sha256 differs from {os.path.basename(path)})")
        with np.load(npz) as data:
            fields = [f["name"] for f in payload["fields"]]
            tables = {f: data[f"table_{i}"] for i, f in enumerate(fields)}
            present = data["present"]
        out = cls(fields, {f["name"]: f["kind"] for f in payload["fields"]}, payload["values"], tables, present,
                  payload["vocab_hash"], payload["stats"])
        if vocab is not None and vocab.hash != out.vocab_hash:
            raise VocabularyError(
                f"{path}: item features built for vocabulary {out.vocab_hash[:12]}, the data's is {vocab.hash[:12]}"
            )
        return out


def _sha256(path):
    from peterrec.io import file_sha256

    return file_sha256(path)


def _atomic_write(path, write, binary=False):
    from peterrec.io import write_atomic

    write_atomic(path, write, encoding=None if binary else "utf-8", binary=binary)


def cache_key(paths, fields, fmt, vocab: Vocabulary, max_bad_share=0.05):
    """12 hex identifying the tables ``for_set`` would build (file bytes, field selection, format, vocabulary)."""
    digest = hashlib.sha256(json.dumps([split_paths(fields) if fields is not None else None, fmt, vocab.hash, max_bad_share]).encode())
    for path in split_paths(paths):
        digest.update(_sha256(path).encode())
    return digest.hexdigest()[:12]


def for_set(set_dir, vocab: Vocabulary, paths, fields=None, *, fmt="auto", max_bad_share=0.05, flag="item_fields"):
    """The item features of a TFRecord set, built once and cached in it as ``item_features-<key>.{json,npz}``."""
    for path in split_paths(paths):
        if not os.path.isfile(ensure_default(path)):
            raise DataError(f"{path}: no such side-information file (--item_data)")
    name = f"{FILE_NAME}-{cache_key(paths, fields, fmt, vocab, max_bad_share)}"
    cached = os.path.join(set_dir, f"{name}.json")
    if os.path.isfile(cached):
        try:
            return ItemFeatures.load(cached, vocab)
        except DataError:
            _log.warning("%s is damaged; rebuilding it", cached)
    raw = read_item_sources(paths, fields, fmt=fmt, max_bad_share=max_bad_share, flag=flag)
    built = ItemFeatures.build(raw, vocab)
    built.save(set_dir, name)
    return built


# ---------------------------------------------------------------- per-interaction behaviour types
BEHAVIOUR_HINTS = ("behaviour", "behavior", "action", "behaviour_type", "behavior_type")


def inter_columns(path):
    """The column names of a RecBole ``.inter`` file's header (``[]`` when ``path`` is not such a file)."""
    if not (os.path.isfile(ensure_default(path)) and path.lower().endswith(".inter")):
        return []
    with open(path, encoding="utf-8", errors="replace") as stream:
        header = stream.readline().lstrip("\ufeff").rstrip("\n").rstrip("\r")
    return [cell.split(":", 1)[0].strip() for cell in header.split("\t")]


def read_behaviour_column(path, field, *, rating_threshold=None, flag="behaviour_field"):
    """Each user's interactions of a RecBole ``.inter`` file with their ``field`` token (the behaviour type).

    Read as ``peterrec.data.readers`` reads the file (users by first
    appearance, a user's interactions sorted stably by timestamp, the same
    rating threshold), so the result lines up with the TFRecord set built
    from it. Returns ``{user: (item tokens, timestamps (int seconds) or None,
    behaviour tokens)}``.

    Raises:
        ConfigError: ``path`` is not an ``.inter`` file, or has no column ``field`` (naming ``--{flag}`` and the columns).
        DataError: a malformed line or an empty behaviour cell (``file:line``).
    """
    columns = inter_columns(path)
    if not columns:
        raise ConfigError(f"--{flag}: needs a RecBole .inter --data file with a behaviour column, got {path!r}")
    if field not in columns:
        raise ConfigError(f"--{flag}: {path} has no column {field!r} (its columns: {', '.join(columns)})")
    lines = iter_lines(path)
    header_line, header = next(lines)
    index = parse_inter_header(f"{path}:{header_line}", header)
    user_col, item_col, col = index["user_id"], index["item_id"], index[field]
    time_col, rating_col = index.get("timestamp"), index.get("rating")
    users = {}
    for number, text in lines:
        where, cells = inter_fields(path, number, text, header, header_line, len(index))
        if rating_threshold is not None and rating_col is not None:
            if parse_number(cells[rating_col], "rating", where) < rating_threshold:
                continue
        kind = cells[col].strip()
        if not kind:
            raise DataError(f"{where}: empty {field!r} (every interaction needs a behaviour type with --{flag})")
        when = None if time_col is None else parse_number(cells[time_col], "timestamp", where)
        users.setdefault(cells[user_col], []).append((when, cells[item_col], kind))
    out = {}
    for user, entries in users.items():
        if time_col is not None:
            entries.sort(key=lambda entry: entry[0])
        out[user] = ([e[1] for e in entries], None if time_col is None else [int(e[0]) for e in entries], [e[2] for e in entries])
    return out


def behaviours_for_set(set_dir, vocab: Vocabulary, data, field, *, rating_threshold=None):
    """The behaviour ids of a set's records, read from ``data`` once and cached in the set (``behaviours-<key>.json``)."""
    if not os.path.isfile(data):
        raise ConfigError(f"--behaviour_field: needs a RecBole .inter --data file with a behaviour column, got {data!r}")
    digest = hashlib.sha256(json.dumps([field, rating_threshold, vocab.hash]).encode())
    digest.update(_sha256(data).encode())
    cached = os.path.join(set_dir, f"{BEHAVIOURS_FILE}-{digest.hexdigest()[:12]}.json")
    if os.path.isfile(cached):
        try:
            return Behaviours.load(cached)
        except (DataError, OSError, ValueError, KeyError):
            _log.warning("%s is damaged; rebuilding it", cached)
    raw = read_behaviour_column(data, field, rating_threshold=rating_threshold)
    built = align_behaviours(set_dir, vocab, raw, field, data)
    built.save(set_dir, os.path.basename(cached)[: -len(".json")])
    return built
